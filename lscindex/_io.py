"""Private: atomic publishing of files and folders, writer locks, file digests. No heavy imports.

Files are written to a temp file in the same folder, fsynced and renamed over the target;
folders are built under a temp name beside the target and swapped in with :func:`swap_dir`.
:func:`writer_lock` keeps a second process from writing the same store or run at once.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lscindex.errors import LscIndexError, StoreError

__all__ = [
    "LOCK_SUFFIX",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_with",
    "file_sha256",
    "fsync_dir",
    "json_bytes",
    "public_dir_mode",
    "swap_dir",
    "writer_lock",
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
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        # name the file being written, not its hidden temporary
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_with(path: str | os.PathLike[str], write: Callable[[Path], object]) -> None:
    """Publish what ``write(temp_path)`` writes at ``path`` atomically (for writers that want a
    file name, such as ``faiss.write_index``): a unique temp file beside ``path``, fsync,
    rename; the temp file is removed if anything fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, _FILE_MODE)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def json_bytes(data: Any) -> bytes:
    """``data`` as the indented, key-sorted JSON lscindex writes its own files in."""
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Atomically write ``data`` as indented JSON."""
    atomic_write_bytes(path, json_bytes(data))


def public_dir_mode() -> int:
    """The mode a new folder gets under the process umask (mkdtemp folders are 0700)."""
    return _DIR_MODE


def swap_dir(new: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """Publish the finished folder ``new`` at ``final``, replacing what is there.

    ``final`` is never missing and never half old, half new: on Linux the two are exchanged in
    one atomic ``renameat2(RENAME_EXCHANGE)`` and the old one (now at ``new``) is removed.
    Elsewhere the old entry is renamed aside into a fresh folder beside it and ``new`` renamed
    into place (a crash between the two renames leaves the old one in ``.NAME.old-*``); if the
    second rename fails the old entry is put back. Both paths must be on one file system.
    """
    new, final = Path(new), Path(final)
    if not final.exists() and not final.is_symlink():
        os.replace(new, final)
        fsync_dir(final.parent)
        return
    if _exchange(new, final):
        fsync_dir(final.parent)
        shutil.rmtree(new) if new.is_dir() and not new.is_symlink() else new.unlink()
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
    os.replace(final, trash / final.name)
    try:
        os.replace(new, final)
    except OSError:
        os.replace(trash / final.name, final)
        trash.rmdir()
        raise
    fsync_dir(final.parent)
    shutil.rmtree(trash, ignore_errors=True)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2``); False where unsupported."""
    import ctypes
    import errno

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False  # kernel or file system without RENAME_EXCHANGE
    raise OSError(err, os.strerror(err), str(b))


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


LOCK_SUFFIX = ".lock"


@contextmanager
def writer_lock(
    path: str | os.PathLike[str], what: str, *, error: type[LscIndexError] = StoreError
) -> Iterator[Path]:
    """Hold ``<path>.lock`` while writing ``path``, so two processes never write it at once.

    The lock file sits *beside* ``path`` (``emb.zarr.lock``, ``runs/glyphs.lock``), never inside
    it: ``path`` need not exist yet, a run directory's "is it empty" check never sees it, and a
    zarr store stays plain zarr. It is created with ``O_CREAT | O_EXCL`` and holds JSON
    ``{"pid", "host", "started"}``. A lock whose process is gone from this host is stale and
    taken over; one held by a live process (or by another host, which cannot be checked) is not.
    The lock is removed when the block ends, by an exception too, unless another process has
    taken it over meanwhile.

    Args:
        path: the store or run directory about to be written (symlinks resolved, so two names
            of one folder share a lock).
        what: what ``path`` is, for the message ("store", "run").
        error: the exception raised when the lock is held.

    Yields:
        The lock file's path.

    Raises:
        error: another writer holds the lock; the message names its pid and host.

    Example:
        >>> with writer_lock("emb.zarr", "store"):  # doctest: +SKIP
        ...     ...  # only this process writes emb.zarr here
    """
    target = Path(os.path.realpath(path))
    lock = target.with_name(target.name + LOCK_SUFFIX)
    lock.parent.mkdir(parents=True, exist_ok=True)
    mine = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
    _acquire(lock, mine, f"{what} {path}", error)
    try:
        yield lock
    finally:
        if _read_lock(lock) == mine:
            lock.unlink(missing_ok=True)


def _acquire(lock: Path, mine: dict[str, Any], what: str, error: type[LscIndexError]) -> None:
    # The lock appears with its content: written to a private temp file first, then hard-linked
    # to the lock's name (link fails if the name exists), so no reader ever sees it empty.
    fd, tmp = tempfile.mkstemp(prefix=f".{lock.name}.", suffix=".tmp", dir=lock.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        os.write(fd, json.dumps(mine).encode())
        os.fsync(fd)
        os.close(fd)
        for _ in range(8):  # each round acquires, refuses, or clears one stale lock
            try:
                os.link(tmp, lock)
                return
            except FileExistsError:
                pass
            holder = _read_lock(lock)
            if holder is not None and holder_is_gone(holder):
                _clear_stale(lock, holder)
                continue
            if holder is None:
                raise error(
                    f"{what} is locked by {lock}, which names no writer; if no other lscindex "
                    f"process is writing it, remove {lock}"
                ) from None
            raise error(
                f"{what} is being written by another lscindex process (pid {holder['pid']} on "
                f"{holder['host']}, since {holder.get('started', '?')}); wait for it to finish, "
                f"or remove {lock} if that process is gone"
            ) from None
        raise error(f"{what}: could not take {lock} (it keeps changing); try again")
    finally:
        Path(tmp).unlink(missing_ok=True)


def _read_lock(lock: Path) -> dict[str, Any] | None:
    """The holder a lock file names; None when it is missing, empty or not a lock."""
    try:
        holder = json.loads(lock.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int):
        return None
    if not isinstance(holder.get("host"), str):
        return None
    return holder


def holder_is_gone(holder: dict[str, Any]) -> bool:
    """The holder ran on this host and its process is gone."""
    if holder["host"] != socket.gethostname() or holder["pid"] <= 0:
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: alive, another user's
        return False
    return False


def _clear_stale(lock: Path, holder: dict[str, Any]) -> None:
    """Remove a stale lock unless a live one replaced it since it was read.

    Moving it aside first makes the check-and-remove safe against a second process doing the
    same: whoever moved a fresh lock puts it back (``link`` fails rather than overwrite).
    """
    aside = lock.with_name(f"{lock.name}.{uuid.uuid4().hex}.stale")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return  # someone else cleared it
    if _read_lock(aside) != holder:
        try:
            os.link(aside, lock)
        except FileExistsError:
            pass  # a third process got in between; it now holds the lock
        except OSError:  # a file system without hard links: rename it back instead
            os.replace(aside, lock)
    aside.unlink(missing_ok=True)
