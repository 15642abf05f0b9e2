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
take ``16 x n_classes`` bytes (9.6 MB at 600k classes).

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
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from lscindex import _decode
from lscindex.errors import ConfigError, InputError
from lscindex.kinds import parse_kind

if TYPE_CHECKING:
    from lscindex.systems import VectorSystem

__all__ = [
    "MeanSource",
    "TableAssignment",
    "array_source",
    "greedy_match",
    "match_classes",
    "nearest_candidates",
    "table_sha256",
]

# Candidates enumerated per class in the first round.
DEFAULT_CANDIDATES = 8
# Leftover classes look at this many times more candidates in each later round.
_GROWTH = 8
# Scores per enumeration/search chunk; the enumeration keeps a few arrays of this many entries
# (ids, positions, sort buffers): about 10 MB in all.
_CHUNK_SCORES = 1 << 18
# Cosines per block of the exact search among free vectors (8 MB of float32).
_CHUNK_SIMS = 1 << 21
_SORT_ROWS = 1 << 14  # rows of candidates the greedy matching sorts at a time
_ROUND_PROPOSALS = 1 << 16  # proposals the greedy matching settles at a time
_COSINE_ROWS = 1 << 13  # rows per block when scoring the current vectors
# Leftovers are searched among the listed free vectors when these take at most this many bytes
# (near n_min); otherwise each enumerates up to _MAX_ENUMERATED of its nearest vectors.
_MAX_FREE_BYTES = 64 << 20
# Leftovers are matched again only while their candidates take at most this many bytes (and
# only while a round still matches a share of them). Past that, the means barely differ, as an
# untrained network's do at 10^5-10^6 classes (all its class means within a few degrees, so
# every class wants the same few vectors): nearer vectors cannot be told apart, and the
# leftovers take the lowest free vectors without a second pass over their images.
_MAX_LEFTOVER_BYTES = 256 << 20
_MIN_ROUND_SHARE = 0.01
_MAX_ENUMERATED = 1024
_MAX_ENUMERATED_ALL = 4096  # the most VectorSystem.nearest_vectors gives
_FIT_ROWS = 1 << 16  # rows of a class geometry rotated or compared at a time (28 MB at 108 dims)


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
        # The inverse in the narrowest integers that hold it: 600k classes take 4.8 MB of
        # table and 4.8 MB of inverse, not 14 MB.
        narrow = np.int32 if max(len(table), n_vectors) < 2**31 else np.int64
        self.order = np.argsort(table, kind="stable").astype(narrow)
        self.sorted = table[self.order].astype(narrow)
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
        vector_ids = np.asarray(vector_ids, dtype=np.int64)
        inside = (vector_ids >= 0) & (vector_ids <= np.iinfo(self.sorted.dtype).max)
        query = np.where(inside, vector_ids, 0).astype(self.sorted.dtype)
        pos = np.searchsorted(self.sorted, query)
        pos_clipped = np.minimum(pos, max(self.n - 1, 0))
        hit = inside & (pos < self.n) & (self.sorted[pos_clipped] == query)
        return np.where(hit, self.order[pos_clipped], self.n).astype(np.int64)

    @property
    def sha256(self) -> str:
        """16 hex digits identifying the table (see :func:`table_sha256`)."""
        return table_sha256(self.table)


