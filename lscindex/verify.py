"""Full integrity checks of a store, an index or a run (``lscindex verify PATH``).

:func:`~lscindex.store.open_store` and :func:`~lscindex.index.load_index` check cheaply what
would make an answer wrong (missing metadata, chunk files or rows; ids that are not store
rows). The functions here check everything: they read every chunk, count rows holding NaN/inf,
hash the index and compare its vectors with the store, parse a run's files. They never modify
anything and never raise on damage: each returns a :class:`VerifyReport` listing its checks.

Example:
    >>> report = verify_store("emb.zarr")                        # doctest: +SKIP
    >>> report.ok, [c.name for c in report.checks if not c.ok]   # doctest: +SKIP
    (True, [])
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

import numpy as np

from lscindex._location import (
    Location,
    PathOrUrl,
    as_location,
    location_sha256,
    recorded_location,
)
from lscindex.errors import LscIndexError, RunError, StoreError

__all__ = ["Check", "VerifyReport", "verify_index", "verify_path", "verify_run", "verify_store"]

T = TypeVar("T")
Kind = Literal["store", "index", "run"]
# Ids compared with the store's rows by reconstructing their vectors (exact indexes only).
VECTOR_SAMPLE = 256


class Check(NamedTuple):
    """One check of a report: its name, whether it passed, and what was found (one line)."""

    name: str
    ok: bool
    detail: str


@dataclass
class VerifyReport:
    """What :func:`verify_store`, :func:`verify_index` or :func:`verify_run` found.

    Attributes:
        path: what was checked. kind: ``"store"``, ``"index"`` or ``"run"``.
        checks: every check in the order it ran; a check that cannot run because an earlier
            one failed is left out.
    """

    path: Location
    kind: Kind
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return all(check.ok for check in self.checks)

    @property
    def first_failure(self) -> Check | None:
        return next((check for check in self.checks if not check.ok), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: path, kind, ok and the checks as objects."""
        return {
            "path": str(self.path),
            "kind": self.kind,
            "ok": self.ok,
            "checks": [check._asdict() for check in self.checks],
        }

    def raise_for_failure(self) -> None:
        """Raise RunError (runs) or StoreError naming the first failed check; nothing if ok."""
        failed = self.first_failure
        if failed is None:
            return
        error = RunError if self.kind == "run" else StoreError
        if str(self.path) in failed.detail:  # the detail names it already
            raise error(f"the {failed.name} check failed: {failed.detail}")
        raise error(f"{self.kind} {self.path} failed the {failed.name} check: {failed.detail}")

    def _run(self, name: str, check: Callable[[], tuple[T, str]]) -> T | None:
        """Run ``check`` (returning (value, detail)); record it; None when it failed."""
        try:
            value, detail = check()
        except LscIndexError as exc:
            self.checks.append(Check(name, False, str(exc)))
            return None
        except Exception as exc:  # damaged files raise whatever their reader raises
            lines = str(exc).strip().splitlines()
            text = lines[-1][:200] if lines else ""
            self.checks.append(Check(name, False, f"{type(exc).__name__}: {text}"))
            return None
        self.checks.append(Check(name, True, detail))
        return value


