"""Training losses. Each takes the model output and integer labels; none holds anything class-sized.

* :class:`CosineTargetLoss`: ``1 - cos(e, t_y)`` against each sample's fixed target (the paper's
  loss); targets come from the codec per batch.
* :class:`CrossEntropyLoss`: the learned-head baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lscindex.systems import VectorSystem

__all__ = ["CosineTargetLoss", "CrossEntropyLoss", "create_loss"]


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


class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy over learned logits (B, n_classes)."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels)


def create_loss(head: str, system: VectorSystem | None) -> nn.Module:
    """The loss matching a model head: cosine-to-target for ``lsc``, cross-entropy for ``ce``."""
    if head == "lsc":
        if system is None:
            raise ValueError("the lsc loss needs a vector system")
        return CosineTargetLoss(system)
    return CrossEntropyLoss()
