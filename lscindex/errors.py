"""Exceptions raised by lscindex.

Every error the library raises on bad input derives from :class:`LscIndexError` and also from
the matching builtin, so ``except ValueError`` keeps working. Messages name the offending value,
what was expected and how to fix it, on one line.
"""

from __future__ import annotations


class LscIndexError(Exception):
    """Base class of every lscindex error."""


class ConfigError(LscIndexError, ValueError):
    """A configuration value is invalid (unknown kind, too many classes for a dim, ...)."""


class CapacityError(ConfigError):
    """An explicit dimension holds fewer vectors than the requested number of classes."""


class InputError(LscIndexError, ValueError):
    """An array argument has the wrong shape, dtype, values or range."""


class DataError(LscIndexError, ValueError):
    """A data source is missing, empty or malformed."""


class RunError(LscIndexError, ValueError):
    """A run directory is missing, belongs to another run, or does not match the request."""


class StoreError(LscIndexError, ValueError):
    """An embedding store or index is missing, unfinished, corrupted or from another run."""


class Preempted(Exception):
    """A job stopped on request (SIGTERM or SIGUSR1, a scheduler's warning before it kills the
    job) after saving its progress; the same command continues it (``train`` with ``--resume``).

    Not an :class:`LscIndexError`: nothing was wrong. The CLI prints the message and exits
    with :attr:`exit_status` (75, ``EX_TEMPFAIL``: "try again"), which schedulers may requeue on.

    Attributes:
        signal: the signal's name (``"SIGTERM"``).
    """

    exit_status = 75

    def __init__(self, message: str, *, signal: str) -> None:
        super().__init__(message)
        self.signal = signal
