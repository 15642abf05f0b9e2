"""Plain helpers shared by test modules (``from helpers import ...``; fixtures are in conftest).

pytest's default ``prepend`` import mode puts this folder on ``sys.path`` (it has no
``__init__.py``), so the import works from any checkout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


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


def make_image_folder(
    root: str | Path, *, n_classes: int = 6, per_class: int = 8, size: int = 32, val: int = 2
) -> Path:
    """A learnable ImageFolder (train/, val/): class c is a bright block at spot c on noise."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(0)
    grid = int(np.ceil(np.sqrt(n_classes)))
    cell = size // grid
    for split, count in (("train", per_class), ("val", val)):
        for c in range(n_classes):
            folder = root / split / f"class_{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                img = (rng.random((size, size)) * 60).astype(np.uint8)
                y, x = divmod(c, grid)
                img[y * cell : (y + 1) * cell, x * cell : (x + 1) * cell] = 230
                mode = "L" if i % 2 else "RGB"
                pic = Image.fromarray(img)
                (pic if mode == "L" else pic.convert("RGB")).save(folder / f"{i:03d}.png")
    return root


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``lscindex ARGS`` in this process: (exit code, stdout, stderr)."""
    from lscindex_cli.main import main

    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
