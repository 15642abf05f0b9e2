"""lscindex.data: folder and manifest layouts, splits, unreadable files."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import make_image_folder

from lscindex.data import ImageDataset, collate_skipping, load_dataset
from lscindex.errors import DataError


def test_train_val_folders(image_folder: Path) -> None:
    splits = load_dataset(image_folder)
    assert splits.n_classes == 6 and len(splits.train) == 96 and len(splits.val) == 12
    assert splits.class_names[0] == "class_000"
    assert {label for _, label in splits.val} == set(range(6))


def test_flat_folder_with_val_fraction_is_seeded(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "d", n_classes=3, per_class=10, val=0)
    flat = data / "train"
    a = load_dataset(flat, val_fraction=0.2, seed=1)
    b = load_dataset(flat, val_fraction=0.2, seed=1)
    assert a == b and len(a.val) == 6 and len(a.train) == 24
    assert load_dataset(flat, val_fraction=0.2, seed=2).val != a.val


def test_parquet_manifest_with_names_and_split(image_folder: Path, tmp_path: Path) -> None:
    files = sorted((image_folder / "train").rglob("*.png"))
    table = pa.table(
        {
            "path": [str(p.relative_to(image_folder)) for p in files],
            "label": [int(p.parent.name[-3:]) for p in files],
            "class_name": [p.parent.name for p in files],
            "split": ["val" if i % 4 == 0 else "train" for i in range(len(files))],
        }
    )
    pq.write_table(table, image_folder / "m.parquet")
    splits = load_dataset(image_folder / "m.parquet")
    assert splits.class_names == [f"class_{c:03d}" for c in range(6)]
    assert len(splits.val) == 24 and len(splits.train) == 72
    assert Path(splits.train[0][0]).is_file()  # relative paths resolved against the manifest


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("file,label\na.png,0\n", r"lacks column\(s\) \['path'\]"),
        ("path,label\n", "no training images"),
    ],
)
def test_bad_manifests(tmp_path: Path, content: str, match: str) -> None:
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(DataError, match=match):
        load_dataset(tmp_path / "m.csv")


def test_not_a_manifest(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="neither a folder nor"):
        load_dataset(tmp_path / "x.txt")


def test_val_class_missing_from_train(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "d", n_classes=3, per_class=2)
    (data / "val" / "zzz").mkdir()
    with pytest.raises(DataError, match="zzz is a class folder"):
        load_dataset(data)


def test_unreadable_files_become_none_and_are_dropped(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "d", n_classes=2, per_class=2)
    bad = data / "train" / "class_000" / "000.png"
    bad.write_bytes(b"\x89PNG broken")
    splits = load_dataset(data)
    ds = ImageDataset(splits.train, lambda im: torch.zeros(3, 4, 4))
    items = [ds[i] for i in range(len(ds))]
    assert sum(item is None for item in items) == 1
    images, labels, _, dropped = collate_skipping(items)
    assert images.shape == (3, 3, 4, 4) and labels.dtype == torch.int64 and dropped == 1
    assert collate_skipping([None, None])[3] == 2


# -- hostile manifests -------------------------------------------------------------------------
def _manifest(tmp_path: Path, labels: list[object], **columns: list[object]) -> Path:
    path = tmp_path / "m.parquet"
    rows = {"path": [f"{i}.png" for i in range(len(labels))], "label": labels, **columns}
    pq.write_table(pa.table(rows), path)
    return path


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        ([0, 1, None, 1], r"labels of 1 row\(s\) are missing \(rows 2\)"),
        ([0.0, 1.0, float("nan"), 1.5], r"2 row\(s\) are NaN or not whole numbers \(rows 2, 3\)"),
        (["a", "b", "", " "], r"2 row\(s\) are empty \(rows 2, 3\)"),
        ([0, 1, -1, 1], r"outside \[0, 2\*\*31\) \(rows 2\)"),
        ([0, 1, 2**40, 1], r"outside \[0, 2\*\*31\) \(rows 2\)"),
        ([0, 1, 2**30, 1], r"make 1,073,741,825 classes for 4 rows \(rows 2\)"),
    ],
)
def test_manifest_labels_that_would_renumber_or_explode_are_refused(
    tmp_path: Path, labels: list[object], match: str
) -> None:
    path = _manifest(tmp_path, labels)
    before = path.read_bytes()
    with pytest.raises(DataError, match=match):
        load_dataset(path)
    assert path.read_bytes() == before


def test_whole_float_labels_are_class_ids(tmp_path: Path) -> None:
    # pandas writes an integer column holding a missing value as float; whole values are ids
    splits = load_dataset(_manifest(tmp_path, [0.0, 1.0, 2.0, 1.0]))
    assert [label for _, label in splits.train] == [0, 1, 2, 1]
    assert splits.class_names == ["0", "1", "2"]


def test_data_sha256_changes_with_any_path_or_label(tmp_path: Path) -> None:
    a = load_dataset(_manifest(tmp_path, [0, 1, 0, 1]))
    assert a.sha256() == load_dataset(_manifest(tmp_path, [0, 1, 0, 1])).sha256()
    assert a.sha256() != load_dataset(_manifest(tmp_path, [0, 1, 1, 1])).sha256()
