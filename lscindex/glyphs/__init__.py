"""Glyph datasets: characters rendered from real font files, one class per character.

The split is **by font**: every image of a validation font is in ``val`` and no validation font is
used for training, so validation accuracy measures generalisation to unseen type styles.

Pipeline (``plan_glyph_dataset``, then ``build_glyph_dataset`` writes the images):

1. **Find** font files (:func:`find_fonts`, :mod:`~lscindex.glyphs.fonts`): ``"pip"`` (fonts
   inside installed pip packages, e.g. matplotlib's DejaVu, STIX and Computer Modern),
   ``"system"`` (``fc-list``) or folders/files. Each face of a collection (``.ttc``) counts as one
   font; faces with the same PostScript name are kept once.
2. **Scan** each face's Unicode cmap (fontTools, :mod:`~lscindex.glyphs.scan`): skip whitespace,
   control, format, combining, private-use, surrogate and unassigned code points, characters
   canonically equivalent to another one (U+2126 OHM SIGN is U+03A9) and style/width variants of
   another character (MATHEMATICAL BOLD CAPITAL A, FULLWIDTH LATIN CAPITAL LETTER A, KANGXI
   RADICAL ONE). Reject slots whose glyph name says they hold another character (TeX-encoded
   fonts such as ``cmr10`` put ``¡`` in the ``<`` slot) and glyphs shared by many code points
   (fallback glyphs).
3. **Render and hash** every candidate glyph at the output size (:mod:`~lscindex.glyphs.rendering`).
   In each font, an empty render is rejected, a bitmap shared by ``FALLBACK_MIN_SHARED`` or more
   code points is a fallback ("tofu") glyph and rejected for all of them, and a bitmap shared by a
   few code points (homoglyphs such as Latin A / Greek Alpha / Cyrillic A) is kept only for the
   lowest code point, so no two classes of one font ever share a bitmap. A character identical to
   a lower code point in at least half of the fonts that draw both (Greek Alpha) is dropped from
   every font.
4. **Select** (:mod:`~lscindex.glyphs.plan`). Identical bitmaps of one character from different
   fonts (regional faces of one collection, a font installed twice) count once: the validation
   copy is kept, the training copies are dropped, so no validation image also appears in
   training. Validation fonts are chosen greedily (seeded) to give as many characters as possible
   a validation image while leaving ``min_fonts`` distinct training styles. A class is kept when
   it has at least one validation image and ``min_fonts`` training images.
5. **Write** the images and metadata (:mod:`~lscindex.glyphs.dataset`).

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

from lscindex.glyphs.dataset import (
    FORMAT_VERSION,
    GlyphDatasetInfo,
    build_glyph_dataset,
    class_dir_name,
)
from lscindex.glyphs.fonts import FONT_SUFFIXES, find_fonts
from lscindex.glyphs.plan import (
    DEFAULT_MIN_FONTS,
    DEFAULT_VAL_FONTS,
    GlyphFont,
    GlyphPlan,
    plan_glyph_dataset,
)
from lscindex.glyphs.rendering import render_glyph
from lscindex.glyphs.scan import FALLBACK_MIN_SHARED

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
