"""Training curves of one or several runs (matplotlib, no display needed).

One figure, one row of panels: a loss panel per loss type among the runs (``lsc`` runs report
1 - cos to their target, ``ce`` runs cross-entropy in nats: the two are not comparable, so they
never share an axis), validation top-1/top-5, and the learning rate. Each run keeps one colour
in every panel; every line has markers, so a run of one epoch still shows its points.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lscindex.errors import RunError
from lscindex.run import METRICS, load_run_config, read_metrics

__all__ = ["LOSS_AXES", "create_figure", "plot_runs"]

# head -> (title, y label) of its loss panel
LOSS_AXES = {
    "lsc": ("lsc loss: 1 - cos(embedding, target)", "1 - cos"),
    "ce": ("ce loss: cross-entropy", "nats"),
}
ACCURACY_TITLE = "validation accuracy"
LR_TITLE = "learning rate (end of epoch)"


@dataclass(frozen=True)
class _Curves:
    """One run's metrics.jsonl, as columns (None where a row lacks the value)."""

    name: str
    head: str
    epochs: list[int]
    columns: dict[str, list[float | None]]

    def has(self, key: str) -> bool:
        return any(v is not None for v in self.columns[key])

    def values(self, key: str) -> list[float]:
        """The column as floats, NaN where missing (matplotlib leaves a gap)."""
        return [float("nan") if v is None else float(v) for v in self.columns[key]]


_KEYS = ("train_loss", "val_loss", "val_top1", "val_top5", "lr")


def _load(run: Path) -> _Curves:
    if not (run / METRICS).is_file():
        raise RunError(f"{run} has no {METRICS}; pass run directories made by lscindex train")
    head = load_run_config(run)["model"]["head"]
    rows = read_metrics(run)
    return _Curves(
        name=run.name,
        head=head,
        epochs=[r["epoch"] for r in rows],
        columns={key: [r.get(key) for r in rows] for key in _KEYS},
    )


def create_figure(runs: Sequence[str | os.PathLike[str]]) -> Any:
    """The training curves of ``runs`` as a matplotlib Figure (not drawn, not saved).

    Panels, left to right: one loss panel per head type present (``lsc`` then ``ce``, titled
    as in :data:`LOSS_AXES`; train loss solid, val loss dashed), validation top-1 (solid) and
    top-5 (dotted), learning rate. Lines are labelled ``"<run dir name> <what>"``.

    Args:
        runs: run directories, each with config.json and metrics.jsonl.

    Returns:
        A ``matplotlib.figure.Figure`` with ``len(head types) + 2`` axes.

    Raises:
        RunError: no runs, or a directory that is not a trained run.

    Example:
        >>> fig = create_figure(["runs/v21", "runs/ce"])     # doctest: +SKIP
        >>> [ax.get_title() for ax in fig.axes][:2]           # doctest: +SKIP
        ['lsc loss: 1 - cos(embedding, target)', 'ce loss: cross-entropy']
    """
    from matplotlib.figure import Figure

    if not runs:
        raise RunError("plot needs at least one run directory")
    curves = [_load(Path(run)) for run in runs]
    heads = [head for head in LOSS_AXES if any(c.head == head for c in curves)]
    fig = Figure(figsize=(4.2 * (len(heads) + 2), 4), layout="tight")
    axes = list(fig.subplots(1, len(heads) + 2, squeeze=False)[0])
    loss_axes = {head: axes[i] for i, head in enumerate(heads)}
    ax_acc, ax_lr = axes[-2:]
    for i, run in enumerate(curves):
        _draw_run(run, f"C{i % 10}", loss_axes[run.head], ax_acc, ax_lr)
    for head, ax in loss_axes.items():
        title, ylabel = LOSS_AXES[head]
        ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title=ACCURACY_TITLE, ylim=(-0.02, 1.02))
    ax_lr.set(xlabel="epoch", ylabel="lr", title=LR_TITLE)
    if all(v > 0 for c in curves for v in c.values("lr") if v == v):  # v == v: not NaN
        ax_lr.set_yscale("log")  # warm-up from 1% and the decay to 1% both read on a log axis
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.get_legend_handles_labels()[0]:  # no validation split: the accuracy panel is empty
            ax.legend(fontsize=8)
    return fig


def _draw_run(run: _Curves, color: str, ax_loss: Any, ax_acc: Any, ax_lr: Any) -> None:
    """Draw one run's lines, all in ``color``, into its loss panel and the shared panels."""
    x, name = run.epochs, run.name
    ax_loss.plot(x, run.values("train_loss"), "-o", color=color, label=f"{name} train")
    if run.has("val_loss"):
        ax_loss.plot(x, run.values("val_loss"), "--s", color=color, label=f"{name} val")
    if run.has("val_top1"):
        ax_acc.plot(x, run.values("val_top1"), "-o", color=color, label=f"{name} top-1")
    if run.has("val_top5"):
        ax_acc.plot(x, run.values("val_top5"), ":^", color=color, label=f"{name} top-5")
    if run.has("lr"):
        ax_lr.plot(x, run.values("lr"), "-o", color=color, label=name)


def plot_runs(runs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> Path:
    """Draw :func:`create_figure` of ``runs`` into one PNG.

    Args:
        runs: run directories (each with config.json and metrics.jsonl).
        out: PNG path, written atomically.

    Returns:
        The PNG path.

    Raises:
        RunError: as :func:`create_figure`.
    """
    import io

    from lscindex._io import atomic_write_bytes

    buffer = io.BytesIO()
    create_figure(runs).savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(out, buffer.getvalue())
    return Path(out)
