"""`lscindex eval`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lscindex.evaluation import SPLITS, EvalReport, evaluate
from lscindex.schema import to_json
from lscindex_cli._common import (
    DEVICE_CHOICES,
    choice_option,
    console,
    default_of,
    err_console,
    shown,
)
from lscindex_cli._progress import LOG_INTERVAL, LogIntervalOption, Reporter


def eval_run(
    run: Annotated[Path, typer.Argument(help="Run directory made by lscindex train.")],
    data: Annotated[Path, typer.Argument(help="Labelled data, as train takes it.")],
    split: Annotated[
        str, choice_option(help="all: train and val together.", choices=SPLITS)
    ] = default_of(evaluate, "split"),
    store: Annotated[
        str | None, typer.Option(help="A store of this run: also recall@k and mAP@k.")
    ] = None,
    k: Annotated[
        int, typer.Option("-k", help="Stored neighbours per image for recall@k and mAP@k.")
    ] = default_of(evaluate, "k"),
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", "-b", help="Default: the run's.")
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", "-j", help="Image decoding worker processes.")
    ] = default_of(evaluate, "workers"),
    device: Annotated[
        str, choice_option(help="auto: CUDA when present, else the CPU.", **DEVICE_CHOICES)
    ] = default_of(evaluate, "device"),
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the versioned JSON document.")
    ] = False,
    log_interval: LogIntervalOption = LOG_INTERVAL,
) -> None:
    """Top-1/top-5, worst classes, confusions, novelty and (with a store) recall@k and mAP@k."""
    # The JSON document alone goes to stdout; bars or progress lines go to stderr then.
    with Reporter(log_interval=log_interval, out=err_console if as_json else console) as bars:

        def progress(done: int, todo: int, rate: float) -> None:
            eta = (todo - done) / rate if rate > 0 else None
            bars.update("eval", done, todo, unit="images", rate=rate, rate_unit="img/s", eta_s=eta)

        report = evaluate(
            run,
            data,
            split=split,
            store=store,
            k=k,
            batch_size=batch_size,
            workers=workers,
            device=device,
            progress=progress,
        )
    if as_json:
        sys.stdout.write(to_json(report.to_document()) + "\n")
        return
    _print_report(report)


def _print_report(report: EvalReport) -> None:
    """The figures, the worst classes and the most confused pairs, as three short tables."""
    console.print(
        f"{shown(report.run['path'])} on {shown(report.data)} ({shown(report.split)}: "
        f"{report.images:,} images, {report.unreadable:,} unreadable)"
    )
    figures = Table("figure", "value")
    figures.add_row("top-1", f"{report.top1:.2%}")
    figures.add_row(f"top-{report.top_k}", f"{report.top5:.2%}")
    figures.add_row("mean class accuracy", f"{report.mean_class_accuracy:.2%}")
    if report.novelty_rate is not None:
        figures.add_row("novel (target of no class)", f"{report.novelty_rate:.2%}")
    found = report.retrieval
    if found is not None and found.recall_at_k is not None and found.map_at_k is not None:
        figures.add_row(f"recall@{found.k}", f"{found.recall_at_k:.2%}")
        figures.add_row(f"mAP@{found.k}", f"{found.map_at_k:.2%}")
    console.print(figures)
    if found is not None and report.store is not None and report.index is not None:
        where = shown(report.index["path"] or "exact search in memory")
        console.print(
            f"retrieval: {shown(report.store['path'])} ({where}); {found.queries:,} images "
            f"counted, {found.without_relevant:,} without another stored item of their class"
        )
    worst = Table("worst classes", "id", "images", "top-1")
    for c in report.worst_classes:
        worst.add_row(shown(c.name), str(c.id), f"{c.images:,}", f"{c.accuracy:.2%}")
    console.print(worst)
    if report.confusions:
        confused = Table("true", "predicted", "images")
        for p in report.confusions:
            confused.add_row(shown(p.true_name), shown(p.pred_name), f"{p.count:,}")
        console.print(confused)