# -- stores -----------------------------------------------------------------------------------
def verify_store(path: PathOrUrl) -> VerifyReport:
    """Check a store in full: attributes, layout, metadata, every chunk, NaN/inf rows.

    Checks, in order: ``header`` (attributes typed and in range, store complete), ``layout``
    (zarr: the array's shape, chunks, dtype and codecs; parquet: row count and embedding
    column), ``metadata`` (every part there and readable, every column typed), ``rows`` (the
    metadata covers 0..count-1 exactly once), ``chunks`` (zarr: every chunk file there at its
    size and readable) and ``finite`` (no embedded row holds NaN or inf; failed images hold
    NaN). Chunks are read only once their file is known to have its size, so a crafted store
    allocates nothing beyond what is on disk.

    Returns:
        :class:`VerifyReport`; nothing is modified, damage is reported, not raised.
    """
    from lscindex import store as st

    path = as_location(path, "store")
    report = VerifyReport(path, "store")
    if not st.store_exists(path):
        report.checks.append(Check("header", False, f"store {path} does not exist"))
        return report
    header = report._run("header", lambda: _header(path))
    if header is None:
        return report
    parquet = st._is_parquet(path)
    embeddings: Any
    if parquet:
        found = report._run("layout", lambda: _parquet_layout(path, header))
        if found is None:
            return report
        embeddings, table = found
        metadata = report._run("metadata", lambda: _metadata_schema(table))
    else:
        embeddings = report._run("layout", lambda: _zarr_layout(path, header))
        if embeddings is None:
            return report
        metadata = report._run("metadata", lambda: _zarr_metadata(path, header))
    if metadata is None:
        return report
    good = report._run("rows", lambda: _rows(metadata, header.count))
    if metadata.num_rows != header.count:
        return report  # the chunk checks need a count that real metadata rows back
    scanned: list[tuple[np.ndarray, int]] = []

    def chunks() -> tuple[bool, str]:
        problems, rows, checked = _scan(path, header, embeddings, good, parquet=parquet)
        scanned.append((rows, checked))
        if problems:
            more = f" (and {len(problems) - 1:,} more)" if len(problems) > 1 else ""
            raise StoreError(f"{problems[0]}{more}; embed again with --overwrite")
        return True, f"{header.n_chunks:,} chunks present and readable"

    report._run("chunks", chunks)
    if scanned:
        report._run("finite", lambda: _finite(*scanned[0]))
    report._run("checksums", lambda: _checksums(header, None if parquet else embeddings))
    return report


def _checksums(header: Any, array: Any) -> tuple[bool, str]:
    """Whether the store's chunks carry checksums (the chunks check verified them)."""
    from lscindex._store_reading import CHECKSUMMED_CODECS, codec_names

    if array is not None and codec_names(array) == CHECKSUMMED_CODECS:
        return True, "every chunk carries a crc32c, verified on every read"
    if array is None and header.checksums:
        return True, "every page carries a CRC, verified on every read"
    return True, (
        "none: the store was written before lscindex stored checksums, so a changed byte "
        "reads as another value; embed again with --overwrite to add them"
    )


def _header(path: Location) -> tuple[Any, str]:
    from lscindex.store import read_header

    h = read_header(path)
    detail = (
        f"format {h.format_version}, {h.count:,} rows of dim {h.dim} ({h.dtype}), "
        f"{h.n_chunks:,} chunks of {h.chunk_rows:,} rows, run {h.run}"
    )
    return h, detail


def _parquet_layout(path: Location, header: Any) -> tuple[tuple[np.ndarray, Any], str]:
    from lscindex._store_reading import read_parquet_store

    embeddings, metadata = read_parquet_store(path, header)
    return (embeddings, metadata), f"{header.count:,} rows with a {header.dim}-wide embedding"


def _zarr_layout(path: Location, header: Any) -> tuple[Any, str]:
    from lscindex._store_reading import zarr_embeddings

    array = zarr_embeddings(path, header)
    return array, f"array {tuple(array.shape)}, chunks {tuple(array.chunks)}, {array.dtype}"


def _metadata_schema(metadata: Any) -> tuple[Any, str]:
    from lscindex._store_reading import metadata_schema_problem

    problem = metadata_schema_problem(metadata)
    if problem:
        raise StoreError(f"{problem}; embed again with --overwrite")
    return metadata, f"{metadata.num_rows:,} rows, every column typed"


def _zarr_metadata(path: Location, header: Any) -> tuple[Any, str]:
    from lscindex._store_reading import read_zarr_metadata

    metadata, detail = _metadata_schema(read_zarr_metadata(path, header))
    return metadata, f"{header.n_chunks:,} parts, {detail}"


