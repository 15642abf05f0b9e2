"""Writing a glyph dataset: images, manifest, classes.json and dataset.json, swapped in whole."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import tempfile
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import PIL
from PIL import ImageFont

from lscindex._io import atomic_write_bytes, public_dir_mode, swap_dir
from lscindex.errors import ConfigError, LscIndexError
from lscindex.glyphs._workers import ProgressFn, _check_workers, _Workers
from lscindex.glyphs.fonts import FontSource
from lscindex.glyphs.plan import (
    DEFAULT_MIN_FONTS,
    DEFAULT_VAL_FONTS,
    GlyphPlan,
    _check_args,
    _plan,
)
from lscindex.glyphs.rendering import _render
from lscindex.glyphs.scan import FALLBACK_MIN_SHARED, _Face, _margin

__all__ = ["FORMAT_VERSION", "GlyphDatasetInfo", "build_glyph_dataset", "class_dir_name"]

FORMAT_VERSION = 1
_PHASE2_CHUNK = 2048


@dataclasses.dataclass(frozen=True, kw_only=True)
class GlyphDatasetInfo:
    """A glyph dataset on disk (returned by :func:`build_glyph_dataset`).

    Attributes:
        out: the dataset directory.
        n_classes: number of classes; ``classes`` are the characters in label order.
        n_train, n_val: images per split.
        train_fonts, val_fonts: font ids per split (disjoint).
        size: image side in pixels; seed, min_fonts: the build inputs.
        train_dir, val_dir: ImageFolder roots; manifest_path, classes_path, dataset_json_path:
            the metadata files.
    """

    out: Path
    n_classes: int
    classes: tuple[str, ...]
    n_train: int
    n_val: int
    train_fonts: tuple[str, ...]
    val_fonts: tuple[str, ...]
    size: int
    seed: int
    min_fonts: int
    train_dir: Path
    val_dir: Path
    manifest_path: Path
    classes_path: Path
    dataset_json_path: Path


def class_dir_name(char: str) -> str:
    """Class directory of a character: ``"A"`` -> ``"U+000041"`` (sorts in code-point order)."""
    return f"U+{ord(char):06X}"


def build_glyph_dataset(
    out: str | os.PathLike[str],
    *,
    fonts: FontSource | Sequence[FontSource] = "pip",
    n_classes: int | None = None,
    size: int = 32,
    val_fonts: int = DEFAULT_VAL_FONTS,
    min_fonts: int = DEFAULT_MIN_FONTS,
    seed: int = 0,
    workers: int | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> GlyphDatasetInfo:
    """Render a glyph dataset: one image per (character, font), split by font.

    The dataset is built in a hidden temporary folder next to ``out`` and renamed into place at
    the end, so an interrupted build never leaves a partial dataset at ``out``. Images are
    ``size`` x ``size`` mode ``"L"`` PNGs, white glyph (255) on black (0).

    Args:
        out: dataset directory to create (see :mod:`lscindex.glyphs` for the layout).
        fonts, n_classes, size, val_fonts, min_fonts, seed, workers: see
            :func:`plan_glyph_dataset`.
        overwrite: replace an existing glyph dataset at ``out`` (one whose ``dataset.json``
            says ``"kind": "glyphs"``); anything else there is never replaced.
        progress: ``progress(done, total)``; ``total`` first counts the glyphs to analyse and
            grows by the images to write once they are known.

    Returns:
        A :class:`GlyphDatasetInfo` (counts, classes, fonts per split, paths).

    Raises:
        ConfigError: ``out`` exists and is not empty (without ``overwrite``), is a non-empty
            folder that is not a glyph dataset (even with ``overwrite``) or is a file, or any
            error of :func:`plan_glyph_dataset`.

    Example:
        >>> info = build_glyph_dataset("data/glyphs", n_classes=20, size=16)  # doctest: +SKIP
        >>> info.n_classes, sorted(p.name for p in info.out.iterdir())  # doctest: +SKIP
        (20, ['classes.json', 'dataset.json', 'manifest.parquet', 'train', 'val'])
    """
    out_path = Path(out).expanduser().absolute()
    _check_out(out_path, overwrite)
    _check_args(n_classes=n_classes, size=size, val_fonts=val_fonts, min_fonts=min_fonts)
    analysed = [0, 0]

    def phase1(done: int, total: int) -> None:
        analysed[:] = [done, total]
        if progress is not None:
            progress(done, total)

    with _Workers(_check_workers(workers)) as pool:
        plan = _plan(
            fonts=fonts,
            n_classes=n_classes,
            size=size,
            val_fonts=val_fonts,
            min_fonts=min_fonts,
            seed=seed,
            pool=pool,
            progress=phase1,
        )
        _write_and_swap_in(out_path, plan, pool, analysed[1], progress, overwrite=overwrite)
    return _dataset_info(out_path, plan)


_KIND_NAMES = {"glyphs": "glyph", "glyph-instances": "glyph instance"}


def _check_out(out: Path, overwrite: bool, *, kind: str = "glyphs") -> None:
    """``out`` may be written: absent, an empty folder, or (``overwrite``) a dataset of
    ``kind`` (its dataset.json says so)."""
    if (out.exists() or out.is_symlink()) and not out.is_dir():
        raise ConfigError(f"output {out} exists and is not a folder; choose another OUT path")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise ConfigError(
            f"output folder {out} already exists and is not empty; pass --overwrite to replace "
            "it, or choose another OUT path"
        )
    if not _is_glyph_dataset(out, kind):
        raise ConfigError(
            f"output folder {out} is not a {_KIND_NAMES.get(kind, kind)} dataset (no "
            f"dataset.json of kind {kind!r}), "
            "so --overwrite will not replace it; remove it yourself or choose another OUT path"
        )


def _is_glyph_dataset(folder: Path, kind: str = "glyphs") -> bool:
    """Whether ``folder`` holds a dataset of ``kind`` (its dataset.json says so)."""
    try:
        info = json.loads((folder / "dataset.json").read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("kind") == kind


def _write_and_swap_in(
    out: Path,
    plan: GlyphPlan,
    pool: _Workers,
    done_before: int,
    progress: ProgressFn | None,
    *,
    overwrite: bool,
) -> None:
    """Write the dataset into a hidden folder beside ``out``, then swap it in for ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    tmp.chmod(public_dir_mode())  # mkdtemp makes it private; the data set is not
    try:
        _write_dataset(tmp, plan, pool, done_before, progress)
        _check_out(out, overwrite)  # it may have appeared while we were rendering
        swap_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _dataset_info(out: Path, plan: GlyphPlan) -> GlyphDatasetInfo:
    return GlyphDatasetInfo(
        out=out,
        n_classes=plan.n_classes,
        classes=plan.classes,
        n_train=plan.n_train,
        n_val=plan.n_val,
        train_fonts=plan.train_fonts,
        val_fonts=plan.val_fonts,
        size=plan.size,
        seed=plan.seed,
        min_fonts=plan.min_fonts,
        train_dir=out / "train",
        val_dir=out / "val",
        manifest_path=out / "manifest.parquet",
        classes_path=out / "classes.json",
        dataset_json_path=out / "dataset.json",
    )


