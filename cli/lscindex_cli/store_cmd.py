"""`lscindex embed` and `lscindex index`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, cast

import typer

from lscindex.embedding import EmbedReport, build_store
from lscindex.features import FeatureSpec, create_spec
from lscindex.index import (
    TARGET_RECALL,
    IndexInfo,
    build_index,
    default_index_path,
    update_index,
)
from lscindex.index_factory import FactoryChoice
from lscindex_cli._common import (
    DEVICE_CHOICES,
    choice_option,
    console,
    default_of,
    human_bytes,
    shown,
)
from lscindex_cli._progress import LOG_INTERVAL, LogIntervalOption, Reporter


def embed(
    data: Annotated[
        list[Path], typer.Argument(help="Image files, folders (recursive) or manifests.")
    ],
    out: Annotated[
        str,
        typer.Option(help="Store: a .zarr folder or a .parquet file, or an fsspec URL (s3://...)."),
    ],
    run: Annotated[Path | None, typer.Option(help="Run directory made by lscindex train.")] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Instead of a run: a plain timm model, whose pooled features are stored "
            "(with --pretrained or --checkpoint)."
        ),
    ] = None,
    pretrained: Annotated[
        bool, typer.Option("--pretrained", help="--model's timm pretrained weights.")
    ] = False,
    checkpoint: Annotated[
        Path | None, typer.Option(help="--model's weights: a .safetensors state_dict.")
    ] = None,
    img_size: Annotated[
        int | None, typer.Option(help="--model's input side (default: its pretrained one).")
    ] = None,
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
    split: Annotated[
        str,
        choice_option(
            help="train or val: only that split's rows of parquet shard sources.",
            choices=("all", "train", "val"),
        ),
    ] = default_of(build_store, "split"),
    log_interval: LogIntervalOption = LOG_INTERVAL,
) -> None:
    """Embed images with a trained run (or a plain timm model) into a resumable zarr or parquet
    store, or append to one."""
    with Reporter(log_interval=log_interval) as reporter:

        def progress(done: int, todo: int, rate: float) -> None:
            eta = (todo - done) / rate if rate > 0 else None
            reporter.update(
                "embed", done, todo, unit="images", rate=rate, rate_unit="img/s", eta_s=eta
            )

        report = build_store(
            _encoder(run, model, pretrained=pretrained, checkpoint=checkpoint, img_size=img_size),
            [str(d) for d in data],
            out,
            dtype=dtype,
            batch_size=batch_size,
            workers=workers,
            device=device,
            chunk_rows=chunk_rows,
            overwrite=overwrite,
            append=append,
            split=split,
            progress=progress,
        )
    _print_report(report, out, append=append)


def _print_report(report: EmbedReport, out: str, *, append: bool) -> None:
    """What embed did, in one line."""
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


def _encoder(
    run: Path | None,
    model: str | None,
    *,
    pretrained: bool,
    checkpoint: Path | None,
    img_size: int | None,
) -> Path | FeatureSpec:
    """The run, or the spec of the plain timm model, that --run / --model name (one of them)."""
    if run is not None and model is None:
        if pretrained or checkpoint is not None or img_size is not None:
            raise typer.BadParameter(
                "--pretrained, --checkpoint and --img-size go with --model, not --run"
            )
        return run
    if model is not None and run is None:
        return create_spec(model, pretrained=pretrained, checkpoint=checkpoint, img_size=img_size)
    raise typer.BadParameter(
        "name the encoder once: --run RUN (a trained run) or --model NAME (a plain timm model, "
        "with --pretrained or --checkpoint)"
    )


def _bytes_option(value: str | None) -> int | None:
    """``2GB``, ``512MiB``, ``1.5G``, ``1000000`` -> bytes (KB, MB, GB, TB: powers of 1000;
    KiB, MiB, GiB, TiB: of 1024; a bare number is bytes); a typo is a usage error."""
    if value is None:
        return None
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(i?)b?|b?)\s*", value, re.IGNORECASE)
    if not found:
        raise typer.BadParameter(f"{value!r} is not a size; write e.g. 2GB, 512MiB or 1000000")
    number, unit, binary = found.groups()
    scale = (1024 if binary else 1000) ** ("kmgt".index(unit.lower()) + 1) if unit else 1
    size = int(float(number) * scale)
    if size < 1:
        raise typer.BadParameter(f"{value!r} is not a positive size; write e.g. 2GB or 512MiB")
    return size


def index(
    store: Annotated[str, typer.Argument(help="Store made by lscindex embed (path or URL).")],
    factory: Annotated[
        str | None,
        typer.Option(
            help=f"FAISS factory: {default_of(build_index, 'factory')} (default), HNSW32, "
            "IVF1024,SQ8, ..., or auto: chosen from the rows, the dim and --max-memory."
        ),
    ] = None,
    max_memory: Annotated[
        str | None,
        typer.Option(
            help="Memory budget of the index for --factory auto, e.g. 2GB, 512MiB.",
            metavar="<size>",
            callback=_bytes_option,
        ),
    ] = None,
    recall_queries: Annotated[
        int, typer.Option(help="Rows held out as recall@10 queries (at most 1/10; 0: skip).")
    ] = default_of(build_index, "recall_queries"),
    update: Annotated[
        bool,
        typer.Option(help="Add the rows the store gained (embed --append) to its index."),
    ] = False,
    out: Annotated[
        str | None, typer.Option(help="Index path or URL (default: beside the store).")
    ] = None,
    log_interval: LogIntervalOption = LOG_INTERVAL,
) -> None:
    """Build a FAISS index over a store, with a verified JSON sidecar; report its recall@10."""
    budget = cast(int | None, max_memory)  # parsed to bytes by its callback
    if update and (factory is not None or budget is not None):
        raise typer.BadParameter(
            "--update keeps the index's factory; drop --factory/--max-memory, or build anew "
            "without --update"
        )
    with Reporter(log_interval=log_interval) as reporter:

        def progress(stage: str, done: int, total: int) -> None:
            # Only adding is timed: FAISS trains in one call, its time unknown until it returns.
            eta = None if stage == "add" else float("nan")
            reporter.update(f"index {stage}", done, total, unit="rows", eta_s=eta)

        if update:
            path = out if out is not None else default_index_path(store)
            done = update_index(path, store, recall_queries=recall_queries, progress=progress)
            info = done.info
        else:
            info = build_index(
                store,
                factory=factory if factory is not None else default_of(build_index, "factory"),
                out=out,
                max_memory_bytes=budget,
                recall_queries=recall_queries,
                progress=progress,
            )
    if info.auto is not None and not update:
        _print_choice(info.auto)
    if not update:
        console.print(
            f"indexed {info.count:,} embeddings ({shown(info.factory)}, dim {info.dim}) into "
            f"{shown(info.path)}"
        )
    elif done.rebuilt:
        console.print(
            f"rebuilt {shown(info.path)} ({shown(done.reason)}): {info.count:,} embeddings "
            f"({shown(info.factory)}, dim {info.dim})"
        )
    else:
        console.print(
            f"added {done.added_rows:,} rows to {shown(info.path)} ({shown(info.factory)}): "
            f"{info.count:,} embeddings"
        )
    _print_recall(info)
    if update and done.advice:
        console.print(f"[yellow]{shown(done.advice)}[/yellow]")


def _print_choice(choice: FactoryChoice) -> None:
    """What ``--factory auto`` considered: each candidate's estimated memory, and why."""
    console.print(f"auto: {shown(choice.reason)}")
    width = max(len(c.factory) for c in choice.candidates)
    for c in choice.candidates:
        fits = "fits" if c.fits else "over budget"
        mark = "  <- chosen" if c.factory == choice.factory else ""
        size = "~" + human_bytes(c.estimated_bytes)
        console.print(f"  {shown(c.factory):<{width}}  {size:>11}  {fits}{mark}")


def _print_recall(info: IndexInfo) -> None:
    """recall@10 against exact search, the default knob chosen and the settings tried."""
    if info.recall is None:
        console.print("recall not measured (--recall-queries 0)")
        return
    knob = "nprobe" if info.default_nprobe is not None else "efSearch"
    default = info.default_nprobe or info.default_ef_search
    tried = ", ".join(f"{t.value}: {t.recall:.3f}" for t in info.tuning)
    rule = f"the smallest reaching {TARGET_RECALL} by two standard errors"
    setting = f" at the default {knob} {default} ({rule}; tried {tried})" if default else ""
    console.print(
        f"recall@{info.recall_k} {info.recall:.3f} against exact search on "
        f"{info.recall_queries:,} held-out rows{setting or ' (exact index)'}"
    )
    if default and info.recall < TARGET_RECALL:
        console.print(
            f"[yellow]below {TARGET_RECALL} at every {knob} tried: a larger --max-memory or "
            f"another factory would find more of the true neighbours[/yellow]"
        )
