"""Tests of SumAndSample: unbiasedness, exactness once the top k cover the support, numerics."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

import latentgrad as lg
from latentgrad.estimators.sum_and_sample import SumAndSample
from latentgrad.testing import (
    assert_unbiased,
    check_unbiased,
    exact_gradient,
    replicated_gradients,
)
from latentgrad.testing.examples import (
    UNIT_FAMILIES,
    FamilyExample,
    family_examples_by_name,
)
from latentgrad.testing.extremes import FLOAT_DTYPES, check_finite_on_extreme_logits

F64 = torch.float64
REPLICATES = 4000


def _loss(event_ndim: int, numel: int) -> Callable[[Tensor, Tensor], Tensor]:
    c = torch.linspace(-1.0, 2.0, numel, dtype=F64)
    d = torch.linspace(0.5, -0.5, numel, dtype=F64)

    def loss(z: Tensor, t: Tensor) -> Tensor:
        flat = z.flatten(start_dim=z.dim() - event_ndim)
        return ((flat * c).sum(-1) - t) ** 2 + t * (flat * d).sum(-1) + 3.0

    return loss


# The families of the registry of examples that SumAndSample is tested on (batched, -inf too).
FAMILIES: dict[str, FamilyExample] = family_examples_by_name(UNIT_FAMILIES)


def _gradients(
    family: str, estimator: Callable[..., lg.Estimate], num: int
) -> tuple[Tensor, Tensor]:
    """Replicated gradients w.r.t. (logits, t) and the exact gradient, flattened."""
    example = FAMILIES[family]
    make, logits = example.make, example.params
    q = example.dist()
    batch_dims = len(q.batch_shape)
    loss = _loss(len(q.event_shape), q.event_shape.numel())
    t = torch.tensor(0.7, dtype=F64)
    phi = logits.clone().requires_grad_(True)
    theta = t.clone().requires_grad_(True)
    exact = exact_gradient(lambda: make(phi), lambda z: loss(z, theta), [phi, theta])
    expected = torch.cat([exact[0].flatten(), exact[1].reshape(1)])
    n = logits.numel()

    def surrogate(rep: Tensor) -> Tensor:
        rep_logits = rep[:, :n].reshape((rep.shape[0], *logits.shape))
        rep_t = rep[:, n].reshape(-1, *[1] * batch_dims)
        out = estimator(make(rep_logits), lambda z: loss(z, rep_t)).surrogate
        return out.reshape(rep.shape[0], -1).sum(1)

    param = torch.cat([logits.flatten(), t.reshape(1)])
    return replicated_gradients(surrogate, param, num), expected


@pytest.mark.stat
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("k", [1, 2])
def test_unbiased(family: str, k: int) -> None:
    torch.manual_seed(0)
    grads, expected = _gradients(family, SumAndSample(k=k), REPLICATES)
    assert torch.isfinite(grads).all()
    assert grads.var(0).sum() > 0  # really sampled: the rest has mass here
    assert_unbiased(grads, expected, name=f"SumAndSample(k={k}) on {family}")


@pytest.mark.stat
def test_unbiasedness_check_has_power() -> None:
    """Differentiating the rest's mass R as well (a tempting mistake) is biased, and detected."""
    torch.manual_seed(0)

    def wrong(dist: lg.Categorical, loss_fn: Callable[[Tensor], Tensor]) -> lg.Estimate:
        out = SumAndSample(k=2)(dist, loss_fn)
        _, probs = dist.support_probs()
        top = probs.detach().topk(2, dim=0).indices
        rest_mass = probs.sum(0) - probs.gather(0, top).sum(0)
        out.surrogate = out.surrogate + (rest_mass - rest_mass.detach()) * out.losses[-1]
        return out

    grads, expected = _gradients("categorical", wrong, REPLICATES)
    assert not check_unbiased(grads, expected).passed


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_exact_when_k_covers_support(family: str) -> None:
    torch.manual_seed(0)
    example = FAMILIES[family]
    make = example.make
    logits = example.params.unsqueeze(0).expand(3, *example.params.shape).clone()
    logits.requires_grad_(True)
    q = example.dist()
    loss = _loss(len(q.event_shape), q.event_shape.numel())
    t = torch.tensor(0.7, dtype=F64, requires_grad=True)
    dist = make(logits)
    size = dist.support_size()
    reference = lg.Marginalize()(dist, lambda z: loss(z, t))
    ref_grad = torch.autograd.grad(reference.surrogate.sum(), [logits, t])
    for k in (size, size + 3):
        for _ in range(3):
            out = SumAndSample(k=k)(make(logits), lambda z: loss(z, t))
            assert out.loss_evals == size
            assert torch.equal(out.extras["rest_mass"], torch.zeros(dist.batch_shape, dtype=F64))
            torch.testing.assert_close(out.value, reference.value, atol=1e-6, rtol=0)
            grad = torch.autograd.grad(out.surrogate.sum(), [logits, t])
            for g, r in zip(grad, ref_grad, strict=True):
                torch.testing.assert_close(g, r, atol=1e-6, rtol=0)