def _write_dataset(
    root: Path, plan: GlyphPlan, pool: _Workers, done_before: int, progress: ProgressFn | None
) -> None:
    rel = _image_paths(root, plan)
    _write_images(root, plan, rel, pool, done_before, progress)
    _write_manifest(root, plan, rel)
    _write_json(root / "classes.json", list(plan.classes))
    _write_json(root / "dataset.json", _dataset_json(plan))


def _image_paths(root: Path, plan: GlyphPlan) -> list[str]:
    """Create the class folders of both splits; each image's path relative to ``root``.

    Paths are ``<split>/<class dir>/<font>.png``, one per plan entry, in plan order.
    """
    ids = [g.font for g in plan.fonts]
    splits = [g.split for g in plan.fonts]
    dirs = [class_dir_name(c) for c in plan.classes]
    for split in ("train", "val"):
        for d in dirs:
            (root / split / d).mkdir(parents=True, exist_ok=True)
    return [
        f"{splits[f]}/{dirs[lab]}/{ids[f]}.png"
        for f, lab in zip(plan._face.tolist(), plan._label.tolist(), strict=True)
    ]


def _write_images(
    root: Path,
    plan: GlyphPlan,
    rel: Sequence[str],
    pool: _Workers,
    done_before: int,
    progress: ProgressFn | None,
) -> None:
    per_face: dict[int, list[tuple[int, str]]] = {}
    for f, cp, r in zip(plan._face.tolist(), plan._codepoint.tolist(), rel, strict=True):
        per_face.setdefault(f, []).append((cp, str(root / r)))
    tasks = [
        (plan._faces[f], items[j : j + _PHASE2_CHUNK], plan.size)
        for f, items in sorted(per_face.items(), key=lambda t: -len(t[1]))
        for j in range(0, len(items), _PHASE2_CHUNK)
    ]
    total = done_before + len(rel)
    done = done_before
    if progress is not None:
        progress(done, total)
    for n in pool.imap(_write_chunk, tasks):
        done += n
        if progress is not None:
            progress(done, total)


