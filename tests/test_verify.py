"""lscindex.verify and `lscindex verify`: damaged stores, indexes and runs are named, never used.

Each damage is done to a copy of the session's store / run. For each: `verify` exits 1 naming
it, opening or searching refuses with one line, and nothing is modified.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli

from lscindex.errors import RunError, StoreError
from lscindex.index import build_index, load_index
from lscindex.retrieval import Retriever
from lscindex.store import open_store
from lscindex.verify import verify_index, verify_run, verify_store


def snapshot(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path`` (or of the file), by relative name."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {
        str(p.relative_to(path.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files
    }


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


def assert_verify_fails(
    path: Path, check: str, match: str, capsys: pytest.CaptureFixture[str], *extra: str
) -> dict[str, object]:
    """`lscindex verify PATH --json` exits 1, names ``check`` first, on one stderr line."""
    code, out, err = run_cli(["verify", str(path), "--json", *extra], capsys)
    assert code == 1, out + err
    report = json.loads(out)
    first = next(c for c in report["checks"] if not c["ok"])
    assert first["name"] == check, report
    assert match in first["detail"], first["detail"]
    assert err.startswith("error:") and err.strip().count("\n") == 0, err
    assert f"failed the {check} check" in err or f"the {check} check failed" in err
    assert match in err
    return report


@pytest.fixture
def store_copy(store: Path, tmp_path: Path) -> Path:
    out = tmp_path / "emb.zarr"
    shutil.copytree(store, out)
    return out


@pytest.fixture
def index_copy(store_copy: Path) -> Path:
    return build_index(store_copy, out=store_copy.with_name("emb.faiss")).path


@pytest.fixture
def run_copy(run_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    return out


# -- clean artefacts --------------------------------------------------------------------------
def test_clean_store_index_and_run_verify_with_exit_0(
    store_copy: Path, index_copy: Path, run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {**snapshot(store_copy), **snapshot(index_copy), **snapshot(run_copy)}
    expected = {
        store_copy: ["header", "layout", "metadata", "rows", "chunks", "finite", "checksums"],
        index_copy: ["sidecar", "sha256", "store", "fingerprint", "read", "ids", "vectors"],
        run_copy: ["config", "classes", "weights", "assignment", "checkpoints"],
    }
    for path, checks in expected.items():
        code, out, err = run_cli(["verify", str(path), "--json"], capsys)
        assert code == 0, out + err
        report = json.loads(out)
        assert report["ok"] and report["path"] == str(path)
        assert [c["name"] for c in report["checks"]] == checks
        assert all(c["ok"] for c in report["checks"])
    assert json.loads(run_cli(["verify", str(index_copy), "--json"], capsys)[1])["kind"] == "index"
    code, out, _ = run_cli(["verify", str(store_copy)], capsys)  # the table
    assert code == 0 and "finite" in out and "FAILED" not in out
    assert verify_store(store_copy).ok and verify_index(index_copy).ok and verify_run(run_copy).ok
    assert {**snapshot(store_copy), **snapshot(index_copy), **snapshot(run_copy)} == before


def test_verify_names_a_path_that_is_nothing_it_knows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["verify", str(tmp_path / "nothing.bin")], capsys)
    assert code == 1 and "is neither a store" in err and err.strip().count("\n") == 0


# -- damaged stores ---------------------------------------------------------------------------
def _set_attrs(path: Path, **changes: object) -> None:
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    attrs = dict(group.attrs["lscindex"])
    for key, value in changes.items():
        if value is KeyError:
            del attrs[key]
        else:
            attrs[key] = value
    group.attrs["lscindex"] = attrs


def _rewrite_part(path: Path, chunk: int, edit: Callable[[dict[str, list]], None]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    part = path / "metadata" / f"part-{chunk:06d}.parquet"
    table = pq.read_table(part)
    columns = table.to_pydict()
    edit(columns)
    pq.write_table(pa.table(columns, schema=table.schema), part)


def _shift_rows(columns: dict[str, list]) -> None:
    columns["row"] = [r - 27 for r in columns["row"]]  # part 1 claims the rows of part 0


# (damage, check verify names first, text in both messages)
STORE_DAMAGE: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "deleted metadata part": (
        lambda p: (p / "metadata" / "part-000002.parquet").unlink(),
        "metadata",
        "lacks metadata part-000002.parquet (rows 54..80)",
    ),
    "deleted chunk": (
        lambda p: (p / "embeddings" / "c" / "1" / "0").unlink(),
        "chunks",
        "chunk file embeddings/c/1/0 (rows 27..53) is missing",
    ),
    "truncated chunk": (
        lambda p: os.truncate(p / "embeddings" / "c" / "3" / "0", 100),
        "chunks",
        "(rows 81..107) has 100 bytes, expected 220",
    ),
    "metadata rows repeated": (
        lambda p: _rewrite_part(p, 1, _shift_rows),
        "rows",
        "lacks 27 of 108 rows (first: row 27) and repeats 27 rows (first: row 0)",
    ),
    "negative count": (lambda p: _set_attrs(p, count=-1), "header", "count is -1, expected 0.."),
    "huge count": (lambda p: _set_attrs(p, count=10**15), "header", "count is 1000000000000000"),
    "count of another shape": (
        lambda p: _set_attrs(p, count=10**9),
        "layout",
        "shape (108, 4), chunks (27, 4), dtype float16 but its attributes say shape "
        "(1000000000, 4)",
    ),
    "dim mismatch": (lambda p: _set_attrs(p, dim=5), "layout", "shape (108, 5)"),
    "missing key": (lambda p: _set_attrs(p, chunk_rows=KeyError), "header", "lacks 'chunk_rows'"),
    "count as text": (lambda p: _set_attrs(p, count="108"), "header", "count is '108'"),
    "unknown dtype": (lambda p: _set_attrs(p, dtype="float64"), "header", "dtype is 'float64'"),
    "store_id mistyped": (
        lambda p: _set_attrs(p, store_id=["x"]),
        "header",
        "store_id is ['x'], expected str",
    ),
}


@pytest.mark.parametrize("damage", list(STORE_DAMAGE))
def test_damaged_store_is_named_and_refused(
    damage: str, store_copy: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    do, check, match = STORE_DAMAGE[damage]
    do(store_copy)
    before = snapshot(store_copy)
    assert_verify_fails(store_copy, check, match, capsys)
    with pytest.raises(StoreError) as opened:
        open_store(store_copy)
    assert match in one_line(opened) and "lscindex verify" in str(opened.value)
    with pytest.raises(StoreError) as searched:
        Retriever.open(run_dir, store=store_copy)
    assert match in one_line(searched)
    assert snapshot(store_copy) == before


def test_crafted_huge_chunks_allocate_nothing(
    store_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tiny edit claiming 10**12 rows in one chunk: refused from the metadata's 108 rows,
    before anything sized by the claim is allocated or read."""
    meta = json.loads((store_copy / "embeddings" / "zarr.json").read_text())
    meta["shape"][0] = 10**12
    meta["chunk_grid"]["configuration"]["chunk_shape"][0] = 10**12
    (store_copy / "embeddings" / "zarr.json").write_text(json.dumps(meta))
    _set_attrs(store_copy, count=10**12, chunk_rows=10**12)
    before = snapshot(store_copy)
    report = assert_verify_fails(store_copy, "rows", "lacks 999,999,999,892 of", capsys)
    assert [c["name"] for c in report["checks"]] == ["header", "layout", "metadata", "rows"]
    with pytest.raises(StoreError) as opened:
        open_store(store_copy)
    assert "lacks 999,999,999,892 of 1,000,000,000,000 rows" in one_line(opened)
    assert snapshot(store_copy) == before


