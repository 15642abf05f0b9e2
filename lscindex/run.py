"""Run directories: every file a run holds, its layout, and opening a run for inference.

Layout of a run directory (this module owns every name in it)::

    config.json             model + training config, data summary, timm data config (format_version,
                            data_config_version)
    classes.json            class names in label order
    class_keys.json         the folder names / manifest labels, where they differ from the names
    model.safetensors       latest weights (what embed/query load)
    assignment.safetensors  class -> vector table of a data-assigned run ("table", int64)
    metrics.jsonl           one JSON object per finished epoch
    curves.png              loss / accuracy curves
    stores.json             the stores embedded with this run (so query finds one with no flags)
    checkpoints/            the resumable training state (see :mod:`lscindex.checkpoint`)

Nothing is pickled: tensors go to safetensors, everything else to JSON, each file written
atomically (temp file, fsync, rename).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lscindex._class_names import ClassNames, names_json_bytes, parse_names_json
from lscindex._io import atomic_write_bytes, atomic_write_json, file_sha256
from lscindex._location import PathOrUrl, as_location
from lscindex.assignment import table_sha256
from lscindex.errors import ConfigError, RunError

__all__ = [
    "FORMAT_VERSION",
    "Run",
    "check_out_dir",
    "eval_data_config",
    "load_assignment",
    "load_run_config",
    "load_weights",
    "open_run",
    "publish_weights",
    "read_metrics",
    "record_store",
    "recorded_stores",
    "run_fingerprint",
    "save_assignment",
    "save_weights",
    "write_class_names",
    "write_metrics",
    "write_run_config",
]

FORMAT_VERSION = 1
# What config.json's data_config means. 2: exactly the eval transform's timm data config
# (``timm.data.create_transform(**data_config)``). 1 (runs written before the key existed): the
# backbone's timm defaults, whose crop_pct/crop_mode lscindex never used: it evaluated those runs
# with crop_pct 1.0, crop_mode "center", and still does, so their embeddings stay bit-identical.
DATA_CONFIG_VERSION = 2
CONFIG = "config.json"
CLASSES = "classes.json"
CLASS_KEYS = "class_keys.json"
WEIGHTS = "model.safetensors"
ASSIGNMENT = "assignment.safetensors"
METRICS = "metrics.jsonl"
CURVES = "curves.png"
STORES = "stores.json"
CHECKPOINTS = "checkpoints"


def save_weights(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Atomically save tensors (moved to CPU, made contiguous) as a safetensors file, with the
    sha256 of their contents in its metadata (``tensors_sha256``, checked by ``verify``)."""
    from safetensors.torch import save

    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {**dict(metadata or {}), TENSORS_SHA256: tensors_sha256(clean)}
    atomic_write_bytes(path, save(clean, metadata=meta))


TENSORS_SHA256 = "tensors_sha256"


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order (64 hex digits):
    what a safetensors file holds, whatever its header's layout."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().data)  # a view: no copy
    return digest.hexdigest()


