"""Shared fixtures. Plain helper functions live in helpers.py (conftest is not imported)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import make_image_folder


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 classes x 16 train / 2 val images, 32 px."""
    return make_image_folder(tmp_path_factory.mktemp("data") / "blocks", n_classes=6, per_class=16)


@pytest.fixture(scope="session")
def trained_run(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test_resnet run fitted to ``image_folder`` (8 epochs): trained once per session.

    Tests use :func:`run_dir`, a copy of it, and never embed with this one after :func:`store`.
    """
    from lscindex.training import TrainConfig, fit

    out = tmp_path_factory.mktemp("runs") / "blocks"
    fit(
        TrainConfig(
            data=str(image_folder),
            out=str(out),
            model="test_resnet",
            epochs=8,
            batch_size=16,
            workers=0,
            lr=3e-3,
        )
    )
    return out


@pytest.fixture(scope="session")
def store(trained_run: Path, image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``image_folder`` (108 images) embedded with the trained run into a zarr store, 4 chunks."""
    from lscindex.embedding import build_store

    out = tmp_path_factory.mktemp("stores") / "emb.zarr"
    build_store(trained_run, [image_folder], out, chunk_rows=32, batch_size=16, workers=0)
    return out


@pytest.fixture(scope="module")
def run_dir(trained_run: Path, store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This test module's copy of the trained run, taken once :func:`store` was embedded with it.

    Same weights and fingerprint; its stores.json lists ``store`` last. Every store embedded
    with a run is recorded there, and a copy per module keeps the stores one module embeds out
    of the next module's run, whatever order the modules run in.
    """
    out = tmp_path_factory.mktemp("runs") / "blocks"
    shutil.copytree(trained_run, out)
    return out


@pytest.fixture(scope="session")
def other_run(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second run on the same data (1 epoch, another seed): another fingerprint."""
    from lscindex.training import TrainConfig, fit

    out = tmp_path_factory.mktemp("runs") / "other"
    fit(
        TrainConfig(
            data=str(image_folder),
            out=str(out),
            model="test_resnet",
            epochs=1,
            batch_size=16,
            workers=0,
            seed=5,
        )
    )
    return out
