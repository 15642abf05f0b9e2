"""Private: the stop request a cluster scheduler sends before it kills a job, as a flag.

Schedulers announce preemption with SIGTERM (Kubernetes, Slurm at the time limit, most batch
systems) or SIGUSR1 (Slurm's ``--signal``), then kill the job a grace period later. Inside
:func:`stop_requests` either signal only sets :attr:`StopRequest.signal`; ``train`` polls it
after each step and ``embed`` after each chunk, save what they have, and raise
:class:`~lscindex.errors.Preempted`. DataLoader workers ignore both signals
(:func:`ignore_stop_signals`), so a signal sent to the whole process group stops the job
between steps instead of killing its workers mid-batch.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["STOP_SIGNALS", "StopRequest", "ignore_stop_signals", "stop_requests"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """Whether (and by which signal) the job was asked to stop; false until then."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __bool__(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""


@contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Turn SIGTERM and SIGUSR1 into a :class:`StopRequest` for the duration of the block.

    The previous handlers come back afterwards. Off the main thread (where Python cannot
    install handlers) the request is never set and the signals keep their handlers.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum: int, frame: Any) -> None:
        request.signal = signum

    previous = {s: signal.signal(s, handle) for s in STOP_SIGNALS}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: the workers leave stopping to the main process."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
