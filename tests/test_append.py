"""embed --append (lscindex._append, build_store(append=True)): rows added after a store's own."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import make_image_folder, run_cli

from lscindex.embedding import build_store
from lscindex.errors import StoreError
from lscindex.store import StoreWriter, open_store
from lscindex.verify import verify_store

FAST: dict[str, Any] = {"batch_size": 4, "workers": 0}


@pytest.fixture
def grown(tmp_path: Path) -> tuple[Path, Path]:
    """(images/, more/): images/ holds 3 classes x 10; more/ 3 classes x 4 other images, to be
    moved into images/ (so an append of images/ finds them new)."""
    root = make_image_folder(tmp_path / "made", n_classes=3, per_class=14, size=32, val=0)
    images, more = tmp_path / "images", tmp_path / "more"
    for c in range(3):
        src = root / "train" / f"class_{c:03d}"
        for i, path in enumerate(sorted(src.glob("*.png"))):
            dest = (images if i < 10 else more) / f"class_{c:03d}" / path.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, dest)
    return images, more


def move_in(more: Path, images: Path) -> None:
    for path in sorted(more.rglob("*.png")):
        path.rename(images / path.parent.name / path.name)


def by_id(store: Path) -> dict[str, np.ndarray]:
    st = open_store(store)
    emb = np.asarray(st.embeddings, dtype=np.float32)
    return dict(
        zip(st.metadata.column("id").to_pylist(), emb[st.metadata.column("row")], strict=True)
    )


def test_append_adds_the_new_images_after_the_old_rows(
    run_dir: Path, grown: tuple[Path, Path], tmp_path: Path
) -> None:
    images, more = grown
    out = tmp_path / "emb.zarr"
    build_store(run_dir, [images], out, chunk_rows=8, **FAST)  # 30 rows: chunks 8, 8, 8, 6
    before = open_store(out)
    old = np.asarray(before.embeddings)
    move_in(more, images)
    report = build_store(run_dir, [images], out, append=True, dtype="float32", **FAST)
    assert (report.computed_rows, report.skipped, report.already_complete) == (12, 30, False)
    after = open_store(out)
    header = after.header
    assert (header.count, header.chunk_rows, header.dtype) == (42, 8, before.header.dtype)
    assert header.store_id != before.header.store_id
    assert header.history == (
        {
            "store_id": before.header.store_id,
            "count": 30,
            "inputs_sha256": before.header.inputs_sha256,
        },
    )
    assert after.metadata.column("row").to_pylist() == list(range(42))
    # The old rows are untouched, bit for bit; the last old chunk (rows 24-29) was filled up.
    np.testing.assert_array_equal(
        np.asarray(after.embeddings)[:30].view(np.uint16), old.view(np.uint16)
    )
    assert (
        after.metadata.slice(0, 30).column("id").to_pylist()
        == before.metadata.column("id").to_pylist()
    )
    new_ids = after.metadata.slice(30).column("id").to_pylist()
    assert sorted(new_ids) == sorted(
        str(p.relative_to(images)) for p in images.rglob("01[0-3].png")
    )
    # The same embeddings as a store built from scratch over all the images.
    scratch = tmp_path / "scratch.zarr"
    build_store(run_dir, [images], scratch, chunk_rows=8, **FAST)
    mine, theirs = by_id(out), by_id(scratch)
    assert mine.keys() == theirs.keys()
    for key in mine:
        np.testing.assert_allclose(mine[key], theirs[key], atol=2e-3)
    report = verify_store(out)  # every chunk read, rows covered once, all finite
    assert report.ok, [c for c in report.checks if not c.ok]
    # Appending again finds nothing new.
    again = build_store(run_dir, [images], out, append=True, **FAST)
    assert again.already_complete and again.skipped == 42 and open_store(out).header == header


def test_an_interrupted_append_is_resumed_by_the_same_command(
    run_dir: Path, grown: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, more = grown
    out = tmp_path / "emb.zarr"
    build_store(run_dir, [images], out, chunk_rows=8, **FAST)
    move_in(more, images)
    reference = tmp_path / "reference.zarr"
    shutil.copytree(out, reference)
    build_store(run_dir, [images], reference, append=True, **FAST)

    write_chunk, written = StoreWriter.write_chunk, []

    def dies_after_one(self: StoreWriter, chunk: int, *args: Any) -> None:
        if written:
            raise KeyboardInterrupt  # as a kill between two chunks would
        write_chunk(self, chunk, *args)
        written.append(chunk)

    monkeypatch.setattr(StoreWriter, "write_chunk", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        build_store(run_dir, [images], out, append=True, **FAST)
    monkeypatch.undo()
    assert written == [3]  # the last old chunk, filled up first
    with pytest.raises(StoreError, match=r"unfinished .*run the same lscindex embed command"):
        open_store(out)
    other = tmp_path / "other"
    (other / "class_000").mkdir(parents=True)
    (other / "class_000" / "extra.png").write_bytes((images / "class_000" / "000.png").read_bytes())
    with pytest.raises(StoreError, match=r"has an unfinished append of other images"):
        build_store(run_dir, [other], out, append=True, **FAST)
    report = build_store(run_dir, [images], out, append=True, **FAST)
    assert report.computed_rows == 12 - 2  # chunk 3's two new rows were written before the kill
    done, ref = open_store(out), open_store(reference)
    assert done.header.count == ref.header.count == 42
    assert done.metadata.select(["row", "id", "path"]).equals(
        ref.metadata.select(["row", "id", "path"])
    )
    np.testing.assert_allclose(
        np.asarray(done.embeddings, dtype=np.float32),
        np.asarray(ref.embeddings, dtype=np.float32),
        atol=2e-3,
    )


def test_append_to_a_missing_store_creates_it(
    run_dir: Path, grown: tuple[Path, Path], tmp_path: Path
) -> None:
    images, _ = grown
    report = build_store(run_dir, [images], tmp_path / "new.zarr", append=True, **FAST)
    assert report.computed_rows == 30 and open_store(tmp_path / "new.zarr").header.history == ()


def test_what_append_refuses(
    run_dir: Path, other_run: Path, grown: tuple[Path, Path], tmp_path: Path
) -> None:
    images, more = grown
    out = tmp_path / "emb.zarr"
    build_store(run_dir, [images], out, **FAST)
    header = open_store(out).header
    with pytest.raises(StoreError, match=r"was embedded by run .*append to it with --run"):
        build_store(other_run, [images], out, append=True, **FAST)
    with pytest.raises(StoreError, match="append adds rows to the store, overwrite replaces it"):
        build_store(run_dir, [images], out, append=True, overwrite=True, **FAST)
    # "class_000/000.png" again, but another file: ids name rows and must stay unique.
    with pytest.raises(
        StoreError, match=r"has id 'class_000/000.png', which store .* already holds"
    ):
        build_store(run_dir, [more / ".." / "images", more], out, append=True, **FAST)
    parquet = tmp_path / "emb.parquet"
    build_store(run_dir, [images], parquet, **FAST)
    with pytest.raises(StoreError, match=r"cannot append to .*a parquet store is one file"):
        build_store(run_dir, [images], parquet, append=True, **FAST)
    assert open_store(out).header == header  # nothing refused changed the store


def test_embed_append_through_the_cli(
    run_dir: Path, grown: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, more = grown
    out = tmp_path / "emb.zarr"
    base = ["embed", str(images), "--run", str(run_dir), "--out", str(out), "--workers", "0"]
    assert run_cli(base, capsys)[0] == 0
    move_in(more, images)
    code, printed, err = run_cli([*base, "--append"], capsys)
    assert code == 0, err
    assert f"appended 12 images into {out} (42 rows" in printed
    assert "30 of the images were in it already" in printed
    code, printed, _ = run_cli([*base, "--append"], capsys)
    assert code == 0 and "nothing to add" in printed
