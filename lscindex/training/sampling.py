"""The seeded, resumable, rank-sharded sample order of training, validation and matching."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from lscindex._distributed import Ranks
from lscindex._preemption import ignore_stop_signals
from lscindex.data import ImageDataset, collate_skipping

__all__ = ["EpochSampler", "ordered_loader"]


class EpochSampler(Sampler[int]):
    """Seeded per-epoch permutation, padded to the world size, sharded by rank, resumable.

    Yields the sample indices of ``rank``, skipping the first ``skip`` of them. With ``blocks``
    (the sizes of consecutive runs of samples stored together: parquet shards) the permutation
    takes the blocks in a random order and each block's samples in a random order, so a reader
    holds one block at a time.

    ``indices`` is an (M,) numpy array, int32 below 2^31 samples: 4 bytes a sample, where
    int64 would take 8 and a list of Python ints ~36 (10 MB against 90 MB at 2.4M samples).
    The order is built in place, so no second copy of it exists even for a moment.
    """

    def __init__(
        self,
        n: int,
        *,
        seed: int,
        epoch: int,
        rank: int,
        world: int,
        skip: int = 0,
        shuffle: bool = True,
        pad: bool = True,
        batch_size: int | None = None,
        blocks: Sequence[int] | None = None,
    ) -> None:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        extra = min((-n) % world, n) if pad and world > 1 else 0  # padded with the first ones
        order = np.empty(n + extra, dtype=np.int32 if n < 2**31 else np.int64)
        if not shuffle:
            order[:n] = np.arange(n)
        elif blocks is None:
            order[:n] = torch.randperm(n, generator=generator).numpy()
        else:
            _blocked_order(blocks, n, generator, out=order[:n])
        order[n:] = order[:extra]
        mine = order if world == 1 else order[rank::world].copy()
        # With ``batch_size``, a last batch of a single sample is left out (the same on every
        # rank, as the shards are padded to one length): BatchNorm cannot train on one image.
        self.dropped_last = bool(batch_size and batch_size > 1 and len(mine) % batch_size == 1)
        self.indices = (mine[:-1] if self.dropped_last else mine)[skip:]

    def __iter__(self) -> Iterator[int]:
        return (int(i) for i in self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _blocked_order(
    blocks: Sequence[int], n: int, generator: torch.Generator, *, out: np.ndarray
) -> None:
    """Write into ``out`` a random order of the blocks, each block's indices in a random order."""
    sizes = np.asarray(list(blocks), dtype=np.int64)
    if int(sizes.sum()) != n:
        raise ValueError(f"blocks cover {int(sizes.sum())} samples, not {n}")
    starts = np.cumsum(sizes) - sizes
    at = 0
    for b in torch.randperm(len(sizes), generator=generator).tolist():
        size = int(sizes[b])
        out[at : at + size] = starts[b] + torch.randperm(size, generator=generator).numpy()
        at += size


def ordered_loader(
    samples: Sequence[tuple[Any, int]],
    transform: Any,
    *,
    batch_size: int,
    workers: int,
    ranks: Ranks,
    generator: torch.Generator | None = None,
) -> DataLoader[Any]:
    """This rank's share of ``samples`` in their order (no shuffling, no padding).

    Batches are ``(images, labels, indices, dropped)`` from :func:`collate_skipping`, unreadable
    images left out. Without ``generator`` each iteration draws its worker seed from torch's
    global RNG, as validation always has.
    """
    sampler = EpochSampler(
        len(samples), seed=0, epoch=0, rank=ranks.rank, world=ranks.world, shuffle=False, pad=False
    )
    return DataLoader(
        ImageDataset(samples, transform),
        batch_size=batch_size,
        num_workers=workers,
        sampler=sampler,
        collate_fn=collate_skipping,
        generator=generator,
        worker_init_fn=ignore_stop_signals,
    )
