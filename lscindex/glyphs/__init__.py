"""Glyph datasets: characters rendered from real font files, one class per character.

The split is **by font**: every image of a validation font is in ``val`` and no validation font is
used for training, so validation accuracy measures generalisation to unseen type styles.

Pipeline (``plan_glyph_dataset``, then ``build_glyph_dataset`` writes the images):

1. **Find** font files (:func:`find_fonts`): ``"pip"`` (fonts inside installed pip packages, e.g.
   matplotlib's DejaVu, STIX and Computer Modern), ``"system"`` (``fc-list``) or folders/files.
   Each face of a collection (``.ttc``) counts as one font; faces with the same PostScript name
   are kept once.
2. **Scan** each face's Unicode cmap (fontTools): skip whitespace, control, format, combining,
   private-use, surrogate and unassigned code points, characters canonically equivalent to
   another one (U+2126 OHM SIGN is U+03A9) and style/width variants of another character
   (MATHEMATICAL BOLD CAPITAL A, FULLWIDTH LATIN CAPITAL LETTER A, KANGXI RADICAL ONE).
   Reject slots whose glyph name says they hold another character (TeX-encoded fonts such as
   ``cmr10`` put ``¡`` in the ``<`` slot) and glyphs shared by many code points (fallback
   glyphs).
3. **Render and hash** every candidate glyph at the output size. In each font, an empty render is
   rejected, a bitmap shared by ``FALLBACK_MIN_SHARED`` or more code points is a fallback
   ("tofu") glyph and rejected for all of them, and a bitmap shared by a few code points
   (homoglyphs such as Latin A / Greek Alpha / Cyrillic A) is kept only for the lowest code point,
   so no two classes of one font ever share a bitmap. A character identical to a lower code point
   in at least half of the fonts that draw both (Greek Alpha) is dropped from every font.
4. **Select.** Identical bitmaps of one character from different fonts (regional faces of one
   collection, a font installed twice) count once: the validation copy is kept, the training
   copies are dropped, so no validation image also appears in training. Validation fonts are
   chosen greedily (seeded) to give as many characters as possible a validation image while
   leaving ``min_fonts`` distinct training styles. A class is kept when it has at least one
   validation image and ``min_fonts`` training images.

Rendering: white glyph (255) on black (0), mode ``"L"``, ``size`` x ``size`` pixels, the ink
stretched to peak at 255. One em of each font spans the canvas minus a margin
(``max(1, round(size / 16))`` px on each side), with the baseline at the font's typographic
ascent, so case and size survive (``o`` vs ``O``, ``.`` vs ``·``); a glyph is centred
horizontally on its ink, shifted vertically only as far as needed to fit, and shrunk (then
centred both ways) only when it is larger than the canvas. Scaling every glyph to fill the
canvas instead would make ``o``/``O``, ``c``/``C`` and ``.``/``·`` the same image.

Validation fonts are held out as faces: other weights of a validation face's family stay in
training (pixel-identical copies excepted, see step 4), so validation measures unseen faces,
not unseen type families.

On-disk layout (``format_version`` 1)::

    OUT/train/U+000041/DejaVuSans.png      # ImageFolder per split; class dir = code point
    OUT/val/U+000041/STIXGeneral.png
    OUT/manifest.parquet                   # path, label, class_name, codepoint, font, split
    OUT/classes.json                       # class names (the characters) in label order
    OUT/dataset.json                       # how it was built: fonts, size, seed, counts

Labels are indices into the class list sorted by code point, which is also the sorted order of
the class directories, so ``torchvision.datasets.ImageFolder(OUT / "train")`` agrees with the
manifest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import multiprocessing
import os
import re
import shutil
import site
import subprocess
import sysconfig
import tempfile
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import PIL
from PIL import Image, ImageDraw, ImageFont

from lscindex._io import atomic_write_bytes, public_dir_mode
from lscindex.errors import ConfigError, LscIndexError

__all__ = [
    "DEFAULT_MIN_FONTS",
    "DEFAULT_VAL_FONTS",
    "FALLBACK_MIN_SHARED",
    "FONT_SUFFIXES",
    "FORMAT_VERSION",
    "GlyphDatasetInfo",
    "GlyphFont",
    "GlyphPlan",
    "build_glyph_dataset",
    "class_dir_name",
    "find_fonts",
    "plan_glyph_dataset",
    "render_glyph",
]

FORMAT_VERSION = 1
FONT_SUFFIXES = (".ttf", ".otf", ".ttc", ".otc")
DEFAULT_MIN_FONTS = 5
DEFAULT_VAL_FONTS = 2
FALLBACK_MIN_SHARED = 8
"""A bitmap (or glyph) shared by this many code points of one font is a fallback glyph."""

SYSTEM_FONT_DIRS = (
    "/usr/share/fonts",
    "/usr/local/share/fonts",
    "~/.fonts",
    "~/.local/share/fonts",
)
INSTALL_HINT = (
    "pass --fonts pip (fonts shipped with matplotlib) or run scripts/install-cjk-fonts.sh"
)

_SKIP_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp", "Mn", "Mc", "Me"})
# Compatibility variants that are another character in another style or width (MATHEMATICAL
# BOLD CAPITAL A, FULLWIDTH A, KANGXI RADICAL ONE); <super>, <circle>, <square>, ... look different
# from their base character and stay.
_VARIANT_TAGS = frozenset({"<font>", "<wide>", "<narrow>", "<compat>", "<noBreak>", "<isolated>"})
_INK_MIN = 32  # a render whose brightest pixel is below this is empty
_PHASE1_CHUNK = 4096
_PHASE2_CHUNK = 2048
_VAL_SLACK = 0.25  # val fonts are drawn among those within 25% of the best greedy score
_VAL_EXTRA = 0.5  # greedy score of a further val image of a class (a first one scores 1)
_FONT_CACHE_SIZE = 16

ProgressFn = Callable[[int, int], None]
FontSource = str | os.PathLike[str]
_T = TypeVar("_T")
_R = TypeVar("_R")


# -- public result types ---------------------------------------------------------------------
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


# -- internal records ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Face:
    """A usable face and how to render it at the dataset size."""

    path: str
    index: int
    postscript_name: str
    em_px: int  # Pillow font size: pixels per em
    baseline_y: int  # baseline row on the canvas


@dataclasses.dataclass(frozen=True)
class _FaceScan:
    face: _Face | None  # None when the face is unusable; `reason` says why
    reason: str
    codepoints: npt.NDArray[np.int32]
    rejected: dict[str, int]


# -- finding fonts ---------------------------------------------------------------------------
def find_fonts(source: FontSource | Sequence[FontSource]) -> list[Path]:
    """Font files (``.ttf``, ``.otf``, ``.ttc``, ``.otc``) from one or more sources.

    Args:
        source: ``"pip"`` (fonts inside installed pip packages: matplotlib's ``mpl-data/fonts``
            and any other font file under site-packages), ``"system"`` (``fc-list``, else
            ``/usr/share/fonts``, ``/usr/local/share/fonts``, ``~/.fonts``), a folder (searched
            recursively) or a font file; or a sequence of these.

    Returns:
        Sorted, de-duplicated absolute paths. Files are not opened here; unreadable ones are
        skipped (and reported) by :func:`plan_glyph_dataset`.

    Raises:
        ConfigError: a source is not ``pip``/``system``/an existing path, or gives no fonts.

    Example:
        >>> paths = find_fonts("pip")
        >>> any(p.name == "DejaVuSans.ttf" for p in paths)
        True
    """
    sources = _as_sources(source)
    found: set[Path] = set()
    for src in sources:
        found.update(_find_source(src))
    return sorted(found)


def _as_sources(source: FontSource | Sequence[FontSource]) -> list[str]:
    if isinstance(source, str | os.PathLike):
        items = [os.fspath(source)]
    else:
        items = [os.fspath(s) for s in source]
    if not items:
        raise ConfigError(f"no font source given; {INSTALL_HINT}")
    return items


def _find_source(src: str) -> list[Path]:
    if src == "pip":
        roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
        roots.update(site.getsitepackages())
        files = [p for r in sorted(roots) for p in _walk_fonts(Path(r))]
        if not files:
            raise ConfigError(
                "--fonts pip found no font files in the installed pip packages "
                f"({', '.join(sorted(roots))}); pip install matplotlib, or pass --fonts system/DIR"
            )
        return files
    if src == "system":
        files = _fc_list()
        if not files:
            files = [p for d in SYSTEM_FONT_DIRS for p in _walk_fonts(Path(d).expanduser())]
        if not files:
            raise ConfigError(
                "--fonts system found no installed fonts (fc-list, "
                f"{', '.join(SYSTEM_FONT_DIRS)}); {INSTALL_HINT}"
            )
        return files
    path = Path(src).expanduser()
    if path.is_dir():
        files = _walk_fonts(path)
        if not files:
            raise ConfigError(
                f"font folder {src} holds no font files ({', '.join(FONT_SUFFIXES)}); "
                f"{INSTALL_HINT} and pass --fonts system"
            )
        return files
    if path.is_file():
        if path.suffix.lower() not in FONT_SUFFIXES:
            raise ConfigError(
                f"--fonts {src} is not a font file (expected {', '.join(FONT_SUFFIXES)}); "
                "pass a font file or a folder of them"
            )
        return [path.resolve()]
    raise ConfigError(
        f"--fonts {src} is neither 'pip', 'system' nor an existing folder or font file; "
        f"check the path, or {INSTALL_HINT}"
    )


def _walk_fonts(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    out = []
    for dirpath, _dirs, files in os.walk(root, followlinks=True):
        for name in files:
            if name.lower().endswith(FONT_SUFFIXES):
                out.append((Path(dirpath) / name).resolve())
    return out


def _fc_list() -> list[Path]:
    exe = shutil.which("fc-list")
    if exe is None:
        return []
    try:
        res = subprocess.run(
            [exe, "--format", "%{file}\n"], capture_output=True, text=True, check=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return []
    files = {line.strip() for line in res.stdout.splitlines()}
    return [
        Path(f).resolve() for f in files if f.lower().endswith(FONT_SUFFIXES) and Path(f).is_file()
    ]


# -- scanning a font file (runs in workers) --------------------------------------------------
def _eligible(cp: int) -> bool:
    ch = chr(cp)
    if unicodedata.category(ch) in _SKIP_CATEGORIES or cp == 0xFFFD:
        return False
    # Canonical singletons (OHM SIGN -> OMEGA, CJK compatibility ideographs) are the same
    # character as their decomposition.
    if unicodedata.normalize("NFC", ch) != ch:
        return False
    tag = unicodedata.decomposition(ch).split(" ", 1)[0]
    return not (tag in _VARIANT_TAGS and len(unicodedata.normalize("NFKC", ch)) == 1)


def _name_says_other(glyph_name: str, ch: str) -> bool | None:
    """True if the glyph name decodes to a different character, None if it decodes to none."""
    from fontTools import agl

    decoded = agl.toUnicode(glyph_name)
    if len(decoded) != 1:
        return None
    if unicodedata.category(decoded) == "Co":  # legacy Adobe names of private-use glyphs
        return unicodedata.category(ch) != "Co"
    if decoded == ch:
        return False
    return unicodedata.normalize("NFKC", decoded) != unicodedata.normalize("NFKC", ch)


def _face_count(path: str) -> int:
    with open(path, "rb") as fh:
        head = fh.read(12)
    if head[:4] == b"ttcf":
        return int.from_bytes(head[8:12], "big")
    return 1


def _scan_file(args: tuple[int, str, int]) -> tuple[int, list[_FaceScan]]:
    """Open every face of one font file and list its candidate code points."""
    order, path, size = args
    return order, _scan_faces(path, size)


def _scan_faces(path: str, size: int) -> list[_FaceScan]:
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    empty = np.zeros(0, np.int32)
    try:
        n_faces = _face_count(path)
    except OSError as exc:
        return [_FaceScan(None, f"{path}: cannot read ({exc})", empty, {})]
    if n_faces < 1:
        return [_FaceScan(None, f"{path}: empty font collection", empty, {})]
    return [_scan_face(path, i, size) for i in range(n_faces)]


def _scan_face(path: str, index: int, size: int) -> _FaceScan:
    from fontTools.ttLib import TTFont

    collection = path.lower().endswith((".ttc", ".otc"))
    where = f"{path} face {index}" if collection else path
    empty = np.zeros(0, np.int32)
    try:
        tt = TTFont(path, fontNumber=index, lazy=True)
        cmap = tt.getBestCmap()
        metrics = _metrics(tt)
        name = tt["name"].getDebugName(6) if "name" in tt else None
        # Pillow must open it too (FreeType is stricter about some tables than fontTools).
        ImageFont.truetype(path, size=max(size, 8), index=index)
    except Exception as exc:  # fontTools/FreeType raise many types for broken files
        return _FaceScan(None, f"{where}: cannot open ({type(exc).__name__}: {exc})", empty, {})
    if not cmap:
        return _FaceScan(None, f"{where}: no Unicode cmap", empty, {})

    rejected = {"relabelled": 0, "shared_glyph": 0}
    slots = [(cp, g) for cp, g in sorted(cmap.items()) if _eligible(cp)]
    verdicts = [_name_says_other(g, chr(cp)) for cp, g in slots]
    decodable = [v for v in verdicts if v is not None]
    # In a font whose cmap is a re-labelled TeX/symbol encoding, many names disagree; there
    # only slots whose glyph name confirms the character are trusted.
    relabelled_font = len(decodable) >= 10 and sum(decodable) > 0.1 * len(decodable)
    kept: list[tuple[int, str]] = []
    for (cp, g), v in zip(slots, verdicts, strict=True):
        if v is True or (relabelled_font and v is None):
            rejected["relabelled"] += 1
        else:
            kept.append((cp, g))

    by_glyph: dict[str, list[int]] = {}
    for cp, g in kept:
        by_glyph.setdefault(g, []).append(cp)
    cps = []
    for group in by_glyph.values():
        if len(group) >= FALLBACK_MIN_SHARED:  # e.g. a last-resort font: one glyph per block
            rejected["shared_glyph"] += len(group)
        else:  # a glyph shared by a few code points is sorted out after rendering
            cps.extend(group)
    em_px, baseline_y = _layout(metrics, size)
    fallback_name = f"{Path(path).stem}#{index}" if collection else Path(path).stem
    face = _Face(path, index, name or fallback_name, em_px, baseline_y)
    return _FaceScan(face, "", np.array(sorted(cps), dtype=np.int32), rejected)


def _metrics(tt: Any) -> tuple[float, float]:
    """(ascent, descent) in em, descent <= 0: OS/2 typographic metrics, else hhea."""
    upem = float(tt["head"].unitsPerEm) or 1000.0
    candidates = []
    if "OS/2" in tt:
        os2 = tt["OS/2"]
        candidates.append((os2.sTypoAscender, os2.sTypoDescender))
    if "hhea" in tt:
        candidates.append((tt["hhea"].ascent, tt["hhea"].descent))
    for asc, desc in candidates:
        if asc > 0 and desc <= 0 and 0.5 <= (asc - desc) / upem <= 3.0:
            return asc / upem, desc / upem
    return 0.8, -0.2


def _layout(metrics: tuple[float, float], size: int) -> tuple[int, int]:
    """(pixels per em, baseline row) so the font's ascent..descent spans the usable canvas."""
    margin = _margin(size)
    usable = size - 2 * margin
    asc, desc = metrics
    line = min(max(asc - desc, 0.8), 1.5)
    em_px = max(1, round(usable / line))
    baseline_y = margin + round(usable * min(max(asc / (asc - desc), 0.5), 1.0))
    return em_px, baseline_y


