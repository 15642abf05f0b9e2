"""Encoders: a timm backbone with either a projection onto the vector system or a softmax head.

``head="lsc"``: backbone (``num_classes=0``) -> linear projection to the system's dim -> L2
normalise. Nothing in the model depends on the number of classes.
``head="ce"``: the same backbone with an ordinary learned linear head (n_classes logits), the
cross-entropy baseline.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lscindex.errors import ConfigError
from lscindex.systems import VectorSystem

__all__ = [
    "DATA_CONFIG_KEYS",
    "EVAL_CROP",
    "MAX_CLASSES",
    "MAX_DIM",
    "MAX_IMG_SIZE",
    "Encoder",
    "ModelConfig",
    "create_eval_transform",
    "create_model",
    "create_train_transform",
    "encode",
    "top_classes",
]

# Bounds on a config's sizes: far beyond any real run, low enough that a crafted config.json is
# refused by name instead of allocating a head of terabytes.
MAX_CLASSES = 100_000_000
MAX_DIM = 1_048_576
MAX_IMG_SIZE = 8_192
MAX_IN_CHANS = 16

# The keys of a data config, as timm.data.create_transform takes them: a run's stored data config
# is exactly these, so ``timm.data.create_transform(**data_config)`` is the run's eval transform.
DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
# Resize the short side to img_size and centre-crop: a square image is kept whole. Not the
# backbone's ImageNet crop (timm's crop_pct 0.875-0.95), which cuts glyph edges off.
EVAL_CROP: Mapping[str, Any] = MappingProxyType({"crop_pct": 1.0, "crop_mode": "center"})


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Everything needed to rebuild an encoder (saved in a run's config.json).

    Attributes:
        backbone: timm model name.
        head: ``"lsc"`` (projection onto fixed targets) or ``"ce"`` (learned softmax head).
        n_classes: number of classes.
        system: :meth:`VectorSystem.to_dict` for ``head="lsc"``, else None. A data-assigned
            system's table is not part of the config (a run keeps it in
            ``assignment.safetensors``).
        img_size: square input side in pixels.
        in_chans: input channels (images are converted to RGB, so 3).
    """

    backbone: str
    head: Literal["lsc", "ce"] = "lsc"
    n_classes: int
    system: dict[str, Any] | None = None
    img_size: int = 32
    in_chans: int = 3

    def __post_init__(self) -> None:
        # Types and sizes are checked here, before anything is built: a config.json edited by
        # hand must fail with the key's name, not with a TypeError deep in torch or an
        # allocation of terabytes.
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ConfigError(f"backbone must be a timm model name, got {self.backbone!r}")
        if self.head not in ("lsc", "ce"):
            raise ConfigError(f"head must be 'lsc' or 'ce', got {self.head!r}")
        _check_size("n_classes", self.n_classes, 1, MAX_CLASSES)
        _check_size("img_size", self.img_size, 8, MAX_IMG_SIZE, unit=" pixels")
        _check_size("in_chans", self.in_chans, 1, MAX_IN_CHANS)
        if self.head == "lsc" and self.system is None:
            raise ConfigError("head='lsc' needs a vector system spec (system=...)")
        if self.head == "ce" and self.system is not None:
            raise ConfigError("head='ce' has a learned softmax head and takes no system spec")
        if self.system is not None:
            if not isinstance(self.system, dict):
                raise ConfigError(
                    f"system must be a vector system spec (a dict), got "
                    f"{type(self.system).__name__}"
                )
            if self.system.get("n_classes") != self.n_classes:
                raise ConfigError(
                    f"system n_classes {self.system.get('n_classes')!r} differs from n_classes "
                    f"{self.n_classes}; the two must agree"
                )
            if self.system.get("dim") is not None:
                _check_size("system dim", self.system["dim"], 1, MAX_DIM)
            _check_size("system dim", self.out_dim, 1, MAX_DIM)  # also checks kind, seed, ...

    @property
    def out_dim(self) -> int:
        """Width of the model output: the system's dim (lsc) or n_classes (ce)."""
        if self.system is None:
            return self.n_classes
        # The dim does not depend on which vector each class owns: size the codec system.
        spec = {k: v for k, v in self.system.items() if k != "assignment"}
        return VectorSystem.from_dict(spec).dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, data)