def _write_manifest(root: Path, plan: GlyphPlan, rel: Sequence[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = [g.font for g in plan.fonts]
    splits = [g.split for g in plan.fonts]
    order = sorted(range(len(rel)), key=lambda i: (splits[plan._face[i]], plan._label[i], rel[i]))
    table = pa.table(
        {
            "path": pa.array([rel[i] for i in order], pa.string()),
            "label": pa.array([int(plan._label[i]) for i in order], pa.int64()),
            "class_name": pa.array([plan.classes[plan._label[i]] for i in order], pa.string()),
            "codepoint": pa.array([int(plan._codepoint[i]) for i in order], pa.int32()),
            "font": pa.array([ids[plan._face[i]] for i in order], pa.string()),
            "split": pa.array([splits[plan._face[i]] for i in order], pa.string()),
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    atomic_write_bytes(root / "manifest.parquet", buffer.getvalue())


def _dataset_json(plan: GlyphPlan) -> dict[str, Any]:
    import fontTools

    margin = _margin(plan.size)
    return {
        "format_version": FORMAT_VERSION,
        "kind": "glyphs",
        "sources": list(plan.sources),
        "size": plan.size,
        "seed": plan.seed,
        "min_fonts": plan.min_fonts,
        "val_fonts": plan.val_font_count,
        "n_classes": plan.n_classes,
        "n_classes_available": plan.n_classes_available,
        "counts": {"train": plan.n_train, "val": plan.n_val},
        "rendering": {
            "mode": "L",
            "ink": "white glyph (255) on black (0)",
            "margin_px": margin,
            "scale": "one em of each font spans the canvas minus margins; baseline at the "
            "typographic ascent; glyphs larger than the canvas shrink to fit",
        },
        "class_dir": "U+XXXXXX (code point, 6 hex digits)",
        "fonts": [dataclasses.asdict(g) for g in plan.fonts],
        "skipped_fonts": list(plan.skipped_fonts),
        "rejected": plan.rejected,
        "fallback_min_shared": FALLBACK_MIN_SHARED,
        "versions": {
            "unicode": unicodedata.unidata_version,
            "pillow": PIL.__version__,
            "freetype": ImageFont.core.freetype2_version,
            "fonttools": fontTools.version,
        },
    }


def _write_json(path: Path, data: Any) -> None:
    # Not atomic_write_json: that sorts keys and escapes non-ASCII, and these files keep their
    # bytes: dataset.json its field order, classes.json the characters themselves.
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


# -- writing (runs in workers) ---------------------------------------------------------------
def _write_chunk(args: tuple[_Face, list[tuple[int, str]], int]) -> int:
    """Render code points of one face to PNG files: [(cp, absolute path)] -> count written."""
    face, items, size = args
    for cp, dest in items:
        img = _render(face, chr(cp), size)
        if img is None:  # deterministic rendering makes this unreachable; fail loudly if not
            raise LscIndexError(
                f"glyph U+{cp:04X} of {face.path} rendered empty on the second pass; "
                "report this font, or leave it out of --fonts"
            )
        img.save(dest, format="PNG")
    return len(items)
