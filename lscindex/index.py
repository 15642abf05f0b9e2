"""FAISS indexes over an embedding store, with a JSON sidecar checked before the index is read.

``emb.zarr`` -> ``emb.faiss`` (the index, FAISS's own format) + ``emb.faiss.json``::

    {"format_version": 1, "factory": "HNSW32", "metric": "inner_product", "dim": 18,
     "count": 27782, "store": "emb.zarr", "store_fingerprint": "...", "sha256": "...",
     "recall": 0.991, "recall_k": 10, "recall_queries": 1000, "default_ef_search": 32,
     "tuning": [...], "auto": {...}}

The keys after ``sha256`` are optional (sidecars written before them still load): see
docs/store-format.md. Index ids are store row numbers (rows whose image failed are left out).
Embeddings are unit vectors, so inner product is cosine similarity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from lscindex._index_search import (
    TARGET_RECALL,
    RecallReport,
    sample_rows,
    set_default,
    tune_search,
)
from lscindex._index_sidecar import IndexInfo, read_faiss_index, read_sidecar, sidecar_path
from lscindex._index_update import advice, cannot_add, check_lineage, check_rows
from lscindex._location import (
    Location,
    PathOrUrl,
    as_location,
    location_sha256,
    publish_with,
    write_json,
)
from lscindex._store_reading import ok_rows, row_coverage_problem
from lscindex.errors import ConfigError, StoreError
from lscindex.index_factory import FactoryChoice, check_factory, choose_factory
from lscindex.store import EmbeddingStore, open_store

__all__ = [
    "TARGET_RECALL",
    "IndexInfo",
    "IndexProgress",
    "IndexUpdate",
    "build_index",
    "default_index_path",
    "load_index",
    "update_index",
]

# progress(stage, done, total): stage "train" (0 of the sampled rows before FAISS trains on them,
# all of them after) or "add" (rows added so far, of the rows to index).
IndexProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class IndexUpdate:
    """What :func:`update_index` did.

    Attributes:
        info: the refreshed sidecar. added_rows: rows added to the index (all of them when
            rebuilt). rebuilt: the index could not take the rows and was built anew; ``reason``
            says why. advice: for an ``auto`` index, a note when auto would now choose another
            factory for the grown store ("" otherwise).
    """

    info: IndexInfo
    added_rows: int
    rebuilt: bool
    reason: str = ""
    advice: str = ""


def default_index_path(store: PathOrUrl) -> Location:
    """``emb.zarr`` or ``emb.parquet`` -> ``emb.faiss`` beside it (a URL stays a URL)."""
    store = as_location(store, "store")
    return store.with_name(store.stem + ".faiss")


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

    Chunks without a ``good`` row are not read. ``progress("add", rows_added, rows_to_add)`` is
    called before the first chunk and after each chunk read.

    Raises:
        StoreError: a ``good`` row holds NaN or inf (a damaged chunk); the count is of the
            whole store, and ``index`` is then incomplete: discard it.
    """
    broken: list[np.ndarray] = []
    added, to_add = 0, int(np.count_nonzero(good))
    if progress is not None:
        progress("add", 0, to_add)
    step = store.header.chunk_rows
    for start in range(0, store.header.count, step):
        keep = good[start : start + step]
        if not keep.any():  # e.g. the rows an update already holds: not read at all
            continue
        block = np.asarray(store.embeddings[start : start + step], dtype=np.float32)
        bad = keep & ~np.isfinite(block).all(axis=1)
        if bad.any() or broken:
            broken.append(np.flatnonzero(bad) + start)
            continue  # only counting from here on: the index will not be used
        ids = np.arange(start, start + len(block), dtype=np.int64)[keep]
        index.add_with_ids(np.ascontiguousarray(block[keep]), ids)
        added += len(ids)
        if progress is not None:
            progress("add", added, to_add)
    if broken:
        raise _nonfinite_error(store, np.concatenate(broken))


