"""FAISS indexes over an embedding store, with a JSON sidecar checked before the index is read.

``emb.zarr`` -> ``emb.faiss`` (the index, FAISS's own format) + ``emb.faiss.json``::

    {"format_version": 1, "factory": "HNSW32", "metric": "inner_product", "dim": 18,
     "count": 27782, "store": "emb.zarr", "store_fingerprint": "...", "sha256": "..."}

Index ids are store row numbers (rows whose image failed are left out). Embeddings are unit
vectors, so inner product is cosine similarity.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lscindex._io import atomic_write_json, file_sha256, fsync_dir
from lscindex.errors import ConfigError, StoreError
from lscindex.store import EmbeddingStore, open_store

__all__ = ["IndexInfo", "build_index", "default_index_path", "load_index"]

INDEX_FORMAT_VERSION = 1


@dataclass(frozen=True)
class IndexInfo:
    """The sidecar of an index (see the module docstring)."""

    path: Path
    factory: str
    dim: int
    count: int
    store: str
    store_fingerprint: str
    sha256: str


def default_index_path(store: str | os.PathLike[str]) -> Path:
    """``emb.zarr`` or ``emb.parquet`` -> ``emb.faiss`` beside it."""
    store = Path(store)
    return store.with_name(store.stem + ".faiss")


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def readable_rows(store: EmbeddingStore) -> np.ndarray:
    """(count,) bool: rows whose image was embedded (``status == "ok"``), by store row."""
    good = np.zeros(store.header.count, dtype=bool)
    status = np.asarray(store.metadata.column("status").to_pylist(), dtype=object) == "ok"
    good[np.asarray(store.metadata.column("row").to_numpy())[status]] = True
    return good


def add_store_rows(index: Any, store: EmbeddingStore, good: np.ndarray) -> None:
    """Add the ``good`` rows of a store to an ID-mapped FAISS index, chunk by chunk (ids = rows)."""
    for start, block in store.iter_chunks():
        keep = good[start : start + len(block)]
        if keep.any():
            ids = np.arange(start, start + len(block), dtype=np.int64)[keep]
            index.add_with_ids(np.ascontiguousarray(block[keep]), ids)


def build_index(
    store: str | os.PathLike[str] | EmbeddingStore,
    *,
    factory: str = "Flat",
    out: str | os.PathLike[str] | None = None,
    train_size: int = 100_000,
    seed: int = 0,
) -> IndexInfo:
    """Build a FAISS index (any ``index_factory`` string) over a finished store.

    Args:
        store: store path or an opened store.
        factory: e.g. ``"Flat"`` (exact), ``"HNSW32"``, ``"IVF1024,SQ8"``, ``"IVF4096,PQ16"``.
        out: index path; default :func:`default_index_path`.
        train_size: rows sampled (seeded) to train indexes that need training (IVF, PQ, SQ).

    Returns:
        :class:`IndexInfo`; the index and its sidecar are written atomically.

    Raises:
        ConfigError: a factory string FAISS rejects. StoreError: unfinished or empty store.

    Example:
        >>> build_index("emb.zarr", factory="HNSW32")   # doctest: +SKIP
    """
    opened = store if isinstance(store, EmbeddingStore) else open_store(store)
    path = Path(out) if out is not None else default_index_path(opened.path)
    good = readable_rows(opened)
    rows = np.flatnonzero(good)
    if len(rows) == 0:
        raise StoreError(f"store {opened.path} has no successfully embedded rows to index")
    index = _create_index(factory, opened.header.dim)
    if not index.is_trained:
        sample = np.sort(np.random.default_rng(seed).permutation(rows)[:train_size])
        _train_index(index, opened, sample, factory)
    add_store_rows(index, opened, good)
    _write_index(index, path)
    info = IndexInfo(
        path=path,
        factory=factory,
        dim=opened.header.dim,
        count=int(index.ntotal),
        store=str(opened.path),
        store_fingerprint=opened.fingerprint,
        sha256=file_sha256(path),
    )
    atomic_write_json(
        _sidecar(path),
        {
            "format_version": INDEX_FORMAT_VERSION,
            "factory": factory,
            "metric": "inner_product",
            "dim": info.dim,
            "count": info.count,
            "store": info.store,
            "store_fingerprint": info.store_fingerprint,
            "sha256": info.sha256,
        },
    )
    return info


def _create_index(factory: str, dim: int) -> Any:
    """An empty ID-mapped inner-product index of ``factory``.

    Raises:
        ConfigError: a factory string FAISS rejects.
    """
    import faiss

    try:
        base = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise ConfigError(
            f"FAISS does not accept the factory string {factory!r} ({first}); try Flat, "
            f"HNSW32 or IVF<nlist>,SQ8"
        ) from None
    return faiss.IndexIDMap2(base)


def _train_index(index: Any, store: EmbeddingStore, sample: np.ndarray, factory: str) -> None:
    """Train ``index`` on the store rows ``sample`` (sorted row numbers).

    Raises:
        ConfigError: FAISS cannot train it on that many vectors (e.g. more lists than rows).
    """
    embeddings = store.embeddings
    vectors = np.asarray(
        embeddings.oindex[sample] if hasattr(embeddings, "oindex") else embeddings[sample],
        dtype=np.float32,
    )
    try:
        index.train(vectors)
    except RuntimeError as exc:
        raise ConfigError(
            f"cannot train {factory!r} on {len(vectors):,} vectors ({str(exc).strip()[-200:]});"
            f" use fewer lists or a Flat/HNSW index for small stores"
        ) from None


def _write_index(index: Any, path: Path) -> None:
    """Write ``index`` to ``path`` atomically (temp file beside it, fsync, rename)."""
    import faiss

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    faiss.write_index(index, str(tmp))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def load_index(
    path: str | os.PathLike[str], *, store: EmbeddingStore | None = None
) -> tuple[Any, IndexInfo]:
    """Verify an index against its sidecar (sha256, store fingerprint, dim), then read it.

    Raises:
        StoreError: missing index or sidecar, corrupted file, or an index of another store.
    """
    import faiss

    path = Path(path)
    side = _sidecar(path)
    if not path.is_file():
        raise StoreError(f"index {path} does not exist; build it with lscindex index STORE")
    if not side.is_file():
        raise StoreError(f"index {path} has no sidecar {side.name}; rebuild it with lscindex index")
    meta = json.loads(side.read_text())
    if meta.get("format_version") != INDEX_FORMAT_VERSION:
        raise StoreError(f"index sidecar {side} has an unknown format_version; rebuild the index")
    digest = file_sha256(path)
    if digest != meta["sha256"]:
        raise StoreError(
            f"index {path} is corrupted (sha256 {digest[:12]}... but its sidecar says "
            f"{meta['sha256'][:12]}...); rebuild it with lscindex index {meta['store']}"
        )
    info = IndexInfo(
        path=path,
        factory=meta["factory"],
        dim=meta["dim"],
        count=meta["count"],
        store=meta["store"],
        store_fingerprint=meta["store_fingerprint"],
        sha256=digest,
    )
    if store is not None:
        if info.store_fingerprint != store.fingerprint:
            raise StoreError(
                f"index {path} was built from another store (fingerprint "
                f"{info.store_fingerprint} vs {store.fingerprint} of {store.path}); rebuild it "
                f"with lscindex index {store.path}"
            )
        if info.dim != store.header.dim:
            raise StoreError(
                f"index {path} has dim {info.dim} but store {store.path} has "
                f"{store.header.dim}; rebuild the index"
            )
    return faiss.read_index(str(path)), info
