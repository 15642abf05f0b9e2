"""Planning a glyph dataset: validation fonts, distinct bitmaps, classes and labels."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from lscindex.errors import ConfigError
from lscindex.glyphs._workers import ProgressFn, _check_workers, _Workers
from lscindex.glyphs.fonts import FontSource, _as_sources, find_fonts
from lscindex.glyphs.rendering import _hash_glyphs
from lscindex.glyphs.scan import FALLBACK_MIN_SHARED, _Face, _scan_fonts

__all__ = ["DEFAULT_MIN_FONTS", "DEFAULT_VAL_FONTS", "GlyphFont", "GlyphPlan", "plan_glyph_dataset"]

DEFAULT_MIN_FONTS = 5
DEFAULT_VAL_FONTS = 2
_VAL_SLACK = 0.25  # val fonts are drawn among those within 25% of the best greedy score
_VAL_EXTRA = 0.5  # greedy score of a further val image of a class (a first one scores 1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GlyphFont:
    """One font face of a glyph dataset.

    Attributes:
        font: id used in file names (``OUT/<split>/<class>/<font>.png``): the file stem, plus
            ``-<index>`` for a face of a collection (``NotoSansCJK-Regular-2``).
        path: the font file.
        index: face index inside the file (0 for single-face files).
        postscript_name: the face's PostScript name (name ID 6), or the file stem.
        split: ``"train"`` or ``"val"``.
        n_images: images of this font in the dataset.
    """

    font: str
    path: str
    index: int
    postscript_name: str
    split: str
    n_images: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class GlyphPlan:
    """What a glyph dataset will contain, before any image is written.

    Attributes:
        classes: the characters, in label order (sorted by code point), length ``n_classes``.
        n_classes_available: classes meeting the coverage rule before ``n_classes`` trimming.
        n_train, n_val: images per split.
        train_fonts, val_fonts: font ids that contribute images, in font order.
        fonts: every usable face, with its split and image count.
        n_font_files: font files found; ``skipped_fonts`` lists ``"path: reason"`` for files or
            faces that could not be used.
        rejected: rejected (font, code point) pairs by reason.
        size, seed, min_fonts, val_font_count, sources: the inputs.
    """

    classes: tuple[str, ...]
    n_classes_available: int
    n_train: int
    n_val: int
    train_fonts: tuple[str, ...]
    val_fonts: tuple[str, ...]
    fonts: tuple[GlyphFont, ...]
    n_font_files: int
    skipped_fonts: tuple[str, ...]
    rejected: dict[str, int]
    size: int
    seed: int
    min_fonts: int
    val_font_count: int
    sources: tuple[str, ...]
    # (n_images,) arrays: face index into `fonts`, code point, label; the split is the face's.
    _face: npt.NDArray[np.int32] = dataclasses.field(repr=False, compare=False)
    _codepoint: npt.NDArray[np.int32] = dataclasses.field(repr=False, compare=False)
    _label: npt.NDArray[np.int64] = dataclasses.field(repr=False, compare=False)
    _faces: tuple[_Face, ...] = dataclasses.field(repr=False, compare=False)

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)


def plan_glyph_dataset(
    *,
    fonts: FontSource | Sequence[FontSource] = "pip",
    n_classes: int | None = None,
    size: int = 32,
    val_fonts: int = DEFAULT_VAL_FONTS,
    min_fonts: int = DEFAULT_MIN_FONTS,
    seed: int = 0,
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> GlyphPlan:
    """Decide classes, fonts and splits of a glyph dataset without writing images.

    Every candidate glyph is rendered once (to reject empty, fallback and homoglyph bitmaps), so
    this costs about half of a build. Use it to count classes for a font set.

    Args:
        fonts: font sources, see :func:`find_fonts`.
        n_classes: keep this many classes (the best covered; seeded tie-break); None keeps all.
        size: image side in pixels (>= 8). Bitmap identity is judged at this size.
        val_fonts: number of fonts held out for validation (>= 1).
        min_fonts: distinct training styles a class needs (>= 1).
        seed: drives the choice of validation fonts and of classes among equally covered ones.
        workers: processes for rendering; None = the CPUs this process may use.
        progress: called as ``progress(done, total)`` with glyphs rendered so far.

    Returns:
        A :class:`GlyphPlan`.

    Raises:
        ConfigError: bad arguments, no usable fonts, or fewer classes than asked for (the message
            says how many are available).

    Example:
        >>> plan = plan_glyph_dataset(fonts="pip", n_classes=10, size=16)
        >>> plan.n_classes, set(plan.train_fonts) & set(plan.val_fonts)
        (10, set())
    """
    _check_args(n_classes=n_classes, size=size, val_fonts=val_fonts, min_fonts=min_fonts)
    with _Workers(_check_workers(workers)) as pool:
        return _plan(
            fonts=fonts,
            n_classes=n_classes,
            size=size,
            val_fonts=val_fonts,
            min_fonts=min_fonts,
            seed=seed,
            pool=pool,
            progress=progress,
        )


def _plan(
    *,
    fonts: FontSource | Sequence[FontSource],
    n_classes: int | None,
    size: int,
    val_fonts: int,
    min_fonts: int,
    seed: int,
    pool: _Workers,
    progress: ProgressFn | None,
) -> GlyphPlan:
    """:func:`plan_glyph_dataset` on a pool the caller owns (a build reuses it for writing)."""
    sources = tuple(_as_sources(fonts))
    source_text = " ".join(sources)
    files = find_fonts(list(sources))
    faces, face_cps, skipped, rejected = _scan_fonts(files, size, pool)
    if len(faces) < val_fonts + min_fonts:
        raise ConfigError(
            f"--fonts {source_text} gives {len(faces)} usable font faces "
            f"({len(skipped)} unreadable), but --val-fonts {val_fonts} plus --min-fonts "
            f"{min_fonts} need {val_fonts + min_fonts}; add fonts or lower --min-fonts"
        )
    face_cps = _in_enough_fonts(face_cps, min_fonts)
    rendered = _hash_glyphs(faces, face_cps, size, pool, progress, rejected)
    face_arr, cp_arr, hash_arr, dropped = _distinct_bitmaps(rendered)
    for k, v in dropped.items():
        rejected[k] += v

    rng = np.random.default_rng(seed)
    is_val, keep = _split_by_font(face_arr, cp_arr, hash_arr, len(faces), val_fonts, min_fonts, rng)
    face_arr, cp_arr = face_arr[keep], cp_arr[keep]
    settings = f"--fonts {source_text} --min-fonts {min_fonts} --val-fonts {val_fonts}"
    class_cps, labels, n_available = _choose_classes(
        cp_arr, is_val[face_arr], n_classes, min_fonts, rng, settings=settings
    )
    sel = labels >= 0
    face_arr, cp_arr, labels = face_arr[sel], cp_arr[sel], labels[sel]

    glyph_fonts = _glyph_fonts(faces, is_val, np.bincount(face_arr, minlength=len(faces)))
    n_val = int(is_val[face_arr].sum())
    return GlyphPlan(
        classes=tuple(chr(c) for c in class_cps.tolist()),
        n_classes_available=n_available,
        n_train=len(face_arr) - n_val,
        n_val=n_val,
        train_fonts=tuple(g.font for g in glyph_fonts if g.split == "train" and g.n_images),
        val_fonts=tuple(g.font for g in glyph_fonts if g.split == "val" and g.n_images),
        fonts=glyph_fonts,
        n_font_files=len(files),
        skipped_fonts=tuple(skipped),
        rejected=rejected,
        size=size,
        seed=seed,
        min_fonts=min_fonts,
        val_font_count=val_fonts,
        sources=sources,
        _face=face_arr,
        _codepoint=cp_arr,
        _label=labels,
        _faces=tuple(faces),
    )


def _in_enough_fonts(
    face_cps: Sequence[npt.NDArray[np.int32]], min_fonts: int
) -> list[npt.NDArray[np.int32]]:
    """Each face's candidates, less code points in too few cmaps to become a class.

    Only those are worth rendering: a class needs ``min_fonts`` training fonts and one
    validation font.
    """
    uniq, counts = np.unique(np.concatenate(face_cps), return_counts=True)
    wanted = uniq[counts >= min_fonts + 1]
    return [c[np.isin(c, wanted, assume_unique=True)] for c in face_cps]


def _split_by_font(
    face_arr: npt.NDArray[np.int32],
    cp_arr: npt.NDArray[np.int32],
    hash_arr: npt.NDArray[np.uint64],
    n_faces: int,
    val_fonts: int,
    min_fonts: int,
    rng: np.random.Generator,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.intp]]:
    """Choose the validation faces, then keep one copy of each identical (character, bitmap).

    The copy kept is the validation one if there is one (so no validation image is also a
    training image), else the first training font's.

    Returns:
        ``is_val``, (n_faces,) bool: the face is a validation face; ``keep``, (M,) ascending
        indices of the entries kept.
    """
    val_idx = _choose_val_fonts(face_arr, cp_arr, hash_arr, n_faces, val_fonts, min_fonts, rng)
    is_val = np.zeros(n_faces, bool)
    is_val[val_idx] = True
    rank = np.empty(n_faces, np.int64)
    rank[val_idx + [i for i in range(n_faces) if not is_val[i]]] = np.arange(n_faces)
    order = np.lexsort((rank[face_arr], hash_arr, cp_arr))
    keep = np.sort(order[_group_starts(cp_arr[order], hash_arr[order])])
    return is_val, keep


def _choose_classes(
    cp_arr: npt.NDArray[np.int32],
    ent_val: npt.NDArray[np.bool_],
    n_classes: int | None,
    min_fonts: int,
    rng: np.random.Generator,
    *,
    settings: str,
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64], int]:
    """Classes with one validation image and ``min_fonts`` training images.

    ``n_classes`` keeps the best covered (most training images, seeded tie-break).

    Returns:
        The classes' code points in label order, shape (n_classes,); each entry's label, shape
        (M,) int64, -1 where its class is not kept; and the number of classes available.

    Raises:
        ConfigError: fewer than 2 classes, or fewer than ``n_classes``, are available
            (``settings`` names the options in the message).
    """
    classes_all, cls = np.unique(cp_arr, return_inverse=True)
    n_val_cls = np.bincount(cls[ent_val], minlength=len(classes_all))
    n_train_cls = np.bincount(cls[~ent_val], minlength=len(classes_all))
    ok = (n_val_cls >= 1) & (n_train_cls >= min_fonts)
    n_available = int(ok.sum())
    if n_classes is not None and n_classes > n_available:
        raise ConfigError(
            f"--classes {n_classes} is more than the {n_available} classes available with "
            f"{settings}; pass --classes {n_available} or fewer, lower --min-fonts, or add fonts"
        )
    if n_available < 2:
        raise ConfigError(
            f"only {n_available} classes available with {settings} (a class needs "
            f"{min_fonts} training fonts and 1 validation font); lower --min-fonts or add fonts"
        )
    chosen = np.flatnonzero(ok)
    if n_classes is not None:
        tie = rng.random(len(chosen))
        best = np.lexsort((tie, -n_train_cls[chosen]))[:n_classes]
        chosen = np.sort(chosen[best])
    label_of = np.full(len(classes_all), -1, np.int64)
    label_of[chosen] = np.arange(len(chosen))
    return classes_all[chosen], label_of[cls], n_available


def _glyph_fonts(
    faces: Sequence[_Face], is_val: npt.NDArray[np.bool_], images: npt.NDArray[np.int64]
) -> tuple[GlyphFont, ...]:
    """Every usable face with its id, split and image count (``images``, shape (n_faces,))."""
    ids = _font_ids(faces)
    return tuple(
        GlyphFont(
            font=ids[i],
            path=f.path,
            index=f.index,
            postscript_name=f.postscript_name,
            split="val" if is_val[i] else "train",
            n_images=int(images[i]),
        )
        for i, f in enumerate(faces)
    )


def _distinct_bitmaps(
    rendered: Sequence[tuple[int, npt.NDArray[np.int32], npt.NDArray[np.uint64]]],
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32], npt.NDArray[np.uint64], dict[str, int]]:
    """Reject fallback glyphs and homoglyphs from rendered (face, ascending cps, hashes).

    In each font, a bitmap shared by FALLBACK_MIN_SHARED or more code points is a fallback glyph
    and dropped for all of them; one shared by fewer (homoglyphs) is kept for its lowest code
    point only, so no two code points of one font keep the same bitmap. A code point identical
    to a lower one in at least half of the fonts that draw both (Greek Alpha vs Latin A) is a
    confusable character and dropped from every font.

    Returns:
        (face, codepoint, hash) arrays of the kept entries, shape (M,) each, and reject counts.
    """
    fallback: list[npt.NDArray[np.bool_]] = []
    is_first: list[npt.NDArray[np.bool_]] = []
    pairs: list[npt.NDArray[np.int64]] = []
    for _, cps, hashes in rendered:
        if len(cps) == 0:
            fallback.append(np.zeros(0, bool))
            is_first.append(np.zeros(0, bool))
            continue
        _, first, inverse, shared = np.unique(
            hashes, return_index=True, return_inverse=True, return_counts=True
        )
        fb = shared[inverse] >= FALLBACK_MIN_SHARED
        fi = first[inverse] == np.arange(len(cps))
        fallback.append(fb)
        is_first.append(fi)
        dup = ~fb & ~fi
        pairs.append(cps[first[inverse[dup]]].astype(np.int64) << 21 | cps[dup])
    keys, n_identical = np.unique(
        np.concatenate([np.zeros(0, np.int64), *pairs]), return_counts=True
    )
    low, high = (keys >> 21).astype(np.int32), (keys & ((1 << 21) - 1)).astype(np.int32)
    n_both = np.zeros(len(keys), np.int64)
    for (_, cps, _), fb in zip(rendered, fallback, strict=True):
        drawn = cps[~fb]
        n_both += np.isin(low, drawn) & np.isin(high, drawn)
    confusable = np.unique(high[2 * n_identical >= n_both])

    ent_face: list[npt.NDArray[np.int32]] = []
    ent_cp: list[npt.NDArray[np.int32]] = []
    ent_hash: list[npt.NDArray[np.uint64]] = []
    counts = {"fallback": 0, "homoglyph": 0, "confusable": 0}
    for (idx, cps, hashes), fb, fi in zip(rendered, fallback, is_first, strict=True):
        gone = np.isin(cps, confusable)
        keep = ~fb & fi & ~gone
        counts["fallback"] += int(fb.sum())
        counts["homoglyph"] += int((~fb & ~fi).sum())
        counts["confusable"] += int((~fb & fi & gone).sum())
        ent_face.append(np.full(int(keep.sum()), idx, np.int32))
        ent_cp.append(cps[keep])
        ent_hash.append(hashes[keep])
    return (
        np.concatenate([np.zeros(0, np.int32), *ent_face]),
        np.concatenate([np.zeros(0, np.int32), *ent_cp]),
        np.concatenate([np.zeros(0, np.uint64), *ent_hash]),
        counts,
    )


def _group_starts(
    cps: npt.NDArray[np.int32], hashes: npt.NDArray[np.uint64]
) -> npt.NDArray[np.bool_]:
    """For (cp, hash) pairs sorted by both: True where a new (cp, hash) value begins."""
    starts = np.ones(len(cps), bool)
    starts[1:] = (cps[1:] != cps[:-1]) | (hashes[1:] != hashes[:-1])
    return starts


def _choose_val_fonts(
    face_arr: npt.NDArray[np.int32],
    cp_arr: npt.NDArray[np.int32],
    hash_arr: npt.NDArray[np.uint64],
    n_faces: int,
    val_fonts: int,
    min_fonts: int,
    rng: np.random.Generator,
) -> list[int]:
    """Greedy, seeded choice of validation faces.

    A face scores, for each character it draws with a bitmap no chosen face has, +1 if that is
    the character's first validation image and ``min_fonts`` distinct training bitmaps remain,
    +_VAL_EXTRA if it is a further validation image and they remain, and -1 if it would push
    a character that has a validation image below ``min_fonts`` training bitmaps. So the first
    face covers the most characters and later ones add broad, not tiny, fonts. Each step draws
    uniformly among faces within _VAL_SLACK of the best score, so different seeds hold out
    different (but comparably useful) fonts.
    """
    if len(cp_arr) == 0:
        return list(rng.choice(n_faces, size=val_fonts, replace=False).tolist())
    order = np.lexsort((hash_arr, cp_arr))
    new_group = _group_starts(cp_arr[order], hash_arr[order])
    group = np.empty(len(order), np.int64)
    group[order] = np.cumsum(new_group) - 1
    _, cls = np.unique(cp_arr, return_inverse=True)
    n_groups = int(group.max()) + 1
    group_cls = np.empty(n_groups, np.int64)
    group_cls[group] = cls
    train_cnt = np.bincount(group_cls)  # distinct bitmaps per class
    val_cnt = np.zeros_like(train_cnt)
    val_group = np.zeros(n_groups, bool)
    chosen: list[int] = []
    for _ in range(val_fonts):
        new_bitmap = ~val_group[group]
        first_val = val_cnt[cls] == 0
        spare = train_cnt[cls] - 1 >= min_fonts
        weight = np.where(first_val, 1.0, _VAL_EXTRA) * (new_bitmap & spare)
        weight -= new_bitmap & ~first_val & (train_cnt[cls] == min_fonts)
        score = np.bincount(face_arr, weights=weight, minlength=n_faces)
        score[chosen] = -np.inf
        best = score.max()
        pool = np.flatnonzero(score >= best - _VAL_SLACK * abs(best))
        pick = int(rng.choice(pool))
        chosen.append(pick)
        groups = np.unique(group[face_arr == pick])
        fresh = groups[~val_group[groups]]
        val_group[fresh] = True
        np.add.at(val_cnt, group_cls[fresh], 1)
        np.add.at(train_cnt, group_cls[fresh], -1)
    return chosen


def _font_ids(faces: Sequence[_Face]) -> list[str]:
    """File-name-safe, unique ids: the file stem, plus -<index> for faces of a collection."""
    ids: list[str] = []
    used: set[str] = set()
    for f in faces:
        p = Path(f.path)
        base = p.stem if p.suffix.lower() not in (".ttc", ".otc") else f"{p.stem}-{f.index}"
        base = re.sub(r"[^A-Za-z0-9._+-]", "_", base).lstrip(".") or "font"
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}_{n}"
        used.add(name)
        ids.append(name)
    return ids


def _check_args(*, n_classes: int | None, size: int, val_fonts: int, min_fonts: int) -> None:
    if n_classes is not None and n_classes < 2:
        raise ConfigError(
            f"--classes {n_classes} is too few: a classifier needs at least 2 classes; pass "
            "--classes 2 or more, or leave --classes out to keep every available class"
        )
    if not 8 <= size <= 1024:
        raise ConfigError(f"--size {size} is out of range; pass a size from 8 to 1024 pixels")
    if val_fonts < 1:
        raise ConfigError(f"--val-fonts {val_fonts} must be at least 1; pass --val-fonts 1 or more")
    if min_fonts < 1:
        raise ConfigError(f"--min-fonts {min_fonts} must be at least 1; pass --min-fonts 1 or more")