def table_sha256(table: np.ndarray) -> str:
    """16 hex digits of sha256 over a table's little-endian int64 bytes."""
    return hashlib.sha256(np.asarray(table).astype("<i8").tobytes()).hexdigest()[:16]


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
    means = np.asarray(means, dtype=np.float32)
    spec = parse_kind(system.kind)
    # nearest_vectors enumerates each sign half of a symmetric system separately
    k = min(k, system.n_vectors // 2 if spec.symmetric else system.n_vectors, _MAX_ENUMERATED_ALL)
    ids = np.zeros((len(means), k), dtype=np.int64)
    scores = np.full((len(means), k), -np.inf, dtype=np.float32)
    seen = np.flatnonzero(np.abs(means).sum(axis=1) > 0)
    # The enumeration holds (rows x patterns) scores: bound them per chunk.
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

    The result is the sequential greedy's (take the best remaining (class, vector) pair, drop
    its class and vector, repeat; ties by class id, then vector id). It is computed as deferred
    acceptance -- each unmatched class proposes its next candidate, each vector keeps its best
    proposer so far -- whose result under one strict order of all pairs is the unique stable
    matching, which is the greedy one. Memory stays O(K x C) with small constants: nothing
    ``n_classes x n_vectors`` and no global sort of all pairs.

    Args:
        candidate_ids: (K, C) integer vector ids per class.
        candidate_scores: (K, C) float cosines; ``-inf`` marks no candidate.

    Returns:
        table (K,) int64 with -1 where every candidate of a class went to another class, and
        the (K,) float32 cosine each matched class got (``-inf`` where unmatched).
    """
    ids = np.array(candidate_ids, dtype=np.int64 if _wide(candidate_ids) else np.int32)
    scores = np.array(candidate_scores, dtype=np.float32)
    return _greedy_match_owned(ids, scores)


def _wide(ids: np.ndarray) -> bool:
    return bool(np.asarray(ids).size) and int(np.asarray(ids).max()) >= 2**31


def _greedy_match_owned(ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`greedy_match` on arrays it may reorder in place (the caller's copies)."""
    n_classes, width = ids.shape
    table = np.full(n_classes, -1, dtype=np.int64)
    got = np.full(n_classes, -np.inf, dtype=np.float32)
    if n_classes == 0 or width == 0:
        return table, got
    # Each class's preference: score descending, then vector id ascending. Sorted in place, a
    # block of rows at a time, so the sort's buffers stay small next to the candidates.
    for start in range(0, n_classes, _SORT_ROWS):
        part = slice(start, start + _SORT_ROWS)
        order = np.lexsort((ids[part], -scores[part]), axis=1)
        ids[part] = np.take_along_axis(ids[part], order, axis=1)
        scores[part] = np.take_along_axis(scores[part], order, axis=1)
    # Vector ids as dense slots (vectors are few near n_min; compress otherwise).
    if int(ids.max()) < 8 * ids.size + 1024:
        slots, slot_vids = ids, None
    else:
        slot_vids, inverse = np.unique(ids, return_inverse=True)
        slots = inverse.reshape(ids.shape).astype(np.int32)
        del inverse
    # Class indices, pointers and holders in the narrowest integers that hold them.
    cls_dtype: type[np.signedinteger[Any]] = np.int32 if n_classes < 2**31 else np.int64
    holder = np.full(int(slots.max()) + 1, -1, dtype=cls_dtype)  # class holding each vector
    pointer = np.zeros(n_classes, dtype=np.int16 if width < 2**15 else np.int32)
    # Proposals are taken from a queue, at most _ROUND_PROPOSALS at a time: the stable matching
    # does not depend on the order of proposals, and the round's arrays stay small.
    queue = np.arange(n_classes, dtype=cls_dtype)
    while queue.size:
        proposers, queue = queue[:_ROUND_PROPOSALS], queue[_ROUND_PROPOSALS:]
        live = pointer[proposers] < width
        proposers = proposers[live]
        live = np.isfinite(scores[proposers, pointer[proposers]])
        proposers = proposers[live]
        del live
        if proposers.size == 0:
            continue
        at = pointer[proposers]
        slot = slots[proposers, at]
        score = scores[proposers, at]
        del at
        # best proposal per vector: score descending, then class id ascending
        by_vector = np.lexsort((proposers, -score, slot))
        slot, score, cls = slot[by_vector], score[by_vector], proposers[by_vector]
        del by_vector
        first = np.ones(len(slot), dtype=bool)
        first[1:] = slot[1:] != slot[:-1]
        slot, score, cls = slot[first], score[first], cls[first]
        del first
        held = holder[slot]
        held_score = np.full(len(held), -np.inf, dtype=np.float32)
        has = held >= 0  # a holder's pointer is at the vector it holds, always in range
        held_score[has] = scores[held[has], pointer[held[has]]]
        wins = (score > held_score) | ((score == held_score) & (cls < held))
        winners = cls[wins]
        bumped = held[wins & has]
        holder[slot[wins]] = winners
        rejected = np.ones(n_classes, dtype=bool)
        rejected[winners] = False
        losers = proposers[rejected[proposers]]
        pointer[losers] += 1
        pointer[bumped] += 1
        queue = np.concatenate([queue, losers, bumped])
    matched = np.flatnonzero(holder >= 0)
    owners = holder[matched]
    table[owners] = matched if slot_vids is None else slot_vids[matched]
    got[owners] = scores[owners, pointer[owners]]
    return table, got


