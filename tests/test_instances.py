"""lscindex.glyphs.instances: (character, font) classes, jittered renders, parquet shards."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import run_cli
from PIL import Image

from lscindex.errors import ConfigError
from lscindex.glyphs.instances import INSTANCES_KIND, build_instance_dataset, jitter

SMALL = {"n_classes": 40, "size": 24, "train_views": 3, "val_views": 2, "shard_rows": 37}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("instances") / "inst"
    build_instance_dataset(out, **SMALL, workers=1)
    return out


def rows(folder: Path, split: str) -> list[dict]:
    tables = [pq.read_table(p) for p in sorted(folder.glob(f"{split}-*.parquet"))]
    return [row for t in tables for row in t.to_pylist()]


def test_shards_hold_every_view_of_every_class_in_the_datasets_layout(built: Path) -> None:
    assert sorted(p.name for p in built.iterdir()) == [
        "classes.json",
        "dataset.json",
        *[f"train-{i:05d}-of-00004.parquet" for i in range(4)],  # 120 rows, 37 a shard
        *[f"val-{i:05d}-of-00003.parquet" for i in range(3)],  # 80 rows
    ]
    schema = pq.read_schema(built / "train-00000-of-00004.parquet")
    assert str(schema.field("image").type) == "struct<bytes: binary, path: string>"
    assert [schema.field(n).type for n in ("label", "split")] == ["int64", "string"]
    train, val = rows(built, "train"), rows(built, "val")
    assert np.bincount([r["label"] for r in train]).tolist() == [3] * 40
    assert np.bincount([r["label"] for r in val]).tolist() == [2] * 40
    assert {r["split"] for r in train} == {"train"} and {r["split"] for r in val} == {"val"}
    labels = [r["label"] for r in train]
    assert labels != sorted(labels)  # mixed across shards, so a shard holds many classes
    for row in train[:10] + val[:10]:
        img = Image.open(io.BytesIO(row["image"]["bytes"]))
        assert (img.format, img.mode, img.size) == ("PNG", "L", (24, 24))
        assert max(np.asarray(img).ravel()) >= 200  # white glyph on black
    names = json.loads((built / "classes.json").read_text(encoding="utf-8"))
    info = json.loads((built / "dataset.json").read_text())
    assert len(names) == 40 and len(set(names)) == 40
    char, font = names[train[0]["label"]].split(" ", 1)
    assert train[0]["image"]["path"].startswith(f"U+{ord(char):06X}-{font}/train-")
    assert info["kind"] == INSTANCES_KIND and info["chance_top1"] == pytest.approx(1 / 40)
    assert info["n_classes_available"] > 10_000  # the pip fonts' (character, face) pairs


def test_validation_renders_are_never_training_renders(built: Path) -> None:
    seen = {r["image"]["bytes"] for r in rows(built, "train")}
    val = rows(built, "val")
    assert not [r for r in val if r["image"]["bytes"] in seen]
    by_class: dict[int, set[bytes]] = {}
    for r in val:
        by_class.setdefault(r["label"], set()).add(r["image"]["bytes"])
    assert all(len(v) == 2 for v in by_class.values())  # two different val views each


def test_the_same_seed_builds_the_same_bytes_another_seed_other_renders(
    built: Path, tmp_path: Path
) -> None:
    again = build_instance_dataset(tmp_path / "again", **SMALL, workers=1)
    for name in ("train-00002-of-00004.parquet", "val-00001-of-00003.parquet", "classes.json"):
        assert (again.out / name).read_bytes() == (built / name).read_bytes()
    other = build_instance_dataset(tmp_path / "other", **SMALL, seed=1, workers=1)
    assert (other.out / "classes.json").read_bytes() != (built / "classes.json").read_bytes()


def test_jitter_is_seeded_and_keeps_the_glyph() -> None:
    clean = Image.new("L", (32, 32), 0)
    clean.paste(255, (12, 6, 20, 26))
    a, b = (jitter(clean, np.random.default_rng(7)) for _ in range(2))
    c = jitter(clean, np.random.default_rng(8))
    assert a.tobytes() == b.tobytes() != c.tobytes()
    for img in (a, c):
        pixels = np.asarray(img, dtype=np.float64)
        assert img.size == (32, 32) and pixels.max() >= 200
        assert pixels[14:18, 14:18].mean() > 128 > pixels[:3, :3].mean()  # still a bar


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_classes": 10**7}, "is more than the"),
        ({"size": 8}, "--size 8 is too small"),
        ({"train_views": 0}, "must be at least 1"),
        ({"shard_rows": 0}, "--shard-rows 0"),
    ],
)
def test_bad_settings_are_refused_naming_the_fix(
    kwargs: dict, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=message):
        build_instance_dataset(tmp_path / "x", **{**SMALL, **kwargs}, workers=1)
    assert not (tmp_path / "x").exists()


def test_only_an_instance_dataset_is_overwritten(built: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="mine"):
            build_instance_dataset(mine, **SMALL, overwrite=overwrite, workers=1)
    assert (mine / "notes.txt").read_text() == "keep"
    glyphs = tmp_path / "glyphs"
    glyphs.mkdir()
    (glyphs / "dataset.json").write_text(json.dumps({"kind": "glyphs"}))
    with pytest.raises(ConfigError, match="is not a glyph instance dataset"):
        build_instance_dataset(glyphs, **SMALL, overwrite=True, workers=1)


def test_cli_builds_and_reports_chance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    args = ["data", "instances", str(out), "--classes", "12", "--size", "16", "-j", "1"]
    code, text, err = run_cli([*args, "--train-views", "2", "--shard-rows", "10"], capsys)
    assert code == 0, err
    assert "Wrote 12 (character, font) classes" in text and "24 train rows in 3 shards" in text
    assert "chance 0.083" in text
    code, _, err = run_cli(args, capsys)  # again, without --overwrite
    assert code == 1 and "already exists and is not empty; pass --overwrite" in err
