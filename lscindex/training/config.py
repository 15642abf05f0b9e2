"""The settings of a training run (saved as ``train`` in the run's config.json)."""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lscindex.errors import ConfigError, RunError

if TYPE_CHECKING:
    from lscindex.data import DatasetSplits

__all__ = ["ARCHITECTURE_KEYS", "SCHEDULES", "TrainConfig", "architecture_changes"]

# Keys of TrainConfig that define the model; --resume refuses to change them. The value a run
# made before a key existed is what that run did (runs before assignments used the codec).
ARCHITECTURE_KEYS = (
    "model",
    "head",
    "system",
    "dim",
    "system_seed",
    "img_size",
    "assignment",
    "centered",
)
_BEFORE_KEY_EXISTED = {"assignment": "codec", "centered": False}
_LSC_ONLY = ("assignment", "centered")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything a training run needs; saved as ``train`` in the run's config.json.

    Flag names follow timm's train.py where they overlap. ``batch_size`` is per process.
    """

    data: str
    out: str = "runs/default"
    model: str = "resnet18"
    pretrained: bool = False
    head: Literal["lsc", "ce"] = "lsc"
    system: str = "v21"
    dim: int | None = None
    system_seed: int = 0
    assignment: Literal["codec", "data", "features"] = "features"
    centered: bool = True
    loss: Literal["cosine", "lattice"] = "lattice"
    loss_scale: float = 1.0
    loss_weight: float = 1.0
    rematch_per_epoch: int = 1
    rematch_until: float = 0.5
    rematch_margin: float = 0.0
    assign_samples: int = 8
    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    opt: str = "adamw"
    sched: str = "cosine"
    warmup_epochs: int = 1
    weight_decay: float = 0.05
    img_size: int = 32
    augment: bool = True
    device: str = "auto"
    amp: bool = False
    workers: int = 2
    seed: int = 0
    val_fraction: float = 0.0
    checkpoint_every: int = 0
    max_steps: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "img_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size == 1:
            raise ConfigError(
                "batch_size must be >= 2: BatchNorm cannot train on batches of one image"
            )
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.head not in ("lsc", "ce"):
            raise ConfigError(f"head must be 'lsc' or 'ce', got {self.head!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.workers < 0 or self.checkpoint_every < 0 or self.max_steps < 0:
            raise ConfigError("workers, checkpoint_every and max_steps must be >= 0")
        if self.assignment not in ("codec", "data", "features"):
            raise ConfigError(
                f"assignment must be 'codec', 'data' or 'features', got {self.assignment!r}"
            )
        if not 0.0 <= self.rematch_until <= 1.0:
            raise ConfigError(
                f"rematch_until is a share of the training steps in [0, 1], got "
                f"{self.rematch_until}; e.g. 0.5 re-matches during the first half"
            )
        if self.rematch_per_epoch < 0:
            raise ConfigError(
                f"rematch_per_epoch must be >= 0 (0: match once, before training), got "
                f"{self.rematch_per_epoch}"
            )
        if self.assign_samples < 0:
            raise ConfigError(
                f"assign_samples must be >= 0 (0: every training image), got {self.assign_samples}"
            )
        if self.loss not in ("cosine", "lattice"):
            raise ConfigError(f"loss must be 'cosine' or 'lattice', got {self.loss!r}")
        if self.loss_scale <= 0 or self.loss_weight < 0:
            raise ConfigError(
                f"loss_scale must be > 0 and loss_weight >= 0, got {self.loss_scale} and "
                f"{self.loss_weight}"
            )
        if self.warmup_epochs < 0:
            raise ConfigError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        _check_sched(self.sched, epochs=self.epochs, warmup_epochs=self.warmup_epochs)
        _check_opt(self.opt, device=self.device)  # last: it imports timm

    def rematches_at(self, global_step: int, steps_per_epoch: int) -> bool:
        """Whether the data assignment is re-matched after optimizer step ``global_step`` (1-based).

        ``rematch_per_epoch`` times per epoch, evenly spaced in steps, during the first
        ``rematch_until`` share of all steps, never at the last step: targets track the network
        while it changes fastest, then stay fixed so the run ends on the targets it trained on.
        """
        if self.head != "lsc" or self.assignment != "data" or self.rematch_per_epoch == 0:
            return False
        total = self.epochs * steps_per_epoch
        interval = max(1, steps_per_epoch // self.rematch_per_epoch)
        return (
            global_step % interval == 0
            and global_step <= self.rematch_until * total
            and global_step < total
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown TrainConfig key(s) {', '.join(map(repr, unknown))}")
        return cls(**data)


# The schedules of timm.scheduler.create_scheduler_v2 that the loop can drive (stepped per
# update, with no metric). Not "plateau" (per epoch, on a metric) nor "none" (no scheduler).
SCHEDULES = ("cosine", "tanh", "step", "multistep", "poly", "constant", "wsd", "rsqrt")
_NOT_SCHEDULES = {
    "plateau": "it steps per epoch on a validation metric, the loop steps per update",
    "none": "the loop always steps a schedule; use constant for a fixed lr",
}


def _unknown(what: str, name: str, known: list[str], more: str, *, key: str = "") -> ConfigError:
    """ConfigError for an unknown ``name``: up to 5 names of ``known`` close to ``key or name``."""
    close = difflib.get_close_matches(key or name, known, n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else more
    return ConfigError(f"unknown {what} {name!r}; {hint}")


def _check_sched(sched: str, *, epochs: int, warmup_epochs: int) -> None:
    if sched in _NOT_SCHEDULES:
        raise ConfigError(f"sched {sched!r} is not supported: {_NOT_SCHEDULES[sched]}")
    if sched not in SCHEDULES:
        raise _unknown("sched", sched, list(SCHEDULES), f"expected one of {', '.join(SCHEDULES)}")
    if sched in ("wsd", "rsqrt") and warmup_epochs >= epochs:
        raise ConfigError(
            f"sched {sched!r} decays after the warm-up, so it needs warmup_epochs < epochs, got "
            f"{warmup_epochs} and {epochs}"
        )


def _check_opt(opt: str, *, device: str) -> None:
    """Raise ConfigError unless timm.optim.create_optimizer_v2 builds ``opt`` for the loop.

    timm reads ``lookahead_NAME`` as NAME wrapped in Lookahead, case-insensitively.
    """
    import timm.optim

    name = opt.lower().removeprefix("lookahead_")
    known = [str(n) for n in timm.optim.list_optimizers()]
    if name not in known:
        raise _unknown("opt", opt, known, "see timm.optim.list_optimizers()", key=name)
    info = timm.optim.get_optimizer_info(name)
    if info.second_order:
        raise ConfigError(
            f"opt {opt!r} needs second-order gradients, which the training loop does not compute; "
            f"choose a first-order optimizer such as adamw"
        )
    if isinstance(info.opt_class, str):  # apex.* and bitsandbytes.*: optional CUDA packages
        package = info.opt_class.split(".")[0]
        if importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"opt {opt!r} comes from {package}, which is not installed; install it or "
                f"choose another optimizer such as adamw"
            )
        if device == "cpu":
            raise ConfigError(f"opt {opt!r} ({package}) runs on CUDA only, not on device 'cpu'")


def architecture_changes(saved: dict[str, Any], config: TrainConfig, n_classes: int) -> list[str]:
    """What resuming ``saved`` (a run's config.json) with ``config`` would change, as text."""
    keys = [k for k in ARCHITECTURE_KEYS if k not in _LSC_ONLY or config.head == "lsc"]
    before = {k: saved["train"].get(k, _BEFORE_KEY_EXISTED.get(k)) for k in keys}
    changes = [
        f"{key}: {before[key]!r} -> {getattr(config, key)!r}"
        for key in keys
        if before[key] != getattr(config, key)
    ]
    if saved["model"]["n_classes"] != n_classes:
        changes.append(f"n_classes: {saved['model']['n_classes']} -> {n_classes}")
    return changes


def check_same_data(saved: dict[str, Any], splits: DatasetSplits, out: Path) -> None:
    """--resume continues on the data the run was trained on (runs that predate the record of
    their data are not checked)."""
    before = saved.get("data")
    before = before if isinstance(before, dict) else {}
    if before.get("sha256") in (None, splits.sha256()):
        return
    now = {
        "source": splits.source,
        "n_train": len(splits.train),
        "n_val": len(splits.val),
        "n_classes": splits.n_classes,
    }
    changes = [f"{k}: {before.get(k)!r} -> {v!r}" for k, v in now.items() if before.get(k) != v]
    raise RunError(
        f"--resume would continue {out} on other data "
        f"({'; '.join(changes) or 'same counts, other images or labels'}); resume with the "
        f"data it was trained on or train into another --out"
    )