def test_crafted_many_chunks_cost_one_listing(
    store_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = json.loads((store_copy / "embeddings" / "zarr.json").read_text())
    meta["shape"][0] = 10**12
    (store_copy / "embeddings" / "zarr.json").write_text(json.dumps(meta))
    _set_attrs(store_copy, count=10**12)
    assert_verify_fails(store_copy, "metadata", "part-000004.parquet", capsys)
    with pytest.raises(
        StoreError, match=r"part-000006.parquet \(rows 162..188\) and 37,037,037,031 more"
    ):
        open_store(store_copy)


def test_nan_row_is_counted_and_never_indexed(
    store_copy: Path, run_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import zarr

    array = zarr.open_array(str(store_copy / "embeddings"), mode="r+")
    array[5] = np.full(4, np.nan, dtype=np.float16)
    array[40, 1] = np.inf
    before = snapshot(store_copy)
    assert_verify_fails(
        store_copy, "finite", "2 embedded rows hold NaN or inf (first: row 5", capsys
    )
    open_store(store_copy)  # the cheap checks read no embeddings
    match = "2 embedded rows holding NaN or inf (first: row 5, 40)"
    for factory in ("Flat", "IVF2,Flat"):  # added, and sampled for training
        with pytest.raises(StoreError) as built:
            build_index(store_copy, factory=factory, out=tmp_path / "nan.faiss")
        assert match in one_line(built)
    assert not (tmp_path / "nan.faiss").exists()
    with pytest.raises(StoreError) as searched:  # no index on disk: a flat one in memory
        Retriever.open(run_dir, store=store_copy)
    assert match in one_line(searched)
    assert snapshot(store_copy) == before


def test_parquet_store_with_a_row_missing_is_refused(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    opened = open_store(store)
    embeddings = np.asarray(opened.embeddings[:])
    column = pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1)), 4)
    table = opened.metadata.append_column("embedding", column)
    attrs = {b"lscindex": json.dumps(opened.header.to_dict()).encode()}
    good, bad = tmp_path / "good.parquet", tmp_path / "bad.parquet"
    pq.write_table(table.replace_schema_metadata(attrs), good)
    pq.write_table(table.slice(0, 107).replace_schema_metadata(attrs), bad)
    assert verify_store(good).ok and open_store(good).metadata.num_rows == 108
    before = snapshot(bad)
    assert_verify_fails(bad, "layout", "holds 107 rows but its attributes say 108", capsys)
    with pytest.raises(StoreError) as refused:
        open_store(bad)
    assert "holds 107 rows" in one_line(refused)
    assert snapshot(bad) == before


