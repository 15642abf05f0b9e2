"""lscindex.training.matching: class means from the model, block by block, as training matches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lscindex._distributed import Ranks
from lscindex.assignment import match_classes
from lscindex.data import load_dataset, read_image
from lscindex.glyphs.instances import build_instance_dataset
from lscindex.model import ModelConfig, create_eval_transform, create_model, encode
from lscindex.shards import _shard_images
from lscindex.systems import VectorSystem
from lscindex.training import matching
from lscindex.training.matching import assignment_samples, match_from_model


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
