"""Search-time knobs of an lscindex index and its recall against exact search.

``nprobe`` (IVF: inverted lists visited) and ``efSearch`` (HNSW: candidate list length) are
passed per search as FAISS ``SearchParameters``, which ``IndexIDMap2`` hands to the index it
wraps: nothing shared is changed, so concurrent searches with different knobs do not interfere.

Recall@k is measured with held-out rows as queries: a seeded sample of the rows being indexed
is kept out of the index until it is measured, then added (a stored row is no fair query: an
HNSW search for a node of its graph lands on that node, among its linked neighbours, and
measured 0.974 where new queries got 0.937). For query q, let tau_q be the k-th highest exact
inner product between q and the indexed rows; a returned row counts when its exact inner
product with q is at least tau_q - 1e-5 (a row tied with the k-th counts, whichever of the tied
rows the index returned). recall@k = counted / (k * queries).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lscindex.errors import InputError
from lscindex.store import EmbeddingStore

RECALL_K = 10
TARGET_RECALL = 0.95
# The default knob must reach the target by this many standard errors of the sample's mean
# recall, so that it holds for queries beyond the sample (1,000 rows: ~0.006 at 0.95).
TARGET_MARGIN_SE = 2.0
# When no setting reaches the target: the smallest within this much of the best one tried.
RECALL_SLACK = 0.01
TIE_TOLERANCE = 1e-5
EF_SEARCH_STEPS = (16, 32, 64, 128, 256, 512)
KNOBS = ("nprobe", "ef_search")


@dataclass(frozen=True)
class RecallTrial:
    """Recall@k of an index at one setting of its knob (``nprobe`` or ``ef_search``)."""

    knob: str
    value: int
    recall: float


@dataclass(frozen=True)
class RecallReport:
    """Recall@k of an index on ``queries`` stored rows, at the setting chosen as its default.

    ``knob``/``value``: the default chosen (None for an index without a knob, e.g. Flat);
    ``trials``: every setting tried, in order.
    """

    recall: float
    k: int
    queries: int
    knob: str | None
    value: int | None
    trials: tuple[RecallTrial, ...]


def index_kind(index: Any) -> tuple[str, Any]:
    """``("ivf", IndexIVF)``, ``("hnsw", IndexHNSW)`` or ``("other", index)`` of a FAISS index,
    looking inside an ``IndexIDMap2``. The returned object is only valid while ``index`` lives."""
    import faiss

    base = faiss.downcast_index(index.index if hasattr(index, "id_map") else index)
    ivf = faiss.try_extract_index_ivf(base)
    if ivf is not None:
        return "ivf", ivf
    if isinstance(base, faiss.IndexHNSW):
        return "hnsw", base
    return "other", base


def _check_knob(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def search_parameters(
    index: Any, factory: str, *, nprobe: int | None = None, ef_search: int | None = None
) -> Any:
    """FAISS ``SearchParameters`` for one search of ``index`` (None when no knob is given).

    Args:
        index: the FAISS index (ID-mapped or not). factory: its factory string, for errors.
        nprobe: inverted lists to visit (IVF indexes). ef_search: HNSW's efSearch.

    Raises:
        InputError: a knob that is not a positive integer, or one the index does not have
            (``nprobe`` of an HNSW or Flat index, ``ef_search`` of an IVF or Flat one).
    """
    import faiss

    nprobe, ef_search = _check_knob("nprobe", nprobe), _check_knob("ef_search", ef_search)
    if nprobe is None and ef_search is None:
        return None
    kind, _ = index_kind(index)
    what = {"ivf": "an IVF index", "hnsw": "an HNSW index", "other": "an index without knobs"}
    if nprobe is not None and kind != "ivf":
        fix = "use ef_search (--ef-search)" if kind == "hnsw" else "leave it out"
        raise InputError(
            f"nprobe applies to IVF indexes, but index {factory!r} is {what[kind]}; {fix}"
        )
    if ef_search is not None and kind != "hnsw":
        fix = "use nprobe (--nprobe)" if kind == "ivf" else "leave it out"
        raise InputError(
            f"ef_search applies to HNSW indexes, but index {factory!r} is {what[kind]}; {fix}"
        )
    # built attribute by attribute: FAISS's type stubs lag its SWIG classes
    params: Any = faiss.SearchParametersIVF() if nprobe is not None else _hnsw_parameters()
    if nprobe is not None:
        params.nprobe = nprobe
    else:
        params.efSearch = ef_search
    return params


def _hnsw_parameters() -> Any:
    import faiss

    return getattr(faiss, "SearchParametersHNSW")()  # noqa: B009 (not in FAISS's type stubs)


def set_default(index: Any, knob: str | None, value: int | None) -> None:
    """Store ``value`` as the index's own ``nprobe`` / ``efSearch`` (saved in the FAISS file)."""
    kind, inner = index_kind(index)
    if knob == "nprobe" and kind == "ivf" and value is not None:
        inner.nprobe = value
    elif knob == "ef_search" and kind == "hnsw" and value is not None:
        inner.hnsw.efSearch = value


