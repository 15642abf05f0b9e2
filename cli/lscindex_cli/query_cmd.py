"""`lscindex query`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lscindex.embedding import find_store
from lscindex.errors import RunError
from lscindex.retrieval import ClassMatch, Neighbor, Retriever
from lscindex.run import find_run
from lscindex_cli._common import console, default_of, print_json, shown


def query(
    images: Annotated[list[Path], typer.Argument(help="Query images.")],
    run: Annotated[
        Path | None, typer.Option(help="Run (default: the newest under ./runs).")
    ] = None,
    store: Annotated[Path | None, typer.Option(help="Store (default: the run's newest).")] = None,
    index_path: Annotated[
        Path | None, typer.Option("--index", help="Index (default: beside the store).")
    ] = None,
    k: Annotated[int, typer.Option("-k", help="Classes and neighbours per image.")] = default_of(
        Retriever.classify, "k"
    ),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Top-k classes of each image and, with a store, its k nearest stored items."""
    if run is None:
        run = find_run("runs")
        if run is None:
            raise RunError(
                "no run found under ./runs; pass --run RUN (a directory made by lscindex train)"
            )
    if store is None and index_path is None:
        store = find_store(run)
    retriever = Retriever.open(run, store=store, index=index_path)
    paths = [str(i) for i in images]
    # Each image is embedded once, for both classes and neighbours. A ce run's classes come from
    # its softmax logits, not its embeddings, so it classifies the images themselves.
    lsc, searched = retriever.run.system is not None, bool(retriever.store)
    embeddings = retriever.embed(paths) if lsc or searched else None
    classes = retriever.classify(embeddings if lsc else paths, k=k)
    neighbors = retriever.search(embeddings, k=k) if searched else [[] for _ in images]
    if as_json:
        print_json(
            [
                {
                    "image": str(img),
                    "classes": [dataclasses.asdict(c) for c in cls],
                    "neighbors": [dataclasses.asdict(n) for n in nb],
                }
                for img, cls, nb in zip(images, classes, neighbors, strict=True)
            ]
        )
        return
    _print_tables(images, classes, neighbors, retriever)


def _print_tables(
    images: list[Path],
    classes: list[list[ClassMatch]],
    neighbors: list[list[Neighbor]],
    retriever: Retriever,
) -> None:
    """One table of classes per image, and one of its nearest stored items when there are any."""
    for img, cls, nb in zip(images, classes, neighbors, strict=True):
        novel = (
            " [yellow](novel: nearest to a target no class owns)[/yellow]" if cls[0].novel else ""
        )
        table = Table(title=f"{shown(img)}{novel}", title_justify="left")
        for col in ("class", "id", "cosine", "margin"):
            table.add_column(col, justify="left" if col == "class" else "right")
        for c in cls:
            table.add_row(shown(c.name), str(c.id), f"{c.cosine:.4f}", f"{c.margin:.4f}")
        console.print(table)
        if nb and retriever.store is not None:
            near = Table(
                title=f"nearest stored items ({shown(retriever.store.path)})",
                title_justify="left",
            )
            for col in ("path", "label", "cosine"):
                near.add_column(col, justify="right" if col == "cosine" else "left")
            for n in nb:
                near.add_row(shown(n.path), shown(n.label_name or ""), f"{n.cosine:.4f}")
            console.print(near)
