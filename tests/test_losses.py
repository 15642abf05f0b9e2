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
