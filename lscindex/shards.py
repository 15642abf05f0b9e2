"""Image-bytes parquet shards as a data source, for ``train`` and ``embed``.

The Hugging Face datasets convention: parquet files with an ``image`` column of
``{bytes, path}`` structs (the encoded image file and its name), a ``label`` column (integers,
or strings naming the classes) and an optional ``split`` column (``train``/``val``; also
``validation``/``test`` count as ``val``). A folder of such files (``train-00000-of-00048.parquet``
...) or one file is a source. 10^5-10^6 classes times several images need no million-file
folders.

Nothing is read whole: opening a source reads each shard's footer and its ``label``/``split``
columns (8 bytes a row); images are read a shard at a time by the process that decodes them, so
a reader holds one shard's image bytes (``shard_rows`` x ~0.5 KB for 32 px glyphs). A sample is
named ``<shard file>#<row>`` (:func:`is_shard_row`), which :func:`lscindex.data.read_image`
reads. Training reads shards in a seeded random order and rows in a seeded random order within
each (:class:`ShardSamples.blocks`), which is how it stays one shard at a time; a resume replays
that order exactly. Class names come from ``classes.json`` beside the shards when it has one name
per label (as :func:`lscindex.glyphs.instances.build_instance_dataset` writes), else from the
string labels, else the label numbers.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, overload

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lscindex._checks import class_count_problem
from lscindex._class_names import ClassNames, parse_names_json
from lscindex.errors import DataError

__all__ = [
    "ShardSamples",
    "ShardSource",
    "give_back_freed_memory",
    "is_shard_row",
    "is_shard_source",
    "open_shards",
    "read_shard_row",
]

_VAL_NAMES = ("val", "validation", "valid", "test")
_ROW = re.compile(r"(.+\.parquet)#(\d+)", re.IGNORECASE | re.DOTALL)


def _has_image_column(schema: pa.Schema) -> bool:
    if "image" not in schema.names:
        return False
    kind = schema.field("image").type
    return pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0


def _shard_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.glob("*.parquet") if p.is_file() and not p.name.startswith("."))


def is_shard_source(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a parquet file, or a folder of them, with an ``image`` bytes column."""
    path = Path(path)
    if not (path.is_dir() or (path.is_file() and path.suffix.lower() == ".parquet")):
        return False
    files = _shard_files(path)
    try:
        return bool(files) and _has_image_column(pq.read_schema(files[0]))
    except (OSError, pa.ArrowException):
        return False


class ShardSource:
    """The shards of a source, their rows' labels and splits (no image is read).

    Attributes:
        root: the folder (or file) given. files: the shard files, sorted by name.
        offsets: (n_files + 1,) int64, the first global row of each file.
        labels: (N,) int32 label of each row (int64 past 2^31 classes); is_val: (N,) bool.
        Row numbers are int32 below 2^31 rows: 4 bytes a row, not 8, at 10^6-10^7 rows.
        n_classes: the class count. label_names: the string labels in label order (None for
            integer labels). class_keys: the labels as the source spells them.

    The class names are parsed only when asked for (:meth:`read_class_names`): 600k of them are
    ~13 MiB that a training process needs once, to write its run's ``classes.json``.
    """

    def __init__(self, root: Path, files: list[Path]) -> None:
        self.root, self.files = root, files
        splits: list[npt.NDArray[np.bool_]] = []
        counts: list[int] = []
        raw: list[pa.ChunkedArray | npt.NDArray[np.integer[Any]]] = []
        for file in files:
            table = _read_columns(file)
            counts.append(table.num_rows)
            label = table.column("label")
            if label.null_count:
                raise DataError(f"shard {file} has {label.null_count:,} rows with no label")
            # Integer labels become compact numpy a shard at a time: 3M int64 labels held as
            # Arrow columns, then concatenated, then narrowed, would peak at ~60 MB.
            raw.append(_shard_ints(label, file) if pa.types.is_integer(label.type) else label)
            split = table.column("split") if "split" in table.column_names else None
            splits.append(
                np.zeros(table.num_rows, bool)
                if split is None
                else pc.is_in(pc.utf8_lower(split), pa.array(_VAL_NAMES))
                .to_numpy(zero_copy_only=False)
                .astype(bool)
            )
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.is_val = np.concatenate(splits) if splits else np.zeros(0, bool)
        self.labels, self.label_names, self.n_classes = _labels(raw, files)
        del raw, splits
        give_back_freed_memory()

    @property
    def class_keys(self) -> Sequence[str]:
        """The labels as the source spells them (``"0"``, ``"1"``, ... for integers)."""
        return self.label_names or _numbers(self.n_classes)

    def read_class_names(self) -> Sequence[str]:
        """Names in label order: ``classes.json`` beside the shards when it names every class,
        else the string labels, else the label numbers. Parsed anew on each call."""
        return _names(self.root, self.label_names, self.n_classes)

    @property
    def n_rows(self) -> int:
        return int(self.offsets[-1])

    def rows(self, *, val: bool) -> npt.NDArray[np.integer[Any]]:
        """Global row numbers of one split, ascending."""
        return np.flatnonzero(self.is_val == val).astype(_compact(self.n_rows))

    def name(self, row: int) -> str:
        """``<file>#<row in file>`` of global row ``row``."""
        f = int(np.searchsorted(self.offsets, row, side="right")) - 1
        return f"{self.files[f]}#{row - int(self.offsets[f])}"

    def fingerprint(self) -> str:
        """16 hex digits over the shard names and sizes, every label and split."""
        digest = hashlib.sha256()
        for file in self.files:
            digest.update(f"{file.name}:{file.stat().st_size}\n".encode())
        digest.update(np.ascontiguousarray(self.labels).data)  # no bytes copies
        digest.update(np.ascontiguousarray(self.is_val).data)
        digest.update(json.dumps(self.label_names or self.n_classes).encode())
        return digest.hexdigest()[:16]