MeanSource = Callable[[np.ndarray], Iterator[tuple[np.ndarray, np.ndarray]]]
"""``source(class_ids)`` yields ``(ids, means)`` blocks covering the ascending ``class_ids``,
each class once, the blocks in any order (a source reading images goes in storage order): ids
(B,) int64 and means (B, dim) float32 (all-zero rows for classes without samples)."""


def array_source(means: np.ndarray, *, block: int = 1 << 16) -> MeanSource:
    """A :data:`MeanSource` over class means held in memory."""

    def source(class_ids: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(class_ids), block):
            ids = class_ids[start : start + block]
            yield ids, means[ids]

    return source


def match_classes(
    system: VectorSystem,
    means: np.ndarray | MeanSource,
    *,
    candidates: int = DEFAULT_CANDIDATES,
    current: np.ndarray | None = None,
    margin: float = 0.0,
) -> np.ndarray:
    """Data-aware assignment: each class to a distinct vector near its mean embedding.

    Greedy over each class's ``candidates`` nearest vectors (:func:`greedy_match`); classes whose
    candidates all went to others are matched again among the vectors still free (exact search
    over the free vectors near n_min, deeper enumeration far above it); classes never seen
    take the lowest free vector ids.

    Args:
        system: the system to match into.
        means: (n_classes, dim) float class means (sums work too: only directions matter),
            all-zero rows for classes without samples; or a :data:`MeanSource` that computes
            them block by block, so that at no time are all of them in memory (training passes
            one; it is asked once for every class and once more for the leftovers).
        candidates: nearest vectors enumerated per class in the first round.
        current: (n_classes,) the table in use, when re-matching during training.
        margin: with ``current``, a class's current vector scores this much above its cosine,
            so a class moves only to a vector that is closer by more than ``margin`` (every move
            costs the network what it learned for that class).

    Returns:
        (n_classes,) int64 table of distinct vector ids, for :meth:`VectorSystem.with_assignment`.
        Deterministic: the same means give the same table.

    Raises:
        InputError: means not (n_classes, dim), or holding NaN/inf.

    Memory: ``candidates x n_classes`` ids and scores (8 x 600k x 12 B = 58 MB at the default),
    one block of means, and the leftovers' means and candidates (at most 256 MiB: past that,
    and when a round of the exact search matches under 1% of them, the leftovers take the
    lowest free vectors).
    """
    if candidates < 1:
        raise ConfigError(f"candidates must be >= 1, got {candidates}")
    if callable(means):
        source = means
    else:
        means = np.asarray(means, dtype=np.float32)
        if means.shape != (system.n_classes, system.dim):
            raise InputError(
                f"class means must be (n_classes, dim) = ({system.n_classes}, {system.dim}), "
                f"got shape {means.shape}"
            )
        source = array_source(means)
    every = np.arange(system.n_classes, dtype=np.int64)
    width = candidates + (current is not None)
    ids = np.zeros((system.n_classes, width), dtype=_id_dtype(system))
    scores = np.full((system.n_classes, width), -np.inf, dtype=np.float32)
    seen = np.zeros(system.n_classes, dtype=bool)
    for block, block_means in _checked(source(every), system):
        seen[block] = np.abs(block_means).sum(axis=1) > 0
        found, cos = nearest_candidates(system, block_means, candidates)
        if current is not None:
            # the current vector as one more candidate, with the margin added to its cosine
            kept = np.asarray(current, dtype=np.int64)[block]
            cos[found == kept[:, None]] = -np.inf
            ids[block, -1] = kept
            scores[block, -1] = _cosines(system, block_means, kept) + np.float32(margin)
        ids[block, : found.shape[1]], scores[block, : found.shape[1]] = found, cos
    table, _ = _greedy_match_owned(ids, scores)
    del ids, scores
    left = np.flatnonzero((table < 0) & seen)
    if left.size and left.size * _GROWTH * candidates * 12 <= _MAX_LEFTOVER_BYTES:
        left_means = np.zeros((len(left), system.dim), dtype=np.float32)
        for block, block_means in _checked(source(left), system):
            left_means[np.searchsorted(left, block)] = block_means
        exact = _match_leftovers_exact(system, left_means, left, table, candidates)
        if not exact and left.size * _MAX_ENUMERATED * 12 <= _MAX_LEFTOVER_BYTES:
            _match_leftovers_enumerated(system, left_means, left, table, candidates)
    _fill_free(table, system.n_vectors)
    return table


