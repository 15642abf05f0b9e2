"""Private arithmetic behind the class <-> target codec.

Two pieces, both vectorised over numpy int64 arrays and both part of the on-disk format (changing
any constant here changes every target ever produced, so the golden tests pin them):

* :class:`FeistelPermutation`, a keyed bijection on ``[0, n)`` (balanced Feistel network on the
  smallest even bit width covering ``n``, with cycle-walking back into range).
* combinatorial-number-system ranking of sorted position sets (colex order), used to number the
  vectors of a system without materialising them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

MASK64 = (1 << 64) - 1
# Largest index the vectorised int64 arithmetic handles without overflow anywhere.
MAX_INDEX = 1 << 62

_ROUNDS = 4
_MUL1 = np.uint64(0x9E3779B97F4A7C15)
_MUL2 = np.uint64(0xBF58476D1CE4E5B9)
_SHIFT1 = np.uint64(32)
_SHIFT2 = np.uint64(29)


def splitmix64(seed: int, count: int) -> list[int]:
    """``count`` 64-bit words from the splitmix64 generator started at ``seed`` (pure Python)."""
    state = seed & MASK64
    out = []
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        out.append(z ^ (z >> 31))
    return out


class FeistelPermutation:
    """A seeded bijection on ``[0, n)``, O(1) per element in both directions, with no table.

    Args:
        n: domain size, ``1 <= n <= 2**62``.
        seed: any non-negative integer; each seed gives a different permutation.

    Example:
        >>> p = FeistelPermutation(1000, seed=0)
        >>> x = np.arange(1000)
        >>> bool((p.inverse(p.forward(x)) == x).all())
        True
    """

    def __init__(self, n: int, seed: int) -> None:
        if not 1 <= n <= MAX_INDEX:
            raise ValueError(f"Feistel domain size must be in [1, 2**62], got {n}")
        self.n = n
        bits = max(2, (n - 1).bit_length())
        bits += bits % 2
        self.half_bits = bits // 2
        self._half = np.uint64(self.half_bits)
        self._mask = np.uint64((1 << self.half_bits) - 1)
        self._keys = [np.uint64(k) for k in splitmix64(seed, _ROUNDS)]

    def _round(self, r: np.ndarray, key: np.uint64) -> np.ndarray:
        v = r ^ key
        v *= _MUL1
        v ^= v >> _SHIFT1
        v *= _MUL2
        v ^= v >> _SHIFT2
        v &= self._mask
        return v

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self._half, x & self._mask
        for key in self._keys:
            left, right = right, left ^ self._round(right, key)
        return (left << self._half) | right

    def _decrypt(self, y: np.ndarray) -> np.ndarray:
        left, right = y >> self._half, y & self._mask
        for key in reversed(self._keys):
            left, right = right ^ self._round(left, key), left
        return (left << self._half) | right

    def _walk(self, x: np.ndarray, step: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        x = np.asarray(x, dtype=np.int64)
        y = step(x.reshape(-1).astype(np.uint64))
        n = np.uint64(self.n)
        todo = np.flatnonzero(y >= n)
        # Cycle-walking: the bit width is < 4n, so each element leaves the range on fewer than
        # four steps on average; every cycle of the permutation re-enters [0, n).
        while todo.size:
            z = step(y[todo])
            y[todo] = z
            todo = todo[z >= n]
        return y.astype(np.int64).reshape(x.shape)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Map int64 values in ``[0, n)`` to their images in ``[0, n)`` (same shape)."""
        return self._walk(x, self._encrypt)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`forward`."""
        return self._walk(y, self._decrypt)


def binomial_table(n: int, k_max: int) -> np.ndarray:
    """``table[c, i] = C(c, i)`` for ``0 <= c <= n``, ``0 <= i <= k_max`` as int64.

    Entries above 2**62 saturate there; callers only use entries below their (bounded) index range.
    """
    table = np.zeros((n + 1, k_max + 1), dtype=np.int64)
    for i in range(k_max + 1):
        for c in range(i, n + 1):
            table[c, i] = min(math.comb(c, i), MAX_INDEX)
    return table


def rank_combinations(positions: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Colex rank of ascending position sets: ``sum_i C(p_i, i + 1)``.

    Args:
        positions: (..., m) int64, each row strictly ascending.
        table: from :func:`binomial_table` with ``k_max >= m``.

    Returns:
        (...) int64 ranks in ``[0, C(n, m))``.
    """
    m = positions.shape[-1]
    rank = np.zeros(positions.shape[:-1], dtype=np.int64)
    for i in range(m):
        rank += table[positions[..., i], i + 1]
    return rank


def unrank_combinations(ranks: np.ndarray, m: int, table: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rank_combinations`: (...) int64 ranks -> (..., m) ascending positions."""
    rest = np.array(ranks, dtype=np.int64, copy=True)
    out = np.empty((*rest.shape, m), dtype=np.int64)
    for i in range(m, 0, -1):
        column = table[:, i]
        # Largest c with C(c, i) <= rest; the column is non-decreasing in c.
        c = np.searchsorted(column, rest, side="right") - 1
        out[..., i - 1] = c
        rest -= column[c]
    return out


def expand_complement(compressed: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """Map positions counted among the complement of ``excluded`` back to absolute positions.

    Args:
        compressed: (..., m) int64 positions in ``[0, n - len(excluded))``.
        excluded: (..., a) int64 ascending absolute positions removed from ``[0, n)``.

    Returns:
        (..., m) int64 absolute positions.
    """
    out = np.array(compressed, dtype=np.int64, copy=True)
    for j in range(excluded.shape[-1]):
        out += excluded[..., j : j + 1] <= out
    return out


def compress_complement(positions: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """Inverse of :func:`expand_complement` (positions must not be in ``excluded``)."""
    out = np.array(positions, dtype=np.int64, copy=True)
    for j in range(excluded.shape[-1]):
        out -= excluded[..., j : j + 1] < positions
    return out
