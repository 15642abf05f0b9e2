"""lscindex._codec: the Feistel permutation and combinatorial ranking, against slow references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from lscindex._codec import (
    FeistelPermutation,
    binomial_table,
    compress_complement,
    expand_complement,
    rank_combinations,
    splitmix64,
    unrank_combinations,
)

M64 = (1 << 64) - 1


def reference_feistel(x: int, n: int, seed: int) -> int:
    """The codec's permutation written out in plain Python integers, from its definition."""
    bits = max(2, (n - 1).bit_length())
    bits += bits % 2
    half = bits // 2
    mask = (1 << half) - 1
    keys = splitmix64(seed, 4)

    def f(r: int, key: int) -> int:
        v = ((r ^ key) * 0x9E3779B97F4A7C15) & M64
        v ^= v >> 32
        v = (v * 0xBF58476D1CE4E5B9) & M64
        v ^= v >> 29
        return v & mask

    y = x
    while True:
        left, right = y >> half, y & mask
        for key in keys:
            left, right = right, left ^ f(right, key)
        y = (left << half) | right
        if y < n:
            return y


@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 17, 1000, 4099])
@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_feistel_is_a_bijection(n: int, seed: int) -> None:
    perm = FeistelPermutation(n, seed)
    x = np.arange(n)
    y = perm.forward(x)
    assert sorted(y.tolist()) == list(range(n))
    np.testing.assert_array_equal(perm.inverse(y), x)


def test_feistel_matches_plain_python_reference() -> None:
    for n, seed in [(1092, 0), (612_468, 0), (2**40 + 7, 99), (3, 5)]:
        perm = FeistelPermutation(n, seed)
        xs = [0, 1, 2, n // 2, n - 1]
        assert perm.forward(np.array(xs)).tolist() == [reference_feistel(x, n, seed) for x in xs]


def test_feistel_seeds_differ_and_are_deterministic() -> None:
    x = np.arange(1000)
    a = FeistelPermutation(1000, 1).forward(x)
    np.testing.assert_array_equal(a, FeistelPermutation(1000, 1).forward(x))
    assert (a != FeistelPermutation(1000, 2).forward(x)).mean() > 0.9


def test_feistel_keeps_shape_and_handles_large_domains() -> None:
    perm = FeistelPermutation(2**62, 3)
    x = np.array([[0, 1], [2**62 - 1, 12345]])
    y = perm.forward(x)
    assert y.shape == (2, 2) and (y >= 0).all()
    np.testing.assert_array_equal(perm.inverse(y), x)


def test_feistel_rejects_bad_domain() -> None:
    with pytest.raises(ValueError, match="domain size"):
        FeistelPermutation(0, 0)


@pytest.mark.parametrize(("n", "m"), [(6, 2), (7, 3), (9, 1), (5, 0), (4, 4)])
def test_rank_unrank_follow_colex_order(n: int, m: int) -> None:
    table = binomial_table(n, max(m, 1))
    combos = sorted(itertools.combinations(range(n), m), key=lambda c: tuple(reversed(c)))
    positions = np.array(combos, dtype=np.int64).reshape(len(combos), m)
    ranks = rank_combinations(positions, table)
    np.testing.assert_array_equal(ranks, np.arange(math.comb(n, m)))
    np.testing.assert_array_equal(unrank_combinations(ranks, m, table), positions)


def test_binomial_table_saturates_instead_of_overflowing() -> None:
    table = binomial_table(200, 30)
    assert table[10, 3] == 120
    assert table[200, 30] == 1 << 62  # C(200, 30) > 2**62


def test_complement_compression_roundtrips() -> None:
    excluded = np.array([[1, 4], [0, 2]])
    compressed = np.array([[0, 1, 2, 3], [0, 1, 2, 3]])
    absolute = expand_complement(compressed, excluded)
    assert absolute.tolist() == [[0, 2, 3, 5], [1, 3, 4, 5]]
    np.testing.assert_array_equal(compress_complement(absolute, excluded), compressed)
