"""lscindex.index: FAISS factories over a store, the sidecar checks, bad factories."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lscindex.embedding import build_store
from lscindex.errors import StoreError
from lscindex.index import build_index, load_index
from lscindex.retrieval import Retriever
from lscindex.store import open_store


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


def test_build_index_counts_missing_rows_of_an_opened_store(store: Path, tmp_path: Path) -> None:
    import dataclasses

    opened = open_store(store)
    keep = np.array([r not in (7, 30) for r in range(108)])
    damaged = dataclasses.replace(opened, metadata=opened.metadata.filter(keep))
    with pytest.raises(StoreError, match=r"lacks 2 of 108 rows \(first: row 7\)"):
        build_index(damaged, out=tmp_path / "i.faiss")
    assert not (tmp_path / "i.faiss").exists()


def test_index_ids_must_be_rows_the_store_embedded(store: Path, tmp_path: Path) -> None:
    import dataclasses

    import pyarrow as pa
    import pyarrow.compute as pc

    build_index(store, out=tmp_path / "i.faiss")
    opened = open_store(store)
    status = pc.if_else(pc.equal(opened.metadata.column("row"), 3), "error", "ok")
    failed = dataclasses.replace(
        opened,
        metadata=opened.metadata.set_column(
            opened.metadata.schema.get_field_index("status"), "status", status.cast(pa.string())
        ),
    )
    with pytest.raises(StoreError, match=r"has 1 ids of rows store .* did not embed \(first: 3\)"):
        load_index(tmp_path / "i.faiss", store=failed)
