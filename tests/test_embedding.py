"""lscindex.embedding / store / index / retrieval: formats, resume after SIGKILL, bad inputs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lscindex.checkpoint import open_run
from lscindex.embedding import build_store, read_image, resolve_inputs
from lscindex.errors import DataError, InputError, StoreError
from lscindex.index import build_index, load_index
from lscindex.retrieval import Retriever
from lscindex.store import balanced_chunk_rows, open_store
from lscindex.training import TrainConfig, fit


@pytest.fixture(scope="module")
def run_dir(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "blocks"
    fit(
        TrainConfig(
            data=str(image_folder),
            out=str(out),
            model="test_resnet",
            epochs=8,
            batch_size=16,
            workers=0,
            lr=3e-3,
        )
    )
    return out


@pytest.fixture(scope="module")
def other_run(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "other"
    fit(
        TrainConfig(
            data=str(image_folder),
            out=str(out),
            model="test_resnet",
            epochs=1,
            batch_size=16,
            workers=0,
            seed=5,
        )
    )
    return out


@pytest.fixture(scope="module")
def store(run_dir: Path, image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stores") / "emb.zarr"
    build_store(run_dir, [image_folder], out, chunk_rows=32, batch_size=16, workers=0)
    return out


def test_store_layout_and_metadata(store: Path, run_dir: Path) -> None:
    st = open_store(store)
    assert st.header.count == 108 and st.header.dim == 4 and st.header.complete
    assert st.embeddings.shape == (108, 4) and str(st.embeddings.dtype) == "float16"
    meta = st.metadata
    assert meta.column_names[:3] == ["row", "id", "path"]
    assert meta.column("row").to_pylist() == list(range(108))
    assert set(meta.column("status").to_pylist()) == {"ok"}
    labels = np.array(meta.column("label").to_pylist())
    assert (labels >= 0).all()
    emb = np.asarray(st.embeddings[:], dtype=np.float32)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=2e-3)
    # the store knows its run
    assert st.header.run_fingerprint == open_run(run_dir).fingerprint
    assert json.loads((run_dir / "stores.json").read_text())[-1]["path"] == str(store.resolve())


def test_fp16_store_size(store: Path) -> None:
    array_bytes = sum(
        p.stat().st_size
        for p in (store / "embeddings").rglob("*")
        if p.is_file() and p.name != "zarr.json"
    )
    # uncompressed fp16; 108 rows in chunks of at most 32 make 4 full chunks of 27 rows (zarr
    # would store a partial last chunk at full size: 4 * 32 rows)
    header = open_store(store).header
    assert (header.count, header.dim, header.chunk_rows) == (108, 4, 27)
    assert array_bytes == 108 * 4 * 2


def test_plain_libraries_read_every_artefact(store: Path, run_dir: Path, tmp_path: Path) -> None:
    build_index(store, factory="Flat", out=tmp_path / "plain.faiss")
    script = textwrap.dedent(f"""
        import json, sys
        import zarr, pyarrow.parquet as pq, faiss
        from safetensors.numpy import load_file
        g = zarr.open_group({str(store)!r}, mode="r")
        emb = g["embeddings"][:]
        meta = pq.read_table({str(store / "metadata")!r})
        index = faiss.read_index({str(tmp_path / "plain.faiss")!r})
        weights = load_file({str(run_dir / "model.safetensors")!r})
        config = json.load(open({str(run_dir / "config.json")!r}))
        assert emb.shape == (108, 4) and meta.num_rows == 108 and index.ntotal == 108
        assert g.attrs["lscindex"]["count"] == 108 and "head.weight" in weights
        assert config["model"]["system"]["kind"] == "v21"
        assert not any(m.startswith("lscindex") for m in sys.modules)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_parquet_store_matches_the_zarr_store(
    store: Path, run_dir: Path, image_folder: Path, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    out = tmp_path / "emb.parquet"
    build_store(run_dir, [image_folder], out, chunk_rows=32, batch_size=16, workers=0)
    table = pq.read_table(out)
    assert table.num_rows == 108 and "embedding" in table.column_names
    assert not (tmp_path / "emb.parquet.parts").exists()
    np.testing.assert_array_equal(
        np.asarray(open_store(out).embeddings), np.asarray(open_store(store).embeddings[:])
    )


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


# -- resume after SIGKILL -------------------------------------------------------------------------
def _log_rows(log: Path) -> int:
    lines = (
        [ln for ln in log.read_text().splitlines() if ln.strip().isdigit()] if log.exists() else []
    )
    return int(lines[-1]) if lines else 0


def test_sigkill_during_embed_then_resume_is_bit_identical(run_dir: Path, tmp_path: Path) -> None:
    from conftest import make_image_folder

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


# -- index ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF4,Flat", "IVF2,SQ8"])
def test_index_factories_find_stored_items(store: Path, tmp_path: Path, factory: str) -> None:
    info = build_index(store, factory=factory, out=tmp_path / "i.faiss")
    index, checked = load_index(tmp_path / "i.faiss", store=open_store(store))
    assert checked == info and info.count == 108 and info.factory == factory
    sidecar = json.loads((tmp_path / "i.faiss.json").read_text())
    assert (
        sidecar["store_fingerprint"] == open_store(store).fingerprint
        and len(sidecar["sha256"]) == 64
    )
    emb = np.asarray(open_store(store).embeddings[:20], dtype=np.float32)
    if hasattr(index, "nprobe"):
        index.nprobe = 4
    scores, rows = index.search(emb, 1)
    # A well-fitted model puts the images of a class on its target to within fp16 precision
    # (~1e-3; SQ8 adds ~1e-2): an item counts as found when the index returns it or a row
    # that scores as high as it does within that precision (a near-duplicate).
    tolerance = 2e-3 if factory == "Flat" else 2e-2
    tied = scores[:, 0] >= (emb * emb).sum(1) - tolerance
    found = ((rows[:, 0] == np.arange(20)) | tied).mean()
    assert found >= (1.0 if factory == "Flat" else 0.6)


def test_corrupted_index_is_refused_before_reading(store: Path, tmp_path: Path) -> None:
    path = tmp_path / "i.faiss"
    build_index(store, out=path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"is corrupted \(sha256"):
        load_index(path)


def test_index_of_another_store_is_refused(
    store: Path, run_dir: Path, image_folder: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.zarr"
    build_store(run_dir, [image_folder / "val"], other, workers=0)
    build_index(other, out=tmp_path / "other.faiss")
    with pytest.raises(StoreError, match="built from another store"):
        load_index(tmp_path / "other.faiss", store=open_store(store))
    with pytest.raises(StoreError, match="built from another store"):
        Retriever.open(run_dir, store=store, index=tmp_path / "other.faiss")


def test_bad_factory_and_missing_index(store: Path, tmp_path: Path) -> None:
    from lscindex.errors import ConfigError

    with pytest.raises(ConfigError, match="factory string 'Nonsense42'"):
        build_index(store, factory="Nonsense42", out=tmp_path / "x.faiss")
    with pytest.raises(StoreError, match="does not exist"):
        load_index(tmp_path / "none.faiss")
    assert not (tmp_path / "x.faiss").exists()


# -- retrieval ------------------------------------------------------------------------------------
def test_query_a_training_image_finds_its_class_and_itself(
    run_dir: Path, store: Path, image_folder: Path
) -> None:
    r = Retriever.open(run_dir, store=store)
    image = image_folder / "train" / "class_004" / "003.png"
    top = r.classify([image], k=3)[0]
    assert top[0].name == "class_004" and top[0].margin > 0 and not top[0].novel
    assert top[0].cosine >= top[1].cosine >= top[2].cosine
    near = r.search([image], k=10)[0]
    assert near[0].cosine == pytest.approx(1.0, abs=2e-3)
    # the image itself among the stored images tied with the best to within fp16 precision
    assert str(image) in [n.path for n in near if n.cosine >= near[0].cosine - 2e-3]


def test_query_accuracy_matches_the_trainer(run_dir: Path, image_folder: Path) -> None:
    r = Retriever.open(run_dir)
    images = sorted((image_folder / "val").rglob("*.png"))
    labels = [int(p.parent.name[-3:]) for p in images]
    predicted = [m[0].id for m in r.classify(images, k=1)]
    accuracy = np.mean(np.array(predicted) == np.array(labels))
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert accuracy == pytest.approx(last["val_top1"], abs=1e-9)


def test_retriever_accepts_embeddings_and_checks_them(run_dir: Path, store: Path) -> None:
    r = Retriever.open(run_dir, store=store)
    emb = np.asarray(open_store(store).embeddings[:2], dtype=np.float32)
    assert r.search(emb, k=1)[0][0].row == 0
    assert len(r.classify(emb, k=2)[1]) == 2
    with pytest.raises(InputError, match=r"embeddings must be \(B, 4\)"):
        r.classify(np.zeros((1, 5), np.float32))
    with pytest.raises(InputError, match=r"k=109 is out of range: the store .* has 108 indexed"):
        r.search(emb, k=109)
    with pytest.raises(DataError, match="does not exist"):
        r.classify(["/nonexistent.png"])


def test_store_of_another_run_is_refused_by_the_retriever(other_run: Path, store: Path) -> None:
    with pytest.raises(StoreError, match=r"was embedded by run .*embed again with --run"):
        Retriever.open(other_run, store=store)


def test_unfinished_store_cannot_be_opened(
    run_dir: Path, image_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "half.zarr"
    build_store(run_dir, [image_folder], out, chunk_rows=32, workers=0)
    shutil.rmtree(out / "metadata")
    (out / "metadata").mkdir()
    import zarr

    group = zarr.open_group(str(out), mode="r+")
    group.attrs["lscindex"] = {**dict(group.attrs["lscindex"]), "complete": False}
    with pytest.raises(StoreError, match=r"unfinished .*run the same lscindex embed command"):
        open_store(out)


@pytest.mark.parametrize(
    ("count", "max_rows", "expected"),
    [(5000, 4096, 2500), (8192, 4096, 4096), (8193, 4096, 2731), (1, 4096, 1), (100, 1, 1)],
)
def test_balanced_chunk_rows_pads_by_fewer_rows_than_chunks(
    count: int, max_rows: int, expected: int
) -> None:
    rows = balanced_chunk_rows(count, max_rows)
    n_chunks = -(-count // rows)
    assert rows == expected and rows <= max_rows
    assert n_chunks == -(-count // max_rows)  # as many chunks as plain max_rows chunks
    assert n_chunks * rows - count < n_chunks
