"""Hostile paths: only lscindex artefacts are ever replaced or deleted; one writer at a time.

Every case goes through the CLI and checks the exit status, the one-line message, and that each
artefact that was there before is byte-identical afterwards (a digest of its whole tree).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import run_cli

from lscindex._io import writer_lock
from lscindex.errors import RunError, StoreError
from lscindex.store import open_store

FAST = ["--workers", "0", "--device", "cpu", "--batch-size", "16"]


def tree_digest(path: Path) -> str:
    """sha256 over every entry under ``path`` (or of the file itself): names, kinds, bytes."""
    digest = hashlib.sha256()
    entries = [path] if not path.is_dir() else sorted(path.rglob("*"))
    for p in entries:
        rel = p.relative_to(path).as_posix() if p != path else "."
        if p.is_symlink():
            digest.update(f"L {rel} -> {os.readlink(p)}\n".encode())
        elif p.is_dir():
            digest.update(f"D {rel}\n".encode())
        else:
            digest.update(f"F {rel} {p.stat().st_size}\n".encode())
            digest.update(p.read_bytes())
    return digest.hexdigest()


def refused(code: int, err: str, *needles: str) -> None:
    """Exit 1 with one line of error naming every needle."""
    assert code == 1, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


def lock_of(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


@pytest.fixture()
def data(image_folder: Path, tmp_path: Path) -> Path:
    """This test's own copy of the image folder (so a bug can never touch the shared one)."""
    return Path(shutil.copytree(image_folder, tmp_path / "data"))


@pytest.fixture()
def store_copy(store: Path, tmp_path: Path) -> Path:
    """A finished store of ``run_dir`` over ``image_folder``, this test's own copy."""
    return Path(shutil.copytree(store, tmp_path / "emb.zarr"))


@pytest.fixture()
def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture()
def live_pid() -> Iterator[int]:
    """The pid of another process that runs for the whole test."""
    child = subprocess.Popen(["sleep", "300"])
    try:
        yield child.pid
    finally:
        child.kill()
        child.wait()


def embed_args(run: Path, inputs: list[Path], out: Path, *extra: str) -> list[str]:
    return ["embed", *map(str, inputs), "--run", str(run), "--out", str(out), *FAST, *extra]


