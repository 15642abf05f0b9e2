"""Plain helpers shared by test modules (``from helpers import ...``; fixtures are in conftest).

pytest's default ``prepend`` import mode puts this folder on ``sys.path`` (it has no
``__init__.py``), so the import works from any checkout.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any, Literal

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


PLOT_DATA_CONFIG = {
    "input_size": (3, 32, 32),
    "interpolation": "bilinear",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "crop_pct": 1.0,
    "crop_mode": "center",
}


def make_plot_run(
    root: Path, name: str, head: Literal["lsc", "ce"], epochs: int, *, val: bool = True
) -> Path:
    """A run directory with only what plotting reads: config.json and metrics.jsonl."""
    from lscindex import VectorSystem
    from lscindex import run as run_files
    from lscindex.model import ModelConfig

    run = root / name
    run.mkdir(parents=True)
    system = VectorSystem.create("v21", 3).to_dict() if head == "lsc" else None
    model = ModelConfig(backbone="test_resnet", head=head, n_classes=3, system=system)
    run_files.write_run_config(
        run, model=model.to_dict(), train={}, data={}, data_config=PLOT_DATA_CONFIG
    )
    rows = [
        {
            "epoch": e,
            "train_loss": (0.6 if head == "lsc" else 3.0) / e,
            "val_loss": (0.5 if head == "lsc" else 2.5) / e if val else None,
            "val_top1": 0.2 * e if val else None,
            "val_top5": 0.3 * e if val else None,
            "lr": 1e-3 / e,
        }
        for e in range(1, epochs + 1)
    ]
    run_files.write_metrics(run, rows)
    return run


def strict_json(text: str) -> Any:
    """``json.loads`` that refuses NaN and Infinity, as strict parsers do."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def documented_json(doc: Path, kind: str) -> Any:
    """The first JSON example of ``kind`` (its ``"kind"`` field) in the markdown file ``doc``."""
    blocks = [strict_json(b) for b in re.findall(r"```json\n(.*?)```", doc.read_text(), re.S)]
    return next(b for b in blocks if b.get("kind") == kind)


def assert_same_shape(a: Any, b: Any, where: str = "") -> None:
    """The same keys in the same order all the way down (first item of each list), and the same
    scalar types where neither is null: a documented JSON example against a printed one."""
    if isinstance(a, dict) or isinstance(b, dict):
        assert isinstance(a, dict) and isinstance(b, dict) and list(a) == list(b), where
        for key in a:
            assert_same_shape(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and a and isinstance(b, list) and b:
        assert_same_shape(a[0], b[0], f"{where}[0]")
    elif a is not None and b is not None:
        assert type(a) is type(b), where


def stop_process(proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    """Ask a server process the tests started to stop (SIGTERM); kill it if it will not."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
