"""The Python retrieval API: classify and search images with a trained run and its store.

Example:
    >>> r = Retriever.open("runs/glyphs", store="emb.zarr")           # doctest: +SKIP
    >>> r.classify(["a.png"], k=5)[0][0].name                          # doctest: +SKIP
    >>> r.search(["a.png"], k=5)[0][0].path                            # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lscindex.data import read_image
from lscindex.embedding import encode_batch
from lscindex.errors import InputError, StoreError
from lscindex.index import default_index_path, load_index
from lscindex.model import top_classes
from lscindex.run import Run, open_run
from lscindex.store import EmbeddingStore, open_store

__all__ = ["ClassMatch", "Neighbor", "Retriever"]


@dataclass(frozen=True)
class ClassMatch:
    """One of the top-k classes of a query.

    Attributes:
        id: class id. name: class name. cosine: cosine to the class target (lsc) or softmax
        probability (ce). margin: cosine minus the next class's. novel: the query's nearest
        vector of the whole system belongs to no class (same for every match of a query).
    """

    id: int
    name: str
    cosine: float
    margin: float
    novel: bool


@dataclass(frozen=True)
class Neighbor:
    """A stored item near a query: its store row, id, path, label and cosine."""

    row: int
    id: str
    path: str
    label: int
    label_name: str | None
    cosine: float


class Retriever:
    """A run (encoder + vector system) with, optionally, a store and a FAISS index over it."""

    def __init__(self, run: Run, store: EmbeddingStore | None = None, index: Any = None) -> None:
        self.run = run
        self.store = store
        self.index = index

    @classmethod
    def open(
        cls,
        run: str | os.PathLike[str],
        store: str | os.PathLike[str] | None = None,
        index: str | os.PathLike[str] | None = None,
        *,
        device: str = "auto",
    ) -> Retriever:
        """Open a run, and a store (checked to come from this run) with its index.

        With a store but no index, the index beside the store is used when it exists, else a
        flat index is built in memory.

        Raises:
            RunError, StoreError: missing/damaged artefacts, a store of another run, an index of
            another store, a corrupted index file.
        """
        opened = open_run(run, device=device)
        if store is None:
            if index is not None:
                raise StoreError("an index needs its store: pass store= as well")
            return cls(opened)
        st = open_store(store)
        if st.header.run_fingerprint != opened.fingerprint:
            raise StoreError(
                f"store {st.path} was embedded by run {st.header.run} (fingerprint "
                f"{st.header.run_fingerprint}), not by {opened.path} ({opened.fingerprint}); "
                f"embed again with --run {opened.path}"
            )
        path = Path(index) if index is not None else default_index_path(st.path)
        if index is not None or path.is_file():
            faiss_index, _ = load_index(path, store=st)
        else:
            faiss_index = _flat_in_memory(st)
        return cls(opened, st, faiss_index)

    # -- embeddings -------------------------------------------------------------------
    def embed(self, images: Sequence[Any]) -> np.ndarray:
        """Embed images: paths or PIL images -> (B, dim) float32, L2-normalised.

        Raises:
            DataError: an unreadable image (the message names it).
        """
        if isinstance(images, str | os.PathLike):
            images = [images]
        if len(images) == 0:
            return np.zeros((0, self._dim), dtype=np.float32)
        embeddings, _ = self._encode(images)
        return embeddings.cpu().numpy()

    def _encode(self, images: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings, outputs) of images (paths or PIL images): see :func:`encode_batch`."""
        batch = torch.stack([self.run.transform(_as_rgb(image)) for image in images])
        return encode_batch(self.run, batch)

    @property
    def _dim(self) -> int:
        return int(self.run.model.embed_dim)

    def _as_embeddings(self, queries: Any) -> np.ndarray:
        if isinstance(queries, np.ndarray | torch.Tensor):
            array = (
                queries.detach().cpu().float().numpy()
                if isinstance(queries, torch.Tensor)
                else queries
            )
            if array.ndim != 2 or array.shape[1] != self._dim:
                raise InputError(
                    f"embeddings must be (B, {self._dim}) for run {self.run.path}, got shape "
                    f"{array.shape}; pass image paths to embed them first"
                )
            return np.asarray(array, dtype=np.float32)
        return self.embed(queries)

    # -- classes ----------------------------------------------------------------------
    def classify(self, queries: Any, k: int = 5) -> list[list[ClassMatch]]:
        """Top-k classes per query, best first.

        Args:
            queries: image paths / PIL images, or (B, dim) embeddings (lsc runs only).
            k: classes per query, ``1 <= k <= n_classes``.
        """
        n_classes = len(self.run.class_names)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_classes:
            raise InputError(f"k must be in [1, {n_classes}] (the run's classes), got {k!r}")
        extra = min(k + 1, n_classes)  # one more than asked, for the margin of the k-th
        ids, scores, novel = top_classes(self._outputs(queries), self.run.system, extra)
        results = []
        for row in range(len(ids)):
            matches = []
            for j in range(k):
                nxt = float(scores[row, j + 1]) if j + 1 < scores.shape[1] else float("nan")
                cid = int(ids[row, j])
                matches.append(
                    ClassMatch(
                        cid,
                        self.run.class_names[cid],
                        float(scores[row, j]),
                        float(scores[row, j]) - nxt,
                        bool(novel[row]),
                    )
                )
            results.append(matches)
        return results

    def _outputs(self, queries: Any) -> torch.Tensor:
        """What :func:`top_classes` decodes: embeddings (lsc), which callers may pass
        themselves, or logits (ce), which need the images."""
        if self.run.system is not None:
            return torch.from_numpy(self._as_embeddings(queries))
        if isinstance(queries, np.ndarray | torch.Tensor):
            raise InputError(
                f"run {self.run.path} has a softmax head: classify it with images, not embeddings"
            )
        _, logits = self._encode([queries] if isinstance(queries, str | os.PathLike) else queries)
        return logits

    # -- stored items -----------------------------------------------------------------
    def search(self, queries: Any, k: int = 5) -> list[list[Neighbor]]:
        """The k nearest stored items per query (images or embeddings), by cosine.

        Stored items are looked up by the metadata's ``row`` column (index ids are store rows).

        Raises:
            StoreError: no store was opened, or the index returned a row the store lacks.
            InputError: k above the number of indexed items.
        """
        if self.store is None or self.index is None:
            raise StoreError("search needs a store: Retriever.open(run, store=...)")
        total = int(self.index.ntotal)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= total:
            raise InputError(
                f"k={k!r} is out of range: the store {self.store.path} has {total:,} indexed "
                f"items; use 1 <= k <= {total}"
            )
        emb = self._as_embeddings(queries)
        scores, rows = self.index.search(np.ascontiguousarray(emb), k)
        # Index ids are store rows: look them up by the metadata's `row` column, not position.
        wanted = np.unique(rows[rows >= 0])
        columns = ["id", "path", "label", "label_name"]
        found_meta = self.store.rows_metadata(wanted).select(columns).to_pylist()
        by_row = dict(zip(wanted.tolist(), found_meta, strict=True))
        results = []
        for q in range(len(emb)):
            found = []
            for score, row in zip(scores[q], rows[q], strict=True):
                if row < 0:
                    continue
                m = by_row[int(row)]
                found.append(
                    Neighbor(
                        int(row), m["id"], m["path"], m["label"], m["label_name"], float(score)
                    )
                )
            results.append(found)
        return results


def _as_rgb(image: Any) -> Any:
    """A query image as an RGB PIL image: paths through :func:`read_image`, PIL images converted."""
    if isinstance(image, str | os.PathLike):
        return read_image(image)
    return image.convert("RGB")


def _flat_in_memory(store: EmbeddingStore) -> Any:
    import faiss

    from lscindex.index import add_store_rows, readable_rows

    index = faiss.IndexIDMap2(faiss.IndexFlatIP(store.header.dim))
    add_store_rows(index, store, readable_rows(store))
    return index
