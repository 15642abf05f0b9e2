"""What ``embed`` reads: image files, folders and manifests expanded into labelled items.

An item is one row of a store: a stable id (the path relative to the folder given, a manifest's
``id``, or the file name), the image file, and its label where the layout or manifest gives one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lscindex.data import IMAGE_EXTENSIONS, MANIFEST_SUFFIXES, list_images, read_manifest
from lscindex.errors import ConfigError, DataError
from lscindex.shards import is_shard_source

__all__ = ["EmbedItem", "resolve_inputs"]


@dataclass(frozen=True)
class EmbedItem:
    """One input: a stable id, its file, and its label if the layout or manifest gives one."""

    id: str
    path: str
    label: int = -1
    label_name: str | None = None


def resolve_inputs(
    inputs: Sequence[str | os.PathLike[str]],
    class_keys: Sequence[str],
    class_names: Sequence[str] = (),
    *,
    split: str = "all",
) -> list[EmbedItem]:
    """Expand folders (recursive), manifests and files into items, in a stable order.

    Labels come from the parent folder name of an image when it names one of the run's classes
    (ImageFolder layout, ``train/`` and ``val/`` included), or from a manifest's ``label`` column.
    With no classes at all (a plain timm encoder) every label is taken as found: the parent folder
    of an image in a sub-folder of an input folder, or the manifest's label, numbered in sorted
    order.

    ``split`` ``"train"`` or ``"val"`` keeps only that split's rows of parquet shard sources
    (:mod:`lscindex.shards`), and every input must then be one; ``"all"`` keeps every row.

    Raises:
        DataError: a path that does not exist, no inputs at all, or ``split`` with an input that
        is not a shard source.
    """
    if split not in ("all", "train", "val"):
        raise ConfigError(f"split must be 'all', 'train' or 'val', got {split!r}")
    if not class_keys and not class_names:
        # Resolved against a class no folder can be named ("\0": every label -1), then labelled.
        return _open_labels(resolve_inputs(inputs, ["\0"], split=split), inputs)
    lookup = {str(k): i for i, k in enumerate(class_keys)}
    lookup.update({str(n): i for i, n in enumerate(class_names) if str(n) not in lookup})
    names = class_names if len(class_names) else class_keys

    def labelled(item_id: str, path: Path, key: str | None) -> EmbedItem:
        label = lookup.get(key, -1) if key is not None else -1
        return EmbedItem(item_id, str(path), label, names[label] if label >= 0 else None)

    items: list[EmbedItem] = []
    for raw in inputs:
        source = Path(raw)
        if not source.exists():
            raise DataError(
                f"input {source} does not exist; pass image files, folders or manifests"
            )
        if is_shard_source(source):
            items.extend(_shard_items(source, lookup, names, split))
        elif split != "all":
            raise DataError(
                f"input {source} is not a parquet shard source, so it has no {split!r} split; "
                f"pass the {split} images themselves (e.g. the {split}/ folder) without --split"
            )
        elif source.is_dir():
            for path in list_images(source):
                items.append(labelled(str(path.relative_to(source)), path, path.parent.name))
        elif source.suffix.lower() in MANIFEST_SUFFIXES:
            items.extend(_manifest_items(source, lookup, names))
        else:
            items.append(labelled(source.name, source, source.parent.name))
    if not items:
        raise DataError(
            f"no images found in {', '.join(map(str, inputs))} (looked for "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return items


def _open_labels(
    items: list[EmbedItem], inputs: Sequence[str | os.PathLike[str]]
) -> list[EmbedItem]:
    """``items`` (resolved with no class matching) labelled by the names found in the inputs."""
    manifests = {str(Path(i)) for i in inputs if Path(i).suffix.lower() in MANIFEST_SUFFIXES}
    labels = {}
    for raw in inputs:
        source = Path(raw)
        if source.is_dir():  # images in a sub-folder: labelled by it
            labels.update(
                {str(p): p.parent.name for p in list_images(source) if p.parent != source}
            )
    for manifest in sorted(manifests):
        labels.update(
            {str(r.path): str(r.label) for r in read_manifest(manifest) if r.label is not None}
        )
    names = sorted(set(labels.values()))
    number = {name: i for i, name in enumerate(names)}
    return [
        EmbedItem(it.id, it.path, number[labels[it.path]], labels[it.path])
        if it.path in labels
        else it
        for it in items
    ]


def _shard_items(
    path: Path, lookup: dict[str, int], names: Sequence[str], split: str
) -> list[EmbedItem]:
    """One item per row of a shard source (:mod:`lscindex.shards`), or per row of one split:
    its id is the image's ``path`` field (else ``<shard>#<row>``), its label the row's label as
    a class of the run."""
    import pyarrow.parquet as pq

    from lscindex.shards import open_shards

    shards = open_shards(path)
    # the run's class of each of the source's labels, by its key or else its name
    run_label = [
        lookup.get(key, lookup.get(name, -1))
        for key, name in zip(shards.class_keys, shards.read_class_names(), strict=True)
    ]
    items = []
    for f, file in enumerate(shards.files):
        start = int(shards.offsets[f])
        stored = pq.read_table(file, columns=["image.path"]).column(0).to_pylist()
        for row, image_path in enumerate(stored):
            if split != "all" and shards.is_val[start + row] != (split == "val"):
                continue
            label = run_label[int(shards.labels[start + row])]
            items.append(
                EmbedItem(
                    image_path or f"{file.name}#{row}",
                    f"{file}#{row}",
                    label,
                    names[label] if label >= 0 else None,
                )
            )
    return items


def _manifest_items(path: Path, lookup: dict[str, int], names: Sequence[str]) -> list[EmbedItem]:
    """Items of a manifest; an integer label is a class id of the run (-1 when out of range), any
    other label a class key or name of the run (-1 when unknown)."""
    items = []
    for row in read_manifest(path):
        if isinstance(row.label, int):
            label = row.label if 0 <= row.label < len(names) else -1
        else:
            label = lookup.get(row.label, -1) if row.label is not None else -1
        items.append(EmbedItem(row.id, row.path, label, names[label] if label >= 0 else None))
    _refuse_repeated_ids(path, items)
    return items


def _refuse_repeated_ids(path: Path, items: Sequence[EmbedItem]) -> None:
    """A manifest's ids name the store's rows (``--append`` skips the ids a store holds): each
    must be unique. Raises DataError naming the first repeated id and its rows."""
    first: dict[str, int] = {}
    for row, item in enumerate(items):
        if item.id in first:
            raise DataError(
                f"manifest {path} gives the id {item.id!r} to rows {first[item.id]} and {row}; ids "
                f"name the store's rows and must be unique: give each row its own id (an id "
                f"column, or else distinct paths)"
            )
        first[item.id] = row
