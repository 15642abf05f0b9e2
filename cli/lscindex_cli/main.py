"""The ``lscindex`` command line: each command parses options, calls the library and renders."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from lscindex.errors import LscIndexError
from lscindex_cli import store_cmd, systems_cmd, train_cmd
from lscindex_cli._common import err_console
from lscindex_cli.data_cmd import data_app

app = typer.Typer(
    name="lscindex",
    help="Train image encoders on fixed vector-system targets and serve extreme-class retrieval.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the full traceback when a command fails.")
    ] = False,
) -> None:
    """lscindex: vector-system targets, compact embeddings, FAISS retrieval."""


app.command("systems")(systems_cmd.systems)
app.add_typer(data_app, name="data")
app.command("train")(train_cmd.train)
app.command("plot")(train_cmd.plot)
app.command("embed")(store_cmd.embed)
app.command("index")(store_cmd.index)
app.command("query")(store_cmd.query)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: library errors become one line on stderr and exit status 1."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        app(args=args, prog_name="lscindex")
    except LscIndexError as exc:
        if debug:
            raise
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