# -- --out that is (or overlaps) an input ------------------------------------------------------
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_out_is_the_input_folder(
    run_dir: Path, data: Path, overwrite: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    before = tree_digest(data)
    code, _, err = run_cli(embed_args(run_dir, [data], data, *overwrite), capsys)
    refused(code, err, f"--out {data} is the input {data}", "choose another --out")
    assert tree_digest(data) == before


def test_out_inside_the_input_folder(
    run_dir: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = tree_digest(data)
    out = data / "train" / "emb.zarr"
    code, _, err = run_cli(embed_args(run_dir, [data], out), capsys)
    refused(code, err, f"--out {out} is inside the input folder {data}", "choose another --out")
    assert tree_digest(data) == before  # nothing written, not even a lock file


def test_out_is_the_input_manifest(
    run_dir: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "images.parquet"
    paths = sorted(str(p) for p in (data / "val").rglob("*.png"))
    pq.write_table(pa.table({"path": paths}), manifest)
    before = tree_digest(manifest)
    code, _, err = run_cli(embed_args(run_dir, [manifest], manifest, "--overwrite"), capsys)
    refused(code, err, f"--out {manifest} is the input {manifest}")
    assert tree_digest(manifest) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "images.parquet"]


# -- --out holding something that is not an lscindex store -------------------------------------
def test_out_is_another_manifest(
    run_dir: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "other.parquet"
    pq.write_table(pa.table({"path": ["a.png", "b.png"], "label": [0, 1]}), manifest)
    before = tree_digest(manifest)
    code, _, err = run_cli(embed_args(run_dir, [data / "val"], manifest, "--overwrite"), capsys)
    refused(code, err, f"{manifest} exists and is not an lscindex store", "remove it yourself")
    assert tree_digest(manifest) == before
    assert not lock_of(manifest).exists()


@pytest.mark.parametrize("name", ["notes.txt", "emb.zarr", "emb.parquet"])
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_out_is_a_random_file(
    run_dir: Path,
    data: Path,
    tmp_path: Path,
    name: str,
    overwrite: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / name
    out.write_bytes(os.urandom(1000))
    before = tree_digest(out)
    code, _, err = run_cli(embed_args(run_dir, [data / "val"], out, *overwrite), capsys)
    refused(code, err, f"{out} exists and is not an lscindex store", "choose another --out")
    assert tree_digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["data", name])


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_out_is_a_parquet_dataset_folder(
    run_dir: Path,
    data: Path,
    tmp_path: Path,
    overwrite: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "table.parquet"  # a Hive/Spark data set is a folder of parts
    out.mkdir()
    (out / "part-0.parquet").write_bytes(os.urandom(100))
    before = tree_digest(out)
    code, _, err = run_cli(embed_args(run_dir, [data / "val"], out, *overwrite), capsys)
    refused(code, err, f"{out} exists and is not an lscindex store")
    assert tree_digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "table.parquet"]


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_out_is_a_zarr_of_someone_else(
    run_dir: Path,
    data: Path,
    tmp_path: Path,
    overwrite: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    import zarr

    out = tmp_path / "theirs.zarr"
    group = zarr.open_group(str(out), mode="w", zarr_format=3)
    group.create_array("x", shape=(4, 3), dtype="float32")[:] = np.arange(12).reshape(4, 3)
    group.attrs["owner"] = "somebody else"
    before = tree_digest(out)
    code, _, err = run_cli(embed_args(run_dir, [data / "val"], out, *overwrite), capsys)
    refused(code, err, f"{out} exists and is not an lscindex store", "remove it yourself")
    assert tree_digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "theirs.zarr"]


def test_out_is_a_folder_of_images_with_overwrite(
    run_dir: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = Path(shutil.copytree(data / "train", tmp_path / "photos"))
    before = tree_digest(photos)
    code, _, err = run_cli(embed_args(run_dir, [data / "val"], photos, "--overwrite"), capsys)
    refused(code, err, f"{photos} exists and is not an lscindex store", "choose another --out")
    assert tree_digest(photos) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "photos"]


def test_scratch_path_of_an_overwrite_is_never_taken_from_someone_else(
    run_dir: Path, image_folder: Path, store_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--overwrite builds in .emb.overwrite.zarr beside the store; a folder of theirs is kept."""
    theirs = store_copy.with_name(".emb.overwrite.zarr")
    theirs.mkdir()
    (theirs / "mine.txt").write_text("keep me")
    before = {p: tree_digest(p) for p in (store_copy, theirs)}
    args = embed_args(run_dir, [image_folder], store_copy, "--overwrite", "--chunk-rows", "32")
    code, _, err = run_cli(args, capsys)
    refused(code, err, f"{theirs} exists and is not an lscindex store")
    assert {p: tree_digest(p) for p in before} == before
    assert not lock_of(store_copy).exists()


def test_glyphs_overwrite_refuses_a_folder_that_is_no_glyph_dataset(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = tree_digest(data)
    code, _, err = run_cli(["data", "glyphs", str(data), "--overwrite", "--classes", "5"], capsys)
    refused(code, err, f"{data} is not a glyph dataset", "remove it yourself")
    assert tree_digest(data) == before


def test_glyphs_overwrite_refuses_a_forged_dataset_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "dataset.json").write_text(json.dumps({"kind": "photos"}))
    (out / "holiday.jpg").write_bytes(b"\xff\xd8 not really")
    before = tree_digest(out)
    code, _, err = run_cli(["data", "glyphs", str(out), "--overwrite"], capsys)
    refused(code, err, f"{out} is not a glyph dataset")
    assert tree_digest(out) == before


# -- one writer at a time ------------------------------------------------------------------------
def test_held_lock_on_a_store_refuses_a_second_writer(
    run_dir: Path,
    image_folder: Path,
    store_copy: Path,
    live_pid: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lock = lock_of(store_copy)
    holder = {"pid": live_pid, "host": socket.gethostname(), "started": "2024-01-01T00:00:00"}
    lock.write_text(json.dumps(holder))
    before = {p: tree_digest(p) for p in (store_copy, lock)}
    for extra in ([], ["--overwrite"]):
        args = embed_args(run_dir, [image_folder], store_copy, "--chunk-rows", "32", *extra)
        code, _, err = run_cli(args, capsys)
        refused(code, err, f"pid {live_pid} on {socket.gethostname()}", f"remove {lock}")
    assert {p: tree_digest(p) for p in before} == before
    assert sorted(p.name for p in store_copy.parent.iterdir()) == ["emb.zarr", "emb.zarr.lock"]


def test_held_lock_on_a_store_in_process(
    run_dir: Path, image_folder: Path, store_copy: Path
) -> None:
    """The library call: a second build_store while the first holds the lock."""
    from lscindex.embedding import build_store

    before = tree_digest(store_copy)
    with writer_lock(store_copy, "store") as lock:
        assert lock == lock_of(store_copy) and json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(StoreError, match=f"pid {os.getpid()} on "):
            build_store(run_dir, [image_folder], store_copy, chunk_rows=32, workers=0)
    assert not lock_of(store_copy).exists()
    assert tree_digest(store_copy) == before


def test_held_lock_on_a_run_dir_refuses_a_second_fit(
    trained_run: Path, image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    fresh = tmp_path / "fresh"  # a run about to be started: its folder does not exist yet
    before = tree_digest(run)
    common = ["--model", "test_resnet", "--epochs", "9", "--workers", "0"]
    with (
        writer_lock(run, "run", error=RunError) as lock,
        writer_lock(fresh, "run", error=RunError),
    ):
        assert lock == tmp_path / "run.lock"  # beside the run, never inside it
        args = ["train", str(image_folder), "--out", str(run), "--resume", *common]
        code, _, err = run_cli(args, capsys)
        refused(code, err, f"run {run} is being written", f"pid {os.getpid()}", f"remove {lock}")
        code, _, err = run_cli(["train", str(image_folder), "--out", str(fresh), *common], capsys)
        refused(code, err, f"run {fresh} is being written", f"pid {os.getpid()}")
    assert tree_digest(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_stale_lock_of_a_dead_process_is_taken_over(
    run_dir: Path,
    image_folder: Path,
    store_copy: Path,
    dead_pid: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lock = lock_of(store_copy)
    lock.write_text(json.dumps({"pid": dead_pid, "host": socket.gethostname(), "started": "x"}))
    before = tree_digest(store_copy)
    args = embed_args(run_dir, [image_folder], store_copy, "--chunk-rows", "32")
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "already complete" in out and err == ""
    assert tree_digest(store_copy) == before
    assert not lock.exists()


def test_clearing_a_stale_lock_never_removes_a_fresh_one(tmp_path: Path, dead_pid: int) -> None:
    """Two processes find the same stale lock; the first replaces it before the second acts."""
    from lscindex._io import _clear_stale

    lock = tmp_path / "emb.zarr.lock"
    fresh = {"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}
    lock.write_text(json.dumps(fresh))
    stale = {"pid": dead_pid, "host": socket.gethostname(), "started": "then"}
    _clear_stale(lock, stale)  # what the second process read before the first took over
    assert json.loads(lock.read_text()) == fresh
    assert os.listdir(tmp_path) == ["emb.zarr.lock"]


def test_lock_of_another_host_is_not_judged_stale(
    run_dir: Path, image_folder: Path, store_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lock = lock_of(store_copy)
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere.invalid", "started": "x"}))
    code, _, err = run_cli(embed_args(run_dir, [image_folder], store_copy), capsys)
    refused(code, err, "pid 1 on elsewhere.invalid", f"remove {lock}")
    assert lock.exists()


def test_lock_is_removed_after_success_and_after_a_failure(
    run_dir: Path,
    data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import lscindex.embedding as embedding

    out = tmp_path / "emb.zarr"
    code, _, err = run_cli(embed_args(run_dir, [data / "val"], out, "--chunk-rows", "4"), capsys)
    assert code == 0, err
    assert open_store(out).header.count == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "emb.zarr"]

    def fail(*args: object, **kwargs: object) -> None:
        raise StoreError("simulated failure while writing")

    monkeypatch.setattr(embedding, "_write_chunk", fail)
    other = tmp_path / "other.parquet"
    code, _, err = run_cli(embed_args(run_dir, [data / "val"], other), capsys)
    refused(code, err, "simulated failure")
    assert not lock_of(other).exists()


def test_interrupted_overwrite_leaves_the_old_store_intact(
    run_dir: Path,
    image_folder: Path,
    store_copy: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import lscindex.embedding as embedding

    before = tree_digest(store_copy)
    old_id = open_store(store_copy).header.store_id
    written = []
    real = embedding._write_chunk

    def fail_on_the_second_chunk(writer, chunk, *rest):  # type: ignore[no-untyped-def]
        if written:
            raise StoreError("simulated crash mid-overwrite")
        written.append(chunk)
        real(writer, chunk, *rest)

    monkeypatch.setattr(embedding, "_write_chunk", fail_on_the_second_chunk)
    args = embed_args(run_dir, [image_folder], store_copy, "--overwrite", "--chunk-rows", "32")
    code, _, err = run_cli(args, capsys)
    refused(code, err, "simulated crash mid-overwrite")
    assert tree_digest(store_copy) == before
    assert open_store(store_copy).header.complete
    assert not lock_of(store_copy).exists()
    assert (store_copy.parent / ".emb.overwrite.zarr").is_dir()  # the resumable half-built store

    monkeypatch.setattr(embedding, "_write_chunk", real)
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert open_store(store_copy).header.store_id != old_id
    assert sorted(p.name for p in store_copy.parent.iterdir()) == ["emb.zarr"]
