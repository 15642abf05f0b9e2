"""Training losses. Each takes the model output and integer labels; none holds anything class-sized.

* :class:`CosineTargetLoss`: ``1 - cos(e, t_y)`` against each sample's fixed target (the paper's
  loss); targets come from the codec per batch.
* :class:`HardNegativeLoss`: a softmax over the true target and the nearest wrong targets, which
  the decoder finds in O(dim) per sample (aimed at LSC converging slower than cross-entropy).
* :class:`CrossEntropyLoss`: the learned-head baseline.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lscindex.errors import ConfigError
from lscindex.systems import VectorSystem

__all__ = ["LOSSES", "CosineTargetLoss", "CrossEntropyLoss", "HardNegativeLoss", "create_loss"]

LOSSES = ("cosine", "hard-negative")


class CosineTargetLoss(nn.Module):
    """Mean cosine distance between embeddings and their classes' targets.

    Args:
        system: the vector system whose targets the classes own.

    Shapes:
        embeddings (B, dim) float (normalised or not), labels (B,) int64 -> scalar.
    """

    def __init__(self, system: VectorSystem) -> None:
        super().__init__()
        self.system = system

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        targets = torch.from_numpy(self.system.targets(labels.detach().cpu().numpy()))
        targets = targets.to(device=embeddings.device, dtype=torch.float32)
        cos = F.cosine_similarity(embeddings.float(), targets, dim=1)
        return (1.0 - cos).mean()


class HardNegativeLoss(nn.Module):
    """Cross-entropy over ``scale * cos(e, t)`` for the true target and the ``negatives`` nearest
    wrong targets of each embedding.

    The negatives come from :meth:`VectorSystem.decode` (no gradient through the search), so the
    cost is O(B * negatives * dim): nothing of size n_classes, unlike a softmax head.

    Args:
        system: the vector system.
        negatives: wrong targets per sample (capped at n_classes - 1).
        scale: inverse temperature of the softmax.

    Shapes:
        embeddings (B, dim) float, labels (B,) int64 -> scalar.
    """

    def __init__(self, system: VectorSystem, *, negatives: int = 16, scale: float = 16.0) -> None:
        super().__init__()
        self.system = system
        self.negatives = max(1, min(negatives, system.n_classes - 1))
        self.scale = scale

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        e = F.normalize(embeddings.float(), dim=1)
        k = self.negatives
        found = self.system.decode(e.detach(), k=k + 1).ids  # (B, k+1), may include the label
        true = labels.detach().cpu().numpy()
        is_true = found == true[:, None]
        # per row: the k best ids that are not the label (stable: keeps score order)
        order = np.argsort(is_true, axis=1, kind="stable")[:, :k]
        negatives = np.take_along_axis(found, order, axis=1)
        candidates = np.concatenate([true[:, None], negatives], axis=1)  # true class first
        targets = torch.from_numpy(self.system.targets(candidates.reshape(-1)))
        targets = targets.view(len(e), k + 1, -1).to(device=e.device, dtype=torch.float32)
        logits = self.scale * torch.einsum("bd,bkd->bk", e, targets)
        return F.cross_entropy(logits, torch.zeros(len(e), dtype=torch.long, device=e.device))


class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy over learned logits (B, n_classes)."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels)


def create_loss(head: str, system: VectorSystem | None, loss: str = "cosine") -> nn.Module:
    """The loss of a model head: ``loss`` (cosine or hard-negative) for ``lsc``, CE for ``ce``."""
    if head != "lsc":
        return CrossEntropyLoss()
    if system is None:
        raise ValueError("the lsc loss needs a vector system")
    if loss == "hard-negative":
        return HardNegativeLoss(system)
    if loss == "cosine":
        return CosineTargetLoss(system)
    raise ConfigError(f"loss must be one of {LOSSES}, got {loss!r}")