# -- damaged indexes --------------------------------------------------------------------------
def _sidecar(index: Path) -> Path:
    return index.with_name(index.name + ".json")


def _edit_sidecar(index: Path, **changes: object) -> None:
    meta = json.loads(_sidecar(index).read_text())
    for key, value in changes.items():
        if value is KeyError:
            del meta[key]
        else:
            meta[key] = value
    _sidecar(index).write_text(json.dumps(meta))


def _rewrite_ids(index: Path, remap: Callable[[np.ndarray], np.ndarray]) -> None:
    """Rebuild the index with its ids remapped, and the sidecar's sha256 recomputed."""
    import faiss

    old = faiss.read_index(str(index))
    ids = faiss.vector_to_array(old.id_map)
    vectors = np.stack([old.reconstruct(int(i)) for i in ids])
    new = faiss.IndexIDMap2(faiss.IndexFlatIP(old.d))
    new.add_with_ids(vectors, remap(ids).astype(np.int64))
    faiss.write_index(new, str(index))
    _edit_sidecar(index, sha256=hashlib.sha256(index.read_bytes()).hexdigest())


def _random_bytes(index: Path) -> None:
    index.write_bytes(np.random.default_rng(0).bytes(4000))
    _edit_sidecar(index, sha256=hashlib.sha256(index.read_bytes()).hexdigest())