def _margin(size: int) -> int:
    return max(1, round(size / 16))


# -- rendering (runs in workers) -------------------------------------------------------------
_font_cache: dict[tuple[str, int, int], ImageFont.FreeTypeFont] = {}


def _font(path: str, index: int, px: int) -> ImageFont.FreeTypeFont:
    key = (path, index, px)
    font = _font_cache.get(key)
    if font is None:
        if len(_font_cache) >= _FONT_CACHE_SIZE:
            _font_cache.pop(next(iter(_font_cache)))
        font = ImageFont.truetype(path, size=px, index=index, layout_engine=ImageFont.Layout.BASIC)
        _font_cache[key] = font
    return font


def _ink(font: ImageFont.FreeTypeFont, ch: str) -> tuple[Image.Image, int, int] | None:
    """The glyph's ink, cropped tight, and its top-left corner relative to the baseline origin.

    Pillow's ``getbbox`` spans the advance width and the baseline as well as the ink, so the
    glyph is drawn on a scratch canvas of that size and the ink box is measured there.
    """
    left, top, right, bottom = (int(v) for v in font.getbbox(ch, anchor="ls"))
    if right <= left or bottom <= top:
        return None
    pad = 2
    scratch = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(scratch).text((pad - left, pad - top), ch, font=font, fill=255, anchor="ls")
    box = scratch.getbbox()
    if box is None:
        return None
    return scratch.crop(box), box[0] - pad + left, box[1] - pad + top


