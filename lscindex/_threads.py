"""Private: shared worker-thread pools for numpy work that releases the GIL (batched decoding)."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

__all__ = ["default_threads", "shared_pool"]

_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def default_threads() -> int:
    """``OMP_NUM_THREADS`` if set to a positive integer, else the CPUs this process may use."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def shared_pool(workers: int) -> ThreadPoolExecutor:
    """The process-wide pool of ``workers`` threads, created on first use and then reused."""
    with _POOLS_LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="lscindex-decode")
        return _POOLS[workers]
