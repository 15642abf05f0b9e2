"""`lscindex train` and `lscindex plot`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from lscindex.errors import ConfigError
from lscindex.plots import plot_runs
from lscindex.training import EpochMetrics, TrainCallbacks, TrainConfig, fit
from lscindex_cli._common import console, err_console


class RichProgress(TrainCallbacks):
    """A progress bar per epoch with the running loss and img/s, and a line per finished epoch."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  {task.fields[rate]:,.0f} img/s"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.task: TaskID | None = None
        self.steps = 0

    def on_start(
        self,
        *,
        epochs: int,
        steps_per_epoch: int,
        start_epoch: int,
        start_step: int,
        n_train: int,
        n_val: int,
        n_classes: int,
        dim: int,
        device: str,
    ) -> None:
        self.steps, self.epochs = steps_per_epoch, epochs
        resumed = (
            f", resuming at epoch {start_epoch + 1} step {start_step}"
            if start_epoch or start_step
            else ""
        )
        console.print(
            f"{n_classes:,} classes, {n_train:,} train / {n_val:,} val images, output dim "
            f"{dim}, {device}{resumed}"
        )
        self.progress.start()

    def on_step(self, *, epoch: int, step: int, loss: float, img_per_s: float) -> None:
        if self.task is None:
            self.task = self.progress.add_task(
                "train",
                total=self.steps,
                epoch=f"{epoch + 1}/{self.epochs}",
                loss=loss,
                rate=img_per_s,
            )
        self.progress.update(self.task, completed=step, loss=loss, rate=img_per_s)

    def on_epoch(self, metrics: EpochMetrics) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
        val = (
            f"val top-1 {metrics.val_top1:.3f} top-5 {metrics.val_top5:.3f} "
            f"loss {metrics.val_loss:.4f}"
            if metrics.val_top1 is not None
            else "no val set"
        )
        console.print(
            f"epoch {metrics.epoch}: train loss {metrics.train_loss:.4f}, {val}, "
            f"{metrics.img_per_s:,.0f} img/s, {metrics.wall_s:.1f} s, "
            f"peak {metrics.peak_mem_mb:,.0f} MiB"
        )

    def on_warning(self, message: str) -> None:
        err_console.print(f"[yellow]warning:[/yellow] {message}")

    def close(self) -> None:
        self.progress.stop()


def train(
    data: Annotated[
        Path, typer.Argument(help="ImageFolder (train/ [val/]) or manifest .parquet/.csv.")
    ],
    out: Annotated[
        Path, typer.Option(help="Run directory to create (or continue with --resume).")
    ] = Path("runs/default"),
    model: Annotated[str, typer.Option(help="timm backbone name.")] = "resnet18",
    pretrained: Annotated[bool, typer.Option(help="Start from timm's pretrained weights.")] = False,
    head: Annotated[
        str, typer.Option(help="lsc (fixed targets) or ce (softmax baseline).")
    ] = "lsc",
    system: Annotated[
        str, typer.Option(help="Vector system kind: v21, v11, v22, v21s, ...")
    ] = "v21",
    dim: Annotated[str, typer.Option(help="Latent dim: auto (n_min) or an integer.")] = "auto",
    assignment: Annotated[
        str,
        typer.Option(
            help="Which target each class owns: data (matched to where the network puts the "
            "class, re-matched early in training) or codec (seeded, table-free)."
        ),
    ] = "data",
    rematch_per_epoch: Annotated[
        int,
        typer.Option(help="Re-match the data assignment this often per epoch (0: never)."),
    ] = 1,
    rematch_until: Annotated[
        float,
        typer.Option(help="Re-match only in this first share of the steps."),
    ] = 0.5,
    rematch_margin: Annotated[
        float,
        typer.Option(help="A class moves to a new target only if it is closer by this cosine."),
    ] = 0.0,
    assign_samples: Annotated[
        int, typer.Option(help="Training images per class in the class means (0: all).")
    ] = 8,
    epochs: Annotated[int, typer.Option(help="Epochs.")] = 10,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", help="Batch size per process.")
    ] = 128,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 2e-3,
    opt: Annotated[str, typer.Option(help="timm.optim optimizer name.")] = "adamw",
    sched: Annotated[str, typer.Option(help="timm.scheduler schedule name.")] = "cosine",
    warmup_epochs: Annotated[int, typer.Option(help="Linear warm-up epochs.")] = 1,
    weight_decay: Annotated[float, typer.Option(help="Weight decay.")] = 0.05,
    img_size: Annotated[int, typer.Option(help="Input side in pixels.")] = 32,
    augment: Annotated[bool, typer.Option(help="Random crops during training.")] = True,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    amp: Annotated[bool, typer.Option(help="Mixed precision (fp16 on CUDA, bf16 on CPU).")] = False,
    workers: Annotated[int, typer.Option(help="Data loader worker processes.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of init, shuffling and augmentation.")] = 0,
    system_seed: Annotated[int, typer.Option(help="Seed of the class-to-target codec.")] = 0,
    val_fraction: Annotated[
        float, typer.Option(help="Held-out share when DATA has no val split.")
    ] = 0.0,
    checkpoint_every: Annotated[
        int, typer.Option(help="Also checkpoint every N steps (0: per epoch).")
    ] = 0,
    max_steps: Annotated[int, typer.Option(help="Stop after N steps in total (0: no limit).")] = 0,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --out from its last checkpoint.")
    ] = False,
) -> None:
    """Train an encoder on fixed vector-system targets (or the cross-entropy baseline)."""
    if dim != "auto" and not dim.isdigit():
        raise ConfigError(f"--dim must be 'auto' or a positive integer, got {dim!r}")
    config = TrainConfig(
        data=str(data),
        out=str(out),
        model=model,
        pretrained=pretrained,
        head=head,  # type: ignore[arg-type]
        system=system,
        dim=None if dim == "auto" else int(dim),
        system_seed=system_seed,
        assignment=assignment,  # type: ignore[arg-type]
        rematch_per_epoch=rematch_per_epoch,
        rematch_until=rematch_until,
        rematch_margin=rematch_margin,
        assign_samples=assign_samples,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        opt=opt,
        sched=sched,
        warmup_epochs=warmup_epochs,
        weight_decay=weight_decay,
        img_size=img_size,
        augment=augment,
        device=device,
        amp=amp,
        workers=workers,
        seed=seed,
        val_fraction=val_fraction,
        checkpoint_every=checkpoint_every,
        max_steps=max_steps,
    )
    progress = RichProgress()
    try:
        result = fit(config, resume=resume, callbacks=progress)
    finally:
        progress.close()
    if result.rank != 0:
        return
    if result.metrics and result.metrics[-1].val_top1 is not None:
        last = result.metrics[-1]
        console.print(
            f"[bold]val top-1 {last.val_top1:.3f}, top-5 {last.val_top5:.3f}[/bold] "
            f"after epoch {last.epoch}; run saved in {result.run_dir}"
        )
    else:
        console.print(f"run saved in {result.run_dir}")


def plot(
    runs: Annotated[list[Path], typer.Argument(help="Run directories to draw.")],
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("curves.png"),
) -> None:
    """Draw loss and accuracy curves of one or several runs into one PNG."""
    console.print(f"wrote {plot_runs(runs, out)}")