def sample_rows(rows: np.ndarray, count: int, seed: int) -> np.ndarray:
    """(min(count, len(rows) // 10),) int64, sorted: the seeded sample of ``rows`` held out as
    queries (at most a tenth of them, so that the index measured is the index built).

    A random stream of its own (``[seed, 1]``), so it does not repeat the training sample.
    """
    rng = np.random.default_rng([seed, 1])
    size = max(0, min(count, len(rows) // 10))
    return np.sort(rng.choice(np.asarray(rows, dtype=np.int64), size=size, replace=False))


def exact_kth_scores(
    store: EmbeddingStore, indexed: np.ndarray, queries: np.ndarray, k: int
) -> np.ndarray:
    """(Q,) float32: the k-th highest inner product of each query with the ``indexed`` rows.

    Args:
        store: the store, read once chunk by chunk. indexed: (count,) bool, the rows to search.
        queries: (Q, dim) float32. k: 1 <= k <= indexed.sum().
    """
    import faiss

    best = np.full((len(queries), k), -np.inf, dtype=np.float32)
    for start, block in store.iter_chunks():
        block = np.ascontiguousarray(block[indexed[start : start + len(block)]])
        if len(block) == 0:
            continue
        # FAISS's exact k-NN works in bounded tiles: memory stays at a few (Q, k) arrays
        scores = faiss.knn(queries, block, k, metric=faiss.METRIC_INNER_PRODUCT)[0]
        merged = np.concatenate([best, scores], axis=1)
        best = -np.partition(-merged, k - 1, axis=1)[:, :k]
    return best.min(axis=1)


def recall_of(
    found: np.ndarray, store: EmbeddingStore, queries: np.ndarray, kth: np.ndarray
) -> np.ndarray:
    """(Q,) float64: recall@k of each query's answer ``found`` ((Q, k) int64 ids, -1 for none)
    given the exact k-th scores ``kth`` ((Q,) float32) of ``queries`` ((Q, dim) float32): see
    the module docstring."""
    valid = found >= 0
    if not valid.any():
        return np.zeros(len(found))
    ids = np.unique(found[valid])
    vectors = np.asarray(store.embeddings[ids], dtype=np.float32)
    at = np.searchsorted(ids, np.where(valid, found, ids[0]))
    scores = np.einsum("qd,qkd->qk", queries, vectors[at])
    hits = valid & (scores >= kth[:, None] - TIE_TOLERANCE)
    return np.asarray(hits.mean(axis=1), dtype=np.float64)


def reaches(recalls: np.ndarray, target: float) -> bool:
    """Whether per-query recalls ((Q,) float) reach ``target`` by 2 standard errors of the mean."""
    if len(recalls) < 2:  # no spread to estimate from one query
        return float(recalls.mean()) >= target
    margin = TARGET_MARGIN_SE * float(recalls.std(ddof=1)) / np.sqrt(len(recalls))
    return float(recalls.mean()) - margin >= target


def _settings(index: Any) -> tuple[str | None, list[int]]:
    """(knob, values to try in order) of an index: nprobe 1, 2, 4, ... nlist; efSearch 16..512."""
    kind, inner = index_kind(index)
    if kind == "ivf":
        nlist = int(inner.nlist)
        steps = [1 << i for i in range(nlist.bit_length()) if 1 << i < nlist]
        return "nprobe", [*steps, nlist]
    if kind == "hnsw":
        return "ef_search", list(EF_SEARCH_STEPS)
    return None, []


def tune_search(
    index: Any,
    store: EmbeddingStore,
    indexed: np.ndarray,
    queries: np.ndarray,
    *,
    factory: str,
    k: int = RECALL_K,
    target: float = TARGET_RECALL,
) -> RecallReport | None:
    """Recall@k of ``index`` for held-out ``queries`` and the smallest knob setting reaching
    ``target``.

    Tries nprobe 1, 2, 4, ... (IVF) or efSearch 16 ... 512 (HNSW) in turn and stops at the first
    whose mean recall minus two standard errors is >= ``target`` (:func:`reaches`: the sample
    is 1,000 rows, the default is for every query); if none does, the smallest within 0.01 of
    the best tried. An index without a knob (Flat) is measured once. The index is not changed.

    Args:
        index: the FAISS index, holding exactly the ``indexed`` rows ((count,) bool).
        queries: (Q, dim) float32, embeddings the index does not hold (Q >= 1).

    Returns:
        :class:`RecallReport`, or None when the index is empty.
    """
    k = min(k, int(np.count_nonzero(indexed)))
    if k == 0 or len(queries) == 0:
        return None
    kth = exact_kth_scores(store, indexed, queries, k)
    knob, values = _settings(index)
    trials: list[RecallTrial] = []
    for value in values or [0]:
        params = search_parameters(index, factory, **{knob: value}) if knob else None
        recalls = recall_of(index.search(queries, k, params=params)[1], store, queries, kth)
        # 6 decimals: exact enough for 1e6 queries, and a sidecar free of float noise
        trials.append(RecallTrial(knob or "", value, round(float(recalls.mean()), 6)))
        if reaches(recalls, target):
            break
    chosen = trials[-1]
    if not reaches(recalls, target):
        best = max(t.recall for t in trials)
        chosen = next(t for t in trials if t.recall >= best - RECALL_SLACK)
    return RecallReport(
        recall=chosen.recall,
        k=k,
        queries=len(queries),
        knob=knob,
        value=chosen.value if knob else None,
        trials=tuple(trials) if knob else (),
    )
