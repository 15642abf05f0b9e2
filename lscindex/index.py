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
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lscindex._io import atomic_write_json, atomic_write_with, file_sha256
from lscindex._store_reading import ok_rows, row_coverage_problem
from lscindex.errors import ConfigError, StoreError
from lscindex.store import EmbeddingStore, open_store

__all__ = ["IndexInfo", "IndexProgress", "build_index", "default_index_path", "load_index"]

# progress(stage, done, total): stage "train" (0 of the sampled rows before FAISS trains on them,
# all of them after) or "add" (rows added so far, of the rows to index).
IndexProgress = Callable[[str, int, int], None]

INDEX_FORMAT_VERSION = 1
MAX_DIM = 1 << 20
# sidecar key -> its JSON type (bool is refused where int is asked)
_SIDECAR_TYPES: dict[str, type] = {
    "format_version": int,
    "factory": str,
    "metric": str,
    "dim": int,
    "count": int,
    "store": str,
    "store_fingerprint": str,
    "sha256": str,
}


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
    """(count,) bool: rows whose image was embedded (``status == "ok"``), by store row.

    Raises:
        StoreError: the metadata does not cover every row exactly once.
    """
    problem = row_coverage_problem(store.metadata.column("row").to_numpy(), store.header.count)
    if problem:
        raise StoreError(
            f"store {store.path}: {problem}; it is damaged: run lscindex verify {store.path}, "
            f"then embed again with --overwrite"
        )
    return ok_rows(store.metadata, store.header.count)


def _nonfinite_error(store: EmbeddingStore, rows: np.ndarray) -> StoreError:
    """The error for embedded rows ``rows`` ((K,) int, K >= 1) that hold NaN or inf."""
    first = ", ".join(str(int(r)) for r in rows[:3])
    return StoreError(
        f"store {store.path} has {len(rows):,} embedded rows holding NaN or inf (first: row "
        f"{first}); its embeddings are damaged: run lscindex verify {store.path}, then embed "
        f"again with --overwrite"
    )


def nonfinite_rows(store: EmbeddingStore, good: np.ndarray) -> np.ndarray:
    """(K,) int64: the ``good`` rows ((count,) bool) whose embedding holds NaN or inf.

    Reads the whole store, chunk by chunk.
    """
    found = []
    for start, block in store.iter_chunks():
        bad = good[start : start + len(block)] & ~np.isfinite(block).all(axis=1)
        found.append(np.flatnonzero(bad) + start)
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


def add_store_rows(
    index: Any, store: EmbeddingStore, good: np.ndarray, *, progress: IndexProgress | None = None
) -> None:
    """Add the ``good`` rows of a store to an ID-mapped FAISS index, chunk by chunk (ids = rows).

    ``progress("add", rows_added, rows_to_add)`` is called before the first chunk and after each.

    Raises:
        StoreError: a ``good`` row holds NaN or inf (a damaged chunk); the count is of the
            whole store, and ``index`` is then incomplete: discard it.
    """
    broken: list[np.ndarray] = []
    added, to_add = 0, int(np.count_nonzero(good))
    if progress is not None:
        progress("add", 0, to_add)
    for start, block in store.iter_chunks():
        keep = good[start : start + len(block)]
        bad = keep & ~np.isfinite(block).all(axis=1)
        if bad.any() or broken:
            broken.append(np.flatnonzero(bad) + start)
            continue  # only counting from here on: the index will not be used
        if keep.any():
            ids = np.arange(start, start + len(block), dtype=np.int64)[keep]
            index.add_with_ids(np.ascontiguousarray(block[keep]), ids)
            added += len(ids)
        if progress is not None:
            progress("add", added, to_add)
    if broken:
        raise _nonfinite_error(store, np.concatenate(broken))


