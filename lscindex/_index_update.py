"""Private: what :func:`lscindex.index.update_index` checks before adding a store's new rows.

Whether an index's rows are a store's rows, unchanged: by lineage (the store's ``history`` names
the version the index was built from; ``embed --append`` never changes the rows below a
version's count) or by comparing them (a store embedded anew from a superset of the images).
Then whether the index can take rows at all, and whether ``auto`` would now choose otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.compute as pc

from lscindex._index_sidecar import IndexInfo
from lscindex._location import Location, recorded_location
from lscindex.errors import ConfigError, StoreError
from lscindex.index_factory import choose_factory
from lscindex.store import EmbeddingStore, open_store, store_exists

__all__ = ["advice", "cannot_add", "check_lineage", "check_rows"]


def check_lineage(path: Location, info: IndexInfo, store: EmbeddingStore) -> None:
    """Refuse an index that is not of ``store`` nor of an earlier version in its history."""
    versions = [v.get("store_id") for v in store.header.history]
    if info.store_fingerprint != store.fingerprint and info.store_fingerprint not in versions:
        raise StoreError(
            f"index {path} was built from another store (fingerprint "
            f"{info.store_fingerprint}), not from {store.path} ({store.fingerprint}) nor an "
            f"earlier version of it; build an index of it with lscindex index {store.path}"
        )


def check_rows(path: Location, info: IndexInfo, index: Any, store: EmbeddingStore) -> None:
    """Refuse unless every row the index holds is, in ``store``, the row it was built from:
    same embedding (bit for bit, as float32), id and path as in the store the sidecar names."""
    import faiss

    if info.store_fingerprint == store.fingerprint:
        return  # the very store the index was built from
    fix = f"build a new index with lscindex index {store.path}"
    old_path = recorded_location(info.store, "store", f"the sidecar of {path}")
    if not store_exists(old_path):
        raise StoreError(
            f"cannot compare the rows of index {path} with store {store.path}: the store it "
            f"was built from, {old_path}, does not exist; {fix}"
        )
    old = open_store(old_path)
    if old.fingerprint != info.store_fingerprint or old.header.dim != store.header.dim:
        raise StoreError(
            f"store {old_path} is not the one index {path} was built from (fingerprint "
            f"{old.fingerprint}, dim {old.header.dim}; the sidecar says "
            f"{info.store_fingerprint}, dim {info.dim}); {fix}"
        )
    ids = np.sort(faiss.vector_to_array(index.id_map).astype(np.int64))
    for at in range(0, len(ids), old.header.chunk_rows):
        rows = ids[at : at + old.header.chunk_rows]
        # metadata first: a row the grown store lacks is refused there, naming it
        was, now = (s.rows_metadata(rows).select(["id", "path"]) for s in (old, store))
        same = pc.and_(pc.equal(was["id"], now["id"]), pc.equal(was["path"], now["path"]))
        differ = ~same.to_numpy(zero_copy_only=False) | ~(
            np.asarray(old.embeddings[rows], dtype=np.float32)
            == np.asarray(store.embeddings[rows], dtype=np.float32)
        ).all(axis=1)
        if differ.any():
            raise StoreError(
                f"row {int(rows[differ][0])} of store {store.path} differs from the row index "
                f"{path} holds (from {old_path}: embedding, id or path); {fix}"
            )


def cannot_add(index: Any, store: EmbeddingStore) -> str:
    """Why ``index`` cannot take rows of ``store`` ("" when it can)."""
    if int(index.d) != store.header.dim:
        return f"the index has dim {int(index.d)}, the store {store.header.dim}"
    if not index.is_trained:
        return "the index is not trained"
    return ""


def advice(info: IndexInfo) -> str:
    """For an ``auto`` index: a note when auto would choose another factory for it now."""
    if info.auto is None:
        return ""
    budget = info.auto.max_memory_bytes
    flag = f" --max-memory {budget}" if budget is not None else ""
    try:
        now = choose_factory(info.count, info.dim, max_memory_bytes=budget).factory
    except ConfigError as exc:
        return f"no index of {info.count:,} rows fits the recorded budget anymore ({exc})"
    if now == info.factory:
        return ""
    return (
        f"auto would now choose {now} for {info.count:,} rows (it chose {info.factory} for "
        f"{info.auto.rows:,}); to switch: lscindex index {info.store} --factory auto{flag}"
    )
