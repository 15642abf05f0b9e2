"""Private: where a store or an index lives, a local path or an fsspec URL.

A local path stays a :class:`pathlib.Path` and keeps :mod:`lscindex._io`'s guarantees (temp
file, fsync, rename; folder swaps; ``O_EXCL`` locks). A URL (``s3://``, ``gs://``, ``az://``,
``memory://``, ...) becomes a :class:`RemotePath`: the few pathlib operations the store and the
index use, over one fsspec file system. On object stores every object is written by one PUT,
which readers see whole or not at all, so a chunk's metadata part still marks it done and an
interrupted embed resumes as on local disk. ``file://`` URLs are local paths.

The functions here take either kind (:data:`Location`) and do the right thing for each:
:func:`write_bytes`, :func:`remove_tree`, :func:`zarr_store`, :func:`read_parquet`,
:func:`publish_with`, :func:`location_lock`.
"""

from __future__ import annotations

import datetime
import fnmatch
import hashlib
import json
import os
import re
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeAlias

from lscindex._io import atomic_write_bytes, atomic_write_with, json_bytes, writer_lock
from lscindex.errors import LscIndexError, StoreError

__all__ = [
    "Location",
    "PathOrUrl",
    "RemotePath",
    "as_location",
    "is_remote",
    "location_lock",
    "location_sha256",
    "open_input",
    "parquet_rows",
    "publish_with",
    "read_parquet",
    "read_parquet_schema",
    "recorded_location",
    "remove_tree",
    "write_bytes",
    "write_json",
    "zarr_store",
]