def give_back_freed_memory() -> None:
    """Return the pages that loading a source freed to the OS.

    Reading 10^6-10^7 rows of labels and splits, and parsing 10^5-10^6 class names, frees tens
    of MiB of temporaries that Arrow's memory pool and glibc's malloc would otherwise keep for
    the life of the process (a training run's peak RSS grows by them): ~70 MiB at 600k classes
    and 3M rows. A no-op where the C library is not glibc.
    """
    pa.default_memory_pool().release_unused()
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    trim(0)


def _read_columns(file: Path) -> pa.Table:
    try:
        schema = pq.read_schema(file)
        if not _has_image_column(schema) or "label" not in schema.names:
            raise DataError(
                f"shard {file} has columns {schema.names}; a shard needs an image column of "
                f"{{bytes, path}} structs and a label column (the Hugging Face datasets layout)"
            )
        columns = ["label", *(["split"] if "split" in schema.names else [])]
        return pq.read_table(file, columns=columns)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(
            f"shard {file} is not a readable parquet file ({exc}); remove or rebuild it"
        ) from None


def _compact(n: int) -> type[np.integer[Any]]:
    """The smaller integer type that holds 0..n."""
    return np.int32 if n < 2**31 else np.int64


def _shard_ints(column: pa.ChunkedArray, file: Path) -> npt.NDArray[np.integer[Any]]:
    """One shard's integer labels as int32 (int64 past 2^31), checked to be >= 0."""
    values = column.to_numpy()
    if len(values) and values.min() < 0:
        raise DataError(f"shard {file} has negative labels; labels are 0..C-1")
    return values.astype(_compact(int(values.max()) if len(values) else 0))


def _labels(
    raw: list[pa.ChunkedArray | npt.NDArray[np.integer[Any]]], files: list[Path]
) -> tuple[npt.NDArray[np.integer[Any]], list[str] | None, int]:
    """(N,) labels (:func:`_compact` type), the string labels in label order (None for
    integers) and the class count, from each shard's labels (numpy for integer labels)."""
    integer = [isinstance(r, np.ndarray) for r in raw]
    if any(integer) and not all(integer):
        odd = files[integer.index(not integer[0])]
        raise DataError(
            f"shards {files[0].name} and {odd.name} of {files[0].parent} have labels of different "
            f"types (integers in one, not in the other); give every shard the same label type"
        )
    if all(integer):
        labels = np.concatenate(raw) if raw else np.zeros(0, np.int32)
        n = int(labels.max()) + 1 if len(labels) else 0
        if problem := class_count_problem(n - 1, len(labels)):
            raise DataError(
                f"shards of {files[0].parent}: labels up to {n - 1:,} {problem}; number the "
                f"classes 0..C-1 (most classes would have no images)"
            )
        return labels.astype(_compact(n), copy=False), None, n
    column = pa.chunked_array([c for r in raw for c in r.chunks], raw[0].type)  # type: ignore[union-attr]
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        keys, labels = np.unique(np.asarray(column.to_pylist(), dtype=object), return_inverse=True)
        return labels.astype(_compact(len(keys))), [str(k) for k in keys], len(keys)
    raise DataError(
        f"shards of {files[0].parent} have a label column of type {column.type}; use integers "
        f"0..C-1 or strings"
    )


