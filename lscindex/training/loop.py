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

import math
import random
import resource
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from lscindex import checkpoint as ckpt
from lscindex import run as run_files
from lscindex._distributed import Ranks, process_group, select_device
from lscindex._io import writer_lock
from lscindex._preemption import StopRequest, ignore_stop_signals, stop_requests
from lscindex.data import DatasetSplits, ImageDataset, collate_skipping, load_dataset
from lscindex.errors import Preempted, RunError
from lscindex.losses import create_loss
from lscindex.model import (
    Encoder,
    ModelConfig,
    check_backbone,
    create_eval_transform,
    create_model,
    create_train_transform,
    encode,
    top_classes,
)
from lscindex.shards import give_back_freed_memory
from lscindex.systems import VectorSystem
from lscindex.training.config import TrainConfig, architecture_changes, check_same_data
from lscindex.training.matching import assignment_samples, fit_from_features, match_from_model
from lscindex.training.progress import EpochMetrics, TrainCallbacks, TrainResult
from lscindex.training.sampling import EpochSampler, ordered_loader

__all__ = ["fit"]


@dataclass
class _Progress:
    """Where training stands; a checkpoint saves it, so a resumed epoch ends as it would have."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    # running sums of the current epoch (the "epoch_counters" of a checkpoint)
    loss_sum: float = 0.0
    loss_count: int = 0
    skipped: int = 0
    reassigned: list[int] = field(default_factory=list)  # classes moved by each re-matching
    seen: int = 0  # images this epoch, all ranks (for img/s only)

    def counters(self) -> dict[str, Any]:
        return {
            "loss_sum": self.loss_sum,
            "loss_count": self.loss_count,
            "skipped": self.skipped,
            "reassigned": list(self.reassigned),
        }

    def start_epoch(self, counters: dict[str, Any] | None = None) -> None:
        """Zero the running sums, or restore those of an interrupted epoch."""
        counters = counters or {}
        self.loss_sum = float(counters.get("loss_sum", 0.0))
        self.loss_count = int(counters.get("loss_count", 0))
        self.skipped = int(counters.get("skipped", 0))
        self.reassigned = list(counters.get("reassigned", []))
        self.seen = 0


@dataclass
class _Job:
    """Everything one training run works with, built once by :func:`_setup`."""

    config: TrainConfig
    out: Path
    ranks: Ranks
    device: torch.device
    # The samples only: the class names the run's files were written from are not kept (600k
    # of them are ~13 MiB that training never reads again).
    train: Sequence[tuple[Any, int]]
    val: Sequence[tuple[Any, int]]
    n_classes: int
    model_config: ModelConfig
    model: Encoder
    train_model: torch.nn.Module  # the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    steps_per_epoch: int
    train_tf: Any
    eval_tf: Any
    system: VectorSystem | None
    loss_fn: torch.nn.Module
    assign_samples: Sequence[tuple[Any, int]] = field(default_factory=list)
    callbacks: TrainCallbacks = field(default_factory=TrainCallbacks)
    stop: StopRequest = field(default_factory=StopRequest)  # SIGTERM/SIGUSR1 received
    history: list[dict[str, Any]] = field(default_factory=list)

    def set_system(self, system: VectorSystem) -> None:
        self.system = system
        self.loss_fn = _loss(self.config, system)

    def rematch(self) -> None:
        """Match the classes to targets again from the model's class means (data assignment)."""
        assert self.system is not None
        margin = self.config.rematch_margin
        self.set_system(
            match_from_model(
                self.model, self.system, self.assign_samples, margin=margin, **self._pass
            )
        )

    def fit_features(self) -> None:
        """Assign classes by fitting the backbone's class geometry onto the lattice."""
        assert self.system is not None
        system, _ = fit_from_features(self.model, self.system, self.assign_samples, **self._pass)
        self.set_system(system)

    @property
    def _pass(self) -> dict[str, Any]:
        """How a matching pass embeds the assignment samples: eval transform, no gradients."""
        return {
            "transform": self.eval_tf,
            "batch_size": self.config.batch_size,
            "workers": self.config.workers,
            "amp_dtype": self.amp_dtype,
            "device": self.device,
            "ranks": self.ranks,
            "progress": self._match_progress,
        }

    def _match_progress(self, images: int, total: int, img_per_s: float) -> None:
        self.callbacks.on_match(images=images, total=total, img_per_s=img_per_s)


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

    One writer at a time: rank 0 holds ``<out>.lock`` *beside* the run directory (which may
    not exist yet, and whose emptiness check must not see it) for the whole run; a second
    ``fit`` into the same ``out`` is refused. Under torchrun a refusal ends the job on rank 0,
    and torchrun stops the other ranks.

    Raises:
        DataError: bad data folder/manifest. ConfigError: unknown model, too many classes for
        ``dim``, bad values. RunError: out dir holds another run, resume mismatch, another
        process is training into it. Preempted: SIGTERM or SIGUSR1 came (a scheduler's warning
        before it kills the job): the step in flight finished and a checkpoint was written;
        ``fit(config, resume=True)`` continues bit for bit. Under torchrun every rank stops
        at the same step.

    Example:
        >>> fit(TrainConfig(data="data/glyphs", out="runs/glyphs", epochs=3))  # doctest: +SKIP
    """
    device = select_device(config.device)
    with process_group(device) as ranks:
        lock = writer_lock(config.out, "run", error=RunError) if ranks.rank == 0 else nullcontext()
        with lock:
            if ranks.rank != 0 or callbacks is None:
                callbacks = TrainCallbacks()
            with stop_requests() as stop:
                job, splits, state = _setup(config, resume, ranks, device)
                job.callbacks, job.stop = callbacks, stop
                progress = _start(job, splits, state, resume)
                del splits  # the class names go with it; the job keeps the samples
                give_back_freed_memory()
                return _train(job, progress, state, callbacks)


# -- setup --------------------------------------------------------------------------------------
def _setup(
    config: TrainConfig, resume: bool, ranks: Ranks, device: torch.device
) -> tuple[_Job, DatasetSplits, ckpt.TrainingState | None]:
    """Data, system, model, loss, optimizer and schedule; the checkpoint to resume from."""
    import timm.optim

    out = Path(config.out)
    check_backbone(config.model)
    # Only rank 0 judges (and later writes) the run directory: the other ranks would otherwise
    # race it and find its fresh config.json.
    if ranks.rank == 0:
        saved = run_files.check_out_dir(out, resume)
    else:
        saved = run_files.load_run_config(out) if resume else None
    splits = load_dataset(config.data, val_fraction=config.val_fraction, seed=config.seed)
    system = _create_system(config, splits.n_classes)
    if saved is not None:
        changes = architecture_changes(saved, config, splits.n_classes)
        if changes:
            raise RunError(
                f"--resume would change the architecture of {out} ({'; '.join(changes)}); "
                f"resume with the original settings or train into another --out"
            )
        check_same_data(saved, splits, out)

    _seed_everything(config.seed)
    model_config = ModelConfig(
        backbone=config.model,
        head=config.head,
        n_classes=splits.n_classes,
        system=_system_spec(system, config),
        img_size=config.img_size,
    )
    model = create_model(model_config, pretrained=config.pretrained).to(device)
    train_tf = create_train_transform(model.data_config, augment=config.augment)
    eval_tf = create_eval_transform(model.data_config)
    loss_fn = _loss(config, system)
    optimizer = timm.optim.create_optimizer_v2(
        model, opt=config.opt, lr=config.lr, weight_decay=config.weight_decay
    )
    shard = len(
        EpochSampler(
            len(splits.train),
            seed=0,
            epoch=0,
            rank=ranks.rank,
            world=ranks.world,
            batch_size=config.batch_size,
        )
    )
    steps_per_epoch = max(1, math.ceil(shard / config.batch_size))
    amp_dtype = None
    if config.amp:
        amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    job = _Job(
        config=config,
        out=out,
        ranks=ranks,
        device=device,
        train=splits.train,
        val=splits.val,
        n_classes=splits.n_classes,
        model_config=model_config,
        model=model,
        train_model=model,
        optimizer=optimizer,
        scheduler=_schedule(optimizer, config, steps_per_epoch),
        scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
        amp_dtype=amp_dtype,
        steps_per_epoch=steps_per_epoch,
        train_tf=train_tf,
        eval_tf=eval_tf,
        system=system,
        loss_fn=loss_fn,
    )
    return job, splits, ckpt.load_training_state(out) if resume else None


def _create_system(config: TrainConfig, n_classes: int) -> VectorSystem | None:
    """The run's vector system with the codec (lsc), or None (ce)."""
    if config.head != "lsc":
        return None
    return VectorSystem.create(
        config.system,
        n_classes,
        dim=config.dim,
        seed=config.system_seed,
        centered=config.centered,
    )