def build_index(
    store: PathOrUrl | EmbeddingStore,
    *,
    factory: str = "Flat",
    out: PathOrUrl | None = None,
    max_memory_bytes: int | None = None,
    train_size: int = 100_000,
    recall_queries: int = 1000,
    seed: int = 0,
    progress: IndexProgress | None = None,
) -> IndexInfo:
    """Build a FAISS index (any ``index_factory`` string, or ``"auto"``) over a finished store.

    Measures recall@10 against exact search with held-out rows as queries (a seeded sample,
    added to the index once measured) and, for IVF / HNSW indexes, sets the smallest nprobe /
    efSearch reaching 0.95 as the index's default (saved in the FAISS file and the sidecar).

    Args:
        store: store path or an opened store.
        factory: e.g. ``"Flat"`` (exact), ``"HNSW32"``, ``"IVF1024,SQ8"``, ``"IVF4096,PQ16"``,
            or ``"auto"``: chosen from the row count, dim and ``max_memory_bytes`` by
            :func:`lscindex.index_factory.choose_factory` (recorded in the sidecar).
        out: index path; default :func:`default_index_path`.
        max_memory_bytes: memory budget of the built index, for ``factory="auto"`` only
            (None: no budget).
        train_size: rows sampled (seeded) to train indexes that need training (IVF, PQ, SQ);
            ``auto`` raises it to 39 rows per IVF list.
        recall_queries: rows to hold out as recall@10 queries (at most a tenth of the rows);
            0 skips the measurement and the tuning.
        progress: called as ``progress(stage, done, total)``: ``("train", 0, n)`` and
            ``("train", n, n)`` around training on ``n`` sampled rows (indexes that need it),
            then ``("add", rows_added, rows_to_add)`` before the first chunk and after each
            (the rows held out for recall come last, after the measurement). It only reports:
            the index is the same with or without it.

    Returns:
        :class:`IndexInfo`; the index and its sidecar are written atomically.

    Raises:
        ConfigError: a factory string FAISS rejects, a budget without ``auto``, or a budget no
            index fits. StoreError: unfinished, damaged or empty store, or embedded rows
            holding NaN/inf (counted; failed images are left out).

    Example:
        >>> build_index("emb.zarr", factory="auto", max_memory_bytes=2 * 2**30)  # doctest: +SKIP
    """
    if factory != "auto" and max_memory_bytes is not None:
        raise ConfigError(
            f"max_memory_bytes applies to factory='auto', not to {factory!r}; drop it or use "
            f"--factory auto"
        )
    path = as_location(out, "index") if out is not None else None
    opened = store if isinstance(store, EmbeddingStore) else open_store(store)
    path = path if path is not None else default_index_path(opened.path)
    good = readable_rows(opened)
    rows = np.flatnonzero(good)
    if len(rows) == 0:
        raise StoreError(f"store {opened.path} has no successfully embedded rows to index")
    choice = None
    if factory == "auto":
        choice = choose_factory(
            len(rows), opened.header.dim, max_memory_bytes=max_memory_bytes, train_size=train_size
        )
        factory, train_size = choice.factory, max(1, choice.train_rows)
    index = _create_index(factory, opened.header.dim)
    if not index.is_trained:
        sample = np.sort(np.random.default_rng(seed).permutation(rows)[:train_size])
        if progress is not None:
            progress("train", 0, len(sample))
        _train_index(index, opened, sample, factory)
        if progress is not None:
            progress("train", len(sample), len(sample))
    report = _add_measured(
        index, opened, good, factory=factory, queries=recall_queries, seed=seed, progress=progress
    )
    return _save(index, path, opened, factory=factory, auto=choice, report=report)


