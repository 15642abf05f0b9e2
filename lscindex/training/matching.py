"""Matching classes to targets from a model's class means, as training does it.

The data assignment (:func:`lscindex.assignment.match_classes`) needs each class's mean
embedding. Here they come from an eval pass of the model over a few training images per class,
one block of classes at a time, summed across the ranks of a torchrun job so that every rank
computes the same table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from lscindex._distributed import Ranks
from lscindex.assignment import match_classes
from lscindex.model import Encoder, encode
from lscindex.shards import ShardSamples
from lscindex.systems import VectorSystem
from lscindex.training.sampling import ordered_loader

__all__ = ["MEAN_BLOCK", "assignment_samples", "match_from_model"]

# Classes whose embedding sums are held at once while matching (7 MB at 108 dims).
MEAN_BLOCK = 1 << 14


def assignment_samples(
    samples: Sequence[tuple[Any, int]], n_classes: int, per_class: int
) -> Sequence[tuple[Any, int]]:
    """The first ``per_class`` training samples of each class (all of them for 0), by class."""
    if isinstance(samples, ShardSamples):  # the same rows, chosen without a tuple per row
        order = np.argsort(samples.labels, kind="stable")
        if per_class:
            ranked = samples.labels[order]
            starts = np.searchsorted(ranked, ranked)  # first position of each row's class
            order = order[np.arange(len(order)) - starts < per_class]
        return ShardSamples(samples.source, samples.rows[order])
    if per_class == 0:
        return sorted(samples, key=lambda s: s[1])
    taken = np.zeros(n_classes, dtype=np.int64)
    chosen = []
    for sample in samples:
        if taken[sample[1]] < per_class:
            taken[sample[1]] += 1
            chosen.append(sample)
    return sorted(chosen, key=lambda s: s[1])


def _subset(samples: Sequence[tuple[Any, int]], chosen: np.ndarray) -> Sequence[tuple[Any, int]]:
    """``samples[chosen]``; shard rows in storage order, so the reader takes a shard at a time
    (class means do not depend on the order)."""
    if isinstance(samples, ShardSamples):
        return ShardSamples(samples.source, np.sort(samples.rows[chosen]))
    return [samples[int(i)] for i in chosen]


def _blocks(
    samples: Sequence[tuple[Any, int]],
    labels: np.ndarray,
    class_ids: np.ndarray,
    wanted: np.ndarray,
) -> Iterator[np.ndarray]:
    """``class_ids`` in ascending blocks of :data:`MEAN_BLOCK` classes (``wanted``: which of
    ``samples`` have one of them as label).

    Shard samples: the classes in the storage order of their first sample, so that a block's
    images lie in a few shards. In class-id order, every block of a 600k-class source would
    read every shard again (48 x 37 shard reads, not ~48 + 37).
    """
    order = class_ids
    if isinstance(samples, ShardSamples):
        first = np.full(int(class_ids.max(initial=-1)) + 1, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(first, labels[wanted], samples.rows[wanted])
        order = class_ids[np.argsort(first[class_ids], kind="stable")]
    for start in range(0, len(order), MEAN_BLOCK):
        yield np.sort(order[start : start + MEAN_BLOCK])


def match_from_model(
    model: Encoder,
    system: VectorSystem,
    samples: Sequence[tuple[Any, int]],
    *,
    transform: Any,
    batch_size: int,
    workers: int,
    margin: float,
    amp_dtype: torch.dtype | None,
    device: torch.device,
    ranks: Ranks,
    progress: Callable[[int, int, float], None] | None = None,
) -> VectorSystem:
    """Re-match classes to targets from the model's current class means.

    Args:
        model: the encoder (not a DDP wrapper); its train/eval mode is restored afterwards.
        system: the system in use; its table (if any) is the current assignment.
        samples: (path, label) pairs to average, from :func:`assignment_samples`.
        transform: the eval transform (no augmentation).
        margin: see :func:`lscindex.assignment.match_classes`.
        progress: called after each batch with (images embedded, images in this pass, images
            per second), all ranks together; a pass is every class, then the leftovers.

    Returns:
        ``system`` with the new table. Nothing of size n_classes x dim is ever held: the sums
        of one block of :data:`MEAN_BLOCK` classes at a time.
    """
    if isinstance(samples, ShardSamples):
        labels = samples.labels
    else:
        labels = np.fromiter((label for _, label in samples), dtype=np.int64, count=len(samples))
    was_training = model.training

    def class_means(class_ids: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        wanted = np.isin(labels, class_ids)
        total = int(np.count_nonzero(wanted))
        done, started = 0, time.perf_counter()
        for block in _blocks(samples, labels, class_ids, wanted):
            chosen = np.flatnonzero(np.isin(labels, block))
            sums = torch.zeros(len(block), system.dim, dtype=torch.float32, device=device)
            loader = ordered_loader(
                _subset(samples, chosen),
                transform,
                batch_size=batch_size,
                workers=workers,
                ranks=ranks,
                generator=torch.Generator().manual_seed(0),
            )
            model.eval()
            with torch.no_grad():
                for images, batch_labels, _, _ in loader:
                    if len(batch_labels) == 0:
                        continue
                    rows = torch.from_numpy(np.searchsorted(block, batch_labels.numpy()))
                    _, out = encode(model, images.to(device), amp_dtype=amp_dtype)
                    sums.index_add_(0, rows.to(device), out)
                    if progress is not None:
                        done = min(done + len(batch_labels) * ranks.world, total)
                        rate = done / max(time.perf_counter() - started, 1e-9)
                        progress(done, total, rate)
            model.train(was_training)
            if ranks.world > 1:
                dist.all_reduce(sums)
            yield block, sums.cpu().numpy()

    table = match_classes(system, class_means, current=system.assignment_table, margin=margin)
    return system.with_assignment(table)
