"""`lscindex train` and `lscindex plot`."""

from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

import typer

from lscindex.errors import ConfigError
from lscindex.plots import plot_runs
from lscindex.training import EpochMetrics, TrainCallbacks, TrainConfig, fit
from lscindex.training.config import SCHEDULES
from lscindex_cli._common import DEVICE_CHOICES, choice_option, console, err_console, shown
from lscindex_cli._progress import LOG_INTERVAL, LogIntervalOption, Reporter, WorkClock


class TrainProgress(TrainCallbacks):
    """Training progress: the whole run as one job (with validation as its own), epoch lines.

    The ETA covers every step and validation left in the run: each costs what it has cost so
    far (see :class:`WorkClock`); a validation batch costs a training step until one has run.
    """

    def __init__(self, reporter: Reporter, config: TrainConfig) -> None:
        self.reporter, self.config = reporter, config
        self.work = WorkClock(clock=reporter.clock)
        self.epochs = self.steps = self.total = self.val_steps = self.position = 0
        self.val_done = 0

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
        self.epochs, self.steps = epochs, steps_per_epoch
        self.total = epochs * steps_per_epoch
        if self.config.max_steps:
            self.total = min(self.total, self.config.max_steps)
        self.position = start_epoch * steps_per_epoch + start_step
        # Replaced by the count of the first validation (this process's share under torchrun).
        self.val_steps = math.ceil(n_val / self.config.batch_size)
        self.work = WorkClock(clock=self.reporter.clock)
        resumed = (
            f", resuming at epoch {start_epoch + 1} step {start_step}"
            if start_epoch or start_step
            else ""
        )
        console.print(
            f"{n_classes:,} classes, {n_train:,} train / {n_val:,} val images, output dim "
            f"{dim}, {shown(device)}{resumed}"
        )

    def _eta(self, epoch: int) -> float | None:
        """Seconds left: the steps still to take, and the validations of ``epoch`` and after."""
        last_epoch = math.ceil(self.total / self.steps) - 1
        val_left = self.val_steps * (last_epoch - epoch + 1) - self.val_done
        left = {"step": self.total - self.position, "val": val_left}
        return self.work.seconds_left(left, fallback={"val": "step"})

    def on_step(self, *, epoch: int, step: int, loss: float, img_per_s: float) -> None:
        position = epoch * self.steps + step
        self.work.done("step", max(position - self.position, 0))
        self.position, self.val_done = position, 0
        self.reporter.update(
            "train",
            position,
            self.total,
            label=f"train epoch {epoch + 1}/{self.epochs} step {step}/{self.steps}",
            rate=img_per_s,
            rate_unit="img/s",
            eta_s=_known(self._eta(epoch)),
            extra=f"loss {loss:.4f}",
        )

    def on_val_step(self, *, epoch: int, step: int, steps: int, img_per_s: float) -> None:
        self.work.done("val", step - self.val_done)
        self.val_steps, self.val_done = steps, step
        self.reporter.update(
            "val",
            step,
            steps,
            label=f"val epoch {epoch + 1}/{self.epochs}",
            unit="batches",
            rate=img_per_s,
            rate_unit="img/s",
            eta_s=_known(self._eta(epoch)),
        )

    def on_match(self, *, images: int, total: int, img_per_s: float) -> None:
        # its own job: the ETA of the run counts steps and validations, not matchings
        self.reporter.update(
            "match",
            images,
            total,
            label="match classes to targets (class means)",
            unit="images",
            rate=img_per_s,
            rate_unit="img/s",
        )
        if images >= total:
            self.reporter.finish("match")

    def on_epoch(self, metrics: EpochMetrics) -> None:
        self.reporter.finish("val")
        self.val_done = self.val_steps  # this epoch's validation is behind, even if it was empty
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


