"""Tests of ReinMax: the forward sample, its exact expectation (enumerated) against the true
gradient and against the closed form of its Heun's-method construction, unbiasedness for
quadratic losses (its paper's second-order claim), numerics and validation."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

import latentgrad as lg
from latentgrad.estimators import ReinMax, StraightThrough
from latentgrad.lab.registry import ESTIMATORS, make_estimator, resolve_options
from latentgrad.schedules import ExponentialDecay
from latentgrad.testing import (
    assert_unbiased,
    brute_force_support,
    check_unbiased,
    exact_gradient,
    replicated_gradients,
)
from latentgrad.testing.examples import FamilyExample, family_examples

F64 = torch.float64
FAMILIES: dict[str, FamilyExample] = {
    f.name: f
    for f in family_examples(
        names=[
            "categorical",
            "categorical-neg-inf",
            "bernoulli",
            "independent-categorical",
            "independent-bernoulli",
        ]
    )
}


def _quadratic(numel: int, event_ndim: int, seed: int = 0) -> Callable[[Tensor], Tensor]:
    """``v^T A v + b^T v`` of the flattened event ``v``, with cross terms between all units."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(numel, numel, generator=g, dtype=F64)
    b = torch.randn(numel, generator=g, dtype=F64)

    def loss(z: Tensor) -> Tensor:
        v = z.flatten(start_dim=z.dim() - event_ndim)
        return ((v @ a) * v).sum(-1) + v @ b

    return loss


def _cubic(numel: int, event_ndim: int) -> Callable[[Tensor], Tensor]:
    c = torch.linspace(-1.0, 1.5, numel, dtype=F64)

    def loss(z: Tensor) -> Tensor:
        v = z.flatten(start_dim=z.dim() - event_ndim)
        return ((v * c).sum(-1) - 0.3) ** 3

    return loss


def _mean_gradient(est: ReinMax, make, logits: Tensor, loss) -> Tensor:
    """The estimator's exact expectation: its gradient at every value of the support, weighted
    by the (independently enumerated) probabilities."""
    leaf = logits.clone().requires_grad_(True)
    dist = make(leaf)
    values, probs = brute_force_support(dist)
    z = est.straight_through(dist, values)
    (grad,) = torch.autograd.grad((probs.detach() * loss(z)).sum(), leaf)
    return grad


def _true_gradient(make, logits: Tensor, loss) -> Tensor:
    leaf = logits.clone().requires_grad_(True)
    return exact_gradient(lambda: make(leaf), loss, [leaf])[0]


def _setup(family: str, loss_maker=_quadratic):
    example = FAMILIES[family]
    q = example.dist()
    loss = loss_maker(q.event_shape.numel(), len(q.event_shape))
    return example.make, example.params, loss


# --- forward pass and contract ---------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
def test_forward_is_the_discrete_sample_and_one_loss_call(family):
    torch.manual_seed(0)
    make, logits, _ = _setup(family)
    leaf = logits.clone().requires_grad_(True)
    dist = make(leaf)
    calls = []

    def loss(z):
        calls.append(z)
        return (z.flatten(start_dim=z.dim() - len(dist.event_shape)) ** 2).sum(-1)

    out = ReinMax(num_samples=3)(dist, loss)
    (z,) = calls
    assert z.shape == (3, *dist.batch_shape, *dist.event_shape)
    assert ((z == 0) | (z == 1)).all()
    if "categorical" in family:
        assert (z.sum(-1) == 1).all()
    assert out.loss_evals == 3 and out.per_sample.shape == (3, *dist.batch_shape)
    torch.testing.assert_close(out.value, loss(z.detach()).mean(0), rtol=0, atol=0)
    torch.testing.assert_close(out.surrogate.detach(), out.value, rtol=0, atol=0)
    assert out.extras == {"tau": 1.0}
    out.surrogate.sum().backward()
    assert leaf.grad is not None and leaf.grad.isfinite().all() and leaf.grad.abs().sum() > 0


# --- expectation: exact for quadratic losses, the Heun closed form otherwise --------------------