def _rows(metadata: Any, count: int) -> tuple[np.ndarray, str]:
    from lscindex._store_reading import ok_rows, row_coverage_problem

    problem = row_coverage_problem(metadata.column("row").to_numpy(), count)
    if problem:
        raise StoreError(f"{problem}; embed again with --overwrite")
    good = ok_rows(metadata, count)
    failed = count - int(good.sum())
    return good, f"rows 0..{count - 1} each once; {failed:,} failed images (status error)"


def _scan(
    path: Location, header: Any, embeddings: Any, good: np.ndarray | None, *, parquet: bool
) -> tuple[list[str], np.ndarray, int]:
    """(damaged chunks, (K,) embedded rows holding NaN/inf, embedded rows read), each chunk
    read once.

    ``good``: (count,) bool by row, or None (unknown: every row counts as embedded). A zarr
    chunk is read only when its file has its size (see ``chunk_file_problems``).
    """
    from lscindex._store_reading import chunk_file_problems, chunk_sizes

    problems: list[str] = []
    skip: set[int] = set()
    if not parquet:
        damaged = chunk_file_problems(path, header, embeddings, good)
        problems = [line for _, line in damaged]
        skip = {chunk for chunk, _ in damaged}
        # every row failed: zarr wrote no file
        skip |= {c for c, size in enumerate(chunk_sizes(path, embeddings, header)) if size is None}
    bad = []
    checked = 0
    for chunk in range(header.n_chunks):
        start, stop = header.chunk_range(chunk)
        if chunk in skip:
            continue  # damaged (named above), or no file
        try:
            block = np.asarray(embeddings[start:stop], dtype=np.float32)
        except Exception as exc:  # a file of the right size zarr still cannot decode
            what = "fails its checksum" if "checksum" in str(exc) else f"is unreadable ({exc})"
            problems.append(f"chunk {chunk} (rows {start}..{stop - 1}) {what}")
            continue
        embedded = good[start:stop] if good is not None else np.ones(stop - start, dtype=bool)
        checked += int(embedded.sum())
        bad.append(np.flatnonzero(embedded & ~np.isfinite(block).all(axis=1)) + start)
    return problems, np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64), checked


def _finite(rows: np.ndarray, checked: int) -> tuple[bool, str]:
    if len(rows):
        first = ", ".join(str(int(r)) for r in rows[:3])
        raise StoreError(
            f"{len(rows):,} embedded rows hold NaN or inf (first: row {first}); embed again "
            f"with --overwrite"
        )
    return True, f"{checked:,} embedded rows read, all finite"


# -- indexes ----------------------------------------------------------------------------------
def verify_index(path: PathOrUrl, store: PathOrUrl | None = None) -> VerifyReport:
    """Check an index in full against its sidecar and its store.

    Checks: ``sidecar`` (JSON, keys typed), ``sha256`` (the file is the one the sidecar
    describes), ``store`` (the store opens: ``store``, else the one the sidecar names, looked
    for as written, beside the index and by name beside the index), ``fingerprint`` (the index
    was built from that store), ``read`` (FAISS reads it), ``ids`` (size and dim as the
    sidecar says; distinct ids, each a row the store embedded) and ``vectors`` (for exact
    indexes, a sample of stored vectors equals the store's rows).

    Returns:
        :class:`VerifyReport`; nothing is modified.
    """
    path = as_location(path, "index")
    report = VerifyReport(path, "index")
    info = report._run("sidecar", lambda: _sidecar(path))
    if info is None:
        return report

    def digest() -> tuple[bool, str]:
        found = location_sha256(path)
        if found != info.sha256:
            raise StoreError(
                f"sha256 {found[:12]}... but the sidecar says {info.sha256[:12]}...: the file "
                f"is corrupted or swapped; rebuild it with lscindex index {info.store}"
            )
        return True, f"{found[:16]}... matches the sidecar"

    hashed = report._run("sha256", digest)
    opened = report._run("store", lambda: _index_store(path, info.store, store))
    if opened is not None:

        def fingerprint() -> tuple[bool, str]:
            if info.store_fingerprint != opened.fingerprint:
                raise StoreError(
                    f"built from store fingerprint {info.store_fingerprint}, but {opened.path} "
                    f"has {opened.fingerprint}; rebuild it with lscindex index {opened.path}"
                )
            return True, f"{opened.fingerprint} ({opened.path})"

        report._run("fingerprint", fingerprint)
    if not hashed:
        return report  # never hand FAISS a file that is not the one described
    index = report._run("read", lambda: _read(path, info))
    if index is None:
        return report
    ids_ok = report._run("ids", lambda: _ids(index, info, opened))
    if ids_ok and opened is not None:
        report._run("vectors", lambda: _vectors(index, opened))
    return report


