"""Evaluating a trained run on labelled data: accuracy, per-class errors, novelty, retrieval.

:func:`evaluate` reads the data the way training does (:func:`lscindex.data.load_dataset` with
the run's ``val_fraction`` and ``seed``), maps its classes onto the run's by their keys (the
folder names or manifest labels of ``class_keys.json``), and decodes every image as training's
validation does: the run's eval transform, its batch size and ``amp`` setting, one
:func:`~lscindex.model.encode` and :func:`~lscindex.model.top_classes` per batch, unreadable
images left out. On the val split its top-1 and top-5 are the last ``val_top1`` / ``val_top5``
of the run's metrics.jsonl (on the same kind of device).

With a store of the run, each image also searches the store's items -- through the index beside
the store when there is one, else exactly -- for recall@k and mAP@k, "relevant" meaning "same
label". The stored copy of the query image itself (the same file once symlinks are resolved) is
left out of its neighbours and of its relevant items.

Example:
    >>> report = evaluate("runs/glyphs", "data/glyphs", store="emb.zarr")  # doctest: +SKIP
    >>> report.top1, report.worst_classes[0].name, report.retrieval.map_at_k  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from lscindex import run as run_files
from lscindex._distributed import Ranks
from lscindex.data import load_dataset
from lscindex.errors import DataError, InputError, RunError
from lscindex.index import readable_rows
from lscindex.model import encode, top_classes
from lscindex.retrieval import Retriever
from lscindex.run import Run, open_run
from lscindex.schema import document, run_identity, store_identity
from lscindex.training.sampling import ordered_loader

__all__ = ["SPLITS", "ClassAccuracy", "Confusion", "EvalReport", "RetrievalScores", "evaluate"]

SPLITS = ("val", "train", "all")
LISTED = 10  # worst classes and confusion pairs a report lists


@dataclass(frozen=True)
class ClassAccuracy:
    """Top-1 accuracy of one class: ``correct`` of its ``images`` evaluated images."""

    id: int
    name: str
    images: int
    correct: int
    accuracy: float


@dataclass(frozen=True)
class Confusion:
    """``count`` images of class ``true_id`` whose top-1 class was ``pred_id`` (another one)."""

    true_id: int
    true_name: str
    pred_id: int
    pred_name: str
    count: int


@dataclass(frozen=True)
class RetrievalScores:
    """How well the k nearest stored items of each image share its label.

    Attributes:
        k: neighbours per image.
        recall_at_k: share of images with at least one relevant item among their k nearest.
        map_at_k: mean over images of AP@k: the sum of precision@i over the relevant ranks
            i <= k, divided by min(k, R), R = the image's relevant stored items.
        queries: images counted (those with R >= 1); the figures are None when there are none.
        without_relevant: images left out because the store holds no other item of their class.
    """

    k: int
    recall_at_k: float | None
    map_at_k: float | None
    queries: int
    without_relevant: int


@dataclass(frozen=True, kw_only=True, eq=False)
class EvalReport:
    """What :func:`evaluate` measured.

    Attributes:
        run, store: who answered (:func:`lscindex.schema.run_identity` / ``store_identity``).
        index: the index searched: ``path`` (None for exact search in memory), ``factory`` and
            ``count``; None without a store. chosen: how run, store and index were chosen.
        data, split: the data and its split (``val``, ``train`` or ``all``).
        images: images evaluated. unreadable: images left out (not readable).
        top1, top5: share of images whose class is the first / among the first ``top_k``
            (min(5, n_classes)) classes.
        mean_class_accuracy: top-1 averaged over the classes that have images.
        novelty_rate: share of images whose nearest vector of the whole system belongs to no
            class (lsc); None for a ce run.
        class_images, class_correct: (n_classes,) int64 per class of the run: images
            evaluated, and those whose top-1 class was right.
        worst_classes: the 10 lowest top-1 accuracies (most images first among equals).
        confusions: the 10 most frequent (true -> predicted) pairs, most frequent first.
        retrieval: recall@k and mAP@k against the store, None without one.
    """

    run: dict[str, Any]
    store: dict[str, Any] | None
    index: dict[str, Any] | None
    chosen: dict[str, str | None]
    data: str
    split: str
    images: int
    unreadable: int
    top1: float
    top5: float
    top_k: int
    mean_class_accuracy: float
    novelty_rate: float | None
    class_images: np.ndarray = field(repr=False)
    class_correct: np.ndarray = field(repr=False)
    worst_classes: tuple[ClassAccuracy, ...]
    confusions: tuple[Confusion, ...]
    retrieval: RetrievalScores | None

    def to_document(self) -> dict[str, Any]:
        """The ``eval`` JSON document (:mod:`lscindex.schema`); per-class arrays left out."""
        return document(
            "eval",
            run=self.run,
            store=self.store,
            index=self.index,
            chosen=self.chosen,
            data={"path": self.data, "split": self.split},
            images=self.images,
            unreadable=self.unreadable,
            top1=self.top1,
            top5=self.top5,
            top_k=self.top_k,
            mean_class_accuracy=self.mean_class_accuracy,
            novelty_rate=self.novelty_rate,
            worst_classes=list(self.worst_classes),
            confusions=list(self.confusions),
            retrieval=self.retrieval,
        )


def evaluate(
    run: str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    split: str = "val",
    store: str | os.PathLike[str] | None = None,
    k: int = 5,
    batch_size: int | None = None,
    workers: int = 2,
    device: str = "auto",
    progress: Callable[[int, int, float], None] | None = None,
) -> EvalReport:
    """Accuracy, per-class errors, novelty and (with ``store``) retrieval of a run on ``data``.

    Args:
        run: run directory made by ``lscindex train``.
        data: what ``train`` takes (ImageFolder with ``train/`` [``val/``], or a manifest),
            labelled with (some of) the run's classes.
        split: ``val`` (default), ``train`` or ``all`` (both).
        store: a store embedded with this run: also measure recall@k and mAP@k.
        k: neighbours per image for the retrieval figures (1 <= k <= indexed items).
        batch_size: images per forward pass (default: the run's training batch size).
        workers: image decoding worker processes.
        device: ``auto``, ``cpu`` or ``cuda``.
        progress: called as ``progress(images_done, images_total, images_per_s)``.

    Returns:
        :class:`EvalReport`.

    Raises:
        RunError: not a run. DataError: missing data, no such split, classes the run does not
        have, nothing readable. StoreError: a store of another run. InputError: bad ``k``,
        ``split``, ``batch_size`` or ``workers``.

    Example:
        >>> report = evaluate("runs/glyphs", "data/glyphs")  # doctest: +SKIP
        >>> f"{report.top1:.1%} / {report.top5:.1%}"         # doctest: +SKIP
    """
    _check_options(split, k, batch_size, workers)
    retriever = Retriever.open(run, store=store, device=device) if store is not None else None
    opened = retriever.run if retriever is not None else open_run(run, device=device)
    samples = _samples(opened, data, split)
    search = _Search(retriever, k, [path for path, _ in samples]) if retriever else None
    if batch_size is None:
        batch_size = _train_setting(opened, "batch_size", int, 128)
    outcome = _predict(opened, samples, batch_size, workers, search, progress)
    return _report(opened, retriever, os.fspath(data), split, outcome, search)


def _check_options(split: str, k: int, batch_size: int | None, workers: int) -> None:
    if split not in SPLITS:
        raise InputError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    _check_int("k", k, 1)
    if batch_size is not None:
        _check_int("batch_size", batch_size, 1)
    _check_int("workers", workers, 0)


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"{name} must be an integer >= {low}, got {value!r}")


def _train_setting(run: Run, key: str, kind: type[int] | type[float], default: Any) -> Any:
    """``run.config["train"][key]`` as ``kind`` (``default`` where absent); RunError when it is
    not a number."""
    value = run.config["train"].get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RunError(
            f"{run.path / run_files.CONFIG}: 'train' {key} is {value!r}, not a number; the file "
            f"is damaged or was edited: restore it or train the run again"
        )
    return kind(value)


def _samples(run: Run, data: str | os.PathLike[str], split: str) -> list[tuple[str, int]]:
    """``(path, class id of the run)`` of the split, read as training read it."""
    fraction = _train_setting(run, "val_fraction", float, 0.0)
    splits = load_dataset(data, val_fraction=fraction, seed=_train_setting(run, "seed", int, 0))
    every = [*splits.train, *splits.val] if split == "all" else []
    chosen = {"val": splits.val, "train": splits.train, "all": every}[split]
    if not chosen:
        raise DataError(
            f"{data} has no val split (no val/ folder or val rows, and the val_fraction "
            f"{fraction} of run {run.path} holds none out); evaluate with --split train or "
            f"--split all"
        )
    lookup = {key: i for i, key in enumerate(run.class_keys)}
    used = sorted({label for _, label in chosen})
    unknown = [splits.keys[y] for y in used if splits.keys[y] not in lookup]
    if unknown:
        listing = run_files.CLASS_KEYS if run.class_keys != run.class_names else run_files.CLASSES
        named = ", ".join(repr(u) for u in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise DataError(
            f"{data} has {len(unknown):,} class(es) run {run.path} was not trained on "
            f"({named}); evaluate on data labelled with the run's classes (listed in "
            f"{run.path / listing})"
        )
    to_run = {y: lookup[splits.keys[y]] for y in used}
    return [(path, to_run[label]) for path, label in chosen]


@dataclass
class _Outcome:
    """Per evaluated image, in sample order: labels, top-1 ids, top-k hits, novelty."""

    labels: list[np.ndarray] = field(default_factory=list)
    top1: list[np.ndarray] = field(default_factory=list)
    hit: list[np.ndarray] = field(default_factory=list)
    novel: list[np.ndarray] = field(default_factory=list)
    unreadable: int = 0

    def joined(self, name: str, dtype: Any) -> np.ndarray:
        parts = getattr(self, name)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def _predict(
    run: Run,
    samples: list[tuple[str, int]],
    batch_size: int,
    workers: int,
    search: _Search | None,
    progress: Callable[[int, int, float], None] | None,
) -> _Outcome:
    """Training's validation pass over ``samples``, and the store search of each image."""
    loader = ordered_loader(
        samples,
        run.transform,
        batch_size=batch_size,
        workers=workers,
        ranks=Ranks(world=1, rank=0, local_rank=0),
        generator=torch.Generator().manual_seed(0),  # leaves torch's global RNG alone
    )
    top_k = min(5, len(run.class_names))
    amp_dtype = _amp_dtype(run)
    outcome, done, started = _Outcome(), 0, time.perf_counter()
    with torch.inference_mode():
        for images, labels, indices, dropped in loader:
            outcome.unreadable += dropped
            done += len(labels) + dropped
            if len(labels):
                embeddings, outputs = encode(run.model, images.to(run.device), amp_dtype=amp_dtype)
                ids, _, novel = top_classes(outputs, run.system, top_k)
                truth = labels.numpy()
                outcome.labels.append(truth)
                outcome.top1.append(ids[:, 0])
                outcome.hit.append((ids == truth[:, None]).any(axis=1))
                outcome.novel.append(novel)
                if search is not None:
                    search.add(embeddings.cpu().numpy(), indices.numpy(), truth)
            if progress is not None:
                progress(done, len(samples), done / max(time.perf_counter() - started, 1e-9))
    return outcome


def _amp_dtype(run: Run) -> torch.dtype | None:
    """The autocast dtype training's validation used: fp16 on CUDA / bf16 on CPU with amp."""
    if not run.config["train"].get("amp", False):
        return None
    return torch.float16 if run.device.type == "cuda" else torch.bfloat16


class _Search:
    """Recall@k and mAP@k of query embeddings against a store, summed over batches."""

    def __init__(self, retriever: Retriever, k: int, queries: Sequence[str]) -> None:
        assert retriever.store is not None and retriever.index is not None
        store, self.retriever, self.k = retriever.store, retriever, k
        self.total = int(retriever.index.ntotal)
        if k > self.total:
            raise InputError(
                f"k={k} is more than the {self.total:,} items indexed in store {store.path}; "
                f"use -k {self.total} or less"
            )
        good = readable_rows(store)
        meta = store.metadata
        rows = np.asarray(meta.column("row").to_numpy(), dtype=np.int64)
        self.labels = np.full(store.header.count, -1, dtype=np.int64)
        self.labels[rows] = np.asarray(meta.column("label").to_numpy(), dtype=np.int64)
        self.labels[~good] = -1  # not in the index: never a neighbour, never relevant
        n_classes = len(retriever.run.class_names)
        self.relevant = np.bincount(self.labels[self.labels >= 0], minlength=n_classes)
        self.selves = _stored_copies(queries, meta, good)
        self.hits = self.ap = 0.0
        self.counted = self.without_relevant = 0

    def add(self, embeddings: np.ndarray, indices: np.ndarray, labels: np.ndarray) -> None:
        """Search (B, dim) float32 embeddings of samples ``indices`` with labels (B,) int64."""
        selves = [self.selves.get(int(i), ()) for i in indices]
        width = min(self.k + max(len(s) for s in selves), self.total)
        found = self.retriever.search(np.ascontiguousarray(embeddings), k=width)
        for neighbors, label, own in zip(found, labels.tolist(), selves, strict=True):
            own_relevant = sum(1 for row in own if self.labels[row] == label)
            n_relevant = int(self.relevant[label]) - own_relevant
            if n_relevant == 0:
                self.without_relevant += 1
                continue
            ranked = [n.label == label for n in neighbors if n.row not in own][: self.k]
            self.counted += 1
            self.hits += any(ranked)
            self.ap += _average_precision(ranked, n_relevant, self.k)

    def scores(self) -> RetrievalScores:
        recall = self.hits / self.counted if self.counted else None
        map_at_k = self.ap / self.counted if self.counted else None
        return RetrievalScores(self.k, recall, map_at_k, self.counted, self.without_relevant)


def _average_precision(ranked: Sequence[bool], n_relevant: int, k: int) -> float:
    """AP@k of relevance flags in rank order: sum of precision@i at relevant i, / min(k, R)."""
    found, total = 0, 0.0
    for rank, relevant in enumerate(ranked[:k], start=1):
        if relevant:
            found += 1
            total += found / rank
    return total / min(k, n_relevant)


def _stored_copies(
    queries: Sequence[str], metadata: pa.Table, good: np.ndarray
) -> dict[int, tuple[int, ...]]:
    """Query index -> the indexed store rows holding the same file (paths equal once resolved).

    Only stored paths with a query's file name (as written or resolved) are resolved, found by
    one pyarrow scan: a system call per candidate, not per stored item. (So a stored symlink to
    a query under another file name is not taken for it.)
    """
    import pyarrow.compute as pc

    resolved = [os.path.realpath(q) for q in queries]
    names = sorted({os.path.basename(p) for p in (*queries, *resolved)})
    stored = metadata.column("path")
    file_names = pc.replace_substring_regex(stored, pattern=r"^.*/", replacement="")
    named = pc.fill_null(pc.is_in(file_names, value_set=pa.array(names, pa.string())), False)
    rows = np.asarray(metadata.column("row").to_numpy(), dtype=np.int64)
    at = np.flatnonzero(np.asarray(named.to_numpy(zero_copy_only=False), bool) & good[rows])
    by_file: dict[str, list[int]] = {}
    for path, row in zip(stored.take(pa.array(at)).to_pylist(), rows[at].tolist(), strict=True):
        by_file.setdefault(os.path.realpath(path), []).append(row)
    return {i: tuple(by_file[r]) for i, r in enumerate(resolved) if r in by_file}


def _report(
    run: Run,
    retriever: Retriever | None,
    data: str,
    split: str,
    outcome: _Outcome,
    search: _Search | None,
) -> EvalReport:
    labels, top1 = outcome.joined("labels", np.int64), outcome.joined("top1", np.int64)
    if len(labels) == 0:
        raise DataError(
            f"none of the {outcome.unreadable:,} images of the {split} split of {data} could be "
            f"read; check the files (lscindex train skips them the same way)"
        )
    n_classes = len(run.class_names)
    right = top1 == labels
    class_images = np.bincount(labels, minlength=n_classes).astype(np.int64)
    class_correct = np.bincount(labels[right], minlength=n_classes).astype(np.int64)
    present = class_images > 0
    store, index = None, None
    chosen: dict[str, str | None] = {"run": "given", "store": None, "index": None}
    if retriever is not None and retriever.store is not None:
        store = store_identity(retriever.store)
        path = retriever.index_path
        count = int(retriever.index.ntotal)
        index = {
            "path": None if path is None else str(path),
            "factory": retriever.index_factory,
            "count": count,
        }
        chosen = dict(retriever.chosen)
    return EvalReport(
        run=run_identity(run),
        store=store,
        index=index,
        chosen=chosen,
        data=data,
        split=split,
        images=len(labels),
        unreadable=outcome.unreadable,
        top1=int(right.sum()) / len(labels),
        top5=int(outcome.joined("hit", bool).sum()) / len(labels),
        top_k=min(5, n_classes),
        mean_class_accuracy=float(np.mean(class_correct[present] / class_images[present])),
        novelty_rate=(
            None if run.system is None else int(outcome.joined("novel", bool).sum()) / len(labels)
        ),
        class_images=class_images,
        class_correct=class_correct,
        worst_classes=_worst_classes(run.class_names, class_images, class_correct),
        confusions=_confusions(run.class_names, labels, top1),
        retrieval=search.scores() if search is not None else None,
    )


def _worst_classes(
    names: Sequence[str], images: np.ndarray, correct: np.ndarray
) -> tuple[ClassAccuracy, ...]:
    """The LISTED classes with images of lowest accuracy; more images, then lower id, first."""
    ids = np.flatnonzero(images)
    accuracy = correct[ids] / images[ids]
    order = np.lexsort((ids, -images[ids], accuracy))[:LISTED]
    return tuple(
        ClassAccuracy(int(c), names[c], int(images[c]), int(correct[c]), float(accuracy[i]))
        for i, c in zip(order, ids[order], strict=True)
    )


def _confusions(
    names: Sequence[str], labels: np.ndarray, top1: np.ndarray
) -> tuple[Confusion, ...]:
    """The LISTED most frequent wrong (true, predicted) pairs; lower ids first among equals."""
    wrong = labels != top1
    n = len(names)
    pairs, counts = np.unique(labels[wrong] * n + top1[wrong], return_counts=True)
    order = np.lexsort((pairs, -counts))[:LISTED]  # pairs ascend by (true, predicted)
    return tuple(
        Confusion(int(t), names[t], int(p), names[p], int(c))
        for t, p, c in ((pairs[i] // n, pairs[i] % n, counts[i]) for i in order)
    )
