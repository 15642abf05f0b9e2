"""Stores and indexes on S3: a real S3-compatible server (moto's, a separate process on
127.0.0.1) reached through s3fs, as a user's bucket would be. embed, resume after SIGKILL,
append, index, index --update, query and verify, each compared with the same work on local
disk."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import make_image_folder, run_cli, strict_json
from s3_server import BUCKET, environment_with, make_bucket, moto_server, s3_environment

from lscindex.embedding import build_store
from lscindex.errors import StoreError
from lscindex.index import build_index, load_index, update_index
from lscindex.retrieval import Retriever
from lscindex.store import open_store
from lscindex.verify import verify_path

pytest.importorskip("s3fs", reason="the s3 extra (s3fs) is part of .[test]")
FAST: dict[str, Any] = {"batch_size": 8, "workers": 0, "chunk_rows": 16}


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A moto S3 server for this module, its bucket made; yields the client environment."""
    import s3fs

    log = tmp_path_factory.mktemp("moto") / "server.log"
    with moto_server(log) as endpoint, pytest.MonkeyPatch.context() as patch:
        env = s3_environment(endpoint)
        for key, value in env.items():
            patch.setenv(key, value)
        make_bucket()
        yield env
        s3fs.S3FileSystem.clear_instance_cache()


def url(name: str) -> str:
    return f"s3://{BUCKET}/{name}"


def objects(prefix: str) -> list[str]:
    """Every object in the bucket whose key starts with ``prefix``."""
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    return sorted(o for o in fs.find(BUCKET) if o.startswith(f"{BUCKET}/{prefix}"))


