"""lscindex._location: local paths and fsspec URLs (fsspec's in-memory file system here; S3
against a real server is in test_remote.py)."""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
from helpers import make_image_folder

from lscindex._location import (
    RemotePath,
    as_location,
    is_remote,
    location_lock,
    location_sha256,
    read_parquet,
    remove_tree,
    write_bytes,
)
from lscindex.embedding import build_store
from lscindex.errors import StoreError
from lscindex.index import build_index, load_index
from lscindex.store import open_store
from lscindex.verify import verify_path


@pytest.fixture
def bucket() -> Iterator[str]:
    """A fresh memory:// folder, removed afterwards (the memory file system is process-wide)."""
    name = f"t{uuid.uuid4().hex[:8]}"
    yield f"memory://{name}"
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{name}"):
        fs.rm(f"/{name}", recursive=True)


def test_a_url_is_a_remote_path_with_pathlib_names() -> None:
    p = as_location("memory://b/dir/emb.zarr")
    assert isinstance(p, RemotePath) and str(p) == "memory://b/dir/emb.zarr"
    assert (p.name, p.suffix, p.stem) == ("emb.zarr", ".zarr", "emb")
    assert str(p / "metadata") == "memory://b/dir/emb.zarr/metadata"
    assert str(p.with_name("emb.faiss")) == "memory://b/dir/emb.faiss"
    assert str(p.parent) == "memory://b/dir" and p == as_location(str(p))
    assert as_location(p) is p and is_remote("s3://b/x") and not is_remote("file:///x")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("emb.zarr", Path("emb.zarr")),
        ("file:///tmp/x.zarr", Path("/tmp/x.zarr")),
        ("file://localhost/tmp/x.zarr", Path("/tmp/x.zarr")),
    ],
)
def test_local_paths_and_file_urls_stay_pathlib(text: str, expected: Path) -> None:
    assert as_location(text) == expected and as_location(expected) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("foo://b/emb.zarr", "unknown URL scheme foo://"),
        ("gs://b/emb.zarr", "gs:// URLs need a package that is not installed; pip install gcsfs"),
        ("s3:/b/emb.zarr", "with one slash (a path library collapsed it); pass it as s3://b/"),
        ("memory://", "names no object"),
        ("file://../x.zarr", "names an absolute path (file:///abs/path); for a path relative"),
        ("file://x.zarr", "drop the prefix and pass x.zarr"),
    ],
)
def test_urls_that_cannot_be_opened_are_refused_naming_the_fix(text: str, expected: str) -> None:
    with pytest.raises(StoreError, match=r"^store ") as err:
        as_location(text, "store")
    assert expected in str(err.value)


def test_write_read_list_and_remove_on_a_remote_folder(bucket: str) -> None:
    folder = as_location(f"{bucket}/store")
    write_bytes(folder / "a.bin", b"abc")
    write_bytes(folder / "sub" / "b.bin", b"de")
    assert isinstance(folder, RemotePath)
    assert folder.sizes() == {"a.bin": 3, "sub/b.bin": 2}
    assert [p.name for p in folder.glob("*.bin")] == ["a.bin"]
    assert (folder / "a.bin").read_bytes() == b"abc" and (folder / "a.bin").is_file()
    assert folder.is_dir() and not (folder / "nothing").exists()
    assert location_sha256(folder / "a.bin") == location_sha256(_local_copy(b"abc"))
    remove_tree(folder)
    assert not folder.exists() and folder.sizes() == {}


def _local_copy(data: bytes) -> Path:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"lscindex-{uuid.uuid4().hex}.bin"
    path.write_bytes(data)
    return path


def test_a_remote_lock_refuses_a_second_writer_and_takes_over_a_dead_one(bucket: str) -> None:
    store = as_location(f"{bucket}/emb.zarr")
    assert isinstance(store, RemotePath)
    lock = store.with_name("emb.zarr.lock")
    second = pytest.raises(StoreError, match=rf"pid {os.getpid()} on .*delete {lock}")
    with location_lock(store, "store"):
        assert json.loads(lock.read_bytes())["pid"] == os.getpid()
        with second, location_lock(store, "store"):
            pass
    assert not lock.exists()
    # a writer of this host that is gone (no such pid) left its lock: taken over, then released
    dead = {"pid": 2**22 + 12345, "host": socket.gethostname(), "started": "then"}
    write_bytes(lock, json.dumps(dead).encode())
    with location_lock(store, "store"):
        assert json.loads(lock.read_bytes())["pid"] == os.getpid()
    assert not lock.exists()
    # one held on another host cannot be checked: refused, left in place
    write_bytes(lock, json.dumps({**dead, "host": "elsewhere"}).encode())
    with pytest.raises(StoreError, match="elsewhere"), location_lock(store, "store"):
        pass
    assert lock.exists()


def test_a_memory_store_round_trips_like_a_local_one(
    run_dir: Path, tmp_path: Path, bucket: str
) -> None:
    images = make_image_folder(tmp_path / "made", n_classes=2, per_class=9, size=32, val=0)
    fast = {"batch_size": 4, "workers": 0, "chunk_rows": 5}
    for name in ("emb.zarr", "emb.parquet"):
        local, remote = tmp_path / name, f"{bucket}/{name}"
        build_store(run_dir, [images / "train"], local, **fast)
        build_store(run_dir, [images / "train"], remote, **fast)
        a, b = open_store(local), open_store(remote)
        assert (a.embeddings[:] == b.embeddings[:]).all()
        assert a.metadata.to_pylist() == b.metadata.to_pylist()
        info = build_index(remote, recall_queries=0)
        assert str(info.path) == f"{bucket}/emb.faiss"
        assert load_index(info.path, store=b)[1].count == 18
        assert verify_path(remote).ok and verify_path(str(info.path)).ok
    parts = read_parquet(as_location(f"{bucket}/emb.zarr/metadata"))
    assert parts.num_rows == 18


@pytest.mark.parametrize("value", ["abc", "0", "-3"])
def test_a_remote_timeout_that_is_no_positive_number_is_refused_by_name(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LSCINDEX_REMOTE_TIMEOUT_S", value)
    with pytest.raises(
        StoreError, match=rf"^LSCINDEX_REMOTE_TIMEOUT_S='{value}' is not a positive"
    ):
        as_location("s3://bucket/emb.zarr", "store")
