"""Finding font files: installed pip packages, the system's fonts (``fc-list``), folders."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sysconfig
from collections.abc import Sequence
from pathlib import Path

from lscindex.errors import ConfigError

__all__ = ["FONT_SUFFIXES", "FontSource", "find_fonts"]

FONT_SUFFIXES = (".ttf", ".otf", ".ttc", ".otc")

SYSTEM_FONT_DIRS = (
    "/usr/share/fonts",
    "/usr/local/share/fonts",
    "~/.fonts",
    "~/.local/share/fonts",
)
INSTALL_HINT = (
    "pass --fonts pip (fonts shipped with matplotlib) or run scripts/install-cjk-fonts.sh"
)

FontSource = str | os.PathLike[str]


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
