"""Progress of the long commands: rich bars on a terminal, plain lines in a log.

On a terminal each job is a transient rich bar. Anywhere else (a log file, a pipe, CI) a bar would
print nothing until the end, so each job prints one line every ``log_interval`` updates (steps,
batches, chunks), or at the first update :data:`LOG_EVERY_S` seconds after its last line if that
comes sooner::

    embed: 1,024/8,000 images (13%) | 310.2 img/s | elapsed 0:00:04 | eta 0:00:22

``eta`` is the time left for the whole job (``?`` until it can be estimated). The library prints
nothing: it calls back, and the commands pass what it reports to a :class:`Reporter`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from lscindex_cli._common import console

__all__ = [
    "LOG_EVERY_S",
    "LOG_INTERVAL",
    "LogIntervalOption",
    "Reporter",
    "WorkClock",
    "format_duration",
    "is_terminal",
]

LOG_INTERVAL = 50  # updates (steps, batches, chunks) between two plain lines
LOG_EVERY_S = 30.0  # a plain line at the first update this long after the last one
Clock = Callable[[], float]

LogIntervalOption = Annotated[
    int,
    typer.Option(
        min=1,
        help=f"When stdout is not a terminal (a log, CI): a progress line every N steps "
        f"(batches, chunks), or sooner once {LOG_EVERY_S:.0f} s have passed.",
    ),
]


def is_terminal() -> bool:
    """Whether progress is drawn as rich bars (stdout is a terminal) or printed as plain lines.

    The one place the choice is made: tests replace this function to force either mode.
    """
    return console.is_terminal


def format_duration(seconds: float | None) -> str:
    """``3725.2 -> '1:02:05'``; ``None``, NaN or infinity -> ``'?'`` (not known yet)."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(max(0, round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _format_rate(rate: float | None) -> str:
    if rate is None or not math.isfinite(rate):
        return "?"
    return f"{rate:,.1f}" if rate < 100 else f"{rate:,.0f}"


