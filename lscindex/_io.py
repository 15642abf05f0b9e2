"""Private: atomic publishing of files and folders, and file digests. No heavy imports.

Files are written to a temp file in the same folder, fsynced and renamed over the target;
folders are built under a temp name beside the target and swapped in with :func:`swap_dir`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "file_sha256",
    "fsync_dir",
    "public_dir_mode",
    "swap_dir",
]


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename inside ``path`` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create private (0600/0700) entries; what we publish gets the usual modes.
_FILE_MODE = 0o666 & ~_umask()
_DIR_MODE = 0o777 & ~_umask()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder, fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Atomically write ``data`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def public_dir_mode() -> int:
    """The mode a new folder gets under the process umask (mkdtemp folders are 0700)."""
    return _DIR_MODE


def swap_dir(new: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """Publish the finished folder ``new`` at ``final``, replacing what is there.

    ``final`` is never half old, half new: an existing entry is renamed aside into a fresh
    folder beside it, ``new`` is renamed into place, then the old one is removed. If the second
    rename fails the old entry is put back. Both paths must be on the same file system.
    """
    new, final = Path(new), Path(final)
    if not final.exists() and not final.is_symlink():
        os.replace(new, final)
        fsync_dir(final.parent)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
    os.replace(final, trash / final.name)
    try:
        os.replace(new, final)
    except OSError:
        os.replace(trash / final.name, final)
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)
    fsync_dir(final.parent)


def file_sha256(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> str:
    """Hex sha256 over the bytes of one file, or of several files one after another."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