def _weights_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    if not path.is_file():
        raise RunError(f"weights file {path} does not exist; train a run first")
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def weights_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape from a safetensors header (no tensor is read).

    Raises:
        RunError: the file is missing or its header is damaged.
    """
    from safetensors import safe_open

    if not path.is_file():
        raise RunError(f"weights file {path} does not exist; train or resume the run")
    try:
        with safe_open(str(path), framework="numpy") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118 (not iterable)
    except Exception as exc:  # safetensors' own error on a truncated or crafted header
        raise RunError(f"{path} is damaged ({str(exc)[:160]}); resume or retrain the run") from None


def check_weights_fit(model: torch.nn.Module, path: Path, config_path: Path) -> None:
    """Refuse weights whose tensor names or shapes differ from what ``model`` (built from
    ``config_path``) holds: a config edited after training, or weights of another run.

    Raises:
        RunError: naming the first differing tensor, both shapes and both files.
    """
    shapes = weights_shapes(path)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    for name in sorted(expected.keys() | shapes.keys()):
        held, wanted = shapes.get(name), expected.get(name)
        if held != wanted:
            what = (
                f"{name} is {held or 'missing'} in {path.name} but {wanted or 'absent'} in the "
                f"model {config_path.name} describes"
            )
            raise RunError(
                f"weights {path} do not fit {config_path}: {what}; the config or the weights "
                f"were changed after training: restore both from the same run, or retrain"
            )


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
    names = [CONFIG, WEIGHTS]
    if (run_dir / ASSIGNMENT).is_file():  # runs with the codec have none: fingerprints unchanged
        names.append(ASSIGNMENT)
    return file_sha256([run_dir / name for name in names])[:16]


def check_out_dir(out: Path, resume: bool) -> dict[str, Any] | None:
    """The saved config when resuming; refuses to write over anything else."""
    if resume:
        if not (out / CONFIG).is_file():
            raise RunError(
                f"--resume given but {out} holds no run; drop --resume to start one there"
            )
        return load_run_config(out)
    if (out / CONFIG).is_file():
        raise RunError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out"
        )
    if out.exists() and any(out.iterdir()):
        raise RunError(f"{out} is not empty and is not an lscindex run; choose another --out")
    return None


def load_run_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed config.json of a run, checked before anything is built from it.

    Checked: a JSON object of a known ``format_version``; ``model`` a valid
    :class:`~lscindex.model.ModelConfig` of a timm backbone, sizes in range; ``train`` an
    object (what ``--resume`` compares); ``data_config`` the eval transform of that model (see
    :func:`eval_data_config`), ``data_config_version`` absent, 1 or 2.

    Raises:
        RunError: no config.json, or one that is not JSON, of another format version, or with a
            section missing, of the wrong type or out of range (the message names the file and
            the key).
    """
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise RunError(
            f"{run_dir} is not an lscindex run (no {CONFIG}); train one with lscindex train"
        )
    config = _read_json(path)
    if not isinstance(config, dict):
        raise RunError(
            f"{path} holds a JSON {type(config).__name__}, not a run config object; {_DAMAGED}"
        )
    version = config.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise RunError(
            f"run {run_dir} has format_version {version!r}, this lscindex reads {FORMAT_VERSION}; "
            f"upgrade lscindex or retrain"
        )
    _check_run_config(path, config)
    return config


_DAMAGED = "the file is damaged or was edited: restore it or train the run again"
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")  # timm's
_CROP_MODES = ("center", "squash", "border")  # timm's


def _read_json(path: Path) -> Any:
    """The JSON value in ``path``; RunError naming the file when it is not JSON."""
    try:
        return json.loads(path.read_bytes())
    except UnicodeDecodeError as exc:
        raise RunError(f"{path} is not UTF-8 JSON ({exc.reason}); {_DAMAGED}") from exc
    except json.JSONDecodeError as exc:
        raise RunError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            f"{_DAMAGED}"
        ) from exc
    except RecursionError as exc:
        raise RunError(f"{path} is not a run file (JSON nested too deeply); {_DAMAGED}") from exc


def _check_run_config(path: Path, config: dict[str, Any]) -> None:
    """Check the sections of a parsed config.json; RunError naming the file and the key."""
    from lscindex.model import ModelConfig, check_backbone

    for key in ("model", "train", "data_config"):
        if key not in config:
            raise RunError(f"{path} lacks the {key!r} section; {_DAMAGED}")
        if not isinstance(config[key], dict):
            raise RunError(
                f"{path}: {key!r} must be a JSON object, got {type(config[key]).__name__}; "
                f"{_DAMAGED}"
            )
    try:
        model = ModelConfig.from_dict(config["model"])
        check_backbone(model.backbone)
    except ConfigError as exc:
        raise RunError(f"{path}: 'model': {exc}; {_DAMAGED}") from exc
    _check_data_config(path, config, model.in_chans, model.img_size)


