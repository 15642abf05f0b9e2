"""Shared CLI plumbing: consoles, JSON output, library defaults and the ``--debug`` flag."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

# Markup ([red]...[/red]) is for the CLI's own words only: every string that comes from the user
# or the disk (paths, class and font names, error messages) goes through shown(). No emoji codes:
# a file named ":smile:.png" stays that.
console = Console(soft_wrap=True, emoji=False)
err_console = Console(stderr=True, soft_wrap=True, emoji=False)


def shown(value: object) -> str:
    """``value`` as text for a rich console: markup escaped, everything unprintable made visible.

    Bytes a file name could not decode (surrogate escapes) show as ``\\xff``, control characters
    (a newline, an ANSI escape) as ``\\n``, ``\\x1b``: a name can neither crash the printer, nor
    restyle the terminal, nor break the one-line error.
    """
    text = os.fsdecode(value) if isinstance(value, bytes) else str(value)
    with contextlib.suppress(UnicodeEncodeError):  # a lone surrogate that is no escaped byte
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return escape(text)


def print_error(message: str) -> None:
    """``error: message`` as one line on stderr (escaped: a newline in it shows as ``\\n``)."""
    err_console.print(f"[red]error:[/red] {shown(message.strip())}", highlight=False)


def print_json(data: Any) -> None:
    """Write ``data`` as JSON on stdout (no rich markup, so pipes get plain JSON)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def default_of(func: Callable[..., Any], name: str) -> Any:
    """The default of ``func``'s parameter ``name``: an option's default is the library's own."""
    return inspect.signature(func).parameters[name].default


@dataclass
class CliState:
    """What one invocation parsed beyond a command's options; ``main`` passes it as ``obj``.

    ``out`` is the command's ``out`` (option or argument), named in the error when a write
    fails with an OSError that does not say which file (a full disk fails ``write``, not ``open``).
    """

    debug: bool = False
    out: str | None = None


def _enable_debug(ctx: typer.Context, value: bool) -> None:
    if value and isinstance(ctx.obj, CliState):
        ctx.obj.debug = True


# The one --debug option: the root callback and every command declare it, so
# `lscindex --debug CMD ...` and `lscindex CMD ... --debug` set the same CliState.debug.
DebugOption = Annotated[
    bool,
    typer.Option(
        "--debug", help="Show the full traceback when a command fails.", callback=_enable_debug
    ),
]


def add_command(app: typer.Typer, name: str, func: Callable[..., None]) -> None:
    """Register ``func`` as command ``name`` of ``app``, also accepting ``--debug``.

    The flag is consumed by its option callback; ``func`` never sees it. Its ``out`` (option or
    argument), if any, is noted in the :class:`CliState` for the error boundary.
    """
    signature = inspect.signature(func, eval_str=True)
    debug = inspect.Parameter(
        "debug", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=DebugOption
    )
    context = inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)

    @functools.wraps(func)
    def command(*, ctx: typer.Context, debug: bool = False, **options: Any) -> None:
        if isinstance(ctx.obj, CliState) and options.get("out") is not None:
            ctx.obj.out = str(options["out"])
        func(**options)

    command.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), debug, context]
    )
    app.command(name)(command)