def same_store(a: Any, b: Any) -> None:
    """Two opened stores hold the same rows: embeddings bit for bit, metadata equal."""
    np.testing.assert_array_equal(
        np.asarray(a.embeddings).view(np.uint16), np.asarray(b.embeddings).view(np.uint16)
    )
    assert a.metadata.to_pylist() == b.metadata.to_pylist()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 20 images (60 rows, 4 chunks of 16)."""
    root = tmp_path_factory.mktemp("s3data") / "made"
    return make_image_folder(root, n_classes=3, per_class=20, size=32, val=0) / "train"


def test_embed_index_query_verify_on_s3_give_what_local_disk_gives(
    s3: dict[str, str],
    run_dir: Path,
    images: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    local, remote = tmp_path / "emb.zarr", url("cli/emb.zarr")
    query = str(sorted(images.rglob("*.png"))[7])
    answers = []
    for out in (str(local), remote):
        code, _, err = run_cli(
            ["embed", str(images), "--run", str(run_dir), "--out", out, "--chunk-rows", "16"],
            capsys,
        )
        assert code == 0, err
        code, _, err = run_cli(["index", out, "--factory", "HNSW32"], capsys)
        assert code == 0, err
        code, text, err = run_cli(
            ["query", query, "--run", str(run_dir), "--store", out, "--json", "-k", "5"], capsys
        )
        assert code == 0, err
        answers.append(strict_json(text))
        code, _, err = run_cli(["verify", out], capsys)
        assert code == 0, err
    same_store(open_store(local), open_store(remote))
    assert answers[1]["store"]["path"] == remote
    assert answers[1]["index"]["path"] == url("cli/emb.faiss")
    assert answers[0]["results"] == answers[1]["results"]
    assert answers[1]["results"][0]["neighbors"][0]["path"] == query
    assert objects("cli/emb.zarr/metadata") == [
        f"{BUCKET}/cli/emb.zarr/metadata/part-{c:06d}.parquet" for c in range(4)
    ]
    assert not [o for o in objects("cli/") if o.endswith(".lock")]  # released


def test_a_parquet_store_on_s3_and_the_python_api(
    s3: dict[str, str], run_dir: Path, images: Path, tmp_path: Path
) -> None:
    local, remote = tmp_path / "emb.parquet", url("api/emb.parquet")
    for out in (local, remote):
        build_store(run_dir, [images], out, **FAST)
    same_store(open_store(local), open_store(remote))
    assert objects("api/emb.parquet") == [f"{BUCKET}/api/emb.parquet"]  # .parts are gone
    info = build_index(remote, out=url("api/flat.faiss"))
    index, loaded = load_index(info.path, store=open_store(remote))
    assert (int(index.ntotal), loaded.sha256) == (60, info.sha256)
    retriever = Retriever.open(run_dir, store=remote, index=url("api/flat.faiss"))
    hits = retriever.search([sorted(images.rglob("*.png"))[3]], k=1)[0]
    assert hits[0].row == 3 and hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert verify_path(url("api/flat.faiss")).ok


def _rows_logged(log: Path) -> int:
    lines = [ln for ln in log.read_text().splitlines() if ln.isdigit()] if log.exists() else []
    return int(lines[-1]) if lines else 0


def test_sigkill_during_an_s3_embed_then_resume_is_bit_identical(
    s3: dict[str, str], run_dir: Path, tmp_path: Path
) -> None:
    data = make_image_folder(tmp_path / "many", n_classes=4, per_class=30, val=0)  # 120 rows
    worker = Path(__file__).parent / "embed_worker.py"
    env = environment_with({**s3, "OMP_NUM_THREADS": "1"})
    reference, out = tmp_path / "ref.zarr", url("killed/emb.zarr")

    def embed(target: str, log: Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, str(worker), str(run_dir), target, str(log), str(data)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    assert embed(str(reference), tmp_path / "ref.log").wait() == 0
    kills = computed = 0
    for target in (20, 60):  # rows this process computed when it is killed
        log = tmp_path / f"kill{kills}.log"
        proc = embed(out, log)
        deadline = time.time() + 120
        while proc.poll() is None and _rows_logged(log) < target and time.time() < deadline:
            time.sleep(0.002)
        assert proc.poll() is None, "the embed finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills, computed = kills + 1, computed + _rows_logged(log)
        kept = 16 * len(objects("killed/emb.zarr/metadata"))
        assert kept <= computed <= kept + 16 * kills  # each kill loses at most its open chunk
    with pytest.raises(StoreError, match="unfinished"):
        open_store(out)
    # the killed writer left its lock; it ran on this host and is gone, so it is taken over
    assert objects("killed/emb.zarr.lock") == [f"{BUCKET}/killed/emb.zarr.lock"]
    last = embed(out, tmp_path / "last.log")
    _, err = last.communicate(timeout=300)
    assert last.returncode == 0, err.decode()[-2000:]
    resumed = _rows_logged(tmp_path / "last.log")
    assert 0 < resumed <= 120 - 16 * 2  # at least chunks 0 and 1 were kept
    same_store(open_store(reference), open_store(out))
    assert verify_path(out).ok
    assert objects("killed/emb.zarr.lock") == []


def test_append_then_update_on_s3_equals_building_it_all_locally(
    s3: dict[str, str], run_dir: Path, tmp_path: Path
) -> None:
    root = make_image_folder(tmp_path / "made", n_classes=3, per_class=14, size=32, val=0)
    images = root / "train"
    held = sorted(images.rglob("*.png"))[1::4]  # 11 of the 42 images come later
    aside = tmp_path / "aside"
    for path in held:
        (aside / path.parent.name).mkdir(parents=True, exist_ok=True)
        path.rename(aside / path.parent.name / path.name)
    remote = url("grown/emb.zarr")
    build_store(run_dir, [images], remote, **FAST)
    build_index(remote, factory="Flat", recall_queries=0)
    for path in held:
        (aside / path.parent.name / path.name).rename(path)
    report = build_store(run_dir, [images], remote, append=True, **FAST)
    assert (report.computed_rows, report.skipped) == (11, 31)
    update = update_index(url("grown/emb.faiss"), remote)
    assert (update.added_rows, update.rebuilt) == (11, False)

    scratch = tmp_path / "scratch.zarr"
    build_store(run_dir, [images], scratch, **FAST)
    build_index(scratch, factory="Flat", recall_queries=0)
    queries = sorted(images.rglob("*.png"))[:6]
    grown = Retriever.open(run_dir, store=remote).search(queries, k=5)
    whole = Retriever.open(run_dir, store=scratch).search(queries, k=5)
    for a, b in zip(grown, whole, strict=True):
        assert [n.id for n in a] == [n.id for n in b]
        np.testing.assert_allclose([n.score for n in a], [n.score for n in b], atol=2e-3)


def test_s3_overwrite_replaces_and_foreign_objects_are_refused(
    s3: dict[str, str], run_dir: Path, images: Path, tmp_path: Path
) -> None:
    import s3fs

    remote = url("over/emb.zarr")
    first = build_store(run_dir, [images], remote, **FAST).header
    with pytest.raises(StoreError, match="pass --overwrite"):
        build_store(run_dir, [images / "class_000"], remote, **FAST)
    again = build_store(run_dir, [images / "class_000"], remote, overwrite=True, **FAST)
    assert again.header.count == 20 and again.header.store_id != first.store_id
    assert open_store(remote).header.count == 20
    assert len(objects("over/emb.zarr/metadata")) == 2  # the old store's 4 parts are gone

    fs = s3fs.S3FileSystem()
    fs.pipe_file(f"{BUCKET}/foreign.zarr/notes.txt", b"mine")
    for flags in ({}, {"overwrite": True}):
        with pytest.raises(StoreError, match="is not an lscindex store"):
            build_store(run_dir, [images], url("foreign.zarr"), **FAST, **flags)
    assert objects("foreign.zarr") == [f"{BUCKET}/foreign.zarr/notes.txt"]


def test_a_held_s3_lock_refuses_a_second_writer_in_one_line(
    s3: dict[str, str], run_dir: Path, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import s3fs

    holder = {"pid": 1, "host": "elsewhere", "started": "2026-01-01T00:00:00+00:00"}
    s3fs.S3FileSystem().pipe_file(f"{BUCKET}/locked.zarr.lock", json.dumps(holder).encode())
    code, _, err = run_cli(
        ["embed", str(images), "--run", str(run_dir), "--out", url("locked.zarr")], capsys
    )
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "pid 1 on elsewhere" in err and f"delete {url('locked.zarr.lock')}" in err
    assert objects("locked") == [f"{BUCKET}/locked.zarr.lock"]  # nothing written, lock kept


@pytest.mark.parametrize(
    ("command", "unset", "expected"),
    [
        (
            ["embed", "IMAGES", "--run", "RUN", "--out", "s3://no-such-bucket/emb.zarr"],
            False,
            "object storage: The specified bucket does not exist (s3://no-such-bucket/emb.zarr)",
        ),
        (
            ["query", "IMAGE", "--run", "RUN", "--store", url("missing.zarr")],
            False,
            f"store {url('missing.zarr')} does not exist; create it with lscindex embed",
        ),
        (
            ["embed", "IMAGES", "--run", "RUN", "--out", url("nocreds.zarr")],
            True,
            "object storage: Unable to locate credentials",
        ),
    ],
)
def test_s3_errors_are_one_line_naming_the_fix(
    command: list[str],
    unset: bool,
    expected: str,
    s3: dict[str, str],
    run_dir: Path,
    images: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import s3fs

    before = objects("")
    if unset:  # a fresh client, which finds no credentials anywhere
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
        s3fs.S3FileSystem.clear_instance_cache()
    swap = {"IMAGES": str(images), "IMAGE": str(sorted(images.rglob("*.png"))[0])}
    swap["RUN"] = str(run_dir)
    try:
        code, _, err = run_cli([swap.get(word, word) for word in command], capsys)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and expected in err, err
    monkeypatch.undo()
    s3fs.S3FileSystem.clear_instance_cache()
    assert objects("") == before


def test_an_endpoint_that_never_answers_is_a_one_line_timeout(tmp_path: Path) -> None:
    """A server that accepts connections and never answers: the command ends with one line
    naming object storage and the timeout, after LSCINDEX_REMOTE_TIMEOUT_S per attempt (s3fs
    retries a few), instead of hanging."""
    import os
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # the kernel completes the handshakes; nothing ever reads or answers
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        env = {**os.environ, **s3_environment(endpoint), "LSCINDEX_REMOTE_TIMEOUT_S": "0.5"}
        start = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "lscindex_cli.main", "verify", f"s3://{BUCKET}/emb.zarr"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        took = time.monotonic() - start
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert lines[0].startswith("error: object storage: ") and "timeout" in lines[0].lower()
    assert took < 120
