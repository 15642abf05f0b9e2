"""Private: exact nearest vectors of V^{ab}_n in score order, without materialising the system.

For e in R^n the dot product with v in V^{ab} is ``sum(e[P]) - sum(e[M])`` (P the a plus positions,
M the b minus positions), maximised by the a largest and the b smallest coordinates. For the top K:
if a plus position had rank r (0-based, descending) with r >= a + K - 1, each of the r higher-ranked
positions not already a plus (at least K of them) gives a distinct vector scoring at least as much
(move the plus there, or swap it with a minus sitting there), so the vector is not in the top K.
Hence plus positions lie in the top ``a + K - 1`` ranks and minus positions in the bottom
``b + K - 1``. When these windows are disjoint the score separates into independent plus and minus
parts.

With both windows sorted (values descending in the plus window, ascending in the minus one), a
rank pattern (P, M) is *dominated* by every pattern whose ranks are each no larger: those all
score at least as much. A pattern dominated by more than K patterns (itself included) is never
needed for the top K, so only the few patterns with at most K dominators are scored: 18 for
v21 and K = 6, whatever n is.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import numpy as np

# Above this many score evaluations per query the enumeration is no longer the fast path.
MAX_PATTERNS = 20_000
# Positions packed into mantissa bits by rank_windows; wider rows fall back to argsort.
_MAX_INDEX_BITS = 12


def _dominators(ranks: tuple[int, ...]) -> int:
    """How many increasing rank tuples q have ``q[i] <= ranks[i]`` for every i (ranks included)."""
    ways = [1] * (ranks[0] + 1)  # ways[x]: tuples so far whose last rank is x
    for limit in ranks[1:]:
        below = list(itertools.accumulate(ways, initial=0))
        ways = [below[min(x, len(ways))] for x in range(limit + 1)]
    return sum(ways)


@lru_cache(maxsize=512)
def _undominated(size: int, window: int, k: int) -> tuple[tuple[tuple[int, ...], int], ...]:
    """Increasing ``size``-tuples of ranks in ``range(window)`` with at most k dominators."""
    found: list[tuple[tuple[int, ...], int]] = []

    def extend(prefix: tuple[int, ...]) -> None:
        start = prefix[-1] + 1 if prefix else 0
        for x in range(start, window - (size - len(prefix) - 1)):
            ranks = (*prefix, x)
            count = _dominators(ranks)
            # A prefix has no more dominators than any tuple extending it, and a larger x has
            # more, so the first x over k ends this branch.
            if count > k:
                break
            if len(ranks) == size:
                found.append((ranks, count))
            else:
                extend(ranks)

    if size == 0:
        return (((), 1),)
    extend(())
    return tuple(found)


@lru_cache(maxsize=256)
def _separable_patterns(a: int, b: int, k: int) -> np.ndarray:
    """The (P, M) rank patterns that can be in the top k when the windows are disjoint.

    Returns:
        (C, a + b) int64 columns of the concatenated sorted windows: a plus ranks in
        ``[0, wp)``, then b minus ones in ``[wp, wp + wm)`` (counted up from the smallest value).
    """
    wp, wm = _windows_for(a, b, k)
    patterns = [
        (*p, *(wp + r for r in m))
        for p, count_p in _undominated(a, wp, k)
        for m, _ in _undominated(b, wm, k // count_p)
    ]
    return np.array(patterns, dtype=np.int64).reshape(len(patterns), a + b)


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


def _windows_for(a: int, b: int, k: int) -> tuple[int, int]:
    """Rank windows holding the plus and minus positions of the top k vectors."""
    return a + k - 1, (b + k - 1 if b else 0)


def _windows(n: int, a: int, b: int, k: int) -> tuple[int, int]:
    """:func:`_windows_for` clipped to n coordinates."""
    wp, wm = _windows_for(a, b, k)
    return min(wp, n), min(wm, n)


def pattern_cost(n: int, a: int, b: int, k: int) -> int:
    """Values per query that :func:`top_k` sorts and scores for ``k`` candidates."""
    wp, wm = _windows_for(a, b, k)
    if wp + wm <= n:
        return n + len(_separable_patterns(a, b, k))
    wp, wm = _windows(n, a, b, k)
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


def top_k(e: np.ndarray, a: int, b: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k nearest vectors of V^{ab} to each row of e, best first.

    Exact up to ties: candidates are ranked by float32 sums, so vectors whose scores differ by
    less than float32 rounding may come in either order.

    Args:
        e: (B, n) float32, finite.
        k: number of vectors, ``1 <= k <= |V^{ab}_n|``.

    Returns:
        plus (B, k, a) and minus (B, k, b) int64 coordinate positions, and (B, k) float64 dot
        products of e with the vectors, each the exact sum of its a + b float32 values.
    """
    batch, n = e.shape
    wp, wm = _windows_for(a, b, k)
    if wp + wm <= n:
        top_pos, bottom_pos = rank_windows(e, wp, wm)
        columns = _separable_patterns(a, b, k)
        window_pos = np.concatenate([top_pos, bottom_pos], axis=1)  # (B, wp + wm)
        window = np.take_along_axis(e, window_pos, axis=1)
        # Summed term by term, not by a matmul: BLAS calls from two decode threads serialise.
        scores = window[:, columns[:, 0]]
        for j in range(1, a + b):
            term = window[:, columns[:, j]]
            if j < a:
                scores += term
            else:
                scores -= term
        best = columns[_top_sorted(scores, k)].reshape(batch, k * (a + b))
        pos = np.take_along_axis(window_pos, best, axis=1).reshape(batch, k, a + b)
        picked = np.take_along_axis(window, best, axis=1).reshape(batch, k, a + b)
        return _sort_last(pos[..., :a]), _sort_last(pos[..., a:]), dots(picked, a)
    wp, wm = _windows(n, a, b, k)
    order = np.argsort(-e, axis=1)
    vals = np.take_along_axis(e, order, axis=1)
    plus_pat, minus_pat = _joint_patterns(n, a, b, wp, wm)
    scores = vals[:, plus_pat].sum(axis=2) - vals[:, minus_pat].sum(axis=2)
    best = np.concatenate([plus_pat, minus_pat], axis=1)[_top_sorted(scores, k)]  # (B, k, a + b)
    rows = np.arange(batch)[:, None, None]
    pos = order[rows, best]
    return _sort_last(pos[..., :a]), _sort_last(pos[..., a:]), dots(vals[rows, best], a)