def _id_dtype(system: VectorSystem) -> type[np.signedinteger[Any]]:
    return np.int32 if system.n_vectors < 2**31 else np.int64


def _checked(
    blocks: Iterator[tuple[np.ndarray, np.ndarray]], system: VectorSystem
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for ids, means in blocks:
        means = np.asarray(means, dtype=np.float32)
        if means.shape != (len(ids), system.dim):
            raise InputError(
                f"class means block has shape {means.shape}, expected ({len(ids)}, {system.dim})"
            )
        if not np.isfinite(means).all():
            raise InputError("class means contain NaN or inf; check the model output")
        yield np.asarray(ids, dtype=np.int64), means


def _cosines(system: VectorSystem, means: np.ndarray, vector_ids: np.ndarray) -> np.ndarray:
    """(K,) float32 cosine of each mean with the vector of the same row (-inf for zero means)."""
    out = np.full(len(means), -np.inf, dtype=np.float32)
    for start in range(0, len(means), _COSINE_ROWS):
        m = means[start : start + _COSINE_ROWS]
        v = system.vectors(vector_ids[start : start + _COSINE_ROWS]).astype(np.float32)
        norms = np.linalg.norm(m, axis=1) * np.linalg.norm(v, axis=1)
        cos = (m * v).sum(axis=1) / np.maximum(norms, np.finfo(np.float32).tiny)
        out[start : start + len(m)] = np.where(norms > 0, cos, -np.inf)
    return out


def _match_leftovers_exact(
    system: VectorSystem,
    means: np.ndarray,
    classes: np.ndarray,
    table: np.ndarray,
    candidates: int,
) -> bool:
    """Match the unmatched ``classes`` (with ``means``) among the free vectors by exact search.

    Near n_min the free vectors are few and enumeration from the means would walk past many
    taken ones, so they are listed and searched directly (blocked matrix products). Returns
    False, doing nothing, when the free vectors would take more than ``_MAX_FREE_BYTES``.
    """
    if (system.n_vectors - np.count_nonzero(table >= 0)) * system.dim * 4 > _MAX_FREE_BYTES:
        return False
    import torch

    free = np.ones(system.n_vectors, dtype=bool)
    free[table[table >= 0]] = False
    free_ids = np.flatnonzero(free)
    vectors = system.vectors(free_ids).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = means / np.linalg.norm(means, axis=1, keepdims=True)
    while True:
        pending = np.flatnonzero(table[classes] < 0)
        slots = np.flatnonzero(free[free_ids])
        if pending.size == 0 or slots.size == 0:
            return True
        width = min(_GROWTH * candidates, slots.size)
        ids = np.empty((pending.size, width), dtype=np.int64)
        scores = np.empty((pending.size, width), dtype=np.float32)
        rows = max(1, _CHUNK_SIMS // slots.size)
        candidates_t = torch.from_numpy(vectors[slots])
        for start in range(0, pending.size, rows):
            sims = torch.from_numpy(unit[pending[start : start + rows]]) @ candidates_t.T
            top = sims.topk(width, dim=1)  # torch: far faster than numpy's argpartition here
            ids[start : start + rows] = free_ids[slots[top.indices.numpy()]]
            scores[start : start + rows] = top.values.numpy()
        sub, _ = _greedy_match_owned(ids, scores)
        table[classes[pending]] = sub
        free[sub[sub >= 0]] = False
        if np.count_nonzero(sub >= 0) < _MIN_ROUND_SHARE * pending.size:
            return True  # the means barely differ: the rest take the lowest free vectors


def _match_leftovers_enumerated(
    system: VectorSystem,
    means: np.ndarray,
    classes: np.ndarray,
    table: np.ndarray,
    candidates: int,
) -> None:
    """Match the unmatched ``classes`` by enumerating more of their nearest vectors.

    For systems far above n_min, where most vectors are free and a few more candidates suffice.
    """
    width = candidates
    while width < _MAX_ENUMERATED:
        pending = np.flatnonzero(table[classes] < 0)
        if pending.size == 0:
            return
        width = min(width * _GROWTH, _MAX_ENUMERATED)
        ids, scores = nearest_candidates(system, means[pending], width)
        scores[np.isin(ids, table[table >= 0])] = -np.inf
        table[classes[pending]], _ = _greedy_match_owned(ids, scores)


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


def fit_geometry(
    system: VectorSystem,
    geometry: np.ndarray,
    *,
    iterations: int = 20,
    centered: bool = False,
    current: np.ndarray | None = None,
    margin: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Fit a class geometry onto the lattice: which vector each class owns, up to a rotation.

    Alternates a one-to-one matching of the rotated geometry (:func:`match_classes`) with the
    orthogonal Procrustes rotation that best maps the geometry onto the vectors it was matched
    to, until the table stops changing. Only the permutation matters for training (a learned
    projection absorbs any rotation), so what is fitted is the *similarity structure*: classes
    that are close in ``geometry`` land on neighbouring lattice vectors.

    Args:
        system: the system to fit into (its own assignment is ignored).
        geometry: (n_classes, dim) float class coordinates, e.g. class means of backbone
            features, centred and reduced to ``dim`` by PCA; rows need not be normalised;
            all-zero rows are classes without samples (they take free vectors).
        iterations: most alternations.
        centered: rotate onto the zero-mean (centred) lattice vectors, as trained with
            centred targets.
        current: (n_classes,) the table in use, when re-fitting during training: the first
            rotation is the one that maps the geometry onto it, and every matching keeps a
            class on its current vector unless another is closer by ``margin``.
        margin: see :func:`match_classes`.

    Returns:
        table (n_classes,) int64 for :meth:`VectorSystem.with_assignment`, rotation (dim, dim)
        float32 such that ``normalize(geometry) @ rotation.T`` lies near each class's target,
        and the mean cosine between those rotated rows and their (centred) targets.

    Raises:
        InputError: ``geometry`` not (n_classes, dim), or holding NaN/inf.

    Memory: besides ``geometry`` and what :func:`match_classes` holds, one block of rows at a
    time (nothing else of size n_classes x dim).

    Example:
        >>> from lscindex import VectorSystem
        >>> system = VectorSystem.create("v21", 100)
        >>> geometry = np.random.default_rng(0).normal(size=(100, system.dim))
        >>> table, rotation, fit = fit_geometry(system, geometry.astype(np.float32))
        >>> len(set(table.tolist())), rotation.shape
        (100, (7, 7))
    """
    geometry = np.asarray(geometry)
    if geometry.shape != (system.n_classes, system.dim):
        raise InputError(
            f"class geometry must be (n_classes, dim) = ({system.n_classes}, {system.dim}), "
            f"got shape {geometry.shape}"
        )
    if not np.isfinite(geometry).all():
        raise InputError("class geometry contains NaN or inf; check the features it came from")
    norms = np.linalg.norm(geometry, axis=1).astype(np.float32)
    scale = np.where(norms > 0, 1 / np.maximum(norms, np.finfo(np.float32).tiny), 0)

    def rotated(rotation: np.ndarray) -> MeanSource:
        return _rotated_source(geometry, scale, rotation)

    def procrustes(table: np.ndarray) -> tuple[np.ndarray, float]:
        return _procrustes(system, geometry, scale, table, centered=centered)

    rotation = np.eye(system.dim, dtype=np.float32)
    if current is not None:
        rotation, _ = procrustes(np.asarray(current, dtype=np.int64))
    table = match_classes(system, rotated(rotation), current=current, margin=margin)
    for _ in range(iterations - 1):
        rotation, _ = procrustes(table)
        new = match_classes(system, rotated(rotation), current=current, margin=margin)
        if np.array_equal(new, table):
            break
        table = new
    rotation, fit = procrustes(table)  # the final table under its own best rotation
    return table, rotation, fit


def _rotated_source(geometry: np.ndarray, scale: np.ndarray, rotation: np.ndarray) -> MeanSource:
    """A :data:`MeanSource` of the unit rows of ``geometry`` rotated by ``rotation``."""

    def source(class_ids: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(class_ids), _FIT_ROWS):
            ids = class_ids[start : start + _FIT_ROWS]
            unit = geometry[ids].astype(np.float32) * scale[ids, None]
            yield ids, unit @ rotation.T

    return source


def _procrustes(
    system: VectorSystem,
    geometry: np.ndarray,
    scale: np.ndarray,
    table: np.ndarray,
    *,
    centered: bool,
) -> tuple[np.ndarray, float]:
    """The rotation R best mapping the unit rows of ``geometry`` onto ``table``'s targets, and
    the mean cosine under it (over the rows that are not all zero)."""
    cross = np.zeros((system.dim, system.dim), dtype=np.float64)
    for start in range(0, system.n_classes, _FIT_ROWS):
        rows = slice(start, start + _FIT_ROWS)
        unit = geometry[rows].astype(np.float64) * scale[rows, None]
        cross += _unit_vectors(system, table[rows], centered=centered).T @ unit
    u, _, vh = np.linalg.svd(cross)
    rotation = u @ vh
    seen = max(int(np.count_nonzero(scale)), 1)
    return rotation.astype(np.float32), float(np.trace(rotation @ cross.T)) / seen


def _unit_vectors(system: VectorSystem, vector_ids: np.ndarray, *, centered: bool) -> np.ndarray:
    """(N, dim) float32 unit vectors of the given ids, optionally centred first."""
    out = np.empty((len(vector_ids), system.dim), dtype=np.float32)
    shift = np.float32(lattice_mean(system)) if centered else np.float32(0)
    for start in range(0, len(vector_ids), _COSINE_ROWS * 8):
        v = system.vectors(vector_ids[start : start + _COSINE_ROWS * 8]).astype(np.float32)
        v -= shift
        out[start : start + len(v)] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def lattice_mean(system: VectorSystem) -> float:
    """Each coordinate of the mean of all the system's vectors: ``(a - b) / dim`` for V^{ab},
    0 for sign-symmetric kinds."""
    spec = parse_kind(system.kind)
    return 0.0 if spec.symmetric else (spec.a - spec.b) / system.dim
