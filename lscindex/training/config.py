"""The settings of a training run (saved as ``train`` in the run's config.json)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from lscindex.errors import ConfigError

__all__ = ["ARCHITECTURE_KEYS", "TrainConfig", "architecture_changes"]

# Keys of TrainConfig that define the model; --resume refuses to change them. The value a run
# made before a key existed is what that run did (runs before assignments used the codec).
ARCHITECTURE_KEYS = ("model", "head", "system", "dim", "system_seed", "img_size", "assignment")
_BEFORE_KEY_EXISTED = {"assignment": "codec"}


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
    assignment: Literal["codec", "data"] = "data"
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
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.head not in ("lsc", "ce"):
            raise ConfigError(f"head must be 'lsc' or 'ce', got {self.head!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.workers < 0 or self.checkpoint_every < 0 or self.max_steps < 0:
            raise ConfigError("workers, checkpoint_every and max_steps must be >= 0")
        if self.assignment not in ("codec", "data"):
            raise ConfigError(f"assignment must be 'codec' or 'data', got {self.assignment!r}")
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


def architecture_changes(saved: dict[str, Any], config: TrainConfig, n_classes: int) -> list[str]:
    """What resuming ``saved`` (a run's config.json) with ``config`` would change, as text."""
    keys = [k for k in ARCHITECTURE_KEYS if k != "assignment" or config.head == "lsc"]
    before = {k: saved["train"].get(k, _BEFORE_KEY_EXISTED.get(k)) for k in keys}
    changes = [
        f"{key}: {before[key]!r} -> {getattr(config, key)!r}"
        for key in keys
        if before[key] != getattr(config, key)
    ]
    if saved["model"]["n_classes"] != n_classes:
        changes.append(f"n_classes: {saved['model']['n_classes']} -> {n_classes}")
    return changes
