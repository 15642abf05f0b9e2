"""Private: argument checks shared by the vector-system modules. Imports numpy only.

Torch is imported only when a torch tensor is actually passed in, so these checks keep
``import lscindex`` light.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lscindex.errors import ConfigError, InputError

__all__ = ["MAX_CLASSES_PER_ROW", "check_int", "class_count_problem", "to_numpy"]

# Integer labels number the classes 0..C-1; a C far above the row count means a mistyped or
# hostile label, which would size every per-class table (names, counts, assignment) by it.
MAX_CLASSES_PER_ROW = 100
MAX_SPARE_CLASSES = 1_000_000


def check_int(name: str, value: Any, *, minimum: int) -> int:
    """``value`` as a Python int; bools, non-integers and values below ``minimum`` raise.

    Raises:
        ConfigError: naming ``name``, the value and the minimum.
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def class_count_problem(top_label: int, n_rows: int) -> str | None:
    """Why integer labels up to ``top_label`` over ``n_rows`` rows are refused (None: they are
    not). One rule for every data source: at most 100 classes a row plus a million spare, so a
    label of 2**31 - 1 in a small shard is refused before anything class-sized is allocated."""
    if top_label >= MAX_CLASSES_PER_ROW * n_rows + MAX_SPARE_CLASSES:
        return f"make {top_label + 1:,} classes for {n_rows:,} rows"
    return None


def to_numpy(x: Any) -> np.ndarray:
    """numpy view/copy of an array-like; torch tensors (any device, any dtype) go to CPU.

    Floating torch tensors come back as float32; numpy arrays are returned as they are.

    Raises:
        InputError: ``x`` cannot be read as an array.
    """
    if type(x).__module__.startswith("torch"):
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach()
            if x.is_floating_point():
                x = x.to(dtype=torch.float32)
            return np.asarray(x.cpu().numpy())
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, Sequence | int | float | np.generic):
        return np.asarray(x)
    try:
        return np.asarray(x)
    except Exception as exc:  # pragma: no cover - depends on exotic inputs
        raise InputError(f"expected an array, got {type(x).__name__}") from exc
