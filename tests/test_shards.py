"""lscindex.shards: image-bytes parquet shards as a source for train and embed."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import run_cli
from PIL import Image

from lscindex.data import ImageDataset, load_dataset, read_image
from lscindex.errors import DataError
from lscindex.glyphs.instances import build_instance_dataset
from lscindex.shards import ShardSamples, _shard_images, is_shard_source, open_shards
from lscindex.store import open_store
from lscindex.training.sampling import EpochSampler


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 (character, font) classes, 4 train + 1 val views, 16 rows a shard."""
    out = tmp_path_factory.mktemp("shards") / "inst"
    build_instance_dataset(out, n_classes=12, size=32, shard_rows=16, workers=1)
    return out


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (16, 16), value).save(buffer, format="PNG")
    return buffer.getvalue()


def write_shard(path: Path, labels: list, *, split: list[str] | None = None) -> None:
    """A Hugging Face datasets style shard: image {bytes, path}, label[, split]."""
    images = [{"bytes": png(40 + 20 * i), "path": f"img{i}.png"} for i in range(len(labels))]
    columns = {"image": images, "label": labels}
    if split is not None:
        columns["split"] = split
    pq.write_table(pa.table(columns), path)


def test_a_shard_folder_is_a_dataset_with_its_splits_and_class_names(shards: Path) -> None:
    assert is_shard_source(shards) and is_shard_source(shards / "val-00000-of-00001.parquet")
    splits = load_dataset(shards)
    assert isinstance(splits.train, ShardSamples) and (len(splits.train), len(splits.val)) == (
        48,
        12,
    )
    assert splits.n_classes == 12 and " " in splits.class_names[0]  # "A DejaVuSans"
    assert splits.keys == splits.class_names  # integer labels: classes are keyed by name
    assert splits.train.blocks.tolist() == [16, 16, 16]
    name, label = splits.val[3]
    assert name == f"{shards / 'val-00000-of-00001.parquet'}#3"
    stored = pq.read_table(shards / "val-00000-of-00001.parquet").slice(3, 1).to_pylist()[0]
    assert label == stored["label"]
    expected = Image.open(io.BytesIO(stored["image"]["bytes"])).convert("RGB")
    assert read_image(name).tobytes() == expected.tobytes()
    assert _shard_images.cache_info().currsize == 1  # one shard's images held, no more
    assert splits.sha256() == load_dataset(shards).sha256()


def test_string_labels_no_split_column_and_a_val_fraction(tmp_path: Path) -> None:
    write_shard(tmp_path / "a.parquet", ["cat", "dog", "cat", "emu"])
    write_shard(tmp_path / "b.parquet", ["dog", "emu", "cat", "dog"])
    splits = load_dataset(tmp_path, val_fraction=0.25, seed=3)
    assert splits.class_names == ["cat", "dog", "emu"]
    assert (len(splits.train), len(splits.val)) == (6, 2)
    every = sorted([*splits.train, *splits.val])
    assert [label for _, label in every] == [0, 1, 0, 2, 1, 2, 0, 1]
    assert splits.sha256() != load_dataset(tmp_path, val_fraction=0.25, seed=4).sha256()


def test_the_training_order_takes_one_shard_at_a_time_and_resumes_exactly() -> None:
    blocks = [5, 3, 4]
    starts = {0: range(0, 5), 1: range(5, 8), 2: range(8, 12)}
    one = EpochSampler(12, seed=1, epoch=2, rank=0, world=1, blocks=blocks).indices.tolist()
    assert sorted(one) == list(range(12)) and one != list(range(12))
    runs = [next(b for b, r in starts.items() if i in r) for i in one]
    assert [b for i, b in enumerate(runs) if i == 0 or b != runs[i - 1]] == sorted(
        set(runs), key=runs.index
    )  # each shard's rows come together
    again = list(EpochSampler(12, seed=1, epoch=2, rank=0, world=1, blocks=blocks, skip=7))
    assert again == one[7:]
    other = EpochSampler(12, seed=1, epoch=3, rank=0, world=1, blocks=blocks).indices.tolist()
    assert other != one


