"""lscindex.target_index: the FAISS index over a system's targets.

Its exact (flat) answers are checked against the analytic decoder in tests/test_systems.py.
"""

from __future__ import annotations

import numpy as np

from lscindex import VectorSystem


def test_hnsw_target_index_finds_targets() -> None:
    s = VectorSystem.create("v21", 2000)
    index = s.target_index(index_type="hnsw")
    out = index.search(s.targets(np.arange(0, 2000, 7)) + 0.01, k=3)
    assert (out.ids[:, 0] == np.arange(0, 2000, 7)).mean() > 0.99
