"""lscindex: image encoders trained on fixed vector-system targets, and extreme-class retrieval.

The public API is what this module exports; everything else may change between versions.
Importing it is cheap: torch, timm and FAISS load when the first function that needs them runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lscindex.assignment import fit_geometry, match_classes
from lscindex.errors import (
    CapacityError,
    ConfigError,
    DataError,
    InputError,
    LscIndexError,
    Preempted,
    RunError,
    StoreError,
)
from lscindex.kinds import count_vectors, n_min, parse_kind
from lscindex.sizing import HeadSize, SystemSize, size_systems, softmax_head_size
from lscindex.systems import Decoded, VectorSystem
from lscindex.target_index import TargetIndex

if TYPE_CHECKING:
    from lscindex.embedding import EmbedReport, build_store
    from lscindex.evaluation import EvalReport, evaluate
    from lscindex.glyphs import GlyphDatasetInfo, build_glyph_dataset
    from lscindex.index import IndexInfo, build_index, load_index, update_index
    from lscindex.retrieval import ClassMatch, Neighbor, QueryResult, Retriever
    from lscindex.run import Run, open_run
    from lscindex.store import EmbeddingStore, open_store
    from lscindex.training import EpochMetrics, TrainConfig, TrainResult, fit
    from lscindex.verify import verify_index, verify_run, verify_store

__version__ = "0.1.0"

# name -> module, imported on first access (PEP 562) so `import lscindex` stays light.
_LAZY = {
    "Run": "run",
    "open_run": "run",
    "EmbedReport": "embedding",
    "build_store": "embedding",
    "EvalReport": "evaluation",
    "evaluate": "evaluation",
    "GlyphDatasetInfo": "glyphs",
    "build_glyph_dataset": "glyphs",
    "IndexInfo": "index",
    "build_index": "index",
    "load_index": "index",
    "update_index": "index",
    "ClassMatch": "retrieval",
    "Neighbor": "retrieval",
    "QueryResult": "retrieval",
    "Retriever": "retrieval",
    "EmbeddingStore": "store",
    "open_store": "store",
    "EpochMetrics": "training",
    "TrainConfig": "training",
    "TrainResult": "training",
    "fit": "training",
    "verify_index": "verify",
    "verify_run": "verify",
    "verify_store": "verify",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"lscindex.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lscindex' has no attribute {name!r}")


__all__ = [
    "CapacityError",
    "ClassMatch",
    "ConfigError",
    "DataError",
    "Decoded",
    "EmbedReport",
    "EmbeddingStore",
    "EpochMetrics",
    "EvalReport",
    "GlyphDatasetInfo",
    "HeadSize",
    "IndexInfo",
    "InputError",
    "LscIndexError",
    "Neighbor",
    "Preempted",
    "QueryResult",
    "Retriever",
    "Run",
    "RunError",
    "StoreError",
    "SystemSize",
    "TargetIndex",
    "TrainConfig",
    "TrainResult",
    "VectorSystem",
    "__version__",
    "build_glyph_dataset",
    "build_index",
    "build_store",
    "count_vectors",
    "evaluate",
    "fit",
    "fit_geometry",
    "load_index",
    "match_classes",
    "n_min",
    "open_run",
    "open_store",
    "parse_kind",
    "size_systems",
    "softmax_head_size",
    "update_index",
    "verify_index",
    "verify_run",
    "verify_store",
]
