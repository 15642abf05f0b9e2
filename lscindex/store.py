"""The embedding store: a preallocated, chunk-aligned zarr v3 array plus parquet metadata.

On-disk layout (documented in docs/store-format.md)::

    emb.zarr/                         zarr v3 group; attributes["lscindex"] describe the store
      embeddings/                     (N, dim) float16|float32, chunks (chunk_rows, dim), no codec
      metadata/part-000000.parquet    rows [0, chunk_rows) of the metadata, one file per chunk

    emb.parquet                       single file: metadata columns + fixed-size-list "embedding"
    emb.parquet.parts/                (while being written) one parquet file per chunk

A chunk counts as done once its metadata part exists; parts are written atomically after the
chunk's embeddings, so an interrupted job resumes at the first unfinished chunk, and several
processes can write disjoint chunk ranges of one store without locks. Plain ``zarr.open_group``
and ``pyarrow.parquet.read_table`` read everything.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lscindex._location import (
    Location,
    PathOrUrl,
    as_location,
    parquet_rows,
    read_parquet,
    read_parquet_schema,
    remove_tree,
    write_bytes,
    zarr_store,
)
from lscindex.errors import StoreError

__all__ = [
    "METADATA_SCHEMA",
    "STORE_FORMAT_VERSION",
    "EmbeddingArray",
    "EmbeddingStore",
    "StoreWriter",
    "balanced_chunk_rows",
    "metadata_table",
    "open_store",
]

STORE_FORMAT_VERSION = 1
ATTRS_KEY = "lscindex"
METADATA_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("id", pa.string()),
        ("path", pa.string()),
        ("label", pa.int64()),
        ("label_name", pa.string()),
        ("pred", pa.int64()),
        ("pred_name", pa.string()),
        ("score", pa.float32()),
        ("novel", pa.bool_()),
        ("status", pa.string()),
        ("error", pa.string()),
    ]
)
DTYPES = ("float16", "float32")
# Bounds on what a store's attributes may claim, checked before anything is sized from them;
# the real bounds are the array's shape and the metadata's rows, checked next.
MAX_COUNT = 1 << 40
MAX_DIM = 1 << 20


def metadata_table(
    rows: Sequence[int] | np.ndarray,
    *,
    ids: Sequence[str],
    paths: Sequence[str],
    labels: Sequence[int],
    label_names: Sequence[str | None],
    pred: np.ndarray,
    score: np.ndarray,
    novel: np.ndarray,
    errors: Sequence[str | None],
    class_names: Sequence[str],
) -> pa.Table:
    """The metadata of a run of rows, in :data:`METADATA_SCHEMA`.

    Args:
        rows: (B,) store row numbers. ids, paths, labels, label_names: per row, from the inputs
            (label -1 / name None where there is none).
        pred: (B,) int class ids (-1: none, as for a plain timm encoder). score: (B,) float
            cosine (ce: probability). novel: (B,) bool.
        errors: per row, the one-line reason its image failed, or None/"" where it was embedded.
        class_names: the run's class names, indexed by ``pred``.

    Returns:
        A table with one row per input. A failed row gets status ``"error"``, its message, pred
        -1, pred_name null, score NaN and novel False, whatever ``pred``/``score``/``novel`` hold.
    """
    ok = np.array([not e for e in errors], dtype=bool)
    pred = np.where(ok, np.asarray(pred), -1).astype(np.int64)
    columns = {
        "row": np.asarray(rows, dtype=np.int64),
        "id": list(ids),
        "path": list(paths),
        "label": np.asarray(labels, dtype=np.int64),
        "label_name": list(label_names),
        "pred": pred,
        "pred_name": [
            class_names[p] if good and p >= 0 else None for p, good in zip(pred, ok, strict=True)
        ],
        "score": np.where(ok, np.asarray(score, dtype=np.float32), np.float32("nan")),
        "novel": ok & np.asarray(novel, dtype=bool),
        "status": ["ok" if good else "error" for good in ok],
        "error": [e or None for e in errors],
    }
    return pa.table(columns, schema=METADATA_SCHEMA)


def _is_parquet(path: PathOrUrl) -> bool:
    return str(path).lower().endswith(".parquet")


def _part_name(chunk: int) -> str:
    return f"part-{chunk:06d}.parquet"


@dataclass(frozen=True)
class StoreHeader:
    """What a store's attributes record (``attrs["lscindex"]``)."""

    format_version: int
    store_id: str
    count: int
    dim: int
    dtype: str
    chunk_rows: int
    system: dict[str, Any] | None
    run: str
    run_fingerprint: str
    inputs_sha256: str
    complete: bool
    # The store's earlier versions, oldest first, one per append: {"store_id", "count",
    # "inputs_sha256"} as they were before rows were added. Rows below each count are unchanged,
    # so an index of an earlier version is brought up to date by adding the rows after it.
    history: tuple[dict[str, Any], ...] = ()
    # A store embedded by a plain timm model (no run): its spec (lscindex.features.FeatureSpec).
    encoder: dict[str, Any] | None = None
    # Written with a checksum of every chunk (zarr: crc32c codec; parquet: page CRCs). Stores
    # from before lack the key: False, read as before, and verify says they have none.
    checksums: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "history": [dict(h) for h in self.history]}

    @property
    def appending_from(self) -> int | None:
        """The first new row of an append in progress (None when no append is unfinished)."""
        return None if self.complete or not self.history else int(self.history[-1]["count"])

    @property
    def n_chunks(self) -> int:
        return max(1, -(-self.count // self.chunk_rows))

    def chunk_range(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_rows
        return start, min(start + self.chunk_rows, self.count)


def balanced_chunk_rows(count: int, max_rows: int) -> int:
    """Rows per chunk for ``count`` rows in chunks of at most ``max_rows``, all nearly full.

    zarr stores a partial last chunk at full size, so 5,000 rows in chunks of 4,096 would take
    the space of 8,192. Spreading the rows evenly over the same number of chunks bounds the
    padding to fewer rows than there are chunks.

    Example:
        >>> balanced_chunk_rows(5000, 4096), balanced_chunk_rows(8192, 4096)
        (2500, 4096)
    """
    n_chunks = max(1, -(-count // max_rows))
    return max(1, -(-count // n_chunks))


class StoreWriter:
    """Creates or resumes a store and writes it chunk by chunk (any process, any chunk).

    Use :meth:`create` (fresh) or :meth:`resume` (same inputs, run and settings), then
    :meth:`write_chunk` for each chunk in :meth:`pending_chunks`, then :meth:`finalize`.
    """

    def __init__(self, path: Location, header: StoreHeader) -> None:
        self.path = path
        self.header = header
        self.parquet = _is_parquet(path)
        self._array: Any = None
        if not self.parquet:
            import zarr

            from lscindex._store_reading import check_zarr_codecs

            hint = _reembed_hint(path, header.run)
            try:
                self._array = zarr.open_array(zarr_store(path / "embeddings"), mode="r+")
            except Exception as exc:  # a damaged or crafted zarr.json (zarr's own checks)
                raise StoreError(
                    f"store {path} has no readable embeddings array ({_one_line(exc)}); {hint}"
                ) from None
            check_zarr_codecs(self._array, path, hint)

    @property
    def parts_dir(self) -> Location:
        if self.parquet:
            return self.path.with_name(self.path.name + ".parts")
        return self.path / "metadata"

    @classmethod
    def create(cls, path: PathOrUrl, header: StoreHeader) -> StoreWriter:
        """Preallocate a new store (the caller checked ``path`` may be written)."""
        path = as_location(path, "store")
        if header.dtype not in DTYPES:
            raise StoreError(f"dtype must be one of {DTYPES}, got {header.dtype!r}")
        if _is_parquet(path):
            parts = path.with_name(path.name + ".parts")
            remove_tree(parts)
            parts.mkdir(parents=True)
            write_bytes(parts / "header.json", json.dumps(header.to_dict()).encode())
        else:
            import zarr
            from zarr.codecs import Crc32cCodec

            remove_tree(path)
            group = zarr.open_group(zarr_store(path), mode="w", zarr_format=3)
            group.create_array(
                "embeddings",
                shape=(header.count, header.dim),
                chunks=(header.chunk_rows, header.dim),
                dtype=header.dtype,
                compressors=[Crc32cCodec()],  # not compression: a checksum after each chunk
                fill_value=float("nan"),
                dimension_names=("row", "dim"),
            )
            group.attrs[ATTRS_KEY] = header.to_dict()
            (path / "metadata").mkdir(exist_ok=True)
        return cls(path, header)

    @classmethod
    def resume(cls, path: PathOrUrl) -> StoreWriter:
        """Open an unfinished store for writing its remaining chunks."""
        path = as_location(path, "store")
        writer = cls(path, read_header(path, allow_incomplete=True))
        writer._grow()
        return writer

    @classmethod
    def begin_append(cls, path: PathOrUrl, header: StoreHeader) -> StoreWriter:
        """Start adding rows to a finished zarr store: ``header`` is its next version
        (``count`` grown, ``complete`` False, the current version last in ``history``).

        The attributes are written first, then the array grows: a store interrupted in between
        is grown again by :meth:`resume`. Rows below the old count are never written again.
        """
        path = as_location(path, "store")
        if _is_parquet(path) or header.appending_from is None:
            raise StoreError(f"store {path}: only a zarr store is appended to")
        import zarr

        zarr.open_group(zarr_store(path), mode="r+").attrs[ATTRS_KEY] = header.to_dict()
        writer = cls(path, header)
        writer._grow()
        return writer

    def _grow(self) -> None:
        """Give the embeddings array the header's row count, if an append has not yet."""
        if self._array is not None and self._array.shape[0] != self.header.count:
            self._array.resize((self.header.count, self.header.dim))

    def done_chunks(self) -> set[int]:
        """Chunks whose metadata part holds every row of the chunk.

        The part of a store's last chunk holds fewer rows while an append fills that chunk up.
        """
        done = set()
        if self.parts_dir.is_dir():
            for p in self.parts_dir.glob("part-*.parquet"):
                chunk = int(p.stem.split("-")[1])
                if chunk >= self.header.n_chunks:
                    continue
                start, stop = self.header.chunk_range(chunk)
                if self.header.appending_from is None or stop <= self.header.appending_from:
                    done.add(chunk)  # parts are written whole: no need to read this one
                elif parquet_rows(p) == stop - start:
                    done.add(chunk)
        return done

    def pending_chunks(self) -> list[int]:
        done = self.done_chunks()
        return [c for c in range(self.header.n_chunks) if c not in done]

    def write_chunk(self, chunk: int, embeddings: np.ndarray, metadata: pa.Table) -> None:
        """Write one chunk: embeddings (rows, dim) then, atomically, its metadata part.

        During an append, the chunk holding the store's old last rows is given only its new
        rows: the old ones are read back and the part is replaced, old and new rows together.
        """
        start, stop = self.header.chunk_range(chunk)
        first = self.header.appending_from
        if first is not None and start < first < stop and metadata.num_rows == stop - first:
            embeddings, metadata = self._with_old_rows(chunk, start, first, embeddings, metadata)
        if embeddings.shape != (stop - start, self.header.dim) or metadata.num_rows != stop - start:
            raise StoreError(
                f"chunk {chunk} needs {stop - start} rows of dim {self.header.dim}, got "
                f"{embeddings.shape} and {metadata.num_rows} metadata rows"
            )
        data = embeddings.astype(self.header.dtype)
        if self.parquet:
            column = pa.FixedSizeListArray.from_arrays(pa.array(data.reshape(-1)), self.header.dim)
            metadata = metadata.append_column("embedding", column)
        else:
            self._array[start:stop] = data
        buffer = io.BytesIO()
        pq.write_table(metadata, buffer, write_page_checksum=True)
        write_bytes(self.parts_dir / _part_name(chunk), buffer.getvalue())

    def _with_old_rows(
        self, chunk: int, start: int, first: int, embeddings: np.ndarray, metadata: pa.Table
    ) -> tuple[np.ndarray, pa.Table]:
        """The rows ``start..first-1`` already in the store, put before the new ones."""
        part = read_parquet(self.parts_dir / _part_name(chunk))
        old = part.filter(pc.less(part.column("row"), first)).sort_by("row")
        if old.num_rows != first - start:
            raise StoreError(
                f"store {self.path}: chunk {chunk} holds {old.num_rows} of its {first - start} "
                f"rows from before the append; {_reembed_hint(self.path, self.header.run)}"
            )
        before = np.asarray(self._array[start:first])
        metadata = pa.concat_tables(
            [old.select(metadata.column_names).cast(metadata.schema), metadata]
        )
        return np.concatenate([before.astype(embeddings.dtype), embeddings]), metadata

    def finalize(self) -> StoreHeader:
        """Mark the store complete (parquet: assemble the single file). All chunks must be done."""
        missing = self.pending_chunks()
        if missing:
            raise StoreError(f"store {self.path} still lacks chunks {missing[:5]}; run embed again")
        header = StoreHeader(**{**self.header.to_dict(), "complete": True})
        if self.parquet:
            tables = [read_parquet(self.parts_dir / _part_name(c)) for c in range(header.n_chunks)]
            table = pa.concat_tables(tables).replace_schema_metadata(
                {ATTRS_KEY.encode(): json.dumps(header.to_dict()).encode()}
            )
            buffer = io.BytesIO()
            pq.write_table(table, buffer, write_page_checksum=True)
            write_bytes(self.path, buffer.getvalue())
            remove_tree(self.parts_dir)
        else:
            import zarr

            group = zarr.open_group(zarr_store(self.path), mode="r+")
            group.attrs[ATTRS_KEY] = header.to_dict()
        self.header = header
        return header


def _one_line(exc: BaseException) -> str:
    """The last line of an exception's message, shortened: what the user needs in one line."""
    lines = str(exc).strip().splitlines()
    text = lines[-1] if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _reembed_hint(path: Location, run: str = "RUN") -> str:
    return (
        f"the store is damaged: embed again with lscindex embed DATA --run {run} --out {path} "
        f"--overwrite (lscindex verify {path} lists every problem)"
    )


def read_header(path: PathOrUrl, *, allow_incomplete: bool = False) -> StoreHeader:
    """The header of a store (zarr attributes, parquet schema metadata or an unfinished parquet).

    Raises:
        StoreError: not a store, unfinished (unless ``allow_incomplete``), another format
            version, or attributes that are unreadable, incomplete, mistyped or out of range.
    """
    path = as_location(path, "store")
    raw: Any = None
    try:
        if _is_parquet(path):
            parts = path.with_name(path.name + ".parts")
            if allow_incomplete and (parts / "header.json").is_file():
                raw = json.loads((parts / "header.json").read_text())
            elif path.is_file():
                meta = read_parquet_schema(path).metadata or {}
                if ATTRS_KEY.encode() in meta:
                    raw = json.loads(meta[ATTRS_KEY.encode()])
        elif (path / "zarr.json").is_file():
            import zarr

            group = zarr.open_group(zarr_store(path, read_only=True), mode="r")
            raw = dict(group.attrs).get(ATTRS_KEY)
    except Exception as exc:  # any damage to the files the header lives in
        raise StoreError(
            f"store {path} has unreadable attributes ({_one_line(exc)}); {_reembed_hint(path)}"
        ) from None
    if raw is None:
        raise StoreError(
            f"{path} is not an lscindex embedding store; create one with "
            f"lscindex embed --out {path}"
        )
    from lscindex._store_reading import checked_header

    header = checked_header(raw, path)
    if not header.complete and not allow_incomplete:
        raise StoreError(
            f"store {path} is unfinished ({header.count:,} rows planned); run the same lscindex "
            f"embed command again to complete it"
        )
    return header


def store_exists(path: PathOrUrl) -> bool:
    path = as_location(path, "store")
    if _is_parquet(path):  # a folder named x.parquet is something (a Hive dataset): not free
        return path.exists() or path.is_symlink() or path.with_name(path.name + ".parts").is_dir()
    return path.exists()


class EmbeddingArray:
    """A store's (N, dim) embeddings, read on demand: the same type for zarr and parquet stores.

    Indexing returns numpy in the store's dtype (float16 or float32): a slice
    (``emb[:1000]``), a row number, or a sequence/array of row numbers in any order
    (``emb[[7, 3]]``, read with zarr's orthogonal indexing for a zarr store).
    ``np.asarray(emb)`` reads everything. A zarr store reads only the chunks asked for; a
    parquet store is held in memory (a parquet file is read whole).

    Example:
        >>> emb = open_store("emb.zarr").embeddings   # doctest: +SKIP
        >>> emb.shape, emb.dtype, emb[[5, 2]].shape    # doctest: +SKIP
        ((23687, 18), dtype('float16'), (2, 18))
    """

    def __init__(self, source: Any, *, path: Location | None = None) -> None:
        self._source = source  # a zarr array or an (N, dim) numpy array
        self._path = path  # the store's, for naming a damaged chunk

    @property
    def shape(self) -> tuple[int, int]:
        rows, dim = self._source.shape
        return int(rows), int(dim)

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(str(self._source.dtype))

    @property
    def ndim(self) -> int:
        return 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        """Rows as numpy: a slice, an int, row numbers or a boolean mask over rows.

        Raises:
            StoreError: a chunk read fails its checksum (naming the store, the chunk's rows
                and ``lscindex verify``); never a silent wrong answer.
        """
        try:
            if isinstance(key, list | np.ndarray):  # row numbers (or a boolean mask over rows)
                rows = np.asarray(key)
                rows = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64)
                if hasattr(self._source, "oindex"):
                    return np.asarray(self._source.oindex[rows, :])
                return np.asarray(self._source[rows])
            return np.asarray(self._source[key])
        except ValueError as exc:
            if "checksum" not in str(exc):
                raise
            raise StoreError(self._damaged(key)) from None

    def _damaged(self, key: Any) -> str:
        """One line naming the first chunk among those ``key`` reads that fails its checksum."""
        step = int(self._source.chunks[0])
        rows = np.arange(len(self))[key if isinstance(key, slice | int) else np.asarray(key)]
        for chunk in np.unique(np.atleast_1d(rows) // step):
            start, stop = int(chunk) * step, min(int(chunk + 1) * step, len(self))
            try:
                self._source[start:stop]
            except ValueError:
                return (
                    f"store {self._path}: chunk {chunk} (rows {start}..{stop - 1}) fails its "
                    f"checksum: the file was changed after it was written; run lscindex verify "
                    f"{self._path} to list the damage, then embed again with --overwrite"
                )
        return f"store {self._path}: a chunk fails its checksum; run lscindex verify {self._path}"

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return np.asarray(self[:], dtype=dtype)

    def __repr__(self) -> str:
        kind = "zarr" if hasattr(self._source, "oindex") else "in memory"
        return f"EmbeddingArray(shape={self.shape}, dtype={self.dtype}, {kind})"


@dataclass
class EmbeddingStore:
    """A finished store opened for reading.

    Attributes:
        path: where it lives.
        header: its attributes (count, dim, dtype, system, run fingerprint, ...).
        embeddings: (N, dim) :class:`EmbeddingArray` (for zarr and parquet stores alike);
            index it to read rows as numpy, e.g. ``store.embeddings[:1000]``.
        metadata: pyarrow Table with one row per embedding (see ``METADATA_SCHEMA``), sorted by
            ``row``. Look rows up with :meth:`rows_metadata`, never by position.
    """

    path: Location
    header: StoreHeader
    embeddings: EmbeddingArray
    metadata: pa.Table = field(repr=False)
    _by_row: tuple[Any, np.ndarray, np.ndarray] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __repr__(self) -> str:
        kind = "parquet" if _is_parquet(self.path) else "zarr"
        return (
            f"EmbeddingStore({str(self.path)!r}, {kind}, rows={self.header.count:,}, "
            f"dim={self.header.dim}, dtype={self.header.dtype}, run={self.header.run!r})"
        )

    def __len__(self) -> int:
        return self.header.count

    @property
    def fingerprint(self) -> str:
        """Identifies this store's content: changes whenever it is written anew."""
        return self.header.store_id

    def iter_chunks(self, rows: int | None = None) -> Iterable[tuple[int, np.ndarray]]:
        """(start, (n, dim) float32 block) pieces in row order, aligned to the store's chunks."""
        step = rows or self.header.chunk_rows
        for start in range(0, self.header.count, step):
            stop = min(start + step, self.header.count)
            yield start, np.asarray(self.embeddings[start:stop], dtype=np.float32)

    def rows_metadata(self, rows: Sequence[int] | np.ndarray) -> pa.Table:
        """The metadata of store rows ``rows``, looked up by the ``row`` column, in that order.

        Args:
            rows: (B,) int store row numbers (e.g. the ids an index returned).

        Raises:
            StoreError: a row the metadata does not hold (an index of another store).
        """
        if self._by_row is None or self._by_row[0] is not self.metadata:
            column = np.asarray(self.metadata.column("row").to_numpy(), dtype=np.int64)
            order = np.argsort(column, kind="stable")
            self._by_row = (self.metadata, order, column[order])
        _, order, sorted_rows = self._by_row
        wanted = np.asarray(rows, dtype=np.int64).reshape(-1)
        at = np.minimum(np.searchsorted(sorted_rows, wanted), max(len(sorted_rows) - 1, 0))
        found = (sorted_rows[at] == wanted) if len(sorted_rows) else np.zeros(len(wanted), bool)
        if not found.all():
            row = int(wanted[~found][0])
            raise StoreError(
                f"row {row} is not in the metadata of store {self.path} ({self.header.count:,} "
                f"rows); the index does not belong to this store: rebuild it with lscindex "
                f"index {self.path}"
            )
        return self.metadata.take(pa.array(order[at]))


def open_store(path: PathOrUrl) -> EmbeddingStore:
    """Open a finished zarr or parquet store, checking cheaply that nothing is missing.

    The checks read no embeddings: the attributes (types, ranges), the array's shape against
    them, every metadata part, the metadata's ``row`` column covering 0..count-1 exactly once,
    and every chunk file of the embeddings being there at its size. ``lscindex verify`` (see
    :func:`lscindex.verify.verify_store`) also reads every chunk.

    Returns:
        :class:`EmbeddingStore` with ``embeddings`` (N, dim) and ``metadata`` (pyarrow Table,
        sorted by ``row``).

    Raises:
        StoreError: not a store, unfinished, an unknown format version, or damaged (one line
            naming what is missing and the fix).

    Example:
        >>> store = open_store("emb.zarr")          # doctest: +SKIP
        >>> store.embeddings[:5].shape, store.metadata.column("path")[0]  # doctest: +SKIP
    """
    from lscindex._store_reading import (
        check_metadata,
        chunk_file_problems,
        ok_rows,
        read_parquet_store,
        read_zarr_metadata,
        zarr_embeddings,
    )

    path = as_location(path, "store")
    if not store_exists(path):
        raise StoreError(f"store {path} does not exist; create it with lscindex embed --out {path}")
    header = read_header(path)
    if _is_parquet(path):
        embeddings, metadata = read_parquet_store(path, header)
        check_metadata(metadata, path, header)
    else:
        embeddings = zarr_embeddings(path, header)
        metadata = read_zarr_metadata(path, header)
        check_metadata(metadata, path, header)
        problems = chunk_file_problems(path, header, embeddings, ok_rows(metadata, header.count))
        if problems:
            more = f" (and {len(problems) - 1:,} more)" if len(problems) > 1 else ""
            raise StoreError(
                f"store {path}: {problems[0][1]}{more}; {_reembed_hint(path, header.run)}"
            )
    metadata = metadata.sort_by("row")
    return EmbeddingStore(
        path=path,
        header=header,
        embeddings=EmbeddingArray(embeddings, path=path),
        metadata=metadata,
    )


def new_store_id() -> str:
    return uuid.uuid4().hex[:16]
