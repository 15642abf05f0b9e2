"""Private: the JSON sidecar of an index (``emb.faiss.json``), written and read by
:mod:`lscindex.index`, which owns the format (docs/store-format.md).

Every key is checked for type and range before anything is done with it: the eight keys of the
first release are required; the later ones (recall, default knobs, the ``auto`` record) are
optional, so sidecars written before them still load.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lscindex._index_search import RecallTrial
from lscindex._location import Location, PathOrUrl, RemotePath, as_location
from lscindex.errors import StoreError
from lscindex.index_factory import FactoryChoice

__all__ = [
    "INDEX_FORMAT_VERSION",
    "IndexInfo",
    "read_faiss_index",
    "read_sidecar",
    "sidecar_path",
]

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


def _is_count(value: Any, low: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_fraction(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1


def _is_tuning(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, dict)
        and set(t) == {"knob", "value", "recall"}
        and t["knob"] in ("nprobe", "ef_search")
        and _is_count(t["value"])
        and _is_fraction(t["recall"])
        for t in value
    )


def _is_auto(value: Any) -> bool:
    keys = {"factory", "rows", "dim", "max_memory_bytes", "train_rows", "candidates", "reason"}
    return (
        isinstance(value, dict)
        and set(value) == keys
        and isinstance(value["factory"], str)
        and isinstance(value["reason"], str)
        and _is_count(value["rows"])
        and _is_count(value["dim"])
        and _is_count(value["train_rows"], 0)
        and (value["max_memory_bytes"] is None or _is_count(value["max_memory_bytes"]))
        and isinstance(value["candidates"], list)
        and all(
            isinstance(c, dict)
            and set(c) == {"factory", "estimated_bytes", "fits"}
            and isinstance(c["factory"], str)
            and _is_count(c["estimated_bytes"], 0)
            and isinstance(c["fits"], bool)
            for c in value["candidates"]
        )
    )


# Optional keys, added with format_version 1 still (sidecars written before lack them; null
# counts as absent): key -> (check, what is expected).
_OPTIONAL_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "recall": (_is_fraction, "a number in 0..1"),
    "recall_k": (_is_count, "an integer >= 1"),
    "recall_queries": (_is_count, "an integer >= 1"),
    "default_nprobe": (_is_count, "an integer >= 1"),
    "default_ef_search": (_is_count, "an integer >= 1"),
    "tuning": (_is_tuning, "a list of {knob: nprobe|ef_search, value: int >= 1, recall: 0..1}"),
    "auto": (_is_auto, "an object as docs/store-format.md describes"),
}
_OPTIONAL_KEYS = tuple(_OPTIONAL_CHECKS)


def _optional_fields(meta: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """(IndexInfo keyword arguments of the optional keys present, or the first problem)."""
    fields: dict[str, Any] = {}
    for key, (check, expected) in _OPTIONAL_CHECKS.items():
        value = meta.get(key)
        if value is None:
            continue
        if not check(value):
            return {}, f"{key} {json.dumps(value)[:80]}, expected {expected}"
        if key == "tuning":
            value = tuple(RecallTrial(t["knob"], t["value"], float(t["recall"])) for t in value)
        elif key == "auto":
            value = FactoryChoice.from_dict(value)
        elif key == "recall":
            value = float(value)
        fields[key] = value
    return fields, None


@dataclass(frozen=True)
class IndexInfo:
    """The sidecar of an index (see the module docstring and docs/store-format.md).

    Attributes:
        recall, recall_k, recall_queries: recall@k against exact search with that many rows,
            held out of the index while measured, as queries, at the default knob setting
            (None: not measured).
        default_nprobe, default_ef_search: the knob chosen so that recall@10 >= 0.95 (IVF /
            HNSW indexes; also saved in the FAISS file itself), used when a search names none.
        tuning: every setting tried for it, in order. auto: why ``factory="auto"`` chose it.
    """

    path: Location
    factory: str
    dim: int
    count: int
    store: str
    store_fingerprint: str
    sha256: str
    recall: float | None = None
    recall_k: int | None = None
    recall_queries: int | None = None
    default_nprobe: int | None = None
    default_ef_search: int | None = None
    tuning: tuple[RecallTrial, ...] = field(default=())
    auto: FactoryChoice | None = None

    def to_json(self) -> dict[str, Any]:
        """The sidecar's JSON object (optional keys only where they have a value)."""
        data: dict[str, Any] = {
            "format_version": INDEX_FORMAT_VERSION,
            "factory": self.factory,
            "metric": "inner_product",
            "dim": self.dim,
            "count": self.count,
            "store": self.store,
            "store_fingerprint": self.store_fingerprint,
            "sha256": self.sha256,
        }
        for key in _OPTIONAL_KEYS:
            value = getattr(self, key)
            if key == "tuning":
                value = [{"knob": t.knob, "value": t.value, "recall": t.recall} for t in value]
            elif key == "auto" and value is not None:
                value = value.to_dict()
            if value not in (None, []):
                data[key] = value
        return data


