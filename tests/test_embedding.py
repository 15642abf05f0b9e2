"""lscindex.embedding: build_store, resume after SIGKILL, --overwrite, bad images, inputs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lscindex.data import read_image
from lscindex.embedding import build_store, resolve_inputs
from lscindex.errors import DataError, StoreError
from lscindex.index import build_index
from lscindex.run import open_run
from lscindex.store import open_store


def test_finished_store_is_left_untouched(store: Path, run_dir: Path, image_folder: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*")}
    report = build_store(run_dir, [image_folder], store, chunk_rows=32, batch_size=16, workers=0)
    assert report.already_complete and report.computed_rows == 0
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*")} == before


def test_store_of_another_run_is_refused_and_kept(
    store: Path, other_run: Path, image_folder: Path
) -> None:
    before = open_store(store).header
    with pytest.raises(
        StoreError, match=r"holds a store of another run .*run_fingerprint.*--overwrite"
    ):
        build_store(other_run, [image_folder], store, chunk_rows=32, workers=0)
    assert open_store(store).header == before


def test_a_finished_store_with_other_settings_is_not_taken_for_done(
    store: Path, run_dir: Path, image_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "emb.zarr"
    shutil.copytree(store, out)
    before = open_store(out).header
    with pytest.raises(StoreError, match=r"differs in dtype.*--overwrite"):
        build_store(run_dir, [image_folder], out, chunk_rows=32, workers=0, dtype="float32")
    assert open_store(out).header == before
    build_store(
        run_dir, [image_folder], out, chunk_rows=32, workers=0, dtype="float32", overwrite=True
    )
    assert open_store(out).header.dtype == "float32"


def test_overwrite_replaces_only_when_complete(
    run_dir: Path, other_run: Path, image_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "emb.zarr"
    build_store(run_dir, [image_folder], out, chunk_rows=32, workers=0)
    first = open_store(out).header
    report = build_store(other_run, [image_folder], out, chunk_rows=32, workers=0, overwrite=True)
    assert not report.already_complete
    st = open_store(out)
    assert st.header.run_fingerprint != first.run_fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.zarr"]


def _make_bad_images(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True)
    ok = Image.fromarray((np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8))
    ok.save(folder / "good.png")
    buf = (folder / "good.png").read_bytes()
    (folder / "truncated.png").write_bytes(buf[: len(buf) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("this is not an image")
    Image.new("L", (1, 1)).save(folder / "tiny.png")
    Image.new("L", (300, 300)).save(folder / "huge.png")
    (folder / "vector.webp").write_bytes(b"<svg xmlns='http://www.w3.org/2000/svg'></svg>")
    os.mkfifo(folder / "pipe.png")
    return {
        "truncated.png": "cannot be decoded",
        "empty.png": "is empty",
        "text.png": "not an image",
        "tiny.png": "1x1 px",
        "huge.png": "pixel limit",
        "vector.webp": "not an image",
        "pipe.png": "not a regular file",
    }


def test_bad_images_become_error_rows(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image as PILImage

    expected = _make_bad_images(tmp_path / "bad")
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 50_000)  # huge.png has 90,000 pixels
    report = build_store(run_dir, [tmp_path / "bad"], tmp_path / "bad.zarr", workers=0)
    assert report.errors == 7 and report.header.count == 8
    meta = open_store(tmp_path / "bad.zarr").metadata.to_pylist()
    by_name = {Path(r["path"]).name: r for r in meta}
    assert by_name["good.png"]["status"] == "ok" and by_name["good.png"]["error"] is None
    for name, message in expected.items():
        assert by_name[name]["status"] == "error" and message in by_name[name]["error"], name
        assert by_name[name]["pred"] == -1
    emb = np.asarray(open_store(tmp_path / "bad.zarr").embeddings[:], dtype=np.float32)
    assert np.isfinite(emb[by_name["good.png"]["row"]]).all()
    assert np.isnan(emb[by_name["empty.png"]["row"]]).all()
    info = build_index(tmp_path / "bad.zarr")
    assert info.count == 1  # only the readable image is indexed


def test_training_skips_exactly_the_images_embed_rejects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image as PILImage

    from lscindex.data import ImageDataset

    expected = _make_bad_images(tmp_path / "bad")
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 50_000)
    files = sorted(str(p) for p in (tmp_path / "bad").iterdir())
    dataset = ImageDataset([(f, 0) for f in files])
    skipped = {Path(f).name for i, f in enumerate(files) if dataset[i] is None}
    assert skipped == set(expected)


def test_read_image_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing\.png does not exist"):
        read_image(str(tmp_path / "missing.png"))


def test_missing_inputs(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"input .*nope does not exist"):
        build_store(run_dir, [tmp_path / "nope"], tmp_path / "x.zarr")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        build_store(run_dir, [tmp_path / "empty"], tmp_path / "x.zarr")
    assert not (tmp_path / "x.zarr").exists()


def test_inputs_keep_imagefolder_labels(run_dir: Path, image_folder: Path) -> None:
    run = open_run(run_dir)
    items = resolve_inputs([image_folder / "val"], run.class_keys, run.class_names)
    assert [i.label for i in items[:4]] == [0, 0, 1, 1]
    assert items[0].id == "class_000/000.png"


@pytest.mark.parametrize("label", ["int", "key", "name"])
def test_manifest_labels_match_the_folder_labels(
    image_folder: Path, tmp_path: Path, label: str
) -> None:
    keys = [f"class_{c:03d}" for c in range(6)]
    names = [f"Class {c}" for c in range(6)]
    from_folder = resolve_inputs([image_folder / "val"], keys, names)
    values = {
        "int": [i.label for i in from_folder],
        "key": [keys[i.label] for i in from_folder],
        "name": [names[i.label] for i in from_folder],
    }[label]
    pq.write_table(
        pa.table({"path": [i.path for i in from_folder], "label": values}), tmp_path / "m.parquet"
    )
    (tmp_path / "m.csv").write_text(
        "path,label\n"
        + "".join(f"{i.path},{v}\n" for i, v in zip(from_folder, values, strict=True))
    )
    for manifest in (tmp_path / "m.parquet", tmp_path / "m.csv"):
        items = resolve_inputs([manifest], keys, names)
        assert [(i.path, i.label, i.label_name) for i in items] == [
            (i.path, i.label, i.label_name) for i in from_folder
        ]


def _log_rows(log: Path) -> int:
    lines = (
        [ln for ln in log.read_text().splitlines() if ln.strip().isdigit()] if log.exists() else []
    )
    return int(lines[-1]) if lines else 0


def test_sigkill_during_embed_then_resume_is_bit_identical(run_dir: Path, tmp_path: Path) -> None:
    from helpers import make_image_folder

    data = make_image_folder(tmp_path / "many", n_classes=6, per_class=40, val=0)  # 240 images
    worker = Path(__file__).parent / "embed_worker.py"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    reference = tmp_path / "ref.zarr"
    subprocess.run(
        [
            sys.executable,
            str(worker),
            str(run_dir),
            str(reference),
            str(tmp_path / "r.log"),
            str(data),
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    out, chunk = tmp_path / "killed.zarr", 16
    rng = np.random.default_rng(1)
    kills = recomputed = 0
    while kills < 6:
        log = tmp_path / f"k{kills}.log"
        parts_before = len(list((out / "metadata").glob("*.parquet"))) if out.exists() else 0
        proc = subprocess.Popen(
            [sys.executable, str(worker), str(run_dir), str(out), str(log), str(data)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        target = int(rng.integers(1, 40))
        deadline = time.time() + 120
        while proc.poll() is None and _log_rows(log) < target and time.time() < deadline:
            time.sleep(0.002)
        if proc.poll() is not None:
            break  # finished before the kill: the store is complete
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        written = len(list((out / "metadata").glob("*.parquet"))) - parts_before
        lost = _log_rows(log) - written * chunk
        assert 0 <= lost <= chunk  # at most the one chunk in flight is recomputed
        recomputed += lost
        # every finished chunk is readable; nothing half-written is counted as done
        st_parts = sorted((out / "metadata").glob("*.parquet"))
        import pyarrow.parquet as pq

        for part in st_parts:
            assert pq.read_table(part).num_rows == chunk
    assert kills >= 5
    subprocess.run(
        [
            sys.executable,
            str(worker),
            str(run_dir),
            str(out),
            str(tmp_path / "last.log"),
            str(data),
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    a, b = open_store(out), open_store(reference)
    np.testing.assert_array_equal(
        np.asarray(a.embeddings[:]).view(np.uint16), np.asarray(b.embeddings[:]).view(np.uint16)
    )
    assert a.metadata.drop_columns([]).to_pylist() == b.metadata.to_pylist()


def test_a_stop_signal_finishes_the_chunk_in_flight_and_the_same_call_resumes(
    run_dir: Path, tmp_path: Path
) -> None:
    """SIGTERM or SIGUSR1 at random rows (8-10 stops): the chunk being computed is finished and
    written, Preempted names what is written, and the same call ends on the store an
    uninterrupted call writes, bit for bit."""
    from helpers import make_image_folder

    from lscindex.errors import Preempted

    data = make_image_folder(tmp_path / "many", n_classes=6, per_class=40, val=0)  # 15 chunks
    settings = dict(chunk_rows=16, batch_size=8, workers=0)
    reference = build_store(run_dir, [data], tmp_path / "ref.zarr", **settings).path
    out = tmp_path / "stopped.zarr"
    rng = np.random.default_rng(2)
    stops = 0
    while stops < 10:
        target, signum = int(rng.integers(1, 20)), (signal.SIGTERM, signal.SIGUSR1)[stops % 2]

        def progress(done: int, todo: int, rate: float, target: int = target, signum=signum):  # type: ignore[no-untyped-def]
            if done >= target and done - 8 < target:  # the batch that passes ``target`` rows
                os.kill(os.getpid(), signum)

        parts = len(list((out / "metadata").glob("*.parquet"))) if out.exists() else 0
        try:
            build_store(run_dir, [data], out, progress=progress, **settings)
        except Preempted as exc:
            assert exc.signal == signum.name and "run the same command to write" in str(exc)
            written = len(list((out / "metadata").glob("*.parquet")))
            # the chunk in flight is finished and written; no chunk is begun after the signal
            assert written == parts + -(-target // 16)
            stops += 1
        else:
            break  # the rows left were fewer than the target: the store is complete
    assert stops >= 8 and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    build_store(run_dir, [data], out, **settings)
    a, b = open_store(out), open_store(reference)
    np.testing.assert_array_equal(
        np.asarray(a.embeddings[:]).view(np.uint16), np.asarray(b.embeddings[:]).view(np.uint16)
    )
    assert a.metadata.to_pylist() == b.metadata.to_pylist()


def test_a_manifest_repeating_an_id_is_refused_before_anything_is_written(
    run_dir: Path,
    image_folder: Path,
    store: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from helpers import run_cli

    images = sorted((image_folder / "val").rglob("*.png"))[:3]
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,id\n" + "".join(f"{p},{i}\n" for p, i in zip(images, ["a", "b", "a"], strict=True))
    )
    out = tmp_path / "emb.zarr"
    code, _, err = run_cli(
        ["embed", str(manifest), "--run", str(run_dir), "--out", str(out)], capsys
    )
    assert code == 1 and err.count("\n") == 1, err
    assert f"manifest {manifest} gives the id 'a' to rows 0 and 2; ids name" in err
    assert not out.exists()
    appended = tmp_path / "appended.zarr"  # --append refuses it too, the store unchanged
    shutil.copytree(store, appended)
    before = {p: p.read_bytes() for p in appended.rglob("*") if p.is_file()}
    append = ["embed", str(manifest), "--run", str(run_dir), "--out", str(appended), "--append"]
    code, _, err = run_cli(append, capsys)
    assert code == 1 and "gives the id 'a' to rows 0 and 2" in err, err
    assert {p: p.read_bytes() for p in appended.rglob("*") if p.is_file()} == before