def test_exact_when_rest_has_no_mass() -> None:
    """Zero-probability values outside the top k: R = 0, exact, and a NaN loss there is ignored."""
    torch.manual_seed(0)
    logits = torch.tensor([[0.3, -torch.inf, 1.0, -torch.inf]] * 50, requires_grad=True)
    values = torch.tensor([1.0, torch.nan, -2.0, torch.inf])

    def loss(z: Tensor) -> Tensor:
        return torch.where(z > 0, values, torch.zeros_like(z)).sum(-1)

    out = SumAndSample(k=2)(lg.Categorical(logits=logits), loss)
    assert out.loss_evals == 3
    assert torch.equal(out.extras["rest_mass"], torch.zeros(50))
    (grad,) = torch.autograd.grad(out.surrogate.sum(), logits)
    p = torch.softmax(torch.tensor([0.3, 1.0]), -1)
    torch.testing.assert_close(out.value, torch.full((50,), float(p @ torch.tensor([1.0, -2.0]))))
    assert torch.isfinite(grad).all()
    assert torch.equal(grad[:, [1, 3]], torch.zeros(50, 2))


def test_estimate_contract() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 6, requires_grad=True)
    theta = torch.tensor(0.3, requires_grad=True)
    calls: list[tuple[int, ...]] = []

    def loss_fn(z: Tensor) -> Tensor:
        calls.append(tuple(z.shape))
        return (z * torch.arange(6.0)).sum(-1) * theta

    out = SumAndSample(k=2)(lg.Categorical(logits=logits), loss_fn)
    assert calls == [(3, 5, 6)]
    assert out.value.shape == out.surrogate.shape == (5,)
    assert out.per_sample.shape == (1, 5)
    assert not out.value.requires_grad
    torch.testing.assert_close(out.surrogate, out.per_sample.mean(0))
    torch.testing.assert_close(out.surrogate.detach(), out.value)
    assert out.loss_evals == 3 and out.extras["num_summed"] == 2
    assert out.losses.shape == (3, 5)
    top2 = torch.softmax(logits.detach(), -1).topk(2, -1).values.sum(-1)
    torch.testing.assert_close(out.extras["rest_mass"], 1 - top2)
    out.surrogate.sum().backward()
    assert logits.grad is not None and theta.grad is not None


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("k", [1, 3])
def test_extreme_logits_stay_finite(dtype: torch.dtype, k: int) -> None:
    torch.manual_seed(0)
    check_finite_on_extreme_logits(lambda: SumAndSample(k=k), dtype)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="k"):
        SumAndSample(k=0)
    with pytest.raises(TypeError, match="k"):
        SumAndSample(k=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_support"):
        SumAndSample(max_support=0)
    est = SumAndSample(k=2)
    q = lg.Categorical(logits=torch.zeros(2, 3))
    with pytest.raises(TypeError, match="dist"):
        est(torch.distributions.Categorical(logits=torch.zeros(2, 3)), lambda z: z)
    with pytest.raises(TypeError, match="loss_fn"):
        est(q, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="loss_fn"):
        est(q, lambda z: z.sum((-1, -2)))
    with pytest.raises(ValueError, match="max_support"):
        SumAndSample(max_support=4)(lg.Bernoulli(logits=torch.zeros(2, 3)), lambda z: z.sum(-1))
