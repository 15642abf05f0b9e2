"""Run directories: atomic writes, safetensors weights and a resumable training state.

Layout of a run directory::

    config.json          model + training config, data summary, timm data config (format_version)
    classes.json         class names in label order
    model.safetensors    latest weights (what embed/query load)
    assignment.safetensors  class -> vector table of a data-assigned run ("table", int64)
    metrics.jsonl        one JSON object per finished epoch
    curves.png           loss / accuracy curves
    checkpoints/latest.json            -> name of the newest complete checkpoint
    checkpoints/step-000001234/        model.safetensors, optimizer.safetensors, state.json

Nothing is pickled: tensors go to safetensors, everything else to JSON. A checkpoint directory is
written under a temporary name, fsynced and renamed, then ``latest.json`` is atomically replaced;
a crash at any point leaves the previous checkpoint intact and pointed to.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lscindex._io import _DIR_MODE, _fsync_dir, atomic_write_bytes, atomic_write_json
from lscindex.assignment import table_sha256
from lscindex.errors import RunError

__all__ = [
    "FORMAT_VERSION",
    "TrainingState",
    "atomic_write_bytes",
    "atomic_write_json",
    "load_assignment",
    "load_run_config",
    "load_training_state",
    "load_weights",
    "run_fingerprint",
    "save_assignment",
    "save_training_state",
    "save_weights",
]

FORMAT_VERSION = 1
CONFIG = "config.json"
CLASSES = "classes.json"
WEIGHTS = "model.safetensors"
ASSIGNMENT = "assignment.safetensors"
METRICS = "metrics.jsonl"
CURVES = "curves.png"
CHECKPOINTS = "checkpoints"


def save_weights(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Atomically save tensors (moved to CPU, made contiguous) as a safetensors file."""
    from safetensors.torch import save

    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, save(clean, metadata=dict(metadata or {})))