@pytest.mark.parametrize("family", list(FAMILIES))
def test_exactly_unbiased_for_quadratic_losses_at_tau_one(family):
    # The paper's second-order claim: the trapezoidal rule behind ReinMax is exact for losses
    # quadratic in z, so its expectation is the true gradient (here to 1e-10, by enumeration).
    make, logits, loss = _setup(family)
    mean = _mean_gradient(ReinMax(tau=1.0), make, logits, loss)
    torch.testing.assert_close(mean, _true_gradient(make, logits, loss), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("family", ["categorical", "bernoulli"])
def test_straight_through_is_biased_on_the_same_quadratic_losses(family):
    # What ReinMax corrects: straight-through's expectation misses the quadratic part.
    make, logits, loss = _setup(family)
    leaf = logits.clone().requires_grad_(True)
    dist = make(leaf)
    values, probs = brute_force_support(dist)
    z = values + (dist.mean - dist.mean.detach())
    (st_mean,) = torch.autograd.grad((probs.detach() * loss(z)).sum(), leaf)
    assert (st_mean - _true_gradient(make, logits, loss)).abs().max() > 0.05


@pytest.mark.parametrize("family", ["categorical", "independent-bernoulli"])
def test_biased_at_other_temperatures_and_for_cubic_losses(family):
    make, logits, quad = _setup(family)
    exact = _true_gradient(make, logits, quad)
    assert (_mean_gradient(ReinMax(tau=2.0), make, logits, quad) - exact).abs().max() > 1e-2
    _, _, cubic = _setup(family, _cubic)
    exact = _true_gradient(make, logits, cubic)
    assert (_mean_gradient(ReinMax(tau=1.0), make, logits, cubic) - exact).abs().max() > 1e-2


def _jacobian(p: Tensor) -> Tensor:
    return torch.diag(p) - torch.outer(p, p)


def _heun_closed_form(theta: Tensor, loss) -> Tensor:
    """``sum_ij pi_j (g_i + g_j)^T (e_i - e_j) / 2 * d pi_i / d theta`` for one categorical:
    the gradient with every difference of losses replaced by Heun's (trapezoidal) rule."""
    k = theta.numel()
    eye = torch.eye(k, dtype=F64)
    pi = torch.softmax(theta, -1)
    grads = []
    for i in range(k):
        e = eye[i].clone().requires_grad_(True)
        grads.append(torch.autograd.grad(loss(e), e)[0])
    out = torch.zeros(k, dtype=F64)
    for i in range(k):
        dpi = pi[i] * (eye[i] - pi)
        for j in range(k):
            out += pi[j] * 0.5 * ((grads[i] + grads[j]) @ (eye[i] - eye[j])) * dpi
    return out


def _formula_mean(theta: Tensor, loss, tau: float) -> Tensor:
    """``E_z[2 J(pi_half) g(z) - J(pi) g(z) / 2]`` written out with explicit matrices."""
    k = theta.numel()
    eye = torch.eye(k, dtype=F64)
    pi = torch.softmax(theta, -1)
    out = torch.zeros(k, dtype=F64)
    for i in range(k):
        e = eye[i].clone().requires_grad_(True)
        g = torch.autograd.grad(loss(e), e)[0]
        half = (eye[i] + torch.softmax(theta / tau, -1)) / 2
        out += pi[i] * (2 * _jacobian(half) @ g - 0.5 * _jacobian(pi) @ g)
    return out


def test_expectation_matches_the_closed_forms_for_a_cubic_loss():
    theta = torch.tensor([0.4, -1.0, 0.9, 0.1, -0.3], dtype=F64)
    loss = _cubic(5, 1)

    def make(t):
        return lg.Categorical(logits=t)

    exact = _true_gradient(make, theta, loss)
    mean = _mean_gradient(ReinMax(tau=1.0), make, theta, loss)
    torch.testing.assert_close(mean, _heun_closed_form(theta, loss), rtol=1e-10, atol=1e-12)
    assert (mean - exact).abs().max() > 1e-2  # the closed form is not the true gradient
    for tau in (0.5, 1.0, 3.0):
        mean = _mean_gradient(ReinMax(tau=tau), make, theta, loss)
        torch.testing.assert_close(mean, _formula_mean(theta, loss, tau), rtol=1e-10, atol=1e-12)


def test_bernoulli_is_the_two_class_categorical():
    # Bits with logits a behave as categoricals with logits (a, 0) whose loss sees z[..., 0].
    torch.manual_seed(1)
    a = torch.randn(4, 3, dtype=F64)
    z = torch.tensor(
        [[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]], dtype=F64
    )

    def loss(bits: Tensor) -> Tensor:
        return torch.sin(bits @ torch.tensor([1.0, -2.0, 0.5], dtype=F64)) + bits.sum(-1) ** 2

    for tau in (0.7, 1.0, 2.0):
        est = ReinMax(tau=tau)
        leaf = a.clone().requires_grad_(True)
        (g_bits,) = torch.autograd.grad(
            loss(est.straight_through(lg.Bernoulli(logits=leaf), z)).sum(), leaf
        )
        leaf2 = torch.stack([a, torch.zeros_like(a)], -1).requires_grad_(True)
        one_hot = torch.stack([z, 1 - z], -1)
        st = est.straight_through(lg.Categorical(logits=leaf2), one_hot)
        (g_cat,) = torch.autograd.grad(loss(st[..., 0]).sum(), leaf2)
        torch.testing.assert_close(g_bits, g_cat[..., 0], rtol=1e-12, atol=1e-12)


# --- the sampling estimator, statistically ----------------------------------------------------


def _replicated(est, family: str, loss, n: int) -> tuple[Tensor, Tensor]:
    make, logits, _ = _setup(family)
    grads = replicated_gradients(lambda rep: est(make(rep), loss).surrogate.sum(-1), logits, n)
    return grads, _true_gradient(make, logits, loss)


@pytest.mark.stat
@pytest.mark.parametrize("family", ["categorical-neg-inf", "independent-bernoulli"])
def test_sampled_estimates_unbiased_for_quadratic_loss(family):
    # Fixed seed; alpha = 1e-5 family-wise (Bonferroni over coordinates).
    torch.manual_seed(2)
    _, _, loss = _setup(family)
    grads, exact = _replicated(ReinMax(num_samples=2), family, loss, 4000)
    result = assert_unbiased(grads, exact, name="ReinMax")
    assert (result.standard_error > 0).any()  # a random estimate, not a deterministic one
    # The same test rejects straight-through on this problem (it has power).
    grads, _ = _replicated(StraightThrough(num_samples=2), family, loss, 4000)
    assert not check_unbiased(grads, exact).passed


# --- numerics ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "logits",
    [
        torch.tensor([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]]),
        torch.tensor([[-torch.inf, 2.0, -torch.inf], [0.0, -torch.inf, -torch.inf]]),
        torch.tensor([[3.0], [-2.0]]),  # one category
    ],
    ids=["pm1e4", "all-neg-inf-but-one", "one-category"],
)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_extreme_categorical_logits_give_finite_values_and_gradients(logits, dtype):
    torch.manual_seed(3)
    leaf = logits.to(dtype).requires_grad_(True)
    w = torch.linspace(-1, 1, logits.shape[-1]).to(dtype)
    for tau in (0.5, 1.0, 4.0):
        out = ReinMax(tau=tau, num_samples=4)(lg.Categorical(logits=leaf), lambda z: (z @ w) ** 2)
        assert out.value.dtype == dtype and out.value.isfinite().all()
        (grad,) = torch.autograd.grad(out.surrogate.sum(), leaf)
        assert grad.dtype == dtype and grad.isfinite().all()
        # Certain categories carry no gradient.
        assert (grad[logits.isinf()] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_extreme_bernoulli_logits_give_finite_values_and_gradients(dtype):
    torch.manual_seed(4)
    logits = torch.tensor([[1e4, -1e4, torch.inf, -torch.inf, 0.0]]).to(dtype)
    leaf = logits.requires_grad_(True)
    out = ReinMax(num_samples=4)(lg.Bernoulli(logits=leaf), lambda z: (z.sum(-1) - 1) ** 2)
    assert out.value.isfinite().all()
    (grad,) = torch.autograd.grad(out.surrogate.sum(), leaf)
    assert grad.dtype == dtype and grad.isfinite().all()
    assert (grad[0, :4] == 0).all() and grad[0, 4] != 0


def test_jacobian_term_is_the_softmax_jacobian():
    from latentgrad.estimators._straight_through import softmax_jacobian_term

    torch.manual_seed(5)
    p = torch.softmax(torch.randn(4, dtype=F64), -1)
    theta = torch.randn(4, dtype=F64)
    jac = torch.autograd.functional.jacobian(lambda t: softmax_jacobian_term(p, t), theta)
    # The softmax Jacobian at p, from autograd through softmax at log p.
    ref = torch.autograd.functional.jacobian(lambda t: torch.softmax(t, -1), p.log())
    torch.testing.assert_close(jac, ref, rtol=1e-12, atol=1e-12)


# --- options, validation, registry ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tau": 0.0}, ValueError, "tau"),
        ({"tau": -1.0}, ValueError, "tau"),
        ({"tau": math.nan}, ValueError, "tau"),
        ({"tau": "hot"}, TypeError, "tau"),
        ({"num_samples": 0}, ValueError, "num_samples"),
        ({"num_samples": 2.0}, TypeError, "num_samples"),
    ],
)
def test_constructor_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        ReinMax(**kwargs)


