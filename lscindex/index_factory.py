"""Choosing a FAISS factory for a store: ``build_index(store, factory="auto")``.

The choice depends on the row count, the dim and a memory budget, autofaiss-style: exact search
(``Flat``) while it is cheap, else the most accurate approximate index whose estimated memory
fits the budget, in this order::

    HNSW32, HNSW32,SQ8                       (graph: fastest, most memory; up to 10M rows)
    IVF{nlist},Flat, IVF{nlist},SQ8, IVF{nlist},SQ4, IVF{nlist},PQ{m}   (inverted lists)

with ``nlist`` the power of two nearest ``4 * sqrt(rows)`` (at most ``rows / 39``: FAISS's
k-means wants 39 training points per list). Every estimate is the bytes the built index takes
in memory once loaded, IndexIDMap2 included (its ids and its id -> position hash map, ~56
bytes a row, which at 18 dims is as much as the vectors themselves).

Example:
    >>> choice = choose_factory(1_000_000, 18, max_memory_bytes=256 * 2**20)
    >>> choice.factory
    'IVF4096,Flat'
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from lscindex.errors import ConfigError

__all__ = [
    "FactoryCandidate",
    "FactoryChoice",
    "check_factory",
    "choose_factory",
    "estimate_index_bytes",
]

# Exhaustive search of up to this many rows answers a query in a few ms: exact wins.
FLAT_MAX_ROWS = 100_000
# HNSW builds slowly past this (hours on a few cores): inverted lists instead.
HNSW_MAX_ROWS = 10_000_000
HNSW_M = 32
# FAISS warns below 39 training points per k-means centroid; PQ trains 256 per sub-quantizer.
POINTS_PER_CENTROID = 39
PQ_MIN_ROWS = 256 * POINTS_PER_CENTROID
MAX_NLIST = 1 << 16
# IndexIDMap2: the (rows,) int64 id map plus its std::unordered_map reverse map (a 32-byte
# node and a bucket pointer per row, ~45 bytes measured with libstdc++): 56 with some slack.
ID_MAP_BYTES_PER_ROW = 56
LIST_ID_BYTES = 8  # IVF keeps an int64 id next to each code
OVERHEAD_BYTES = 4096


# Ranges of the factory parameters FAISS does not check itself: outside them it aborts (HNSW0),
# crashes (HNSW1, PQ6x0, NSG0, RR0), or allocates without bound (HNSW999999, IVF10^9).
# (pattern, name of the number, lowest, highest); a pattern's number is its first group.
_PARAMETERS = (
    (r"HNSW(\d+)", "HNSW M", 2, 256),
    (r"NSG(\d+)", "NSG R", 2, 256),
    (r"IVF(\d+)", "IVF nlist", 1, 1 << 22),
    (r"IMI(\d+)x\d+", "IMI bits", 1, 16),
    (r"IMI\d+x(\d+)", "IMI bits", 1, 16),
    (r"(?<!O)PQ(\d+)", "PQ m", 1, 4096),
    (r"OPQ(\d+)", "OPQ m", 1, 4096),
    (r"PQ\d+x(\d+)", "PQ bits", 1, 16),
    (r"(?:PCA|PCAR|PCAW|PCAWR|RR|ITQ|OPQ\d+_)(\d+)", "output dim", 1, 65536),
)


def check_factory(factory: str) -> None:
    """Refuse factory parameters FAISS would crash or run out of memory on, before it sees them.

    ``HNSW{M}`` and ``NSG{R}`` need 2..256 links, ``IVF{nlist}`` 1..4,194,304 lists,
    ``PQ{m}x{bits}`` 1..16 bits, and every size a positive number. The rest is FAISS's to judge.

    Raises:
        ConfigError: naming the parameter, its value, the factory and the range.

    Example:
        >>> check_factory("HNSW1")
        Traceback (most recent call last):
        lscindex.errors.ConfigError: HNSW M of 1 in 'HNSW1' is out of range; use 2..256, e.g. HNSW32
    """
    for pattern, name, low, high in _PARAMETERS:
        for found in re.finditer(pattern, factory):
            value = int(found[1])
            if not low <= value <= high:
                example = "HNSW32" if name.startswith("HNSW") else "HNSW32 or IVF1024,SQ8"
                raise ConfigError(
                    f"{name} of {value} in {factory!r} is out of range; use {low}..{high}, "
                    f"e.g. {example}"
                )


@dataclass(frozen=True)
class FactoryCandidate:
    """One factory ``auto`` considered: its estimated bytes and whether they fit the budget."""

    factory: str
    estimated_bytes: int
    fits: bool

    def to_dict(self) -> dict[str, Any]:
        return {"factory": self.factory, "estimated_bytes": self.estimated_bytes, "fits": self.fits}


@dataclass(frozen=True)
class FactoryChoice:
    """Why ``auto`` chose :attr:`factory` (recorded in the index's sidecar under ``auto``).

    Attributes:
        factory: the chosen FAISS factory string.
        rows, dim: the store's embedded rows and dim the choice was made for.
        max_memory_bytes: the budget (None: none given, size alone decides).
        train_rows: rows sampled to train the index (0: it needs no training).
        candidates: every factory considered, in order of preference.
        reason: one sentence saying why.
    """

    factory: str
    rows: int
    dim: int
    max_memory_bytes: int | None
    train_rows: int
    candidates: tuple[FactoryCandidate, ...]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "factory": self.factory,
            "rows": self.rows,
            "dim": self.dim,
            "max_memory_bytes": self.max_memory_bytes,
            "train_rows": self.train_rows,
            "candidates": [c.to_dict() for c in self.candidates],
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FactoryChoice:
        """The inverse of :meth:`to_dict` (types are checked by the sidecar reader)."""
        return cls(
            factory=data["factory"],
            rows=data["rows"],
            dim=data["dim"],
            max_memory_bytes=data["max_memory_bytes"],
            train_rows=data["train_rows"],
            candidates=tuple(FactoryCandidate(**c) for c in data["candidates"]),
            reason=data["reason"],
        )


def choose_nlist(rows: int) -> int:
    """Inverted lists for ``rows`` vectors: the power of two nearest ``4 * sqrt(rows)``, at most
    ``rows / 39`` (k-means needs 39 training points a list) and 65,536, at least 1."""
    target = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(rows))))
    return int(max(1, min(target, rows // POINTS_PER_CENTROID, MAX_NLIST)))


def _pq_sizes(dim: int) -> list[int]:
    """PQ sub-quantizer counts m for ``dim``, largest first: m divides dim, 2..8 dims each."""
    return [m for m in range(dim // 2, 0, -1) if dim % m == 0 and 2 <= dim // m <= 8]


def estimate_index_bytes(factory: str, rows: int, dim: int) -> int:
    """Bytes an lscindex index (``IndexIDMap2`` over ``factory``) of ``rows`` vectors of ``dim``
    takes in memory once built or loaded: codes, graph links, list ids, centroids, id maps.

    Knows the factories :func:`choose_factory` picks from: ``Flat``, ``HNSW{M}``,
    ``HNSW{M},SQ8``, ``IVF{nlist},Flat``, ``IVF{nlist},SQ8``, ``IVF{nlist},SQ4``,
    ``IVF{nlist},PQ{m}``. Within a few percent of measured RSS (FAISS 1.15, libstdc++).

    Raises:
        ConfigError: a factory it cannot estimate.

    Example:
        >>> estimate_index_bytes("Flat", 1000, 18)   # 72 bytes of vectors + 56 of ids a row
        132096
    """
    per_row, fixed = _estimate(factory, dim)
    return rows * (per_row + ID_MAP_BYTES_PER_ROW) + fixed + OVERHEAD_BYTES


def _estimate(factory: str, dim: int) -> tuple[int, int]:
    """(bytes per row without the id map, fixed bytes) of ``factory`` at ``dim``."""
    if factory == "Flat":
        return 4 * dim, 0
    if hnsw := re.fullmatch(r"HNSW(\d+)(,SQ8)?", factory):
        m = int(hnsw[1])
        # level 0 holds 2M links, each level above M more; a node reaches level l with
        # probability M**-l, so M/(M-1) on average; plus an int64 offset and an int32 level.
        links = 4 * (2 * m + m / (m - 1)) + 12
        storage = dim if hnsw[2] else 4 * dim
        return math.ceil(links) + storage, 8 * dim if hnsw[2] else 0
    if ivf := re.fullmatch(r"IVF(\d+),(Flat|SQ8|SQ4|PQ(\d+))", factory):
        nlist = int(ivf[1])
        codes = {"Flat": 4 * dim, "SQ8": dim, "SQ4": (dim + 1) // 2}.get(ivf[2])
        fixed = nlist * (4 * dim + 64)  # centroids, two vectors per list
        if codes is None:  # PQ{m}, 8 bits: one byte per sub-quantizer, 256 centroids each
            codes, fixed = int(ivf[3]), fixed + 256 * 4 * dim
        elif ivf[2] != "Flat":
            fixed += 8 * dim  # the scalar quantizer's per-dim range
        return codes + LIST_ID_BYTES, fixed
    raise ConfigError(
        f"cannot estimate the memory of factory {factory!r}; auto picks from Flat, HNSW<M>, "
        f"HNSW<M>,SQ8 and IVF<nlist>,Flat|SQ8|SQ4|PQ<m>"
    )


def _candidates(rows: int, dim: int) -> list[str]:
    """Factories worth considering for ``rows`` x ``dim``, most accurate first."""
    found = ["Flat"] if rows <= FLAT_MAX_ROWS else []
    if rows <= HNSW_MAX_ROWS:
        found += [f"HNSW{HNSW_M}", f"HNSW{HNSW_M},SQ8"]
    nlist = choose_nlist(rows)
    found += [f"IVF{nlist},{codes}" for codes in ("Flat", "SQ8", "SQ4")]
    if rows >= PQ_MIN_ROWS:
        found += [f"IVF{nlist},PQ{m}" for m in _pq_sizes(dim)]
    return found


def choose_factory(
    rows: int, dim: int, *, max_memory_bytes: int | None = None, train_size: int = 100_000
) -> FactoryChoice:
    """The FAISS factory ``auto`` builds for ``rows`` embedded vectors of ``dim``.

    Exact ``Flat`` up to 100,000 rows; above, the first of ``HNSW32`` (up to 10M rows),
    ``HNSW32,SQ8``, ``IVF{nlist},Flat``, ``IVF{nlist},SQ8``, ``IVF{nlist},SQ4``,
    ``IVF{nlist},PQ{m}`` whose :func:`estimate_index_bytes` is within ``max_memory_bytes``.
    Flat too is held to the budget (a tiny budget moves on to the approximate ones).

    Args:
        rows: vectors to index (>= 1). dim: their dim (>= 1).
        max_memory_bytes: memory budget of the built index; None: no budget.
        train_size: rows to sample for training; raised to 39 per IVF list (at most ``rows``).

    Returns:
        :class:`FactoryChoice`, with every candidate and its estimate.

    Raises:
        ConfigError: bad arguments, or no candidate fits the budget (names the smallest).

    Example:
        >>> choose_factory(5_000, 18).factory
        'Flat'
    """
    for name, value in (("rows", rows), ("dim", dim), ("train_size", train_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if max_memory_bytes is not None and (
        isinstance(max_memory_bytes, bool)
        or not isinstance(max_memory_bytes, int)
        or max_memory_bytes < 1
    ):
        raise ConfigError(
            f"max_memory_bytes must be a positive integer or None, got {max_memory_bytes!r}"
        )
    budget = max_memory_bytes if max_memory_bytes is not None else math.inf
    candidates = tuple(
        FactoryCandidate(f, size, size <= budget)
        for f in _candidates(rows, dim)
        for size in [estimate_index_bytes(f, rows, dim)]
    )
    chosen = next((c for c in candidates if c.fits), None)
    if chosen is None:
        smallest = min(candidates, key=lambda c: c.estimated_bytes)
        raise ConfigError(
            f"no index of {rows:,} rows of dim {dim} fits max_memory_bytes {max_memory_bytes:,}"
            f" (the smallest, {smallest.factory}, needs ~{smallest.estimated_bytes:,}); raise "
            f"the budget (--max-memory) to at least that"
        )
    ivf = re.match(r"IVF(\d+)", chosen.factory)
    nlist = int(ivf[1]) if ivf else 0
    trained = bool(ivf) or "SQ" in chosen.factory or "PQ" in chosen.factory
    train_rows = min(rows, max(train_size, POINTS_PER_CENTROID * nlist)) if trained else 0
    return FactoryChoice(
        factory=chosen.factory,
        rows=rows,
        dim=dim,
        max_memory_bytes=max_memory_bytes,
        train_rows=train_rows,
        candidates=candidates,
        reason=_reason(rows, candidates, chosen, max_memory_bytes),
    )


def _mib(n: int) -> str:
    """1536 -> '1.5 KiB' (binary units, as the budget is usually given: 256MiB, 2GiB)."""
    size, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            break
        size /= 1024
    return f"{size:,.0f} B" if unit == "B" else f"{size:,.1f} {unit}"


def _reason(
    rows: int,
    candidates: tuple[FactoryCandidate, ...],
    chosen: FactoryCandidate,
    budget: int | None,
) -> str:
    """One sentence: the size rule, the candidates passed over for the budget, the choice."""
    if rows <= FLAT_MAX_ROWS:
        size = f"{rows:,} rows <= {FLAT_MAX_ROWS:,}: exact search is cheap"
    else:
        size = f"{rows:,} rows > {FLAT_MAX_ROWS:,}: approximate search"
        if rows > HNSW_MAX_ROWS:
            size += f" (no HNSW above {HNSW_MAX_ROWS:,} rows: too slow to build)"
    skipped = candidates[: candidates.index(chosen)]
    if budget is None:
        return f"{size}; no memory budget: {chosen.factory} (~{_mib(chosen.estimated_bytes)})"
    over = ", ".join(f"{c.factory} (~{_mib(c.estimated_bytes)})" for c in skipped)
    passed = f"{over} exceed the {_mib(budget)} budget; " if skipped else ""
    return (
        f"{size}; {passed}{chosen.factory} (~{_mib(chosen.estimated_bytes)}) is the first that "
        f"fits the {_mib(budget)} budget"
    )