class WorkClock:
    """Seconds per unit of each kind of work (train steps, val batches), and the time left.

    :meth:`done` charges the time since the previous call (or since construction) to one kind of
    work, so the pauses between kinds (a validation loader starting, a checkpoint being written)
    count towards the kind that follows them, and the estimate includes them.

    Example:
        >>> t = iter([0.0, 2.0, 3.0])
        >>> work = WorkClock(clock=lambda: next(t))
        >>> work.done("step", 4)  # 4 steps in 2 s
        >>> work.done("val", 2)  # 2 val batches in 1 s
        >>> work.seconds_left({"step": 10, "val": 4})
        7.0
    """

    def __init__(self, *, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._last = clock()
        self._seconds: dict[str, float] = {}
        self._units: dict[str, int] = {}

    def done(self, kind: str, units: int = 1) -> None:
        """``units`` of ``kind`` finished since the previous call."""
        now = self._clock()
        self._seconds[kind] = self._seconds.get(kind, 0.0) + now - self._last
        self._units[kind] = self._units.get(kind, 0) + units
        self._last = now

    def per_unit(self, kind: str) -> float | None:
        """Measured seconds per unit of ``kind``, or None before any was done."""
        units = self._units.get(kind, 0)
        return self._seconds[kind] / units if units > 0 else None

    def seconds_left(
        self, left: Mapping[str, float], *, fallback: Mapping[str, str] | None = None
    ) -> float | None:
        """Seconds for ``left`` (units of each kind still to do), or None if not estimable yet.

        A kind not measured yet is costed like ``fallback[kind]`` (e.g. a validation batch like
        a training step until a validation has run).
        """
        total = 0.0
        for kind, units in left.items():
            if units <= 0:
                continue
            per = self.per_unit(kind)
            if per is None and fallback and kind in fallback:
                per = self.per_unit(fallback[kind])
            if per is None:
                return None
            total += units * per
        return total


@dataclass
class _Job:
    """One job (or phase) being reported: where its rate is measured from, when it last printed."""

    started: float
    done0: int
    last_line: float
    updates: int = 0  # since the last plain line
    bar: TaskID | None = None


class Reporter:
    """Progress of one command's jobs, keyed by name (``"train"``, ``"val"``, ``"embed"``).

    Use it as a context manager around the library call and pass what the library reports to
    :meth:`update`. ``terminal`` None asks :func:`is_terminal`; ``clock`` is injectable.

    Example:
        >>> with Reporter() as progress:  # doctest: +SKIP
        ...     build_store(run, inputs, out, progress=lambda done, todo, rate: progress.update(
        ...         "embed", done, todo, unit="images", rate=rate, rate_unit="img/s"))
    """

    def __init__(
        self,
        *,
        log_interval: int = LOG_INTERVAL,
        every_s: float = LOG_EVERY_S,
        terminal: bool | None = None,
        clock: Clock = time.monotonic,
        out: Console = console,
    ) -> None:
        self.log_interval, self.every_s, self.clock, self.out = log_interval, every_s, clock, out
        self.started = clock()
        self.terminal = is_terminal() if terminal is None else terminal
        self.bars: Progress | None = None
        if self.terminal:
            self.bars = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[count]}"),
                TextColumn("{task.fields[rate]}"),
                TextColumn("eta {task.fields[eta]}"),
                TextColumn("{task.fields[extra]}"),
                console=out,
                transient=True,
            )
        self._jobs: dict[str, _Job] = {}

    def __enter__(self) -> Reporter:
        if self.bars is not None:
            self.bars.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.bars is not None:
            self.bars.stop()

    def update(
        self,
        name: str,
        done: int,
        total: int | None,
        *,
        label: str | None = None,
        unit: str = "steps",
        rate: float | None = None,
        rate_unit: str | None = None,
        eta_s: float | None = None,
        extra: str = "",
    ) -> None:
        """Report that job ``name`` has done ``done`` of ``total`` units (None: not known).

        ``rate`` (in ``rate_unit``, default ``{unit}/s``) and ``eta_s`` (seconds left in the
        whole job; NaN: not known) are measured here when not given: units since the first
        update of ``name`` over the time since then. A plain line is printed every
        ``log_interval`` updates, when ``every_s`` seconds have passed since the last one, and
        when the job is complete; its ``elapsed`` counts from the reporter's creation.
        """
        now = self.clock()
        job = self._jobs.get(name)
        if job is None:
            job = self._jobs[name] = _Job(started=now, done0=done, last_line=now)
        seconds = now - job.started
        measured = (done - job.done0) / seconds if seconds > 0 and done > job.done0 else None
        if eta_s is None and total is not None and measured:
            eta_s = (total - done) / measured
        rate_unit = rate_unit or f"{unit}/s"
        fields: dict[str, Any] = {
            "count": f"{done:,}/{total:,} {unit}" if total is not None else f"{done:,} {unit}",
            "rate": f"{_format_rate(measured if rate is None else rate)} {rate_unit}",
            "eta": format_duration(eta_s),
            "extra": extra,
        }
        if self.bars is not None:
            if job.bar is None:
                job.bar = self.bars.add_task(label or name, total=total, completed=done, **fields)
            else:
                self.bars.update(
                    job.bar, description=label or name, total=total, completed=done, **fields
                )
            return
        job.updates += 1
        complete = total is not None and done >= total
        if job.updates >= self.log_interval or now - job.last_line >= self.every_s or complete:
            job.updates, job.last_line = 0, now
            if total is not None:
                fields["count"] += f" ({100 * done / max(total, 1):.0f}%)"
            parts = [
                f"{label or name}: {fields['count']}",
                fields["rate"],
                f"elapsed {format_duration(now - self.started)}",
                f"eta {fields['eta']}",
                *([extra] if extra else []),
            ]
            self.out.print(" | ".join(parts), markup=False, highlight=False)

    def finish(self, name: str) -> None:
        """Forget job ``name`` (its bar disappears); a later update of it starts afresh."""
        job = self._jobs.pop(name, None)
        if job is not None and job.bar is not None and self.bars is not None:
            self.bars.remove_task(job.bar)
