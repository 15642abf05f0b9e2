"""lscindex.store: layout, metadata, fp16 size, plain-library reads, parquet vs zarr, unfinished."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lscindex.embedding import build_store
from lscindex.errors import StoreError
from lscindex.index import build_index
from lscindex.run import open_run
from lscindex.store import (
    METADATA_SCHEMA,
    EmbeddingArray,
    balanced_chunk_rows,
    metadata_table,
    open_store,
)


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
    # would store a partial last chunk at full size: 4 * 32 rows), each with a 4-byte crc32c
    header = open_store(store).header
    assert (header.count, header.dim, header.chunk_rows) == (108, 4, 27)
    assert array_bytes == 108 * 4 * 2 + 4 * 4


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
    # One array type for both formats: every way of indexing it gives the same numpy array.
    parquet, zarr_store = open_store(out).embeddings, open_store(store).embeddings
    assert type(parquet) is type(zarr_store) is EmbeddingArray
    mask = np.zeros(108, dtype=bool)
    mask[[3, 50, 99]] = True
    for key in (slice(10, 40), 7, [90, 2, 2, 45], np.array([5, 1]), mask, (slice(None), 0)):
        a, b = parquet[key], zarr_store[key]
        assert type(a) is type(b) is np.ndarray and a.dtype == b.dtype == np.float16, key
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, np.asarray(zarr_store)[key])  # numpy's own indexing
    assert (parquet.shape, len(parquet), parquet.ndim) == ((108, 4), 108, 2)
    assert repr(zarr_store) == "EmbeddingArray(shape=(108, 4), dtype=float16, zarr)"


def _flip_a_data_byte(store: Path) -> None:
    """Change one byte inside the embeddings' data (not a header, not a checksum): in chunk 2
    of a zarr store (rows 54..80), in the embedding column's last data page of a parquet one."""
    if store.suffix == ".zarr":
        file, at = store / "embeddings" / "c" / "2" / "0", 5
    else:
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(store).metadata.row_group(0)
        paths = [meta.column(i).path_in_schema for i in range(meta.num_columns)]
        column = meta.column(next(i for i, p in enumerate(paths) if p.startswith("embedding")))
        first = column.dictionary_page_offset if column.has_dictionary_page else None
        end = (first or column.data_page_offset) + column.total_compressed_size
        file, at = store, end - 2  # the last data page's last bytes
    data = bytearray(file.read_bytes())
    data[at] ^= 0x10
    file.write_bytes(bytes(data))


