"""lscindex.kinds: exact vector counts and n_min."""

from __future__ import annotations

import pytest

from lscindex import count_vectors, n_min, parse_kind


def test_n_min_examples_from_design() -> None:
    assert (n_min("v21", 1000), n_min("v21", 600_000)) == (14, 108)
    assert (n_min("v11", 1000), n_min("v11", 600_000)) == (33, 776)
    assert (n_min("v22", 1000), n_min("v22", 600_000)) == (10, 41)
    assert n_min("v21s", 600_000) == 86
    assert n_min("an", 1000) == 33


@pytest.mark.parametrize("kind", ["v11", "v21", "v22", "v21s", "v33"])
@pytest.mark.parametrize("n_classes", [1, 2, 3, 1000, 600_000, 10**7, 10**12, 10**15 + 1])
def test_n_min_is_the_smallest_sufficient_dim(kind: str, n_classes: int) -> None:
    dim = n_min(kind, n_classes)
    assert count_vectors(kind, dim) >= n_classes
    spec = parse_kind(kind)
    if dim > spec.a + spec.b:
        assert count_vectors(kind, dim - 1) < n_classes


def test_count_is_exact_beyond_float_precision() -> None:
    dim = 10**6
    assert count_vectors("v21", dim) == dim * (dim - 1) * (dim - 2) // 2
