"""Instance-level glyph data: one class per (character, font face), jittered renders of each,
written as image-bytes parquet shards.

The glyph dataset (one class per character, split by font) measures generalisation to unseen
type styles. This one measures something else, at a scale that one needs: recognising the exact
glyph instance (this character as this face draws it) under geometric and stroke jitter. Every
(character, face) pair whose glyph is real is a class, so the fonts in pip packages give ~80,000
classes and Debian's CJK fonts (``scripts/install-cjk-fonts.sh``) ~1.7 million. Chance is one
over the number of classes.

Classes are the candidates the glyph dataset's analysis keeps (empty, fallback and homoglyph
renders rejected; see :mod:`lscindex.glyphs`), less the pairs whose clean render is identical to
another face's for the same character (regional cuts of one family), which count once. Each
class gets ``train_views`` training renders and ``val_views`` validation renders of its clean
glyph with random jitter: shift, scale, rotation, stroke thickening or thinning, blur, noise.
Training view ``v`` of class ``c`` is drawn with the seed ``(seed, 0, c, v)``, validation view
``w`` with ``(seed, 1, c, w)``: validation never repeats a training render.

Layout (``format_version`` 1)::

    OUT/train-00000-of-00048.parquet   image {bytes: PNG, path}, label (int64), split
    OUT/val-00000-of-00012.parquet
    OUT/classes.json                   class names in label order ("A DejaVuSans")
    OUT/dataset.json                   kind "glyph-instances": settings, counts, chance

The columns follow the Hugging Face datasets convention (``datasets.load_dataset("parquet",
...)`` reads them), and ``lscindex train OUT`` / ``lscindex embed OUT`` read them as a shard
source (:mod:`lscindex.shards`). Training rows are in a seeded random order across shards, so
reading shard after shard sees the classes evenly mixed.
"""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageFilter

from lscindex._io import atomic_write_bytes, public_dir_mode, swap_dir
from lscindex.errors import ConfigError, LscIndexError
from lscindex.glyphs._workers import ProgressFn, _check_workers, _Workers
from lscindex.glyphs.dataset import _check_out, _write_json
from lscindex.glyphs.fonts import FontSource, _as_sources, find_fonts
from lscindex.glyphs.plan import _distinct_bitmaps, _font_ids, _group_starts
from lscindex.glyphs.rendering import _hash_glyphs, _render
from lscindex.glyphs.scan import _Face, _scan_fonts

__all__ = ["INSTANCES_KIND", "InstanceDatasetInfo", "build_instance_dataset"]

