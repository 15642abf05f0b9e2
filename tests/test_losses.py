"""lscindex.losses against explicit per-sample loops."""

from __future__ import annotations

import math

import numpy as np
import torch

from lscindex import VectorSystem
from lscindex.losses import CosineTargetLoss, CrossEntropyLoss, create_loss


def test_cosine_target_loss_equals_a_per_sample_loop() -> None:
    system = VectorSystem.create("v21", 600_000)
    torch.manual_seed(0)
    e = torch.randn(16, system.dim, requires_grad=True)
    labels = torch.randint(0, 600_000, (16,))
    loss = CosineTargetLoss(system)(e, labels)
    expected = 0.0
    for row, label in zip(e.detach().numpy(), labels.tolist(), strict=True):
        t = system.targets([label])[0].astype(np.float64)
        expected += 1 - float(row @ t) / (np.linalg.norm(row) * np.linalg.norm(t))
    assert math.isclose(float(loss.detach()), expected / 16, rel_tol=1e-5)
    loss.backward()
    assert e.grad is not None and torch.isfinite(e.grad).all()


def test_cosine_loss_is_zero_on_targets_and_ignores_scale() -> None:
    system = VectorSystem.create("v22", 5000)
    labels = torch.tensor([0, 17, 4999])
    targets = torch.from_numpy(system.targets(labels.numpy()))
    assert float(CosineTargetLoss(system)(3.0 * targets, labels)) < 1e-6
    assert math.isclose(float(CosineTargetLoss(system)(-targets, labels)), 2.0, rel_tol=1e-6)


def test_cross_entropy_equals_a_loop() -> None:
    torch.manual_seed(1)
    logits, labels = torch.randn(5, 7), torch.randint(0, 7, (5,))
    expected = -sum(float(torch.log_softmax(logits[i], 0)[labels[i]]) for i in range(5)) / 5
    assert math.isclose(float(CrossEntropyLoss()(logits, labels)), expected, rel_tol=1e-6)


def test_create_loss_matches_the_head() -> None:
    system = VectorSystem.create("v21", 10)
    assert isinstance(create_loss("lsc", system), CosineTargetLoss)
    assert isinstance(create_loss("ce", None), CrossEntropyLoss)


def test_hard_negative_loss_equals_an_explicit_softmax_over_the_nearest_wrong_targets() -> None:
    from lscindex.losses import HardNegativeLoss

    system = VectorSystem.create("v21", 3000)
    torch.manual_seed(2)
    e = torch.randn(6, system.dim, requires_grad=True)
    labels = torch.randint(0, 3000, (6,))
    loss = HardNegativeLoss(system, negatives=5, scale=10.0)(e, labels)
    # reference: rank every class by cosine, keep the 5 best that are not the label
    every = torch.from_numpy(system.targets(np.arange(3000))).double()
    unit = torch.nn.functional.normalize(e.detach().double(), dim=1)
    total = 0.0
    for row, label in zip(unit, labels.tolist(), strict=True):
        cos = every @ row
        order = [int(i) for i in torch.argsort(cos, descending=True) if int(i) != label][:5]
        logits = 10.0 * torch.cat([cos[[label]], cos[order]])
        total += float(-torch.log_softmax(logits, 0)[0])
    assert math.isclose(float(loss.detach()), total / 6, rel_tol=1e-5)
    loss.backward()
    assert e.grad is not None and torch.isfinite(e.grad).all()


def test_unknown_loss_name() -> None:
    import pytest

    from lscindex.errors import ConfigError

    with pytest.raises(ConfigError, match="loss must be one of"):
        create_loss("lsc", VectorSystem.create("v21", 10), "hinge")