def test_call_validation():
    est = ReinMax()
    dist = lg.Categorical(logits=torch.zeros(2, 3))
    with pytest.raises(TypeError, match="dist"):
        est(torch.distributions.OneHotCategorical(logits=torch.zeros(2, 3)), lambda z: z.sum(-1))
    with pytest.raises(TypeError, match="loss_fn"):
        est(dist, "not callable")
    with pytest.raises(ValueError, match="loss_fn must return shape"):
        est(dist, lambda z: z.sum())
    with pytest.raises(TypeError, match="has_logits"):
        est(lg.SparsemaxCategorical(torch.zeros(2, 3)), lambda z: z.sum(-1))


def test_temperature_schedule_steps_and_checkpoints():
    est = ReinMax(tau=ExponentialDecay(initial=2.0, rate=0.1, every=1, minimum=1.0))
    assert est.tau == 2.0
    assert est.step(3) == pytest.approx(2.0 * math.exp(-0.3))
    fresh = ReinMax(tau=ExponentialDecay(initial=2.0, rate=0.1, every=1, minimum=1.0))
    fresh.load_state_dict(est.state_dict())
    assert fresh.tau == est.tau


def test_registry_entry():
    entry = ESTIMATORS["reinmax"]
    assert entry.applies_to(lg.Categorical) and entry.applies_to(lg.Bernoulli)
    est = make_estimator("reinmax", {"tau": "2.0", "num_samples": 3})
    assert isinstance(est, ReinMax) and est.tau == 2.0 and est.num_samples == 3
    with pytest.raises(ValueError, match="tau"):
        resolve_options("reinmax", {"tau": 0.0})