def _sidecar(path: Location) -> tuple[Any, str]:
    from lscindex.index import read_sidecar

    info = read_sidecar(path)
    return info, f"{info.factory}, {info.count:,} vectors of dim {info.dim}, store {info.store}"


def _index_store(path: Location, recorded: str, given: PathOrUrl | None) -> tuple[Any, str]:
    from lscindex.store import open_store, store_exists

    if given is None:
        named = recorded_location(recorded, "store", f"the sidecar of {path}")
    else:
        named = as_location(given, "store")
    candidates = [named]
    if given is None and not (isinstance(named, Path) and named.is_absolute()):
        candidates += [path.parent / str(named)] if isinstance(named, Path) else []
        candidates.append(path.parent / named.name)
    found = next((c for c in candidates if store_exists(c)), None)
    if found is None:
        raise StoreError(
            f"store {candidates[0]} does not exist (the sidecar names {recorded}); pass "
            f"--store STORE"
        )
    opened = open_store(found)
    return opened, f"{found} opens ({opened.header.count:,} rows)"


def _read(path: Location, info: Any) -> tuple[Any, str]:
    from lscindex.index import read_faiss_index

    index = read_faiss_index(path, info)
    return index, f"{type(index).__name__}, {int(index.ntotal):,} vectors"


def _ids(index: Any, info: Any, store: Any) -> tuple[bool, str]:
    from lscindex.index import index_problems

    problems = index_problems(index, info, store)
    if problems:
        target = store.path if store is not None else info.store
        raise StoreError(
            f"the index {problems[0]}; rebuild it with lscindex index {target}"
            + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else "")
        )
    where = f"rows of {store.path}" if store is not None else "not compared: no store"
    return True, f"{int(index.ntotal):,} distinct ids, {where}"


def _vectors(index: Any, store: Any) -> tuple[bool, str]:
    """A seeded sample of ids: the vector the index holds is the store's row (exact indexes)."""
    import faiss

    base = faiss.downcast_index(index.index)
    if type(base).__name__ not in ("IndexFlat", "IndexFlatIP", "IndexFlatL2", "IndexHNSWFlat"):
        return True, f"not compared: {type(base).__name__} stores approximate vectors"
    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    sample = np.sort(np.random.default_rng(0).permutation(ids)[:VECTOR_SAMPLE])
    stored = np.asarray(store.embeddings[sample], dtype=np.float32)
    held = np.stack([index.reconstruct(int(i)) for i in sample]) if len(sample) else stored
    wrong = sample[np.abs(held - stored).max(axis=1, initial=0.0) > 1e-6]
    if len(wrong):
        raise StoreError(
            f"{len(wrong)} of {len(sample)} sampled ids hold another vector than their store "
            f"row (first: id {int(wrong[0])}); rebuild it with lscindex index {store.path}"
        )
    return True, f"{len(sample)} sampled ids hold their store row's vector"


