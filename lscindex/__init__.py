"""lscindex: image encoders trained on fixed vector-system targets, and extreme-class retrieval.

The public API is what this module exports; everything else may change between versions.
"""

from lscindex.errors import CapacityError, ConfigError, InputError, LscIndexError
from lscindex.systems import (
    Decoded,
    TargetIndex,
    VectorSystem,
    count_vectors,
    n_min,
    parse_kind,
)

__version__ = "0.1.0"

__all__ = [
    "CapacityError",
    "ConfigError",
    "Decoded",
    "InputError",
    "LscIndexError",
    "TargetIndex",
    "VectorSystem",
    "__version__",
    "count_vectors",
    "n_min",
    "parse_kind",
]
