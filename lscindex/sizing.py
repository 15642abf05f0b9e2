"""Sizing: what each vector system costs for a class count, next to a learned softmax head.

The table behind ``lscindex systems``; it needs the kinds only, never builds a system.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lscindex._checks import check_int
from lscindex.kinds import DEFAULT_KINDS, parse_kind

__all__ = ["HeadSize", "SystemSize", "size_systems", "softmax_head_size"]


@dataclass(frozen=True)
class SystemSize:
    """What one vector system costs for a given class count (see :func:`size_systems`)."""

    kind: str
    n_classes: int
    dim: int
    n_vectors: int
    mcs: float
    embedding_bytes_fp16: int
    embedding_bytes_fp32: int
    target_matrix_bytes: int


@dataclass(frozen=True)
class HeadSize:
    """What a learned softmax head costs for a given class count (see :func:`softmax_head_size`)."""

    n_classes: int
    feature_dim: int
    params: int
    weight_bytes: int
    training_bytes: int


def size_systems(n_classes: int, kinds: Sequence[str] = DEFAULT_KINDS) -> list[SystemSize]:
    """Sizing table: each kind at its n_min for ``n_classes``.

    ``target_matrix_bytes`` is what materialising all targets as float32 would take (the FAISS
    path); the analytic decoder never builds it.

    Example:
        >>> [(r.kind, r.dim) for r in size_systems(1000, ["v21", "v11"])]
        [('v21', 14), ('v11', 33)]
    """
    n_classes = check_int("n_classes", n_classes, minimum=1)
    rows = []
    for kind in kinds:
        spec = parse_kind(kind)
        dim = spec.n_min(n_classes)
        rows.append(
            SystemSize(
                kind=spec.name,
                n_classes=n_classes,
                dim=dim,
                n_vectors=spec.count(dim),
                mcs=spec.mcs(dim),
                embedding_bytes_fp16=2 * dim,
                embedding_bytes_fp32=4 * dim,
                target_matrix_bytes=4 * dim * n_classes,
            )
        )
    return rows


def softmax_head_size(n_classes: int, *, feature_dim: int = 384) -> HeadSize:
    """Cost of a learned linear softmax head: weights and bias, and with gradient + Adam state.

    Example:
        >>> softmax_head_size(600_000).training_bytes / 1e9
        3.6960...
    """
    n_classes = check_int("n_classes", n_classes, minimum=1)
    feature_dim = check_int("feature_dim", feature_dim, minimum=1)
    params = n_classes * (feature_dim + 1)
    # fp32 weights, their gradient and Adam's two moments.
    return HeadSize(n_classes, feature_dim, params, 4 * params, 16 * params)
