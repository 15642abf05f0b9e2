"""lscindex: image encoders trained on fixed vector-system targets, and extreme-class retrieval.

The public API is what this module exports; everything else may change between versions.
"""

from lscindex.errors import CapacityError, ConfigError, InputError, LscIndexError
from lscindex.systems import (
    Decoded,
    HeadSize,
    SystemSize,
    TargetIndex,
    VectorSystem,
    count_vectors,
    n_min,
    parse_kind,
    size_systems,
    softmax_head_size,
)

__version__ = "0.1.0"

__all__ = [
    "CapacityError",
    "ConfigError",
    "Decoded",
    "HeadSize",
    "InputError",
    "LscIndexError",
    "SystemSize",
    "TargetIndex",
    "VectorSystem",
    "__version__",
    "count_vectors",
    "n_min",
    "parse_kind",
    "size_systems",
    "softmax_head_size",
]