def dots(values: np.ndarray, a: int) -> np.ndarray:
    """(B, k) float64 dots from (B, k, a + b) float32 coordinates, the a plus ones first.

    Exact sums in float64, so a vector scores the same whichever path found it.
    """
    wide = values.astype(np.float64)
    out = wide[..., 0]  # a >= 1 in every system
    for j in range(1, wide.shape[-1]):
        if j < a:
            out += wide[..., j]
        else:
            out -= wide[..., j]
    return out


def rank_windows(e: np.ndarray, top: int, bottom: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the ``top`` largest entries of each row, descending, and of the ``bottom``
    smallest, ascending (exact; equal values in any order).

    One vectorised sort of the values with each position packed into their lowest mantissa
    bits: a float sort is several times faster than ``argsort``. Packing blurs values that agree
    in all the other bits, so a row that used those bits and where two neighbours in or at the
    edge of a window blur to the same value is redone with ``argsort``.

    Args:
        e: (B, n) float32, finite.
        top, bottom: window sizes, ``top + bottom <= n``.

    Returns:
        (B, top) and (B, bottom) int64 positions.
    """
    n = e.shape[1]
    bits = max(1, (n - 1).bit_length())
    e = np.ascontiguousarray(e, dtype=np.float32)
    if bits > _MAX_INDEX_BITS:
        return _argsort_windows(e, top, bottom)
    low = np.uint32((1 << bits) - 1)
    values = e.view(np.uint32)
    keys = values & low  # first the bits that packing overwrites; one (B, n) buffer throughout
    # Rows whose values never used those bits (float16 or bfloat16 data, for one) lose nothing
    # to packing: their blurred values are their values.
    lossy = np.flatnonzero(keys.max(axis=1)) if keys.max() else np.empty(0, dtype=np.intp)
    keys ^= values
    keys |= np.arange(n, dtype=np.uint32)
    # Only mantissa bits change, so finite values stay finite. Ascending: the top is at the end.
    keys.view(np.float32).sort(axis=1)
    top_keys = keys[:, max(n - top - 1, 0) :]
    bottom_keys = keys[:, : bottom + 1]
    top_pos = (top_keys[:, ::-1][:, :top] & low).astype(np.int64)
    bottom_pos = (bottom_keys[:, :bottom] & low).astype(np.int64)
    # Truncation is monotone, so neighbours whose blurred values differ are in true order;
    # equal blurred values (same sign, keys differing only in the packed bits) may not be.
    unsure = np.zeros(len(lossy), dtype=bool)
    every = len(lossy) == len(e)  # float32 data: skip the gather
    for block in (top_keys, bottom_keys) if every else (top_keys[lossy], bottom_keys[lossy]):
        if block.shape[1] > 1:
            unsure |= ((block[:, 1:] ^ block[:, :-1]) <= low).any(axis=1)
    redo = lossy[unsure]
    if redo.size:
        top_pos[redo], bottom_pos[redo] = _argsort_windows(e[redo], top, bottom)
    return top_pos, bottom_pos


def _argsort_windows(e: np.ndarray, top: int, bottom: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`rank_windows` by a full ``argsort``."""
    order = np.argsort(-e, axis=1)
    return order[:, :top], order[:, e.shape[1] - bottom :][:, ::-1]


def _sort_last(x: np.ndarray) -> np.ndarray:
    """Sort along a short last axis (np.sort is slow on length-2 axes; min/max is not)."""
    if x.shape[-1] == 2:
        lo, hi = x[..., 0], x[..., 1]
        return np.stack([np.minimum(lo, hi), np.maximum(lo, hi)], axis=-1)
    if x.shape[-1] > 2:
        return np.sort(x, axis=-1)
    return x
