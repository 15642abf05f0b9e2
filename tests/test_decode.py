"""lscindex._decode: analytic top-k of V^{ab} against a brute-force ranking of every vector."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from lscindex import _decode


def all_vectors(n: int, a: int, b: int) -> np.ndarray:
    out = []
    for plus in itertools.combinations(range(n), a):
        rest = [i for i in range(n) if i not in plus]
        for minus in itertools.combinations(rest, b):
            v = np.zeros(n, dtype=np.float64)
            v[list(plus)] = 1
            v[list(minus)] = -1
            out.append(v)
    return np.array(out)


def dots_of(e: np.ndarray, plus: np.ndarray, minus: np.ndarray) -> np.ndarray:
    rows = np.arange(len(e))[:, None, None]
    e64 = e.astype(np.float64)
    return e64[rows, plus].sum(-1) - e64[rows, minus].sum(-1)


@pytest.mark.parametrize(
    ("n", "a", "b", "k"),
    [
        (14, 2, 1, 1),
        (14, 2, 1, 5),  # separable windows
        (14, 2, 1, 9),  # windows overlap: joint enumeration
        (8, 1, 1, 20),
        (9, 2, 2, 7),
        (10, 3, 1, 4),
        (7, 2, 0, 6),
        (5, 3, 2, 10),  # no zeros at all: n == a + b
    ],
)
def test_top_k_equals_brute_force(n: int, a: int, b: int, k: int) -> None:
    rng = np.random.default_rng(n * 100 + k)
    e = rng.standard_normal((300, n)).astype(np.float32)
    vectors = all_vectors(n, a, b)
    k = min(k, len(vectors))
    best = -np.sort(-(e.astype(np.float64) @ vectors.T), axis=1)[:, :k]
    plus, minus = _decode.top_k(e, a, b, k)
    assert plus.shape == (300, k, a) and minus.shape == (300, k, b)
    np.testing.assert_allclose(dots_of(e, plus, minus), best, atol=1e-5)
    # a valid vector: positions ascending, plus and minus disjoint, no vector twice in a row
    assert (np.diff(plus, axis=2) > 0).all() and (np.diff(minus, axis=2) > 0).all()
    both = np.concatenate([plus, minus], axis=2)
    assert all(len(set(v)) == a + b for v in both.reshape(-1, a + b).tolist())
    keys = [
        {(tuple(p), tuple(m)) for p, m in zip(pr, mr, strict=True)}
        for pr, mr in zip(plus, minus, strict=True)
    ]
    assert all(len(s) == k for s in keys)


def test_top_1_equals_top_k_of_one() -> None:
    e = np.random.default_rng(0).standard_normal((500, 20)).astype(np.float32)
    p1, m1 = _decode.top_1(e, 2, 1)
    pk, mk = _decode.top_k(e, 2, 1, 1)
    np.testing.assert_array_equal(p1, pk[:, 0])
    np.testing.assert_array_equal(m1, mk[:, 0])


def test_top_1_never_reuses_a_plus_position_when_all_values_tie() -> None:
    e = np.zeros((3, 6), dtype=np.float32)
    plus, minus = _decode.top_1(e, 2, 2)
    for p, m in zip(plus.tolist(), minus.tolist(), strict=True):
        assert len(set(p) | set(m)) == 4


def test_pattern_cost_grows_with_k() -> None:
    assert _decode.pattern_cost(108, 2, 1, 5) < _decode.pattern_cost(108, 2, 1, 50)
