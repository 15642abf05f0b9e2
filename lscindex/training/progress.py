"""What a training run reports: per-epoch metrics, the result, progress callbacks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lscindex.model import Encoder

__all__ = ["EpochMetrics", "TrainCallbacks", "TrainResult"]


@dataclass(frozen=True)
class EpochMetrics:
    """One line of metrics.jsonl."""

    epoch: int
    train_loss: float
    val_loss: float | None
    val_top1: float | None
    val_top5: float | None
    img_per_s: float
    wall_s: float
    peak_mem_mb: float
    lr: float
    skipped_images: int
    world_size: int
    global_step: int
    reassigned: list[int] | None = None


@dataclass
class TrainResult:
    """What :func:`fit` did: the run directory, this call's epochs, and this process's rank."""

    run_dir: Path
    rank: int = 0
    metrics: list[EpochMetrics] = field(default_factory=list)
    model: Encoder | None = None


class TrainCallbacks:
    """Hooks for progress display; the library itself prints nothing. Only rank 0 calls them."""

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
        pass

    def on_step(self, *, epoch: int, step: int, loss: float, img_per_s: float) -> None:
        """After optimizer step ``step`` (1-based, of ``steps_per_epoch``) of ``epoch`` (0-based).

        ``img_per_s``: training images per second since the epoch (or its resumption) began,
        all processes together.
        """

    def on_val_step(self, *, epoch: int, step: int, steps: int, img_per_s: float) -> None:
        """After validation batch ``step`` (1-based) of ``steps`` at the end of ``epoch``.

        ``steps`` counts this process's batches (its share under torchrun); ``img_per_s`` is
        validation images per second since this validation began, all processes together.
        """

    def on_match(self, *, images: int, total: int, img_per_s: float) -> None:
        """While the data assignment computes class means: ``images`` of ``total`` embedded.

        Matching happens before the first step and at each re-match; at 10^5-10^6 classes it
        embeds a few images of every class, which takes minutes. A second, shorter pass embeds
        the classes whose candidates all went to others. All processes together.
        """

    def on_epoch(self, metrics: EpochMetrics) -> None:
        pass

    def on_warning(self, message: str) -> None:
        pass