def _from_dict(cls: Any, data: Any) -> Any:
    """Build a keyword-only config dataclass, rejecting a non-dict, unknown and missing keys."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"a {cls.__name__} must be a JSON object of its fields, got {type(data).__name__}"
        )
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        raise ConfigError(
            f"unknown {cls.__name__} key(s) {', '.join(map(repr, unknown))}; expected some of "
            f"{sorted(names)}"
        )
    required = [
        f.name
        for f in fields(cls)
        if f.default is MISSING and f.default_factory is MISSING and f.name not in data
    ]
    if required:
        raise ConfigError(f"{cls.__name__} lacks key(s) {', '.join(map(repr, required))}")
    return cls(**data)


def _check_size(name: str, value: Any, low: int, high: int, *, unit: str = "") -> None:
    """Raise ConfigError unless ``value`` is an int (not a bool) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name} must be an integer in [{low}, {high:,}]{unit}, got {value!r}")


def check_backbone(name: str) -> None:
    """Raise ConfigError naming close matches when timm has no model called ``name``."""
    import timm

    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
    raise ConfigError(f"unknown timm model {name!r}{hint}")


class Encoder(nn.Module):
    """timm backbone plus head; ``forward`` gives (B, dim) unit embeddings (lsc) or logits (ce)."""

    def __init__(self, config: ModelConfig, *, pretrained: bool = False) -> None:
        super().__init__()
        import timm

        check_backbone(config.backbone)
        self.config = config
        try:
            self.backbone = timm.create_model(
                config.backbone, pretrained=pretrained, num_classes=0, in_chans=config.in_chans
            )
        except Exception as exc:
            if not pretrained:
                raise
            raise ConfigError(
                f"could not load pretrained weights for {config.backbone!r} ({exc}); "
                f"train without --pretrained or make the weights available to timm offline"
            ) from exc
        # Pooled output width: timm calls it head_hidden_size where a pre-logits layer sits
        # between the trunk and the classifier (MobileNetV3, some ConvNeXts), else num_features.
        pooled = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
        self.feature_dim = int(pooled)  # type: ignore[arg-type]
        self.head = nn.Linear(self.feature_dim, config.out_dim)

    @property
    def data_config(self) -> dict[str, Any]:
        """The eval transform's timm data config: ``timm.data.create_transform(**data_config)``.

        Keys :data:`DATA_CONFIG_KEYS`: ``input_size`` (in_chans, img_size, img_size) tuple;
        ``interpolation`` str, ``mean`` and ``std`` (in_chans,) float tuples from the backbone's
        pretrained config; :data:`EVAL_CROP` (crop_pct 1.0, crop_mode "center"). Training
        writes it to config.json and builds its validation transform from it.
        """
        import timm.data

        cfg = timm.data.resolve_data_config({}, model=self.backbone)
        return {
            "input_size": (self.config.in_chans, self.config.img_size, self.config.img_size),
            "interpolation": cfg["interpolation"],
            "mean": tuple(cfg["mean"]),
            "std": tuple(cfg["std"]),
            **EVAL_CROP,
        }

    @property
    def embed_dim(self) -> int:
        """Width of :meth:`embed`: the system's dim (lsc) or the pooled feature width (ce)."""
        return self.config.out_dim if self.config.head == "lsc" else self.feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, F) pooled backbone features."""
        out: torch.Tensor = self.backbone(x)
        return out

    def forward(self, x: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        """(B, dim) unit embeddings (lsc; with ``normalize=False`` the projection's raw output,
        whose norm a softmax loss may use as a confidence) or (B, n_classes) logits (ce)."""
        out = self.head(self.features(x))
        if self.config.head == "lsc" and normalize:
            return F.normalize(out.float(), dim=1)
        return out

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim) float32 L2-normalised embeddings (lsc: the latent; ce: pooled features)."""
        if self.config.head == "lsc":
            return self.forward(x)
        return F.normalize(self.features(x).float(), dim=1)


