"""The resumable training state: checkpoints of weights, optimizer and RNGs, without pickle.

Inside a run directory (whose other files :mod:`lscindex.run` owns)::

    checkpoints/latest.json            -> name of the newest complete checkpoint
    checkpoints/step-000001234/        model.safetensors, [assignment.safetensors],
                                       optimizer.safetensors, state.json

Tensors go to safetensors, everything else to JSON. A checkpoint directory is written under a
temporary name, fsynced and renamed, then ``latest.json`` is atomically replaced; a crash at any
point leaves the previous checkpoint intact and pointed to.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lscindex._io import atomic_write_json, public_dir_mode, swap_dir
from lscindex.errors import RunError
from lscindex.run import (
    ASSIGNMENT,
    CHECKPOINTS,
    WEIGHTS,
    load_assignment,
    load_weights,
    publish_weights,
    save_assignment,
    save_weights,
)

__all__ = [
    "TrainingState",
    "capture_rng",
    "load_training_state",
    "restore_rng",
    "save_training_state",
]


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
    tmp.chmod(public_dir_mode())
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
        swap_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_json(root / "latest.json", {"checkpoint": name})
    publish_weights(
        run_dir,
        state.model,
        epoch=state.epoch,
        global_step=state.global_step,
        assignment=state.assignment,
    )
    for old in root.iterdir():  # older checkpoints and leftovers of interrupted saves, only
        ours = old.name.startswith(("step-", ".step-"))
        if ours and old.is_dir() and not old.is_symlink() and old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_training_state(run_dir: str | os.PathLike[str]) -> TrainingState | None:
    """The newest complete checkpoint of a run, or None when it has none.

    Raises:
        RunError: a damaged or edited checkpoint (the message names it).
    """
    root = Path(run_dir) / CHECKPOINTS
    pointer = root / "latest.json"
    if not pointer.is_file():
        return None
    try:
        name = json.loads(pointer.read_text())["checkpoint"]
        if not isinstance(name, str) or not re.fullmatch(r"step-\d{9,}", name):
            raise ValueError(f"names {name!r}, not a checkpoint folder")
        return _load_checkpoint(root / name)
    except (KeyError, TypeError, ValueError, IndexError) as exc:  # JSON errors are ValueErrors
        raise RunError(
            f"the checkpoint of {run_dir} is damaged ({type(exc).__name__}: {exc}); restore "
            f"{root} or train the run again into another --out"
        ) from exc


def _load_checkpoint(folder: Path) -> TrainingState:
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
        epoch=int(meta["epoch"]),
        step_in_epoch=int(meta["step_in_epoch"]),
        global_step=int(meta["global_step"]),
        model=load_weights(folder / WEIGHTS),
        optimizer=_join_optimizer(tensors, meta["optimizer"]),
        rng=rng,
        extra=dict(meta["extra"]),
        assignment=load_assignment(folder / ASSIGNMENT)
        if (folder / ASSIGNMENT).is_file()
        else None,
    )
