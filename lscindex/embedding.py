"""Embedding images of a trained run into a resumable store (see :mod:`lscindex.store`).

Each input becomes one row: its embedding (the encoder output, L2-normalised), the decoded class,
cosine and novelty, and a status. Unreadable inputs (truncated, empty, not an image, tiny, over
Pillow's pixel limit, unsupported, not a regular file) become rows with ``status="error"`` and a
message; they never stop the job.

Batches are formed inside chunks, so a resumed job computes exactly the batches an uninterrupted
one would, and the stored embeddings come out bit-identical on the same machine.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from lscindex._append import AppendedRows, append_header, check_resumed, new_items
from lscindex._distributed import Ranks, process_group, ranks, select_device
from lscindex._io import LOCK_SUFFIX, swap_dir
from lscindex._location import Location, RemotePath, as_location, location_lock
from lscindex._preemption import StopRequest, ignore_stop_signals, stop_requests
from lscindex.data import (
    read_image,
)
from lscindex.errors import DataError, Preempted, StoreError
from lscindex.features import FeatureSpec, open_features
from lscindex.inputs import EmbedItem, resolve_inputs
from lscindex.model import encode, top_classes
from lscindex.run import Run, open_run, record_store
from lscindex.store import (
    STORE_FORMAT_VERSION,
    StoreHeader,
    StoreWriter,
    balanced_chunk_rows,
    metadata_table,
    new_store_id,
    read_header,
    store_exists,
)

__all__ = [
    "EmbedItem",
    "EmbedReport",
    "build_store",
    "embed_batch",
    "encode_batch",
    "resolve_inputs",
]

DEFAULT_CHUNK_ROWS = 4096


@dataclass(frozen=True)
class EmbedReport:
    """What :func:`build_store` did."""

    path: Location
    header: StoreHeader
    computed_rows: int
    errors: int
    already_complete: bool
    seconds: float
    skipped: int = 0  # inputs an append found in the store already


class _ItemDataset(Dataset[tuple[torch.Tensor, int, str]]):
    """(tensor, row, error message) per row; failed rows get a zero tensor and the message."""

    def __init__(
        self,
        items: Sequence[EmbedItem],
        transform: Callable[[Any], torch.Tensor],
        shape: tuple[int, int, int],
    ) -> None:
        self.items, self.transform, self.shape = items, transform, shape

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, row: int) -> tuple[torch.Tensor, int, str]:
        try:
            return self.transform(read_image(self.items[row].path)), row, ""
        except DataError as exc:
            return torch.zeros(self.shape), row, str(exc)
        except Exception as exc:  # a transform failing on a pathological image
            return torch.zeros(self.shape), row, f"{self.items[row].path}: {exc}"


def encode_batch(run: Run, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's forward pass as embed and query run it: no autograd, fp16 autocast on CUDA.

    Args:
        images: (B, 3, H, W) float tensor from the run's transform, on any device.

    Returns:
        :func:`lscindex.model.encode`'s embeddings (B, embed_dim) float32 L2-normalised and
        outputs (B, out_dim) float32 (lsc: the latent; ce: logits), on the run's device.
    """
    amp_dtype = torch.float16 if run.device.type == "cuda" else None
    with torch.inference_mode():
        return encode(run.model, images.to(run.device, non_blocking=True), amp_dtype=amp_dtype)