def _loss(config: TrainConfig, system: VectorSystem | None) -> torch.nn.Module:
    return create_loss(
        config.head,
        system,
        loss=config.loss,
        scale=config.loss_scale,
        weight=config.loss_weight,
    )


def _schedule(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int) -> Any:
    """timm's scheduler, stepped per update: warm-up from 1% of lr, then down to 1% of it."""
    import timm.scheduler

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
    return scheduler


def _system_spec(system: VectorSystem | None, config: TrainConfig) -> dict[str, Any] | None:
    if system is None:
        return None
    spec = system.to_dict()
    if config.assignment != "codec":
        spec["assignment"] = "data"  # a table, however it was found
    return spec


def _start(
    job: _Job, splits: DatasetSplits, state: ckpt.TrainingState | None, resume: bool
) -> _Progress:
    """Restore a checkpoint (or match the classes first), write the run's files, wrap for DDP."""
    config, progress = job.config, _Progress()
    if state is not None:
        job.model.load_state_dict(state.model)
        job.optimizer.load_state_dict(state.optimizer)
        progress.epoch, progress.step_in_epoch = state.epoch, state.step_in_epoch
        progress.global_step = state.global_step
    if job.system is not None and config.assignment != "codec":
        job.assign_samples = assignment_samples(job.train, job.n_classes, config.assign_samples)
        if state is None and config.assignment == "features":
            # Classes that the untrained backbone already sees as alike start on neighbouring
            # targets.
            job.fit_features()
        elif state is None:
            # The first matching, from the untrained network: classes start on targets near
            # where the network already puts them.
            job.rematch()
        elif state.assignment is None:
            raise RunError(
                f"the checkpoint of {job.out} holds no assignment table but its run uses a data "
                f"assignment; the run is damaged, train it again into another --out"
            )
        else:
            job.set_system(job.system.with_assignment(state.assignment))
    if job.ranks.rank == 0 and not resume:
        _write_run_files(job, splits)
    if resume:
        job.history = run_files.read_metrics(job.out, before_epoch=progress.epoch)
        if job.ranks.rank == 0:
            run_files.write_metrics(job.out, job.history)
    if job.ranks.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        device = job.device
        job.train_model = DistributedDataParallel(
            job.model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return progress


def _write_run_files(job: _Job, splits: DatasetSplits) -> None:
    job.out.mkdir(parents=True, exist_ok=True)
    run_files.write_class_names(job.out, splits.class_names, splits.keys)
    run_files.write_run_config(
        job.out,
        model=job.model_config.to_dict(),
        train=job.config.to_dict(),
        data={
            "source": splits.source,
            "n_train": len(job.train),
            "n_val": len(job.val),
            "n_classes": job.n_classes,
            "sha256": splits.sha256(),
        },
        data_config=job.model.data_config,
    )


# -- the epochs ---------------------------------------------------------------------------------
def _train(
    job: _Job, progress: _Progress, state: ckpt.TrainingState | None, callbacks: TrainCallbacks
) -> TrainResult:
    config, ranks = job.config, job.ranks
    callbacks.on_start(
        epochs=config.epochs,
        steps_per_epoch=job.steps_per_epoch,
        start_epoch=progress.epoch,
        start_step=progress.step_in_epoch,
        n_train=len(job.train),
        n_val=len(job.val),
        n_classes=job.n_classes,
        dim=job.model_config.out_dim,
        device=str(job.device),
    )
    result = TrainResult(run_dir=job.out, rank=ranks.rank)
    val_loader = ordered_loader(
        job.val,
        job.eval_tf,
        batch_size=config.batch_size,
        workers=config.workers,
        ranks=ranks,
    )
    for epoch in range(progress.epoch, config.epochs):
        mid_epoch = state is not None and epoch == progress.epoch and progress.step_in_epoch > 0
        if mid_epoch:
            assert state is not None
            ckpt.restore_rng(state.rng)  # continue the exact random streams
            progress.start_epoch(state.extra.get("epoch_counters", {}))
        else:
            _seed_everything(config.seed * 1_000_003 + epoch + 1)
            progress.epoch, progress.step_in_epoch = epoch, 0
            progress.start_epoch()
        start_time = time.perf_counter()
        stop = _train_epoch(job, progress, callbacks, start_time)
        if stop == "preempted":
            if ranks.world > 1:
                dist.barrier()  # rank 0 has saved the checkpoint before any rank exits
            raise _preempted(job, progress)
        if progress.skipped and ranks.rank == 0:
            callbacks.on_warning(
                f"epoch {epoch + 1}: skipped {progress.skipped} unreadable image(s)"
            )
        wall = time.perf_counter() - start_time
        metrics = _epoch_metrics(job, progress, val_loader, wall, callbacks)
        result.metrics.append(metrics)
        job.scheduler.step(epoch + 1)
        if ranks.rank == 0:
            _end_epoch(job, progress, metrics, callbacks, stopped=stop == "max_steps")
        if stop:
            break
        if _stop_agreed(job) and epoch + 1 < config.epochs:  # asked during validation
            raise _preempted(job, progress)
    result.model = job.model
    return result


def _stop_agreed(job: _Job) -> bool:
    """Whether any rank was asked to stop: every rank gets the same answer, so all stop at the
    same step (one tiny all-reduce a step under torchrun)."""
    asked = float(bool(job.stop))
    if job.ranks.world > 1:
        asked = _all_sum([asked], job.device, job.ranks.world)[0]
    return asked > 0


def _preempted(job: _Job, progress: _Progress) -> Preempted:
    """The exception a stopped run ends with (its checkpoint is saved)."""
    signal = job.stop.name or "a stop request of another rank"
    where = f"epoch {progress.epoch + 1}, step {progress.step_in_epoch}"
    return Preempted(
        f"stopped by {signal} at {where} (global step {progress.global_step}); the checkpoint "
        f"in {job.out} holds it: run the same command with --resume to continue",
        signal=signal,
    )


def _train_epoch(
    job: _Job, progress: _Progress, callbacks: TrainCallbacks, start_time: float
) -> str | None:
    """The steps of one epoch (from ``progress.step_in_epoch``). Returns what stopped it early:
    ``"max_steps"``, ``"preempted"`` (a stop signal: the step finished, a checkpoint saved), or
    None."""
    config, world = job.config, job.ranks.world
    epoch, skip = progress.epoch, progress.step_in_epoch
    sampler = EpochSampler(
        len(job.train),
        seed=config.seed,
        epoch=epoch,
        rank=job.ranks.rank,
        world=world,
        skip=skip * config.batch_size,
        batch_size=config.batch_size,
        blocks=getattr(job.train, "blocks", None),  # parquet shards: one at a time
    )
    if sampler.dropped_last and skip == 0:
        callbacks.on_warning(f"epoch {epoch + 1}: left out one image so that no batch has one")
    loader: DataLoader[Any] = DataLoader(
        ImageDataset(job.train, job.train_tf),
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        collate_fn=collate_skipping,
        generator=torch.Generator().manual_seed(config.seed * 7919 + epoch),
        worker_init_fn=ignore_stop_signals,
    )
    job.train_model.train()
    last_batch = None
    for step, (images, labels, _, dropped) in enumerate(loader, start=skip):
        progress.skipped += dropped
        weight = 1.0
        if len(labels) == 1:
            # BatchNorm cannot train on a single image (one left by unreadable images; the
            # sampler already leaves out a last batch of one): skip it like an unreadable batch.
            callbacks.on_warning(f"epoch {epoch + 1}: left out a batch of a single image")
            labels = labels[:0]
        if len(labels) == 0:
            if world == 1 or last_batch is None:
                continue
            # Every image of this batch was unreadable: repeat the last batch with zero
            # weight so the DDP ranks stay in lock-step.
            images, labels = last_batch
            weight = 0.0
        images = images.to(job.device, non_blocking=True)
        labels = labels.to(job.device, non_blocking=True)
        loss = _train_step(job, images, labels, weight)
        progress.global_step += 1
        progress.step_in_epoch = step + 1
        job.scheduler.step_update(num_updates=progress.global_step)
        if weight:
            last_batch = (images, labels)
            progress.loss_sum += float(loss) * len(labels)
            progress.loss_count += len(labels)
            progress.seen += len(labels) * world
        if job.system is not None and config.rematches_at(
            progress.global_step, job.steps_per_epoch
        ):
            old = np.asarray(job.system.assignment_table)
            job.rematch()
            moved = np.count_nonzero(old != job.system.assignment_table)
            progress.reassigned.append(int(moved))
        rate = progress.seen / max(time.perf_counter() - start_time, 1e-9)
        callbacks.on_step(epoch=epoch, step=step + 1, loss=float(loss), img_per_s=rate)
        every = config.checkpoint_every
        preempted = _stop_agreed(job)
        saving = preempted or (every and progress.global_step % every == 0)
        if saving and job.ranks.rank == 0:
            _save(job, progress, epoch, step + 1, progress.counters())
        if preempted:
            return "preempted"
        if config.max_steps and progress.global_step >= config.max_steps:
            return "max_steps"
    return None


def _train_step(
    job: _Job, images: torch.Tensor, labels: torch.Tensor, weight: float
) -> torch.Tensor:
    """Forward, loss, backward and optimizer step; returns the (detached) weighted loss."""
    amp_dtype = job.amp_dtype
    with torch.autocast(job.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        # the raw projection: the cosine loss normalises it, the lattice softmax reads its norm
        out = job.train_model(images, normalize=False)
    loss = job.loss_fn(out, labels) * weight
    job.optimizer.zero_grad(set_to_none=True)
    job.scaler.scale(loss).backward()
    job.scaler.step(job.optimizer)
    job.scaler.update()
    return loss.detach()


# -- validation and bookkeeping -----------------------------------------------------------------
def _evaluate(
    job: _Job, loader: DataLoader[Any], callbacks: TrainCallbacks, epoch: int
) -> tuple[float, float, float, int]:
    """Sums of (loss, top-1 hits, top-5 hits, count) over this rank's share of the val set."""
    model = job.model
    model.eval()
    k = min(5, job.n_classes)
    totals = [0.0, 0.0, 0.0, 0]
    start = time.perf_counter()
    with torch.no_grad():
        for step, (images, labels, _, _) in enumerate(loader, start=1):
            if len(labels) == 0:
                continue
            images, labels = images.to(job.device), labels.to(job.device)
            _, out = encode(model, images, amp_dtype=job.amp_dtype)
            totals[0] += float(job.loss_fn(out, labels)) * len(labels)
            ids, _, _ = top_classes(out, job.system, k)
            hits = torch.from_numpy(ids).to(job.device) == labels[:, None]
            totals[1] += float(hits[:, 0].sum())
            totals[2] += float(hits.any(dim=1).sum())
            totals[3] += len(labels)
            rate = totals[3] * job.ranks.world / max(time.perf_counter() - start, 1e-9)
            callbacks.on_val_step(epoch=epoch, step=step, steps=len(loader), img_per_s=rate)
    model.train()
    return totals[0], totals[1], totals[2], int(totals[3])


def _epoch_metrics(
    job: _Job, progress: _Progress, loader: DataLoader[Any], wall: float, callbacks: TrainCallbacks
) -> EpochMetrics:
    """Validate and sum this epoch's figures over the ranks."""
    device, world = job.device, job.ranks.world
    train_loss, train_count = _all_sum(
        [progress.loss_sum, float(progress.loss_count)], device, world
    )
    sums = _evaluate(job, loader, callbacks, progress.epoch)
    v_loss, v_top1, v_top5, v_count = _all_sum(list(sums), device, world)
    skipped = int(_all_sum([float(progress.skipped)], device, world)[0])
    rematching = job.config.rematch_per_epoch and job.system is not None
    return EpochMetrics(
        epoch=progress.epoch + 1,
        train_loss=train_loss / max(train_count, 1),
        val_loss=v_loss / v_count if v_count else None,
        val_top1=v_top1 / v_count if v_count else None,
        val_top5=v_top5 / v_count if v_count else None,
        img_per_s=progress.seen / max(wall, 1e-9),
        wall_s=wall,
        peak_mem_mb=_peak_mem_mb(device),
        lr=float(job.optimizer.param_groups[0]["lr"]),
        skipped_images=skipped,
        world_size=world,
        global_step=progress.global_step,
        reassigned=list(progress.reassigned) if rematching else None,
    )


def _end_epoch(
    job: _Job,
    progress: _Progress,
    metrics: EpochMetrics,
    callbacks: TrainCallbacks,
    *,
    stopped: bool,
) -> None:
    """Rank 0: metrics file, checkpoint (mid-epoch if max_steps stopped it), curves."""
    job.history.append(asdict(metrics))
    run_files.write_metrics(job.out, job.history)
    if not stopped or progress.step_in_epoch >= job.steps_per_epoch:
        _save(job, progress, progress.epoch + 1, 0, None)
    else:
        _save(job, progress, progress.epoch, progress.step_in_epoch, progress.counters())
    from lscindex.plots import plot_runs

    plot_runs([job.out], job.out / run_files.CURVES)
    callbacks.on_epoch(metrics)


def _save(
    job: _Job,
    progress: _Progress,
    epoch: int,
    step_in_epoch: int,
    counters: dict[str, Any] | None,
) -> None:
    system = job.system
    ckpt.save_training_state(
        job.out,
        ckpt.TrainingState(
            epoch=epoch,
            step_in_epoch=step_in_epoch,
            global_step=progress.global_step,
            model=job.model.state_dict(),
            optimizer=job.optimizer.state_dict(),
            rng=ckpt.capture_rng(),
            extra={"epoch_counters": counters or {}},
            assignment=None if system is None else system.assignment_table,
        ),
    )


# -- helpers ------------------------------------------------------------------------------------
def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _all_sum(values: list[float], device: torch.device, world: int) -> list[float]:
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
