"""Scanning font faces: the code points a face draws as itself, and where its baseline sits."""

from __future__ import annotations

import dataclasses
import logging
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import ImageFont

from lscindex.glyphs._workers import _Workers

__all__ = ["FALLBACK_MIN_SHARED"]

FALLBACK_MIN_SHARED = 8
"""A bitmap (or glyph) shared by this many code points of one font is a fallback glyph."""

_SKIP_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp", "Mn", "Mc", "Me"})
# Compatibility variants that are another character in another style or width (MATHEMATICAL
# BOLD CAPITAL A, FULLWIDTH A, KANGXI RADICAL ONE); <super>, <circle>, <square>, ... look different
# from their base character and stay.
_VARIANT_TAGS = frozenset({"<font>", "<wide>", "<narrow>", "<compat>", "<noBreak>", "<isolated>"})


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


# -- one font file (runs in workers) ---------------------------------------------------------
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


# -- every font file -------------------------------------------------------------------------
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
