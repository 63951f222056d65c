"""Tests of the unordered-set estimator: unbiasedness (against enumeration), the set
probabilities against a hand enumeration of orderings, exactness when the set covers the
support, numerics and bad input."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

import latentgrad as lg
from latentgrad.estimators import UnorderedSet
from latentgrad.estimators.unordered_set import set_weights
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
@pytest.mark.parametrize("k", [2, 3])
def test_unbiased(family: str, k: int) -> None:
    torch.manual_seed(0)
    grads, expected = single_layer_gradients(FAMILIES[family], UnorderedSet(k=k), REPLICATES)
    assert torch.isfinite(grads).all()
    assert grads.var(0).sum() > 0  # really sampled
    assert_unbiased(grads, expected, name=f"UnorderedSet(k={k}) on {family}")


@pytest.mark.stat
def test_value_is_unbiased() -> None:
    torch.manual_seed(0)
    logits = torch.tensor([0.3, -0.5, 1.0, 0.1, -1.2], dtype=F64)
    f = torch.tensor([1.0, -2.0, 0.5, 3.0, 2.0], dtype=F64)
    q = lg.Categorical(logits=logits.expand(REPLICATES, 5))
    out = UnorderedSet(k=3)(q, lambda z: (z * f).sum(-1))
    assert_unbiased(out.value, torch.softmax(logits, -1) @ f, name="UnorderedSet's value")


@pytest.mark.stat
def test_unbiasedness_check_has_power() -> None:
    """Weighting the set by q(s) / q(S) (differentiated) instead of P(first = s | S) is biased."""
    torch.manual_seed(0)

    def with_values(dist: lg.Categorical, loss_fn: Callable[[Tensor], Tensor]) -> lg.Estimate:
        seen: list[Tensor] = []

        def record(z: Tensor) -> Tensor:
            seen.append(z)
            return loss_fn(z)

        out = UnorderedSet(k=2)(dist, record)
        weights = torch.softmax(dist.log_prob(seen[0]), 0)  # differentiable: a plausible mistake
        out.surrogate = (weights * loss_fn(seen[0])).sum(0)
        return out

    grads, expected = single_layer_gradients(FAMILIES["categorical"], with_values, REPLICATES)
    assert not check_unbiased(grads, expected).passed


def _orders_by_hand(p: list[float], chosen: list[int]) -> tuple[list[float], list[list[float]]]:
    """P(first = s | S) and P(second = s' | first = s, S) by explicit enumeration of orderings."""
    joint = {}
    for order in itertools.permutations(chosen):
        prob, used = 1.0, 0.0
        for s in order:
            prob *= p[s] / (1.0 - used)
            used += p[s]
        joint[order] = prob
    total = sum(joint.values())
    first = [sum(v for o, v in joint.items() if o[0] == s) / total for s in chosen]
    second = [
        [
            sum(v for o, v in joint.items() if o[0] == s and o[1] == t)
            / sum(v for o, v in joint.items() if o[0] == s)
            for t in chosen
            if t != s
        ]
        for s in chosen
    ]
    return first, second


@pytest.mark.parametrize("chosen", [[0, 3], [4, 1, 2], [0, 1, 2, 3], [5, 0, 3, 1, 4]])
def test_set_weights_match_a_hand_enumeration_of_orderings(chosen: list[int]) -> None:
    p = torch.softmax(torch.tensor([0.3, -0.5, 1.0, 0.1, -1.2, 0.7], dtype=F64), 0)
    f = torch.tensor([1.0, -2.0, 0.5, 3.0, 2.0, -1.0], dtype=F64)
    index = torch.tensor(chosen)
    outside = torch.ones(6, dtype=torch.bool)
    outside[index] = False
    log_outside = p[outside].sum().log() if outside.any() else torch.tensor(-math.inf, dtype=F64)
    first, baseline = set_weights(p[index].log(), log_outside, f[index])
    by_hand, second = _orders_by_hand(p.tolist(), chosen)
    torch.testing.assert_close(first, torch.tensor(by_hand, dtype=F64), atol=1e-12, rtol=0)
    for i, s in enumerate(chosen):
        others = [t for t in chosen if t != s]
        rest = sum(w * f[t].item() for w, t in zip(second[i], others, strict=True))
        expected = p[s].item() * f[s].item() + (1 - p[s].item()) * rest
        assert baseline[i].item() == pytest.approx(expected, abs=1e-12)


SMALL = sorted(name for name, f in FAMILIES.items() if f.dist().support_size() <= 6)


def test_small_supports_are_tested() -> None:
    assert {"categorical", "categorical-neg-inf"} <= set(SMALL)


@pytest.mark.parametrize("family", SMALL)
def test_exact_when_k_covers_the_support(family: str) -> None:
    torch.manual_seed(0)
    example = FAMILIES[family]
    logits = example.params.clone().requires_grad_(True)
    t = torch.tensor(0.7, dtype=F64, requires_grad=True)
    dist = example.make(logits)
    n_event = len(dist.event_shape)

    def loss(z: Tensor) -> Tensor:
        flat = z.flatten(z.dim() - n_event)
        c = torch.linspace(-1.0, 2.0, flat.shape[-1], dtype=F64)
        return ((flat * c).sum(-1) - t) ** 2 + t * flat.sum(-1)

    size = dist.support_size()
    reference = lg.Marginalize()(dist, loss)
    ref_grad = torch.autograd.grad(reference.surrogate.sum(), [logits, t])
    for _ in range(3):
        out = UnorderedSet(k=6)(example.make(logits), loss)
        assert out.loss_evals == size
        torch.testing.assert_close(out.value, reference.value, atol=1e-10, rtol=0)
        grad = torch.autograd.grad(out.surrogate.sum(), [logits, t])
        for g, r in zip(grad, ref_grad, strict=True):
            torch.testing.assert_close(g, r, atol=1e-10, rtol=0)


def test_padding_of_a_ragged_support_is_not_drawn() -> None:
    """A batch of KSubsets whose rows have supports of different sizes pads the smaller one
    with zero-probability copies of a value; with k = the 4 subsets of nonzero probability of
    that row its estimate must be exact (drawing a copy as a value of its own was a bias,
    found by the registry's contract test)."""
    torch.manual_seed(0)
    full = [0.5, -0.3, 1.0, 0.0, -1.0]  # C(5, 3) = 10 subsets
    absent = [0.2, -torch.inf, -0.6, 0.9, 0.1]  # C(4, 3) = 4, padded to 10
    scores = torch.tensor([full, absent, absent], dtype=F64, requires_grad=True)
    c = torch.tensor([0.5, -1.0, 2.0, 0.3, -0.7], dtype=F64)

    def loss(z: Tensor) -> Tensor:
        return torch.sin((z * c).sum(-1)) + (z * c).sum(-1) ** 2

    assert lg.KSubset(scores, k=3).support_probs()[1][:, 1:].eq(0).sum() == 2 * 6
    reference = lg.Marginalize()(lg.KSubset(scores, k=3), loss)
    (ref_grad,) = torch.autograd.grad(reference.surrogate[1:].sum(), scores)
    for _ in range(5):
        out = UnorderedSet(k=4)(lg.KSubset(scores, k=3), loss)
        assert out.extras["first_probs"][:, 1:].gt(0).all()
        torch.testing.assert_close(out.value[1:], reference.value[1:], atol=1e-10, rtol=0)
        (grad,) = torch.autograd.grad(out.surrogate[1:].sum(), scores)
        torch.testing.assert_close(grad, ref_grad, atol=1e-10, rtol=0)


def test_exact_when_the_rest_has_no_mass_and_nan_there_is_ignored() -> None:
    torch.manual_seed(0)
    logits = torch.tensor([[0.3, -torch.inf, 1.0, -torch.inf, -torch.inf]] * 50, requires_grad=True)
    values = torch.tensor([1.0, torch.nan, -2.0, torch.inf, torch.nan])

    def loss(z: Tensor) -> Tensor:
        return torch.where(z > 0, values, torch.zeros_like(z)).sum(-1)

    out = UnorderedSet(k=4)(lg.Categorical(logits=logits), loss)
    assert out.loss_evals == 4 and not torch.isfinite(out.losses).all()
    p = torch.softmax(torch.tensor([0.3, 1.0]), -1)
    torch.testing.assert_close(out.value, torch.full((50,), float(p @ torch.tensor([1.0, -2.0]))))
    (grad,) = torch.autograd.grad(out.surrogate.sum(), logits)
    exact = p[0] * p[1] * (1.0 - -2.0)  # d/dlogit_0 of p0 f0 + p1 f1
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad[:, 0], torch.full((50,), float(exact)))
    assert torch.equal(grad[:, [1, 3, 4]], torch.zeros(50, 3))