def _known(seconds: float | None) -> float:
    """NaN (shown as ``?``) for a time left that cannot be estimated yet."""
    return math.nan if seconds is None else seconds


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
    "assignment": "Which target each class owns: features (the untrained backbone's class "
    "geometry fitted onto the lattice, so similar classes get neighbouring targets), data "
    "(matched to where the network puts the class, re-matched early in training) or codec "
    "(seeded, table-free).",
    "centered": "Zero-mean targets (the lattice mean subtracted); decoding is unchanged.",
    "loss": "lsc loss: cosine (1 - cos to the target) or lattice (cosine plus a softmax over "
    "every vector of the system, O(dim) per sample).",
    "loss_scale": "--loss lattice: logit scale.",
    "loss_weight": "--loss lattice: weight of the softmax next to the cosine.",
    "rematch_per_epoch": "Re-match the data assignment this often per epoch (0: never).",
    "rematch_until": "Re-match only in this first share of the steps.",
    "rematch_margin": "A class moves to a new target only if it is closer by this cosine.",
    "assign_samples": "Training images per class in the class means (0: all).",
    "epochs": "Epochs.",
    "batch_size": "Batch size per process.",
    "lr": "Peak learning rate.",
    "opt": "timm.optim optimizer name: one of timm.optim.list_optimizers().",
    "sched": f"timm.scheduler schedule: {', '.join(SCHEDULES)}.",
    "warmup_epochs": "Linear warm-up epochs.",
    "weight_decay": "Weight decay.",
    "img_size": "Input side in pixels.",
    "augment": "Random crops during training.",
    "device": "auto: CUDA when present, else the CPU.",
    "amp": "Mixed precision (fp16 on CUDA, bf16 on CPU).",
    "workers": "Data loader worker processes.",
    "seed": "Seed of init, shuffling and augmentation.",
    "val_fraction": "Held-out share when DATA has no val split.",
    "checkpoint_every": "Also checkpoint every N steps (0: per epoch).",
    "max_steps": "Stop after N steps in total (0: no limit).",
}
_PATHS = ("data", "out")  # str in the config, a path on the command line
_DECLS = {"batch_size": ("--batch-size", "-b"), "workers": ("--workers", "-j")}
_KW = inspect.Parameter.KEYWORD_ONLY


def _optimizers() -> list[str]:
    import timm.optim

    return [str(name) for name in timm.optim.list_optimizers()]


# The values of str fields with a fixed set of them (Literal fields have theirs in their type).
# A typo is a usage error as the command line is parsed; TrainConfig still checks the rest
# (an optimizer needing second-order gradients or a package that is not installed: exit 1).
_CHOICES: dict[str, dict[str, Any]] = {
    # plateau and none are timm schedules the loop cannot drive: TrainConfig says why.
    "sched": {"choices": SCHEDULES, "metavar": "<name>", "deferred": ("plateau", "none")},
    "device": DEVICE_CHOICES,
    "opt": {
        "choices": _optimizers,
        "metavar": "<name>",
        "key": lambda name: name.lower().removeprefix("lookahead_"),  # as timm reads it
        "where": "timm.optim.list_optimizers()",
    },
}


def _parameter(field: dataclasses.Field[Any], hint: Any) -> inspect.Parameter:
    """The typer parameter of one TrainConfig field: its type and default, with HELP's text.

    A field without a default is an argument. ``dim`` None (the system's n_min) is spelled
    ``auto``. Literal fields, and those of ``_CHOICES``, take one of their values (checked as
    the command line is parsed, so a typo is a usage error).
    """
    text = HELP.get(field.name, "")
    if field.default is dataclasses.MISSING:
        annotation = Annotated[Path, typer.Argument(help=text)]
        return inspect.Parameter(field.name, _KW, annotation=annotation)
    default, decls = field.default, _DECLS.get(field.name, ())
    option = typer.Option(*decls, help=text)
    if field.name in _PATHS:
        hint = Path
    elif field.name == "dim":
        hint, default = str, "auto"
    elif get_origin(hint) is Literal:
        hint, option = str, choice_option(*decls, help=text, choices=get_args(hint))
    elif field.name in _CHOICES:
        option = choice_option(*decls, help=text, **_CHOICES[field.name])
    return inspect.Parameter(field.name, _KW, default=default, annotation=Annotated[hint, option])


def _signature() -> inspect.Signature:
    """``train``'s parameters: one per TrainConfig field, then ``--resume`` (an argument of fit)
    and ``--log-interval`` (display only, not part of the run)."""
    hints = get_type_hints(TrainConfig)
    resume = typer.Option(help="Continue the run in --out from its last checkpoint.")
    return inspect.Signature(
        [
            *(_parameter(field, hints[field.name]) for field in dataclasses.fields(TrainConfig)),
            inspect.Parameter("resume", _KW, default=False, annotation=Annotated[bool, resume]),
            inspect.Parameter(
                "log_interval", _KW, default=LOG_INTERVAL, annotation=LogIntervalOption
            ),
        ]
    )


def _config(options: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of the parsed options (``resume``, ``log_interval`` taken out): undoes
    :func:`_parameter`."""
    dim = options["dim"]
    if dim != "auto" and not (dim.isascii() and dim.isdigit()):
        raise ConfigError(f"--dim must be 'auto' or a positive integer, got {dim!r}")
    paths = {name: str(options[name]) for name in _PATHS}
    return TrainConfig(**{**options, **paths, "dim": None if dim == "auto" else int(dim)})


def train(**options: Any) -> None:
    """Train an encoder on fixed vector-system targets (or the cross-entropy baseline)."""
    resume, log_interval = options.pop("resume"), options.pop("log_interval")
    config = _config(options)
    with Reporter(log_interval=log_interval) as reporter:
        result = fit(config, resume=resume, callbacks=TrainProgress(reporter, config))
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
    """Draw loss (a panel per loss type), accuracy and learning-rate curves of runs into one PNG."""
    console.print(f"wrote {shown(plot_runs(runs, out))}")
