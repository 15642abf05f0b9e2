"""Plain timm models as encoders: a store of any backbone's pooled features, no training needed.

``lscindex embed DATA --model NAME --checkpoint W.safetensors --out feats.zarr`` embeds with the
L2-normalised pooled features of a timm model (``num_classes=0``), as clip-retrieval or
autofaiss users embed with a pretrained network. The store records the model's spec (name, where
its weights came from, their sha256, the input size) instead of a run, so ``query`` and
``Retriever`` rebuild the same encoder from the store alone. Such an encoder has no classes: a
query is classified by a vote of the labels of its nearest stored items (k-NN), and says so.

Example:
    >>> spec = create_spec("resnet18", checkpoint="resnet18.safetensors")   # doctest: +SKIP
    >>> build_store(spec, ["photos/"], "feats.zarr")                         # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lscindex._io import file_sha256
from lscindex.errors import ConfigError, StoreError
from lscindex.model import DATA_CONFIG_KEYS, MAX_IMG_SIZE, check_backbone

__all__ = ["FeatureEncoder", "FeatureSpec", "create_spec", "open_features"]

HEAD = "features"  # what a Run of a plain timm model reports as its head


@dataclass(frozen=True, kw_only=True)
class FeatureSpec:
    """A plain timm encoder, as a store records it.

    Attributes:
        model: timm model name.
        pretrained: timm's pretrained weights (downloaded by timm, or in its cache).
        checkpoint: a safetensors file of the model's weights (absolute path), or None.
        checkpoint_sha256: its sha256, checked whenever the encoder is rebuilt.
        img_size: square input side; None: the model's own pretrained input size.
    """

    model: str
    pretrained: bool = False
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    img_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Any) -> FeatureSpec:
        """The spec a store recorded, every key checked (StoreError naming what is wrong)."""
        names = {f.name for f in fields(cls)}
        if not isinstance(raw, dict) or set(raw) != names:
            raise StoreError(
                f"a store's encoder spec must be an object with keys {sorted(names)}, got "
                f"{raw!r:.200}; embed the store again"
            )
        types = {"model": str, "pretrained": bool, "checkpoint": str, "checkpoint_sha256": str}
        for key, kind in types.items():
            value = raw[key]
            if not (isinstance(value, kind) or (value is None and key.startswith("checkpoint"))):
                raise StoreError(f"a store's encoder spec has {key} {value!r}; embed it again")
        size = raw["img_size"]
        if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
            raise StoreError(f"a store's encoder spec has img_size {size!r}; embed it again")
        return cls(**raw)

    @property
    def fingerprint(self) -> str:
        """16 hex digits of sha256 over the spec (weights included through their sha256)."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def name(self) -> str:
        """``timm:resnet18`` (+ ``:pretrained`` or ``:<checkpoint file name>``)."""
        weights = (
            ":pretrained"
            if self.pretrained
            else f":{Path(self.checkpoint).name}"
            if self.checkpoint
            else ""
        )
        return f"timm:{self.model}{weights}"


def create_spec(
    model: str,
    *,
    pretrained: bool = False,
    checkpoint: str | os.PathLike[str] | None = None,
    img_size: int | None = None,
) -> FeatureSpec:
    """The spec of a plain timm encoder, its weights named exactly once.

    Raises:
        ConfigError: an unknown model, no weights or both kinds (random weights would give
            embeddings no later query could reproduce), a checkpoint that is not a safetensors
            file, an img_size out of range.
    """
    check_backbone(model)
    if pretrained == (checkpoint is not None):
        raise ConfigError(
            f"a plain timm encoder needs its weights named once: pass pretrained=True "
            f"(--pretrained) or a checkpoint (--checkpoint FILE.safetensors), got "
            f"pretrained={pretrained}, checkpoint={checkpoint!r}"
        )
    if img_size is not None and (
        isinstance(img_size, bool)
        or not isinstance(img_size, int)
        or not 8 <= img_size <= MAX_IMG_SIZE
    ):
        raise ConfigError(f"img_size must be an integer in [8, {MAX_IMG_SIZE}], got {img_size!r}")
    path, digest = None, None
    if checkpoint is not None:
        file = Path(checkpoint)
        if file.suffix != ".safetensors" or not file.is_file():
            raise ConfigError(
                f"checkpoint {file} is not a .safetensors file; save the model's state_dict "
                f"with safetensors.torch.save_file (lscindex never unpickles weights)"
            )
        path, digest = str(file.resolve()), file_sha256([file])
    return FeatureSpec(
        model=model,
        pretrained=pretrained,
        checkpoint=path,
        checkpoint_sha256=digest,
        img_size=img_size,
    )


