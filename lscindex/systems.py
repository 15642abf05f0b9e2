"""Vector systems: fixed class targets, the class <-> target codec, exact nearest-target decoding.

A vector system V^{ab}_n is the set of all distinct coordinate permutations of a base vector in R^n
with ``a`` entries +1, ``b`` entries -1 and the rest 0 (Gabdullin, arXiv 2512.07509); the kinds,
their vector counts and mcs are in :mod:`lscindex.kinds`.

Class ``c`` owns vector ``sigma(c)`` where ``sigma`` is a seeded Feistel bijection on
``[0, n_vectors)``, and vector indices are colex ranks of (plus positions, minus positions), so
both directions cost O(dim) with no table. The nearest vector of the whole system to an embedding
is read off its largest and smallest coordinates; decoding skips vectors owned by no class and
reports the embedding as *novel* when its nearest vector is one of those. Far above n_min,
decoding searches a :class:`lscindex.target_index.TargetIndex` instead.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from lscindex import _decode
from lscindex._checks import check_int, to_numpy
from lscindex._codec import (
    MAX_INDEX,
    FeistelPermutation,
    binomial_table,
    compress_complement,
    expand_complement,
    rank_combinations,
    unrank_combinations,
)
from lscindex._threads import default_threads, shared_pool
from lscindex.assignment import TableAssignment
from lscindex.errors import CapacityError, ConfigError, InputError

# Kind parsing and counting live in lscindex.kinds; re-exported here for existing imports.
from lscindex.kinds import DEFAULT_KINDS, KindSpec, count_vectors, n_min, parse_kind

if TYPE_CHECKING:
    from lscindex.target_index import TargetIndex

__all__ = [
    "DEFAULT_KINDS",
    "Decoded",
    "KindSpec",
    "VectorSystem",
    "count_vectors",
    "n_min",
    "parse_kind",
]

CODEC_VERSION = 1
# Grow the candidate count by this factor when too few enumerated vectors belong to classes.
_GROWTH = 4
_MAX_CANDIDATES = 4096
# Batches are split across threads only when each thread gets at least this many rows.
_MIN_ROWS_PER_THREAD = 2048


@dataclass(frozen=True)
class Decoded:
    """Result of decoding embeddings to classes.

    Attributes:
        ids: (B, k) int64 class ids, best first.
        scores: (B, k) float32 cosine between each embedding and the class target, descending.
        novel: (B,) bool, True where the nearest vector of the whole system belongs to no class.
    """

    ids: np.ndarray
    scores: np.ndarray
    novel: np.ndarray


class VectorSystem:
    """A vector system sized for ``n_classes``, with its class codec and decoder.

    Build with :meth:`create`; instances are immutable and compare by :attr:`fingerprint`, i.e.
    by (kind, dim, n_classes, seed) and, for a data-assigned system, its assignment table.
    The same (kind, dim, n_classes, seed) gives the same targets in every version of lscindex.

    Example:
        >>> system = VectorSystem.create("v21", 1000)
        >>> system.dim, system.n_vectors
        (14, 1092)
        >>> t = system.targets([0, 1, 999])             # (3, 14) float32, unit norm
        >>> system.decode(t, k=1).ids[:, 0].tolist()
        [0, 1, 999]
    """

    def __init__(
        self,
        spec: KindSpec,
        dim: int,
        n_classes: int,
        seed: int,
        table: TableAssignment | None = None,
        *,
        centered: bool = False,
    ) -> None:
        self._spec = spec
        self._dim = dim
        self._n_classes = n_classes
        self._seed = seed
        self._half = math.comb(dim, spec.a) * math.comb(dim - spec.a, spec.b)
        self._n_vectors = 2 * self._half if spec.symmetric else self._half
        self._minus_count = math.comb(dim - spec.a, spec.b)
        self._table = table
        # class <-> vector: the seeded codec, or a data-aware table (lscindex.assignment)
        self._perm: FeistelPermutation | TableAssignment = (
            FeistelPermutation(self._n_vectors, seed) if table is None else table
        )
        self._binomials = binomial_table(dim, max(spec.a, spec.b))
        self._norm = math.sqrt(spec.a + spec.b)
        # Centred targets: every vector minus the lattice mean (a - b)/dim per coordinate (zero
        # for sign-symmetric kinds), renormalised. All vectors keep one norm and one all-ones
        # component, so the nearest target of any embedding is unchanged; only the cosines move.
        self._centered = bool(centered)
        self._shift = (spec.a - spec.b) / dim if centered and not spec.symmetric else 0.0
        self._centered_norm = math.sqrt(spec.a + spec.b - self._shift**2 * dim)
        self._index_cache: dict[tuple[str, int], TargetIndex] = {}
        self._index_lock = threading.Lock()

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        kind: str,
        n_classes: int,
        *,
        dim: int | None = None,
        seed: int = 0,
        centered: bool = False,
    ) -> VectorSystem:
        """Size a system of ``kind`` for ``n_classes`` classes.

        Args:
            kind: see :mod:`lscindex.kinds` (``"v21"``, ``"an"``, ``"v21s"``, ...).
            n_classes: number of classes, >= 1.
            dim: latent dimension; None means :func:`n_min`.
            seed: selects which vectors the classes own and in which order.
            centered: zero-mean targets (each vector minus the mean of all the system's
                vectors, renormalised). Decoding gives the same classes either way; training
                does not sit on the mean direction (V21's vectors all share a component
                1/sqrt(3 dim) along the all-ones direction, which an untrained network finds
                first). Symmetric kinds are zero-mean already.

        Raises:
            ConfigError: unknown kind, n_classes < 1, bad seed, a system too large to index.
            CapacityError: ``dim`` holds fewer vectors than ``n_classes`` (message gives n_min).
        """
        spec = parse_kind(kind)
        n_classes = check_int("n_classes", n_classes, minimum=1)
        seed = check_int("seed", seed, minimum=0)
        smallest = spec.n_min(n_classes)
        if dim is None:
            dim = smallest
        dim = check_int("dim", dim, minimum=1)
        count = spec.count(dim)
        if count < n_classes:
            raise CapacityError(
                f"{spec.name} at dim {dim} holds {count:,} vectors, fewer than "
                f"n_classes={n_classes:,}; use dim >= {smallest} (n_min) or leave dim unset"
            )
        if count > MAX_INDEX:
            raise ConfigError(
                f"{spec.name} at dim {dim} has {count:.3g} vectors, more than the 2**62 the codec "
                f"indexes; use a smaller dim (n_min is {smallest}) or a kind with fewer non-zeros"
            )
        return cls(spec, dim, n_classes, seed, centered=centered)

    def with_assignment(self, table: Any) -> VectorSystem:
        """The same system with classes mapped through ``table`` instead of the seeded codec.

        Args:
            table: (n_classes,) distinct vector indices in ``[0, n_vectors)``, e.g. from
                :func:`lscindex.assignment.match_classes`; None goes back to the codec.

        Raises:
            InputError: wrong length, repeated or out-of-range vector indices.
        """
        if table is None:
            return VectorSystem(
                self._spec, self._dim, self._n_classes, self._seed, centered=self._centered
            )
        assignment = TableAssignment(to_numpy(table), self._n_vectors)
        if assignment.n != self._n_classes:
            raise InputError(
                f"assignment table has {assignment.n:,} entries but the system has "
                f"n_classes={self._n_classes:,}; the table belongs to another run"
            )
        return VectorSystem(
            self._spec, self._dim, self._n_classes, self._seed, assignment, centered=self._centered
        )

    @property
    def assignment(self) -> Literal["codec", "data"]:
        """``"codec"`` (seeded bijection, no table) or ``"data"`` (a matched table)."""
        return "codec" if self._table is None else "data"

    @property
    def centered(self) -> bool:
        """Whether the targets are centred (see :meth:`create`)."""
        return self._centered

    @property
    def assignment_table(self) -> np.ndarray | None:
        """(n_classes,) int64 vector index of each class for ``"data"`` systems, else None."""
        return None if self._table is None else self._table.table

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; :meth:`from_dict` rebuilds an equal system.

        A data-assigned system adds ``"assignment": "data"``; its table is stored beside the
        dict (a run's ``assignment.safetensors``) and passed back to :meth:`from_dict`. A
        centred system adds ``"centered": true`` (absent means false, as in every spec written
        before centring existed, so their fingerprints are unchanged).
        """
        spec: dict[str, Any] = {
            "kind": self.kind,
            "dim": self.dim,
            "n_classes": self.n_classes,
            "seed": self.seed,
            "codec": CODEC_VERSION,
        }
        if self._table is not None:
            spec["assignment"] = "data"
        if self._centered:
            spec["centered"] = True
        return spec

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, table: Any = None) -> VectorSystem:
        """Inverse of :meth:`to_dict`; unknown or missing keys raise :class:`ConfigError`.

        ``table`` is the assignment table of a ``"data"`` spec (required there, refused for a
        codec spec).
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"vector system spec must be a mapping, got {type(data).__name__}")
        known = {"kind", "dim", "n_classes", "seed", "codec", "assignment", "centered"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown vector system key(s) {', '.join(map(repr, unknown))}; "
                f"expected {sorted(known)}"
            )
        missing = sorted({"kind", "n_classes"} - set(data))
        if missing:
            raise ConfigError(f"vector system spec lacks {', '.join(map(repr, missing))}")
        codec = data.get("codec", CODEC_VERSION)
        if codec != CODEC_VERSION:
            raise ConfigError(
                f"vector system uses codec version {codec!r} but this lscindex reads version "
                f"{CODEC_VERSION}; upgrade lscindex"
            )
        centered = data.get("centered", False)
        if not isinstance(centered, bool):
            raise ConfigError(f"vector system centered must be true or false, got {centered!r}")
        system = cls.create(
            data["kind"],
            data["n_classes"],
            dim=data.get("dim"),
            seed=data.get("seed", 0),
            centered=centered,
        )
        kind = data.get("assignment", "codec")
        if kind not in ("codec", "data"):
            raise ConfigError(f"vector system assignment must be 'codec' or 'data', got {kind!r}")
        if kind == "data" and table is None:
            raise ConfigError(
                "vector system spec has a data assignment but no table was given; pass the "
                "run's assignment table (assignment.safetensors)"
            )
        if kind == "codec" and table is not None:
            raise ConfigError("vector system spec uses the codec; it takes no assignment table")
        return system.with_assignment(table) if table is not None else system

    # -- attributes -----------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """Canonical kind name (``"an"`` reads back as ``"v11"``)."""
        return self._spec.name

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def n_classes(self) -> int:
        return self._n_classes

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def n_vectors(self) -> int:
        """Exact number of vectors in the system (>= n_classes)."""
        return self._n_vectors

    @property
    def mcs(self) -> float:
        """Cosine of the closest pair of distinct vectors (nan for a single-vector system)."""
        return self._spec.mcs(self._dim)

    @property
    def fingerprint(self) -> str:
        """16 hex digits identifying the targets; stored in every artefact built from them.

        It hashes the spec, not the target values: the first 16 hex digits of sha256 over the
        sorted-key JSON of :meth:`to_dict` (kind, dim, n_classes, seed, codec version), with a
        data-assigned system's ``"assignment"`` replaced by its table's digest
        (:func:`lscindex.assignment.table_sha256`). A codec system's fingerprint is the one
        every earlier version gave it.
        """
        spec = self.to_dict()
        if self._table is not None:
            spec["assignment"] = self._table.sha256
        blob = json.dumps(spec, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VectorSystem) and self.fingerprint == other.fingerprint

    def __hash__(self) -> int:
        return hash(
            (self.kind, self.dim, self.n_classes, self.seed, self.assignment, self.centered)
        )

    def __repr__(self) -> str:
        extra = ", assignment='data'" if self._table is not None else ""
        extra += ", centered=True" if self._centered else ""
        return (
            f"VectorSystem(kind={self.kind!r}, dim={self.dim}, n_classes={self.n_classes}, "
            f"seed={self.seed}{extra})"
        )

    # -- codec ------------------------------------------------------------------------------------
    def _check_class_ids(self, class_ids: Any) -> np.ndarray:
        ids = to_numpy(class_ids)
        if ids.dtype.kind not in "iu":
            if ids.size == 0:
                ids = ids.astype(np.int64)
            else:
                raise InputError(
                    f"class ids must be integers, got dtype {ids.dtype}; cast with .astype(int)"
                )
        ids = ids.astype(np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self._n_classes):
            bad = int(ids.min() if ids.min() < 0 else ids.max())
            raise InputError(
                f"class id {bad} is out of range for {self.kind} with n_classes={self._n_classes}; "
                f"ids must be in [0, {self._n_classes})"
            )
        return ids

    def vector_ids(self, class_ids: Any) -> np.ndarray:
        """Index in ``[0, n_vectors)`` of the vector each class owns (int64, same shape)."""
        return self._perm.forward(self._check_class_ids(class_ids))

    def class_ids(self, vector_ids: Any) -> np.ndarray:
        """Class owning each vector index, -1 where no class does (int64, same shape)."""
        vids = to_numpy(vector_ids).astype(np.int64)
        if vids.size and (vids.min() < 0 or vids.max() >= self._n_vectors):
            raise InputError(
                f"vector index out of range [0, {self._n_vectors}) for {self.kind} at dim "
                f"{self.dim}: got {int(vids.min() if vids.min() < 0 else vids.max())}"
            )
        cls = self._perm.inverse(vids)
        return np.where(cls < self._n_classes, cls, -1)

    def vectors(self, vector_ids: Any) -> np.ndarray:
        """The system's vectors by index: (len, dim) int8 with entries in {-1, 0, 1}."""
        vids = to_numpy(vector_ids).astype(np.int64).reshape(-1)
        negate = vids >= self._half
        base = vids - self._half * negate
        plus = unrank_combinations(base // self._minus_count, self._spec.a, self._binomials)
        minus = expand_complement(
            unrank_combinations(base % self._minus_count, self._spec.b, self._binomials), plus
        )
        out = np.zeros((len(vids), self._dim), dtype=np.int8)
        rows = np.arange(len(vids))[:, None]
        out[rows, plus] = 1
        out[rows, minus] = -1
        out[negate] *= -1
        return out

    def targets(self, class_ids: Any) -> np.ndarray:
        """Unit-norm targets of the given classes.

        Args:
            class_ids: (N,) integers in ``[0, n_classes)`` (numpy, list or torch).

        Returns:
            (N, dim) float32, L2-normalised (centred first for a centred system). Nothing of
            size n_classes is built.

        Raises:
            InputError: non-integer ids or ids out of range.
        """
        ids = self._check_class_ids(class_ids).reshape(-1)
        vectors = self.vectors(self._perm.forward(ids)).astype(np.float32)
        if self._shift:
            vectors -= np.float32(self._shift)
        return vectors / np.float32(self._centered_norm)

    def _rank(self, plus: np.ndarray, minus: np.ndarray) -> np.ndarray:
        """Vector index of V^{ab} (first half) from ascending plus/minus positions."""
        plus_rank = rank_combinations(plus, self._binomials)
        minus_rank = rank_combinations(compress_complement(minus, plus), self._binomials)
        return plus_rank * self._minus_count + minus_rank

    # -- decoding ---------------------------------------------------------------------------------
    def _check_embeddings(self, embeddings: Any) -> np.ndarray:
        e = to_numpy(embeddings)
        if e.dtype.kind not in "fiu":
            raise InputError(f"embeddings must be a float array, got dtype {e.dtype}")
        if e.ndim != 2:
            hint = "; use x[None] for a single embedding" if e.ndim == 1 else ""
            raise InputError(f"embeddings must be 2-D (batch, dim), got shape {e.shape}{hint}")
        if e.shape[1] != self._dim:
            raise InputError(
                f"embeddings have dim {e.shape[1]} but {self.kind} for {self._n_classes:,} classes "
                f"has dim {self._dim}; decode with the system the model was trained on"
            )
        e = np.ascontiguousarray(e, dtype=np.float32)
        if not np.isfinite(e).all():
            row = int(np.flatnonzero(~np.isfinite(e).all(axis=1))[0])
            raise InputError(
                f"embeddings row {row} contains NaN or inf; check the model output (e.g. AMP "
                f"overflow) before decoding"
            )
        return e

    def _check_k(self, k: Any, *, limit: int | None = None, what: str = "n_classes") -> int:
        limit = self._n_classes if limit is None else limit
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= limit:
            raise InputError(f"k must be an integer in [1, {what}={limit:,}], got {k!r}")
        return int(k)

    def _initial_candidates(self, k: int) -> int:
        # Expected enumeration length to meet k owned vectors; rows that fall short go round
        # again with _GROWTH times more, so no safety margin is added here.
        assigned = self._n_classes / self._n_vectors
        return min(math.ceil(k / assigned), self._half)

    def analytic_is_fast(self, k: int = 1) -> bool:
        """Whether :meth:`decode` takes the analytic path for top-``k`` (else the FAISS one).

        The enumeration is O(dim) per query near n_min; far above n_min few vectors belong to
        classes and enumerating past the unowned ones costs more than a FAISS search.
        """
        candidates = self._initial_candidates(k)
        cost = _decode.pattern_cost(self._dim, self._spec.a, self._spec.b, candidates)
        return candidates <= 256 and cost <= _decode.MAX_PATTERNS

    def _nearest(self, e: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``count`` vectors of the whole system: (B, count) vector ids and float64 dots."""
        a, b = self._spec.a, self._spec.b
        rows = np.arange(len(e))[:, None, None]

        def half(x: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray]:
            # Dots with x: for the mirrored half x = -e, and x . v is e's dot with -v.
            if count == 1:
                plus, minus = _decode.top_1(x, a, b)
                plus, minus = plus[:, None], minus[:, None]
                dots = _decode.dots(np.concatenate([x[rows, plus], x[rows, minus]], axis=-1), a)
            else:
                plus, minus, dots = _decode.top_k(x, a, b, min(count, self._half))
            return self._rank(plus, minus) + offset, dots

        vids, dots = half(e, 0)
        if not self._spec.symmetric:
            return vids, dots
        vids2, dots2 = half(-e, self._half)
        vids = np.concatenate([vids, vids2], axis=1)
        dots = np.concatenate([dots, dots2], axis=1)
        order = np.argsort(-dots, axis=1, kind="stable")[:, :count]
        return np.take_along_axis(vids, order, axis=1), np.take_along_axis(dots, order, axis=1)

    def nearest_vectors(self, embeddings: Any, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest vectors of the whole system, owned by a class or not.

        Returns:
            vector ids (B, k) int64 and cosines (B, k) float32, descending.
        """
        e = self._check_embeddings(embeddings)
        k = self._check_k(k, limit=min(self._half, _MAX_CANDIDATES), what="max")
        vids, dots = self._nearest(e, k)
        return vids, self._cosine(_norms(e), dots)

    def _cosine(self, norms: np.ndarray, dots: np.ndarray) -> np.ndarray:
        """(B, k) float32 cosines from float64 dots with the unnormalised vectors."""
        scale = self._norm * np.maximum(norms, np.finfo(np.float32).tiny)
        return (dots / scale[:, None]).astype(np.float32)

    def _target_cosine(self, e: np.ndarray, norms: np.ndarray, dots: np.ndarray) -> np.ndarray:
        """(B, k) float32 cosines with the *targets* (centred or not) from float64 dots with
        the unnormalised vectors of rows ``e``: a centred target's dot is the vector's minus
        ``shift * sum(e)``, the same for every vector of a row, so the order is unchanged."""
        if not self._shift:
            return self._cosine(norms, dots)
        sums = e.sum(axis=1, dtype=np.float64)
        scale = self._centered_norm * np.maximum(norms, np.finfo(np.float32).tiny)
        return ((dots - self._shift * sums[:, None]) / scale[:, None]).astype(np.float32)

    def decode(
        self,
        embeddings: Any,
        k: int = 1,
        *,
        method: Literal["auto", "analytic", "index"] = "auto",
        threads: int | None = None,
    ) -> Decoded:
        """Nearest class targets of each embedding: exact top-k among the classes' targets.

        Args:
            embeddings: (B, dim) numpy array or torch tensor (CPU or CUDA), any float dtype,
                not necessarily normalised.
            k: number of classes per row, ``1 <= k <= n_classes``.
            method: ``"analytic"`` enumerates the system's vectors in score order (O(dim) per
                query near n_min, nothing of size n_classes); ``"index"`` searches a FAISS flat
                index over the materialised targets; ``"auto"`` picks analytic when
                :meth:`analytic_is_fast`.
            threads: worker threads for the analytic path on large batches (numpy releases the
                GIL); None uses ``OMP_NUM_THREADS`` if set, else the CPUs available.

        Returns:
            :class:`Decoded` with ids (B, k) int64, scores (B, k) float32 cosines, novel (B,).

        Raises:
            InputError: embeddings not 2-D, wrong dim, NaN/inf; k out of range.

        Example:
            >>> s = VectorSystem.create("v21", 1000)
            >>> out = s.decode(s.targets([7]) + 0.01, k=5)
            >>> int(out.ids[0, 0]), out.scores.shape
            (7, (1, 5))
        """
        e = self._check_embeddings(embeddings)
        k = self._check_k(k)
        if method not in ("auto", "analytic", "index"):
            raise InputError(f"method must be 'auto', 'analytic' or 'index', got {method!r}")
        if method == "index" or (method == "auto" and not self.analytic_is_fast(k)):
            return self.target_index().search(e, k)
        workers = default_threads() if threads is None else threads
        workers = check_int("threads", workers, minimum=1)
        chunks = min(workers, len(e) // _MIN_ROWS_PER_THREAD)
        if chunks < 2:
            return self._decode_analytic(e, k)
        pieces = np.array_split(e, chunks)
        parts = list(shared_pool(chunks).map(lambda x: self._decode_analytic(x, k), pieces))
        return Decoded(
            ids=np.concatenate([p.ids for p in parts]),
            scores=np.concatenate([p.scores for p in parts]),
            novel=np.concatenate([p.novel for p in parts]),
        )

    def _decode_analytic(self, e: np.ndarray, k: int) -> Decoded:
        batch = len(e)
        norms = _norms(e)
        ids = np.empty((batch, k), dtype=np.int64)
        scores = np.empty((batch, k), dtype=np.float32)
        novel = np.zeros(batch, dtype=bool)
        candidates = self._initial_candidates(k)
        pending = np.arange(batch)
        if k == 1:
            # Fast path: one nearest vector per row; only rows landing on an unowned vector
            # go on to enumerate further.
            vids, dots = self._nearest(e, 1)
            cls = self._perm.inverse(vids[:, 0])
            owned = cls < self._n_classes
            ids[:, 0] = cls
            scores[:] = self._target_cosine(e, norms, dots)
            novel = ~owned
            pending = np.flatnonzero(~owned)
        first = k > 1
        while pending.size:
            cost = _decode.pattern_cost(self._dim, self._spec.a, self._spec.b, candidates)
            if candidates > _MAX_CANDIDATES or cost > 16 * _decode.MAX_PATTERNS:
                # Rows sitting among very many unowned vectors: finish them exactly with FAISS.
                found = self.target_index().search(e[pending], k)
                ids[pending], scores[pending] = found.ids, found.scores
                if first:
                    novel[pending] = found.novel
                break
            count = min(candidates, self._half)
            vids, dots = self._nearest(e[pending], count)
            cls = self._perm.inverse(vids)
            owned = cls < self._n_classes
            if first:
                novel[pending] = ~owned[:, 0]
                first = False
            rank = np.cumsum(owned, axis=1)
            # Every vector enumerated means every owned one was seen, and k <= n_classes.
            done = (rank[:, -1] >= k) | (count == self._half)
            take = (owned & (rank <= k))[done]
            ids[pending[done]] = cls[done][take].reshape(-1, k)
            scores[pending[done]] = self._target_cosine(
                e[pending[done]], norms[pending[done]], dots[done][take].reshape(-1, k)
            )
            pending = pending[~done]
            candidates *= _GROWTH
        return Decoded(ids=ids, scores=scores, novel=novel)

    def is_novel(self, embeddings: Any) -> np.ndarray:
        """(B,) bool: the nearest vector of the whole system belongs to no class."""
        e = self._check_embeddings(embeddings)
        vids, _ = self._nearest(e, 1)
        return self._perm.inverse(vids[:, 0]) >= self._n_classes

    def target_index(self, *, index_type: str = "flat", hnsw_m: int = 32) -> TargetIndex:
        """A cached :class:`TargetIndex` over this system's targets (built on first use)."""
        from lscindex.target_index import TargetIndex  # it imports Decoded from this module

        key = (index_type, hnsw_m)
        with self._index_lock:
            if key not in self._index_cache:
                self._index_cache[key] = TargetIndex(self, index_type=index_type, hnsw_m=hnsw_m)
            return self._index_cache[key]


def _norms(e: np.ndarray) -> np.ndarray:
    """(B,) float64 L2 norms of the rows of a (B, n) float32 array."""
    return np.sqrt(np.einsum("ij,ij->i", e, e)).astype(np.float64)
