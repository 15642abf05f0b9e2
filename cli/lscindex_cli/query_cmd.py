"""`lscindex query`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lscindex.errors import DataError
from lscindex.retrieval import QueryResult, Retriever
from lscindex.schema import query_document, to_json
from lscindex_cli._common import (
    IndexChoice,
    NoStoreFlag,
    RunChoice,
    StoreChoice,
    console,
    default_of,
    err_console,
    print_error,
    shown,
)


def query(
    images: Annotated[list[Path], typer.Argument(help="Query images or folders (recursive).")],
    run: RunChoice = None,
    store: StoreChoice = None,
    no_store: NoStoreFlag = False,
    index_path: IndexChoice = None,
    k: Annotated[int, typer.Option("-k", help="Classes and neighbours per image.")] = default_of(
        Retriever.query, "k"
    ),
    batch_size: Annotated[int, typer.Option("--batch-size", "-b")] = default_of(
        Retriever.query, "batch_size"
    ),
    nprobe: Annotated[
        int | None,
        typer.Option(help="IVF indexes: lists to visit (default: the index's, see its sidecar)."),
    ] = None,
    ef_search: Annotated[
        int | None,
        typer.Option(help="HNSW indexes: efSearch (default: the index's, see its sidecar)."),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the versioned JSON document.")
    ] = False,
) -> None:
    """Top-k classes of each image and, with a store, its k nearest stored items.

    Says which run, store and index answer. Unreadable images are reported (exit status 1).
    """
    retriever = Retriever.open(
        run, store=False if no_store else store, index=index_path, device=device
    )
    results = retriever.query(
        [str(i) for i in images], k=k, batch_size=batch_size, nprobe=nprobe, ef_search=ef_search
    )
    if not results:
        listed = ", ".join(map(str, images))
        raise DataError(f"no images found in {listed}; pass image files or folders holding images")
    failed = [r for r in results if r.error is not None]
    if as_json:
        sys.stdout.write(to_json(query_document(retriever, results, k=k)) + "\n")
    elif len(failed) == len(results):  # nothing to show: the one-line error alone
        raise DataError(_failure(failed, results))
    else:
        print_choice(retriever)
        _print_tables(results, retriever)
    if failed:
        print_error(_failure(failed, results))
        raise typer.Exit(1)


def _failure(failed: list[QueryResult], results: list[QueryResult]) -> str:
    if len(results) == 1:
        return str(failed[0].error)
    return f"{len(failed)} of {len(results)} images could not be read (first: {failed[0].error})"


def print_choice(retriever: Retriever) -> None:
    """Which run, store and index answer, and why each, on stderr."""
    chosen, run = retriever.chosen, retriever.run
    head = f"{run.system.kind}, dim {run.system.dim}" if run.system is not None else "ce head"
    head = (
        f"timm features, dim {run.model.embed_dim}"
        if retriever.score_meaning == "knn_vote"
        else head
    )
    lines = [f"run {shown(run.path)} ({head}; {shown(chosen['run'])})"]
    if retriever.store is not None:
        st = retriever.store
        where = shown(retriever.index_path) if retriever.index_path is not None else "in memory"
        lines.append(f"store {shown(st.path)} ({st.header.count:,} rows; {shown(chosen['store'])})")
        lines.append(f"index {where} ({shown(retriever.index_factory)}; {shown(chosen['index'])})")
    else:
        lines.append(f"no store searched ({shown(chosen['store'])})")
    for line in lines:
        err_console.print(f"[dim]{line}[/dim]", highlight=False)


def _print_tables(results: list[QueryResult], retriever: Retriever) -> None:
    """One table of classes per image, and one of its nearest stored items when there are any."""
    score = retriever.score_meaning
    for result in results:
        if result.error is not None:
            console.print(f"[red]{shown(result.image)}: {shown(result.error)}[/red]")
            continue
        novel = (
            " [yellow](novel: nearest to a target no class owns)[/yellow]"
            if result.classes[0].novel
            else ""
        )
        table = Table(title=f"{shown(result.image)}{novel}", title_justify="left")
        for col in ("class", "id", score, "margin"):
            table.add_column(col, justify="left" if col == "class" else "right")
        for c in result.classes:
            margin = "" if c.margin is None else f"{c.margin:.4f}"
            table.add_row(shown(c.name), str(c.id), f"{c.score:.4f}", margin)
        console.print(table)
        if result.neighbors and retriever.store is not None:
            near = Table(
                title=f"nearest stored items ({shown(retriever.store.path)})",
                title_justify="left",
            )
            for col in ("path", "label", "cosine"):
                near.add_column(col, justify="right" if col == "cosine" else "left")
            for n in result.neighbors:
                near.add_row(shown(n.path), shown(n.label_name or ""), f"{n.score:.4f}")
            console.print(near)