def _add_measured(
    index: Any,
    store: EmbeddingStore,
    add: np.ndarray,
    *,
    factory: str,
    queries: int,
    seed: int,
    progress: IndexProgress | None,
) -> RecallReport | None:
    """Add the ``add`` rows ((count,) bool) to ``index``, holding a seeded sample of them out
    until the index's recall for them as queries is measured and its default knob tuned.

    Returns:
        The :class:`RecallReport` (None when nothing was sampled: ``queries`` 0, < 10 rows).
    """
    import faiss

    sample = sample_rows(np.flatnonzero(add), queries, seed)
    held = np.zeros_like(add)
    held[sample] = True
    total = int(np.count_nonzero(add))

    def report_add(stage: str, done: int, _: int) -> None:  # totals count the held-out rows
        if progress is not None:
            progress(stage, done, total)

    add_store_rows(index, store, add & ~held, progress=report_add)
    if len(sample) == 0:
        return None
    vectors = np.ascontiguousarray(store.embeddings[sample], dtype=np.float32)
    if not np.isfinite(vectors).all():  # counted over the whole store, as add_store_rows does
        raise _nonfinite_error(store, nonfinite_rows(store, readable_rows(store)))
    indexed = np.zeros_like(add)
    indexed[faiss.vector_to_array(index.id_map)] = True
    report = tune_search(index, store, indexed, vectors, factory=factory)
    index.add_with_ids(vectors, sample)
    report_add("add", total, total)
    if report is not None:
        set_default(index, report.knob, report.value)
    return report


def _save(
    index: Any,
    path: Location,
    store: EmbeddingStore,
    *,
    factory: str,
    auto: FactoryChoice | None,
    report: RecallReport | None,
    keep: IndexInfo | None = None,
) -> IndexInfo:
    """Write the index and then its sidecar; without a ``report``, the recall and default knob
    of ``keep`` (the sidecar being refreshed) stay: they are of its last measurement."""
    measured: dict[str, Any] = {}
    if report is not None:
        knob = {"nprobe": "default_nprobe", "ef_search": "default_ef_search"}
        measured = {"recall": report.recall, "recall_k": report.k, "tuning": report.trials}
        measured["recall_queries"] = report.queries
        if report.knob is not None:
            measured[knob[report.knob]] = report.value
    elif keep is not None:
        names = ("recall", "recall_k", "recall_queries", "default_nprobe", "default_ef_search")
        measured = {name: getattr(keep, name) for name in (*names, "tuning")}
    _write_index(index, path)
    info = IndexInfo(
        path=path,
        factory=factory,
        dim=store.header.dim,
        count=int(index.ntotal),
        store=str(store.path),
        store_fingerprint=store.fingerprint,
        sha256=location_sha256(path),
        auto=auto,
        **measured,
    )
    write_json(sidecar_path(path), info.to_json())
    return info


def _create_index(factory: str, dim: int) -> Any:
    """An empty ID-mapped inner-product index of ``factory``.

    Raises:
        ConfigError: a factory string FAISS rejects.
    """
    import faiss

    check_factory(factory)
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


def _write_index(index: Any, path: Location) -> None:
    """Write ``index`` to ``path`` atomically (a local temp file beside it, fsync, rename; a
    remote index is uploaded whole)."""
    import faiss

    publish_with(path, lambda tmp: faiss.write_index(index, str(tmp)))


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
    ids = faiss.vector_to_array(index.id_map).astype(np.int64, copy=False)
    if len(ids) != info.count:
        problems.append(f"maps {len(ids):,} ids for {info.count:,} vectors")
        return problems
    ordered = np.sort(ids)  # one copy (np.unique makes three: this runs on every load)
    repeated = int(np.count_nonzero(ordered[1:] == ordered[:-1]))
    del ordered
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


