"""The exact K-sample bound (VIMCO's objective) by enumeration of K-tuples, against a
hand-written loop over ``itertools.product``; its edge cases and argument checks."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor

import latentgrad as lg
from latentgrad.testing import (
    exact_expectation,
    exact_gradient,
    exact_multisample_bound,
    exact_multisample_gradient,
)

F64 = torch.float64


def _loss(theta: Tensor):
    def loss_fn(z: Tensor) -> Tensor:
        s = (z.to(F64) * torch.tensor([0.3, -1.2, 2.0], dtype=F64)).sum(-1)
        return (s - theta) ** 2 + torch.sin(3 * s)

    return loss_fn


def _by_hand(logits: Tensor, theta: Tensor, k: int) -> Tensor:
    """``E[-log (1/K) sum_k exp(-f(z_k))]`` as a Python loop over every K-tuple."""
    probs = torch.softmax(logits, -1)
    eye = torch.eye(3, dtype=F64)
    f = _loss(theta)
    total = torch.zeros(logits.shape[:-1], dtype=F64)
    for tup in itertools.product(range(3), repeat=k):
        weight = torch.stack([probs[..., i] for i in tup]).prod(0)
        losses = torch.stack([f(eye[i]).expand(logits.shape[:-1]) for i in tup])
        total = total + weight * (math.log(k) - torch.logsumexp(-losses, 0))
    return total


@pytest.mark.parametrize("k", [1, 2, 3])
def test_bound_and_gradient_match_a_loop_over_tuples(k: int) -> None:
    logits = torch.tensor([[0.4, -0.9, 1.1], [0.0, 0.5, -0.3]], dtype=F64, requires_grad=True)
    theta = torch.tensor(0.6, dtype=F64, requires_grad=True)
    expected = _by_hand(logits, theta, k)
    got = exact_multisample_bound(lg.Categorical(logits=logits), _loss(theta), k)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    grads = exact_multisample_gradient(
        lambda: lg.Categorical(logits=logits), _loss(theta), [logits, theta], k
    )
    reference = torch.autograd.grad(expected.sum(), [logits, theta])
    for g, r in zip(grads, reference, strict=True):
        torch.testing.assert_close(g, r, atol=1e-12, rtol=0)


def test_one_sample_is_the_expectation_and_more_samples_lower_the_bound() -> None:
    logits = torch.tensor([0.4, -0.9, 1.1], dtype=F64, requires_grad=True)
    theta = torch.tensor(0.6, dtype=F64)
    q = lg.Categorical(logits=logits)
    one = exact_multisample_bound(q, _loss(theta), 1)
    torch.testing.assert_close(one, exact_expectation(q, _loss(theta)), atol=1e-12, rtol=0)
    (g1,) = exact_multisample_gradient(
        lambda: lg.Categorical(logits=logits), _loss(theta), [logits], 1
    )
    (g0,) = exact_gradient(lambda: lg.Categorical(logits=logits), _loss(theta), [logits])
    torch.testing.assert_close(g1, g0, atol=1e-12, rtol=0)
    # -bound is the IWAE-type bound: it rises with K (Burda et al.), so the bound falls.
    bounds = [float(exact_multisample_bound(q, _loss(theta), k).detach()) for k in (1, 2, 4)]
    assert bounds[0] > bounds[1] > bounds[2]


def test_values_of_probability_zero_are_ignored_even_with_nan_losses() -> None:
    logits = torch.tensor([0.2, -torch.inf, -0.5], dtype=F64, requires_grad=True)

    def loss(z: Tensor) -> Tensor:
        return torch.where(z[..., 1] > 0, torch.nan, (z * torch.tensor([1.0, 0.0, -2.0])).sum(-1))

    got = exact_multisample_bound(lg.Categorical(logits=logits), loss, 2)
    p = torch.softmax(torch.tensor([0.2, -0.5], dtype=F64), 0)
    mixed = math.log(2) - math.log(math.exp(-1.0) + math.exp(2.0))
    expected = p[0] ** 2 * 1.0 + p[1] ** 2 * -2.0 + 2 * p[0] * p[1] * mixed
    torch.testing.assert_close(got, expected.detach())
    (grad,) = exact_multisample_gradient(lambda: lg.Categorical(logits=logits), loss, [logits], 2)
    assert torch.isfinite(grad).all() and grad[1] == 0


def test_argument_checks() -> None:
    q = lg.Categorical(logits=torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"max_tuples=8"):
        exact_multisample_bound(q, lambda z: z.sum(-1), 2, max_tuples=8)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="num_samples"):
            exact_multisample_bound(q, lambda z: z.sum(-1), bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_tuples"):
        exact_multisample_bound(q, lambda z: z.sum(-1), 2, max_tuples=0)
    with pytest.raises(ValueError, match="loss_fn"):
        exact_multisample_bound(q, lambda z: z.sum((-1, -2)), 2)