def create_eval_transform(data_config: Mapping[str, Any]) -> Any:
    """timm's eval transform of a data config: ``timm.data.create_transform(**data_config)``.

    Training validation, ``embed`` and ``query`` all use this one, so their accuracies agree.

    Args:
        data_config: exactly the keys :data:`DATA_CONFIG_KEYS`, e.g. :attr:`Encoder.data_config`
            or a run's :func:`lscindex.run.eval_data_config`; lists (read from JSON) are taken
            as tuples.

    Returns:
        A callable: PIL RGB image -> (in_chans, img_size, img_size) float32 normalised tensor.

    Raises:
        ConfigError: a key missing or unknown (an unknown one would change the transform).

    Example:
        >>> from PIL import Image
        >>> model = create_model(ModelConfig(backbone="test_resnet", head="ce", n_classes=3))
        >>> create_eval_transform(model.data_config)(Image.new("RGB", (40, 30))).shape
        torch.Size([3, 32, 32])
    """
    import timm.data

    if set(data_config) != set(DATA_CONFIG_KEYS):
        raise ConfigError(
            f"a data config has exactly the keys {', '.join(DATA_CONFIG_KEYS)}, got "
            f"{', '.join(map(repr, data_config))}; pass Encoder.data_config or "
            f"lscindex.run.eval_data_config(config)"
        )
    kwargs: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in data_config.items()
    }
    return timm.data.create_transform(**kwargs)


def create_train_transform(data_config: dict[str, Any], *, augment: bool) -> Any:
    """timm's training transform for a run's data config.

    Glyph-friendly augmentation: no flips (mirrored characters are other characters), mild crops
    and no colour jitter; with ``augment=False`` exactly the eval transform
    (:func:`create_eval_transform`: the whole image, as validation, embed and query see it --
    timm's own no-augmentation transform would crop to its default 87.5%).
    """
    import timm.data

    if not augment:
        return create_eval_transform({k: data_config[k] for k in DATA_CONFIG_KEYS})
    return timm.data.create_transform(
        is_training=True,
        scale=(0.7, 1.0),
        ratio=(0.85, 1.18),
        hflip=0.0,
        color_jitter=0.0,
        input_size=data_config["input_size"],
        interpolation=data_config["interpolation"],
        mean=data_config["mean"],
        std=data_config["std"],
    )


def create_model(config: ModelConfig, *, pretrained: bool = False) -> Encoder:
    """Build the encoder of ``config`` (random init unless ``pretrained``).

    Example:
        >>> system = VectorSystem.create("v21", 100)
        >>> model = create_model(ModelConfig(backbone="test_resnet", n_classes=100,
        ...                                  system=system.to_dict(), img_size=32))
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return Encoder(config, pretrained=pretrained)


def encode(
    model: Encoder, images: torch.Tensor, *, amp_dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass, as validation, embed and retrieval all do it.

    Args:
        model: the encoder (not a DDP wrapper), in the mode the caller wants.
        images: (B, 3, H, W) float, on the model's device.
        amp_dtype: autocast dtype, or None for full precision.

    Returns:
        embeddings (B, embed_dim) float32 L2-normalised (lsc: the latent; ce: pooled features),
        and outputs (B, out_dim) float32: the same latent (lsc) or the logits (ce).
    """
    device_type = images.device.type
    with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
        features = model.features(images)
        out = model.head(features)
    if model.config.head == "lsc":
        latent = F.normalize(out.float(), dim=1)
        return latent, latent
    return F.normalize(features.float(), dim=1), out.float()


def top_classes(
    outputs: torch.Tensor, system: VectorSystem | None, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` best classes of each row of :func:`encode`'s outputs, best first.

    Returns:
        ids (B, k) int64, scores (B, k) float32 -- the cosine to the class's target (lsc) or the
        softmax probability (ce) -- and novel (B,) bool (lsc: the nearest target is unassigned;
        always False for ce).
    """
    if system is not None:
        decoded = system.decode(outputs, k=k)
        return decoded.ids, decoded.scores, decoded.novel
    logits = outputs.float()
    ids = logits.topk(k, dim=1).indices  # ranked by logit: no ties from underflowed probabilities
    probs = logits.softmax(dim=1).gather(1, ids)
    novel = np.zeros(len(outputs), dtype=bool)
    return ids.cpu().numpy(), probs.cpu().numpy(), novel
