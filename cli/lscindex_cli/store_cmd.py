"""`lscindex embed` and `lscindex index`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lscindex.embedding import build_store
from lscindex.index import build_index
from lscindex_cli._common import DEVICE_CHOICES, choice_option, console, default_of, shown
from lscindex_cli._progress import LOG_INTERVAL, LogIntervalOption, Reporter


def embed(
    data: Annotated[
        list[Path], typer.Argument(help="Image files, folders (recursive) or manifests.")
    ],
    run: Annotated[Path, typer.Option(help="Run directory made by lscindex train.")],
    out: Annotated[Path, typer.Option(help="Store: a .zarr folder or a .parquet file.")],
    dtype: Annotated[
        str,
        choice_option(help="Embedding dtype in the store.", choices=("float16", "float32")),
    ] = default_of(build_store, "dtype"),
    batch_size: Annotated[int, typer.Option("--batch-size", "-b")] = default_of(
        build_store, "batch_size"
    ),
    workers: Annotated[
        int, typer.Option("--workers", "-j", help="Image decoding worker processes.")
    ] = default_of(build_store, "workers"),
    device: Annotated[
        str,
        choice_option(help="auto: CUDA when present, else the CPU.", **DEVICE_CHOICES),
    ] = default_of(build_store, "device"),
    chunk_rows: Annotated[
        int, typer.Option(help="At most this many rows per store chunk (the resume unit).")
    ] = default_of(build_store, "chunk_rows"),
    overwrite: Annotated[
        bool, typer.Option(help="Replace a finished or foreign store at --out.")
    ] = False,
    append: Annotated[
        bool,
        typer.Option(
            help="Add the images the zarr store at --out lacks (by id) after its rows; "
            "then index --update."
        ),
    ] = False,
    log_interval: LogIntervalOption = LOG_INTERVAL,
) -> None:
    """Embed images with a trained run into a resumable zarr or parquet store, or append to one."""
    with Reporter(log_interval=log_interval) as reporter:

        def progress(done: int, todo: int, rate: float) -> None:
            eta = (todo - done) / rate if rate > 0 else None
            reporter.update(
                "embed", done, todo, unit="images", rate=rate, rate_unit="img/s", eta_s=eta
            )

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
            append=append,
            progress=progress,
        )
    header = report.header
    held = f"; {report.skipped:,} of the images were in it already" if report.skipped else ""
    if report.already_complete:
        fix = "nothing to add" if append else "--overwrite to redo it"
        console.print(
            f"{shown(out)} is already complete ({header.count:,} rows); left untouched "
            f"({fix}){held}"
        )
        return
    console.print(
        f"{'appended' if append else 'embedded'} {report.computed_rows:,} images into "
        f"{shown(out)} ({header.count:,} rows, dim {header.dim}, {shown(header.dtype)}) in "
        f"{report.seconds:.1f} s{held}"
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
    log_interval: LogIntervalOption = LOG_INTERVAL,
) -> None:
    """Build a FAISS index over a store, with a verified JSON sidecar."""
    with Reporter(log_interval=log_interval) as reporter:

        def progress(stage: str, done: int, total: int) -> None:
            # Only adding is timed: FAISS trains in one call, its time unknown until it returns.
            eta = None if stage == "add" else float("nan")
            reporter.update(f"index {stage}", done, total, unit="rows", eta_s=eta)

        info = build_index(store, factory=factory, out=out, progress=progress)
    console.print(
        f"indexed {info.count:,} embeddings ({shown(info.factory)}, dim {info.dim}) into "
        f"{shown(info.path)}"
    )
