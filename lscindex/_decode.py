"""Private: exact nearest vectors of V^{ab}_n in score order, without materialising the system.

For e in R^n the dot product with v in V^{ab} is ``sum(e[P]) - sum(e[M])`` (P the a plus positions,
M the b minus positions), maximised by the a largest and the b smallest coordinates. For the top K:
if a plus position had rank r (0-based, descending) with r >= a + K - 1, each of the r higher-ranked
positions not already a plus (at least K of them) gives a distinct vector scoring at least as much
(move the plus there, or swap it with a minus sitting there), so the vector is not in the top K.
Hence plus positions lie in the top ``a + K - 1`` ranks and minus positions in the bottom
``b + K - 1``. When these windows are disjoint the score separates into independent plus and minus
parts, and the top K pairs come from the top K of each part.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import numpy as np

# Above this many score evaluations per query the enumeration is no longer the fast path.
MAX_PATTERNS = 20_000


@lru_cache(maxsize=256)
def _subset_matrix(window: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """All ``size``-subsets of ``range(window)``: (C, size) int64 members, (window, C) 0/1 mask."""
    subsets = list(itertools.combinations(range(window), size))
    combos = np.array(subsets, dtype=np.int64).reshape(len(subsets), size)
    onehot = np.zeros((window, len(combos)), dtype=np.float32)
    for j in range(size):
        onehot[combos[:, j], np.arange(len(combos))] = 1.0
    return combos, onehot


@lru_cache(maxsize=64)
def _joint_patterns(n: int, a: int, b: int, wp: int, wm: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (P, M) rank patterns, P in [0, wp), M in [n - wm, n): (C, a), (C, b) int64."""
    plus, minus = [], []
    for p in itertools.combinations(range(wp), a):
        taken = set(p)
        for m in itertools.combinations(range(n - wm, n), b):
            if taken.isdisjoint(m):
                plus.append(p)
                minus.append(m)
    return (
        np.array(plus, dtype=np.int64).reshape(len(plus), a),
        np.array(minus, dtype=np.int64).reshape(len(minus), b),
    )


def _windows(n: int, a: int, b: int, k: int) -> tuple[int, int]:
    """Rank windows holding the plus and minus positions of the top k vectors."""
    return min(a + k - 1, n), (min(b + k - 1, n) if b else 0)


def pattern_cost(n: int, a: int, b: int, k: int) -> int:
    """Score evaluations per query that :func:`top_k` needs for ``k`` candidates."""
    wp, wm = _windows(n, a, b, k)
    if wp + wm <= n:
        return math.comb(wp, a) + math.comb(wm, b) + k * k
    return math.comb(wp, a) * math.comb(wm, b)


def _top_sorted(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k largest entries per row, in descending order."""
    if scores.shape[1] <= max(4 * k, 64):
        return np.argsort(-scores, axis=1)[:, :k]
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    inner = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
    return np.take_along_axis(part, inner, axis=1)


def top_1(e: np.ndarray, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    """The single nearest vector of V^{ab}: plus (B, a) and minus (B, b) int64 positions.

    Args:
        e: (B, n) float32, finite.
    """
    work = e.copy()
    rows = np.arange(len(e))
    plus = np.empty((len(e), a), dtype=np.int64)
    minus = np.empty((len(e), b), dtype=np.int64)
    for i in range(a):
        j = work.argmax(axis=1)
        plus[:, i] = j
        work[rows, j] = -np.inf
    # The plus positions must never be picked as minus ones: lift them above everything.
    for i in range(a):
        work[rows, plus[:, i]] = np.inf
    for i in range(b):
        j = work.argmin(axis=1)
        minus[:, i] = j
        work[rows, j] = np.inf
    return _sort_last(plus), _sort_last(minus)


def top_k(e: np.ndarray, a: int, b: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest vectors of V^{ab} to each row of e, best first (exact; ties in any order).

    Args:
        e: (B, n) float32, finite.
        k: number of vectors, ``1 <= k <= |V^{ab}_n|``.

    Returns:
        plus (B, k, a) and minus (B, k, b) int64 coordinate positions.
    """
    batch, n = e.shape
    order = np.argsort(-e, axis=1)
    wp, wm = _windows(n, a, b, k)
    if wp + wm <= n:
        p_combos, p_onehot = _subset_matrix(wp, a)
        m_combos, m_onehot = _subset_matrix(wm, b)
        top = np.take_along_axis(e, order[:, :wp], axis=1)
        # The minus window is read from the bottom: window slot j is rank n - 1 - j.
        bottom = np.take_along_axis(e, order[:, n - 1 - np.arange(wm)], axis=1)
        p_scores = top @ p_onehot  # (B, Cp)
        m_scores = -(bottom @ m_onehot)  # (B, Cm)
        p_top = _top_sorted(p_scores, k)
        m_top = _top_sorted(m_scores, k)
        kp, km = p_top.shape[1], m_top.shape[1]
        pair = (
            np.take_along_axis(p_scores, p_top, axis=1)[:, :, None]
            + np.take_along_axis(m_scores, m_top, axis=1)[:, None, :]
        )
        best = _top_sorted(pair.reshape(batch, kp * km), k)
        p_sel = np.take_along_axis(p_top, best // km, axis=1)
        m_sel = np.take_along_axis(m_top, best % km, axis=1)
        plus_rank = p_combos[p_sel]  # (B, k, a)
        minus_rank = n - 1 - m_combos[m_sel]  # (B, k, b)
    else:
        vals = np.take_along_axis(e, order, axis=1)
        plus_pat, minus_pat = _joint_patterns(n, a, b, wp, wm)
        scores = vals[:, plus_pat].sum(axis=2) - vals[:, minus_pat].sum(axis=2)
        best = _top_sorted(scores, k)
        plus_rank = plus_pat[best]
        minus_rank = minus_pat[best]
    rows = np.arange(batch)[:, None, None]
    return _sort_last(order[rows, plus_rank]), _sort_last(order[rows, minus_rank])


def _sort_last(x: np.ndarray) -> np.ndarray:
    """Sort along a short last axis (np.sort is slow on length-2 axes; min/max is not)."""
    if x.shape[-1] == 2:
        lo, hi = x[..., 0], x[..., 1]
        return np.stack([np.minimum(lo, hi), np.maximum(lo, hi)], axis=-1)
    if x.shape[-1] > 2:
        return np.sort(x, axis=-1)
    return x
