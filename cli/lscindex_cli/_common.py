"""Shared CLI plumbing: consoles, JSON output, library defaults and the ``--debug`` flag."""

from __future__ import annotations

import functools
import inspect
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


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
    """What one invocation parsed beyond a command's options; ``main`` passes it as ``obj``."""

    debug: bool = False


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

    The flag is consumed by its option callback; ``func`` never sees it.
    """
    signature = inspect.signature(func, eval_str=True)
    debug = inspect.Parameter(
        "debug", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=DebugOption
    )

    @functools.wraps(func)
    def command(*, debug: bool = False, **options: Any) -> None:
        func(**options)

    command.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), debug]
    )
    app.command(name)(command)