def _check_data_config(path: Path, config: dict[str, Any], in_chans: int, img_size: int) -> None:
    """Check ``data_config`` (and its version) builds the eval transform of the model."""
    from lscindex.model import DATA_CONFIG_KEYS

    version = config.get("data_config_version", 1)
    if type(version) is not int or version not in (1, DATA_CONFIG_VERSION):
        raise RunError(
            f"{path}: 'data_config_version' {version!r} is not one this lscindex reads "
            f"(1 or {DATA_CONFIG_VERSION}); upgrade lscindex or retrain"
        )
    data_config = config["data_config"]
    if version == DATA_CONFIG_VERSION:
        # Every key goes to timm.data.create_transform: an unknown one would change the
        # transform, a missing one would fall back to timm's ImageNet crop.
        if set(data_config) != set(DATA_CONFIG_KEYS):
            raise RunError(
                f"{path}: 'data_config' has keys {sorted(data_config)}, expected exactly "
                f"{sorted(DATA_CONFIG_KEYS)}; {_DAMAGED}"
            )
        crop_pct = data_config["crop_pct"]
        if isinstance(crop_pct, bool) or not isinstance(crop_pct, int | float) or crop_pct <= 0:
            raise RunError(
                f"{path}: 'data_config' crop_pct must be a positive number, got {crop_pct!r}; "
                f"{_DAMAGED}"
            )
        if data_config["crop_mode"] not in _CROP_MODES:
            raise RunError(
                f"{path}: 'data_config' crop_mode {data_config['crop_mode']!r} is not one of "
                f"{', '.join(_CROP_MODES)}; {_DAMAGED}"
            )
    expected = [in_chans, img_size, img_size]
    if data_config.get("input_size") != expected:
        raise RunError(
            f"{path}: 'data_config' input_size {data_config.get('input_size')!r} is not the "
            f"model's [in_chans, img_size, img_size] = {expected}; {_DAMAGED}"
        )
    if data_config.get("interpolation") not in _INTERPOLATIONS:
        raise RunError(
            f"{path}: 'data_config' interpolation {data_config.get('interpolation')!r} is not "
            f"one of {', '.join(_INTERPOLATIONS)}; {_DAMAGED}"
        )
    for key in ("mean", "std"):
        value = data_config.get(key)
        if not (
            isinstance(value, list)
            and len(value) == in_chans
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
            and (key == "mean" or all(v > 0 for v in value))
        ):
            raise RunError(
                f"{path}: 'data_config' {key} must be {in_chans} "
                f"{'positive ' if key == 'std' else ''}numbers, got {value!r}; {_DAMAGED}"
            )


def _load_class_names(run_dir: Path, n_classes: int) -> tuple[ClassNames, ClassNames]:
    """classes.json, and class_keys.json where there is one (else the names again)."""
    names = _read_names(run_dir / CLASSES, n_classes)
    keys_path = run_dir / CLASS_KEYS
    return names, _read_names(keys_path, n_classes) if keys_path.is_file() else names