def test_a_bad_row_is_skipped_in_training_and_an_error_row_in_a_store(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    write_shard(source / "part.parquet", [0, 1, 0, 1])
    table = pq.read_table(source / "part.parquet").to_pylist()
    table[2]["image"]["bytes"] = b"not an image"
    pq.write_table(pa.Table.from_pylist(table), source / "part.parquet")
    splits = load_dataset(source)
    dataset = ImageDataset(splits.train)
    assert dataset[2] is None and dataset[1] is not None  # read_image refused it
    out = tmp_path / "emb.zarr"
    code, _, err = run_cli(["embed", str(source), "--run", str(run_dir), "--out", str(out)], capsys)
    assert code == 0, err
    meta = open_store(out).metadata.to_pylist()
    assert [m["status"] for m in meta] == ["ok", "ok", "error", "ok"]
    assert "part.parquet#2" in meta[2]["error"] and [m["id"] for m in meta][:2] == [
        "img0.png",
        "img1.png",
    ]


def test_a_shard_without_the_columns_is_refused_in_one_line(tmp_path: Path) -> None:
    write_shard(tmp_path / "a.parquet", [0, 1])
    pq.write_table(
        pa.table({"image": [{"bytes": b"x"}], "caption": ["no label"]}), tmp_path / "b.parquet"
    )
    with pytest.raises(DataError, match=r"b\.parquet has columns \['image', 'caption'\]"):
        open_shards(tmp_path)


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ([1, None], r"shard .*b\.parquet has 1 rows with no label"),
        ([1, -2], r"shard .*b\.parquet has negative labels; labels are 0\.\.C-1"),
        (["cat", "dog"], r"shards a\.parquet and b\.parquet .* labels of different types"),
        ([1, 2**31 - 1], r"labels up to 2,147,483,647 make 2,147,483,648 classes for 4 rows"),
    ],
)
def test_bad_label_columns_are_refused_in_one_line(
    tmp_path: Path, second: list, message: str
) -> None:
    write_shard(tmp_path / "a.parquet", [0, 1])
    write_shard(tmp_path / "b.parquet", second)
    with pytest.raises(DataError, match=message):
        open_shards(tmp_path)


def test_train_refuses_a_huge_shard_label_before_allocating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One label rule for shards and manifests: a label of 2**31 - 1 among a few rows is a
    one-line error before anything class-sized exists, and no run folder is left behind."""
    data = tmp_path / "data"
    data.mkdir()
    write_shard(data / "train-00000-of-00001.parquet", [0, 1, 2**31 - 1, 1])
    run = tmp_path / "run"
    code, out, err = run_cli(["train", str(data), "--out", str(run), "--epochs", "1"], capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "2,147,483,648 classes for 4 rows" in err, err
    assert not run.exists()


def test_integer_labels_are_held_compactly(shards: Path) -> None:
    source = open_shards(shards)
    assert source.labels.dtype == np.int32 and source.n_classes == 12
    splits = load_dataset(shards)
    # whole shards per split: the split's labels are a view of the source's, not a copy
    assert np.shares_memory(splits.train.labels, splits.train.source.labels)


def test_train_embed_and_query_from_shards_end_to_end(
    shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    train = ["train", str(shards), "--out", str(run), "--model", "test_resnet", "--epochs", "1"]
    code, _, err = run_cli(
        [*train, "--batch-size", "8", "--workers", "0", "--img-size", "32"], capsys
    )
    assert code == 0, err
    val = shards / "val-00000-of-00001.parquet"
    code, _, err = run_cli(
        ["embed", str(val), "--run", str(run), "--out", str(tmp_path / "e.zarr")], capsys
    )
    assert code == 0, err
    store = open_store(tmp_path / "e.zarr")
    meta = store.metadata.to_pylist()
    assert len(meta) == 12 and all(m["status"] == "ok" for m in meta)
    assert sorted(m["label"] for m in meta) == list(range(12))  # the shard's labels, kept
    assert meta[0]["id"].endswith("/val-0.png")
    code, text, err = run_cli(
        ["query", f"{val}#0", "--run", str(run), "--store", str(tmp_path / "e.zarr"), "--json"],
        capsys,
    )
    assert code == 0, err
    assert '"row": 0' in text  # the image finds itself among the stored rows

    # --split val on the whole folder: the val rows only, as embedding the val shard gives
    split = tmp_path / "split.zarr"
    embed_split = ["embed", str(shards), "--run", str(run), "--out", str(split), "--split"]
    code, _, err = run_cli([*embed_split, "val"], capsys)
    assert code == 0, err
    by_split = open_store(split)
    assert by_split.metadata.column("id").to_pylist() == [m["id"] for m in meta]
    assert by_split.metadata.column("label").to_pylist() == [m["label"] for m in meta]
    np.testing.assert_array_equal(by_split.embeddings[:], store.embeddings[:])
    code, _, err = run_cli([*embed_split, "train", "--overwrite"], capsys)
    assert code == 0, err
    assert len(open_store(split)) == 48
    # a folder of image files has no split column: one line, nothing written
    folder = tmp_path / "pngs"
    folder.mkdir()
    (folder / "a.png").write_bytes(png(90))
    bad = tmp_path / "bad.zarr"
    code, _, err = run_cli(
        ["embed", str(folder), "--run", str(run), "--out", str(bad), "--split", "val"], capsys
    )
    assert code == 1 and f"input {folder} is not a parquet shard source" in err
    assert len(err.strip().splitlines()) == 1 and not bad.exists()


def test_a_copied_shard_folder_is_the_same_data(shards: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    assert load_dataset(copy).sha256() == load_dataset(shards).sha256()
    np.testing.assert_array_equal(open_shards(copy).labels, open_shards(shards).labels)