def embed_batch(
    run: Run, images: torch.Tensor
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run the encoder on a batch and decode it.

    Args:
        images: (B, 3, H, W) float tensor from the run's transform.

    Returns:
        embeddings (B, dim) float32 L2-normalised, predicted class (B,) int64, its score (B,)
        float32 (cosine for lsc, softmax probability for ce), novel (B,) bool; for a plain
        timm encoder (no classes) -1, NaN and False.
    """
    embeddings, outputs = encode_batch(run, images)
    if not run.class_names:  # a plain timm encoder: nothing to decode
        n = len(embeddings)
        none = np.full(n, -1, np.int64), np.full(n, np.nan, np.float32), np.zeros(n, bool)
        return (embeddings.cpu().numpy(), *none)
    ids, scores, novel = top_classes(outputs, run.system, 1)
    return embeddings.cpu().numpy(), ids[:, 0], scores[:, 0], novel


def _inputs_sha256(items: Sequence[EmbedItem]) -> str:
    digest = hashlib.sha256()
    for item in items:
        digest.update(f"{item.id}\t{item.path}\t{item.label}\n".encode())
    return digest.hexdigest()


def build_store(
    run: str | os.PathLike[str] | Run | FeatureSpec,
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    dtype: str = "float16",
    batch_size: int = 256,
    workers: int = 2,
    device: str = "auto",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    overwrite: bool = False,
    append: bool = False,
    split: str = "all",
    progress: Callable[[int, int, float], None] | None = None,
) -> EmbedReport:
    """Embed every input image with a run's encoder into a zarr (or ``.parquet``) store.

    Resumable: the same call after an interruption computes only the unfinished chunks; a
    finished store is left untouched unless ``overwrite``. Under torchrun each rank embeds a
    disjoint set of chunks of the one store.

    Nothing but an lscindex store is ever replaced or deleted: anything else at ``out`` (a file,
    a folder of images, another zarr) is refused, ``overwrite`` or not, and so is an ``out``
    that is, holds or lies inside one of the ``inputs``. One writer at a time: ``<out>.lock``
    beside the store is held while it is written (by rank 0 under torchrun).

    Args:
        run: run directory (or an opened :class:`Run`), or a plain timm encoder
            (:func:`lscindex.features.create_spec`): its pooled features are stored, with no
            class prediction, and the store records its spec instead of a run.
        inputs: image files, folders (recursive; ImageFolder labels) and manifests.
        out: ``*.zarr`` folder or ``*.parquet`` file.
        dtype: ``float16`` (default, half the bytes) or ``float32``.
        chunk_rows: at most this many rows per chunk (the resume unit); the rows are spread
            evenly over the chunks, so the last chunk is nearly full (zarr stores it whole).
        append: add the inputs the zarr store at ``out`` does not hold yet (by id; an id it
            holds for the same file is skipped, for another file refused) as rows after its
            own, keeping its dtype and chunk size; resumable like a new store. A missing
            ``out`` is created.
        split: ``"train"`` or ``"val"``: only that split's rows of parquet shard sources
            (every input must be one); ``"all"`` (default): every row.
        progress: called as ``progress(rows_done, rows_to_do, images_per_s)``.

    Returns:
        :class:`EmbedReport`.

    Raises:
        DataError: missing inputs. StoreError: ``out`` holds a store of another run or other
        inputs, holds something that is not a store, overlaps the inputs, or another process
        is writing it. RunError: bad run directory. Preempted: SIGTERM or SIGUSR1 came (a
        scheduler's warning); the chunk in flight was finished and written, and the same call
        writes the rest.

    Example:
        >>> build_store("runs/glyphs", ["data/glyphs/val"], "emb.zarr")  # doctest: +SKIP
    """
    started = time.perf_counter()
    _check_options(dtype, chunk_rows, batch_size)
    if append and overwrite:
        raise StoreError("append adds rows to the store, overwrite replaces it: pass one of them")
    here = ranks()
    final = as_location(out, "store")
    if isinstance(final, Path):
        _check_out_is_no_input(final, inputs)
    opened = _open_encoder(run, str(select_device(device, here.local_rank)))
    with _writing(opened, final, here) as stop:
        items = resolve_inputs(inputs, opened.class_keys, opened.class_names, split=split)
        existing = _existing_store(final) if append else None
        if existing is not None:
            return _append(
                opened, final, items, existing, batch_size, workers, progress, started, stop
            )
        planned = _plan_header(opened, items, dtype=dtype, chunk_rows=chunk_rows)
        return _embed(
            opened, final, items, planned, overwrite, batch_size, workers, progress, started, stop
        )


@contextmanager
def _writing(run: Run, final: Location, here: Ranks) -> Iterator[StopRequest]:
    """The process group, rank 0's lock on ``final`` and the stop request of a writing job.

    The ranks only meet at barriers, which gloo runs on the CPU whatever the model's device.
    Only rank 0 takes the lock: it alone creates, swaps and records the store. If it is
    refused, the error ends the job and torchrun stops the ranks waiting at the barrier.
    """
    group = process_group(run.device, backend="gloo")
    with group, _rank0_lock(final, here), stop_requests() as stop:
        yield stop


def _embed(
    run: Run,
    final: Location,
    items: list[EmbedItem],
    planned: StoreHeader,
    overwrite: bool,
    batch_size: int,
    workers: int,
    progress: Callable[[int, int, float], None] | None,
    started: float,
    stop: StopRequest,
) -> EmbedReport:
    """Write (or resume, or overwrite) the store of ``items`` at ``final``; see build_store."""
    here = ranks()
    # --overwrite builds the new store beside the old one and swaps them only when it is
    # complete, so an interrupted or failed overwrite leaves the existing store intact. An
    # object store cannot swap folders: there the old store is replaced in place (an
    # interrupted overwrite is resumed by the same command; the old store is gone).
    replace = overwrite and _existing_store(final) is not None
    scratch = replace and isinstance(final, Path)
    if here.world > 1:
        dist.barrier()  # every rank has looked at ``final`` before rank 0 writes there
    path = _scratch_path(final) if scratch and isinstance(final, Path) else final
    writer = _open_or_resume(path, planned, replace=replace, here=here)
    if writer.header.complete:
        swapped = scratch and here.rank == 0 and _swap_finished(run, writer, final)
        return EmbedReport(final, writer.header, 0, 0, not swapped, time.perf_counter() - started)
    mine = [c for c in writer.pending_chunks() if c % here.world == here.rank]
    batches = _plan_batches(writer.header, mine, batch_size)
    done, errors = _write_rows(run, items, writer, batches, workers, progress, stop=stop)
    header = _publish(run, writer, final, here)
    return EmbedReport(final, header, done, errors, False, time.perf_counter() - started)


def _open_encoder(run: str | os.PathLike[str] | Run | FeatureSpec, device: str) -> Run:
    """An opened run, or the run of a plain timm encoder's spec, on ``device``."""
    if isinstance(run, Run):
        return run
    if isinstance(run, FeatureSpec):
        return open_features(run, device=device)
    return open_run(run, device=device)


def _append(
    run: Run,
    final: Location,
    items: list[EmbedItem],
    existing: StoreHeader,
    batch_size: int,
    workers: int,
    progress: Callable[[int, int, float], None] | None,
    started: float,
    stop: StopRequest,
) -> EmbedReport:
    """Add the items the store at ``final`` lacks as rows after its own (see ``append``)."""
    here = ranks()
    _check_appendable(run, final, existing)
    fresh, skipped = new_items(final, existing, items)
    if not fresh and existing.complete:
        seconds = time.perf_counter() - started
        return EmbedReport(final, existing, 0, 0, True, seconds, skipped=skipped)
    fresh_sha256 = _inputs_sha256(fresh)
    if existing.complete:
        header = append_header(existing, len(fresh), fresh_sha256)
        writer = StoreWriter.begin_append(final, header) if here.rank == 0 else None
    else:
        check_resumed(final, existing, len(fresh), fresh_sha256)
        writer = StoreWriter.resume(final) if here.rank == 0 else None
    if here.world > 1:
        dist.barrier()
    writer = writer if writer is not None else StoreWriter.resume(final)
    first = writer.header.count - len(fresh)
    mine = [c for c in writer.pending_chunks() if c % here.world == here.rank]
    batches = _plan_batches(writer.header, mine, batch_size, first_row=first)
    rows = AppendedRows(first, fresh)
    done, errors = _write_rows(
        run, rows, writer, batches, workers, progress, stop=stop, first_row=first
    )
    header = _publish(run, writer, final, here)
    return EmbedReport(
        final, header, done, errors, False, time.perf_counter() - started, skipped=skipped
    )


def _check_appendable(run: Run, final: Location, existing: StoreHeader) -> None:
    """Refuse to append to a parquet store, another run's store or an unfinished new store."""
    if final.suffix.lower() == ".parquet":
        raise StoreError(
            f"cannot append to {final}: a parquet store is one file, written whole; embed into "
            f"a .zarr store to add rows later"
        )
    if existing.run_fingerprint != run.fingerprint:
        raise StoreError(
            f"store {final} was embedded by run {existing.run} (fingerprint "
            f"{existing.run_fingerprint}), not by {run.path} ({run.fingerprint}); append to it "
            f"with --run {existing.run}, or embed into another store"
        )
    if not existing.complete and existing.appending_from is None:
        raise StoreError(
            f"store {final} is unfinished ({existing.count:,} rows planned); run the embed "
            f"command that started it again to complete it, then append"
        )


def _check_options(dtype: str, chunk_rows: int, batch_size: int) -> None:
    if dtype not in ("float16", "float32"):
        raise StoreError(f"dtype must be float16 or float32, got {dtype!r}")
    if chunk_rows < 1 or batch_size < 1:
        raise StoreError(f"chunk_rows and batch_size must be >= 1, got {chunk_rows}, {batch_size}")


def _swap_finished(opened: Run, writer: StoreWriter, final: Location) -> bool:
    """An --overwrite interrupted just before its swap: swap in its finished store now."""
    _swap_in(writer.path, final)
    record_store(opened.path, final, store_id=writer.header.store_id, count=writer.header.count)
    return True


def _swap_in(new: Location, final: Location) -> None:
    """Publish the finished store ``new`` (an --overwrite's scratch) at ``final`` (local only:
    remote stores are overwritten in place)."""
    if not isinstance(new, Path) or not isinstance(final, Path):
        raise StoreError(f"cannot swap {new} into {final}: only local folders are swapped")
    swap_dir(new, final)


def _scratch_path(final: Path) -> Path:
    """Where an --overwrite builds the new store before swapping it in (``.emb.overwrite.zarr``).

    Hidden and derived from ``final``, so the lock on ``final`` covers it and no store a user
    names can be taken for it.
    """
    return final.with_name(f".{final.stem}.overwrite{final.suffix}")


def _rank0_lock(final: Location, here: Ranks) -> AbstractContextManager[Any]:
    return location_lock(final, "store") if here.rank == 0 else nullcontext()


def _written_paths(final: Path) -> Iterator[Path]:
    """Every path that embedding into ``final`` may create, replace or delete."""
    for store in (final, _scratch_path(final)):
        yield store
        if store.suffix.lower() == ".parquet":
            yield store.with_name(store.name + ".parts")
    yield final.with_name(final.name + LOCK_SUFFIX)


def _check_out_is_no_input(final: Path, inputs: Sequence[str | os.PathLike[str]]) -> None:
    """Refuse an ``out`` that is, contains or lies inside an input, before anything is written.

    Raises:
        StoreError: naming the input and asking for another --out.
    """
    sources = [(raw, Path(os.path.realpath(raw))) for raw in inputs]
    for written in _written_paths(final):
        target = Path(os.path.realpath(written))
        for raw, source in sources:
            if target == source:
                relation = "is the input"
            elif source in target.parents:
                relation = "is inside the input folder"
            elif target in source.parents:
                relation = "contains the input"
            else:
                continue
            what = f"--out {final}" if written == final else f"--out {final} (via {written})"
            raise StoreError(
                f"{what} {relation} {raw}; embed never writes where its inputs are, choose "
                f"another --out"
            )


def _existing_store(path: Location) -> StoreHeader | None:
    """The header of the lscindex store at ``path``, finished or not; None when nothing is there.

    Raises:
        StoreError: something else is at ``path`` (a file, a folder of images, another zarr, an
            unreadable store): lscindex replaces and deletes only its own stores.
    """
    if not store_exists(path) and not path.is_symlink():
        return None
    try:
        return read_header(path, allow_incomplete=True)
    except Exception as exc:  # whatever fails to read as a store is not one of ours
        raise StoreError(
            f"{path} exists and is not an lscindex store, so embed will neither write into nor "
            f"replace it; remove it yourself or choose another --out"
        ) from exc


def _plan_header(
    run: Run, items: Sequence[EmbedItem], *, dtype: str, chunk_rows: int
) -> StoreHeader:
    """The header of a new store of ``items`` (rows spread evenly over the chunks)."""
    return StoreHeader(
        format_version=STORE_FORMAT_VERSION,
        store_id=new_store_id(),
        count=len(items),
        dim=run.model.embed_dim,
        dtype=dtype,
        chunk_rows=balanced_chunk_rows(len(items), chunk_rows),
        system=run.system.to_dict() if run.system else None,
        run=str(run.path),
        run_fingerprint=run.fingerprint,
        inputs_sha256=_inputs_sha256(items),
        complete=False,
        encoder=run.config.get("features"),
        checksums=True,
    )


def _open_or_resume(
    out: Location, header: StoreHeader, *, replace: bool, here: Ranks
) -> StoreWriter:
    """Rank 0 creates, resumes or checks the store (see :func:`_open_writer`); the other ranks
    then resume the store rank 0 opened."""
    writer = _open_writer(out, header, replace=replace) if here.rank == 0 else None
    if here.world > 1:
        dist.barrier()
    return writer if writer is not None else StoreWriter.resume(out)


def _plan_batches(
    header: StoreHeader, chunks: Sequence[int], batch_size: int, *, first_row: int = 0
) -> list[list[int]]:
    """Row batches inside each chunk, so every resume recomputes identical batches; rows below
    ``first_row`` (an append's old rows) are in the store already and left out."""
    batches: list[list[int]] = []
    for chunk in chunks:
        start, stop = header.chunk_range(chunk)
        start = max(start, first_row)
        batches.extend(
            list(range(b, min(b + batch_size, stop))) for b in range(start, stop, batch_size)
        )
    return batches


class _Batch(NamedTuple):
    """What :func:`embed_batch` gave for some rows, and why any of them failed ("" if not)."""

    rows: np.ndarray
    embeddings: np.ndarray
    pred: np.ndarray
    score: np.ndarray
    novel: np.ndarray
    errors: list[str]


def _write_rows(
    run: Run,
    items: Sequence[EmbedItem],
    writer: StoreWriter,
    batches: list[list[int]],
    workers: int,
    progress: Callable[[int, int, float], None] | None,
    *,
    stop: StopRequest,
    first_row: int = 0,
) -> tuple[int, int]:
    """Embed the planned batches; write each chunk once all its rows from ``first_row`` are in.

    Returns:
        (rows computed, rows whose image failed).

    Raises:
        Preempted: a stop signal came; the chunk being computed was finished and written first.
    """
    c, h, w = run.config["data_config"]["input_size"]
    loader: DataLoader[Any] = DataLoader(
        _ItemDataset(items, run.transform, (c, h, w)),
        batch_sampler=batches,
        num_workers=workers,
        pin_memory=run.device.type == "cuda",
        worker_init_fn=ignore_stop_signals,
    )
    header = writer.header
    todo = sum(len(b) for b in batches)
    done = errors = 0
    pending: dict[int, list[_Batch]] = {}
    tick = time.perf_counter()
    for images, rows, messages in loader:
        batch = _Batch(rows.numpy(), *embed_batch(run, images), list(messages))
        errors += sum(1 for m in batch.errors if m)
        chunk = int(rows[0]) // header.chunk_rows
        parts = pending.setdefault(chunk, [])
        parts.append(batch)
        start, stop_row = header.chunk_range(chunk)
        if sum(len(p.rows) for p in parts) == stop_row - max(start, first_row):
            _write_chunk(writer, chunk, pending.pop(chunk), items, run.class_names)
        done += len(batch.rows)
        if progress is not None:
            progress(done, todo, done / max(time.perf_counter() - tick, 1e-9))
        if stop and not pending and done < todo:  # no chunk in flight: stop before the next
            raise _preempted(writer, stop)
    return done, errors


def _preempted(writer: StoreWriter, stop: StopRequest) -> Preempted:
    left = len(writer.pending_chunks())
    return Preempted(
        f"stopped by {stop.name} with {writer.header.n_chunks - left:,} of "
        f"{writer.header.n_chunks:,} chunks of {writer.path} written; run the same command to "
        f"write the other {left:,}",
        signal=stop.name,
    )


def _write_chunk(
    writer: StoreWriter,
    chunk: int,
    parts: list[_Batch],
    items: Sequence[EmbedItem],
    class_names: Sequence[str],
) -> None:
    """Write one chunk's embeddings (NaN where the image failed) and its metadata."""
    rows = np.concatenate([p.rows for p in parts])
    errors = [e for p in parts for e in p.errors]
    embeddings = np.concatenate([p.embeddings for p in parts])
    embeddings[np.array([bool(e) for e in errors], dtype=bool)] = np.nan
    chosen = [items[int(r)] for r in rows]
    table = metadata_table(
        rows,
        ids=[i.id for i in chosen],
        paths=[i.path for i in chosen],
        labels=[i.label for i in chosen],
        label_names=[i.label_name for i in chosen],
        pred=np.concatenate([p.pred for p in parts]),
        score=np.concatenate([p.score for p in parts]),
        novel=np.concatenate([p.novel for p in parts]),
        errors=errors,
        class_names=class_names,
    )
    writer.write_chunk(chunk, embeddings, table)


def _publish(run: Run, writer: StoreWriter, final: Location, here: Ranks) -> StoreHeader:
    """Once every rank is done: rank 0 marks the store complete, swaps an --overwrite's new
    store in at ``final`` and records it in the run; every rank returns the final header."""
    if here.world > 1:
        dist.barrier()
    header = writer.header
    if here.rank == 0:
        header = writer.finalize()
        if writer.path != final:
            _swap_in(writer.path, final)
        if run.class_names:  # a plain timm encoder has no run directory to record it in
            record_store(run.path, final, store_id=header.store_id, count=header.count)
    if here.world > 1:
        dist.barrier()
        header = read_header(final)
    return header


def _open_writer(out: Location, header: StoreHeader, *, replace: bool) -> StoreWriter:
    """A writer for a new store, or for the unfinished store already at ``out``.

    ``replace``: an --overwrite is in progress; ``out`` is its local temporary (or, on an
    object store, the store itself, a finished one being replaced): resume it when it matches,
    recreate it otherwise. Only an lscindex store is ever recreated (see
    :func:`_existing_store`).
    """
    existing = _existing_store(out)
    if existing is None or (replace and existing.complete and isinstance(out, RemotePath)):
        return StoreWriter.create(out, header)
    differences = [
        name
        for name in ("run_fingerprint", "inputs_sha256", "dtype", "dim", "chunk_rows", "count")
        if getattr(existing, name) != getattr(header, name)
    ]
    if existing.complete and not differences:  # done before, with these very settings
        return StoreWriter(out, existing)
    if replace and differences:
        return StoreWriter.create(out, header)
    if existing.complete or differences:
        what = ", ".join(differences) or "nothing"
        raise StoreError(
            f"{out} holds a store of another run or other inputs (differs in {what}); pass "
            f"--overwrite to replace it or choose another --out"
        )
    return StoreWriter(out, existing)