# "s3://bucket/x"; also "s3:/bucket/x", which is what pathlib makes of it
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):(//?)(.*)", re.DOTALL)
# The package that brings each common scheme, for the "install ..." hint.
_PACKAGES = {
    "s3": "'lscindex[s3]' (s3fs)",
    "s3a": "'lscindex[s3]' (s3fs)",
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "az": "adlfs",
    "abfs": "adlfs",
    "abfss": "adlfs",
}


class RemotePath:
    """A file or folder on an fsspec file system, with the pathlib operations lscindex needs.

    ``str()`` gives the URL (``s3://bucket/emb.zarr``); ``/``, ``name``, ``suffix``, ``stem``,
    ``parent`` and ``with_name`` work as on :class:`pathlib.PurePosixPath`. Queries go to the
    file system each time (its listing cache is dropped first: other processes write too).

    Example:
        >>> p = as_location("memory://bucket/emb.zarr")
        >>> str(p / "metadata"), p.suffix, str(p.with_name("emb.faiss"))
        ('memory://bucket/emb.zarr/metadata', '.zarr', 'memory://bucket/emb.faiss')
    """

    def __init__(self, fs: Any, protocol: str, path: str) -> None:
        self.fs = fs
        self.protocol = protocol
        self.path = path.rstrip("/") or "/"  # the file system's own spelling

    # -- names -------------------------------------------------------------------------------
    def __str__(self) -> str:
        return f"{self.protocol}://{self.path.lstrip('/')}"

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __truediv__(self, name: str) -> RemotePath:
        return RemotePath(self.fs, self.protocol, f"{self.path}/{name}")

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        name = self.name
        dot = name.rfind(".")
        return name[dot:] if 0 < dot < len(name) - 1 else ""

    @property
    def stem(self) -> str:
        return self.name[: len(self.name) - len(self.suffix)]

    @property
    def parent(self) -> RemotePath:
        head = self.path.rsplit("/", 1)[0] if "/" in self.path.strip("/") else self.path
        return RemotePath(self.fs, self.protocol, head)

    def with_name(self, name: str) -> RemotePath:
        return self.parent / name

    def resolve(self) -> RemotePath:
        return self

    # -- queries -----------------------------------------------------------------------------
    def _fresh(self) -> None:
        self.fs.invalidate_cache(self.path)
        self.fs.invalidate_cache(self.parent.path)

    def exists(self) -> bool:
        self._fresh()
        return bool(self.fs.exists(self.path))

    def is_dir(self) -> bool:
        self._fresh()
        return bool(self.fs.isdir(self.path))

    def is_file(self) -> bool:
        self._fresh()
        return bool(self.fs.isfile(self.path))

    def is_symlink(self) -> bool:
        return False

    def glob(self, pattern: str) -> Iterator[RemotePath]:
        """The entries directly inside this folder whose name matches ``pattern``."""
        for name in sorted(self.sizes()):
            if "/" not in name and fnmatch.fnmatchcase(name, pattern):
                yield self / name

    def sizes(self) -> dict[str, int]:
        """Every file below this folder: its path relative to the folder -> its size in bytes."""
        self.fs.invalidate_cache(self.path)
        try:
            found = self.fs.find(self.path, detail=True)
        except FileNotFoundError:
            return {}
        root = self.path.rstrip("/") + "/"
        return {
            name[len(root) :]: int(info.get("size") or 0)
            for name, info in found.items()
            if name.startswith(root) and info.get("type", "file") == "file"
        }

    def stat_size(self) -> int:
        self._fresh()
        return int(self.fs.size(self.path))

    # -- reading and writing -----------------------------------------------------------------
    def read_bytes(self) -> bytes:
        return bytes(self.fs.cat_file(self.path))

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def mkdir(self, *, parents: bool = False, exist_ok: bool = False) -> None:
        """Folders are implicit on object stores; where they are real, make them."""
        self.fs.makedirs(self.path, exist_ok=True)


Location: TypeAlias = Path | RemotePath
# What the public functions accept for a store or an index: a path, or a URL as a string.
PathOrUrl: TypeAlias = str | os.PathLike[str] | RemotePath


def is_remote(path: object) -> bool:
    """Whether ``path`` names a location on an fsspec file system rather than local disk."""
    if isinstance(path, RemotePath):
        return True
    if isinstance(path, str):
        found = _URL.match(path)
        return bool(found and found.group(2) == "//" and found.group(1).lower() != "file")
    return False


# Where lscindex itself writes stores: what a recorded location (a run's stores.json, an index
# sidecar) may name for lscindex to open without being asked.
STORE_SCHEMES = frozenset({"file", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"})


def recorded_location(text: str, what: str, where: str) -> Location:
    """The location a file lscindex wrote records (``where``: e.g. an index sidecar), opened
    only if it is a local path or a URL of a scheme lscindex writes stores to: a crafted file
    must not make lscindex fetch ``ftp://`` or ``http://`` addresses nobody asked for.

    Raises:
        StoreError: another scheme; the fix is to name the location explicitly.
    """
    found = _URL.match(text)
    scheme = found.group(1).lower() if found and len(found.group(1)) > 1 else "file"
    if scheme not in STORE_SCHEMES:
        raise StoreError(
            f"{where} names {what} {text}, a {scheme}:// URL lscindex does not open unasked "
            f"(it writes stores to local paths and {', '.join(sorted(STORE_SCHEMES - {'file'}))}"
            f" URLs); pass the {what} explicitly"
        )
    return as_location(text, what)


def as_location(path: PathOrUrl, what: str = "path") -> Location:
    """A :class:`pathlib.Path` for a local path or ``file://`` URL, a :class:`RemotePath` for
    any other fsspec URL.

    Raises:
        StoreError: an unknown scheme, a scheme whose package is not installed (naming the
            package), or a URL whose ``//`` was collapsed (``s3:/bucket``, as pathlib writes it).
    """
    if isinstance(path, RemotePath):
        return path
    text = os.fspath(path)
    found = _URL.match(text)
    if not found or len(found.group(1)) == 1:  # "C:/..." is a Windows drive, not a URL
        return Path(text)
    scheme, slashes, rest = found.group(1).lower(), found.group(2), found.group(3)
    if slashes == "/":
        raise StoreError(
            f"{what} {text} looks like a {scheme}:// URL with one slash (a path library "
            f"collapsed it); pass it as {scheme}://{rest}"
        )
    if scheme == "file":
        return _file_url_path(text, rest, what)
    return _remote(text, scheme, what)


def _file_url_path(url: str, rest: str, what: str) -> Path:
    """The local path of ``file:///abs/x`` or ``file://localhost/abs/x``. ``file://x`` names a
    host, not a relative path: refused, rather than read as ``/x`` at the file-system root."""
    if rest.startswith("/"):
        return Path(rest)
    host, _, tail = rest.partition("/")
    if host.lower() == "localhost":
        return Path(f"/{tail}")
    raise StoreError(
        f"{what} {url}: a file:// URL names an absolute path (file:///abs/path); for a path "
        f"relative to the current folder drop the prefix and pass {rest}"
    )


def _remote(url: str, scheme: str, what: str) -> RemotePath:
    import fsspec

    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError:
        package = _PACKAGES.get(scheme) or _hint(scheme)
        raise StoreError(
            f"{what} {url}: {scheme}:// URLs need a package that is not installed; "
            f"pip install {package}"
        ) from None
    except ValueError:
        raise StoreError(
            f"{what} {url}: unknown URL scheme {scheme}://; use a local path or an fsspec URL "
            f"(s3://, gs://, az://, memory://, file://)"
        ) from None
    options = _timeouts(scheme)
    try:
        fs, inner = fsspec.url_to_fs(url, **options)
    except Exception as exc:  # a malformed URL or a file system that cannot start
        raise StoreError(f"{what} {url}: cannot open its file system ({exc})") from None
    if not inner.strip("/"):
        raise StoreError(f"{what} {url} names no object; add a name, e.g. {url}/emb.zarr")
    return RemotePath(fs, scheme, inner)


REMOTE_TIMEOUT_ENV = "LSCINDEX_REMOTE_TIMEOUT_S"
DEFAULT_REMOTE_TIMEOUT_S = 30.0


def _timeouts(scheme: str) -> dict[str, Any]:
    """Storage options that bound how long an S3 request may wait: connecting (at most 10 s)
    and each read (``LSCINDEX_REMOTE_TIMEOUT_S``, default 30 s), one attempt per botocore call
    (s3fs retries those that time out a few times itself). Without them an endpoint that
    accepts connections and never answers holds a command for ever. Other schemes: their
    libraries' defaults."""
    if scheme not in ("s3", "s3a"):
        return {}
    try:
        read = float(os.environ.get(REMOTE_TIMEOUT_ENV, DEFAULT_REMOTE_TIMEOUT_S))
    except ValueError:
        read = -1.0
    if not read > 0:
        raise StoreError(
            f"{REMOTE_TIMEOUT_ENV}={os.environ[REMOTE_TIMEOUT_ENV]!r} is not a positive number of "
            f"seconds; set it to e.g. {DEFAULT_REMOTE_TIMEOUT_S:g} or unset it"
        )
    config = {
        "connect_timeout": min(10.0, read),
        "read_timeout": read,
        "retries": {"max_attempts": 1},
    }
    return {"config_kwargs": config}


def _hint(scheme: str) -> str:
    from fsspec.registry import known_implementations

    message = known_implementations.get(scheme, {}).get("err", "")
    words = re.findall(r"[Ii]nstall (\S+)", message)
    return words[0] if words else f"the fsspec implementation of {scheme}://"


def write_bytes(path: Location, data: bytes) -> None:
    """Publish ``data`` at ``path`` whole: local files atomically (temp, fsync, rename), remote
    objects by one PUT (readers see the old object or the new one, never a part)."""
    if isinstance(path, RemotePath):
        path.fs.pipe_file(path.path, data)
    else:
        atomic_write_bytes(path, data)


def write_json(path: Location, data: Any) -> None:
    """:func:`write_bytes` of ``data`` as lscindex's indented JSON."""
    write_bytes(path, json_bytes(data))


def publish_with(path: Location, write: Callable[[Path], object]) -> None:
    """Publish what ``write(local_file)`` writes at ``path`` (for writers that want a file
    name, such as ``faiss.write_index``): local atomically, remote by uploading it in one go."""
    if isinstance(path, RemotePath):
        with tempfile.TemporaryDirectory(prefix=".lscindex-upload-") as folder:
            local = Path(folder) / path.name
            write(local)
            path.fs.put_file(str(local), path.path)
    else:
        atomic_write_with(path, write)


def remove_tree(path: Location) -> None:
    """Remove a folder of ours (a store being replaced) and everything below it."""
    if isinstance(path, RemotePath):
        if path.exists():
            path.fs.rm(path.path, recursive=True)
        return
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def zarr_store(path: Location, *, read_only: bool = False) -> Any:
    """What ``zarr.open_group``/``open_array`` take for ``path``: a local path string, or a
    ``zarr.storage.FsspecStore`` on the same URL."""
    if isinstance(path, RemotePath):
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(str(path), read_only=read_only)
    return str(path)


def read_parquet(path: Location, columns: list[str] | None = None) -> Any:
    """``pyarrow.parquet.read_table`` of a parquet file, or of a folder of them, local or
    remote (pyarrow reads through the fsspec file system). Page checksums are verified where
    the file has them: a changed byte raises OSError instead of reading as another value."""
    import pyarrow.parquet as pq

    if isinstance(path, RemotePath):
        path.fs.invalidate_cache(path.path)
        return pq.read_table(
            path.path, columns=columns, filesystem=path.fs, page_checksum_verification=True
        )
    return pq.read_table(path, columns=columns, page_checksum_verification=True)


def parquet_rows(path: Location) -> int:
    """The row count a parquet file's footer records."""
    import pyarrow.parquet as pq

    if isinstance(path, RemotePath):
        with path.fs.open(path.path, "rb") as f:
            return int(pq.read_metadata(f).num_rows)
    return int(pq.read_metadata(path).num_rows)


def read_parquet_schema(path: Location) -> Any:
    import pyarrow.parquet as pq

    if isinstance(path, RemotePath):
        with path.fs.open(path.path, "rb") as f:
            return pq.read_schema(f)
    return pq.read_schema(path)


def location_sha256(path: Location) -> str:
    """Hex sha256 of a file's bytes (a remote object is streamed)."""
    from lscindex._io import file_sha256

    if not isinstance(path, RemotePath):
        return file_sha256(path)
    digest = hashlib.sha256()
    with path.fs.open(path.path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_input(path: Location) -> Any:
    """A binary file object for reading ``path``."""
    if isinstance(path, RemotePath):
        return path.fs.open(path.path, "rb")
    return open(path, "rb")


@contextmanager
def location_lock(
    path: Location, what: str, *, error: type[LscIndexError] = StoreError
) -> Iterator[Location]:
    """:func:`lscindex._io.writer_lock` for local paths; for a URL, the lock object
    ``<url>.lock`` created with a conditional PUT (``If-None-Match: *`` on S3; plain
    check-then-put where the file system has no create-only write, which is then advisory).

    As on local disk, a lock whose writer ran on this host and is gone (a killed embed) is
    taken over, so the same command resumes; one held from another host is refused, naming
    the lock object to delete if that writer is gone.
    """
    if not isinstance(path, RemotePath):
        with writer_lock(path, what, error=error) as local:
            yield local
        return
    lock = path.with_name(path.name + ".lock")
    mine = json.dumps(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        }
    ).encode()
    _take_remote(lock, mine, f"{what} {path}", error)
    try:
        yield lock
    finally:
        try:
            if lock.read_bytes() == mine:
                lock.fs.rm_file(lock.path)
        except FileNotFoundError:
            pass


def _take_remote(lock: RemotePath, mine: bytes, what: str, error: type[LscIndexError]) -> None:
    from lscindex._io import holder_is_gone

    for _ in range(8):  # each round takes the lock, refuses, or clears one stale lock
        if _create(lock, mine):
            return
        try:
            holder = json.loads(lock.read_bytes())
            who = f"pid {holder['pid']} on {holder['host']}, since {holder.get('started', '?')}"
        except FileNotFoundError:
            continue  # released meanwhile
        except (OSError, ValueError, TypeError, KeyError):
            holder, who = None, "a writer it does not name"
        if not (isinstance(holder, dict) and isinstance(holder.get("pid"), int)):
            break
        if not holder_is_gone(holder):
            break
        with suppress(FileNotFoundError):
            lock.fs.rm_file(lock.path)
    else:
        raise error(f"{what}: could not take {lock} (it keeps changing); try again")
    raise error(
        f"{what} is being written by another lscindex process ({who}); wait for it to "
        f"finish, or delete {lock} if that process is gone"
    ) from None


def _create(lock: RemotePath, data: bytes) -> bool:
    """Write ``lock`` unless it exists; False when it does."""
    try:
        lock.fs.pipe_file(lock.path, data, mode="create")
        return True
    except FileExistsError:
        return False
    except (TypeError, NotImplementedError):  # no create-only writes: check, then put
        if lock.exists():
            return False
        lock.fs.pipe_file(lock.path, data)
        return True
