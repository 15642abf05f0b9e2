"""The training loop: LSC (fixed vector-system targets) or a cross-entropy baseline, on timm.

Read it top to bottom: config -> data -> model/loss/optimizer/scheduler -> resume -> epochs of
(train steps, checkpoints, validation, metrics). The same loop runs single-process or under
``torchrun`` (DDP; gloo on CPU, NCCL on GPU): nothing class-sized is sharded, so a checkpoint
resumes on any world size.

Determinism: model init, shuffling, augmentation and dropout draw from RNGs seeded per epoch from
``seed``; a checkpoint stores the RNG states, so with ``workers=0`` on CPU a run killed at any point
and resumed ends with exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

from lscindex import checkpoint as ckpt
from lscindex.assignment import match_classes
from lscindex.data import DatasetSplits, ImageDataset, collate_skipping, load_dataset
from lscindex.errors import ConfigError, RunError
from lscindex.losses import create_loss
from lscindex.model import (
    Encoder,
    ModelConfig,
    check_backbone,
    create_eval_transform,
    create_model,
)
from lscindex.systems import VectorSystem

__all__ = ["EpochMetrics", "TrainCallbacks", "TrainConfig", "TrainResult", "fit"]

# Classes whose embedding sums are held at once while matching (28 MB at 108 dims).
_MEAN_BLOCK = 1 << 16
# Keys of TrainConfig that define the model; --resume refuses to change them. The value a run
# made before a key existed is what that run did (runs before assignments used the codec).
ARCHITECTURE_KEYS = ("model", "head", "system", "dim", "system_seed", "img_size", "assignment")
_BEFORE_KEY_EXISTED = {"assignment": "codec"}


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything a training run needs; saved as ``train`` in the run's config.json.

    Flag names follow timm's train.py where they overlap. ``batch_size`` is per process.
    """

    data: str
    out: str = "runs/default"
    model: str = "resnet18"
    pretrained: bool = False
    head: Literal["lsc", "ce"] = "lsc"
    system: str = "v21"
    dim: int | None = None
    system_seed: int = 0
    assignment: Literal["codec", "data"] = "data"
    rematch_per_epoch: int = 1
    rematch_until: float = 0.5
    rematch_margin: float = 0.0
    assign_samples: int = 8
    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    opt: str = "adamw"
    sched: str = "cosine"
    warmup_epochs: int = 1
    weight_decay: float = 0.05
    img_size: int = 32
    augment: bool = True
    device: str = "auto"
    amp: bool = False
    workers: int = 2
    seed: int = 0
    val_fraction: float = 0.0
    checkpoint_every: int = 0
    max_steps: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "img_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.head not in ("lsc", "ce"):
            raise ConfigError(f"head must be 'lsc' or 'ce', got {self.head!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.workers < 0 or self.checkpoint_every < 0 or self.max_steps < 0:
            raise ConfigError("workers, checkpoint_every and max_steps must be >= 0")
        if self.assignment not in ("codec", "data"):
            raise ConfigError(f"assignment must be 'codec' or 'data', got {self.assignment!r}")
        if not 0.0 <= self.rematch_until <= 1.0:
            raise ConfigError(
                f"rematch_until is a share of the training steps in [0, 1], got "
                f"{self.rematch_until}; e.g. 0.5 re-matches during the first half"
            )
        if self.rematch_per_epoch < 0:
            raise ConfigError(
                f"rematch_per_epoch must be >= 0 (0: match once, before training), got "
                f"{self.rematch_per_epoch}"
            )
        if self.assign_samples < 0:
            raise ConfigError(
                f"assign_samples must be >= 0 (0: every training image), got {self.assign_samples}"
            )

    def rematches_at(self, global_step: int, steps_per_epoch: int) -> bool:
        """Whether the data assignment is re-matched after optimizer step ``global_step`` (1-based).

        ``rematch_per_epoch`` times per epoch, evenly spaced in steps, during the first
        ``rematch_until`` share of all steps, never at the last step: targets track the network
        while it changes fastest, then stay fixed so the run ends on the targets it trained on.
        """
        if self.head != "lsc" or self.assignment != "data" or self.rematch_per_epoch == 0:
            return False
        total = self.epochs * steps_per_epoch
        interval = max(1, steps_per_epoch // self.rematch_per_epoch)
        return (
            global_step % interval == 0
            and global_step <= self.rematch_until * total
            and global_step < total
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown TrainConfig key(s) {', '.join(map(repr, unknown))}")
        return cls(**data)


@dataclass(frozen=True)
class EpochMetrics:
    """One line of metrics.jsonl."""

    epoch: int
    train_loss: float
    val_loss: float | None
    val_top1: float | None
    val_top5: float | None
    img_per_s: float
    wall_s: float
    peak_mem_mb: float
    lr: float
    skipped_images: int
    world_size: int
    global_step: int
    reassigned: list[int] | None = None


@dataclass
class TrainResult:
    """What :func:`fit` did: the run directory, this call's epochs, and this process's rank."""

    run_dir: Path
    rank: int = 0
    metrics: list[EpochMetrics] = field(default_factory=list)
    model: Encoder | None = None


class TrainCallbacks:
    """Hooks for progress display; the library itself prints nothing. Only rank 0 calls them."""

    def on_start(
        self,
        *,
        epochs: int,
        steps_per_epoch: int,
        start_epoch: int,
        start_step: int,
        n_train: int,
        n_val: int,
        n_classes: int,
        dim: int,
        device: str,
    ) -> None:
        pass

    def on_step(self, *, epoch: int, step: int, loss: float, img_per_s: float) -> None:
        pass

    def on_epoch(self, metrics: EpochMetrics) -> None:
        pass

    def on_warning(self, message: str) -> None:
        pass


class EpochSampler(Sampler[int]):
    """Seeded per-epoch permutation, padded to the world size, sharded by rank, resumable.

    Yields the sample indices of ``rank``, skipping the first ``skip`` of them.
    """

    def __init__(
        self,
        n: int,
        *,
        seed: int,
        epoch: int,
        rank: int,
        world: int,
        skip: int = 0,
        shuffle: bool = True,
        pad: bool = True,
    ) -> None:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
        if pad and world > 1:
            order += order[: (-len(order)) % world]
        self.indices = order[rank::world][skip:]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def _select_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                "device 'cuda' requested but no CUDA device is available; use --device cpu"
            )
        return torch.device(f"cuda:{local_rank}") if name == "cuda" else torch.device(name)
    return torch.device("cpu")


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _transforms(model: Encoder, config: TrainConfig) -> tuple[Any, Any]:
    import timm.data

    data_cfg = model.data_config
    common = {
        "input_size": data_cfg["input_size"],
        "interpolation": data_cfg["interpolation"],
        "mean": data_cfg["mean"],
        "std": data_cfg["std"],
    }
    # Glyph-friendly augmentation: no flips (mirrored characters are other characters), mild
    # crops and no colour jitter; the eval transform resizes the whole image.
    train_tf = timm.data.create_transform(
        is_training=config.augment,
        no_aug=not config.augment,
        scale=(0.7, 1.0),
        ratio=(0.85, 1.18),
        hflip=0.0,
        color_jitter=0.0,
        **common,
    )
    return train_tf, create_eval_transform(data_cfg)


def _check_out_dir(out: Path, resume: bool) -> dict[str, Any] | None:
    """The saved config when resuming; refuses to write over anything else."""
    if resume:
        if not (out / ckpt.CONFIG).is_file():
            raise RunError(
                f"--resume given but {out} holds no run; drop --resume to start one there"
            )
        return ckpt.load_run_config(out)
    if (out / ckpt.CONFIG).is_file():
        raise RunError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out"
        )
    if out.exists() and any(out.iterdir()):
        raise RunError(f"{out} is not empty and is not an lscindex run; choose another --out")
    return None


def _architecture_changes(saved: dict[str, Any], config: TrainConfig, n_classes: int) -> list[str]:
    keys = [k for k in ARCHITECTURE_KEYS if k != "assignment" or config.head == "lsc"]
    before = {k: saved["train"].get(k, _BEFORE_KEY_EXISTED.get(k)) for k in keys}
    changes = [
        f"{key}: {before[key]!r} -> {getattr(config, key)!r}"
        for key in keys
        if before[key] != getattr(config, key)
    ]
    if saved["model"]["n_classes"] != n_classes:
        changes.append(f"n_classes: {saved['model']['n_classes']} -> {n_classes}")
    return changes


def _evaluate(
    model: torch.nn.Module,
    loader: DataLoader[Any],
    loss_fn: torch.nn.Module,
    system: VectorSystem | None,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    n_classes: int,
) -> tuple[float, float, float, int]:
    """Sums of (loss, top-1 hits, top-5 hits, count) over this rank's share of the val set."""
    model.eval()
    k = min(5, n_classes)
    totals = [0.0, 0.0, 0.0, 0]
    with torch.no_grad():
        for images, labels, _, _ in loader:
            if len(labels) == 0:
                continue
            images, labels = images.to(device), labels.to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = model(images)
            totals[0] += float(loss_fn(out, labels)) * len(labels)
            if system is not None:
                topk = torch.from_numpy(system.decode(out.float(), k=k).ids).to(device)
            else:
                topk = out.float().topk(k, dim=1).indices
            hits = topk == labels[:, None]
            totals[1] += float(hits[:, 0].sum())
            totals[2] += float(hits.any(dim=1).sum())
            totals[3] += len(labels)
    model.train()
    return totals[0], totals[1], totals[2], int(totals[3])


def _assignment_samples(
    samples: list[tuple[Any, int]], n_classes: int, per_class: int
) -> list[tuple[Any, int]]:
    """The first ``per_class`` training samples of each class (all of them for 0), by class."""
    if per_class == 0:
        return sorted(samples, key=lambda s: s[1])
    taken = np.zeros(n_classes, dtype=np.int64)
    chosen = []
    for sample in samples:
        if taken[sample[1]] < per_class:
            taken[sample[1]] += 1
            chosen.append(sample)
    return sorted(chosen, key=lambda s: s[1])


def _match_classes(
    model: Encoder,
    samples: list[tuple[Any, int]],
    transform: Any,
    system: VectorSystem,
    config: TrainConfig,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    world: int,
    rank: int,
) -> VectorSystem:
    """Re-match classes to targets from the current model's class means (see lscindex.assignment).

    The means come block by block (``_MEAN_BLOCK`` classes, 28 MB of sums at 108 dims): each
    rank embeds its share of the block's ``samples`` (eval transform, no augmentation) and the
    sums are all-reduced, so every rank matches the same means into the same table. Nothing of
    size n_classes x dim is ever held; during the training steps only the table is.
    """
    labels = np.fromiter((label for _, label in samples), dtype=np.int64, count=len(samples))
    was_training = model.training

    def class_means(class_ids: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(class_ids), _MEAN_BLOCK):
            block = class_ids[start : start + _MEAN_BLOCK]
            chosen = np.flatnonzero(np.isin(labels, block))
            sums = torch.zeros(len(block), system.dim, dtype=torch.float32, device=device)
            loader: DataLoader[Any] = DataLoader(
                ImageDataset([samples[i] for i in chosen], transform),
                batch_size=config.batch_size,
                num_workers=config.workers,
                sampler=EpochSampler(
                    len(chosen), seed=0, epoch=0, rank=rank, world=world, shuffle=False, pad=False
                ),
                collate_fn=collate_skipping,
                generator=torch.Generator().manual_seed(0),
            )
            model.eval()
            with torch.no_grad():
                for images, batch_labels, _, _ in loader:
                    if len(batch_labels) == 0:
                        continue
                    rows = torch.from_numpy(np.searchsorted(block, batch_labels.numpy()))
                    with torch.autocast(
                        device.type, dtype=amp_dtype, enabled=amp_dtype is not None
                    ):
                        out = model(images.to(device))
                    sums.index_add_(0, rows.to(device), out.float())
            model.train(was_training)
            if world > 1:
                dist.all_reduce(sums)
            yield block, sums.cpu().numpy()

    table = match_classes(
        system, class_means, current=system.assignment_table, margin=config.rematch_margin
    )
    return system.with_assignment(table)


def _all_sum(values: list[float], device: torch.device, world: int) -> list[float]:
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def fit(
    config: TrainConfig, *, resume: bool = False, callbacks: TrainCallbacks | None = None
) -> TrainResult:
    """Train (or resume) a run in ``config.out``.

    Args:
        config: the run's settings.
        resume: continue the run in ``config.out`` from its newest checkpoint; the architecture
            keys (model, head, system, dim, system_seed, img_size, class count) must match.
        callbacks: progress hooks (rank 0 only).

    Returns:
        :class:`TrainResult` with the metrics of every epoch run now.

    Raises:
        DataError: bad data folder/manifest. ConfigError: unknown model, too many classes for
        ``dim``, bad values. RunError: out dir holds another run, resume mismatch.

    Example:
        >>> fit(TrainConfig(data="data/glyphs", out="runs/glyphs", epochs=3))  # doctest: +SKIP
    """
    callbacks = callbacks or TrainCallbacks()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _select_device(config.device, local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        return _fit(
            config, resume, callbacks if rank == 0 else TrainCallbacks(), world, rank, device
        )
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _fit(
    config: TrainConfig,
    resume: bool,
    callbacks: TrainCallbacks,
    world: int,
    rank: int,
    device: torch.device,
) -> TrainResult:
    out = Path(config.out)
    check_backbone(config.model)
    # Only rank 0 judges (and later writes) the run directory: the other ranks would otherwise
    # race it and find its fresh config.json.
    if rank == 0:
        saved = _check_out_dir(out, resume)
    else:
        saved = ckpt.load_run_config(out) if resume else None

    # -- data ----------------------------------------------------------------------------------
    splits: DatasetSplits = load_dataset(
        config.data, val_fraction=config.val_fraction, seed=config.seed
    )
    n_classes = splits.n_classes
    system = None
    if config.head == "lsc":
        system = VectorSystem.create(
            config.system, n_classes, dim=config.dim, seed=config.system_seed
        )
    if saved is not None:
        changes = _architecture_changes(saved, config, n_classes)
        if changes:
            raise RunError(
                f"--resume would change the architecture of {out} ({'; '.join(changes)}); "
                f"resume with the original settings or train into another --out"
            )

    # -- model, loss, optimizer, schedule ------------------------------------------------------
    import timm.optim
    import timm.scheduler

    _seed_everything(config.seed)
    spec = None
    if system is not None:
        spec = system.to_dict()
        if config.assignment == "data":
            spec["assignment"] = "data"
    model_config = ModelConfig(
        backbone=config.model,
        head=config.head,
        n_classes=n_classes,
        system=spec,
        img_size=config.img_size,
    )
    model = create_model(model_config, pretrained=config.pretrained).to(device)
    train_tf, eval_tf = _transforms(model, config)
    loss_fn = create_loss(config.head, system)
    optimizer = timm.optim.create_optimizer_v2(
        model, opt=config.opt, lr=config.lr, weight_decay=config.weight_decay
    )
    train_shard = len(EpochSampler(len(splits.train), seed=0, epoch=0, rank=rank, world=world))
    steps_per_epoch = max(1, math.ceil(train_shard / config.batch_size))
    scheduler, _ = timm.scheduler.create_scheduler_v2(
        optimizer,
        sched=config.sched,
        num_epochs=config.epochs,
        warmup_epochs=config.warmup_epochs,
        warmup_lr=config.lr * 0.01,
        min_lr=config.lr * 0.01,
        step_on_epochs=False,
        updates_per_epoch=steps_per_epoch,
    )
    amp_dtype = None
    if config.amp:
        amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    # -- resume or start -----------------------------------------------------------------------
    start_epoch, start_step, global_step = 0, 0, 0
    state = ckpt.load_training_state(out) if resume else None
    if state is not None:
        model.load_state_dict(state.model)
        optimizer.load_state_dict(state.optimizer)
        start_epoch, start_step, global_step = state.epoch, state.step_in_epoch, state.global_step
    assign_samples: list[tuple[Any, int]] = []
    if system is not None and config.assignment == "data":
        assign_samples = _assignment_samples(splits.train, n_classes, config.assign_samples)
        if state is not None:
            if state.assignment is None:
                raise RunError(
                    f"the checkpoint of {out} holds no assignment table but its run uses a data "
                    f"assignment; the run is damaged, train it again into another --out"
                )
            system = system.with_assignment(state.assignment)
        else:
            # The first matching, from the untrained network: classes start on targets near
            # where the network already puts them.
            system = _match_classes(
                model, assign_samples, eval_tf, system, config, device, amp_dtype, world, rank
            )
        loss_fn = create_loss(config.head, system)
    if rank == 0 and saved is None:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write_json(out / ckpt.CLASSES, splits.class_names)
        if splits.keys != splits.class_names:
            ckpt.atomic_write_json(out / "class_keys.json", splits.keys)
        ckpt.atomic_write_json(
            out / ckpt.CONFIG,
            {
                "format_version": ckpt.FORMAT_VERSION,
                "model": model_config.to_dict(),
                "train": config.to_dict(),
                "data": {
                    "source": splits.source,
                    "n_train": len(splits.train),
                    "n_val": len(splits.val),
                    "n_classes": n_classes,
                },
                "data_config": {
                    k: list(v) if isinstance(v, tuple) else v for k, v in model.data_config.items()
                },
            },
        )
    metrics_path = out / ckpt.METRICS
    history = _read_metrics(metrics_path, before_epoch=start_epoch) if resume else []
    if rank == 0 and resume:
        ckpt.atomic_write_bytes(
            metrics_path, "".join(json.dumps(m) + "\n" for m in history).encode()
        )

    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_model: torch.nn.Module = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    else:
        train_model = model
    callbacks.on_start(
        epochs=config.epochs,
        steps_per_epoch=steps_per_epoch,
        start_epoch=start_epoch,
        start_step=start_step,
        n_train=len(splits.train),
        n_val=len(splits.val),
        n_classes=n_classes,
        dim=model_config.out_dim,
        device=str(device),
    )
    result = TrainResult(run_dir=out, rank=rank)
    val_loader: DataLoader[Any] = DataLoader(
        ImageDataset(splits.val, eval_tf),
        batch_size=config.batch_size,
        num_workers=config.workers,
        sampler=EpochSampler(
            len(splits.val), seed=0, epoch=0, rank=rank, world=world, shuffle=False, pad=False
        ),
        collate_fn=collate_skipping,
    )

    # -- epochs --------------------------------------------------------------------------------
    stop = False
    for epoch in range(start_epoch, config.epochs):
        skip = start_step if epoch == start_epoch else 0
        if state is not None and epoch == start_epoch and start_step > 0:
            ckpt.restore_rng(state.rng)  # mid-epoch: continue the exact random streams
        else:
            _seed_everything(config.seed * 1_000_003 + epoch + 1)
        sampler = EpochSampler(
            len(splits.train),
            seed=config.seed,
            epoch=epoch,
            rank=rank,
            world=world,
            skip=skip * config.batch_size,
        )
        loader: DataLoader[Any] = DataLoader(
            ImageDataset(splits.train, train_tf),
            batch_size=config.batch_size,
            sampler=sampler,
            num_workers=config.workers,
            collate_fn=collate_skipping,
            generator=torch.Generator().manual_seed(config.seed * 7919 + epoch),
        )
        train_model.train()
        start_time = time.perf_counter()
        loss_sum, loss_count, seen, skipped = 0.0, 0, 0, 0
        reassigned: list[int] = []  # classes moved by each re-matching in this epoch
        if state is not None and epoch == start_epoch and start_step > 0:
            # the running sums of the interrupted epoch, so its metrics come out the same
            counters = state.extra.get("epoch_counters", {})
            loss_sum = float(counters.get("loss_sum", 0.0))
            loss_count, skipped = (
                int(counters.get("loss_count", 0)),
                int(counters.get("skipped", 0)),
            )
            reassigned = list(counters.get("reassigned", []))
        last_batch = None
        for step, (images, labels, _, dropped) in enumerate(loader, start=skip):
            skipped += dropped
            weight = 1.0
            if len(labels) == 0:
                if world == 1 or last_batch is None:
                    continue
                # Every image of this batch was unreadable: repeat the last batch with zero
                # weight so the DDP ranks stay in lock-step.
                images, labels = last_batch
                weight = 0.0
            images, labels = (
                images.to(device, non_blocking=True),
                labels.to(device, non_blocking=True),
            )
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out_batch = train_model(images)
            loss = loss_fn(out_batch, labels) * weight
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            global_step += 1
            scheduler.step_update(num_updates=global_step)
            if weight:
                last_batch = (images, labels)
                loss_sum += float(loss.detach()) * len(labels)
                loss_count += len(labels)
                seen += len(labels) * world
            if system is not None and config.rematches_at(global_step, steps_per_epoch):
                old = np.asarray(system.assignment_table)
                system = _match_classes(
                    model, assign_samples, eval_tf, system, config, device, amp_dtype, world, rank
                )
                loss_fn = create_loss(config.head, system)
                reassigned.append(int(np.count_nonzero(old != system.assignment_table)))
            rate = seen / max(time.perf_counter() - start_time, 1e-9)
            callbacks.on_step(epoch=epoch, step=step + 1, loss=float(loss.detach()), img_per_s=rate)
            counters = {
                "loss_sum": loss_sum,
                "loss_count": loss_count,
                "skipped": skipped,
                "reassigned": reassigned,
            }
            if config.checkpoint_every and global_step % config.checkpoint_every == 0 and rank == 0:
                _save(out, model, optimizer, system, epoch, step + 1, global_step, counters)
            if config.max_steps and global_step >= config.max_steps:
                stop = True
                break
        if skipped and rank == 0:
            callbacks.on_warning(f"epoch {epoch + 1}: skipped {skipped} unreadable image(s)")
        wall = time.perf_counter() - start_time

        # -- validation and bookkeeping --------------------------------------------------------
        train_loss, train_count = _all_sum([loss_sum, float(loss_count)], device, world)
        val = _evaluate(model, val_loader, loss_fn, system, device, amp_dtype, n_classes)
        v_loss, v_top1, v_top5, v_count = _all_sum(list(val), device, world)
        skipped_all = int(_all_sum([float(skipped)], device, world)[0])
        metrics = EpochMetrics(
            epoch=epoch + 1,
            train_loss=train_loss / max(train_count, 1),
            val_loss=v_loss / v_count if v_count else None,
            val_top1=v_top1 / v_count if v_count else None,
            val_top5=v_top5 / v_count if v_count else None,
            img_per_s=seen / max(wall, 1e-9),
            wall_s=wall,
            peak_mem_mb=_peak_mem_mb(device),
            lr=float(optimizer.param_groups[0]["lr"]),
            skipped_images=skipped_all,
            world_size=world,
            global_step=global_step,
            reassigned=reassigned if config.rematch_per_epoch and system is not None else None,
        )
        result.metrics.append(metrics)
        scheduler.step(epoch + 1)
        if rank == 0:
            history.append(asdict(metrics))
            ckpt.atomic_write_bytes(
                metrics_path, "".join(json.dumps(m) + "\n" for m in history).encode()
            )
            epoch_done = not stop or step + 1 >= steps_per_epoch
            _save(
                out,
                model,
                optimizer,
                system,
                epoch + 1 if epoch_done else epoch,
                0 if epoch_done else step + 1,
                global_step,
                None if epoch_done else counters,
            )
            _plot(out)
            callbacks.on_epoch(metrics)
        if stop:
            break

    result.model = model
    return result


def _save(
    out: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    system: VectorSystem | None,
    epoch: int,
    step_in_epoch: int,
    global_step: int,
    counters: dict[str, Any] | None = None,
) -> None:
    ckpt.save_training_state(
        out,
        ckpt.TrainingState(
            epoch=epoch,
            step_in_epoch=step_in_epoch,
            global_step=global_step,
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            rng=ckpt.capture_rng(),
            extra={"epoch_counters": counters or {}},
            assignment=None if system is None else system.assignment_table,
        ),
    )


def _read_metrics(path: Path, *, before_epoch: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["epoch"] <= before_epoch]


def _plot(out: Path) -> None:
    from lscindex.plots import plot_runs

    plot_runs([out], out / ckpt.CURVES)