# -- runs -------------------------------------------------------------------------------------
def verify_run(path: str | os.PathLike[str]) -> VerifyReport:
    """Check a run directory: its config, class names, weights and assignment table.

    Checks: ``config`` (config.json parses, a known format version, a valid model config),
    ``classes`` (one name per class, likewise the class keys), ``weights`` (the safetensors
    header of model.safetensors parses and covers the file, its tensors have the names and
    shapes the config's model holds and the contents checksum written with them),
    ``checkpoints`` (the newest checkpoint's state and tensors are whole) and
    ``assignment`` (data-assigned runs: the table is one (n_classes,) int64 tensor of distinct
    vectors of the system, the one the weights' metadata names by sha256).

    Returns:
        :class:`VerifyReport`; nothing is modified.
    """
    path = Path(path)
    report = VerifyReport(path, "run")
    if not path.is_dir():
        report.checks.append(Check("config", False, f"run directory {path} does not exist"))
        return report
    model = report._run("config", lambda: _run_config(path))
    if model is not None:
        report._run("classes", lambda: _classes(path, model.n_classes))
    metadata = report._run("weights", lambda: _weights(path, model))
    if model is not None and metadata is not None:
        report._run("assignment", lambda: _assignment(path, model, metadata))
    report._run("checkpoints", lambda: _checkpoints(path))
    return report


def _run_config(path: Path) -> tuple[Any, str]:
    from lscindex.model import ModelConfig
    from lscindex.run import load_run_config

    try:
        config = load_run_config(path)
    except ValueError as exc:
        if isinstance(exc, LscIndexError):
            raise
        raise RunError(f"{path / 'config.json'} is not valid JSON ({exc}); retrain") from None
    if not isinstance(config.get("model"), dict):
        raise RunError(f"{path / 'config.json'} has no model object; the run is damaged")
    try:
        model = ModelConfig.from_dict(config["model"])
        dim = model.out_dim
    except (TypeError, ValueError) as exc:
        raise RunError(f"{path / 'config.json'} has an invalid model config ({exc})") from None
    system = model.system or {}
    what = f"system {system.get('kind')} (dim {dim})" if model.system else "softmax head"
    return model, f"{model.backbone}, {model.n_classes:,} classes, {what}"


def _classes(path: Path, n_classes: int) -> tuple[bool, str]:
    from lscindex.run import CLASS_KEYS, CLASSES

    for name in (CLASSES, CLASS_KEYS):
        file = path / name
        if name == CLASS_KEYS and not file.is_file():
            continue
        try:
            names = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise RunError(f"{file} cannot be read ({exc}); the run is damaged") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise RunError(f"{file} is not a list of names; the run is damaged")
        if len(names) != n_classes:
            raise RunError(f"{file} has {len(names):,} names for {n_classes:,} classes")
    return True, f"{n_classes:,} class names"


def _weights(path: Path, model: Any) -> tuple[dict[str, str], str]:
    """The header parses and covers the file; with a valid ``model`` config, every tensor has
    the name and shape that config's model holds (built on the meta device: nothing allocated)."""
    import torch
    from safetensors import safe_open

    from lscindex.model import create_model
    from lscindex.run import CONFIG, WEIGHTS, check_weights_fit

    file = path / WEIGHTS
    if not file.is_file():
        raise RunError(f"{file} does not exist; train or resume the run")
    try:
        with safe_open(str(file), framework="numpy") as f:
            names, metadata = list(f.keys()), dict(f.metadata() or {})
    except Exception as exc:  # safetensors' own error on a truncated or crafted header
        raise RunError(f"{file} is damaged ({str(exc)[:160]}); resume or retrain the run") from None
    if not names:
        raise RunError(f"{file} holds no tensors; resume or retrain the run")
    fits = ""
    if model is not None:
        with torch.device("meta"):
            check_weights_fit(create_model(model), file, path / CONFIG)
        fits = ", shapes fit the config"
    step = metadata.get("global_step", "?")
    contents = _contents(file, metadata)
    return metadata, f"{len(names)} tensors, header intact{fits}, {contents} (step {step})"


def _contents(file: Path, metadata: dict[str, str]) -> str:
    """Whether a safetensors file's tensors still have the sha256 written with them."""
    from safetensors.torch import load_file

    from lscindex.run import TENSORS_SHA256, tensors_sha256

    expected = metadata.get(TENSORS_SHA256)
    if expected is None:
        return "no contents checksum (written before lscindex stored one)"
    try:
        found = tensors_sha256(load_file(str(file)))
    except Exception as exc:  # safetensors' own error on data that does not parse
        raise RunError(f"{file} is damaged ({str(exc)[:160]}); resume or retrain the run") from None
    if found != expected:
        raise RunError(
            f"{file} holds other tensors than it was written with (sha256 {found[:16]}..., "
            f"recorded {expected[:16]}...): a byte changed after training; restore it or retrain"
        )
    return "contents checksum verified"