def build_index(
    store: str | os.PathLike[str] | EmbeddingStore,
    *,
    factory: str = "Flat",
    out: str | os.PathLike[str] | None = None,
    train_size: int = 100_000,
    seed: int = 0,
    progress: IndexProgress | None = None,
) -> IndexInfo:
    """Build a FAISS index (any ``index_factory`` string) over a finished store.

    Args:
        store: store path or an opened store.
        factory: e.g. ``"Flat"`` (exact), ``"HNSW32"``, ``"IVF1024,SQ8"``, ``"IVF4096,PQ16"``.
        out: index path; default :func:`default_index_path`.
        train_size: rows sampled (seeded) to train indexes that need training (IVF, PQ, SQ).
        progress: called as ``progress(stage, done, total)``: ``("train", 0, n)`` and
            ``("train", n, n)`` around training on ``n`` sampled rows (indexes that need it),
            then ``("add", rows_added, rows_to_add)`` before the first chunk and after each.
            It only reports: the index is the same with or without it.

    Returns:
        :class:`IndexInfo`; the index and its sidecar are written atomically.

    Raises:
        ConfigError: a factory string FAISS rejects. StoreError: unfinished, damaged or empty
            store, or embedded rows holding NaN/inf (counted; failed images are left out).

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
        if progress is not None:
            progress("train", 0, len(sample))
        _train_index(index, opened, sample, factory)
        if progress is not None:
            progress("train", len(sample), len(sample))
    add_store_rows(index, opened, good, progress=progress)
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
    if not np.isfinite(vectors).all():  # count them all before FAISS trains on NaN
        raise _nonfinite_error(store, nonfinite_rows(store, readable_rows(store)))
    try:
        index.train(vectors)
    except RuntimeError as exc:
        raise ConfigError(
            f"cannot train {factory!r} on {len(vectors):,} vectors ({str(exc).strip()[-200:]});"
            f" use fewer lists or a Flat/HNSW index for small stores"
        ) from None


def _write_index(index: Any, path: Path) -> None:
    """Write ``index`` to ``path`` atomically (unique temp file beside it, fsync, rename)."""
    import faiss

    atomic_write_with(path, lambda tmp: faiss.write_index(index, str(tmp)))


def read_sidecar(path: str | os.PathLike[str]) -> IndexInfo:
    """The sidecar of index ``path``, every key's type and range checked (the index is not read).

    ``sha256`` is what the sidecar records, not yet compared with the file.

    Raises:
        StoreError: no index or sidecar, a sidecar that is not JSON, of another format version,
            or with a missing, mistyped or out-of-range key.
    """
    path = Path(path)
    side = _sidecar(path)
    if not path.is_file():
        raise StoreError(f"index {path} does not exist; build it with lscindex index STORE")
    if not side.is_file():
        raise StoreError(f"index {path} has no sidecar {side.name}; rebuild it with lscindex index")
    try:
        meta = json.loads(side.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoreError(
            f"index sidecar {side} is not valid JSON ({str(exc).splitlines()[0][:120]}); rebuild "
            f"the index with lscindex index STORE"
        ) from None
    if not isinstance(meta, dict):
        raise StoreError(
            f"index sidecar {side} holds a {type(meta).__name__}, expected an object; rebuild "
            f"the index with lscindex index STORE"
        )
    store = meta.get("store") if isinstance(meta.get("store"), str) else "STORE"
    rebuild = f"rebuild the index with lscindex index {store}"
    version = meta.get("format_version")
    if version != INDEX_FORMAT_VERSION or isinstance(version, bool):
        raise StoreError(
            f"index sidecar {side} has format_version {version!r}, this lscindex reads "
            f"{INDEX_FORMAT_VERSION}; {rebuild}"
        )
    missing = [key for key in _SIDECAR_TYPES if key not in meta]
    if missing:
        raise StoreError(f"index sidecar {side} lacks {', '.join(map(repr, missing))}; {rebuild}")
    for key, kind in _SIDECAR_TYPES.items():
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            raise StoreError(
                f"index sidecar {side} has {key} {meta[key]!r}, expected {kind.__name__}; {rebuild}"
            )
    problem = None
    if meta["metric"] != "inner_product":
        problem = f"metric {meta['metric']!r}, expected 'inner_product'"
    elif not 1 <= meta["dim"] <= MAX_DIM:
        problem = f"dim {meta['dim']!r}, expected 1..{MAX_DIM}"
    elif meta["count"] < 0:
        problem = f"count {meta['count']!r}, expected >= 0"
    elif not re.fullmatch(r"[0-9a-f]{64}", meta["sha256"]):
        problem = f"sha256 {meta['sha256']!r}, expected 64 hex digits"
    if problem:
        raise StoreError(f"index sidecar {side} has {problem}; {rebuild}")
    return IndexInfo(
        path=path,
        factory=meta["factory"],
        dim=meta["dim"],
        count=meta["count"],
        store=meta["store"],
        store_fingerprint=meta["store_fingerprint"],
        sha256=meta["sha256"],
    )


def read_faiss_index(path: Path, info: IndexInfo) -> Any:
    """``faiss.read_index``, its errors on a crafted or damaged file as one-line StoreErrors."""
    import faiss

    try:
        return faiss.read_index(str(path))
    except (RuntimeError, MemoryError) as exc:
        # FAISS prefixes its reason with the C++ function and source line: keep the reason.
        reason = re.sub(r"^Error in .*? at \S+:\d+: ", "", str(exc).strip().splitlines()[-1])
        raise StoreError(
            f"index {path} cannot be read by FAISS ({reason[:160]}); rebuild it with lscindex "
            f"index {info.store}"
        ) from None


def index_problems(index: Any, info: IndexInfo, store: EmbeddingStore | None) -> list[str]:
    """What disagrees between a read index, its sidecar and (when given) its store.

    Checks ``ntotal`` and ``d`` against the sidecar, that the index maps ids (lscindex indexes
    are ``IndexIDMap2`` over store rows) and that its ids are distinct and, with a store, rows
    the store embedded. Costs one pass over the (ntotal,) int64 id map.
    """
    import faiss

    problems = []
    if int(index.ntotal) != info.count or int(index.d) != info.dim:
        problems.append(
            f"holds {int(index.ntotal):,} vectors of dim {int(index.d)} but its sidecar says "
            f"{info.count:,} of dim {info.dim}"
        )
        return problems
    if not hasattr(index, "id_map"):
        problems.append(
            f"is a {type(index).__name__}, not an ID-mapped index whose ids are store rows"
        )
        return problems
    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    if len(ids) != info.count:
        problems.append(f"maps {len(ids):,} ids for {info.count:,} vectors")
        return problems
    repeated = len(ids) - len(np.unique(ids))
    if repeated:
        problems.append(f"repeats {repeated:,} ids")
    if store is None:
        outside = ids[ids < 0]
        where = "negative ids"
    else:
        count = store.header.count
        outside = ids[(ids < 0) | (ids >= count)]
        where = f"ids outside 0..{count - 1}, the rows of store {store.path}"
    if len(outside):
        problems.append(f"has {len(outside):,} {where} (first: {int(outside[0])})")
    elif store is not None:
        failed = ids[~readable_rows(store)[ids]]
        if len(failed):
            problems.append(
                f"has {len(failed):,} ids of rows store {store.path} did not embed (first: "
                f"{int(failed[0])})"
            )
    return problems


def load_index(
    path: str | os.PathLike[str], *, store: EmbeddingStore | None = None
) -> tuple[Any, IndexInfo]:
    """Verify an index against its sidecar and store, then read it.

    Before reading: the sidecar's keys and types, the file's sha256, and (with ``store``) the
    store fingerprint and dim. After: the index's size and dim against the sidecar, and its ids
    being distinct rows the store embedded.

    Returns:
        (FAISS index, :class:`IndexInfo`).

    Raises:
        StoreError: missing index or sidecar, a damaged sidecar, a corrupted or unreadable file,
            an index of another store, or ids that are not the store's rows (one line each).

    Example:
        >>> index, info = load_index("emb.faiss", store=open_store("emb.zarr"))  # doctest: +SKIP
    """
    path = Path(path)
    info = read_sidecar(path)
    digest = file_sha256(path)
    if digest != info.sha256:
        raise StoreError(
            f"index {path} is corrupted (sha256 {digest[:12]}... but its sidecar says "
            f"{info.sha256[:12]}...); rebuild it with lscindex index {info.store}"
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
    index = read_faiss_index(path, info)
    problems = index_problems(index, info, store)
    if problems:
        raise StoreError(
            f"index {path} {problems[0]}; it does not match its sidecar or store: rebuild it "
            f"with lscindex index {store.path if store is not None else info.store}"
        )
    return index, info