def _weights_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    if not path.is_file():
        raise RunError(f"weights file {path} does not exist; train a run first")
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a safetensors file onto the CPU (no unpickling)."""
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise RunError(f"weights file {path} does not exist; train a run first")
    return dict(load_file(str(path), device="cpu"))


def run_fingerprint(run_dir: str | os.PathLike[str]) -> str:
    """16 hex digits of sha256 over the run's config, weights and assignment table, if any.

    Pairs stores and indexes with the run (and so with the targets) they were built from.
    """
    run_dir = Path(run_dir)
    digest = hashlib.sha256()
    names = [CONFIG, WEIGHTS]
    if (run_dir / ASSIGNMENT).is_file():  # runs with the codec have none: fingerprints unchanged
        names.append(ASSIGNMENT)
    for name in names:
        with open(run_dir / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def load_run_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed config.json of a run, checked for a known format version."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise RunError(
            f"{run_dir} is not an lscindex run (no {CONFIG}); train one with lscindex train"
        )
    config: dict[str, Any] = json.loads(path.read_text())
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise RunError(
            f"run {run_dir} has format_version {version!r}, this lscindex reads {FORMAT_VERSION}; "
            f"upgrade lscindex or retrain"
        )
    return config


# -- optimizer state without pickle ----------------------------------------------------
def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint")


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    per_param: dict[str, dict[str, Any]] = {}
    for pid, entries in state["state"].items():
        slot: dict[str, Any] = {}
        for key, value in entries.items():
            if torch.is_tensor(value):
                name = f"{pid}.{key}"
                tensors[name] = value
                slot[key] = {"tensor": name}
            else:
                slot[key] = {"value": _jsonable(value)}
        per_param[str(pid)] = slot
    return tensors, {"state": per_param, "param_groups": _jsonable(state["param_groups"])}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for pid, slot in meta["state"].items():
        state[int(pid)] = {
            key: tensors[entry["tensor"]] if "tensor" in entry else entry["value"]
            for key, entry in slot.items()
        }
    return {"state": state, "param_groups": meta["param_groups"]}


@dataclass
class TrainingState:
    """Where a run stands: the counters to resume from plus model/optimizer tensors."""

    epoch: int
    step_in_epoch: int
    global_step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, Any]
    extra: dict[str, Any]
    assignment: np.ndarray | None = None


def capture_rng() -> dict[str, Any]:
    """Global RNG states (torch CPU/CUDA, python, numpy) as JSON + tensors."""
    np_state: tuple[Any, ...] = tuple(np.random.get_state())
    rng: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": _jsonable(random.getstate()),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    np_rng = rng["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_rng["keys"].numpy().astype(np.uint32),
            np_rng["pos"],
            np_rng["has_gauss"],
            np_rng["cached_gaussian"],
        )
    )
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def save_training_state(run_dir: str | os.PathLike[str], state: TrainingState) -> Path:
    """Write a complete checkpoint, point ``latest.json`` at it and drop older ones.

    Also refreshes the run's top-level ``model.safetensors``.
    """
    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{state.global_step:09d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    tmp.chmod(_DIR_MODE)
    try:
        opt_tensors, opt_meta = _split_optimizer(state.optimizer)
        rng_tensors = {"rng.torch": state.rng["torch"], "rng.numpy": state.rng["numpy"]["keys"]}
        for i, t in enumerate(state.rng.get("cuda", [])):
            rng_tensors[f"rng.cuda.{i}"] = t
        save_weights(tmp / WEIGHTS, state.model)
        if state.assignment is not None:
            save_assignment(tmp / ASSIGNMENT, state.assignment)
        save_weights(tmp / "optimizer.safetensors", {**opt_tensors, **rng_tensors})
        atomic_write_json(
            tmp / "state.json",
            {
                "epoch": state.epoch,
                "step_in_epoch": state.step_in_epoch,
                "global_step": state.global_step,
                "optimizer": opt_meta,
                "rng": {
                    "python": state.rng["python"],
                    "numpy": {k: v for k, v in state.rng["numpy"].items() if k != "keys"},
                    "cuda_devices": len(state.rng.get("cuda", [])),
                },
                "extra": _jsonable(state.extra),
            },
        )
        final = root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_json(root / "latest.json", {"checkpoint": name})
    metadata = {"epoch": str(state.epoch), "global_step": str(state.global_step)}
    if state.assignment is not None:
        # Two files cannot be replaced at once: the weights name the table they go with, so a
        # crash between the two writes is detected by open_run instead of decoding wrongly.
        save_assignment(run_dir / ASSIGNMENT, state.assignment)
        metadata["assignment_sha256"] = table_sha256(state.assignment)
    save_weights(run_dir / WEIGHTS, state.model, metadata)
    for old in root.iterdir():
        if old.is_dir() and old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_training_state(run_dir: str | os.PathLike[str]) -> TrainingState | None:
    """The newest complete checkpoint of a run, or None when it has none."""
    root = Path(run_dir) / CHECKPOINTS
    pointer = root / "latest.json"
    if not pointer.is_file():
        return None
    folder = root / json.loads(pointer.read_text())["checkpoint"]
    meta = json.loads((folder / "state.json").read_text())
    tensors = load_weights(folder / "optimizer.safetensors")
    rng = {
        "torch": tensors.pop("rng.torch"),
        "python": meta["rng"]["python"],
        "numpy": {"keys": tensors.pop("rng.numpy"), **meta["rng"]["numpy"]},
    }
    if meta["rng"]["cuda_devices"]:
        rng["cuda"] = [tensors.pop(f"rng.cuda.{i}") for i in range(meta["rng"]["cuda_devices"])]
    return TrainingState(
        epoch=meta["epoch"],
        step_in_epoch=meta["step_in_epoch"],
        global_step=meta["global_step"],
        model=load_weights(folder / WEIGHTS),
        optimizer=_join_optimizer(tensors, meta["optimizer"]),
        rng=rng,
        extra=meta["extra"],
        assignment=load_assignment(folder / ASSIGNMENT)
        if (folder / ASSIGNMENT).is_file()
        else None,
    )


def save_assignment(path: str | os.PathLike[str], table: np.ndarray) -> None:
    """Atomically save an assignment table ((n_classes,) int64) as safetensors (``"table"``)."""
    save_weights(path, {"table": torch.from_numpy(np.asarray(table, dtype=np.int64))})


def load_assignment(path: str | os.PathLike[str]) -> np.ndarray:
    """The (n_classes,) int64 assignment table saved by :func:`save_assignment`."""
    tensors = load_weights(path)
    if set(tensors) != {"table"} or tensors["table"].dtype != torch.int64:
        raise RunError(
            f"{path} is not an lscindex assignment table (expected one int64 tensor 'table'); "
            f"the run is damaged, train it again"
        )
    return tensors["table"].numpy()


@dataclass
class Run:
    """A trained run opened for inference (see :func:`open_run`).

    Attributes:
        path: the run directory.
        config: parsed config.json.
        model: the encoder with its weights, in eval mode on ``device``.
        system: the vector system (None for a ``ce`` run).
        class_names: names in label order.
        class_keys: the folder names / manifest labels the classes were read from.
        transform: timm eval transform (PIL image -> (3, H, W) float tensor).
        fingerprint: :func:`run_fingerprint` of the run.
    """

    path: Path
    config: dict[str, Any]
    model: Any
    system: Any
    class_names: list[str]
    class_keys: list[str]
    transform: Any
    fingerprint: str
    device: torch.device


def find_run(root: str | os.PathLike[str] = "runs") -> Path | None:
    """The most recently trained run directly under ``root`` (None when there is none)."""
    root = Path(root)
    if not root.is_dir():
        return None
    runs = [p for p in root.iterdir() if (p / CONFIG).is_file() and (p / WEIGHTS).is_file()]
    return max(runs, key=lambda p: (p / WEIGHTS).stat().st_mtime) if runs else None


def open_run(run_dir: str | os.PathLike[str], *, device: str = "auto") -> Run:
    """Load a run's encoder, vector system, class names and eval transform; nothing is re-asked.

    Raises:
        RunError: not a run, unknown format version, missing weights.

    Example:
        >>> run = open_run("runs/glyphs")          # doctest: +SKIP
        >>> run.system.dim, len(run.class_names)   # doctest: +SKIP
    """
    from lscindex.model import ModelConfig, create_eval_transform, create_model
    from lscindex.systems import VectorSystem

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run directory {run_dir} does not exist; train one with lscindex train")
    config = load_run_config(run_dir)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model_config = ModelConfig.from_dict(config["model"])
    system = None
    if model_config.system is not None:
        data_assigned = model_config.system.get("assignment") == "data"
        if data_assigned and not (run_dir / ASSIGNMENT).is_file():
            raise RunError(
                f"run {run_dir} uses a data assignment but has no {ASSIGNMENT}; the run is "
                f"incomplete or damaged, resume or retrain it"
            )
        table = load_assignment(run_dir / ASSIGNMENT) if data_assigned else None
        if table is not None and _weights_metadata(run_dir / WEIGHTS).get(
            "assignment_sha256"
        ) != table_sha256(table):
            raise RunError(
                f"{run_dir / ASSIGNMENT} is not the table {run_dir / WEIGHTS} was trained with "
                f"(training stopped between saving the two); resume the run to write both again"
            )
        system = VectorSystem.from_dict(model_config.system, table=table)
    model = create_model(model_config)
    weights = load_weights(run_dir / WEIGHTS)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise RunError(
            f"weights of {run_dir} do not fit its config (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); the run is damaged, retrain it"
        )
    model.eval().to(device)
    names = json.loads((run_dir / CLASSES).read_text())
    keys_path = run_dir / "class_keys.json"
    keys = json.loads(keys_path.read_text()) if keys_path.is_file() else names
    transform = create_eval_transform(config["data_config"])
    return Run(
        path=run_dir,
        config=config,
        model=model,
        system=system,
        class_names=names,
        class_keys=keys,
        transform=transform,
        fingerprint=run_fingerprint(run_dir),
        device=torch.device(device),
    )
