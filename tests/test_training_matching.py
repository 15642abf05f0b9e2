"""lscindex.training.matching: class means from the model, block by block, as training matches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lscindex._distributed import Ranks
from lscindex.assignment import fit_geometry, match_classes
from lscindex.data import load_dataset, read_image
from lscindex.glyphs.instances import build_instance_dataset
from lscindex.model import ModelConfig, create_eval_transform, create_model, encode
from lscindex.shards import _shard_images
from lscindex.systems import VectorSystem
from lscindex.training import matching
from lscindex.training.matching import assignment_samples, fit_from_features, match_from_model


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 classes x 4 training views in 6 shards of 8 rows, classes mixed across shards."""
    out = tmp_path_factory.mktemp("matching") / "inst"
    build_instance_dataset(out, n_classes=12, size=16, shard_rows=8, workers=1)
    return out


@pytest.mark.parametrize("per_class", [1, 2])
def test_shard_matching_equals_matching_explicit_means_and_reads_shards_in_storage_order(
    source: Path, per_class: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    splits = load_dataset(source)
    system = VectorSystem.create("v21", splits.n_classes)
    torch.manual_seed(0)
    model = create_model(
        ModelConfig(backbone="test_resnet", n_classes=12, system=system.to_dict(), img_size=16)
    ).eval()
    transform = create_eval_transform(model.data_config)
    samples = assignment_samples(splits.train, splits.n_classes, per_class)
    # the reference: every chosen image embedded alone, means summed per class, one matching
    sums = np.zeros((splits.n_classes, system.dim), np.float32)
    with torch.no_grad():
        for name, label in samples:
            _, out = encode(model, transform(read_image(name))[None])
            sums[label] += out[0].numpy()
    expected = match_classes(system, sums)

    monkeypatch.setattr(matching, "MEAN_BLOCK", 4)  # 3 blocks of classes over 6 shards
    _shard_images.cache_clear()
    seen: list[tuple[int, int]] = []
    got = match_from_model(
        model,
        system,
        samples,
        transform=transform,
        batch_size=5,
        workers=0,
        margin=0.0,
        amp_dtype=None,
        device=torch.device("cpu"),
        ranks=Ranks(rank=0, world=1, local_rank=0),
        progress=lambda done, total, rate: seen.append((done, total)),
    )
    np.testing.assert_array_equal(got.assignment_table, expected)
    reads = _shard_images.cache_info().misses
    shards = len(splits.train.blocks)
    if per_class == 1:  # each block's images lie in consecutive shards
        assert reads <= shards + 3 - 1
    # every class, reported to its end; then the classes whose candidates others took
    first = [d for d, total in seen if total == len(samples)]
    assert first == sorted(first) and first[-1] == len(samples)
    assert all(d <= total < len(samples) for d, total in seen[len(first) :])


def _feature_reference(
    model: torch.nn.Module, samples: list, transform: object, system: VectorSystem, block: int
) -> np.ndarray:
    """Every image's pooled features alone, class means, PCA from the first ``block`` classes in
    storage order (all of them when there is one block), then the fit."""
    feats: dict[int, list[np.ndarray]] = {}
    with torch.no_grad():
        for name, label in samples:
            feats.setdefault(label, []).append(
                model.features(transform(read_image(name))[None])[0].numpy()
            )  # type: ignore[operator, attr-defined]
    means = np.stack([np.mean(feats[c], axis=0) for c in range(system.n_classes)])
    rows = samples.rows if hasattr(samples, "rows") else None
    first_classes = np.arange(system.n_classes)
    if rows is not None and block < system.n_classes:
        labels = samples.labels  # type: ignore[attr-defined]
        first_row = {c: rows[labels == c].min() for c in range(system.n_classes)}
        first_classes = np.array(sorted(first_row, key=lambda c: (first_row[c], c))[:block])
    sample = means[np.sort(first_classes)].astype(np.float64)
    centre = sample.mean(axis=0)
    _, singular, vh = np.linalg.svd(sample - centre, full_matrices=False)
    directions = vh[: min(system.dim, int((singular > 1e-6 * singular[0]).sum()))]
    for row in directions:  # the documented sign: each direction's largest loading positive
        row *= np.sign(row[np.abs(row).argmax()])
    geometry = np.zeros((system.n_classes, system.dim), np.float32)
    geometry[:, : len(directions)] = (means - centre) @ directions.T
    table, _, _ = fit_geometry(system, geometry, centered=system.centered)
    return table


@pytest.mark.parametrize("block", [4, 1 << 14])
def test_feature_fit_equals_a_reference_over_single_images(
    source: Path, block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    splits = load_dataset(source)
    system = VectorSystem.create("v21", splits.n_classes, centered=True)
    torch.manual_seed(0)
    model = create_model(
        ModelConfig(backbone="test_resnet", n_classes=12, system=system.to_dict(), img_size=16)
    ).eval()
    transform = create_eval_transform(model.data_config)
    samples = assignment_samples(splits.train, splits.n_classes, 2)
    expected = _feature_reference(model, samples, transform, system, block)
    monkeypatch.setattr(matching, "MEAN_BLOCK", block)
    got, fit = fit_from_features(
        model,
        system,
        samples,
        transform=transform,
        batch_size=5,
        workers=0,
        amp_dtype=None,
        device=torch.device("cpu"),
        ranks=Ranks(rank=0, world=1, local_rank=0),
    )
    assert got.centered
    np.testing.assert_array_equal(got.assignment_table, expected)
    assert 0 < fit <= 1
