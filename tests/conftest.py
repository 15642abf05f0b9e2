"""Shared test helpers."""

from __future__ import annotations

import numpy as np


def assert_topk_exact(
    ids: np.ndarray, scores: np.ndarray, all_scores: np.ndarray, *, tol: float = 1e-5
) -> None:
    """Check a top-k answer against the full (B, n_classes) cosine matrix, tolerating ties.

    Exact up to ties means: each returned score is the true score of the returned id, the
    returned scores equal the k best true scores, and no id repeats within a row. Two ids whose
    scores differ by less than ``tol`` may come in either order.
    """
    k = ids.shape[1]
    true = np.take_along_axis(all_scores, ids, axis=1)
    np.testing.assert_allclose(scores, true, atol=tol)
    best = -np.sort(-all_scores, axis=1)[:, :k]
    np.testing.assert_allclose(scores, best, atol=tol)
    assert all(len(set(row)) == k for row in ids.tolist())
    assert (np.diff(scores, axis=1) <= tol).all()
