"""lscindex.losses against explicit per-sample loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lscindex import VectorSystem
from lscindex.losses import (
    CosineTargetLoss,
    CrossEntropyLoss,
    LatticeSoftmaxLoss,
    create_loss,
    lattice_log_partition,
)


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


def _all_vectors(kind: str, dim: int) -> np.ndarray:
    system = VectorSystem.create(kind, 1, dim=dim)
    return system.vectors(np.arange(system.n_vectors)).astype(np.float64)


@pytest.mark.parametrize("kind", ["v11", "v21", "v22", "v31", "v10", "v21s", "v32s", "v10s"])
@pytest.mark.parametrize("dim", [6, 9])
@pytest.mark.parametrize("alpha", [0.5, 12.0, 60.0])
def test_lattice_log_partition_equals_the_brute_force_sum(
    kind: str, dim: int, alpha: float
) -> None:
    vectors = _all_vectors(kind, dim)
    z = torch.randn(7, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(dim))
    z[0] = 0.0  # every logit equal
    z[1, 2:] = z[1, 1]  # ties among coordinates
    got = lattice_log_partition(z, kind, alpha)
    expected = torch.logsumexp(alpha * z @ torch.from_numpy(vectors).T, dim=1)
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-8)


def test_lattice_log_partition_gradient_equals_brute_force() -> None:
    vectors = torch.from_numpy(_all_vectors("v21", 8))
    z = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    lattice_log_partition(z, "v21", 7.0).sum().backward()
    assert z.grad is not None
    mine = z.grad.clone()
    z.grad = None
    torch.logsumexp(7.0 * z @ vectors.T, dim=1).sum().backward()
    torch.testing.assert_close(mine, z.grad)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("kind", ["v21", "v11", "v21s"])
def test_lattice_softmax_loss_equals_cosine_plus_a_full_softmax(
    kind: str, centered: bool, normalize: bool
) -> None:
    system = VectorSystem.create(kind, 300, centered=centered)
    every = system.vectors(np.arange(system.n_vectors)).astype(np.float64)
    if centered:
        every = every - every.mean(axis=0)
    every /= np.linalg.norm(every, axis=1, keepdims=True)
    torch.manual_seed(1)
    e = 3 * torch.randn(12, system.dim)
    labels = torch.randint(0, 300, (12,))
    loss = LatticeSoftmaxLoss(system, scale=0.9, weight=0.5, normalize=normalize)(e, labels)
    z = torch.nn.functional.normalize(e.double(), dim=1) if normalize else e.double()
    logits = 0.9 * z @ torch.from_numpy(every).T
    ce = torch.nn.functional.cross_entropy(
        logits, torch.from_numpy(system.vector_ids(labels.numpy()))
    )
    cosine = CosineTargetLoss(system)(e, labels)
    assert math.isclose(float(loss), float(cosine) + 0.5 * float(ce), rel_tol=1e-5)


def test_lattice_log_partition_is_finite_at_108_dims_and_large_scale() -> None:
    z = torch.nn.functional.normalize(torch.randn(4, 108), dim=1)
    out = lattice_log_partition(z, "v21", 64.0)
    assert torch.isfinite(out).all()
