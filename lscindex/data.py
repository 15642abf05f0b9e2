"""Image datasets for training and embedding: ImageFolder layouts and manifests.

Two sources are understood:

* a folder: either ``ROOT/train/<class>/...`` (+ optional ``ROOT/val/<class>/...``) or directly
  ``ROOT/<class>/...`` (one sub-folder per class, images anywhere below it);
* a manifest file, ``.parquet`` or ``.csv``, with columns ``path, label[, split]`` (paths relative
  to the manifest's folder unless absolute; labels integers or class names; split ``train``/``val``)
  for class counts where millions of folders would be unwieldy.

Every image is opened by :func:`read_image`, for training, embedding and queries alike (uploads
to ``lscindex serve`` by :func:`read_image_bytes`, under the same rules), so an image is either
readable everywhere or nowhere. Unreadable images never stop a run:
:class:`ImageDataset` returns ``None`` for them and :func:`collate_skipping` drops them and counts
how many it dropped.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lscindex._checks import class_count_problem
from lscindex.errors import ConfigError, DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MANIFEST_SUFFIXES",
    "MAX_ASPECT_RATIO",
    "MIN_IMAGE_SIDE",
    "DatasetSplits",
    "ImageDataset",
    "ManifestRow",
    "collate_skipping",
    "list_images",
    "load_dataset",
    "read_image",
    "read_image_bytes",
    "read_manifest",
]

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
MANIFEST_SUFFIXES = (".parquet", ".csv")
# Integer labels may skip ids, but not so many that most classes would have no images.
MIN_IMAGE_SIDE = 4
# Long side over short side: beyond it, resizing the short side to the model's size blows the
# long side up (a 4 x 5,000,000 px PNG of 19 KB would become a 3 GB tensor).
MAX_ASPECT_RATIO = 100


@dataclass(frozen=True)
class DatasetSplits:
    """Labelled samples of a data source.

    Attributes:
        train, val: lists of ``(path, label)``; labels index ``class_names``.
        class_names: names in label order (from ``classes.json`` at the folder root when it has
            one name per class folder, as the glyph builder writes, else the folder names).
        source: the folder or manifest they came from.
        class_keys: what identifies each class in the source (folder names, manifest labels);
            defaults to ``class_names``.
    """

    train: Sequence[tuple[str, int]]
    val: Sequence[tuple[str, int]]
    class_names: Sequence[str]
    source: str
    class_keys: Sequence[str] | None = None

    @property
    def keys(self) -> Sequence[str]:
        return self.class_keys if self.class_keys is not None else self.class_names

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def sha256(self) -> str:
        """16 hex digits identifying the data: every (path, label) of both splits and the keys.

        A run records it, so that ``--resume`` can refuse to continue on other data.
        """
        import hashlib
        import json

        from lscindex.shards import ShardSamples

        if isinstance(self.train, ShardSamples) and isinstance(self.val, ShardSamples):
            # not a JSON of millions of rows: the shards' fingerprint and each split's rows
            digest = hashlib.sha256(self.train.source.fingerprint().encode())
            digest.update(np.ascontiguousarray(self.train.rows).data)  # no bytes copies
            digest.update(b"|")
            digest.update(np.ascontiguousarray(self.val.rows).data)
            return digest.hexdigest()[:16]
        root = Path(self.source)
        root = root if root.is_dir() else root.parent
        # paths relative to the data's root: the same data named another way is the same data
        train, val = (
            [(os.path.relpath(os.path.abspath(p), os.path.abspath(root)), y) for p, y in split]
            for split in (self.train, self.val)
        )
        blob = json.dumps([train, val, self.keys], separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def list_images(folder: Path) -> list[Path]:
    """Image files below ``folder`` (recursive, sorted, hidden entries skipped)."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(
            Path(root) / f
            for f in sorted(files)
            if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS
        )
    return found


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_folder(
    folder: Path, classes: list[str] | None
) -> tuple[list[tuple[str, int]], list[str]]:
    dirs = _class_dirs(folder)
    names = classes if classes is not None else [d.name for d in dirs]
    index = {name: i for i, name in enumerate(names)}
    samples: list[tuple[str, int]] = []
    for d in dirs:
        if d.name not in index:
            raise DataError(
                f"{d} is a class folder that {folder.parent / 'train'} does not have; every "
                f"validation class needs training images"
            )
        samples.extend((str(p), index[d.name]) for p in list_images(d))
    return samples, names