def _names(root: Path, label_names: list[str] | None, n_classes: int) -> Sequence[str]:
    """classes.json beside the shards when it names every class, else the string labels, else
    the label numbers (as :class:`ClassNames`: 600k Python strings would cost ~70 MiB)."""
    listing = (root if root.is_dir() else root.parent) / "classes.json"
    try:
        names = parse_names_json(listing.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        names = None
    if names is not None and len(names) == n_classes:
        return names
    return label_names or _numbers(n_classes)


def _numbers(n: int) -> ClassNames:
    """``"0"``, ``"1"``, ... ``str(n - 1)``."""
    return ClassNames(pc.cast(pa.array(np.arange(n, dtype=np.int64)), pa.string()))


def open_shards(path: str | os.PathLike[str]) -> ShardSource:
    """The shard source at ``path`` (a folder of parquet shards, or one shard).

    Raises:
        DataError: no shards, a shard without the image/label columns, unreadable files.
    """
    root = Path(path)
    files = _shard_files(root)
    if not files:
        raise DataError(f"{root} holds no .parquet shards; pass a folder of image-bytes shards")
    return ShardSource(root, files)


class ShardSamples(Sequence[tuple[str, int]]):
    """The rows of one split as ``(name, label)`` pairs, without a Python object per row.

    ``blocks`` (the number of rows of each shard, in row order) lets the training sampler read
    one shard at a time. A split that is one run of consecutive rows (whole shards: train-*,
    then val-*) is held as its first row and length, its labels as a view of the source's: it
    costs nothing per row beyond what the source holds.
    """

    def __init__(self, source: ShardSource, rows: npt.NDArray[np.integer[Any]]) -> None:
        self.source = source
        self._first, self._count = (int(rows[0]) if len(rows) else 0), len(rows)
        run = (
            len(rows) > 0
            and int(rows[-1]) - self._first + 1 == len(rows)
            and bool((np.diff(rows) == 1).all())
        )
        self._rows = None if run else rows
        if run:
            stop = self._first + self._count
            self.labels = source.labels[self._first : stop]
            sizes = np.clip(source.offsets[1:], self._first, stop) - np.clip(
                source.offsets[:-1], self._first, stop
            )
        else:
            self.labels = source.labels[rows]
            file_of = np.searchsorted(source.offsets, rows, side="right") - 1
            sizes = np.bincount(file_of, minlength=len(source.files))
        self.blocks = sizes[sizes > 0].astype(np.int64)

    @property
    def rows(self) -> npt.NDArray[np.integer[Any]]:
        """(M,) global row numbers (made on each call for a run of consecutive rows)."""
        if self._rows is not None:
            return self._rows
        return np.arange(self._first, self._first + self._count, dtype=_compact(self.source.n_rows))

    def __len__(self) -> int:
        return self._count

    def _row(self, index: int) -> int:
        if self._rows is not None:
            return int(self._rows[index])
        if not -self._count <= index < self._count:
            raise IndexError(f"sample {index} of {self._count:,}")
        return self._first + index % self._count

    @overload
    def __getitem__(self, index: int) -> tuple[str, int]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[str, int]]: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = int(index)
        return self.source.name(self._row(index)), int(self.labels[index])

    def __iter__(self) -> Iterator[tuple[str, int]]:
        for i in range(len(self)):
            yield self[i]


def is_shard_row(name: str) -> bool:
    """Whether ``name`` is ``<file>.parquet#<row>`` naming an existing shard file."""
    found = _ROW.fullmatch(name)
    return found is not None and os.path.isfile(found.group(1)) and not os.path.exists(name)


@lru_cache(maxsize=1)  # a reader walks one shard at a time: keep that one
def _shard_images(file: str, mtime_ns: int) -> pa.Array:
    column = pq.read_table(file, columns=["image"]).column("image").combine_chunks()
    return column.field("bytes")


def read_shard_row(name: str) -> bytes:
    """The image bytes of ``<file>.parquet#<row>``.

    Raises:
        DataError: the row is outside the file, or holds no bytes.
    """
    found = _ROW.fullmatch(name)
    if found is None:
        raise DataError(f"{name} is not <file>.parquet#<row>")
    file, row = found.group(1), int(found.group(2))
    images = _shard_images(file, os.stat(file).st_mtime_ns)
    if row >= len(images):
        raise DataError(f"{name}: the shard has {len(images):,} rows")
    data = images[row].as_py()
    if not data:
        raise DataError(f"{name} holds no image bytes")
    return bytes(data)