@dataclass(frozen=True)
class _Config:
    """What :func:`lscindex.model.encode` asks of a model's config."""

    head: str = HEAD


class FeatureEncoder(nn.Module):
    """A timm backbone's pooled features: ``encode`` gives them L2-normalised as embeddings.

    ``head`` is the identity, so :func:`lscindex.model.encode`'s outputs are the raw pooled
    features; there are no classes to decode them into.
    """

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__()
        import timm

        check_backbone(spec.model)
        self.spec, self.config = spec, _Config()
        try:
            self.backbone = timm.create_model(spec.model, pretrained=spec.pretrained, num_classes=0)
        except Exception as exc:
            if not spec.pretrained:
                raise
            raise ConfigError(
                f"could not load timm's pretrained weights of {spec.model!r} ({exc}); pass "
                f"--checkpoint FILE.safetensors, or make the weights available to timm offline"
            ) from exc
        if spec.checkpoint is not None:
            self._load(spec)
        self.head = nn.Identity()
        pooled = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
        self.feature_dim = self.embed_dim = int(pooled)  # type: ignore[arg-type]

    def _load(self, spec: FeatureSpec) -> None:
        """The checkpoint's weights, after its sha256; classifier weights in it are left out."""
        from safetensors.torch import load_file

        file = Path(str(spec.checkpoint))
        if not file.is_file() or file_sha256([file]) != spec.checkpoint_sha256:
            raise StoreError(
                f"checkpoint {file} is missing or changed since the store was embedded (sha256 "
                f"{str(spec.checkpoint_sha256)[:12]}...); restore it or embed the store again"
            )
        try:
            missing, unexpected = self.backbone.load_state_dict(load_file(str(file)), strict=False)
        except RuntimeError as exc:  # tensors of other shapes: another model's weights
            first = next((line.strip() for line in str(exc).splitlines()[1:]), str(exc))
            raise ConfigError(
                f"checkpoint {file} does not fit timm's {spec.model!r} ({first}); pass the "
                f"weights of that model"
            ) from None
        pretrained_cfg: dict[str, Any] = getattr(self.backbone, "pretrained_cfg", {}) or {}
        classifier = str(pretrained_cfg.get("classifier", "fc"))
        foreign = [k for k in unexpected if not k.startswith(f"{classifier}.")]
        if missing or foreign:
            raise ConfigError(
                f"checkpoint {file} does not fit timm's {spec.model!r} (missing "
                f"{missing[:3]}, unexpected {foreign[:3]}); pass the weights of that model"
            )

    @property
    def data_config(self) -> dict[str, Any]:
        """The model's own eval transform (timm's pretrained config), at ``img_size`` if set."""
        import timm.data

        cfg = timm.data.resolve_data_config({}, model=self.backbone)
        if self.spec.img_size is not None:
            cfg["input_size"] = (3, self.spec.img_size, self.spec.img_size)
        return {key: cfg[key] for key in DATA_CONFIG_KEYS}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, F) pooled features."""
        out: torch.Tensor = self.backbone(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def open_features(spec: FeatureSpec, *, device: str = "auto") -> Any:
    """A :class:`lscindex.run.Run` of a plain timm encoder: no classes, no system; its path is the
    spec's name (``timm:resnet18:...``) and its fingerprint the spec's.

    Raises:
        ConfigError, StoreError: see :class:`FeatureEncoder`.
    """
    from lscindex._distributed import select_device
    from lscindex.model import create_eval_transform
    from lscindex.run import Run

    target = select_device(device)
    model = FeatureEncoder(spec).eval().to(target)
    data_config = model.data_config
    return Run(
        path=Path(spec.name),
        config={
            "model": {"backbone": spec.model, "head": HEAD},
            "features": spec.to_dict(),
            "data_config": data_config,
        },
        model=model,
        system=None,
        class_names=[],
        class_keys=[],
        transform=create_eval_transform(data_config),
        fingerprint=spec.fingerprint,
        device=target,
    )
