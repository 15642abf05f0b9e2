"""Private: the process pool that scans and renders fonts, and the progress callback type."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from lscindex.errors import ConfigError, LscIndexError

ProgressFn = Callable[[int, int], None]
_T = TypeVar("_T")
_R = TypeVar("_R")


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


def _check_workers(workers: int | None) -> int:
    if workers is None:
        if hasattr(os, "sched_getaffinity"):  # the CPUs this process may use, not the machine's
            return len(os.sched_getaffinity(0)) or 1
        return os.cpu_count() or 1
    if workers < 1:
        raise ConfigError(f"--workers {workers} must be at least 1; pass --workers 1 or more")
    return workers
