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
        (40, 2, 1, 12),  # separable, many patterns pruned by dominance
        (24, 2, 2, 9),
        (20, 3, 1, 6),
        (12, 4, 0, 5),
    ],
)
def test_top_k_equals_brute_force(n: int, a: int, b: int, k: int) -> None:
    rng = np.random.default_rng(n * 100 + k)
    e = rng.standard_normal((300, n)).astype(np.float32)
    vectors = all_vectors(n, a, b)
    k = min(k, len(vectors))
    best = -np.sort(-(e.astype(np.float64) @ vectors.T), axis=1)[:, :k]
    plus, minus, dots = _decode.top_k(e, a, b, k)
    assert plus.shape == (300, k, a) and minus.shape == (300, k, b) and dots.shape == (300, k)
    np.testing.assert_allclose(dots_of(e, plus, minus), best, atol=1e-5)
    np.testing.assert_array_equal(dots, dots_of(e, plus, minus))
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
    pk, mk, _ = _decode.top_k(e, 2, 1, 1)
    np.testing.assert_array_equal(p1, pk[:, 0])
    np.testing.assert_array_equal(m1, mk[:, 0])


def test_top_1_never_reuses_a_plus_position_when_all_values_tie() -> None:
    e = np.zeros((3, 6), dtype=np.float32)
    plus, minus = _decode.top_1(e, 2, 2)
    for p, m in zip(plus.tolist(), minus.tolist(), strict=True):
        assert len(set(p) | set(m)) == 4


def test_pattern_cost_grows_with_k() -> None:
    assert _decode.pattern_cost(108, 2, 1, 5) < _decode.pattern_cost(108, 2, 1, 50)


@pytest.mark.parametrize("k", [3, 6, 20])
def test_top_k_scores_equal_brute_force_when_values_tie(k: int) -> None:
    # Small integers: exact ties everywhere, inside the windows and at their edges.
    e = np.random.default_rng(k).integers(-3, 4, size=(400, 30)).astype(np.float32)
    best = -np.sort(-(e.astype(np.float64) @ all_vectors(30, 2, 1).T), axis=1)[:, :k]
    plus, minus, dots = _decode.top_k(e, 2, 1, k)
    np.testing.assert_array_equal(dots, best)
    np.testing.assert_array_equal(dots_of(e, plus, minus), best)


def reference_windows(e: np.ndarray, top: int, bottom: int) -> tuple[np.ndarray, np.ndarray]:
    ordered = np.sort(e, axis=1)
    return ordered[:, ::-1][:, :top], ordered[:, :bottom]


@pytest.mark.parametrize(
    "values",
    ["normal", "ties", "float16", "near_ties", "signed_zeros"],
)
def test_rank_windows_equals_a_full_sort(values: str) -> None:
    rng = np.random.default_rng(1)
    n = 108
    if values == "normal":
        e = rng.standard_normal((500, n)).astype(np.float32)
    elif values == "ties":
        e = rng.integers(-2, 3, size=(500, n)).astype(np.float32)
    elif values == "float16":
        e = rng.standard_normal((500, n)).astype(np.float16).astype(np.float32)
    elif values == "near_ties":
        # Neighbours one ulp apart: they differ only in the bits that carry the positions.
        steps = rng.integers(0, 40, size=(500, n)).astype(np.uint32)
        e = (np.float32(1.5).view(np.uint32) + steps).view(np.float32)
        e[::2] *= -1
    else:
        e = rng.choice(np.array([0.0, -0.0, 1e-40, -1e-40, 1.0], dtype=np.float32), (500, n))
    top, bottom = _decode.rank_windows(e, 7, 6)
    assert top.dtype == bottom.dtype == np.int64
    want_top, want_bottom = reference_windows(e, 7, 6)
    np.testing.assert_array_equal(np.take_along_axis(e, top, axis=1), want_top)
    np.testing.assert_array_equal(np.take_along_axis(e, bottom, axis=1), want_bottom)
    # each position once: windows are disjoint and hold distinct coordinates
    both = np.concatenate([top, bottom], axis=1)
    assert (np.sort(both, axis=1)[:, 1:] != np.sort(both, axis=1)[:, :-1]).all()


def test_rank_windows_of_rows_too_wide_to_pack() -> None:
    e = np.random.default_rng(2).standard_normal((20, 5000)).astype(np.float32)
    top, bottom = _decode.rank_windows(e, 4, 3)
    want_top, want_bottom = reference_windows(e, 4, 3)
    np.testing.assert_array_equal(np.take_along_axis(e, top, axis=1), want_top)
    np.testing.assert_array_equal(np.take_along_axis(e, bottom, axis=1), want_bottom)


@pytest.mark.parametrize(("size", "window", "k"), [(1, 8, 6), (2, 9, 8), (3, 10, 12), (2, 30, 25)])
def test_undominated_tuples_equal_brute_force(size: int, window: int, k: int) -> None:
    tuples = list(itertools.combinations(range(window), size))

    def dominators(p: tuple[int, ...]) -> int:
        return sum(all(qi <= pi for qi, pi in zip(q, p, strict=True)) for q in tuples)

    want = {p: dominators(p) for p in tuples if dominators(p) <= k}
    assert dict(_decode._undominated(size, window, k)) == want


def test_pruned_patterns_stay_few_for_v21() -> None:
    # the patterns scored per query for top-6 at any n: 18 instead of C(7, 2) * 6 = 126
    assert len(_decode._separable_patterns(2, 1, 6)) == 18
    assert _decode.pattern_cost(108, 2, 1, 6) == 108 + 18