def load_index(path: PathOrUrl, *, store: EmbeddingStore | None = None) -> tuple[Any, IndexInfo]:
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
    path = as_location(path, "index")
    info = read_sidecar(path)
    digest = location_sha256(path)
    if digest != info.sha256:
        raise StoreError(
            f"index {path} is corrupted (sha256 {digest[:12]}... but its sidecar says "
            f"{info.sha256[:12]}...); rebuild it with lscindex index {info.store}"
        )
    if store is not None:
        if info.store_fingerprint in [v.get("store_id") for v in store.header.history]:
            raise StoreError(
                f"index {path} is of an earlier version of store {store.path}, which has "
                f"grown since; bring it up to date with lscindex index {store.path} --update"
            )
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


def update_index(
    path: PathOrUrl,
    store: PathOrUrl | EmbeddingStore,
    *,
    check: Literal["lineage", "rows"] = "lineage",
    recall_queries: int = 1000,
    seed: int = 0,
    progress: IndexProgress | None = None,
) -> IndexUpdate:
    """Add to an index the rows its store gained since it was built, and refresh its sidecar.

    Rows whose number the index does not hold yet are added (Flat, HNSW and trained IVF/PQ/SQ
    indexes all can); an index that cannot take them (another dim, untrained) is rebuilt.
    Recall and the default knob are measured again; the sidecar gets the new count, store
    fingerprint and sha256 (its ``auto`` record stays the one of the first build).

    Args:
        path: the index. store: the grown store (path or opened).
        check: how the index's rows are known to be the store's rows, unchanged:
            ``"lineage"`` (what ``lscindex index --update`` does): the index is of this store
            or of an earlier version of it, named in the store's ``history`` (``embed
            --append`` keeps every row below each recorded count unchanged). ``"rows"``: the
            index may be of another store (e.g. a superset embedded anew); every indexed row's
            embedding, id and path are compared with that store (the one the sidecar names).
        recall_queries, seed, progress: as for :func:`build_index`.

    Returns:
        :class:`IndexUpdate`; the index and its sidecar are written atomically.

    Raises:
        StoreError: an index of another store (or whose rows differ, with ``"rows"``), a store
            that no longer holds the indexed rows, a damaged index or store.

    Example:
        >>> update_index("emb.faiss", "emb.zarr").added_rows  # doctest: +SKIP
    """
    import faiss

    opened = store if isinstance(store, EmbeddingStore) else open_store(store)
    path = as_location(path, "index")
    index, info = load_index(path)
    _check_same_rows(path, info, index, opened, check)
    reason = cannot_add(index, opened)
    if reason:  # built anew with its factory; auto chooses again, with the recorded budget
        rebuilt = build_index(
            opened,
            factory="auto" if info.auto is not None else info.factory,
            out=path,
            max_memory_bytes=info.auto.max_memory_bytes if info.auto is not None else None,
            recall_queries=recall_queries,
            seed=seed,
            progress=progress,
        )
        return IndexUpdate(rebuilt, added_rows=rebuilt.count, rebuilt=True, reason=reason)
    new = readable_rows(opened)
    new[faiss.vector_to_array(index.id_map).astype(np.int64)] = False
    report = _add_measured(
        index,
        opened,
        new,
        factory=info.factory,
        queries=recall_queries,
        seed=seed,
        progress=progress,
    )
    fresh = _save(
        index, path, opened, factory=info.factory, auto=info.auto, report=report, keep=info
    )
    return IndexUpdate(
        fresh, added_rows=int(np.count_nonzero(new)), rebuilt=False, advice=advice(fresh)
    )


def _check_same_rows(
    path: Location, info: IndexInfo, index: Any, store: EmbeddingStore, check: str
) -> None:
    """Refuse an index whose rows are not known to be ``store``'s (see :func:`update_index`)."""
    if check == "lineage":
        check_lineage(path, info, store)
    elif check == "rows":
        check_rows(path, info, index, store)
    else:
        raise ConfigError(f"check must be 'lineage' or 'rows', got {check!r}")
    problems = index_problems(index, info, store)
    if problems:
        raise StoreError(
            f"index {path} {problems[0]}: the store no longer holds the rows it indexed; build "
            f"a new index with lscindex index {store.path}"
        )