def _checkpoints(path: Path) -> tuple[bool, str]:
    """The newest checkpoint (what --resume continues from) is whole: latest.json names a
    folder whose state.json parses and whose tensors have their checksums."""
    from safetensors import safe_open

    from lscindex.run import CHECKPOINTS

    root = path / CHECKPOINTS
    if not root.is_dir():
        return True, "none (the run keeps no resumable state)"
    try:
        name = json.loads((root / "latest.json").read_text())["checkpoint"]
        folder = root / str(name)
        step = json.loads((folder / "state.json").read_text())["global_step"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunError(
            f"{root} has no readable newest checkpoint ({exc}); --resume cannot continue the "
            f"run: retrain it"
        ) from None
    files = sorted(folder.glob("*.safetensors"))
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        _contents(file, metadata)
    return True, f"{name} (step {step}): state and {len(files)} tensor files intact"


def _assignment(path: Path, model: Any, metadata: dict[str, str]) -> tuple[bool, str]:
    from safetensors.numpy import load_file

    from lscindex.assignment import table_sha256
    from lscindex.run import ASSIGNMENT, WEIGHTS
    from lscindex.systems import VectorSystem

    file = path / ASSIGNMENT
    if model.system is None or model.system.get("assignment") != "data":
        return True, "the codec assigns the vectors (no table)"
    if not file.is_file():
        raise RunError(f"{file} does not exist but the run uses a data assignment; resume it")
    try:
        tensors = load_file(str(file))
    except Exception as exc:
        raise RunError(f"{file} is damaged ({str(exc)[:160]}); resume the run") from None
    table = tensors.get("table")
    if set(tensors) != {"table"} or table is None or table.dtype != np.int64:
        raise RunError(f"{file} is not one int64 tensor 'table'; resume or retrain the run")
    VectorSystem.from_dict(model.system, table=table)  # length, range, distinct
    named = metadata.get("assignment_sha256")
    if named != table_sha256(table):
        raise RunError(
            f"{file} has sha256 {table_sha256(table)} but {path / WEIGHTS} was trained with "
            f"{named}; resume the run to write both again"
        )
    return True, f"{len(table):,} distinct vectors, the table the weights name"


# -- any path ---------------------------------------------------------------------------------
def what_is(path: PathOrUrl) -> Kind:
    """``"store"``, ``"index"`` or ``"run"``: what ``path`` holds, by its files.

    Raises:
        StoreError: none of the three.
    """
    from lscindex.run import CONFIG
    from lscindex.store import _is_parquet

    path = as_location(path, "path")
    if path.is_dir() and (path / CONFIG).is_file():
        return "run"
    if path.is_dir() and (path / "zarr.json").is_file():
        return "store"
    if _is_parquet(path) and (path.is_file() or path.with_name(path.name + ".parts").is_dir()):
        return "store"
    if path.is_file() and (path.suffix == ".faiss" or path.with_name(path.name + ".json").exists()):
        return "index"
    raise StoreError(
        f"{path} is neither a store (.zarr folder, .parquet file), an index (.faiss with its "
        f".json sidecar) nor a run directory (with config.json); check the path"
    )


def verify_path(path: PathOrUrl, *, store: PathOrUrl | None = None) -> VerifyReport:
    """:func:`verify_store`, :func:`verify_index` or :func:`verify_run`, by what ``path`` is.

    ``store``: the store of an index (default: the one its sidecar names).

    Raises:
        StoreError: ``path`` is none of the three.
    """
    kind = what_is(path)
    if kind == "store":
        return verify_store(path)
    if kind == "index":
        return verify_index(path, store)
    return verify_run(str(path))  # runs are local folders