INSTANCES_KIND = "glyph-instances"
SHARD_SCHEMA = pa.schema(
    [
        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("label", pa.int64()),
        ("split", pa.string()),
    ]
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class InstanceDatasetInfo:
    """What :func:`build_instance_dataset` wrote.

    Attributes:
        out: the dataset folder. n_classes: classes ((character, face) pairs).
        n_classes_available: classes the fonts give before ``n_classes`` trimming.
        n_train, n_val: rows per split. train_shards, val_shards: the shard files.
        chance: top-1 accuracy of guessing, 1 / n_classes.
    """

    out: Path
    n_classes: int
    n_classes_available: int
    n_train: int
    n_val: int
    train_shards: tuple[Path, ...]
    val_shards: tuple[Path, ...]
    chance: float


@dataclasses.dataclass(frozen=True)
class _Plan:
    faces: tuple[_Face, ...]
    font_ids: tuple[str, ...]
    face: npt.NDArray[np.int32]  # (n_classes,) face index of each class
    codepoint: npt.NDArray[np.int32]  # (n_classes,)
    n_available: int
    n_font_files: int
    rejected: dict[str, int]

    def name(self, label: int) -> str:
        return f"{chr(int(self.codepoint[label]))} {self.font_ids[int(self.face[label])]}"


def build_instance_dataset(
    out: str | os.PathLike[str],
    *,
    fonts: FontSource | Sequence[FontSource] = "pip",
    n_classes: int | None = None,
    size: int = 32,
    train_views: int = 4,
    val_views: int = 1,
    shard_rows: int = 50_000,
    seed: int = 0,
    workers: int | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> InstanceDatasetInfo:
    """Render an instance-level glyph dataset into parquet shards (see the module docstring).

    Built in a hidden folder beside ``out`` and swapped in when complete, like
    :func:`lscindex.glyphs.build_glyph_dataset`.

    Args:
        out: dataset folder to create.
        fonts: font sources (:func:`lscindex.glyphs.find_fonts`): ``"pip"``, ``"system"``,
            folders or files.
        n_classes: keep a seeded random sample of this many classes; None keeps all.
        size: image side in pixels (>= 16).
        train_views, val_views: jittered renders per class in each split (>= 1 each).
        shard_rows: rows per shard file (the unit a reader holds in memory).
        seed: the class sample, the row order and every render's jitter.
        workers: rendering processes; None = the CPUs this process may use.
        overwrite: replace an instance dataset at ``out``; nothing else is ever replaced.
        progress: ``progress(done, total)``: glyphs analysed, then rows rendered; ``total``
            grows by the rows once the glyphs are analysed.

    Returns:
        :class:`InstanceDatasetInfo`.

    Raises:
        ConfigError: bad arguments, ``out`` not writable as a dataset, fewer classes than asked.

    Example:
        >>> info = build_instance_dataset("data/inst", n_classes=300)  # doctest: +SKIP
        >>> info.n_train, info.n_val, round(1 / info.chance)  # doctest: +SKIP
        (1200, 300, 300)
    """
    _check_settings(n_classes, size, train_views, val_views, shard_rows)
    out_path = Path(out).expanduser().absolute()
    _check_out(out_path, overwrite, kind=INSTANCES_KIND)
    settings = {"size": size, "seed": seed, "train_views": train_views}
    settings |= {"val_views": val_views, "shard_rows": shard_rows}
    analysed = [0]

    def analysing(done: int, total: int) -> None:
        analysed[0] = total
        if progress is not None:
            progress(done, total)

    def rendering(done: int, total: int) -> None:
        if progress is not None:
            progress(analysed[0] + done, analysed[0] + total)

    with _Workers(_check_workers(workers)) as pool:
        plan = _plan(fonts, n_classes, size, seed, pool, analysing)
        shards = _write_and_swap_in(out_path, plan, settings, fonts, pool, rendering, overwrite)
    n = len(plan.face)
    return InstanceDatasetInfo(
        out=out_path,
        n_classes=n,
        n_classes_available=plan.n_available,
        n_train=n * train_views,
        n_val=n * val_views,
        train_shards=tuple(out_path / s for s in shards["train"]),
        val_shards=tuple(out_path / s for s in shards["val"]),
        chance=1.0 / n,
    )


def _write_and_swap_in(
    out: Path,
    plan: _Plan,
    settings: dict[str, Any],
    fonts: FontSource | Sequence[FontSource],
    pool: _Workers,
    progress: ProgressFn,
    overwrite: bool,
) -> dict[str, list[str]]:
    """Write the shards and JSON files into a hidden folder beside ``out``, then swap it in."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    tmp.chmod(public_dir_mode())
    views = (settings["train_views"], settings["val_views"])
    try:
        shards = _write_shards(
            tmp,
            plan,
            settings["size"],
            views,
            settings["shard_rows"],
            settings["seed"],
            pool,
            progress,
        )
        _write_json(tmp / "classes.json", [plan.name(c) for c in range(len(plan.face))])
        _write_json(tmp / "dataset.json", _dataset_json(plan, settings, shards, fonts))
        _check_out(out, overwrite, kind=INSTANCES_KIND)  # appeared while we were rendering?
        swap_dir(tmp, out)
    finally:
        if tmp.exists():  # our own temporary: what is left of it after a failure
            shutil.rmtree(tmp, ignore_errors=True)
    return shards


def _check_settings(
    n_classes: int | None, size: int, train_views: int, val_views: int, shard_rows: int
) -> None:
    if n_classes is not None and n_classes < 2:
        raise ConfigError(f"--classes {n_classes} must be at least 2")
    if size < 16:
        raise ConfigError(f"--size {size} is too small for jittered glyphs; use 16 or more")
    if train_views < 1 or val_views < 1:
        raise ConfigError(
            f"--train-views {train_views} and --val-views {val_views} must be at least 1"
        )
    if shard_rows < 1:
        raise ConfigError(f"--shard-rows {shard_rows} must be at least 1")


def _plan(
    fonts: FontSource | Sequence[FontSource],
    n_classes: int | None,
    size: int,
    seed: int,
    pool: _Workers,
    progress: ProgressFn | None,
) -> _Plan:
    """Every distinct real (character, face) glyph, as classes ordered by (code point, face)."""
    sources = _as_sources(fonts)
    files = find_fonts(sources)
    faces, face_cps, _, rejected = _scan_fonts(files, size, pool)
    if not faces:
        raise ConfigError(f"--fonts {' '.join(sources)} gives no usable font face; add fonts")
    rendered = _hash_glyphs(faces, face_cps, size, pool, progress, rejected)
    face, cp, hashes, dropped = _distinct_bitmaps(rendered)
    for reason, count in dropped.items():
        rejected[reason] += count
    # the same character drawn pixel for pixel alike by several faces is one class
    order = np.lexsort((face, hashes, cp))
    keep = np.sort(order[_group_starts(cp[order], hashes[order])])
    rejected["same bitmap in another face"] = len(face) - len(keep)
    face, cp = face[keep], cp[keep]
    order = np.lexsort((face, cp))
    face, cp = face[order], cp[order]
    available = len(face)
    if n_classes is not None:
        if n_classes > available:
            raise ConfigError(
                f"--classes {n_classes} is more than the {available:,} (character, font) "
                f"classes of --fonts {' '.join(sources)}; pass --classes {available} or fewer, "
                f"or add fonts (scripts/install-cjk-fonts.sh, then --fonts system)"
            )
        chosen = np.sort(np.random.default_rng(seed).choice(available, n_classes, replace=False))
        face, cp = face[chosen], cp[chosen]
    return _Plan(
        faces=tuple(faces),
        font_ids=tuple(_font_ids(faces)),
        face=face.astype(np.int32),
        codepoint=cp.astype(np.int32),
        n_available=available,
        n_font_files=len(files),
        rejected=dict(rejected),
    )


def _write_shards(
    root: Path,
    plan: _Plan,
    size: int,
    views: tuple[int, int],
    shard_rows: int,
    seed: int,
    pool: _Workers,
    progress: ProgressFn | None,
) -> dict[str, list[str]]:
    """Render every row into shards; {"train": [file names], "val": [...]}."""
    n = len(plan.face)
    names: dict[str, list[str]] = {}
    tasks = []
    for split, n_views in zip(("train", "val"), views, strict=True):
        rows = np.arange(n * n_views, dtype=np.int64)  # row r: class r // n_views, view r % ...
        if split == "train":
            rows = np.random.default_rng([seed, 2]).permutation(rows)
        n_shards = max(1, -(-len(rows) // shard_rows))
        names[split] = [f"{split}-{i:05d}-of-{n_shards:05d}.parquet" for i in range(n_shards)]
        for i, name in enumerate(names[split]):
            part = rows[i * shard_rows : (i + 1) * shard_rows]
            labels, view = part // n_views, part % n_views
            tasks.append(
                _ShardTask(
                    path=str(root / name),
                    split=split,
                    labels=labels,
                    views=view,
                    faces=plan.faces,
                    face=plan.face[labels],
                    codepoint=plan.codepoint[labels],
                    font_ids=plan.font_ids,
                    size=size,
                    seed=seed,
                )
            )
    total = n * sum(views)
    done = 0
    for written in pool.imap(_write_shard, tasks):
        done += written
        if progress is not None:
            progress(done, total)
    return names


@dataclasses.dataclass(frozen=True)
class _ShardTask:
    path: str
    split: str
    labels: npt.NDArray[np.int64]
    views: npt.NDArray[np.int64]
    faces: tuple[_Face, ...]
    face: npt.NDArray[np.int32]
    codepoint: npt.NDArray[np.int32]
    font_ids: tuple[str, ...]
    size: int
    seed: int


# -- rendering (runs in workers) ---------------------------------------------------------------
def _write_shard(task: _ShardTask) -> int:
    """Render one shard's rows (grouped by face, for the font cache) and write it."""
    images: list[bytes | None] = [None] * len(task.labels)
    split_code = 0 if task.split == "train" else 1
    for i in np.lexsort((task.codepoint, task.face)).tolist():
        face = task.faces[int(task.face[i])]
        clean = _render(face, chr(int(task.codepoint[i])), task.size)
        if clean is None:  # rendered in the analysis; deterministic, so this cannot happen
            raise LscIndexError(
                f"glyph U+{int(task.codepoint[i]):04X} of {face.path} rendered empty on the "
                f"second pass; report this font, or leave it out of --fonts"
            )
        rng = np.random.default_rng(
            [task.seed, split_code, int(task.labels[i]), int(task.views[i])]
        )
        buffer = io.BytesIO()
        jitter(clean, rng).save(buffer, format="PNG", compress_level=1)
        images[i] = buffer.getvalue()
    paths = [
        f"U+{int(cp):06X}-{task.font_ids[int(f)]}/{task.split}-{int(v)}.png"
        for cp, f, v in zip(task.codepoint, task.face, task.views, strict=True)
    ]
    table = pa.table(
        {
            "image": pa.StructArray.from_arrays(
                [pa.array(images, pa.binary()), pa.array(paths, pa.string())],
                names=["bytes", "path"],
            ),
            "label": pa.array(task.labels, pa.int64()),
            "split": pa.array([task.split] * len(paths), pa.string()),
        },
        schema=SHARD_SCHEMA,
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=4096)
    atomic_write_bytes(task.path, buffer.getvalue())
    return len(paths)


def jitter(clean: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One random render of a clean (size, size) mode-L glyph: stroke thickening or thinning,
    rotation (±8°), scale (0.85-1.10), shift (±size/16 px), blur and noise.

    Deterministic in ``rng``'s state. The glyph stays white (255 peak) on black.
    """
    size = clean.size[0]
    img = clean
    stroke = int(rng.integers(3))  # 0: as drawn, 1: thicker, 2: thinner
    if stroke:
        soft = np.asarray(img.filter(ImageFilter.GaussianBlur(0.7)), dtype=np.float32)
        gain = rng.uniform(1.4, 2.0)  # thicker: brighter soft edges
        soft = soft * gain if stroke == 1 else (soft - rng.uniform(50, 100)) * 1.8
        if soft.max() >= 64:  # a hairline thinned away keeps its drawn stroke instead
            img = Image.fromarray(np.clip(soft, 0, 255).astype(np.uint8))
    angle = np.deg2rad(rng.uniform(-8, 8))
    scale = rng.uniform(0.85, 1.10)
    shift = rng.uniform(-size / 16, size / 16, size=2)
    cos, sin, c = np.cos(angle) / scale, np.sin(angle) / scale, (size - 1) / 2
    # output pixel (x, y) samples input A^-1 ((x, y) - centre - shift) + centre
    x0, y0 = -c - shift[0], -c - shift[1]
    data = (cos, sin, cos * x0 + sin * y0 + c, -sin, cos, -sin * x0 + cos * y0 + c)
    img = img.transform((size, size), Image.Transform.AFFINE, data, Image.Resampling.BILINEAR)
    radius = rng.uniform(0, 0.8)
    if radius > 0.2:
        img = img.filter(ImageFilter.GaussianBlur(radius))
    pixels = np.asarray(img, dtype=np.float64)
    peak = pixels.max()
    if peak > 0:
        pixels = pixels * (255.0 / peak)
    pixels = pixels + rng.normal(0, rng.uniform(0, 10), pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))


def _dataset_json(
    plan: _Plan,
    settings: dict[str, Any],
    shards: dict[str, list[str]],
    fonts: FontSource | Sequence[FontSource],
) -> dict[str, Any]:
    n = len(plan.face)
    used = np.bincount(plan.face, minlength=len(plan.faces))
    return {
        "kind": INSTANCES_KIND,
        "format_version": 1,
        "task": "recognise the (character, font face) instance of a jittered glyph render",
        "n_classes": n,
        "n_classes_available": plan.n_available,
        "chance_top1": 1.0 / n,
        **settings,
        "n_train": n * settings["train_views"],
        "n_val": n * settings["val_views"],
        "shards": shards,
        "sources": _as_sources(fonts),
        "n_font_files": plan.n_font_files,
        "fonts": [
            {"font": fid, "path": f.path, "index": f.index, "classes": int(k)}
            for fid, f, k in zip(plan.font_ids, plan.faces, used, strict=True)
            if k
        ],
        "rejected": plan.rejected,
    }
