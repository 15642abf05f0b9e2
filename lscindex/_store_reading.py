"""Private: reading a finished store back, and checking that it is whole.

Used by :func:`lscindex.store.open_store` (the cheap checks: attributes against the array,
every metadata part, rows covering 0..count-1 once, every chunk file at its size) and by
:mod:`lscindex.verify` (which also reads every chunk). Nothing here allocates by what a crafted
header claims: counts are checked against what the files hold first.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lscindex._location import Location, RemotePath, open_input, read_parquet, zarr_store
from lscindex.errors import StoreError
from lscindex.store import (
    ATTRS_KEY,
    DTYPES,
    MAX_COUNT,
    MAX_DIM,
    METADATA_SCHEMA,
    STORE_FORMAT_VERSION,
    StoreHeader,
    _one_line,
    _part_name,
    _reembed_hint,
)

__all__ = [
    "CHECKSUMMED_CODECS",
    "check_metadata",
    "check_zarr_codecs",
    "checked_header",
    "checked_history",
    "chunk_file_problems",
    "chunk_key",
    "chunk_nbytes",
    "chunk_sizes",
    "codec_names",
    "metadata_schema_problem",
    "missing_parts",
    "ok_rows",
    "read_parquet_store",
    "read_zarr_metadata",
    "row_coverage_problem",
    "zarr_embeddings",
]


_HEADER_TYPES: dict[str, tuple[type, ...]] = {
    "format_version": (int,),
    "store_id": (str,),
    "count": (int,),
    "dim": (int,),
    "dtype": (str,),
    "chunk_rows": (int,),
    "system": (dict, type(None)),
    "run": (str,),
    "run_fingerprint": (str,),
    "inputs_sha256": (str,),
    "complete": (bool,),
}


def checked_header(raw: Any, path: Location) -> StoreHeader:
    """A :class:`StoreHeader` from raw attributes, every key's type and range checked.

    Raises:
        StoreError: not an object, another format version, a missing, unknown or mistyped key,
            or a value out of range (one line naming it).
    """
    if not isinstance(raw, dict):
        raise StoreError(
            f"store {path} has damaged attributes: {ATTRS_KEY!r} is a {type(raw).__name__}, "
            f"expected an object; {_reembed_hint(path)}"
        )
    version = raw.get("format_version")
    if version != STORE_FORMAT_VERSION or isinstance(version, bool):
        raise StoreError(
            f"store {path} has format_version {version!r}, this lscindex reads "
            f"{STORE_FORMAT_VERSION}; embed again or upgrade lscindex"
        )
    run = raw.get("run") if isinstance(raw.get("run"), str) else "RUN"

    def damaged(what: str) -> StoreError:
        return StoreError(
            f"store {path} has damaged attributes: {what}; {_reembed_hint(path, str(run))}"
        )

    missing = [k for k in _HEADER_TYPES if k not in raw]
    unknown = sorted(set(raw) - set(_HEADER_TYPES) - {"history", "encoder", "checksums"})
    if missing or unknown:
        what = [f"lacks {', '.join(map(repr, missing))}"] if missing else []
        what += [f"has unknown key(s) {', '.join(map(repr, unknown))}"] if unknown else []
        raise damaged(" and ".join(what))
    for key, types in _HEADER_TYPES.items():
        value = raw[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            expected = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise damaged(f"{key} is {value!r}, expected {expected}")
    if not 0 <= raw["count"] <= MAX_COUNT:
        raise damaged(f"count is {raw['count']!r}, expected 0..{MAX_COUNT}")
    if not 1 <= raw["dim"] <= MAX_DIM:
        raise damaged(f"dim is {raw['dim']!r}, expected 1..{MAX_DIM}")
    if not 1 <= raw["chunk_rows"] <= max(1, raw["count"]):
        raise damaged(f"chunk_rows is {raw['chunk_rows']!r}, expected 1..{max(1, raw['count'])}")
    if raw["dtype"] not in DTYPES:
        raise damaged(f"dtype is {raw['dtype']!r}, expected one of {DTYPES}")
    if not re.fullmatch(r"[0-9a-f]{16}", raw["store_id"]):
        raise damaged(f"store_id is {raw['store_id']!r}, expected 16 hex digits")
    history = checked_history(raw.get("history", []), raw["count"])
    if history is None:
        raise damaged(
            "history is not a list of {store_id, count, inputs_sha256} objects with counts "
            "rising below the store's count"
        )
    encoder = raw.get("encoder")
    if encoder is not None and not isinstance(encoder, dict):
        raise damaged(f"encoder is {encoder!r:.100}, expected an object or null")
    if not isinstance(raw.get("checksums", False), bool):
        raise damaged(f"checksums is {raw['checksums']!r:.100}, expected true or false")
    return StoreHeader(**{**raw, "history": history, "encoder": encoder})


def checked_history(raw: Any, count: int) -> tuple[dict[str, Any], ...] | None:
    """A header's ``history`` (earlier versions, oldest first), or None when it is malformed."""
    if not isinstance(raw, list):
        return None
    below = 0
    for entry in raw:
        if not (
            isinstance(entry, dict)
            and set(entry) == {"store_id", "count", "inputs_sha256"}
            and isinstance(entry["store_id"], str)
            and re.fullmatch(r"[0-9a-f]{16}", entry["store_id"])
            and isinstance(entry["inputs_sha256"], str)
            and isinstance(entry["count"], int)
            and not isinstance(entry["count"], bool)
            and below <= entry["count"] < count
        ):
            return None
        below = entry["count"]
    return tuple(dict(entry) for entry in raw)