def _split_fraction(
    samples: list[tuple[str, int]], fraction: float, seed: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return samples, []
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    n_val = round(fraction * len(samples))
    val_idx = set(order[:n_val])
    train = [s for i, s in enumerate(samples) if i not in val_idx]
    val = [s for i, s in enumerate(samples) if i in val_idx]
    return train, val


@dataclass(frozen=True)
class ManifestRow:
    """One row of a manifest file.

    Attributes:
        path: the image file, resolved against the manifest's folder unless absolute.
        label: the ``label`` value: an int class id where the column has an integer type, else
            the value as a string (a class name or key); None where the row or the manifest has
            no label.
        split: the ``split`` value lower-cased (``train``, ``val``, ...), None without the column.
        id: the ``id`` value, else ``path`` as the manifest writes it.
        class_name: the ``class_name`` value (names integer labels), else None.
    """

    path: str
    label: int | str | None
    split: str | None
    id: str
    class_name: str | None = None


def read_manifest(
    path: str | os.PathLike[str], *, require_label: bool = False
) -> list[ManifestRow]:
    """Read a ``.parquet`` or ``.csv`` manifest (columns ``path[, label, split, id, class_name]``).

    One label rule for every reader: an integer-typed ``label`` column holds class ids, any other
    type holds class names/keys (compared as strings), and a null is "no label".

    Returns:
        One :class:`ManifestRow` per row, in file order.

    Raises:
        DataError: unreadable file, no ``path`` column, or no ``label`` column where
            ``require_label``.
    """
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        table = pq.read_table(path) if path.suffix.lower() == ".parquet" else pacsv.read_csv(path)
    except Exception as exc:
        raise DataError(f"cannot read manifest {path}: {exc}") from exc
    columns = table.column_names
    required = {"path", "label"} if require_label else {"path"}
    missing = sorted(required - set(columns))
    if missing:
        needs = "path,label[,split]" if require_label else "path[,label][,id]"
        raise DataError(
            f"manifest {path} lacks column(s) {missing}; it needs {needs} (has {columns})"
        )

    def column(name: str) -> list[Any]:
        return table.column(name).to_pylist() if name in columns else [None] * table.num_rows

    written = [str(p) for p in table.column("path").to_pylist()]
    ids = [str(i) for i in table.column("id").to_pylist()] if "id" in columns else written
    labels: list[Any] = column("label")
    if "label" in columns:
        labels = _labels(path, table.column("label").type, labels)
    splits = [str(v).lower() if "split" in columns else None for v in column("split")]
    names = [None if v is None else str(v) for v in column("class_name")]
    return [
        ManifestRow(p if os.path.isabs(p) else str(path.parent / p), label, split, item, name)
        for p, label, split, item, name in zip(written, labels, splits, ids, names, strict=True)
    ]


def _labels(path: Path, kind: Any, values: list[Any]) -> list[int | str | None]:
    """A manifest's label column under the one rule: integers are class ids, text is names.

    Refused, naming the rows: labels that are NaN, empty or not whole numbers (a float column
    is read as ids when every value is whole), and ids outside ``[0, 2**31)``.
    """
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_floating(kind):
        bad = [i for i, v in enumerate(values) if v is not None and not float(v).is_integer()]
        _refuse_rows(path, bad, "are NaN or not whole numbers", "labels are class ids or names")
        values = [None if v is None else int(v) for v in values]
        kind = pa.int64()
    if pa.types.is_integer(kind):
        bad = [i for i, v in enumerate(values) if v is not None and not 0 <= v < 2**31]
        _refuse_rows(path, bad, "are outside [0, 2**31)", "class ids count from 0")
        return list(values)
    labels: list[int | str | None] = [None if v is None else str(v) for v in values]
    bad = [i for i, v in enumerate(labels) if isinstance(v, str) and not v.strip()]
    _refuse_rows(path, bad, "are empty", "give every row a class name, or leave the cell null")
    return labels


def _refuse_rows(path: Path, rows: list[int], what: str, fix: str) -> None:
    if rows:
        shown = ", ".join(str(r) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
        raise DataError(
            f"manifest {path}: the labels of {len(rows)} row(s) {what} (rows {shown}); {fix}"
        )


def _from_manifest(path: Path, val_fraction: float, seed: int) -> DatasetSplits:
    rows = read_manifest(path, require_label=True)
    if not rows:
        raise DataError(f"no training images found in manifest {path}: it has no rows")
    unlabelled = [i for i, r in enumerate(rows) if r.label is None]
    _refuse_rows(path, unlabelled, "are missing", "give every training row a label")
    labels, names = _manifest_classes(path, rows)
    samples = [(r.path, label) for r, label in zip(rows, labels, strict=True)]
    if rows[0].split is not None:  # the manifest has a split column
        splits = [r.split for r in rows]
        train = [s for s, sp in zip(samples, splits, strict=True) if sp == "train"]
        val = [s for s, sp in zip(samples, splits, strict=True) if sp in ("val", "valid", "test")]
    else:
        train, val = _split_fraction(samples, val_fraction, seed)
    return DatasetSplits(train, val, names, str(path))


def _manifest_classes(path: Path, rows: list[ManifestRow]) -> tuple[list[int], list[str]]:
    """Class ids and names of labelled rows: integer labels are the ids (named by a
    ``class_name`` column, else by the number); string labels become classes in sorted order."""
    labels = [r.label for r in rows if isinstance(r.label, int)]
    if len(labels) == len(rows):
        top = max(labels)
        if problem := class_count_problem(top, len(rows)):
            big = [i for i, label in enumerate(labels) if label == top]
            _refuse_rows(
                path, big, problem, "number the classes 0..n-1 (most classes would have no images)"
            )
        names = ["" for _ in range(max(labels) + 1)]
        for label, row in zip(labels, rows, strict=True):
            if row.class_name is not None:
                names[label] = row.class_name
        return labels, [name or str(i) for i, name in enumerate(names)]
    names = sorted({str(r.label) for r in rows})
    index = {name: i for i, name in enumerate(names)}
    return [index[str(r.label)] for r in rows], names


def load_dataset(
    source: str | os.PathLike[str], *, val_fraction: float = 0.0, seed: int = 0
) -> DatasetSplits:
    """Read the samples of a folder or manifest (see the module docstring for layouts).

    Args:
        source: folder or ``.parquet``/``.csv`` manifest.
        val_fraction: share of samples held out for validation when the source has no
            ``val`` split of its own (seeded, per sample).
        seed: seed of that split.

    Returns:
        :class:`DatasetSplits`.

    Raises:
        DataError: missing path, no images, a single class, malformed manifest.

    Example:
        >>> splits = load_dataset("data/glyphs")            # doctest: +SKIP
        >>> splits.n_classes, len(splits.train), len(splits.val)  # doctest: +SKIP
    """
    path = Path(source)
    if not path.exists():
        raise DataError(
            f"data path {path} does not exist; pass an image folder (one sub-folder per class) "
            f"or a .parquet/.csv manifest"
        )
    from lscindex.shards import give_back_freed_memory, is_shard_source

    shards = is_shard_source(path)
    if shards:
        splits = _from_shards(path, val_fraction, seed)
    elif path.is_file():
        if path.suffix.lower() not in MANIFEST_SUFFIXES:
            raise DataError(
                f"{path} is neither a folder nor a .parquet/.csv manifest with path,label columns"
            )
        splits = _from_manifest(path, val_fraction, seed)
    elif (path / "train").is_dir():
        train, keys = _image_folder(path / "train", None)
        if (path / "val").is_dir():
            val, _ = _image_folder(path / "val", keys)
        else:
            train, val = _split_fraction(train, val_fraction, seed)
        splits = DatasetSplits(train, val, _display_names(path, keys), str(path), keys)
    else:
        samples, keys = _image_folder(path, None)
        train, val = _split_fraction(samples, val_fraction, seed)
        splits = DatasetSplits(train, val, _display_names(path, keys), str(path), keys)
    if not splits.train:
        raise DataError(
            f"no training images found in {path} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}"
            f" files in one sub-folder per class)"
        )
    used = _used_labels(splits.train)
    if len(used) < 2:
        raise DataError(
            f"{path} has a single class ({splits.class_names[int(used[0])]!r}); training "
            f"needs at least 2 classes, one sub-folder each"
        )
    if shards:
        give_back_freed_memory()  # of 10^6-10^7 rows' temporaries
    return splits


def _used_labels(samples: Sequence[tuple[str, int]]) -> np.ndarray:
    """The distinct labels of ``samples``, ascending (no Python int per row or class)."""
    labels = getattr(samples, "labels", None)  # shard samples keep them in one array
    if labels is None:
        labels = np.fromiter((label for _, label in samples), dtype=np.int64)
    return np.unique(labels)


def _from_shards(path: Path, val_fraction: float, seed: int) -> DatasetSplits:
    """The splits of an image-bytes shard source (see :mod:`lscindex.shards`)."""
    from lscindex.shards import ShardSamples, open_shards

    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    source = open_shards(path)
    train, val = source.rows(val=False), source.rows(val=True)
    if not len(val) and val_fraction > 0:
        n_val = round(val_fraction * len(train))
        held = np.random.default_rng(seed).permutation(len(train))[:n_val]
        train, val = np.delete(train, held), np.sort(train[held])
    return DatasetSplits(
        ShardSamples(source, train),
        ShardSamples(source, val),
        source.read_class_names(),
        str(path),
        source.label_names,  # integer labels: the run keys its classes by name
    )


def _display_names(root: Path, keys: list[str]) -> list[str]:
    """Names from ``root/classes.json`` when it lists one per class folder, else the folders."""
    import json

    listing = root / "classes.json"
    if listing.is_file():
        try:
            names = json.loads(listing.read_text())
        except ValueError:
            return keys
        if isinstance(names, list) and len(names) == len(keys):
            return [str(n) for n in names]
    return keys


def read_image(path: str | os.PathLike[str]) -> Any:
    """Open an image as RGB, or raise DataError with a one-line reason (never hangs).

    The one image reader of lscindex (training, embedding and queries). Rejects: missing or
    non-regular files (FIFOs would block), empty files, undecodable or truncated data, images
    with a side under ``MIN_IMAGE_SIDE`` (4) px or sides more than ``MAX_ASPECT_RATIO`` (100)
    to one, and images over Pillow's pixel limit (``PIL.Image.MAX_IMAGE_PIXELS``); all before
    the pixels are decoded. Grayscale, palette and alpha images are converted to RGB.

    Example:
        >>> read_image("data/glyphs/val/0041/000.png").mode   # doctest: +SKIP
        'RGB'
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        from lscindex.shards import is_shard_row, read_shard_row

        if is_shard_row(path):  # an image held in a parquet shard
            return read_image_bytes(read_shard_row(path), path)
        reason = "does not exist" if not os.path.lexists(path) else "is not a regular file"
        raise DataError(f"{path} {reason}")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path} is empty (0 bytes)")
    return _decode_image(path, path)


def read_image_bytes(data: bytes, name: str) -> Any:
    """:func:`read_image` for an image held in memory (an HTTP upload): the same rules and the
    same one-line reasons, which name the image ``name`` (e.g. the upload's file name).

    Example:
        >>> read_image_bytes(Path("a.png").read_bytes(), "a.png").mode   # doctest: +SKIP
        'RGB'
    """
    import io

    if not data:
        raise DataError(f"{name} is empty (0 bytes)")
    return _decode_image(io.BytesIO(data), name)


def _decode_image(source: str | IO[bytes], name: str) -> Any:
    """Decode ``source`` (a path or a binary file) to RGB under :func:`read_image`'s rules."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                if min(img.size) < MIN_IMAGE_SIDE:
                    raise DataError(
                        f"{name} is {img.size[0]}x{img.size[1]} px, below the "
                        f"{MIN_IMAGE_SIDE} px minimum side"
                    )
                if max(img.size) > MAX_ASPECT_RATIO * min(img.size):
                    raise DataError(
                        f"{name} is {img.size[0]}x{img.size[1]} px, sides more than "
                        f"{MAX_ASPECT_RATIO}:1; crop or pad it to a squarer shape"
                    )
                img.load()
                return img.convert("RGB")
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{name} is over Pillow's pixel limit: {exc}") from None
    except UnidentifiedImageError:
        raise DataError(f"{name} is not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{name} cannot be decoded: {exc}") from None


class ImageDataset(Dataset[tuple[Any, int, int] | None]):
    """Map-style dataset of ``(path, label)`` pairs; unreadable files yield ``None``.

    ``dataset[i]`` is ``(tensor, label, i)`` with the tensor from ``transform`` (C, H, W), or
    ``None`` when :func:`read_image` rejects the file (truncated, not an image, missing, ...).
    """

    def __init__(
        self, samples: Sequence[tuple[str, int]], transform: Callable[[Any], Any] | None = None
    ) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int, int] | None:
        path, label = self.samples[index]
        try:
            image = read_image(path)
        except Exception:
            return None
        return (self.transform(image) if self.transform else image), label, index


def collate_skipping(batch: list[Any]) -> tuple[Any, Any, Any, int]:
    """Stack ``(tensor, label, index)`` items, dropping ``None`` ones.

    Returns:
        images (B, C, H, W), labels (B,) int64, indices (B,) int64, and the number dropped.
        With every item dropped the tensors are empty.
    """
    good = [item for item in batch if item is not None]
    dropped = len(batch) - len(good)
    if not good:
        empty = torch.empty(0, dtype=torch.int64)
        return torch.empty(0), empty, empty, dropped
    images = torch.stack([item[0] for item in good])
    labels = torch.as_tensor(np.array([item[1] for item in good], dtype=np.int64))
    indices = torch.as_tensor(np.array([item[2] for item in good], dtype=np.int64))
    return images, labels, indices, dropped
