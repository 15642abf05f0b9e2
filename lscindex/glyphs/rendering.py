"""Rendering glyphs to images, and hashing every candidate glyph to compare bitmaps."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from lscindex.errors import ConfigError
from lscindex.glyphs._workers import ProgressFn, _Workers
from lscindex.glyphs.scan import _Face, _margin, _scan_face

__all__ = ["render_glyph"]

_INK_MIN = 32  # a render whose brightest pixel is below this is empty
_PHASE1_CHUNK = 4096
_FONT_CACHE_SIZE = 16

# -- one glyph (runs in workers) -------------------------------------------------------------
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


# -- every candidate glyph -------------------------------------------------------------------
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
