"""lscindex.run: the run directory's files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lscindex import run as run_files
from lscindex.assignment import table_sha256
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
    assert meta == {"epoch": "2", "global_step": "7", "assignment_sha256": table_sha256(table)}


def test_stores_are_recorded_once_per_path_newest_last(tmp_path: Path) -> None:
    assert run_files.recorded_stores(tmp_path) == []
    run_files.record_store(tmp_path, tmp_path / "a.zarr", store_id="1", count=3)
    run_files.record_store(tmp_path, tmp_path / "b.zarr", store_id="2", count=4)
    run_files.record_store(tmp_path, tmp_path / "a.zarr", store_id="3", count=5)
    names = [p.name for p in run_files.recorded_stores(tmp_path)]
    assert names == ["b.zarr", "a.zarr"]
    listing = json.loads((tmp_path / "stores.json").read_text())
    assert listing[-1]["store_id"] == "3" and listing[-1]["count"] == 5


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
