"""lscindex.run: the run directory's files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lscindex import run as run_files
from lscindex.assignment import table_sha256
from lscindex.data import read_image
from lscindex.errors import RunError


def test_run_config_errors(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="not an lscindex run"):
        run_files.load_run_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(RunError, match="format_version 99"):
        run_files.load_run_config(tmp_path)
    with pytest.raises(RunError, match="does not exist"):
        run_files.load_weights(tmp_path / "none.safetensors")


def test_metrics_roundtrip_and_cut_at_an_epoch(tmp_path: Path) -> None:
    assert run_files.read_metrics(tmp_path) == []
    rows = [{"epoch": e, "train_loss": 1.0 / e} for e in (1, 2, 3)]
    run_files.write_metrics(tmp_path, rows)
    assert run_files.read_metrics(tmp_path) == rows
    assert run_files.read_metrics(tmp_path, before_epoch=2) == rows[:2]
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 3


def test_class_keys_are_written_only_where_they_differ(tmp_path: Path) -> None:
    run_files.write_class_names(tmp_path / "a", ["A", "B"], ["A", "B"])
    assert json.loads((tmp_path / "a" / "classes.json").read_text()) == ["A", "B"]
    assert not (tmp_path / "a" / "class_keys.json").exists()
    run_files.write_class_names(tmp_path / "b", ["A", "B"], ["0041", "0042"])
    assert json.loads((tmp_path / "b" / "class_keys.json").read_text()) == ["0041", "0042"]


def test_published_weights_name_their_assignment_table(tmp_path: Path) -> None:
    table = np.array([3, 1, 2], dtype=np.int64)
    state = {"w": torch.ones(2)}
    run_files.publish_weights(tmp_path, state, epoch=2, global_step=7, assignment=table)
    np.testing.assert_array_equal(
        run_files.load_assignment(tmp_path / "assignment.safetensors"), table
    )
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert meta == {
        "epoch": "2",
        "global_step": "7",
        "assignment_sha256": table_sha256(table),
        "tensors_sha256": run_files.tensors_sha256(state),  # what verify checks the file by
    }


def test_stores_are_recorded_once_per_path_newest_last(tmp_path: Path) -> None:
    assert run_files.recorded_stores(tmp_path) == []
    run_files.record_store(tmp_path, tmp_path / "a.zarr", store_id="1", count=3)
    run_files.record_store(tmp_path, tmp_path / "b.zarr", store_id="2", count=4)
    run_files.record_store(tmp_path, tmp_path / "a.zarr", store_id="3", count=5)
    recorded = run_files.recorded_stores(tmp_path)
    assert recorded == [str(tmp_path / "b.zarr"), str(tmp_path / "a.zarr")]
    listing = json.loads((tmp_path / "stores.json").read_text())
    assert listing[-1]["store_id"] == "3" and listing[-1]["count"] == 5
    run_files.record_store(tmp_path, "s3://bucket/c.zarr", store_id="4", count=6)
    assert run_files.recorded_stores(tmp_path)[-1] == "s3://bucket/c.zarr"  # a URL stays one


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("metrics.jsonl", '{"epoch": 1}\n{"epoch": ', "metrics.jsonl is not JSON lines"),
        ("metrics.jsonl", '{"epoch": 1}\n[1, 2]\n', "not an epoch's metrics"),
        ("stores.json", "{not json", "stores.json is not valid JSON"),
        ("stores.json", '{"path": "a.zarr"}', "stores.json is not a list of stores"),
    ],
)
def test_damaged_metrics_and_store_lists_name_the_file(
    tmp_path: Path, name: str, text: str, match: str
) -> None:
    (tmp_path / name).write_text(text)
    read = run_files.read_metrics if name == "metrics.jsonl" else run_files.recorded_stores
    with pytest.raises(RunError, match=match):
        read(tmp_path)
    assert (tmp_path / name).read_text() == text


def test_a_failed_atomic_write_names_the_target_not_its_temporary(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").mkdir()  # the final rename fails: a folder is in the way
    with pytest.raises(OSError) as caught:
        run_files.write_metrics(tmp_path, [{"epoch": 1}])
    assert caught.value.filename == str(tmp_path / "metrics.jsonl")
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temporary left


# -- the data config: stored, used, and reloaded with plain timm ------------------------------
DOCS = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def sample_images(folder: Path) -> list[Any]:
    """Square and non-square RGB images: the crop settings change both."""
    from PIL import Image

    rng = np.random.default_rng(1)
    sizes = ((32, 32), (45, 31), (20, 64))
    made = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    return [read_image(p) for p in sorted(folder.rglob("*.png"))[:2]] + made


def as_old_run(run: Path, out: Path, *, crop_pct: float, crop_mode: str) -> Path:
    """A copy of ``run`` whose config.json is as runs before data_config_version wrote it.

    Those runs stored the backbone's timm data config (its ImageNet crop) and no version key.
    """
    shutil.copytree(run, out)
    config = json.loads((out / "config.json").read_text())
    del config["data_config_version"]
    config["data_config"].update(crop_pct=crop_pct, crop_mode=crop_mode)
    (out / "config.json").write_text(json.dumps(config))
    return out


def embed(run: run_files.Run, images: list[Any]) -> torch.Tensor:
    """(B, dim) float32 embeddings as Retriever.embed computes them."""
    from lscindex.embedding import encode_batch

    return encode_batch(run, torch.stack([run.transform(image) for image in images]))[0]


@pytest.fixture(scope="module")
def ce_run(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lscindex.training import TrainConfig, fit

    out = tmp_path_factory.mktemp("runs") / "ce"
    fit(
        TrainConfig(
            data=str(image_folder),
            out=str(out),
            model="test_resnet",
            head="ce",
            epochs=1,
            batch_size=16,
            workers=0,
        )
    )
    return out


def test_the_stored_data_config_is_the_eval_transform(
    trained_run: Path, image_folder: Path
) -> None:
    import timm.data

    from lscindex.model import ModelConfig, create_eval_transform, create_model

    config = run_files.load_run_config(trained_run)
    stored = config["data_config"]
    assert config["data_config_version"] == 2
    assert stored["crop_pct"] == 1.0 and stored["crop_mode"] == "center"
    assert run_files.eval_data_config(config) == stored
    # training validated with the model's data config: the one it stored
    model = create_model(ModelConfig.from_dict(config["model"]))
    assert json.loads(json.dumps(model.data_config)) == stored
    run = run_files.open_run(trained_run, device="cpu")
    plain = timm.data.create_transform(**stored)
    validation = create_eval_transform(model.data_config)
    for image in sample_images(image_folder):
        assert torch.equal(run.transform(image), plain(image))
        assert torch.equal(validation(image), plain(image))


@pytest.mark.parametrize(("crop_pct", "crop_mode"), [(0.95, "center"), (0.875, "squash")])
def test_an_old_run_keeps_the_transform_and_embeddings_it_had(
    trained_run: Path, image_folder: Path, tmp_path: Path, crop_pct: float, crop_mode: str
) -> None:
    import timm.data

    old = as_old_run(trained_run, tmp_path / "old", crop_pct=crop_pct, crop_mode=crop_mode)
    stored = run_files.load_run_config(old)["data_config"]
    # lscindex's eval transform before data_config_version: the stored crop was ignored
    before = timm.data.create_transform(
        input_size=tuple(stored["input_size"]),
        interpolation=stored["interpolation"],
        mean=tuple(stored["mean"]),
        std=tuple(stored["std"]),
        crop_pct=1.0,
    )
    images = sample_images(image_folder)
    run = run_files.open_run(old, device="cpu")
    for image in images:
        assert torch.equal(run.transform(image), before(image))
    # the stored crop, had it been used, changes the tensors
    as_stored = timm.data.create_transform(**stored)
    assert not all(torch.equal(as_stored(image), before(image)) for image in images)
    new = run_files.open_run(trained_run, device="cpu")
    assert torch.equal(embed(run, images), embed(new, images))


def test_a_damaged_data_config_names_the_key(trained_run: Path, tmp_path: Path) -> None:
    config = json.loads((trained_run / "config.json").read_text())
    cases = [
        ({"data_config_version": 3}, "'data_config_version' 3 is not one this lscindex reads"),
        ({"data_config_version": True}, "'data_config_version' True"),
        ({"data_config": {**config["data_config"], "is_training": True}}, "'is_training'"),
        ({"data_config": {**config["data_config"], "crop_pct": "1"}}, "crop_pct must be a pos"),
        ({"data_config": {**config["data_config"], "crop_mode": "zoom"}}, "crop_mode 'zoom'"),
    ]
    for change, match in cases:
        (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(RunError, match=match):
            run_files.load_run_config(tmp_path)


def plain_timm_recipe() -> str:
    """The python block of docs/python-api.md's "Reload the encoder with plain timm"."""
    section = DOCS.read_text().split("## Reload the encoder with plain timm\n", 1)[1]
    return re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], flags=re.S)[0]


@pytest.mark.parametrize("kind", ["lsc", "lsc-old", "ce"])
def test_the_documented_plain_timm_recipe_gives_the_runs_embeddings(
    kind: str, trained_run: Path, ce_run: Path, image_folder: Path, tmp_path: Path
) -> None:
    run = ce_run if kind == "ce" else trained_run
    if kind == "lsc-old":
        run = as_old_run(trained_run, tmp_path / "old", crop_pct=0.95, crop_mode="center")
    code = plain_timm_recipe()
    for name, path in (('"runs/tiny"', run), ('"data/tiny/val"', image_folder / "val")):
        assert code.count(name) == 1, f"the recipe no longer reads {name}: update this test"
        code = code.replace(name, repr(str(path)))
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(code, str(DOCS), "exec"), namespace)
    opened = run_files.open_run(run, device="cpu")
    expected = embed(opened, [read_image(namespace["image"])])
    assert namespace["embedding"].shape == expected.shape == (1, opened.model.embed_dim)
    torch.testing.assert_close(namespace["embedding"], expected, atol=1e-6, rtol=0)
