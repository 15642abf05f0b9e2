"""lscindex.glyphs: the glyph dataset builder, on the fonts matplotlib ships (offline, seconds)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lscindex.errors import ConfigError
from lscindex.glyphs import (
    FALLBACK_MIN_SHARED,
    GlyphDatasetInfo,
    build_glyph_dataset,
    class_dir_name,
    find_fonts,
    plan_glyph_dataset,
    render_glyph,
)
from lscindex.glyphs.plan import _distinct_bitmaps

N_CLASSES = 20
SIZE = 16
MANIFEST_COLUMNS = ["path", "label", "class_name", "codepoint", "font", "split"]
FEW_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> GlyphDatasetInfo:
    out = tmp_path_factory.mktemp("glyphs") / "ds"
    return build_glyph_dataset(out, fonts="pip", n_classes=N_CLASSES, size=SIZE, seed=0, workers=2)


@pytest.fixture(scope="module")
def manifest(dataset: GlyphDatasetInfo) -> list[dict[str, Any]]:
    return pq.read_table(dataset.manifest_path).to_pylist()


@pytest.fixture()
def few_fonts(tmp_path: Path) -> Path:
    """A folder with four DejaVu faces: enough for --min-fonts 2 --val-fonts 1, renders fast."""
    folder = tmp_path / "fonts"
    folder.mkdir()
    for p in find_fonts("pip"):
        if p.name in FEW_FONTS:
            shutil.copy(p, folder / p.name)
    assert sorted(p.name for p in folder.iterdir()) == sorted(FEW_FONTS)
    return folder


def small(fonts: Path, **over: Any) -> dict[str, Any]:
    """Arguments for a quick build from the ``few_fonts`` folder."""
    return {"fonts": fonts, "size": SIZE, "min_fonts": 2, "val_fonts": 1, **over}


# -- layout and metadata ---------------------------------------------------------------------
def test_layout_and_manifest_match_files_on_disk(
    dataset: GlyphDatasetInfo, manifest: list[dict[str, Any]]
) -> None:
    out = dataset.out
    assert sorted(p.name for p in out.iterdir()) == [
        "classes.json",
        "dataset.json",
        "manifest.parquet",
        "train",
        "val",
    ]
    assert pq.read_schema(dataset.manifest_path).names == MANIFEST_COLUMNS
    assert str(pq.read_schema(dataset.manifest_path).field("label").type) == "int64"
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.glob("*/*/*.png"))
    assert sorted(r["path"] for r in manifest) == on_disk
    assert len(manifest) == dataset.n_train + dataset.n_val
    assert sum(r["split"] == "train" for r in manifest) == dataset.n_train
    assert not list(out.parent.glob(".ds.*")), "temporary build folders left behind"


def test_labels_follow_sorted_class_dirs(
    dataset: GlyphDatasetInfo, manifest: list[dict[str, Any]]
) -> None:
    classes = json.loads(dataset.classes_path.read_text(encoding="utf-8"))
    assert classes == list(dataset.classes) and len(classes) == N_CLASSES
    assert [ord(c) for c in classes] == sorted(ord(c) for c in classes)
    for split_dir in (dataset.train_dir, dataset.val_dir):
        dirs = sorted(p.name for p in split_dir.iterdir())
        assert dirs == [class_dir_name(c) for c in classes]  # ImageFolder's label order
    for r in manifest:
        assert r["class_name"] == classes[r["label"]]
        assert r["codepoint"] == ord(r["class_name"])
        assert r["path"] == f"{r['split']}/{class_dir_name(r['class_name'])}/{r['font']}.png"
    assert class_dir_name("A") == "U+000041"


def test_split_by_font_and_every_class_in_both_splits(
    dataset: GlyphDatasetInfo, manifest: list[dict[str, Any]]
) -> None:
    train_fonts = {r["font"] for r in manifest if r["split"] == "train"}
    val_fonts = {r["font"] for r in manifest if r["split"] == "val"}
    assert train_fonts and val_fonts and not train_fonts & val_fonts
    assert train_fonts == set(dataset.train_fonts) and val_fonts == set(dataset.val_fonts)
    assert len(val_fonts) == 2
    for split in ("train", "val"):
        assert {r["label"] for r in manifest if r["split"] == split} == set(range(N_CLASSES))
    per_class = np.bincount([r["label"] for r in manifest if r["split"] == "train"])
    assert per_class.min() >= dataset.min_fonts


def test_dataset_json_records_the_build(dataset: GlyphDatasetInfo) -> None:
    meta = json.loads(dataset.dataset_json_path.read_text(encoding="utf-8"))
    assert meta["format_version"] == 1
    assert meta["size"] == SIZE and meta["seed"] == 0 and meta["n_classes"] == N_CLASSES
    assert meta["counts"] == {"train": dataset.n_train, "val": dataset.n_val}
    assert meta["sources"] == ["pip"]
    val = {f["font"] for f in meta["fonts"] if f["split"] == "val"}
    assert val == set(dataset.val_fonts)


# -- images ----------------------------------------------------------------------------------
def test_images_are_square_grayscale_and_not_blank(
    dataset: GlyphDatasetInfo, manifest: list[dict[str, Any]]
) -> None:
    for r in manifest:
        with Image.open(dataset.out / r["path"]) as img:
            assert img.mode == "L" and img.size == (SIZE, SIZE)
            px = np.asarray(img)
        assert px.max() == 255, r["path"]  # white ink on black, full contrast
        assert (px == 0).mean() > 0.3, r["path"]  # the background stays black


def test_no_two_classes_of_one_font_share_a_bitmap(
    dataset: GlyphDatasetInfo, manifest: list[dict[str, Any]]
) -> None:
    by_font: dict[str, set[str]] = {}
    for r in manifest:
        digest = hashlib.sha256((dataset.out / r["path"]).read_bytes()).hexdigest()
        seen = by_font.setdefault(r["font"], set())
        assert digest not in seen, f"{r['path']} repeats another class of {r['font']}"
        seen.add(digest)
    # matplotlib's last-resort font draws one box per Unicode block: pure fallback glyphs
    assert "LastResortHE-Regular" not in by_font


def test_fallback_homoglyph_and_confusable_rules() -> None:
    box, a, other = 1, 2, 3
    cps = np.arange(65, 65 + FALLBACK_MIN_SHARED + 3, dtype=np.int32)
    # font 0: FALLBACK_MIN_SHARED code points share one box, two share a glyph, one is unique
    h0 = np.array([box] * FALLBACK_MIN_SHARED + [a, a, other], np.uint64)
    # font 1 draws the same code points, all distinct
    h1 = np.arange(10, 10 + len(cps), dtype=np.uint64)
    face, cp, _, counts = _distinct_bitmaps([(0, cps, h0), (1, cps, h1)])
    kept0 = cp[face == 0].tolist()
    assert kept0 == [cps[-3], cps[-1]]  # the homoglyph pair keeps its lowest code point
    assert counts["fallback"] == FALLBACK_MIN_SHARED and counts["homoglyph"] == 1
    # identical in 1 of the 2 fonts drawing both: confusable, dropped from every font
    assert cps[-2] not in cp.tolist() and counts["confusable"] == 1
    assert cp[face == 1].tolist() == [c for c in cps.tolist() if c != cps[-2]]


def test_render_glyph_places_ink_inside_the_margin() -> None:
    font = next(p for p in find_fonts("pip") if p.name == "DejaVuSans.ttf")
    big, small = render_glyph(font, "O", size=32), render_glyph(font, "o", size=32)
    assert big is not None and small is not None and big.size == (32, 32) and big.mode == "L"
    assert big.getbbox() is not None and small.getbbox() is not None
    left, top, right, bottom = big.getbbox()
    assert left >= 2 and top >= 2 and right <= 30 and bottom <= 30  # 2 px margin at size 32
    # one em per font, not one glyph per canvas: case survives
    assert (small.getbbox()[3] - small.getbbox()[1]) < (bottom - top)
    assert render_glyph(font, "\u4e00", size=32) is None  # DejaVu has no CJK


def test_same_seed_gives_the_same_dataset(tmp_path: Path, few_fonts: Path) -> None:
    kw = small(few_fonts, n_classes=30)
    a = build_glyph_dataset(tmp_path / "a", seed=3, workers=1, **kw)
    b = build_glyph_dataset(tmp_path / "b", seed=3, workers=2, **kw)
    rows_a = pq.read_table(a.manifest_path).to_pylist()
    assert rows_a == pq.read_table(b.manifest_path).to_pylist()
    for r in rows_a:
        assert (a.out / r["path"]).read_bytes() == (b.out / r["path"]).read_bytes()
    seeds = {plan_glyph_dataset(seed=s, workers=1, **kw).val_fonts for s in range(4)}
    assert len(seeds) > 1, "the seed should change which fonts are held out"


def test_overwrite_replaces_an_existing_dataset(tmp_path: Path, few_fonts: Path) -> None:
    out = tmp_path / "ds"
    build_glyph_dataset(out, workers=1, **small(few_fonts, n_classes=6))
    (out / "old.txt").write_text("old")  # inside a glyph dataset: replaced with it
    info = build_glyph_dataset(out, overwrite=True, workers=1, **small(few_fonts, n_classes=5))
    assert not (out / "old.txt").exists() and info.n_classes == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "fonts"]


# -- errors ----------------------------------------------------------------------------------
def test_nonexistent_font_dir(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-fonts"
    with pytest.raises(ConfigError, match=re.escape(str(missing))):
        build_glyph_dataset(tmp_path / "out", fonts=missing)
    assert not (tmp_path / "out").exists()


def test_font_dir_without_fonts(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no fonts here")
    with pytest.raises(ConfigError, match=re.escape(str(empty))) as err:
        find_fonts(empty)
    assert "--fonts pip" in str(err.value) and "install-cjk-fonts.sh" in str(err.value)


def test_unreadable_font_files_are_skipped(tmp_path: Path, few_fonts: Path) -> None:
    (few_fonts / "broken.ttf").write_bytes(b"not a font at all")
    plan = plan_glyph_dataset(workers=1, **small(few_fonts, n_classes=5))
    assert plan.n_classes == 5 and plan.n_font_files == 5
    assert len(plan.skipped_fonts) == 1 and "broken.ttf" in plan.skipped_fonts[0]


def test_too_many_classes_says_how_many_exist(tmp_path: Path, few_fonts: Path) -> None:
    with pytest.raises(ConfigError, match=r"--classes 1000000 .* the (\d+) classes available"):
        build_glyph_dataset(tmp_path / "out", **small(few_fonts, n_classes=1_000_000))
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fonts"]


@pytest.mark.parametrize("n", [1, 0])
def test_fewer_than_two_classes(tmp_path: Path, n: int) -> None:
    with pytest.raises(ConfigError, match=f"--classes {n} is too few"):
        build_glyph_dataset(tmp_path / "out", n_classes=n)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"size": 4}, "--size 4"),
        ({"val_fonts": 0}, "--val-fonts 0"),
        ({"workers": 0}, "--workers 0"),
    ],
)
def test_bad_numbers(tmp_path: Path, kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        build_glyph_dataset(tmp_path / "out", **kwargs)


def test_refuses_non_empty_out_and_leaves_it_untouched(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(ConfigError, match="--overwrite") as err:
        build_glyph_dataset(out, n_classes=5)
    assert str(out) in str(err.value)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


# -- CLI -------------------------------------------------------------------------------------
def test_cli_builds_a_dataset(
    tmp_path: Path, few_fonts: Path, capsys: pytest.CaptureFixture
) -> None:
    from lscindex_cli.main import main

    out = tmp_path / "cli-ds"
    args = ["data", "glyphs", str(out), "--fonts", str(few_fonts), "--classes", "6"]
    args += ["--size", "16", "--min-fonts", "2", "--val-fonts", "1", "--workers", "1"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--dry-run"])
    assert exit_info.value.code in (0, None)
    assert "Would write 6 classes" in capsys.readouterr().out and not out.exists()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (0, None)
    stdout = capsys.readouterr().out
    assert "6 classes" in stdout and str(out) in stdout
    assert len(json.loads((out / "classes.json").read_text(encoding="utf-8"))) == 6


def test_cli_bad_input_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from lscindex_cli.main import main

    missing = tmp_path / "nowhere"
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "glyphs", str(tmp_path / "out"), "--fonts", str(missing)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and str(missing) in err


def test_library_module_does_not_import_the_cli() -> None:
    code = "import sys, lscindex.glyphs; print(sorted({'typer', 'rich'} & set(sys.modules)))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"
