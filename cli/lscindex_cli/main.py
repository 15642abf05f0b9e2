"""The ``lscindex`` command line: each command parses options, calls the library and renders."""

from __future__ import annotations

import errno
import json
import os
import re
import sys
from pathlib import Path

import typer

from lscindex.errors import LscIndexError, Preempted
from lscindex_cli import (
    eval_cmd,
    query_cmd,
    serve_cmd,
    store_cmd,
    systems_cmd,
    train_cmd,
    verify_cmd,
)
from lscindex_cli._common import (
    CliGroup,
    CliState,
    DebugOption,
    VersionOption,
    add_command,
    err_console,
    print_error,
    shown,
)
from lscindex_cli.data_cmd import data_app

app = typer.Typer(
    name="lscindex",
    help="Train image encoders on fixed vector-system targets and serve extreme-class retrieval.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=CliGroup,
)


@app.callback()
def _root(debug: DebugOption = False, version: VersionOption = False) -> None:
    """lscindex: vector-system targets, compact embeddings, FAISS retrieval."""


add_command(app, "systems", systems_cmd.systems)
app.add_typer(data_app, name="data")
add_command(app, "train", train_cmd.train)
add_command(app, "plot", train_cmd.plot)
add_command(app, "embed", store_cmd.embed)
add_command(app, "index", store_cmd.index)
add_command(app, "query", query_cmd.query)
add_command(app, "serve", serve_cmd.serve)
add_command(app, "eval", eval_cmd.eval_run)
add_command(app, "verify", verify_cmd.verify)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: an error the user can cause is one line on stderr and exit status 1.

    That is every :class:`LscIndexError`, every OSError (full disk, read-only or missing paths,
    permissions), and the errors of the libraries underneath about their files (see
    :func:`error_message`). Anything else is a bug in lscindex and keeps its traceback.
    ``--debug`` (before or after the command) lets every error through with its traceback.
    A usage error (a typo in an option or its value) is one line on stderr and exit status 2.
    SIGTERM or SIGUSR1 during ``train`` or ``embed`` saves the progress, prints one
    ``stopped by ...`` line and exits with status 75 (EX_TEMPFAIL); the same command continues.
    """
    state = CliState()  # typer's parse of --debug lands here (see _common.DebugOption)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = app(args=args, prog_name="lscindex", obj=state, standalone_mode=False)
    except typer.TyperException as exc:  # typer's usage errors: exit status 2
        if type(exc).__name__ != "NoArgsIsHelpError":  # typer has printed the help instead
            print_error(_usage_message(exc))
        sys.exit(exc.exit_code)
    except typer.Abort:
        print_error("aborted")
        sys.exit(1)
    except Preempted as exc:  # a scheduler's stop request, progress saved: not an error
        err_console.print(shown(str(exc)), highlight=False)
        sys.exit(exc.exit_status)
    except Exception as exc:
        message = error_message(exc, out=state.out)
        if state.debug or message is None:
            raise
        print_error(message)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)  # typer.Exit(code): 130 after Ctrl-C


def _usage_message(exc: typer.TyperException) -> str:
    """Typer's message on one line; where it lists no valid values, a pointer to --help."""
    message = " ".join(exc.format_message().split()).rstrip(".")
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, typer.BadParameter) or ctx is None:
        return message
    return f"{message}; see {ctx.command_path} --help"


# Packages whose own exception types mean a damaged or foreign file, not a bug of lscindex.
_LIBRARIES = {
    "faiss": "faiss",
    "zarr": "zarr",
    "numcodecs": "zarr",
    "pyarrow": "parquet",
    "safetensors": "safetensors",
    "PIL": "image",
}