@pytest.mark.parametrize("suffix", [".zarr", ".parquet"])
def test_a_changed_byte_in_a_chunk_is_caught_by_every_reader(
    suffix: str,
    store: Path,
    run_dir: Path,
    image_folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from helpers import run_cli

    damaged = tmp_path / f"emb{suffix}"
    if suffix == ".zarr":
        shutil.copytree(store, damaged)
    else:
        build_store(run_dir, [image_folder], damaged, chunk_rows=32, batch_size=16, workers=0)
    assert open_store(damaged).header.checksums
    _flip_a_data_byte(damaged)
    rows = "chunk 2 (rows 54..80) fails its checksum" if suffix == ".zarr" else "fail their page"
    with pytest.raises(StoreError, match=re.escape(rows)):
        np.asarray(open_store(damaged).embeddings[:])
    image = str(next((image_folder / "val").rglob("*.png")))
    readers = {
        "index": ["index", str(damaged), "--out", str(tmp_path / "x.faiss")],
        "query": ["query", image, "--run", str(run_dir), "--store", str(damaged)],
        "eval": ["eval", str(run_dir), str(image_folder), "--store", str(damaged)],
        "verify": ["verify", str(damaged)],
    }
    for name, args in readers.items():
        code, _, err = run_cli(args, capsys)
        assert code == 1 and err.count("\n") == 1, (name, err)
        assert str(damaged) in err and ("checksum" in err), (name, err)
        assert name == "verify" or f"lscindex verify {damaged}" in err, (name, err)
    assert not (tmp_path / "x.faiss").exists()


def test_a_store_written_before_checksums_reads_and_verify_says_it_has_none(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store of the earlier layout (bytes codec only, no checksums key) opens as before."""
    import zarr

    old = tmp_path / "old.zarr"
    shutil.copytree(store, old)
    values = np.asarray(open_store(store).embeddings[:])
    shutil.rmtree(old / "embeddings")
    array = zarr.create_array(
        str(old / "embeddings"), shape=values.shape, chunks=(27, 4), dtype="float16",
        compressors=None, fill_value=float("nan"), dimension_names=("row", "dim"),
    )  # fmt: skip
    array[:] = values
    group = zarr.open_group(str(old), mode="r+")
    attrs = dict(group.attrs["lscindex"])
    del attrs["checksums"]
    group.attrs["lscindex"] = attrs
    opened = open_store(old)
    assert not opened.header.checksums
    np.testing.assert_array_equal(np.asarray(opened.embeddings[:]), values)
    code, out, err = run_cli_json(["verify", str(old), "--json"], capsys)
    assert code == 0, err
    (check,) = [c for c in out["checks"] if c["name"] == "checksums"]
    assert check["ok"] and check["detail"].startswith("none: the store was written before")


def run_cli_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, Any, str]:
    from helpers import run_cli

    code, out, err = run_cli(args, capsys)
    return code, json.loads(out), err


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


def test_metadata_table_marks_failed_rows_whatever_the_model_said() -> None:
    table = metadata_table(
        [4, 5],
        ids=["a", "b"],
        paths=["/a.png", "/b.png"],
        labels=[1, -1],
        label_names=["one", None],
        pred=np.array([2, 0]),
        score=np.array([0.5, 0.9], dtype=np.float32),
        novel=np.array([True, True]),
        errors=["", "/b.png is empty (0 bytes)"],
        class_names=["zero", "one", "two"],
    )
    assert table.schema == METADATA_SCHEMA
    good, bad = table.to_pylist()
    assert good == {
        "row": 4,
        "id": "a",
        "path": "/a.png",
        "label": 1,
        "label_name": "one",
        "pred": 2,
        "pred_name": "two",
        "score": 0.5,
        "novel": True,
        "status": "ok",
        "error": None,
    }
    assert (bad["pred"], bad["pred_name"], bad["novel"], bad["status"]) == (
        -1,
        None,
        False,
        "error",
    )
    assert np.isnan(bad["score"]) and bad["error"] == "/b.png is empty (0 bytes)"


def test_chunk_of_failed_rows_has_no_file_and_the_store_still_opens(tmp_path: Path) -> None:
    """zarr writes no file for a chunk that is all fill value (NaN): a chunk whose every image
    failed. open_store and verify accept that, and only that, chunk without a file."""
    from lscindex.store import StoreHeader, StoreWriter
    from lscindex.verify import verify_store

    header = StoreHeader(
        format_version=1,
        store_id="0123456789abcdef",
        count=6,
        dim=2,
        dtype="float16",
        chunk_rows=3,
        system=None,
        run="runs/x",
        run_fingerprint="f" * 16,
        inputs_sha256="0" * 64,
        complete=False,
    )
    path = tmp_path / "failed.zarr"
    writer = StoreWriter.create(path, header)
    for chunk, error in ((0, "unreadable image"), (1, "")):
        rows = np.arange(3 * chunk, 3 * chunk + 3)
        vectors = np.full((3, 2), np.nan) if error else np.tile([0.6, 0.8], (3, 1))
        table = metadata_table(
            rows,
            ids=[f"{r}" for r in rows],
            paths=[f"/{r}.png" for r in rows],
            labels=[0, 0, 0],
            label_names=["a", "a", "a"],
            pred=np.zeros(3),
            score=np.ones(3),
            novel=np.zeros(3),
            errors=[error] * 3,
            class_names=["a"],
        )
        writer.write_chunk(chunk, vectors, table)
    writer.finalize()
    assert not (path / "embeddings" / "c" / "0" / "0").exists()
    assert (path / "embeddings" / "c" / "1" / "0").is_file()
    assert open_store(path).header.count == 6 and verify_store(path).ok
    assert build_index(path, out=tmp_path / "f.faiss").count == 3
    (path / "embeddings" / "c" / "1" / "0").unlink()  # embedded rows: its file must be there
    with pytest.raises(StoreError, match=r"embeddings/c/1/0 \(rows 3..5\) is missing"):
        open_store(path)


@pytest.mark.parametrize("complete", [True, False])
def test_a_crafted_chunk_key_separator_is_refused_by_every_command(
    complete: bool,
    store: Path,
    run_dir: Path,
    image_folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A chunk-key separator that climbs out of the store (``/../../ESCAPED_``) is refused when
    the store is opened (finished) or resumed (unfinished), before a chunk key is formed
    (zarr checks the separator; lscindex also refuses the "." one and other encodings)."""
    from helpers import run_cli

    crafted = tmp_path / "deep" / "er" / "emb.zarr"
    shutil.copytree(store, crafted)
    meta = crafted / "embeddings" / "zarr.json"
    array = json.loads(meta.read_text())
    array["chunk_key_encoding"]["configuration"]["separator"] = "/../../../../ESCAPED_"
    meta.write_text(json.dumps(array))
    if not complete:
        group = json.loads((crafted / "zarr.json").read_text())
        group["attributes"]["lscindex"]["complete"] = False
        (crafted / "zarr.json").write_text(json.dumps(group))
        shutil.rmtree(crafted / "metadata")
        (crafted / "metadata").mkdir()
    embed = ["embed", str(image_folder), "--run", str(run_dir), "--out", str(crafted)]
    image = str(next((image_folder / "val").rglob("*.png")))
    query = ["query", image, "--run", str(run_dir), "--store", str(crafted)]
    resume = [*embed, "--chunk-rows", "32", "--batch-size", "16", "--workers", "0"]
    commands = [["index", str(crafted)], ["verify", str(crafted)], query] if complete else [resume]
    for args in commands:
        code, _, err = run_cli(args, capsys)
        assert code == 1 and err.count("\n") == 1, (args, err)
        assert "Expected an '.' or '/' separator. Got /../../../../ESCAPED_" in err, (args, err)
    assert not list(tmp_path.rglob("*ESCAPED_*"))


def test_a_dot_separated_or_compressed_embeddings_array_is_not_lscindexs(
    store: Path, tmp_path: Path
) -> None:
    for change, expected in (
        (lambda a: a["chunk_key_encoding"]["configuration"].update(separator="."), "separator"),
        (lambda a: a["codecs"].append({"name": "gzip", "configuration": {"level": 1}}), "gzip"),
    ):
        crafted = tmp_path / f"{expected}.zarr"
        shutil.copytree(store, crafted)
        meta = crafted / "embeddings" / "zarr.json"
        array = json.loads(meta.read_text())
        change(array)
        meta.write_text(json.dumps(array))
        with pytest.raises(StoreError, match=rf"store {crafted}: its embeddings array has .*"):
            open_store(crafted)
