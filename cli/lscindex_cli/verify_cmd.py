"""`lscindex verify`: check a store, an index or a run in full."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from lscindex.verify import verify_path
from lscindex_cli._common import console, print_json, shown


def verify(
    path: Annotated[
        str, typer.Argument(help="A store (.zarr, .parquet), an index (.faiss) or a run folder.")
    ],
    store: Annotated[
        str | None,
        typer.Option(help="The store of an index (default: the one its sidecar names)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check a store, an index or a run in full (nothing is modified); exit 1 naming the first
    failure."""
    report = verify_path(path, store=store)
    if as_json:
        print_json(report.to_dict())
    else:
        table = Table(title=f"{report.kind} {shown(report.path)}", title_justify="left")
        for column in ("check", "ok", "detail"):
            table.add_column(column)
        for check in report.checks:
            mark = "[green]ok[/green]" if check.ok else "[red]FAILED[/red]"
            table.add_row(shown(check.name), mark, shown(check.detail))
        console.print(table)
    report.raise_for_failure()  # the CLI's error boundary prints it on one line, exit 1
