"""Tests of IndeCateR: unbiasedness (against enumeration), the paper's sum over every value of
every unit by hand, its relation to LocalReparam, loss_evals, numerics and bad input."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

import latentgrad as lg
from latentgrad.estimators import IndeCateR, LocalReparam
from latentgrad.testing import assert_unbiased, check_unbiased, single_layer_gradients
from latentgrad.testing.examples import (
    UNIT_FAMILIES,
    FamilyExample,
    family_examples_by_name,
)
from latentgrad.testing.extremes import FLOAT_DTYPES, check_finite_on_extreme_logits

F64 = torch.float64
REPLICATES = 4000

FAMILIES: dict[str, FamilyExample] = family_examples_by_name(UNIT_FAMILIES)


@pytest.mark.stat
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("num_samples", [1, 3])
def test_unbiased(family: str, num_samples: int) -> None:
    torch.manual_seed(0)
    grads, expected = single_layer_gradients(FAMILIES[family], IndeCateR(num_samples), REPLICATES)
    assert torch.isfinite(grads).all()
    assert_unbiased(grads, expected, name=f"IndeCateR on {family}")


@pytest.mark.stat
def test_unbiasedness_check_has_power() -> None:
    """Without the pathwise term of the loss's own parameter it is biased, and detected."""
    torch.manual_seed(0)

    def no_pathwise(dist: lg.Categorical, loss_fn: Callable[[Tensor], Tensor]) -> lg.Estimate:
        return IndeCateR(2)(dist, lambda z: loss_fn(z).detach())

    grads, expected = single_layer_gradients(
        FAMILIES["independent-categorical"], no_pathwise, REPLICATES
    )
    assert not check_unbiased(grads, expected).passed


def _units_loss(theta: Tensor) -> Callable[[Tensor], Tensor]:
    c = torch.tensor([[1.0, -0.5, 2.0], [0.3, 1.2, -1.0], [-0.7, 0.4, 0.9]], dtype=F64)

    def loss_fn(z: Tensor) -> Tensor:
        a = (z * c).sum(-1)  # (..., units)
        return (a.sum(-1) - theta) ** 2 + a[..., 0] * a[..., 1] * theta + torch.sin(a[..., 2])

    return loss_fn


def test_equals_the_papers_sum_over_every_value_of_every_unit() -> None:
    """sum_n sum_i sum_c grad q_i(c) f(z^n; z_i = c) / N + grad_theta f(z^n) / N, built by hand
    from all N * U * C rows (the rows where a unit keeps its value included)."""
    logits = torch.tensor([[[0.5, -0.2, 0.0], [1.0, 0.3, -0.8], [-0.4, 0.9, 0.2]]], dtype=F64)
    logits = logits.expand(4, 3, 3).clone().requires_grad_(True)
    theta = torch.tensor(0.6, dtype=F64, requires_grad=True)
    loss_fn = _units_loss(theta)
    n = 5
    torch.manual_seed(3)
    out = IndeCateR(n)(lg.Categorical(logits=logits).to_event(1), loss_fn)
    got = torch.autograd.grad(out.surrogate.sum(), [logits, theta])
    torch.manual_seed(3)
    z = lg.Categorical(logits=logits).to_event(1).sample((n,))  # the same draw: (N, 4, 3, 3)
    probs = torch.softmax(logits, -1)
    total = torch.zeros((), dtype=F64)
    eye = torch.eye(3, dtype=F64)
    for unit in range(3):
        for value in range(3):
            row = z.clone()
            row[..., unit, :] = eye[value]
            total = total + (probs[:, unit, value] * loss_fn(row).detach()).sum() / n
    total = total + loss_fn(z).sum() / n  # the pathwise term, grad_theta f(z^n)
    expected = torch.autograd.grad(total, [logits, theta])
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-10, rtol=0)
    assert out.loss_evals == n * (1 + 3 * 2)  # N (1 + sum_i (C_i - 1)) of the N U C rows


def test_is_local_reparams_computation_with_loss_evals_for_all_samples() -> None:
    logits = torch.randn(4, 5, 3, dtype=F64, requires_grad=True)
    theta = torch.tensor(0.6, dtype=F64, requires_grad=True)
    loss_fn = _units_loss(theta)
    grads = []
    outs = []
    for est in (IndeCateR(3), LocalReparam(3)):
        torch.manual_seed(7)
        out = est(lg.Categorical(logits=logits[:, :3]).to_event(1), loss_fn)
        outs.append(out)
        grads.append(torch.autograd.grad(out.surrogate.sum(), [logits, theta]))
    torch.testing.assert_close(outs[0].value, outs[1].value, atol=0, rtol=0)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    assert outs[0].loss_evals == 3 * outs[1].loss_evals == 3 * 7


def test_estimate_contract() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 2, 4, requires_grad=True)
    calls: list[tuple[int, ...]] = []

    def loss_fn(z: Tensor) -> Tensor:
        calls.append(tuple(z.shape))
        return (z * torch.arange(4.0)).sum((-1, -2))

    out = IndeCateR(num_samples=3)(lg.Categorical(logits=logits).to_event(1), loss_fn)
    assert calls == [(7, 3, 5, 2, 4)]
    assert out.loss_evals == 21
    assert out.value.shape == out.surrogate.shape == (5,)
    assert out.per_sample.shape == (3, 5) and out.losses.shape == (3, 5)
    assert out.extras["variant_losses"].shape == (6, 3, 5)
    assert out.extras["num_variants"] == (6,)
    torch.testing.assert_close(out.surrogate, out.per_sample.mean(0))
    torch.testing.assert_close(out.surrogate.detach(), out.value)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_extreme_logits_stay_finite(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    check_finite_on_extreme_logits(lambda: IndeCateR(2), dtype)


def test_zero_probability_values_are_ignored() -> None:
    """A variant of probability 0 may have a NaN loss: it never enters the estimate."""
    torch.manual_seed(0)
    logits = torch.tensor([[0.3, -torch.inf, 1.0]] * 20, requires_grad=True)
    values = torch.tensor([1.0, torch.nan, -2.0])

    def loss(z: Tensor) -> Tensor:
        return torch.where(z > 0, values, torch.zeros_like(z)).sum(-1)

    out = IndeCateR(2)(lg.Categorical(logits=logits), loss)
    assert torch.isnan(out.extras["variant_losses"]).any()
    (grad,) = torch.autograd.grad(out.surrogate.sum(), logits)
    assert torch.isfinite(out.value).all() and torch.isfinite(grad).all()
    assert torch.equal(grad[:, 1], torch.zeros(20))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_samples"):
        IndeCateR(num_samples=0)
    with pytest.raises(TypeError, match="num_samples"):
        IndeCateR(num_samples=1.0)  # type: ignore[arg-type]
    est = IndeCateR()
    with pytest.raises(TypeError, match="dist"):
        est(torch.distributions.Categorical(logits=torch.zeros(2, 3)), lambda z: z)
    with pytest.raises(TypeError, match="has_local_variants"):
        est(lg.KSubset(torch.zeros(2, 4), k=2), lambda z: z.sum(-1))
    with pytest.raises(TypeError, match="loss_fn"):
        est(lg.Categorical(logits=torch.zeros(2, 3)), 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="loss_fn"):
        est(lg.Categorical(logits=torch.zeros(2, 3)), lambda z: z.sum((-1, -2)))
