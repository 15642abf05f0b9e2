"""Shared CLI plumbing: consoles, JSON output, library defaults, help rendering, choices and
the ``--debug`` and ``--version`` flags."""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib.metadata
import inspect
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

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
    app.command(name, cls=CliCommand)(command)


def _show_version(value: bool) -> None:
    if value:
        try:
            version = importlib.metadata.version("lscindex")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown (not installed: pip install -e .)"
        sys.stdout.write(f"lscindex {version}\n")
        raise typer.Exit()


VersionOption = Annotated[
    bool,
    typer.Option(
        "--version", help="Show the version and exit.", is_eager=True, callback=_show_version
    ),
]


# -- help screens -------------------------------------------------------------------------------
def _plain_help(command: Any) -> None:
    """Read every help text of ``command`` as plain text: ``[val/]`` is shown, not rich markup."""
    for item in (command, *command.params):
        for attr in ("help", "short_help"):
            if getattr(item, attr, None):
                setattr(item, attr, escape(getattr(item, attr)))


def _untyped_flags(params: list[Any]) -> list[Any]:
    """Flags (``--json``, ``--help``) take no value, so the help shows no ``<bool>`` type."""
    for param in params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
    return params


class CliCommand(TyperCommand):
    """A command whose help texts are plain text and whose flags show no value type."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _plain_help(self)

    def get_params(self, ctx: Any) -> list[Any]:
        return _untyped_flags(super().get_params(ctx))


class CliGroup(TyperGroup):
    """A command group whose help texts are plain text and whose flags show no value type."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _plain_help(self)

    def get_params(self, ctx: Any) -> list[Any]:
        return _untyped_flags(super().get_params(ctx))


# -- options with a fixed set of values ---------------------------------------------------------
# --device: what lscindex._distributed.select_device accepts.
DEVICE_CHOICES: dict[str, Any] = {
    "choices": ("auto", "cpu", "cuda"),
    "patterns": {"cuda:N": r"cuda:\d+"},
}


def choice_option(
    *decls: str,
    help: str,
    choices: Sequence[str] | Callable[[], Sequence[str]],
    patterns: dict[str, str] | None = None,
    metavar: str | None = None,
    key: Callable[[str], str] = str,
    where: str = "",
    deferred: Sequence[str] = (),
) -> Any:
    r"""A ``typer.Option`` whose value is checked as the command line is parsed: a typo is a
    one-line usage error (exit 2) naming the value and listing the valid ones.

    Args:
        choices: the valid values, or a function giving them (called only when checking).
        patterns: more valid values, ``{shown: regex}``, e.g. ``{"cuda:N": r"cuda:\d+"}``.
        metavar: the help's value type (default: the choices joined by ``|``).
        key: what of a value is looked up (e.g. ``str.lower``).
        where: what lists them, when there are over 12 (e.g. ``timm.optim.list_optimizers()``):
            the error then names the close matches only.
        deferred: values let through, not listed, for the library to refuse with its reason
            (e.g. a timm schedule the training loop cannot step).
    """
    patterns = patterns or {}

    def names() -> list[str]:
        return [str(c) for c in (choices() if callable(choices) else choices)]

    def check(value: str) -> str:
        known = names()
        if key(value) in (*known, *deferred) or any(
            re.fullmatch(rx, value) for rx in patterns.values()
        ):
            return value
        if len(known) <= 12 or not where:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join([*known, *patterns])}")
        close = difflib.get_close_matches(key(value), known, n=5, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "print that list to choose one"
        raise typer.BadParameter(
            f"{value!r} is not one of the {len(known)} names of {where}; {hint}"
        )

    def complete(incomplete: str) -> list[str]:
        return [name for name in names() if name.startswith(incomplete)]

    shown = metavar or f"<{'|'.join([*names(), *patterns])}>"
    return typer.Option(*decls, help=help, metavar=shown, callback=check, autocompletion=complete)


# -- the run, store and index of query and serve (chosen by Retriever.open) ---------------------
RunChoice = Annotated[
    Path | None, typer.Option("--run", help="Run (default: the only run under ./runs).")
]
StoreChoice = Annotated[
    str | None,
    typer.Option(
        "--store", help="Store to search (default: the only store embedded with the run)."
    ),
]
NoStoreFlag = Annotated[bool, typer.Option("--no-store", help="Classes only: search no store.")]
IndexChoice = Annotated[
    str | None, typer.Option("--index", help="Index (default: beside the store).")
]
