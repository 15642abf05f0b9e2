"""The versioned JSON documents lscindex prints (``query --json``, ``eval --json``, ...).

Every document is one JSON object with ``schema_version`` and ``kind`` first; docs/json-schema.md
describes each field, with an example. The rules every document keeps:

- strict JSON: no NaN or Infinity (a value that is not finite is ``null``), so any parser reads it;
- what answered is named: the run, store and index with their identities, and how each was chosen;
- class scores say what they are (``score_meaning``): ``cosine`` to the class target for an lsc
  run, softmax ``probability`` for a ce run.

A new field may appear within a version; renaming or removing one raises ``SCHEMA_VERSION``.

Example:
    >>> to_json({"schema_version": SCHEMA_VERSION, "value": float("nan")})
    '{\\n  "schema_version": 1,\\n  "value": null\\n}'
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from lscindex.retrieval import QueryResult, Retriever
    from lscindex.run import Run
    from lscindex.store import EmbeddingStore

__all__ = [
    "SCHEMA_VERSION",
    "document",
    "finite",
    "query_document",
    "run_identity",
    "score_meaning",
    "store_identity",
    "to_json",
]

SCHEMA_VERSION = 1


def finite(value: Any) -> Any:
    """``value`` made strict-JSON-safe: non-finite floats -> None, numpy scalars/arrays -> Python,
    dataclasses -> dicts, paths -> strings, recursively through lists and mappings. Bytes of a
    file name that are not UTF-8 (Python holds them as lone surrogates, which no strict JSON
    parser reads) become the text ``\\xff``, as the CLI shows them."""
    if isinstance(value, str):
        return _utf8(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return finite(value.tolist())
    if isinstance(value, os.PathLike):
        return _utf8(os.fspath(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return finite(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {_utf8(str(k)): finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def _utf8(text: str) -> str:
    """``text`` with each undecodable file-name byte (a lone surrogate) as ``\\xNN``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text


def to_json(data: Any) -> str:
    """Strict JSON text of ``data`` (see :func:`finite`); raises ValueError on anything left that
    is not JSON, rather than writing it."""
    return json.dumps(finite(data), indent=2, allow_nan=False, ensure_ascii=False)


def document(kind: str, **fields: Any) -> dict[str, Any]:
    """A document of ``kind`` (``query``, ``eval``, ``systems``): version and kind first."""
    return {"schema_version": SCHEMA_VERSION, "kind": kind, **fields}


def score_meaning(run: Run) -> str:
    """What a class ``score`` of ``run`` is: ``cosine`` (lsc) or ``probability`` (ce)."""
    return "cosine" if run.system is not None else "probability"


def run_identity(run: Run) -> dict[str, Any]:
    """The run that answered: path, fingerprint (sha256 of its config, weights and assignment,
    16 hex digits), head (``lsc``, ``ce``, or ``features`` for a plain timm encoder, whose path
    is its name ``timm:MODEL:WEIGHTS`` and fingerprint its spec's), system and dim, and class
    count (0 for a plain encoder)."""
    system = run.system
    return {
        "path": str(run.path),
        "fingerprint": run.fingerprint,
        "head": run.config["model"]["head"],
        "system": None if system is None else system.kind,
        "dim": int(run.model.embed_dim),
        "n_classes": len(run.class_names),
    }


def store_identity(store: EmbeddingStore) -> dict[str, Any]:
    """The store searched: path, store id (new each time it is written), rows, dim and dtype."""
    header = store.header
    return {
        "path": str(store.path),
        "store_id": header.store_id,
        "rows": header.count,
        "dim": header.dim,
        "dtype": header.dtype,
    }


def query_document(
    retriever: Retriever, results: Sequence[QueryResult], *, k: int
) -> dict[str, Any]:
    """The ``query`` document of :meth:`Retriever.query`'s results (``query --json``, ``serve``).

    ``chosen`` says how the run, store and index were chosen (e.g. ``"given"``, ``"the only
    store embedded with this run"``; for an absent store, why). Per image: ``image``, ``error``
    (null, or why it could not be read), ``novel`` (null for an unread image), ``classes``
    (``id``, ``name``, ``score``, ``margin``: null for the last class of a run) and
    ``neighbors`` (``row``, ``id``, ``path``, ``label``, ``label_name``, ``score``: the cosine
    to the stored item).
    """
    store, index = None, None
    if retriever.store is not None:
        store = store_identity(retriever.store)
        index = {
            "path": None if retriever.index_path is None else str(retriever.index_path),
            "factory": retriever.index_factory,
            "count": int(retriever.index.ntotal),
        }
    return document(
        "query",
        run=run_identity(retriever.run),
        store=store,
        index=index,
        chosen=dict(retriever.chosen),
        score_meaning=retriever.score_meaning,
        k=k,
        results=[_result_record(r) for r in results],
    )


def _result_record(result: QueryResult) -> dict[str, Any]:
    classes = [
        {"id": c.id, "name": c.name, "score": c.score, "margin": c.margin} for c in result.classes
    ]
    return {
        "image": result.image,
        "error": result.error,
        "novel": result.classes[0].novel if result.classes else None,
        "classes": classes,
        "neighbors": [dataclasses.asdict(n) for n in result.neighbors],
    }
