"""The ``lscindex`` command line: each command parses options, calls the library and renders."""

from __future__ import annotations

import sys

import typer

from lscindex.errors import LscIndexError
from lscindex_cli import store_cmd, systems_cmd, train_cmd
from lscindex_cli._common import CliState, DebugOption, add_command, err_console
from lscindex_cli.data_cmd import data_app

app = typer.Typer(
    name="lscindex",
    help="Train image encoders on fixed vector-system targets and serve extreme-class retrieval.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(debug: DebugOption = False) -> None:
    """lscindex: vector-system targets, compact embeddings, FAISS retrieval."""


add_command(app, "systems", systems_cmd.systems)
app.add_typer(data_app, name="data")
add_command(app, "train", train_cmd.train)
add_command(app, "plot", train_cmd.plot)
add_command(app, "embed", store_cmd.embed)
add_command(app, "index", store_cmd.index)
add_command(app, "query", store_cmd.query)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: library errors become one line on stderr and exit status 1.

    ``--debug`` (before or after the command) lets the error through with its traceback.
    """
    state = CliState()  # typer's parse of --debug lands here (see _common.DebugOption)
    try:
        app(args=list(sys.argv[1:] if argv is None else argv), prog_name="lscindex", obj=state)
    except LscIndexError as exc:
        if state.debug:
            raise
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
