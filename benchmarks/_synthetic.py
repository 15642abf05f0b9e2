"""Synthetic inputs shared by the embedding benchmarks: random grey PNGs and an untrained run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lscindex.training import TrainConfig, fit


def write_random_pngs(
    root: Path, count: int, *, classes: int, size: int, rng: np.random.Generator
) -> None:
    """``count`` (size, size) grey noise PNGs in ``root/train/<class>/``, ``classes`` folders."""
    for i in range(count):
        folder = root / "train" / f"c{i % classes:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (rng.random((size, size)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:07d}.png")


def make_untrained_run(data: Path, out: Path, *, model: str, img_size: int = 32) -> None:
    """A run of ``model`` after one training step: its weights matter neither for speed nor
    for checking that a resumed store is bit-identical."""
    fit(
        TrainConfig(
            data=str(data),
            out=str(out),
            model=model,
            epochs=1,
            max_steps=1,
            batch_size=8,
            img_size=img_size,
            workers=0,
        )
    )
