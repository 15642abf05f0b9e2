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
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from lscindex.checkpoint import Run, open_run
from lscindex.data import IMAGE_EXTENSIONS, list_images
from lscindex.errors import DataError, StoreError
from lscindex.store import (
    METADATA_SCHEMA,
    StoreHeader,
    StoreWriter,
    balanced_chunk_rows,
    new_store_id,
    read_header,
    store_exists,
)

__all__ = [
    "EmbedItem",
    "EmbedReport",
    "build_store",
    "embed_batch",
    "find_store",
    "read_image",
    "resolve_inputs",
]

DEFAULT_CHUNK_ROWS = 4096
MIN_IMAGE_SIDE = 4


@dataclass(frozen=True)
class EmbedItem:
    """One input: a stable id, its file, and its label if the layout or manifest gives one."""

    id: str
    path: str
    label: int = -1
    label_name: str | None = None


@dataclass(frozen=True)
class EmbedReport:
    """What :func:`build_store` did."""

    path: Path
    header: StoreHeader
    computed_rows: int
    errors: int
    already_complete: bool
    seconds: float


def read_image(path: str) -> Any:
    """Open an image as RGB, or raise DataError with a one-line reason (never hangs).

    Rejects: missing or non-regular files (FIFOs would block), empty files, undecodable or
    truncated data, images with a side under 4 px, and images over Pillow's pixel limit.
    """
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        reason = "does not exist" if not os.path.lexists(path) else "is not a regular file"
        raise DataError(f"{path} {reason}")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if min(img.size) < MIN_IMAGE_SIDE:
                    raise DataError(
                        f"{path} is {img.size[0]}x{img.size[1]} px, below the "
                        f"{MIN_IMAGE_SIDE} px minimum side"
                    )
                img.load()
                return img.convert("RGB")
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path} is over Pillow's pixel limit: {exc}") from None
    except UnidentifiedImageError:
        raise DataError(f"{path} is not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path} cannot be decoded: {exc}") from None