# (damage, check verify names first, text in both messages or None: load_index cannot tell)
INDEX_DAMAGE: dict[str, tuple[Callable[[Path], None], str, str | None]] = {
    "ids shifted": (
        lambda p: _rewrite_ids(p, lambda ids: ids + 1),
        "ids",
        "has 1 ids outside 0..107, the rows of store",
    ),
    "ids repeated": (
        lambda p: _rewrite_ids(p, lambda ids: ids // 2 * 2),
        "ids",
        "repeats 54 ids",
    ),
    "ids permuted": (lambda p: _rewrite_ids(p, lambda ids: ids[::-1]), "vectors", None),
    "sidecar not JSON": (
        lambda p: _sidecar(p).write_text("{not json"),
        "sidecar",
        "is not valid JSON",
    ),
    "sidecar not an object": (
        lambda p: _sidecar(p).write_text("[1, 2]"),
        "sidecar",
        "holds a list, expected an object",
    ),
    "dim as text": (lambda p: _edit_sidecar(p, dim="4"), "sidecar", "has dim '4', expected int"),
    "negative count": (lambda p: _edit_sidecar(p, count=-3), "sidecar", "has count -3"),
    "sha256 missing": (lambda p: _edit_sidecar(p, sha256=KeyError), "sidecar", "lacks 'sha256'"),
    "sha256 wrong": (
        lambda p: _edit_sidecar(p, sha256="0" * 64),
        "sha256",
        "000000000000...",
    ),
    "count wrong": (
        lambda p: _edit_sidecar(p, count=50),
        "ids",
        "holds 108 vectors of dim 4 but its sidecar says 50 of dim 4",
    ),
    "random bytes": (_random_bytes, "read", "cannot be read by FAISS (Index type"),
}


@pytest.mark.parametrize("damage", list(INDEX_DAMAGE))
def test_damaged_index_is_named_and_refused(
    damage: str,
    store_copy: Path,
    index_copy: Path,
    run_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    do, check, match = INDEX_DAMAGE[damage]
    do(index_copy)
    before = {**snapshot(index_copy), **snapshot(_sidecar(index_copy))}
    report = assert_verify_fails(index_copy, check, match or "hold another vector", capsys)
    if damage == "ids permuted":
        assert "sampled ids hold another vector than their store row" in str(report)
        return  # ids that are store rows, in another order: only comparing vectors tells
    assert match is not None
    with pytest.raises(StoreError) as loaded:
        load_index(index_copy, store=open_store(store_copy))
    assert match in one_line(loaded)
    with pytest.raises(StoreError) as searched:
        Retriever.open(run_dir, store=store_copy, index=index_copy)
    assert match in one_line(searched)
    assert {**snapshot(index_copy), **snapshot(_sidecar(index_copy))} == before


def test_index_of_a_damaged_store_is_named(
    store_copy: Path, index_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (store_copy / "metadata" / "part-000000.parquet").unlink()
    assert_verify_fails(index_copy, "store", "lacks metadata part-000000.parquet", capsys)


def test_index_verified_against_another_store(
    store_copy: Path, index_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.zarr"
    shutil.copytree(store_copy, other)
    _set_attrs(other, store_id="0123456789abcdef")
    match = f"but {other} has 0123456789abcdef"
    assert_verify_fails(index_copy, "fingerprint", match, capsys, "--store", str(other))


# -- damaged runs -----------------------------------------------------------------------------
def _swap_table_entries(run: Path) -> None:
    from safetensors.numpy import load_file, save_file

    table = load_file(str(run / "assignment.safetensors"))["table"]
    table[[0, 1]] = table[[1, 0]]
    save_file({"table": table}, str(run / "assignment.safetensors"))


def _flip_last_byte(file: Path) -> None:
    """Change the last byte of a safetensors file: tensor data, not its header."""
    data = bytearray(file.read_bytes())
    data[-1] ^= 0x01
    file.write_bytes(bytes(data))


def _edit_model_config(run: Path, **changes: object) -> None:
    """Change keys of config.json's model (``dim`` goes into its system)."""
    config = json.loads((run / "config.json").read_text())
    for key, value in changes.items():
        (config["model"]["system"] if key == "dim" else config["model"])[key] = value
    (run / "config.json").write_text(json.dumps(config))


RUN_DAMAGE: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "assignment table altered": (
        _swap_table_entries,
        "assignment",
        "model.safetensors was trained with",
    ),
    "weights truncated": (
        lambda p: os.truncate(p / "model.safetensors", 2000),
        "weights",
        "model.safetensors is damaged",
    ),
    "a weight changed": (
        lambda p: _flip_last_byte(p / "model.safetensors"),
        "weights",
        "model.safetensors holds other tensors than it was written with",
    ),
    "newest checkpoint gone": (
        lambda p: shutil.rmtree(next((p / "checkpoints").glob("step-*"))),
        "checkpoints",
        "has no readable newest checkpoint",
    ),
    "checkpoint optimizer changed": (
        lambda p: _flip_last_byte(next((p / "checkpoints").glob("step-*/optimizer.safetensors"))),
        "checkpoints",
        "optimizer.safetensors holds other tensors",
    ),
    "config names another dim": (
        lambda p: _edit_model_config(p, dim=40),
        "weights",
        "but (40,) in the model config.json describes",
    ),
    "config names another backbone": (
        lambda p: _edit_model_config(p, backbone="test_vit"),
        "weights",
        "do not fit",
    ),
    "config not JSON": (
        lambda p: (p / "config.json").write_text("{"),
        "config",
        "config.json is not valid JSON",
    ),
    "class names short": (
        lambda p: (p / "classes.json").write_text('["a"]'),
        "classes",
        "classes.json",
    ),
}


@pytest.mark.parametrize("damage", list(RUN_DAMAGE))
def test_damaged_run_is_named(
    damage: str, run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    do, check, match = RUN_DAMAGE[damage]
    do(run_copy)
    before = snapshot(run_copy)
    assert_verify_fails(run_copy, check, match, capsys)
    with pytest.raises(RunError, match=f"the {check} check failed: .*{re.escape(match)}"):
        verify_run(run_copy).raise_for_failure()
    assert snapshot(run_copy) == before


def test_paths_that_look_like_markup_are_printed_as_they_are(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "a[" / "b]" / "emb.zarr"  # "…/a[/b]/emb.zarr": a closing tag to rich
    shutil.copytree(store, out)
    code, printed, err = run_cli(["verify", str(out)], capsys)
    assert code == 0, err
    assert "a[/b]" in printed.replace("\n", "")


def test_a_run_written_before_contents_checksums_verifies_saying_so(
    run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    file = run_copy / "model.safetensors"
    with safe_open(str(file), framework="pt") as f:
        metadata = {k: v for k, v in (f.metadata() or {}).items() if k != "tensors_sha256"}
    save_file(load_file(str(file)), str(file), metadata=metadata)
    shutil.rmtree(run_copy / "checkpoints")
    code, out, err = run_cli(["verify", str(run_copy), "--json"], capsys)
    assert code == 0, err
    checks = {c["name"]: c["detail"] for c in json.loads(out)["checks"]}
    assert "no contents checksum (written before lscindex stored one)" in checks["weights"]
    assert checks["checkpoints"] == "none (the run keeps no resumable state)"
