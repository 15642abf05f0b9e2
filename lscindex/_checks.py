"""Private: argument checks shared by the vector-system modules. Imports numpy only.

Torch is imported only when a torch tensor is actually passed in, so these checks keep
``import lscindex`` light.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lscindex.errors import ConfigError, InputError

__all__ = ["check_int", "to_numpy"]


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
