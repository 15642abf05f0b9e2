"""The Python retrieval API: classify and search images with a trained run and its store.

Which run, store and index answer is decided one way for the CLI, the service and this API
(:func:`Retriever.open`): what is named wins; otherwise a single candidate is used and several are
refused with the list; the choice is recorded in :attr:`Retriever.chosen`.

Example:
    >>> r = Retriever.open("runs/glyphs")           # its only store, and the index beside it
    ...                                                               # doctest: +SKIP
    >>> r.classify(["a.png"], k=5)[0][0].name                          # doctest: +SKIP
    >>> r.search(["a.png"], k=5)[0][0].path                            # doctest: +SKIP
    >>> r.query(["a.png", "photos/"], k=3)                             # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lscindex._index_search import search_parameters
from lscindex._location import (
    Location,
    PathOrUrl,
    RemotePath,
    as_location,
    is_remote,
    recorded_location,
)
from lscindex.data import list_images, read_image
from lscindex.embedding import encode_batch
from lscindex.errors import DataError, InputError, RunError, StoreError
from lscindex.features import HEAD as FEATURES_HEAD
from lscindex.features import FeatureSpec, open_features
from lscindex.index import default_index_path, load_index, read_sidecar
from lscindex.model import top_classes
from lscindex.run import CONFIG, STORES, WEIGHTS, Run, open_run, recorded_stores
from lscindex.store import EmbeddingStore, open_store, read_header, store_exists

__all__ = ["ClassMatch", "Neighbor", "QueryResult", "Retriever", "find_runs", "find_stores"]

DEFAULT_BATCH_SIZE = 64
KNN_VOTES = 10  # stored items whose labels vote for a plain timm encoder's classes


@dataclass(frozen=True)
class ClassMatch:
    """One of the top-k classes of a query.

    Attributes:
        id: class id. name: class name.
        score: the cosine to the class's target (lsc run) or the softmax probability (ce run);
            :attr:`Retriever.score_meaning` says which.
        margin: score minus the next class's score; None for the last class of a run.
        novel: the query's nearest vector of the whole system belongs to no class (the same for
            every match of a query; always False for a ce run).
    """

    id: int
    name: str
    score: float
    margin: float | None
    novel: bool


@dataclass(frozen=True)
class Neighbor:
    """A stored item near a query: its store row, id, path, label and cosine ``score``."""

    row: int
    id: str
    path: str
    label: int
    label_name: str | None
    score: float


@dataclass(frozen=True)
class QueryResult:
    """What :meth:`Retriever.query` found for one image; ``error`` is set (and the lists empty)
    when the image could not be read."""

    image: str
    classes: list[ClassMatch] = field(default_factory=list)
    neighbors: list[Neighbor] = field(default_factory=list)
    error: str | None = None


def find_runs(root: str | os.PathLike[str] = "runs") -> list[Path]:
    """The run directories directly under ``root`` (config and weights present), sorted."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / CONFIG).is_file() and (p / WEIGHTS).is_file())


def find_stores(run: Run) -> list[Location]:
    """The stores embedded with ``run`` that still exist and still hold its embeddings, oldest
    first (a store re-embedded by another run since is left out)."""
    found = []
    for recorded in recorded_stores(run.path):
        try:
            path = recorded_location(recorded, "store", f"{run.path / STORES}")
            if not store_exists(path):
                continue
            header = read_header(path)
        except (StoreError, OSError):  # damaged since, or unreachable: naming it says why
            continue
        if header.run_fingerprint == run.fingerprint:
            found.append(path)
    return found


def _shown(path: PathOrUrl) -> str:
    """``path`` relative to the working directory when it is under it, else as it is (URLs
    as they are)."""
    if isinstance(path, RemotePath) or is_remote(path):
        return str(path)
    path = os.fspath(path)
    relative = os.path.relpath(path) if os.path.isabs(path) else os.fspath(path)
    return os.fspath(path) if relative.startswith("..") else relative


