"""Which vector of a system each class owns: the seeded codec, or a data-aware table.

A :class:`~lscindex.systems.VectorSystem` maps class ``c`` to a vector index through an
*assignment*. Two kinds:

* ``codec`` -- the seeded Feistel bijection (no table, O(1) both ways; the default of every run
  made before assignments existed, and what they keep decoding with).
* ``data`` -- a table of ``n_classes`` distinct vector indices, chosen by
  :func:`match_classes`: each class gets a free vector near where the network already puts that
  class (greedy one-to-one on the cosine between the class-mean embedding and the system's
  vectors). Random codec targets make every latent coordinate fire for an arbitrary union of
  classes; matched targets make the function the encoder has to learn smooth, which on glyphs
  is the difference between ~2% and ~20% top-1 after three epochs.

Nothing here is of size ``n_classes x n_vectors``: each class's candidates come from the analytic
nearest-vector enumeration of its mean (:meth:`VectorSystem.nearest_vectors`, O(dim) each), the
matching is greedy over ``n_classes x candidates`` pairs, and the table plus its sorted inverse
take ``3 x 8 x n_classes`` bytes (14 MB at 600k classes).

Example:
    >>> from lscindex import VectorSystem
    >>> system = VectorSystem.create("v21", 100)
    >>> means = np.random.default_rng(0).normal(size=(100, system.dim)).astype(np.float32)
    >>> table = match_classes(system, means)
    >>> data_system = system.with_assignment(table)
    >>> int(data_system.decode(data_system.targets([7]), k=1).ids[0, 0])
    7
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import numpy as np

from lscindex import _decode
from lscindex.errors import ConfigError, InputError

if TYPE_CHECKING:
    from lscindex.systems import VectorSystem

__all__ = ["TableAssignment", "greedy_match", "match_classes", "nearest_candidates"]

# Candidates enumerated per class; leftover classes go round again with this many times more.
DEFAULT_CANDIDATES = 16
_GROWTH = 8
_CHUNK_SCORES = 1 << 24
# Systems up to this many vectors list their free vectors for the leftovers (16 MB of flags);
# larger ones enumerate up to _MAX_ENUMERATED candidates per leftover class.
_MAX_FREE_SEARCH = 1 << 24
_MAX_ENUMERATED = 1024
_MAX_ENUMERATED_ALL = 4096  # the most VectorSystem.nearest_vectors gives


class TableAssignment:
    """A one-to-one table ``class -> vector index`` with an O(log n) inverse and no dense map.

    Args:
        table: (n_classes,) integers, distinct, each in ``[0, n_vectors)``.
        n_vectors: size of the system the table indexes.

    Raises:
        InputError: a table that is not 1-D, repeats a vector or leaves the system.
    """

    def __init__(self, table: Any, n_vectors: int) -> None:
        table = np.asarray(table)
        if table.ndim != 1 or table.dtype.kind not in "iu":
            raise InputError(
                f"an assignment table is a 1-D integer array, got dtype {table.dtype} shape "
                f"{table.shape}"
            )
        table = table.astype(np.int64)
        if table.size and (table.min() < 0 or table.max() >= n_vectors):
            bad = int(table.min() if table.min() < 0 else table.max())
            raise InputError(
                f"assignment table holds vector index {bad}, outside the system's "
                f"[0, {n_vectors:,}); the table belongs to another system"
            )
        self.order = np.argsort(table, kind="stable")
        self.sorted = table[self.order]
        if table.size > 1 and (np.diff(self.sorted) == 0).any():
            dup = int(self.sorted[np.flatnonzero(np.diff(self.sorted) == 0)[0]])
            raise InputError(
                f"assignment table gives vector {dup} to more than one class; a table must be "
                f"one-to-one"
            )
        self.table = table
        self.n = len(table)

    def forward(self, class_ids: np.ndarray) -> np.ndarray:
        """Vector index of each class (int64, same shape)."""
        return self.table[class_ids]

    def inverse(self, vector_ids: np.ndarray) -> np.ndarray:
        """Class owning each vector index; ``n_classes`` (an out-of-range id) where none does."""
        pos = np.searchsorted(self.sorted, vector_ids)
        pos_clipped = np.minimum(pos, max(self.n - 1, 0))
        hit = (pos < self.n) & (self.sorted[pos_clipped] == vector_ids)
        return np.where(hit, self.order[pos_clipped], self.n)

    @property
    def sha256(self) -> str:
        """16 hex digits identifying the table (little-endian int64 bytes)."""
        return hashlib.sha256(self.table.astype("<i8").tobytes()).hexdigest()[:16]


def nearest_candidates(
    system: VectorSystem, means: np.ndarray, k: int = DEFAULT_CANDIDATES
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` vectors of the whole system nearest each class mean.

    Args:
        system: the system to match into (its own assignment is ignored).
        means: (K, dim) float class means, not necessarily normalised; rows that are all zero
            (classes not seen) get no candidates.
        k: candidates per class.

    Returns:
        vector ids (K, k) int64 and cosines (K, k) float32 (``-inf`` for unseen classes).
    """
    from lscindex.systems import parse_kind

    means = np.asarray(means, dtype=np.float32)
    spec = parse_kind(system.kind)
    # nearest_vectors enumerates each sign half of a symmetric system separately
    k = min(k, system.n_vectors // 2 if spec.symmetric else system.n_vectors, _MAX_ENUMERATED_ALL)
    ids = np.zeros((len(means), k), dtype=np.int64)
    scores = np.full((len(means), k), -np.inf, dtype=np.float32)
    seen = np.flatnonzero(np.abs(means).sum(axis=1) > 0)
    # The enumeration holds (rows x patterns) scores: bound it to ~64 MB per chunk.
    cost = _decode.pattern_cost(system.dim, spec.a, spec.b, k) + k
    rows = max(1, _CHUNK_SCORES // cost)
    for start in range(0, len(seen), rows):
        part = seen[start : start + rows]
        ids[part], scores[part] = system.nearest_vectors(means[part], k=k)
    return ids, scores


def greedy_match(
    candidate_ids: np.ndarray, candidate_scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy one-to-one matching of classes to candidate vectors, best cosine first.

    Exactly the sequential greedy (take the best remaining (class, vector) pair, drop its class
    and vector, repeat; ties by class id, then vector id), computed in rounds: every pair that is
    the best remaining one for both its class and its vector is one the sequential greedy takes,
    so each round takes all of them at once.

    Args:
        candidate_ids: (K, C) int64 vector ids per class.
        candidate_scores: (K, C) float cosines; ``-inf`` marks no candidate.

    Returns:
        table (K,) int64 with -1 where every candidate of a class went to another class, and
        the (K,) float32 cosine each matched class got (``-inf`` where unmatched).
    """
    n_classes, width = candidate_ids.shape
    classes = np.repeat(np.arange(n_classes, dtype=np.int64), width)
    vids = candidate_ids.reshape(-1)
    scores = np.asarray(candidate_scores, dtype=np.float64).reshape(-1)
    keep = np.isfinite(scores)
    classes, vids, scores = classes[keep], vids[keep], scores[keep]
    # Pairs in global greedy order; a pair's position is its rank.
    order = np.lexsort((vids, classes, -scores))
    classes, scores = classes[order], scores[order]
    unique_vids, vslot = np.unique(vids[order], return_inverse=True)
    table = np.full(n_classes, -1, dtype=np.int64)
    got = np.full(n_classes, -np.inf, dtype=np.float32)
    used = np.zeros(len(unique_vids), dtype=bool)
    alive = np.arange(len(classes))
    sentinel = len(classes)
    while alive.size:
        c, v = classes[alive], vslot[alive]
        best_c = np.full(n_classes, sentinel, dtype=np.int64)
        best_v = np.full(len(unique_vids), sentinel, dtype=np.int64)
        np.minimum.at(best_c, c, alive)
        np.minimum.at(best_v, v, alive)
        win = (best_c[c] == alive) & (best_v[v] == alive)
        table[c[win]] = unique_vids[v[win]]
        got[c[win]] = scores[alive[win]]
        used[v[win]] = True
        alive = alive[(table[c] < 0) & ~used[v]]
    return table, got


def match_classes(
    system: VectorSystem,
    means: np.ndarray,
    *,
    candidates: int = DEFAULT_CANDIDATES,
) -> np.ndarray:
    """Data-aware assignment: each class to a distinct vector near its mean embedding.

    Greedy over each class's ``candidates`` nearest vectors (:func:`greedy_match`); classes whose
    candidates all went to others are matched again among the vectors still free (exact FAISS
    search over the free vectors near n_min, deeper enumeration far above it); classes never seen
    take the lowest free vector ids.

    Args:
        system: the system to match into.
        means: (n_classes, dim) float class means (sums work too: only directions matter);
            all-zero rows for classes without samples.
        candidates: nearest vectors enumerated per class in the first round.

    Returns:
        (n_classes,) int64 table of distinct vector ids, for :meth:`VectorSystem.with_assignment`.
        Deterministic: the same means give the same table.

    Raises:
        InputError: ``means`` not (n_classes, dim), or holding NaN/inf.
    """
    means = np.asarray(means, dtype=np.float32)
    if means.shape != (system.n_classes, system.dim):
        raise InputError(
            f"class means must be (n_classes, dim) = ({system.n_classes}, {system.dim}), got "
            f"shape {means.shape}"
        )
    if not np.isfinite(means).all():
        raise InputError("class means contain NaN or inf; check the model output")
    if candidates < 1:
        raise ConfigError(f"candidates must be >= 1, got {candidates}")
    ids, scores = nearest_candidates(system, means, candidates)
    table, _ = greedy_match(ids, scores)
    seen = np.abs(means).sum(axis=1) > 0
    if ((table < 0) & seen).any():
        if system.n_vectors <= _MAX_FREE_SEARCH:
            _match_leftovers_exact(system, means, table, candidates)
        else:
            _match_leftovers_enumerated(system, means, table, candidates)
    _fill_free(table, system.n_vectors)
    return table


def _match_leftovers_exact(
    system: VectorSystem, means: np.ndarray, table: np.ndarray, candidates: int
) -> None:
    """Match the still unmatched classes among the free vectors, found by exact FAISS search.

    Used where the system is small enough to list its free vectors (near n_min, where free
    vectors are few and enumeration from the means would have to walk past many taken ones).
    """
    import faiss

    free = np.ones(system.n_vectors, dtype=bool)
    free[table[table >= 0]] = False
    seen = np.abs(means).sum(axis=1) > 0
    while True:
        left = np.flatnonzero((table < 0) & seen)
        free_ids = np.flatnonzero(free)
        if left.size == 0 or free_ids.size == 0:
            return
        index = faiss.IndexFlatIP(system.dim)
        for start in range(0, len(free_ids), 1 << 16):
            block = system.vectors(free_ids[start : start + (1 << 16)]).astype(np.float32)
            index.add(block / np.linalg.norm(block, axis=1, keepdims=True))
        query = means[left] / np.linalg.norm(means[left], axis=1, keepdims=True)
        scores, slots = index.search(np.ascontiguousarray(query), min(candidates, len(free_ids)))
        sub, _ = greedy_match(free_ids[np.maximum(slots, 0)], np.where(slots < 0, -np.inf, scores))
        table[left] = sub
        free[sub[sub >= 0]] = False


def _match_leftovers_enumerated(
    system: VectorSystem, means: np.ndarray, table: np.ndarray, candidates: int
) -> None:
    """Match the still unmatched classes by enumerating more of their nearest vectors.

    For systems far above n_min, where most vectors are free and a few more candidates suffice.
    """
    seen = np.abs(means).sum(axis=1) > 0
    width = candidates
    while width < _MAX_ENUMERATED:
        left = np.flatnonzero((table < 0) & seen)
        if left.size == 0:
            return
        width = min(width * _GROWTH, _MAX_ENUMERATED)
        ids, scores = nearest_candidates(system, means[left], width)
        scores[np.isin(ids, table[table >= 0])] = -np.inf
        table[left], _ = greedy_match(ids, scores)


def _fill_free(table: np.ndarray, n_vectors: int) -> None:
    """Give each unmatched class (-1) the lowest vector id no class owns, in class order."""
    left = np.flatnonzero(table < 0)
    if left.size == 0:
        return
    taken = np.sort(table[table >= 0])
    free: list[np.ndarray] = []
    start, need = 0, left.size
    while need > 0:
        stop = min(start + 2 * need + 1024, n_vectors)
        block = np.arange(start, stop, dtype=np.int64)
        block = block[~np.isin(block, taken)][:need]
        free.append(block)
        need -= len(block)
        start = stop
    table[left] = np.concatenate(free)