def _render(face: _Face, ch: str, size: int) -> Image.Image | None:
    """The glyph of ``ch`` as a (size, size) mode-L image, white on black; None if empty."""
    margin = _margin(size)
    usable = size - 2 * margin
    try:
        ink = _ink(_font(face.path, face.index, face.em_px), ch)
        if ink is None:
            return None
        glyph, _, top = ink
        w, h = glyph.size
        if w <= usable and h <= usable:
            y = min(max(face.baseline_y + top, margin), size - margin - h)
        else:  # larger than the canvas: a smaller font size, centred both ways
            px = max(1, int(face.em_px * usable / max(w, h)))
            while True:
                ink = _ink(_font(face.path, face.index, px), ch)
                if ink is None:
                    return None
                glyph = ink[0]
                w, h = glyph.size
                if (w <= usable and h <= usable) or px == 1:
                    break
                px -= 1
            y = margin + (usable - h) // 2
    except (OSError, RuntimeError, ValueError):  # FreeType errors on broken glyphs
        return None
    img = Image.new("L", (size, size), 0)
    img.paste(glyph, (margin + (usable - w) // 2, y))
    peak = img.getextrema()[1]
    if not isinstance(peak, int) or peak < _INK_MIN:
        return None
    if peak < 255:  # hairlines shrunk into a small canvas: stretch so the ink peaks at 255
        img = img.point([min(255, v * 255 // peak) for v in range(256)])
    return img


def render_glyph(
    font_path: str | os.PathLike[str], char: str, *, size: int = 32, index: int = 0
) -> Image.Image | None:
    """Render one character the way the glyph dataset does.

    Args:
        font_path: a font file; index: face index in a collection.
        char: one character.
        size: image side in pixels.

    Returns:
        A (size, size) mode ``"L"`` PIL image, white glyph on black, or None when the font has no
        visible glyph for ``char`` (no cmap entry, or an empty render).

    Example:
        >>> from lscindex.glyphs import find_fonts, render_glyph
        >>> font = next(p for p in find_fonts("pip") if p.name == "DejaVuSans.ttf")
        >>> render_glyph(font, "A", size=32).size
        (32, 32)
    """
    if len(char) != 1:
        raise ConfigError(f"render_glyph takes one character, got {char!r}; pass a single char")
    if size < 8:
        raise ConfigError(f"size {size} is too small; use 8 or more pixels")
    path = os.fspath(font_path)
    scan = _scan_face(path, index, size)
    if scan.face is None:
        raise ConfigError(f"{scan.reason}; pass a readable .ttf/.otf/.ttc font")
    from fontTools.ttLib import TTFont

    cmap = TTFont(path, fontNumber=index, lazy=True).getBestCmap() or {}
    if ord(char) not in cmap:
        return None
    return _render(scan.face, char, size)


def _glyph_hash(img: Image.Image) -> int:
    return int.from_bytes(hashlib.blake2b(img.tobytes(), digest_size=8).digest(), "little")


def _hash_chunk(
    args: tuple[int, _Face, npt.NDArray[np.int32], int],
) -> tuple[int, npt.NDArray[np.int32], npt.NDArray[np.uint64], int]:
    """Render and hash code points of one face: (face idx, kept cps, hashes, n empty)."""
    idx, face, cps, size = args
    out_cps, out_hash = [], []
    for cp in cps.tolist():
        img = _render(face, chr(cp), size)
        if img is not None:
            out_cps.append(cp)
            out_hash.append(_glyph_hash(img))
    n_empty = len(cps) - len(out_cps)
    return idx, np.array(out_cps, np.int32), np.array(out_hash, np.uint64), n_empty


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


# -- parallel map ----------------------------------------------------------------------------
class _Workers:
    """Parallel map over a spawn process pool (safe in threaded parents such as a rich bar).

    The pool starts on first use and serves every phase of one build, so worker start-up
    (importing numpy, Pillow and fontTools) is paid once. ``n <= 1`` maps in this process.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self._pool: Any = None

    def imap(self, fn: Callable[[_T], _R], tasks: Sequence[_T]) -> Iterator[_R]:
        if self.n <= 1 or len(tasks) <= 1:
            yield from map(fn, tasks)
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.n, mp_context=multiprocessing.get_context("spawn")
            )
        try:
            yield from self._pool.map(fn, tasks, chunksize=1)
        except BrokenProcessPool:
            # A spawned worker re-imports the caller's main module; a script that builds at
            # import time instead of under a main guard kills its workers this way.
            raise LscIndexError(
                "glyph rendering worker processes died while starting; call build_glyph_dataset "
                "from under `if __name__ == '__main__':` in scripts, or pass workers=1"
            ) from None

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=exc_type is None, cancel_futures=exc_type is not None)


# -- planning --------------------------------------------------------------------------------
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
    # Only code points in enough cmaps can become classes: render just those.
    uniq, counts = np.unique(np.concatenate(face_cps), return_counts=True)
    wanted = uniq[counts >= min_fonts + 1]
    face_cps = [c[np.isin(c, wanted, assume_unique=True)] for c in face_cps]
    rendered = _hash_glyphs(faces, face_cps, size, pool, progress, rejected)
    face_arr, cp_arr, hash_arr, dropped = _distinct_bitmaps(rendered)
    for k, v in dropped.items():
        rejected[k] += v

    # Split by font, then keep one copy of each identical (character, bitmap): the val copy if
    # there is one (so no val image is also a train image), else the first train font's.
    rng = np.random.default_rng(seed)
    val_idx = _choose_val_fonts(face_arr, cp_arr, hash_arr, len(faces), val_fonts, min_fonts, rng)
    is_val = np.zeros(len(faces), bool)
    is_val[val_idx] = True
    rank = np.empty(len(faces), np.int64)
    rank[val_idx + [i for i in range(len(faces)) if not is_val[i]]] = np.arange(len(faces))
    order = np.lexsort((rank[face_arr], hash_arr, cp_arr))
    keep = np.sort(order[_group_starts(cp_arr[order], hash_arr[order])])
    face_arr, cp_arr = face_arr[keep], cp_arr[keep]
    ent_val = is_val[face_arr]

    # Classes: one val image and min_fonts train images; --classes keeps the best covered.

    classes_all, cls = np.unique(cp_arr, return_inverse=True)
    n_val_cls = np.bincount(cls[ent_val], minlength=len(classes_all))
    n_train_cls = np.bincount(cls[~ent_val], minlength=len(classes_all))
    ok = (n_val_cls >= 1) & (n_train_cls >= min_fonts)
    n_available = int(ok.sum())
    settings = f"--fonts {source_text} --min-fonts {min_fonts} --val-fonts {val_fonts}"
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
    labels = label_of[cls]
    sel = labels >= 0
    face_arr, cp_arr, labels = face_arr[sel], cp_arr[sel], labels[sel]

    images = np.bincount(face_arr, minlength=len(faces))
    ids = _font_ids(faces)
    glyph_fonts = tuple(
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
    n_val = int(is_val[face_arr].sum())
    return GlyphPlan(
        classes=tuple(chr(c) for c in classes_all[chosen].tolist()),
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


def _scan_fonts(
    files: Sequence[Path], size: int, pool: _Workers
) -> tuple[list[_Face], list[npt.NDArray[np.int32]], list[str], dict[str, int]]:
    """Usable faces (first of each PostScript name) with their candidate code points.

    Returns (faces, candidate cps per face, "path: reason" per unusable face, reject counts).
    """
    faces: list[_Face] = []
    face_cps: list[npt.NDArray[np.int32]] = []
    skipped: list[str] = []
    rejected = dict.fromkeys(
        ("relabelled", "shared_glyph", "empty", "fallback", "homoglyph", "confusable"), 0
    )
    seen_names: set[str] = set()
    scans = pool.imap(_scan_file, [(i, str(p), size) for i, p in enumerate(files)])
    for _, file_scans in sorted(scans):
        for scan in file_scans:
            if scan.face is None:
                skipped.append(scan.reason)
            elif scan.face.postscript_name not in seen_names:  # pip and system DejaVu: once
                seen_names.add(scan.face.postscript_name)
                faces.append(scan.face)
                face_cps.append(scan.codepoints)
                for k, v in scan.rejected.items():
                    rejected[k] += v
    return faces, face_cps, skipped, rejected


def _hash_glyphs(
    faces: Sequence[_Face],
    face_cps: Sequence[npt.NDArray[np.int32]],
    size: int,
    pool: _Workers,
    progress: ProgressFn | None,
    rejected: dict[str, int],
) -> list[tuple[int, npt.NDArray[np.int32], npt.NDArray[np.uint64]]]:
    """Render every candidate: [(face index, ascending drawn cps, bitmap hashes)] by face."""
    tasks = [
        (i, faces[i], cps[j : j + _PHASE1_CHUNK], size)
        for i, cps in sorted(enumerate(face_cps), key=lambda t: -len(t[1]))  # big fonts first
        for j in range(0, len(cps), _PHASE1_CHUNK)
    ]
    total = sum(len(t[2]) for t in tasks)
    done = 0
    if progress is not None:
        progress(0, total)
    parts: dict[int, list[tuple[npt.NDArray[np.int32], npt.NDArray[np.uint64]]]] = {}
    for idx, cps, hashes, n_empty in pool.imap(_hash_chunk, tasks):
        parts.setdefault(idx, []).append((cps, hashes))
        rejected["empty"] += n_empty
        done += len(cps) + n_empty
        if progress is not None:
            progress(done, total)
    rendered = []
    for idx in sorted(parts):
        cps = np.concatenate([p[0] for p in parts[idx]])
        hashes = np.concatenate([p[1] for p in parts[idx]])
        order = np.argsort(cps, kind="stable")
        rendered.append((idx, cps[order], hashes[order]))
    return rendered


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
    pair_keys, identical = (
        np.unique(np.concatenate([np.zeros(0, np.int64), *pairs]), True)[::1][:1][0],
        None,
    )
    del pair_keys, identical
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


def _check_workers(workers: int | None) -> int:
    if workers is None:
        if hasattr(os, "sched_getaffinity"):  # the CPUs this process may use, not the machine's
            return len(os.sched_getaffinity(0)) or 1
        return os.cpu_count() or 1
    if workers < 1:
        raise ConfigError(f"--workers {workers} must be at least 1; pass --workers 1 or more")
    return workers


# -- building --------------------------------------------------------------------------------
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
        out: dataset directory to create (see the module docstring for the layout).
        fonts, n_classes, size, val_fonts, min_fonts, seed, workers: see
            :func:`plan_glyph_dataset`.
        overwrite: replace an existing non-empty ``out``.
        progress: ``progress(done, total)``; ``total`` first counts the glyphs to analyse and
            grows by the images to write once they are known.

    Returns:
        A :class:`GlyphDatasetInfo` (counts, classes, fonts per split, paths).

    Raises:
        ConfigError: ``out`` exists and is not empty (without ``overwrite``) or is a file, or
            any error of :func:`plan_glyph_dataset`.

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
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.building-", dir=out_path.parent))
        tmp.chmod(public_dir_mode())  # mkdtemp makes it private; the data set is not
        try:
            _write_dataset(tmp, plan, pool, analysed[1], progress)
            _check_out(out_path, overwrite)  # it may have appeared while we were rendering
            _move_into_place(tmp, out_path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return GlyphDatasetInfo(
        out=out_path,
        n_classes=plan.n_classes,
        classes=plan.classes,
        n_train=plan.n_train,
        n_val=plan.n_val,
        train_fonts=plan.train_fonts,
        val_fonts=plan.val_fonts,
        size=size,
        seed=seed,
        min_fonts=min_fonts,
        train_dir=out_path / "train",
        val_dir=out_path / "val",
        manifest_path=out_path / "manifest.parquet",
        classes_path=out_path / "classes.json",
        dataset_json_path=out_path / "dataset.json",
    )


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} exists and is not a folder; choose another OUT path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"output folder {out} already exists and is not empty; pass --overwrite to replace "
            "it, or choose another OUT path"
        )


def _move_into_place(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.replace(tmp, out)
        return
    # Swap: the old dataset is renamed aside first, so `out` is never half old, half new.
    trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, trash / out.name)
    try:
        os.replace(tmp, out)
    except OSError:
        os.replace(trash / out.name, out)
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def _write_dataset(
    root: Path, plan: GlyphPlan, pool: _Workers, done_before: int, progress: ProgressFn | None
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = [g.font for g in plan.fonts]
    splits = [g.split for g in plan.fonts]
    dirs = [class_dir_name(c) for c in plan.classes]
    for split in ("train", "val"):
        for d in dirs:
            (root / split / d).mkdir(parents=True, exist_ok=True)

    rel = [
        f"{splits[f]}/{dirs[lab]}/{ids[f]}.png"
        for f, lab in zip(plan._face.tolist(), plan._label.tolist(), strict=True)
    ]
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
    _write_json(root / "classes.json", list(plan.classes))
    _write_json(root / "dataset.json", _dataset_json(plan))


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
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))
