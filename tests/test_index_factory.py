"""lscindex.index_factory: what --factory auto chooses for a row count, dim and memory budget,
and its memory estimates against what FAISS stores."""

from __future__ import annotations

import numpy as np
import pytest

from lscindex.errors import ConfigError
from lscindex.index import build_index
from lscindex.index_factory import choose_factory, estimate_index_bytes


def clustered(rows: int, dim: int, *, seed: int = 0) -> np.ndarray:
    """(rows, dim) float32 unit vectors around 40 random directions (seeded)."""
    rng = np.random.default_rng(seed)
    middle = rng.standard_normal((40, dim))
    x = middle[rng.integers(0, 40, rows)] + 0.3 * rng.standard_normal((rows, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize(
    ("rows", "dim", "budget", "chosen"),
    [
        (5_000, 18, None, "Flat"),
        (100_000, 108, None, "Flat"),
        (100_001, 18, None, "HNSW32"),
        (1_000_000, 18, 2 * 10**9, "HNSW32"),
        (1_000_000, 18, 350 * 2**20, "HNSW32,SQ8"),
        (1_000_000, 18, 256 * 2**20, "IVF4096,Flat"),
        (1_000_000, 18, 100 * 2**20, "IVF4096,SQ8"),
        (1_000_000, 18, 78 * 2**20, "IVF4096,SQ4"),
        (20_000_000, 48, None, "IVF16384,Flat"),
        (5_000, 18, 400_000, "IVF128,SQ4"),
    ],
)
def test_auto_choice_by_size_and_budget(
    rows: int, dim: int, budget: int | None, chosen: str
) -> None:
    choice = choose_factory(rows, dim, max_memory_bytes=budget)
    assert choice.factory == chosen
    at = [c.factory for c in choice.candidates].index(chosen)
    # the first candidate (in order of preference) whose estimate is within the budget
    for c in choice.candidates:
        assert c.estimated_bytes == estimate_index_bytes(c.factory, rows, dim)
        assert c.fits == (budget is None or c.estimated_bytes <= budget)
    assert choice.candidates[at].fits and not any(c.fits for c in choice.candidates[:at])
    if chosen.startswith("IVF"):
        nlist = int(chosen[3:].split(",")[0])
        assert choice.train_rows == min(rows, max(100_000, 39 * nlist))


def test_auto_refuses_a_budget_nothing_fits() -> None:
    with pytest.raises(
        ConfigError, match=r"no index of 1,000,000 rows .* \(the smallest, IVF4096,"
    ):
        choose_factory(1_000_000, 18, max_memory_bytes=10 * 2**20)
    with pytest.raises(ConfigError, match="max_memory_bytes applies to factory='auto'"):
        build_index("unused.zarr", factory="HNSW32", max_memory_bytes=2**30)


@pytest.mark.parametrize(
    "factory", ["Flat", "HNSW16", "HNSW16,SQ8", "IVF64,Flat", "IVF64,SQ8", "IVF64,PQ4"]
)
def test_estimate_follows_what_faiss_stores(factory: str) -> None:
    """Without the in-memory reverse id map, the estimate is the serialized index's size."""
    import faiss

    from lscindex.index_factory import ID_MAP_BYTES_PER_ROW

    rows, dim = 12_000, 8
    vectors = clustered(rows, dim)
    index = faiss.IndexIDMap2(faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT))
    index.train(vectors)
    index.add_with_ids(vectors, np.arange(rows))
    stored = len(faiss.serialize_index(index))
    # IndexIDMap2 serializes its id map (8 bytes a row) but rebuilds the reverse map on reading
    estimate = estimate_index_bytes(factory, rows, dim) - (ID_MAP_BYTES_PER_ROW - 8) * rows
    assert abs(estimate - stored) < 0.05 * stored, (estimate, stored)