def row_coverage_problem(rows: np.ndarray, count: int) -> str | None:
    """None when ``rows`` ((N,) int) hold each of 0..count-1 exactly once, else what is wrong.

    Cheap when the rows are sorted and complete (the normal case): one pass, no allocation of
    ``count`` entries, so a crafted ``count`` costs nothing.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == count and (
        count == 0 or (rows[0] == 0 and rows[-1] == count - 1 and (np.diff(rows) == 1).all())
    ):
        return None
    inside = np.sort(rows[(rows >= 0) & (rows < count)])
    repeated = inside[1:][np.diff(inside) == 0]
    unique = np.unique(inside)
    n_missing, n_outside = count - len(unique), len(rows) - len(inside)
    if not (n_missing or len(repeated) or n_outside):
        return None
    problems = []
    if n_missing:
        gaps = np.flatnonzero(unique != np.arange(len(unique)))
        first = int(gaps[0]) if len(gaps) else len(unique)
        problems.append(f"lacks {n_missing:,} of {count:,} rows (first: row {first})")
    if len(repeated):
        problems.append(f"repeats {len(repeated):,} rows (first: row {int(repeated[0])})")
    if n_outside:
        problems.append(f"has {n_outside:,} row numbers outside 0..{count - 1}")
    return "the metadata " + " and ".join(problems)


def ok_rows(metadata: pa.Table, count: int) -> np.ndarray:
    """(count,) bool by store row: ``status == "ok"`` (the image was embedded).

    ``metadata`` must cover the rows (see :func:`row_coverage_problem`).
    """
    good = np.zeros(count, dtype=bool)
    status = pc.fill_null(pc.equal(metadata.column("status"), "ok"), False)
    rows = np.asarray(metadata.column("row").to_numpy(), dtype=np.int64)
    good[rows[np.asarray(status.to_numpy(zero_copy_only=False), dtype=bool)]] = True
    return good


def metadata_schema_problem(metadata: pa.Table) -> str | None:
    """None when every column of :data:`METADATA_SCHEMA` is there with its type, else which not."""
    for column in METADATA_SCHEMA:
        if column.name not in metadata.column_names:
            return f"the metadata lacks the column {column.name!r}"
        found = metadata.schema.field(column.name).type
        if not found.equals(column.type):
            return f"the metadata column {column.name!r} is {found}, expected {column.type}"
    return None


def missing_parts(path: Location, header: StoreHeader) -> tuple[int, list[int]]:
    """How many metadata parts of a zarr store are missing, and the first few chunk numbers.

    Costs one folder listing, whatever ``header.n_chunks`` claims.
    """
    found = set()
    for name in _names(path / "metadata"):
        match = re.fullmatch(r"part-(\d+)\.parquet", name)
        if match and int(match.group(1)) < header.n_chunks:
            found.add(int(match.group(1)))
    n_missing = header.n_chunks - len(found)
    first: list[int] = []
    chunk = 0
    while len(first) < min(3, n_missing):  # ends within len(found) + 3 steps
        if chunk not in found:
            first.append(chunk)
        chunk += 1
    return n_missing, first


def _names(folder: Location) -> list[str]:
    """The names of the entries directly inside ``folder`` (none when it is missing)."""
    if isinstance(folder, RemotePath):
        return [name for name in folder.sizes() if "/" not in name]
    if not folder.is_dir():
        return []
    return [entry.name for entry in os.scandir(folder)]


def zarr_embeddings(path: Location, header: StoreHeader) -> Any:
    """The embeddings array of a zarr store, its shape, chunks and dtype checked (nothing read).

    Raises:
        StoreError: no readable array, or one that disagrees with the store's attributes.
    """
    import zarr

    hint = _reembed_hint(path, header.run)
    try:
        array = zarr.open_array(zarr_store(path / "embeddings", read_only=True), mode="r")
        layout = (tuple(array.shape), tuple(array.chunks), str(array.dtype))
    except Exception as exc:  # any damage to the array's zarr.json
        raise StoreError(
            f"store {path} has no readable embeddings array ({_one_line(exc)}); {hint}"
        ) from None
    expected = ((header.count, header.dim), (header.chunk_rows, header.dim), header.dtype)
    if layout != expected:
        raise StoreError(
            f"store {path}: its embeddings array has shape {layout[0]}, chunks {layout[1]}, "
            f"dtype {layout[2]} but its attributes say shape {expected[0]}, chunks "
            f"{expected[1]}, dtype {expected[2]}; {hint}"
        )
    check_zarr_codecs(array, path, hint)
    return array


# The codecs of the embeddings array: uncompressed bytes (so a missing or cut chunk file is
# seen by its size), then a crc32c of each chunk (stores written since checksums; older ones
# have none and stay readable).
CHECKSUMMED_CODECS = ["bytes", "crc32c"]
_CODECS = (CHECKSUMMED_CODECS, ["bytes"])
CHECKSUM_BYTES = 4


def check_zarr_codecs(array: Any, path: Location, hint: str) -> None:
    """Refuse an embeddings array lscindex did not write: other codecs (compression, whose
    chunk sizes are unknown) or another chunk-key encoding (a crafted separator could make
    chunk keys point outside the store).

    Raises:
        StoreError: naming what the array has, what is expected, and ``hint``.
    """
    names = codec_names(array)
    if names not in _CODECS:
        raise StoreError(
            f"store {path}: its embeddings array has codecs {names}, expected ['bytes', "
            f"'crc32c'] or ['bytes'] (no compression); {hint}"
        )
    encoding = array.metadata.chunk_key_encoding.to_dict()
    if encoding != {"name": "default", "configuration": {"separator": "/"}}:
        raise StoreError(
            f"store {path}: its embeddings array has chunk key encoding {encoding}, expected "
            f"the default with separator '/'; {hint}"
        )


def codec_names(array: Any) -> list[str | None]:
    """The names of the codecs of a zarr v3 array, in order (``["bytes", "crc32c"]``)."""
    codecs = getattr(array.metadata, "codecs", ())
    return [codec.to_dict().get("name") if hasattr(codec, "to_dict") else None for codec in codecs]


def chunk_key(array: Any, chunk: int) -> str:
    """Where zarr keeps chunk ``chunk`` (rows ``chunk * chunk_rows ...``) of the embeddings,
    relative to the store (``embeddings/c/3/0``)."""
    return f"embeddings/{array.metadata.encode_chunk_key((chunk, 0))}"


def chunk_sizes(path: Location, array: Any, header: StoreHeader) -> list[int | None]:
    """The size in bytes of each chunk's file (None: missing). Local stores cost one ``stat``
    per chunk; remote ones one listing."""
    if isinstance(path, RemotePath):
        listing = path.sizes()
        return [listing.get(chunk_key(array, c)) for c in range(header.n_chunks)]
    sizes: list[int | None] = []
    for chunk in range(header.n_chunks):
        try:
            sizes.append(os.stat(path / chunk_key(array, chunk)).st_size)
        except FileNotFoundError:
            sizes.append(None)
    return sizes


def chunk_nbytes(header: StoreHeader, array: Any) -> int:
    """The size of every chunk file: chunks are stored uncompressed, the last one at full size,
    followed by their 4-byte crc32c where the array has one."""
    checksum = CHECKSUM_BYTES if codec_names(array) == CHECKSUMMED_CODECS else 0
    return header.chunk_rows * header.dim * np.dtype(header.dtype).itemsize + checksum


def chunk_file_problems(
    path: Location, header: StoreHeader, array: Any, good: np.ndarray | None
) -> list[tuple[int, str]]:
    """(chunk, one line) for each chunk of a zarr store whose file is missing or of wrong size.

    zarr leaves a chunk that is all fill value (NaN) unwritten, so a chunk whose every row
    failed (``good``: (count,) bool by row; None counts every row as embedded) may lack its
    file; any other chunk may not, or its embedded rows would read as NaN. Costs one ``stat``
    per chunk (one listing for a remote store).
    """
    nbytes = chunk_nbytes(header, array)
    problems = []
    for chunk, size in enumerate(chunk_sizes(path, array, header)):
        start, stop = header.chunk_range(chunk)
        file = chunk_key(array, chunk)
        rows = f"rows {start}..{stop - 1}"
        if size is None:
            if good is None or good[start:stop].any():
                problems.append((chunk, f"chunk file {file} ({rows}) is missing"))
        elif size != nbytes:
            problems.append(
                (
                    chunk,
                    f"chunk file {file} ({rows}) has {size:,} bytes, expected {nbytes:,} "
                    f"(truncated or overwritten)",
                )
            )
    return problems


def read_zarr_metadata(path: Location, header: StoreHeader) -> pa.Table:
    """Every metadata part of a zarr store as one table (parts checked to be all there).

    Raises:
        StoreError: a missing or unreadable part.
    """
    n_missing, first = missing_parts(path, header)
    if n_missing:
        ranges = ", ".join(
            f"{_part_name(c)} (rows {header.chunk_range(c)[0]}..{header.chunk_range(c)[1] - 1})"
            for c in first
        )
        more = f" and {n_missing - len(first):,} more" if n_missing > len(first) else ""
        raise StoreError(
            f"store {path} lacks metadata {ranges}{more}; {_reembed_hint(path, header.run)}"
        )
    try:
        return read_parquet(path / "metadata")
    except Exception as exc:  # a damaged part or a foreign file among them
        raise StoreError(
            f"store {path} has unreadable metadata ({_one_line(exc)}); "
            f"{_reembed_hint(path, header.run)}"
        ) from None


def read_parquet_store(path: Location, header: StoreHeader) -> tuple[np.ndarray, pa.Table]:
    """(embeddings (count, dim), metadata) of a parquet store, its rows and column checked.

    The row count and the embedding column's type are read from the footer first, so a crafted
    header allocates nothing.

    Raises:
        StoreError: unreadable, another row count or embedding type, rows with no embedding.
    """
    hint = _reembed_hint(path, header.run)
    expected = pa.list_(pa.from_numpy_dtype(np.dtype(header.dtype)), header.dim)
    with open_input(path) as source:
        return _read_parquet_store(source, path, header, hint, expected)


def _read_parquet_store(
    source: Any, path: Location, header: StoreHeader, hint: str, expected: pa.DataType
) -> tuple[np.ndarray, pa.Table]:
    try:
        file = pq.ParquetFile(source, page_checksum_verification=True)
        n_rows = file.metadata.num_rows
        schema = file.schema_arrow
    except Exception as exc:
        raise StoreError(f"store {path} is unreadable ({_one_line(exc)}); {hint}") from None
    if n_rows != header.count:
        raise StoreError(
            f"store {path} holds {n_rows:,} rows but its attributes say {header.count:,}; {hint}"
        )
    found = schema.field("embedding").type if "embedding" in schema.names else None
    if found is None or not found.equals(expected):
        raise StoreError(f"store {path} has embedding column {found}, expected {expected}; {hint}")
    try:
        table = file.read()
    except Exception as exc:
        if "checksum" in str(exc):
            raise StoreError(damaged_row_group(file, path)) from None
        raise StoreError(f"store {path} is unreadable ({_one_line(exc)}); {hint}") from None
    column = table.column("embedding")
    if column.null_count:
        raise StoreError(f"store {path} has {column.null_count:,} rows with no embedding; {hint}")
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(header.count, header.dim), table.drop_columns(["embedding"])


def damaged_row_group(file: Any, path: Location) -> str:
    """One line naming the first row group of a parquet ``file`` (opened with page checksum
    verification) whose pages fail their checksum, by store rows."""
    start = 0
    for group in range(file.num_row_groups):
        rows = file.metadata.row_group(group).num_rows
        try:
            file.read_row_group(group)
        except OSError:
            return (
                f"store {path}: rows {start}..{start + rows - 1} (row group {group}) fail their "
                f"page checksum: the file was changed after it was written; run lscindex verify "
                f"{path} to list the damage, then embed again with --overwrite"
            )
        start += rows
    return f"store {path}: a page fails its checksum; run lscindex verify {path}"


def check_metadata(metadata: pa.Table, path: Location, header: StoreHeader) -> None:
    """Raise :class:`StoreError` unless the metadata has its columns and covers every row once."""
    problem = metadata_schema_problem(metadata) or row_coverage_problem(
        metadata.column("row").to_numpy(), header.count
    )
    if problem:
        raise StoreError(f"store {path}: {problem}; {_reembed_hint(path, header.run)}")