def test_estimate_contract() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 6, requires_grad=True)
    theta = torch.tensor(0.3, requires_grad=True)
    calls: list[Tensor] = []

    def loss_fn(z: Tensor) -> Tensor:
        calls.append(z)
        return (z * torch.arange(6.0)).sum(-1) * theta

    out = UnorderedSet(k=3)(lg.Categorical(logits=logits), loss_fn)
    assert [tuple(z.shape) for z in calls] == [(3, 5, 6)]
    z = calls[0]
    assert torch.equal(z.sum(0).amax(-1), torch.ones(5))  # without replacement: distinct values
    assert out.loss_evals == 3 and out.losses.shape == (3, 5)
    assert out.value.shape == out.surrogate.shape == (5,) and out.per_sample.shape == (1, 5)
    torch.testing.assert_close(out.extras["first_probs"].sum(0), torch.ones(5))
    torch.testing.assert_close(out.surrogate.detach(), out.value)
    torch.testing.assert_close(out.value, (out.extras["first_probs"] * out.losses).sum(0))
    out.surrogate.sum().backward()
    assert logits.grad is not None and theta.grad is not None


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("k", [2, 4])
def test_extreme_logits_stay_finite(dtype: torch.dtype, k: int) -> None:
    torch.manual_seed(0)
    check_finite_on_extreme_logits(lambda: UnorderedSet(k=k), dtype)


def test_bad_arguments() -> None:
    for bad in (1, 7):
        with pytest.raises(ValueError, match="k"):
            UnorderedSet(k=bad)
    with pytest.raises(TypeError, match="k"):
        UnorderedSet(k=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_support"):
        UnorderedSet(max_support=0)
    est = UnorderedSet(k=2)
    q = lg.Categorical(logits=torch.zeros(2, 3))
    with pytest.raises(TypeError, match="dist"):
        est(torch.distributions.Categorical(logits=torch.zeros(2, 3)), lambda z: z)
    with pytest.raises(TypeError, match="loss_fn"):
        est(q, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="loss_fn"):
        est(q, lambda z: z.sum((-1, -2)))
    with pytest.raises(ValueError, match="max_support"):
        UnorderedSet(k=2, max_support=4)(
            lg.Bernoulli(logits=torch.zeros(2, 3)), lambda z: z.sum(-1)
        )
