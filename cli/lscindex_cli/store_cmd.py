"""`lscindex embed` and `lscindex index`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from lscindex.embedding import build_store
from lscindex.index import build_index
from lscindex_cli._common import console, default_of, shown


def embed(
    data: Annotated[
        list[Path], typer.Argument(help="Image files, folders (recursive) or manifests.")
    ],
    run: Annotated[Path, typer.Option(help="Run directory made by lscindex train.")],
    out: Annotated[Path, typer.Option(help="Store: a .zarr folder or a .parquet file.")],
    dtype: Annotated[str, typer.Option(help="float16 or float32.")] = default_of(
        build_store, "dtype"
    ),
    batch_size: Annotated[int, typer.Option("--batch-size", "-b")] = default_of(
        build_store, "batch_size"
    ),
    workers: Annotated[int, typer.Option(help="Image decoding worker processes.")] = default_of(
        build_store, "workers"
    ),
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = default_of(
        build_store, "device"
    ),
    chunk_rows: Annotated[
        int, typer.Option(help="At most this many rows per store chunk (the resume unit).")
    ] = default_of(build_store, "chunk_rows"),
    overwrite: Annotated[
        bool, typer.Option(help="Replace a finished or foreign store at --out.")
    ] = False,
) -> None:
    """Embed images with a trained run into a resumable zarr or parquet store."""
    with Progress(
        TextColumn("embedding"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:,.0f} img/s"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("embed", total=None, rate=0.0)

        def progress(done: int, todo: int, rate: float) -> None:
            bar.update(task, completed=done, total=todo, rate=rate)

        report = build_store(
            run,
            [str(d) for d in data],
            out,
            dtype=dtype,
            batch_size=batch_size,
            workers=workers,
            device=device,
            chunk_rows=chunk_rows,
            overwrite=overwrite,
            progress=progress,
        )
    header = report.header
    if report.already_complete:
        console.print(
            f"{shown(out)} is already complete ({header.count:,} rows); left untouched "
            f"(--overwrite to redo it)"
        )
        return
    console.print(
        f"embedded {report.computed_rows:,} images into {shown(out)} ({header.count:,} rows, "
        f"dim {header.dim}, {shown(header.dtype)}) in {report.seconds:.1f} s"
        + (f"; {report.errors} unreadable (status=error)" if report.errors else "")
    )


def index(
    store: Annotated[Path, typer.Argument(help="Store made by lscindex embed.")],
    factory: Annotated[
        str, typer.Option(help="FAISS factory: Flat, HNSW32, IVF1024,SQ8, ...")
    ] = default_of(build_index, "factory"),
    out: Annotated[
        Path | None, typer.Option(help="Index path (default: beside the store).")
    ] = None,
) -> None:
    """Build a FAISS index over a store, with a verified JSON sidecar."""
    info = build_index(store, factory=factory, out=out)
    console.print(
        f"indexed {info.count:,} embeddings ({shown(info.factory)}, dim {info.dim}) into "
        f"{shown(info.path)}"
    )