def error_message(exc: BaseException, *, out: str | None = None) -> str | None:
    """The one-line message for an error a user can cause, or None for a bug in lscindex.

    ``out`` (the command's output path) is named when an OSError does not say which file.
    """
    if isinstance(exc, LscIndexError):
        return str(exc)
    if _from_object_store(exc):  # botocore's own errors are no OSErrors
        text = " ".join(str(exc).split()) or type(exc).__name__
        where = f" ({out})" if out else ""
        return (
            f"object storage: {text}{where}; check the URL, that the bucket exists and the "
            f"credentials (e.g. AWS_* variables, ~/.aws)"
        )
    if isinstance(exc, OSError) and exc.errno is not None:
        return _os_error_message(exc, out)
    library = _LIBRARIES.get(type(exc).__module__.split(".")[0])
    if library is None and type(exc) is RuntimeError and _from_faiss(exc):
        library = "faiss"
    if library is not None:  # their messages may span lines (faiss adds a C++ frame)
        text = " ".join(str(exc).split()) or type(exc).__name__
        cut = re.match(r"Error in .*? at \S+:\d+: (.*)", text)
        return f"{library}: {cut.group(1) if cut else text}"
    if isinstance(exc, OSError):  # no errno: PIL's UnidentifiedImageError and the like
        return str(exc) or type(exc).__name__
    if isinstance(exc, json.JSONDecodeError):
        return (
            f"a JSON file is malformed ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            f"restore or recreate the file"
        )
    if isinstance(exc, UnicodeError):
        return f"{exc}; a file name or text file is not UTF-8: rename or re-encode it"
    if isinstance(exc, MemoryError) or (
        type(exc).__name__ == "OutOfMemoryError" and type(exc).__module__ == "torch"
    ):
        first = " ".join(str(exc).split()).split(". ")[0]  # torch's advice is about CUDA
        return f"out of memory{f' ({first})' if first else ''}; lower --batch-size or --workers"
    return None


_OBJECT_STORES = ("s3fs", "gcsfs", "adlfs", "aiobotocore", "botocore", "fsspec")


def _from_object_store(exc: BaseException) -> bool:
    """Whether an error was raised inside an fsspec file system (a bucket, not local disk)."""
    tb = exc.__traceback__
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0]
        if module in _OBJECT_STORES and "implementations.local" not in str(
            tb.tb_frame.f_globals.get("__name__", "")
        ):
            return True
        tb = tb.tb_next
    return False


def _from_faiss(exc: RuntimeError) -> bool:
    """Whether a RuntimeError came from faiss (its C++ errors are plain RuntimeErrors)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = "" if tb is None else str(tb.tb_frame.f_globals.get("__name__", ""))
    return module.split(".")[0] == "faiss" or "faiss::" in str(exc)


# errno -> (what happened to {path}, how to fix it); {mount} is the file system holding it.
_OS_ERRORS = {
    errno.ENOSPC: (
        "no space left on device writing {path}",
        "free space on {mount} or choose another --out",
    ),
    errno.EDQUOT: (
        "disk quota exceeded writing {path}",
        "free space on {mount} or choose another --out",
    ),
    errno.EROFS: ("{path} is on a read-only file system ({mount})", "choose another --out"),
    errno.EACCES: ("permission denied: {path}", "check its permissions or choose another path"),
    errno.EPERM: (
        "operation not permitted: {path}",
        "check its permissions or choose another path",
    ),
    errno.ENOENT: ("no such file or directory: {path}", "check the path"),
    errno.ENOTDIR: ("a parent of {path} is not a directory", "check the path"),
    errno.EISDIR: ("{path} is a directory, not a file", "pass a file"),
    errno.EEXIST: ("{path} already exists", "remove it or choose another path"),
    errno.ENAMETOOLONG: ("file name too long: {path}", "choose a shorter path"),
    errno.EMFILE: ("too many open files ({path})", "raise ulimit -n or use fewer --workers"),
    errno.ENFILE: ("too many open files ({path})", "raise ulimit -n or use fewer --workers"),
    errno.ENOMEM: ("out of memory ({path})", "lower --batch-size or --workers"),
    errno.EIO: ("input/output error on {path}", "check the disk"),
}


def _os_error_message(exc: OSError, out: str | None) -> str:
    """``what: fix`` for an OSError, naming its file(s), else ``out``."""
    names = [
        os.fsdecode(n) if isinstance(n, str | bytes) else str(n)
        for n in (exc.filename, exc.filename2)
        if n is not None
    ]
    path = " -> ".join(names) or out or "a file"
    what, fix = _OS_ERRORS.get(
        exc.errno or 0, (f"{exc.strerror or type(exc).__name__}: {{path}}", "")
    )
    mount = _mount_point(names[-1] if names else out)
    text = what.format(path=path, mount=mount)
    return f"{text}; {fix.format(path=path, mount=mount)}" if fix else text


def _mount_point(path: str | None) -> str:
    """The mount point of the file system holding ``path`` (or its nearest existing parent)."""
    if path is None:
        return "its file system"
    try:
        here = Path(path).absolute()
        while not here.exists() and here != here.parent:
            here = here.parent
        while not os.path.ismount(here) and here != here.parent:
            here = here.parent
    except (OSError, ValueError):  # an unreadable parent, a NUL in the name
        return "its file system"
    return str(here)


if __name__ == "__main__":
    main()
