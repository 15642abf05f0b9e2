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
from lscindex.assignment import fit_geometry, match_classes
from lscindex.model import Encoder, encode
from lscindex.shards import ShardSamples
from lscindex.systems import VectorSystem
from lscindex.training.sampling import ordered_loader

__all__ = ["MEAN_BLOCK", "assignment_samples", "fit_from_features", "match_from_model"]

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


def _class_sums(
    model: Encoder,
    samples: Sequence[tuple[Any, int]],
    labels: np.ndarray,
    class_ids: np.ndarray,
    *,
    width: int,
    features: bool,
    transform: Any,
    batch_size: int,
    workers: int,
    amp_dtype: torch.dtype | None,
    device: torch.device,
    ranks: Ranks,
    progress: Callable[[int, int, float], None] | None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per block of classes: (ids, sums (B, width) float32, counts (B,) int64) of the model's
    unit embeddings (``features=False``) or pooled backbone features, all ranks summed.

    An eval pass (no augmentation) over the samples of ``class_ids``; the model's train/eval
    mode is restored after each block.
    """
    was_training = model.training
    wanted = np.isin(labels, class_ids)
    total = int(np.count_nonzero(wanted))
    done, started = 0, time.perf_counter()
    for block in _blocks(samples, labels, class_ids, wanted):
        chosen = np.flatnonzero(np.isin(labels, block))
        sums = torch.zeros(len(block), width, dtype=torch.float32, device=device)
        counts = torch.zeros(len(block), dtype=torch.int64, device=device)
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
                rows = torch.from_numpy(np.searchsorted(block, batch_labels.numpy())).to(device)
                if features:
                    with torch.autocast(
                        device.type, dtype=amp_dtype, enabled=amp_dtype is not None
                    ):
                        out = model.features(images.to(device))
                    out = out.float()
                else:
                    _, out = encode(model, images.to(device), amp_dtype=amp_dtype)
                sums.index_add_(0, rows, out)
                counts.index_add_(0, rows, torch.ones_like(rows))
                if progress is not None:
                    done = min(done + len(batch_labels) * ranks.world, total)
                    rate = done / max(time.perf_counter() - started, 1e-9)
                    progress(done, total, rate)
        model.train(was_training)
        if ranks.world > 1:
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        yield block, sums.cpu().numpy(), counts.cpu().numpy()


def _labels(samples: Sequence[tuple[Any, int]]) -> np.ndarray:
    if isinstance(samples, ShardSamples):
        return samples.labels
    return np.fromiter((label for _, label in samples), dtype=np.int64, count=len(samples))


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
    labels = _labels(samples)

    def class_means(class_ids: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for block, sums, _ in _class_sums(
            model,
            samples,
            labels,
            class_ids,
            width=system.dim,
            features=False,
            transform=transform,
            batch_size=batch_size,
            workers=workers,
            amp_dtype=amp_dtype,
            device=device,
            ranks=ranks,
            progress=progress,
        ):
            yield block, sums

    table = match_classes(system, class_means, current=system.assignment_table, margin=margin)
    return system.with_assignment(table)


def fit_from_features(
    model: Encoder,
    system: VectorSystem,
    samples: Sequence[tuple[Any, int]],
    *,
    transform: Any,
    batch_size: int,
    workers: int,
    amp_dtype: torch.dtype | None,
    device: torch.device,
    ranks: Ranks,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[VectorSystem, float]:
    """Assign classes to targets by fitting the backbone's class geometry onto the lattice.

    The class means of the pooled backbone features (``model.features``, F dims) are centred and
    reduced to the system's dim by PCA; :func:`lscindex.assignment.fit_geometry` then finds the
    one-to-one assignment (and rotation) that puts similar classes on neighbouring vectors.
    Even an untrained network's features carry which classes look alike, and targets that
    follow it are far easier to learn than targets matched to the n-dim output (which at
    initialisation only echoes a random projection).

    The PCA basis and the centre come from the first block of :data:`MEAN_BLOCK` classes (every
    class at up to 16k classes; a random-enough sample of them beyond, since blocks follow the
    storage order); every block is projected with it, so what is held is the (n_classes, dim)
    float32 geometry (260 MB at 600k classes and 108 dims) and one block of F-dim sums.

    Returns:
        ``system`` with the fitted table, and the mean cosine between the rotated class
        geometry and its targets (0.5-0.6 from an untrained resnet10t on the glyph set).
    """
    labels = _labels(samples)
    geometry = np.zeros((system.n_classes, system.dim), dtype=np.float32)
    centre: np.ndarray | None = None
    basis: np.ndarray | None = None
    for block, sums, counts in _class_sums(
        model,
        samples,
        labels,
        np.arange(system.n_classes, dtype=np.int64),
        width=model.feature_dim,
        features=True,
        transform=transform,
        batch_size=batch_size,
        workers=workers,
        amp_dtype=amp_dtype,
        device=device,
        ranks=ranks,
        progress=progress,
    ):
        seen = counts > 0
        means = sums[seen] / counts[seen, None].astype(np.float32)
        if basis is None:
            centre, basis = _pca(means, system.dim)
        assert centre is not None
        geometry[block[seen]] = (means - centre) @ basis
    table, _, fit = fit_geometry(system, geometry, centered=system.centered)
    return system.with_assignment(table), fit


def _pca(rows: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre (F,) and the top-``dim`` principal directions (F, dim) of ``rows`` (N, F).

    Float64 arithmetic; each direction's largest loading is positive (SVD leaves the sign to
    the LAPACK build, and the fit starts from the identity rotation, so a flipped sign could
    change the table); directions past the rank of the rows are zero columns.
    """
    centre = rows.mean(axis=0, dtype=np.float64)
    _, singular, vh = np.linalg.svd(rows.astype(np.float64) - centre, full_matrices=False)
    basis = np.zeros((rows.shape[1], dim), dtype=np.float64)
    rank = int(np.count_nonzero(singular > 1e-6 * singular.max(initial=0.0)))
    take = min(dim, rank)
    directions = vh[:take]
    peak = np.abs(directions).argmax(axis=1)
    directions = directions * np.sign(directions[np.arange(take), peak])[:, None]
    basis[:, :take] = directions.T
    return centre.astype(np.float32), basis.astype(np.float32)
