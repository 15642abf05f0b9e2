"""`lscindex data ...`: build datasets: glyphs (one class per character, split by font) and
instances (one class per (character, font), jittered renders in parquet shards)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lscindex.glyphs import (
    DEFAULT_MIN_FONTS,
    DEFAULT_VAL_FONTS,
    build_glyph_dataset,
    plan_glyph_dataset,
)
from lscindex.glyphs.instances import build_instance_dataset
from lscindex_cli._common import CliGroup, DebugOption, add_command, console, default_of, shown
from lscindex_cli._progress import LOG_INTERVAL, LogIntervalOption, Reporter

data_app = typer.Typer(help="Build datasets.", no_args_is_help=True, cls=CliGroup)


@data_app.callback()
def _data(debug: DebugOption = False) -> None:
    """Build datasets."""  # its --debug: `lscindex data --debug glyphs ...`


def glyphs(
    out: Annotated[Path, typer.Argument(help="Dataset folder to create.")],
    fonts: Annotated[
        list[str] | None,
        typer.Option(help="pip, system, or a folder/font file; repeatable (default: pip)."),
    ] = None,
    classes: Annotated[
        int | None, typer.Option(help="Keep this many classes, the best covered (default: all).")
    ] = None,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = default_of(
        build_glyph_dataset, "size"
    ),
    val_fonts: Annotated[int, typer.Option(help="Fonts held out for validation.")] = (
        DEFAULT_VAL_FONTS
    ),
    min_fonts: Annotated[int, typer.Option(help="Training fonts a class needs.")] = (
        DEFAULT_MIN_FONTS
    ),
    seed: Annotated[
        int, typer.Option(help="Seed for the choice of val fonts and classes.")
    ] = default_of(build_glyph_dataset, "seed"),
    workers: Annotated[
        int | None, typer.Option("--workers", "-j", help="Rendering processes (default: all CPUs).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace OUT if it is not empty.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count classes and images; write nothing.")
    ] = False,
    log_interval: LogIntervalOption = LOG_INTERVAL,
) -> None:
    """Render one image per (character, font); one class per character, split by font."""
    options: dict[str, Any] = {
        "fonts": fonts or default_of(build_glyph_dataset, "fonts"),
        "n_classes": classes,
        "size": size,
        "val_fonts": val_fonts,
        "min_fonts": min_fonts,
        "seed": seed,
        "workers": workers,
    }
    with Reporter(log_interval=log_interval) as reporter:

        def progress(done: int, total: int) -> None:
            # total grows by the images to write once the glyphs are analysed and chosen
            reporter.update("glyphs", done, total, unit="glyphs")

        if dry_run:
            plan = plan_glyph_dataset(**options, progress=progress)
        else:
            info = build_glyph_dataset(out, **options, overwrite=overwrite, progress=progress)
    if dry_run:
        console.print(
            f"Would write {plan.n_classes:,} classes ({plan.n_classes_available:,} available): "
            f"{plan.n_train:,} train images from {len(plan.train_fonts)} fonts, {plan.n_val:,} "
            f"val images from {len(plan.val_fonts)} held-out fonts "
            f"({shown(', '.join(plan.val_fonts))}); {len(plan.skipped_fonts)} fonts unreadable.",
            highlight=False,
            soft_wrap=True,
        )
        return
    console.print(
        f"Wrote {info.n_classes:,} classes to {shown(info.out)}: {info.n_train:,} train images "
        f"from {len(info.train_fonts)} fonts, {info.n_val:,} val images from "
        f"{len(info.val_fonts)} held-out fonts ({shown(', '.join(info.val_fonts))}), "
        f"{info.size}x{info.size} grayscale PNG.",
        highlight=False,
        soft_wrap=True,
    )


add_command(data_app, "glyphs", glyphs)


def instances(
    out: Annotated[Path, typer.Argument(help="Dataset folder to create (parquet shards).")],
    fonts: Annotated[
        list[str] | None,
        typer.Option(help="pip, system, or a folder/font file; repeatable (default: pip)."),
    ] = None,
    classes: Annotated[
        int | None,
        typer.Option(help="Keep a seeded sample of this many classes (default: all)."),
    ] = None,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = default_of(
        build_instance_dataset, "size"
    ),
    train_views: Annotated[
        int, typer.Option(help="Jittered training renders per class.")
    ] = default_of(build_instance_dataset, "train_views"),
    val_views: Annotated[
        int, typer.Option(help="Jittered validation renders per class (other seeds).")
    ] = default_of(build_instance_dataset, "val_views"),
    shard_rows: Annotated[int, typer.Option(help="Rows per parquet shard.")] = default_of(
        build_instance_dataset, "shard_rows"
    ),
    seed: Annotated[
        int, typer.Option(help="Seed of the class sample, row order and jitter.")
    ] = default_of(build_instance_dataset, "seed"),
    workers: Annotated[
        int | None, typer.Option("--workers", "-j", help="Rendering processes (default: all CPUs).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace OUT if it holds an instance dataset.")
    ] = False,
    log_interval: LogIntervalOption = LOG_INTERVAL,
) -> None:
    """Render jittered views of every (character, font) pair, one class each, into parquet
    shards (image bytes, label, split)."""
    with Reporter(log_interval=log_interval) as reporter:

        def progress(done: int, total: int) -> None:
            reporter.update("instances", done, total, unit="renders")

        info = build_instance_dataset(
            out,
            fonts=fonts or default_of(build_instance_dataset, "fonts"),
            n_classes=classes,
            size=size,
            train_views=train_views,
            val_views=val_views,
            shard_rows=shard_rows,
            seed=seed,
            workers=workers,
            overwrite=overwrite,
            progress=progress,
        )
    console.print(
        f"Wrote {info.n_classes:,} (character, font) classes ({info.n_classes_available:,} "
        f"available) to {shown(info.out)}: {info.n_train:,} train rows in "
        f"{len(info.train_shards)} shards, {info.n_val:,} val rows in {len(info.val_shards)}; "
        f"chance {info.chance:.2g}.",
        highlight=False,
        soft_wrap=True,
    )


add_command(data_app, "instances", instances)