def resolve_inputs(
    inputs: Sequence[str | os.PathLike[str]],
    class_keys: Sequence[str],
    class_names: Sequence[str] = (),
) -> list[EmbedItem]:
    """Expand folders (recursive), manifests and files into items, in a stable order.

    Labels come from the parent folder name of an image when it names one of the run's classes
    (ImageFolder layout, ``train/`` and ``val/`` included), or from a manifest's ``label`` column.

    Raises:
        DataError: a path that does not exist, or no inputs at all.
    """
    lookup = {str(k): i for i, k in enumerate(class_keys)}
    lookup.update({str(n): i for i, n in enumerate(class_names) if str(n) not in lookup})
    names = list(class_names) or list(class_keys)

    def labelled(item_id: str, path: Path, key: str | None) -> EmbedItem:
        label = lookup.get(key, -1) if key is not None else -1
        return EmbedItem(item_id, str(path), label, names[label] if label >= 0 else None)

    items: list[EmbedItem] = []
    for raw in inputs:
        source = Path(raw)
        if not source.exists():
            raise DataError(
                f"input {source} does not exist; pass image files, folders or manifests"
            )
        if source.is_dir():
            for path in list_images(source):
                items.append(labelled(str(path.relative_to(source)), path, path.parent.name))
        elif source.suffix.lower() in (".parquet", ".csv"):
            items.extend(_manifest_items(source, lookup, names))
        else:
            items.append(labelled(source.name, source, source.parent.name))
    if not items:
        raise DataError(
            f"no images found in {', '.join(map(str, inputs))} (looked for "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return items


def _manifest_items(path: Path, lookup: dict[str, int], names: list[str]) -> list[EmbedItem]:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    table = pq.read_table(path) if path.suffix.lower() == ".parquet" else pacsv.read_csv(path)
    if "path" not in table.column_names:
        raise DataError(f"manifest {path} lacks a 'path' column (has {table.column_names})")
    paths = [str(p) for p in table.column("path").to_pylist()]
    ids = [str(i) for i in table.column("id").to_pylist()] if "id" in table.column_names else paths
    labels = (
        table.column("label").to_pylist() if "label" in table.column_names else [None] * len(paths)
    )
    items = []
    for item_id, p, raw in zip(ids, paths, labels, strict=True):
        full = p if os.path.isabs(p) else str(path.parent / p)
        if isinstance(raw, int):
            label = raw if 0 <= raw < len(names) else -1
        else:
            label = lookup.get(str(raw), -1) if raw is not None else -1
        items.append(EmbedItem(item_id, full, label, names[label] if label >= 0 else None))
    return items


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


def embed_batch(
    run: Run, images: torch.Tensor
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run the encoder on a batch and decode it.

    Args:
        images: (B, 3, H, W) float tensor from the run's transform.

    Returns:
        embeddings (B, dim) float32 L2-normalised, predicted class (B,) int64, its score (B,)
        float32 (cosine for lsc, softmax probability for ce), novel (B,) bool.
    """
    model = run.model
    with torch.inference_mode():
        x = images.to(run.device, non_blocking=True)
        with torch.autocast(
            run.device.type, dtype=torch.float16, enabled=run.device.type == "cuda"
        ):
            features = model.features(x)
            out = model.head(features)
        if model.config.head == "lsc":
            emb = F.normalize(out.float(), dim=1)
            decoded = run.system.decode(emb, k=1)
            return (emb.cpu().numpy(), decoded.ids[:, 0], decoded.scores[:, 0], decoded.novel)
        emb = F.normalize(features.float(), dim=1)
        prob, pred = out.float().softmax(dim=1).max(dim=1)
        novel = np.zeros(len(x), dtype=bool)
        return emb.cpu().numpy(), pred.cpu().numpy(), prob.cpu().numpy(), novel


def _inputs_sha256(items: Sequence[EmbedItem]) -> str:
    digest = hashlib.sha256()
    for item in items:
        digest.update(f"{item.id}\t{item.path}\t{item.label}\n".encode())
    return digest.hexdigest()


def build_store(
    run: str | os.PathLike[str] | Run,
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    dtype: str = "float16",
    batch_size: int = 256,
    workers: int = 2,
    device: str = "auto",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    overwrite: bool = False,
    progress: Callable[[int, int, float], None] | None = None,
) -> EmbedReport:
    """Embed every input image with a run's encoder into a zarr (or ``.parquet``) store.

    Resumable: the same call after an interruption computes only the unfinished chunks; a
    finished store is left untouched unless ``overwrite``. Under torchrun each rank embeds a
    disjoint set of chunks of the one store.

    Args:
        run: run directory (or an opened :class:`Run`).
        inputs: image files, folders (recursive; ImageFolder labels) and manifests.
        out: ``*.zarr`` folder or ``*.parquet`` file.
        dtype: ``float16`` (default, half the bytes) or ``float32``.
        chunk_rows: at most this many rows per chunk (the resume unit); the rows are spread
            evenly over the chunks, so the last chunk is nearly full (zarr stores it whole).
        progress: called as ``progress(rows_done, rows_to_do, images_per_s)``.

    Returns:
        :class:`EmbedReport`.

    Raises:
        DataError: missing inputs. StoreError: ``out`` holds a store of another run or other
        inputs. RunError: bad run directory.

    Example:
        >>> build_store("runs/glyphs", ["data/glyphs/val"], "emb.zarr")  # doctest: +SKIP
    """
    started = time.perf_counter()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    if dtype not in ("float16", "float32"):
        raise StoreError(f"dtype must be float16 or float32, got {dtype!r}")
    if chunk_rows < 1 or batch_size < 1:
        raise StoreError(f"chunk_rows and batch_size must be >= 1, got {chunk_rows}, {batch_size}")
    if isinstance(run, Run):
        opened = run
    else:
        local = os.environ.get("LOCAL_RANK", "0")
        opened = open_run(
            run,
            device=f"cuda:{local}" if device == "auto" and torch.cuda.is_available() else device,
        )
    out = Path(out)
    items = resolve_inputs(inputs, opened.class_keys, opened.class_names)
    dim = opened.model.embed_dim
    header = StoreHeader(
        format_version=1,
        store_id=new_store_id(),
        count=len(items),
        dim=dim,
        dtype=dtype,
        chunk_rows=balanced_chunk_rows(len(items), chunk_rows),
        system=opened.system.to_dict() if opened.system else None,
        run=str(opened.path),
        run_fingerprint=opened.fingerprint,
        inputs_sha256=_inputs_sha256(items),
        complete=False,
    )

    # -- create, resume, or leave alone ---------------------------------------------------------
    # --overwrite builds the new store beside the old one and swaps them only when it is
    # complete, so an interrupted or failed overwrite leaves the existing store intact.
    final = out
    if overwrite and store_exists(out):
        out = out.with_name(f"{out.stem}.new{out.suffix}")
    if rank == 0:
        writer = _open_writer(out, header, scratch=out != final)
    if world > 1:
        dist.barrier()
    if rank != 0:
        writer = StoreWriter.resume(out)
    if writer.header.complete:
        if out != final and rank == 0:  # an overwrite interrupted just before its swap
            _swap_in(out, final)
            _record_store(opened.path, final, writer.header)
            return EmbedReport(final, writer.header, 0, 0, False, time.perf_counter() - started)
        return EmbedReport(final, writer.header, 0, 0, True, time.perf_counter() - started)
    header = writer.header
    mine = [c for c in writer.pending_chunks() if c % world == rank]

    # -- batches inside chunks, so every resume recomputes identical batches --------------------
    batches: list[list[int]] = []
    for chunk in mine:
        start, stop = header.chunk_range(chunk)
        batches.extend(
            list(range(b, min(b + batch_size, stop))) for b in range(start, stop, batch_size)
        )
    c, h, w = opened.config["data_config"]["input_size"]
    loader: DataLoader[Any] = DataLoader(
        _ItemDataset(items, opened.transform, (c, h, w)),
        batch_sampler=batches,
        num_workers=workers,
        pin_memory=opened.device.type == "cuda",
    )
    names = opened.class_names
    todo = sum(len(b) for b in batches)
    done = errors = 0
    buffers: dict[int, list[tuple[np.ndarray, list[dict[str, Any]]]]] = {}
    tick = time.perf_counter()
    for images, rows, messages in loader:
        emb, pred, score, novel = embed_batch(opened, images)
        records = []
        for j, row in enumerate(rows.tolist()):
            item, message = items[row], messages[j]
            ok = not message
            if not ok:
                emb[j] = np.nan
                errors += 1
            records.append(
                {
                    "row": row,
                    "id": item.id,
                    "path": item.path,
                    "label": item.label,
                    "label_name": item.label_name,
                    "pred": int(pred[j]) if ok else -1,
                    "pred_name": names[int(pred[j])] if ok else None,
                    "score": float(score[j]) if ok else float("nan"),
                    "novel": bool(novel[j]) if ok else False,
                    "status": "ok" if ok else "error",
                    "error": message or None,
                }
            )
        chunk = int(rows[0]) // header.chunk_rows
        buffers.setdefault(chunk, []).append((emb, records))
        start, stop = header.chunk_range(chunk)
        if sum(len(r) for _, r in buffers[chunk]) == stop - start:
            parts = buffers.pop(chunk)
            table = pa.Table.from_pylist([r for _, rs in parts for r in rs], schema=METADATA_SCHEMA)
            writer.write_chunk(chunk, np.concatenate([e for e, _ in parts]), table)
        done += len(records)
        if progress is not None:
            progress(done, todo, done / max(time.perf_counter() - tick, 1e-9))
    if world > 1:
        dist.barrier()
    if rank == 0:
        header = writer.finalize()
        if out != final:
            _swap_in(out, final)
        _record_store(opened.path, final, header)
    if world > 1:
        dist.barrier()
        header = read_header(final)
    return EmbedReport(final, header, done, errors, False, time.perf_counter() - started)


def _swap_in(new: Path, final: Path) -> None:
    """Replace ``final`` by the finished store ``new`` (old one renamed aside, then removed)."""
    import shutil

    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old) if old.is_dir() else old.unlink()


def _record_store(run_dir: Path, out: Path, header: StoreHeader) -> None:
    """Note the finished store in the run's stores.json, so query can find it with no flags."""
    import json

    from lscindex._io import atomic_write_json

    listing = run_dir / "stores.json"
    try:
        stores = json.loads(listing.read_text()) if listing.is_file() else []
    except ValueError:
        stores = []
    entry = {"path": str(out.resolve()), "store_id": header.store_id, "count": header.count}
    stores = [s for s in stores if s.get("path") != entry["path"]] + [entry]
    atomic_write_json(listing, stores)


def find_store(run_dir: str | os.PathLike[str]) -> Path | None:
    """The newest store recorded for a run that still exists (None when there is none)."""
    import json

    listing = Path(run_dir) / "stores.json"
    if not listing.is_file():
        return None
    for entry in reversed(json.loads(listing.read_text())):
        if store_exists(entry["path"]):
            return Path(entry["path"])
    return None


def _open_writer(out: Path, header: StoreHeader, *, scratch: bool) -> StoreWriter:
    """A writer for a new store, or for the unfinished store already at ``out``.

    ``scratch``: ``out`` is our own temporary (an --overwrite in progress): resume it when it
    matches, recreate it otherwise.
    """
    if not store_exists(out):
        if out.exists() and not out.is_dir():
            raise StoreError(f"{out} exists and is not a store; choose another --out")
        return StoreWriter.create(out, header)
    if scratch and not _is_our_store(out):
        return StoreWriter.create(out, header)
    if not _is_our_store(out):
        raise StoreError(f"{out} exists and is not an lscindex store; choose another --out")
    existing = read_header(out, allow_incomplete=True)
    if (
        existing.complete
        and existing.run_fingerprint == header.run_fingerprint
        and (existing.inputs_sha256 == header.inputs_sha256)
    ):
        return StoreWriter(out, existing)
    differences = [
        name
        for name in ("run_fingerprint", "inputs_sha256", "dtype", "dim", "chunk_rows", "count")
        if getattr(existing, name) != getattr(header, name)
    ]
    if scratch and differences:
        return StoreWriter.create(out, header)
    if existing.complete or differences:
        what = ", ".join(differences) or "nothing"
        raise StoreError(
            f"{out} holds a store of another run or other inputs (differs in {what}); pass "
            f"--overwrite to replace it or choose another --out"
        )
    return StoreWriter(out, existing)


def _is_our_store(out: Path) -> bool:
    try:
        read_header(out, allow_incomplete=True)
    except StoreError:
        return False
    return True
