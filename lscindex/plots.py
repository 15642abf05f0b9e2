"""Training curves of one or several runs (matplotlib, no display needed)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lscindex.errors import RunError
from lscindex.run import METRICS, read_metrics

__all__ = ["plot_runs"]


def _load(run: Path) -> list[dict[str, Any]]:
    if not (run / METRICS).is_file():
        raise RunError(f"{run} has no {METRICS}; pass run directories made by lscindex train")
    return read_metrics(run)


def plot_runs(runs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> Path:
    """Draw train/val loss and val top-1/top-5 against epoch for each run into one PNG.

    Args:
        runs: run directories (each with metrics.jsonl).
        out: PNG path, written atomically.

    Returns:
        The PNG path.
    """
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lscindex._io import atomic_write_bytes

    if not runs:
        raise RunError("plot needs at least one run directory")
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for run in map(Path, runs):
        rows = _load(run)
        name = run.name
        epochs = [r["epoch"] for r in rows]
        line = ax_loss.plot(
            epochs, [r["train_loss"] for r in rows], marker="o", label=f"{name} train"
        )
        color = line[0].get_color()
        if any(r.get("val_loss") is not None for r in rows):
            ax_loss.plot(
                epochs, [r["val_loss"] for r in rows], "--", color=color, label=f"{name} val"
            )
            ax_acc.plot(
                epochs,
                [r["val_top1"] for r in rows],
                marker="o",
                color=color,
                label=f"{name} top-1",
            )
            ax_acc.plot(
                epochs, [r["val_top5"] for r in rows], ":", color=color, label=f"{name} top-5"
            )
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # no validation split: the accuracy panel is empty
            ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(out, buffer.getvalue())
    return Path(out)