def _listed(paths: Sequence[PathOrUrl], limit: int = 8) -> str:
    names = [_shown(p) for p in paths[:limit]]
    return ", ".join(names) + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _choose_run(
    run: str | os.PathLike[str] | None, runs_root: str | os.PathLike[str]
) -> tuple[Path, str]:
    """(run directory, how it was chosen): the named one, else the only run under ``runs_root``."""
    if run is not None:
        return Path(run), "given"
    runs = find_runs(runs_root)
    if not runs:
        raise RunError(
            f"no run found under {_shown(runs_root)}/; name one (--run RUN, "
            f"Retriever.open(RUN)) or train one with lscindex train"
        )
    if len(runs) > 1:
        raise RunError(
            f"{len(runs)} runs under {_shown(runs_root)}/ ({_listed(runs)}); name the one to "
            f"use (--run RUN, Retriever.open(RUN))"
        )
    return runs[0], f"the only run under {_shown(runs_root)}/"


def _choose_store(
    run: Run, store: PathOrUrl | bool | None, index: PathOrUrl | None
) -> tuple[Location | None, str]:
    """(store or None, how it was chosen): see :meth:`Retriever.open`."""
    if store is False:
        return None, "none asked for"
    if store is not None and store is not True:
        return as_location(store, "store"), "given"
    if index is not None:  # the store the index was built from
        named = as_location(read_sidecar(index).store, "store")
        return named, "named by the index's sidecar"
    stores = find_stores(run)
    if not stores:
        if store is True:
            raise StoreError(
                f"run {_shown(run.path)} has no store; embed one with lscindex embed DATA --run "
                f"{_shown(run.path)} --out emb.zarr"
            )
        return None, "none embedded with this run"
    if len(stores) > 1:
        raise StoreError(
            f"run {_shown(run.path)} has {len(stores)} stores ({_listed(stores)}); name the one "
            f"to search (--store STORE, store=) or search none (--no-store, store=False)"
        )
    return as_location(_shown(stores[0]), "store"), "the only store embedded with this run"