def sidecar_path(path: Location) -> Location:
    """``emb.faiss`` -> ``emb.faiss.json``."""
    return path.with_name(path.name + ".json")


def read_sidecar(path: PathOrUrl) -> IndexInfo:
    """The sidecar of index ``path``, every key's type and range checked (the index is not read).

    ``sha256`` is what the sidecar records, not yet compared with the file.

    Raises:
        StoreError: no index or sidecar, a sidecar that is not JSON, of another format version,
            or with a missing, mistyped or out-of-range key.
    """
    path = as_location(path, "index")
    side = sidecar_path(path)
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
    optional, problem = _optional_fields(meta) if problem is None else ({}, problem)
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
        **optional,
    )


def read_faiss_index(path: Location, info: IndexInfo) -> Any:
    """``faiss.read_index`` (a remote index is downloaded into memory and deserialised), its
    errors on a crafted or damaged file as one-line StoreErrors.

    FAISS sizes its arrays from counts inside the file before it reads them, so a 7 KB file
    can make it allocate gigabytes before it finds the data missing. The read runs under an
    address-space budget of 8x the file's size (at least 512 MiB) beyond what the process
    holds: what an index built by lscindex needs (its id maps included) fits, and a crafted
    count fails at once instead.
    """
    import faiss
    import numpy as np

    data = path.read_bytes() if isinstance(path, RemotePath) else None
    size = len(data) if data is not None else path.stat().st_size  # type: ignore[union-attr]
    try:
        with memory_budget(max(8 * size, MIN_READ_BUDGET_BYTES)):
            if data is not None:
                return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
            return faiss.read_index(str(path))
    except (RuntimeError, MemoryError) as exc:
        # FAISS prefixes its reason with the C++ function and source line: keep the reason.
        reason = re.sub(r"^Error in .*? at \S+:\d+: ", "", str(exc).strip().splitlines()[-1])
        if isinstance(exc, MemoryError) or "bad_alloc" in reason:
            reason = (
                f"it asks for more memory than a {size:,}-byte index can need: the file is "
                f"damaged or crafted"
            )
        raise StoreError(
            f"index {path} cannot be read by FAISS ({reason[:160]}); rebuild it with lscindex "
            f"index {info.store}"
        ) from None


MIN_READ_BUDGET_BYTES = 512 * 2**20


@contextmanager
def memory_budget(extra_bytes: int) -> Iterator[None]:
    """Cap this process's address space at its current size plus ``extra_bytes`` for the block
    (Linux; elsewhere a no-op): an allocation past it fails (FAISS raises ``bad_alloc``, Python
    ``MemoryError``) instead of taking the machine's memory. The cap is process-wide, so it is
    only used where nothing else runs beside: reading an index, before a query or a server
    starts."""
    try:
        import resource

        pages = int(Path("/proc/self/statm").read_text().split()[0])
        current = pages * os.sysconf("SC_PAGE_SIZE")
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        yield
        return
    limit = current + extra_bytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if soft != resource.RLIM_INFINITY and soft <= limit:  # already as strict
        yield
        return
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
