"""Training losses. Each takes the model output and integer labels; none holds anything class-sized.

* :class:`CosineTargetLoss`: ``1 - cos(e, t_y)`` against each sample's fixed target (the paper's
  loss); targets come from the codec per batch.
* :class:`LatticeSoftmaxLoss`: the cosine plus a softmax cross-entropy over *every* vector of
  the system (owned by a class or not), in O(dim) per sample through
  :func:`lattice_log_partition`: the push away from neighbouring targets that a regression to
  one target lacks, with no (n_vectors x dim) matrix at any class count.
* :class:`CrossEntropyLoss`: the learned-head baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lscindex.kinds import parse_kind
from lscindex.systems import VectorSystem

__all__ = [
    "CosineTargetLoss",
    "CrossEntropyLoss",
    "LatticeSoftmaxLoss",
    "create_loss",
    "lattice_log_partition",
]


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
        # normalised first, as the model's unit output always was: the raw projection output
        # that training passes gives the same numbers to the last bit
        cos = F.cosine_similarity(F.normalize(embeddings.float(), dim=1), targets, dim=1)
        return (1.0 - cos).mean()


def lattice_log_partition(z: torch.Tensor, kind: str, alpha: float) -> torch.Tensor:
    """``log sum_v exp(alpha * v . z)`` over every vector ``v`` of a system, in O(dim) per row.

    For V^{ab} the sum is the coefficient of ``x^a y^b`` in ``prod_i (1 + x E_i + y F_i)`` with
    ``E_i = exp(alpha z_i)`` and ``F_i = exp(-alpha z_i)`` (each coordinate is +1, -1 or 0, never
    two of them), computed by a dynamic programme over the coordinates: O(dim a b) per row, sums
    of positive terms only. (The closed forms, e.g. ``S_F (S_E^2 - sum E_i^2) / 2 - (n - 1) S_E``
    for V21 with ``S_E = sum E_i``, cancel catastrophically once one coordinate dominates.)
    Sign-symmetric kinds add the same sum at ``-z``. Exponentials are shifted by the row's
    largest and smallest coordinate, so nothing overflows; the arithmetic is float64.

    Args:
        z: (B, dim) float outputs (raw or normalised: ``v . z`` is what is exponentiated).
        kind: the system kind (``"v21"``, ``"v11"``, ``"v21s"``, ...).
        alpha: scale of the logits ``alpha * v . z`` (for unit targets: scale / ||v||).

    Returns:
        (B,) float64 log-partition, differentiable in ``z``.

    Example:
        >>> z = torch.randn(2, 18)
        >>> lattice_log_partition(z, "v21", 5.0).shape
        torch.Size([2])
    """
    spec = parse_kind(kind)
    x = z.double()
    out = _log_partition_half(x, spec.a, spec.b, alpha)
    if spec.symmetric:
        out = torch.logaddexp(out, _log_partition_half(-x, spec.a, spec.b, alpha))
    return out


def _log_partition_half(x: torch.Tensor, a: int, b: int, alpha: float) -> torch.Tensor:
    hi = x.max(dim=1, keepdim=True).values
    lo = x.min(dim=1, keepdim=True).values
    e = torch.exp(alpha * (x - hi))  # <= 1
    f = torch.exp(-alpha * (x - lo))  # <= 1
    total = e.sum(1) if (a, b) == (1, 0) else _coefficient(e, f, a, b)
    # the shift: every term has exactly a factors E and b factors F
    return torch.log(total) + alpha * (a * hi[:, 0] - b * lo[:, 0])


def _coefficient(e: torch.Tensor, f: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """(B,) coefficient of x^a y^b in prod_i (1 + x e_i + y f_i), over the coordinates."""
    zero = torch.zeros_like(e[:, 0])
    c = [[zero + 1 if p == m == 0 else zero for m in range(b + 1)] for p in range(a + 1)]
    for i in range(e.shape[1]):
        ei, fi = e[:, i], f[:, i]
        for p in range(a, -1, -1):  # higher degrees first: they read this step's inputs
            for m in range(b, -1, -1):
                if p:
                    c[p][m] = c[p][m] + ei * c[p - 1][m]
                if m:
                    c[p][m] = c[p][m] + fi * c[p][m - 1]
    return c[a][b]


class LatticeSoftmaxLoss(nn.Module):
    """Cosine loss plus ``weight`` x softmax cross-entropy over every vector of the system.

    The logits are ``scale * e . t`` for every (unit) target ``t`` of the lattice, the vectors no
    class owns included (decoding skips them, so they are negatives too); ``e`` is the raw
    projection output, whose norm then acts as a per-sample confidence (von Mises-Fisher style),
    or with ``normalize=True`` the unit embedding. For a centred system the centring shifts every
    logit of a row by the same amount, which the softmax ignores.

    Args:
        system: the vector system whose targets the classes own.
        scale: logit scale.
        weight: weight of the cross-entropy next to the cosine loss.
        normalize: softmax over cosines instead of over the raw output's dot products.

    Shapes:
        embeddings (B, dim) float (raw projection outputs), labels (B,) int64 -> scalar.
    """

    def __init__(
        self,
        system: VectorSystem,
        *,
        scale: float = 1.0,
        weight: float = 1.0,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        self.system = system
        self.scale = scale
        self.weight = weight
        self.normalize = normalize
        spec = parse_kind(system.kind)
        shift = 0.0
        if system.centered and not spec.symmetric:
            shift = (spec.a - spec.b) / system.dim
        # logits alpha * v . e_unit: the (centred) target's norm divides v
        self.alpha = scale / (spec.a + spec.b - shift**2 * system.dim) ** 0.5

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        unit = F.normalize(embeddings.float(), dim=1)
        ids = labels.detach().cpu().numpy()
        targets = torch.from_numpy(self.system.targets(ids)).to(unit.device)
        cosine = (unit * targets).sum(dim=1)
        z = unit if self.normalize else embeddings.float()
        vectors = torch.from_numpy(self.system.vectors(self.system.vector_ids(ids)))
        true = self.alpha * (z.double() * vectors.to(z.device, torch.float64)).sum(dim=1)
        ce = lattice_log_partition(z, self.system.kind, self.alpha) - true
        return (1.0 - cosine).mean() + self.weight * ce.mean().float()


class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy over learned logits (B, n_classes)."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels)


def create_loss(
    head: str,
    system: VectorSystem | None,
    *,
    loss: str = "cosine",
    scale: float = 1.0,
    weight: float = 1.0,
) -> nn.Module:
    """The loss of a model head: for ``lsc`` the cosine to the target (``loss="cosine"``) or
    :class:`LatticeSoftmaxLoss` (``loss="lattice"``, with ``scale`` and ``weight``); for ``ce``
    the cross-entropy."""
    if head == "lsc":
        if system is None:
            raise ValueError("the lsc loss needs a vector system")
        if loss == "lattice":
            return LatticeSoftmaxLoss(system, scale=scale, weight=weight)
        return CosineTargetLoss(system)
    return CrossEntropyLoss()