def _read_names(path: Path, n_classes: int) -> ClassNames:
    """A JSON list of ``n_classes`` strings; RunError naming the file otherwise."""
    if not path.is_file():
        raise RunError(f"{path} does not exist; the run is incomplete, train it again")
    try:
        names = parse_names_json(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        names = None
    if names is None or len(names) != n_classes:
        # the slow parse, only to say what is wrong (not JSON, not a list, not strings)
        value = _read_json(path) if names is None else names
        got = (
            f"a list of {len(value):,}"
            if isinstance(value, list | ClassNames)
            else type(value).__name__
        )
        raise RunError(
            f"{path} must list the run's {n_classes:,} class names as strings, got {got}; "
            f"{_DAMAGED}"
        )
    return names


def write_run_config(
    run_dir: str | os.PathLike[str],
    *,
    model: Mapping[str, Any],
    train: Mapping[str, Any],
    data: Mapping[str, Any],
    data_config: Mapping[str, Any],
) -> None:
    """Write config.json: everything later stages need to rebuild the model, never re-asked.

    ``data_config`` must be the eval transform's (:attr:`lscindex.model.Encoder.data_config`):
    it is stored with ``data_config_version`` 2, which says so.
    """
    from lscindex.model import DATA_CONFIG_KEYS

    if set(data_config) != set(DATA_CONFIG_KEYS):
        raise ConfigError(
            f"data_config has keys {sorted(data_config)}, expected exactly "
            f"{sorted(DATA_CONFIG_KEYS)}; pass Encoder.data_config"
        )
    atomic_write_json(
        Path(run_dir) / CONFIG,
        {
            "format_version": FORMAT_VERSION,
            "model": dict(model),
            "train": dict(train),
            "data": dict(data),
            "data_config": {
                k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()
            },
            "data_config_version": DATA_CONFIG_VERSION,
        },
    )


def eval_data_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The timm data config a run's eval transform is built from (open_run, embed, query).

    Args:
        config: a run's parsed config.json (:func:`load_run_config`).

    Returns:
        The keys of :data:`lscindex.model.DATA_CONFIG_KEYS` (lists as JSON stores them):
        ``timm.data.create_transform(**it)`` is the run's eval transform. That is the stored
        ``data_config`` itself, except in runs written before ``data_config_version``: their
        stored crop_pct/crop_mode were never used, crop_pct 1.0 and crop_mode "center" were.
    """
    from lscindex.model import EVAL_CROP

    data_config = dict(config["data_config"])
    if config.get("data_config_version", 1) == DATA_CONFIG_VERSION:
        return data_config
    kept = ("input_size", "interpolation", "mean", "std")
    return {**{k: data_config[k] for k in kept}, **EVAL_CROP}


def write_class_names(
    run_dir: str | os.PathLike[str], names: Sequence[str], keys: Sequence[str]
) -> None:
    """Write classes.json, and class_keys.json where the keys differ from the names."""
    run_dir = Path(run_dir)
    # a block of names at a time: at 10^5-10^6 classes a list of them costs more than the rest
    atomic_write_bytes(run_dir / CLASSES, names_json_bytes(names))
    if keys is not names and keys != names:
        atomic_write_bytes(run_dir / CLASS_KEYS, names_json_bytes(keys))


def read_metrics(
    run_dir: str | os.PathLike[str], *, before_epoch: int | None = None
) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl ([] when there is none), up to epoch ``before_epoch``."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except ValueError as exc:  # not UTF-8, or not JSON
        raise RunError(f"{path} is not JSON lines ({exc}); {_DAMAGED}") from exc
    if not all(isinstance(r, dict) and isinstance(r.get("epoch"), int) for r in rows):
        raise RunError(f"{path} holds a row that is not an epoch's metrics; {_DAMAGED}")
    return [r for r in rows if before_epoch is None or r["epoch"] <= before_epoch]


def write_metrics(run_dir: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """Atomically replace metrics.jsonl with ``rows`` (one JSON object per finished epoch)."""
    text = "".join(json.dumps(dict(row)) + "\n" for row in rows)
    atomic_write_bytes(Path(run_dir) / METRICS, text.encode())


def publish_weights(
    run_dir: str | os.PathLike[str],
    model: Mapping[str, torch.Tensor],
    *,
    epoch: int,
    global_step: int,
    assignment: np.ndarray | None,
) -> None:
    """Refresh the run's model.safetensors (and assignment.safetensors) for embed and query."""
    run_dir = Path(run_dir)
    metadata = {"epoch": str(epoch), "global_step": str(global_step)}
    if assignment is not None:
        # Two files cannot be replaced at once: the weights name the table they go with, so a
        # crash between the two writes is detected by open_run instead of decoding wrongly.
        save_assignment(run_dir / ASSIGNMENT, assignment)
        metadata["assignment_sha256"] = table_sha256(assignment)
    save_weights(run_dir / WEIGHTS, model, metadata)


def record_store(
    run_dir: str | os.PathLike[str], store: PathOrUrl, *, store_id: str, count: int
) -> None:
    """Note a finished store in the run's stores.json, so query can find it with no flags."""
    listing = Path(run_dir) / STORES
    try:
        stores = json.loads(listing.read_text()) if listing.is_file() else []
    except ValueError:
        stores = []
    if not isinstance(stores, list):  # a damaged registry of ours: start it again
        stores = []
    stores = [s for s in stores if isinstance(s, dict)]
    entry = {"path": str(as_location(store).resolve()), "store_id": store_id, "count": count}
    stores = [s for s in stores if s.get("path") != entry["path"]] + [entry]
    atomic_write_json(listing, stores)


def recorded_stores(run_dir: str | os.PathLike[str]) -> list[str]:
    """The stores recorded for a run (paths or URLs), oldest first (whether or not they still
    exist)."""
    listing = Path(run_dir) / STORES
    if not listing.is_file():
        return []
    entries = _read_json(listing)
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("path"), str) for e in entries
    ):
        raise RunError(f"{listing} is not a list of stores; {_DAMAGED}")
    return [entry["path"] for entry in entries]


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
        transform: timm eval transform of :func:`eval_data_config` (PIL RGB image ->
            (3, H, W) float32 tensor).
        fingerprint: :func:`run_fingerprint` of the run.
    """

    path: Path
    config: dict[str, Any]
    model: Any
    system: Any
    class_names: Sequence[str]
    class_keys: Sequence[str]
    transform: Any
    fingerprint: str
    device: torch.device

    def __repr__(self) -> str:
        head = f"{self.system.kind}, dim {self.system.dim}" if self.system is not None else "ce"
        return (
            f"Run({str(self.path)!r}, {self.config['model']['backbone']}, {head}, "
            f"{len(self.class_names):,} classes, fingerprint {self.fingerprint}, {self.device})"
        )


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
    from lscindex._distributed import select_device

    target = select_device(device)
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
    check_weights_fit(model, run_dir / WEIGHTS, run_dir / CONFIG)
    model.load_state_dict(load_weights(run_dir / WEIGHTS))
    model.eval().to(target)
    names, keys = _load_class_names(run_dir, model_config.n_classes)
    transform = create_eval_transform(eval_data_config(config))
    return Run(
        path=run_dir,
        config=config,
        model=model,
        system=system,
        class_names=names,
        class_keys=keys,
        transform=transform,
        fingerprint=run_fingerprint(run_dir),
        device=target,
    )
