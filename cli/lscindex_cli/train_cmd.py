"""`lscindex train` and `lscindex plot`."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Annotated, Any, Literal, get_origin, get_type_hints

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
from lscindex.training.config import SCHEDULES
from lscindex_cli._common import console, err_console, shown


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
            f"{dim}, {shown(device)}{resumed}"
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
        err_console.print(f"[yellow]warning:[/yellow] {shown(message)}", highlight=False)

    def close(self) -> None:
        self.progress.stop()


# Help text of each TrainConfig field. The options themselves (names, types, defaults) come from
# TrainConfig, so a new field is a new option; tests/test_cli.py checks each has its help here.
HELP = {
    "data": "ImageFolder (train/ [val/]) or manifest .parquet/.csv.",
    "out": "Run directory to create (or continue with --resume).",
    "model": "timm backbone name.",
    "pretrained": "Start from timm's pretrained weights.",
    "head": "lsc (fixed targets) or ce (softmax baseline).",
    "system": "Vector system kind: v21, v11, v22, v21s, ...",
    "dim": "Latent dim: auto (n_min) or an integer.",
    "system_seed": "Seed of the class-to-target codec.",
    "assignment": "Which target each class owns: data (matched to where the network puts the "
    "class, re-matched early in training) or codec (seeded, table-free).",
    "rematch_per_epoch": "Re-match the data assignment this often per epoch (0: never).",
    "rematch_until": "Re-match only in this first share of the steps.",
    "rematch_margin": "A class moves to a new target only if it is closer by this cosine.",
    "assign_samples": "Training images per class in the class means (0: all).",
    "epochs": "Epochs.",
    "batch_size": "Batch size per process.",
    "lr": "Peak learning rate.",
    "opt": "timm.optim optimizer name (timm.optim.list_optimizers()).",
    "sched": f"timm.scheduler schedule: {', '.join(SCHEDULES)}.",
    "warmup_epochs": "Linear warm-up epochs.",
    "weight_decay": "Weight decay.",
    "img_size": "Input side in pixels.",
    "augment": "Random crops during training.",
    "device": "auto, cpu or cuda.",
    "amp": "Mixed precision (fp16 on CUDA, bf16 on CPU).",
    "workers": "Data loader worker processes.",
    "seed": "Seed of init, shuffling and augmentation.",
    "val_fraction": "Held-out share when DATA has no val split.",
    "checkpoint_every": "Also checkpoint every N steps (0: per epoch).",
    "max_steps": "Stop after N steps in total (0: no limit).",
}
_PATHS = ("data", "out")  # str in the config, a path on the command line
_DECLS = {"batch_size": ("--batch-size", "-b")}
_KW = inspect.Parameter.KEYWORD_ONLY


def _parameter(field: dataclasses.Field[Any], hint: Any) -> inspect.Parameter:
    """The typer parameter of one TrainConfig field: its type and default, with HELP's text.

    A field without a default is an argument. ``dim`` None (the system's n_min) is spelled
    ``auto``. Literal fields stay strings, so TrainConfig rejects a bad value by name (exit 1).
    """
    text = HELP.get(field.name, "")
    if field.default is dataclasses.MISSING:
        annotation = Annotated[Path, typer.Argument(help=text)]
        return inspect.Parameter(field.name, _KW, annotation=annotation)
    default = field.default
    if field.name in _PATHS:
        hint = Path
    elif field.name == "dim":
        hint, default = str, "auto"
    elif get_origin(hint) is Literal:
        hint = str
    option = typer.Option(*_DECLS.get(field.name, ()), help=text)
    return inspect.Parameter(field.name, _KW, default=default, annotation=Annotated[hint, option])


def _signature() -> inspect.Signature:
    """``train``'s parameters: one per TrainConfig field, then ``--resume`` (an argument of fit)."""
    hints = get_type_hints(TrainConfig)
    resume = typer.Option(help="Continue the run in --out from its last checkpoint.")
    return inspect.Signature(
        [
            *(_parameter(field, hints[field.name]) for field in dataclasses.fields(TrainConfig)),
            inspect.Parameter("resume", _KW, default=False, annotation=Annotated[bool, resume]),
        ]
    )


def _config(options: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of the parsed options (``resume`` taken out): undoes :func:`_parameter`."""
    dim = options["dim"]
    if dim != "auto" and not (dim.isascii() and dim.isdigit()):
        raise ConfigError(f"--dim must be 'auto' or a positive integer, got {dim!r}")
    paths = {name: str(options[name]) for name in _PATHS}
    return TrainConfig(**{**options, **paths, "dim": None if dim == "auto" else int(dim)})


def train(**options: Any) -> None:
    """Train an encoder on fixed vector-system targets (or the cross-entropy baseline)."""
    resume = options.pop("resume")
    config = _config(options)
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
            f"after epoch {last.epoch}; run saved in {shown(result.run_dir)}"
        )
    else:
        console.print(f"run saved in {shown(result.run_dir)}")


train.__signature__ = _signature()  # type: ignore[attr-defined]


def plot(
    runs: Annotated[list[Path], typer.Argument(help="Run directories to draw.")],
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("curves.png"),
) -> None:
    """Draw loss and accuracy curves of one or several runs into one PNG."""
    console.print(f"wrote {shown(plot_runs(runs, out))}")