class Retriever:
    """A run (encoder + vector system) with, optionally, a store and a FAISS index over it.

    Attributes:
        run: the opened :class:`~lscindex.run.Run`. store: :class:`EmbeddingStore` or None.
        index: the FAISS index over the store (None without a store).
        chosen: how each of ``run``, ``store``, ``index`` was chosen (``"given"``, ``"the only
            run under runs/"``, ``"beside the store"``, ...; None for what is absent).
        index_path, index_factory: the index file and its factory (None and ``"Flat"`` for the
            exact index built in memory).
    """

    def __init__(
        self,
        run: Run,
        store: EmbeddingStore | None = None,
        index: Any = None,
        *,
        chosen: dict[str, str | None] | None = None,
        index_path: Location | None = None,
        index_factory: str | None = None,
    ) -> None:
        self.run = run
        self.store = store
        self.index = index
        if store is not None and index is None:
            self.index, index_factory = _flat_in_memory(store), "Flat"
        self.index_path = index_path
        self.index_factory = index_factory
        self.chosen = {"run": "given", "store": None, "index": None, **(chosen or {})}

    @classmethod
    def open(
        cls,
        run: str | os.PathLike[str] | None = None,
        store: str | os.PathLike[str] | bool | None = None,
        index: str | os.PathLike[str] | None = None,
        *,
        device: str = "auto",
        runs_root: str | os.PathLike[str] = "runs",
    ) -> Retriever:
        """Open a run, a store of that run, and the store's index, as ``lscindex query`` does.

        Args:
            run: a run directory; None: the only run under ``runs_root`` (several: refused).
            store: a store path; None: the only store embedded with the run, if any (several:
                refused, naming them); False: no store; True: the only store, which must exist.
                With ``index`` and no store, the store the index was built from.
            index: an index file; None: the one beside the store if it exists, else an exact
                (flat) index built in memory.

        Raises:
            RunError, StoreError: nothing to choose from, several candidates, missing or damaged
            artefacts, a store of another run, an index of another store, a corrupted index.
        """
        opened, run_how = _open_encoder(run, store, index, runs_root, device)
        store_path, store_how = _choose_store(opened, store, index)
        chosen: dict[str, str | None] = {"run": run_how, "store": store_how, "index": None}
        if store_path is None:
            return cls(opened, chosen=chosen)
        st = open_store(store_path)
        if st.header.run_fingerprint != opened.fingerprint:
            raise StoreError(
                f"store {st.path} was embedded by run {st.header.run} (fingerprint "
                f"{st.header.run_fingerprint}), not by {opened.path} ({opened.fingerprint}); "
                f"open it with the run {st.header.run}, or embed with this one (lscindex embed "
                f"DATA --run {opened.path} --out NEW.zarr)"
            )
        path = as_location(index, "index") if index is not None else default_index_path(st.path)
        if index is None and not path.is_file():
            chosen["index"] = "none beside the store: exact search in memory"
            return cls(opened, st, chosen=chosen)
        faiss_index, info = load_index(path, store=st)
        chosen["index"] = "given" if index is not None else "beside the store"
        return cls(
            opened, st, faiss_index, chosen=chosen, index_path=path, index_factory=info.factory
        )

    def __repr__(self) -> str:
        system = self.run.system
        head = f"{system.kind}, dim {system.dim}" if system is not None else "ce head"
        head = f"timm features, dim {self._dim}" if self._features else head
        parts = [f"run={_shown(self.run.path)!r} ({head}, {len(self.run.class_names):,} classes)"]
        if self.store is not None:
            parts.append(f"store={_shown(self.store.path)!r} ({self.store.header.count:,} rows)")
            where = _shown(self.index_path) if self.index_path is not None else "in memory"
            parts.append(f"index={self.index_factory} ({where})")
        return f"Retriever({', '.join(parts)})"

    @property
    def score_meaning(self) -> str:
        """What :attr:`ClassMatch.score` is: ``cosine`` (lsc), ``probability`` (ce), or
        ``knn_vote`` (a plain timm encoder: the share of the :data:`KNN_VOTES` nearest labelled
        stored items that hold the class)."""
        if self._features:
            return "knn_vote"
        return "cosine" if self.run.system is not None else "probability"

    @property
    def _features(self) -> bool:
        """Whether the encoder is a plain timm model (classes come from stored labels)."""
        return bool(self.run.config["model"]["head"] == FEATURES_HEAD)

    # -- embeddings -------------------------------------------------------------------
    def embed(self, images: Any, *, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """Embed images: a path, a folder (its images, recursively, sorted), a PIL image, or a
        sequence of these -> (N, dim) float32, L2-normalised, in input order.

        Raises:
            DataError: an unreadable image or a missing path (the message names it).
        """
        _check_batch_size(batch_size)
        return self._encode_all(images, batch_size)[0].numpy()

    def _encode(self, images: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings, outputs) of RGB PIL images: see :func:`encode_batch`."""
        batch = torch.stack([self.run.transform(image) for image in images])
        return encode_batch(self.run, batch)

    def _encode_all(self, images: Any, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings (N, dim), outputs (N, out_dim)) on the CPU, read and run batch by batch.

        Raises:
            DataError: a missing path or an unreadable image.
        """
        items = [item for _, item in _expand(images, strict=True)]
        pieces = [
            [t.cpu() for t in self._encode([_as_rgb(item) for item in batch])]
            for batch in _batches(items, batch_size)
        ]
        if not pieces:
            out_dim = self._dim if self.run.system is not None else len(self.run.class_names)
            return torch.zeros((0, self._dim)), torch.zeros((0, out_dim))
        return torch.cat([p[0] for p in pieces]), torch.cat([p[1] for p in pieces])

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
        """Top-k classes per query, best first (all of them when the run has fewer than k).

        Args:
            queries: images (as :meth:`embed` takes them), or (B, dim) embeddings (lsc runs).
            k: classes per query, at least 1.
        """
        return self._matches(self._outputs(queries), self._classes_k(k))

    def _classes_k(self, k: int) -> int:
        """``k`` checked, capped at the run's class count (a plain encoder's: at k)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        return k if self._features else min(k, len(self.run.class_names))

    def _matches(self, outputs: torch.Tensor, k: int) -> list[list[ClassMatch]]:
        """The top-k :class:`ClassMatch` lists of :func:`encode` outputs (B, out_dim); for a
        plain timm encoder, of its embeddings, by a vote of the nearest stored items."""
        if self._features:
            if self.store is None:
                raise StoreError(
                    f"{self.run.path} has no classes of its own: open it with its store, whose "
                    f"labels vote (Retriever.open(store=...))"
                )
            return _vote(self.search(outputs.numpy(), KNN_VOTES), k)
        extra = min(k + 1, len(self.run.class_names))  # one more, for the margin of the k-th
        ids, scores, novel = top_classes(outputs, self.run.system, extra)
        names = self.run.class_names
        results = []
        for row in range(len(ids)):
            s = [float(x) for x in scores[row]]
            results.append(
                [
                    ClassMatch(
                        int(ids[row, j]),
                        names[int(ids[row, j])],
                        s[j],
                        s[j] - s[j + 1] if j + 1 < len(s) else None,
                        bool(novel[row]),
                    )
                    for j in range(k)
                ]
            )
        return results

    def _outputs(self, queries: Any) -> torch.Tensor:
        """What :func:`top_classes` decodes: embeddings (lsc), which callers may pass
        themselves, or logits (ce), which need the images."""
        if self.run.system is not None or self._features:
            return torch.from_numpy(self._as_embeddings(queries))
        if isinstance(queries, np.ndarray | torch.Tensor):
            raise InputError(
                f"run {self.run.path} has a softmax head: classify it with images, not embeddings"
            )
        return self._encode_all(queries, DEFAULT_BATCH_SIZE)[1]

    # -- stored items -----------------------------------------------------------------
    def search(
        self,
        queries: Any,
        k: int = 5,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> list[list[Neighbor]]:
        """The k nearest stored items per query (images or (B, dim) embeddings), by cosine,
        best first; fewer than k when the index holds fewer items.

        Stored items are looked up by the metadata's ``row`` column (index ids are store rows).

        Args:
            nprobe: inverted lists to visit (IVF indexes), ef_search: HNSW's efSearch, for
                this search only (passed as FAISS SearchParameters: concurrent searches with
                other values are unaffected). None: the index's default (the sidecar's
                ``default_nprobe`` / ``default_ef_search``, saved in the index file).

        Raises:
            StoreError: no store was opened, or the index returned a row the store lacks.
            InputError: k below 1, or a knob the index does not have (nprobe of an HNSW or
                Flat index, ef_search of an IVF or Flat one).
        """
        if self.store is None or self.index is None:
            raise StoreError("search needs a store: Retriever.open(run, store=...)")
        self._classes_k(k)  # the same check
        params = self._search_parameters(nprobe, ef_search)
        emb = self._as_embeddings(queries)
        k = min(k, int(self.index.ntotal))
        if k == 0 or len(emb) == 0:
            return [[] for _ in range(len(emb))]
        scores, rows = self.index.search(np.ascontiguousarray(emb), k, params=params)
        wanted = np.unique(rows[rows >= 0])
        columns = ["id", "path", "label", "label_name"]
        found_meta = self.store.rows_metadata(wanted).select(columns).to_pylist()
        by_row = dict(zip(wanted.tolist(), found_meta, strict=True))
        return [
            [
                Neighbor(int(row), **by_row[int(row)], score=float(score))
                for score, row in zip(scores[q], rows[q], strict=True)
                if row >= 0
            ]
            for q in range(len(emb))
        ]

    def _search_parameters(self, nprobe: int | None, ef_search: int | None) -> Any:
        """FAISS SearchParameters for the knobs given (None without any); see :meth:`search`."""
        if (nprobe is not None or ef_search is not None) and self.index is None:
            raise InputError(
                "nprobe and ef_search apply to searching a store, and no store was opened; "
                "leave them out or open one (Retriever.open(run, store=...))"
            )
        factory = self.index_factory or "Flat"
        return search_parameters(self.index, factory, nprobe=nprobe, ef_search=ef_search)

    # -- both, image by image ---------------------------------------------------------
    def query(
        self,
        images: Any,
        k: int = 5,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> list[QueryResult]:
        """Classes and, with a store, nearest stored items of each image, embedding each once.

        Args:
            images: as :meth:`embed` takes them (folders are expanded to their images).
            k: classes and neighbours per image (fewer when the run has fewer classes or the
                store fewer items).
            nprobe, ef_search: search knobs, as for :meth:`search` (checked before any image
                is read).

        Returns:
            One :class:`QueryResult` per image, in input order; an image that cannot be read
            (missing, not an image, too small) gets ``error`` set instead of failing the batch.
        """
        n_classes = self._classes_k(k)
        _check_batch_size(batch_size)
        self._search_parameters(nprobe, ef_search)
        knobs = {"nprobe": nprobe, "ef_search": ef_search}
        entries = _expand(images, strict=False)
        results: list[QueryResult] = []
        for batch in _batches(entries, batch_size):
            readable: list[tuple[str, Any]] = []
            errors: dict[int, str] = {}
            for i, (name, item) in enumerate(batch):
                try:
                    readable.append((name, _as_rgb(item)))
                except (DataError, OSError) as exc:
                    errors[i] = str(exc)
            found = iter(self._query_batch(readable, n_classes, k, knobs))
            for i, (name, _) in enumerate(batch):
                results.append(QueryResult(name, error=errors[i]) if i in errors else next(found))
        return results

    def _query_batch(
        self, images: list[tuple[str, Any]], n_classes: int, k: int, knobs: dict[str, Any]
    ) -> list[QueryResult]:
        if not images:
            return []
        embeddings, outputs = self._encode([image for _, image in images])
        classes = self._matches(embeddings if self._features else outputs, n_classes)
        emb = embeddings.cpu().numpy()
        neighbors = self.search(emb, k, **knobs) if self.store is not None else [[] for _ in images]
        return [
            QueryResult(name, cls, nb)
            for (name, _), cls, nb in zip(images, classes, neighbors, strict=True)
        ]


def _vote(hits: list[list[Neighbor]], k: int) -> list[list[ClassMatch]]:
    """The k classes most of each query's labelled neighbours hold (ties: the larger summed
    cosine, then the smaller id), scored by their share of the votes."""
    results = []
    for found in hits:
        votes: dict[int, tuple[int, float, str]] = {}
        for n in found:
            if n.label >= 0:
                count, total, _ = votes.get(n.label, (0, 0.0, ""))
                votes[n.label] = (count + 1, total + n.score, n.label_name or str(n.label))
        ranked = sorted(votes.items(), key=lambda item: (-item[1][0], -item[1][1], item[0]))
        n_votes = sum(count for count, _, _ in votes.values())
        shares = [count / n_votes for _, (count, _, _) in ranked]
        results.append(
            [
                ClassMatch(
                    label,
                    name,
                    shares[j],
                    shares[j] - shares[j + 1] if j + 1 < len(shares) else None,
                    False,
                )
                for j, (label, (_, _, name)) in enumerate(ranked[:k])
            ]
        )
    return results


def _open_encoder(
    run: str | os.PathLike[str] | None,
    store: str | os.PathLike[str] | bool | None,
    index: str | os.PathLike[str] | None,
    runs_root: str | os.PathLike[str],
    device: str,
) -> tuple[Run, str]:
    """(the encoder, how it was chosen): the named run; else, for a store embedded by a plain
    timm model (named, or named by the index's sidecar), that model; else the only run."""
    named = store if isinstance(store, str | os.PathLike) else None
    if named is None and index is not None and store is None:
        named = read_sidecar(index).store
    if run is None and named is not None and store_exists(named):
        header = read_header(named)
        if header.encoder is not None:
            opened = open_features(FeatureSpec.from_dict(header.encoder), device=device)
            return opened, "the store's plain timm encoder"
    run_path, run_how = _choose_run(run, runs_root)
    return open_run(run_path, device=device), run_how


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _expand(images: Any, *, strict: bool) -> list[tuple[str, Any]]:
    """(name, path or PIL image) per image: folders become their images (recursive, sorted).

    ``strict``: a missing path raises DataError; otherwise it stays, to become an error entry.
    """
    if isinstance(images, str | os.PathLike) or hasattr(images, "convert"):
        images = [images]
    out: list[tuple[str, Any]] = []
    for i, item in enumerate(images):
        if not isinstance(item, str | os.PathLike):
            out.append((f"<image {i}>", item))
        elif os.path.isdir(item):
            out.extend((str(p), p) for p in list_images(Path(item)))
        elif strict and not os.path.lexists(item):
            raise DataError(f"{os.fspath(item)} does not exist; pass image files or folders")
        else:
            out.append((os.fspath(item), item))
    return out


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
