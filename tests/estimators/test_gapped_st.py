"""Tests of gapped straight-through (GST-1.0 and GST-p): the forward sample, the gapped logits
and the gradient on hand-computed examples, the properties the construction promises
(consistency, the gap, GST-p's gap as the mean Gumbel-max gap), numerics and validation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import latentgrad as lg
from latentgrad.estimators import GappedStraightThrough
from latentgrad.estimators.gapped_st import expected_gap, gapped_logits
from latentgrad.estimators.gumbel_rao import conditional_gumbel
from latentgrad.lab.registry import ESTIMATORS, UnknownOption, make_estimator, resolve_options
from latentgrad.testing import assert_unbiased

F64 = torch.float64


def _grad_given(est, dist_fn, logits: Tensor, z: Tensor, loss) -> Tensor:
    leaf = logits.clone().requires_grad_(True)
    out = est.straight_through(dist_fn(leaf), z)
    assert torch.equal(out.detach(), z)  # the forward value is the sample itself
    (grad,) = torch.autograd.grad(loss(out).sum(), leaf)
    return grad


def _categorical(t: Tensor) -> lg.Categorical:
    return lg.Categorical(logits=t)


# --- hand-computed examples -------------------------------------------------------------------


def test_gapped_logits_by_hand():
    theta = torch.tensor([1.0, 0.0, 2.0], dtype=F64)
    # Sampled 1: raised to the top (2); the others lowered to at most 2 - 1 = 1.
    torch.testing.assert_close(
        gapped_logits(theta, torch.tensor(1), 1.0), torch.tensor([1.0, 2.0, 1.0], dtype=F64)
    )
    # Sampled 2 (the argmax): the others lowered to at most 1.
    torch.testing.assert_close(
        gapped_logits(theta, torch.tensor(2), 1.0), torch.tensor([1.0, 0.0, 2.0], dtype=F64)
    )
    torch.testing.assert_close(gapped_logits(theta, torch.tensor(2), 0.5), theta)
    # GST-p, sampled 0 with p = e / (1 + e + e^2): the gap is -log(1 - p) / p.
    p = math.e / (1 + math.e + math.e**2)
    gap = -math.log(1 - p) / p
    assert gap > 1
    expected = torch.tensor([2.0, min(0.0, 2.0 - gap), 2.0 - gap], dtype=F64)
    torch.testing.assert_close(gapped_logits(theta, torch.tensor(0), "p"), expected)


def test_categorical_gradient_by_hand():
    # theta = (1, 0, 2), sample e_1, gap 1, tau 1/2: the soft sample is softmax((1, 2, 1) / tau)
    # = (a, b, a) with a = 1 / (2 + e^2), b = e^2 / (2 + e^2); for the loss w . z the gradient
    # is J(y) w / tau = 2 y_i (w_i - y . w).
    theta = torch.tensor([1.0, 0.0, 2.0], dtype=F64)
    z = torch.tensor([0.0, 1.0, 0.0], dtype=F64)
    w = [1.0, -2.0, 3.0]
    a, b = 1 / (2 + math.e**2), math.e**2 / (2 + math.e**2)
    y = [a, b, a]
    yw = sum(yi * wi for yi, wi in zip(y, w, strict=True))
    expected = torch.tensor([2 * yi * (wi - yw) for yi, wi in zip(y, w, strict=True)], dtype=F64)
    est = GappedStraightThrough(gap=1.0, tau=0.5)
    wt = torch.tensor(w, dtype=F64)
    got = _grad_given(est, _categorical, theta, z, lambda s: s @ wt)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_bernoulli_gradient_by_hand_and_as_two_classes():
    # Bits: y = sigmoid(s max(s a, gap) / tau), s = 2 z - 1, gradient y (1 - y) g / tau.
    a = torch.tensor([[0.3, -2.0, 1.5, 0.0]], dtype=F64)
    z = torch.tensor([[1.0, 1.0, 0.0, 0.0]], dtype=F64)
    c = torch.tensor([1.0, -1.0, 2.0, 0.5], dtype=F64)

    def loss(bits: Tensor) -> Tensor:
        return torch.tanh(bits @ c)

    tau = 0.8
    g = 1 - torch.tanh(z @ c) ** 2  # d loss / d z_d = g * c_d
    for gap in (1.0, 0.2, "p"):
        est = GappedStraightThrough(gap=gap, tau=tau)
        got = _grad_given(est, lambda t: lg.Bernoulli(logits=t), a, z, loss)
        rows = []
        for ad, zd, cd in zip(a[0].tolist(), z[0].tolist(), c.tolist(), strict=True):
            s = 2 * zd - 1
            p = 1 / (1 + math.exp(-s * ad))
            m = -math.log(1 - p) / p if gap == "p" else gap
            y = 1 / (1 + math.exp(-s * max(s * ad, m) / tau))
            rows.append(y * (1 - y) * float(g[0]) * cd / tau)
        torch.testing.assert_close(got, torch.tensor([rows], dtype=F64), rtol=1e-12, atol=1e-12)
        # The same as the two-class categorical with logits (a, 0) whose loss sees z[..., 0].
        two = torch.stack([a, torch.zeros_like(a)], -1)
        got2 = _grad_given(
            est, _categorical, two, torch.stack([z, 1 - z], -1), lambda s: loss(s[..., 0])
        )
        torch.testing.assert_close(got, got2[..., 0], rtol=1e-12, atol=1e-12)


def test_without_clipping_it_is_tempered_straight_through():
    # When the sample is the argmax and every other logit is already gap below it, nothing
    # moves: the gradient is J(softmax(theta / tau)) g / tau, straight-through's at slope 1/tau.
    theta = torch.tensor([[3.0, 0.5, -1.0, 1.9]], dtype=F64)
    z = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=F64)
    w = torch.tensor([0.3, -1.0, 2.0, 0.7], dtype=F64)
    got = _grad_given(
        GappedStraightThrough(gap=1.0, tau=2.0), _categorical, theta, z, lambda s: (s @ w) ** 2
    )
    leaf = theta.clone().requires_grad_(True)
    p = torch.softmax(leaf / 2.0, -1)  # StraightThrough(slope=1/2)'s backward at this sample
    (ref,) = torch.autograd.grad(((z + p - p.detach()) @ w).pow(2).sum(), leaf)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


# --- properties of the construction -----------------------------------------------------------


@pytest.mark.parametrize("gap", [1.0, 0.3, "p"])
def test_gapped_logits_are_consistent_and_gapped(gap):
    torch.manual_seed(0)
    theta = torch.randn(500, 6, dtype=F64) * 3
    theta[::7, 2] = -torch.inf
    index = lg.Categorical(logits=theta).sample().argmax(-1)
    tilde = gapped_logits(theta, index, gap)
    assert torch.equal(tilde.argmax(-1), index)
    top = tilde.gather(-1, index[:, None]).squeeze(-1)
    rest = tilde.scatter(-1, index[:, None], -torch.inf).amax(-1)
    if gap == "p":
        p = torch.softmax(theta, -1).gather(-1, index[:, None]).squeeze(-1)
        margin = -torch.log1p(-p) / p
    else:
        margin = torch.full_like(top, gap)
    # (1e-6 relative: -log1p(-p) here loses digits when p is close to 1)
    assert (top - rest >= margin * (1 - 1e-6)).all()
    assert (tilde[theta.isinf()] == -torch.inf).all()  # impossible categories stay impossible


@pytest.mark.stat
def test_gst_p_gap_is_the_mean_gumbel_max_gap():
    # GST-p's gap is E[x_i - max_{j != i} x_j | argmax x = i] for x = theta + Gumbel noise.
    torch.manual_seed(1)
    theta = torch.tensor([0.5, -0.3, 1.2, 2.5], dtype=F64)
    n = 20000
    columns = []
    for i in range(4):
        x = conditional_gumbel(theta, torch.tensor(i), (n,))
        others = torch.cat([x[:, :i], x[:, i + 1 :]], -1)
        columns.append(x[:, i] - others.amax(-1))
    log_p = torch.log_softmax(theta, -1)
    expected = expected_gap(log_p, torch.log1p(-log_p.exp()))
    assert_unbiased(torch.stack(columns, -1), expected, name="the GST-p gap")


def test_expected_gap_limits():
    p = torch.tensor([0.0, 1e-12, 1e-5, 0.3, 1 - 1e-9, 1.0], dtype=F64)
    gap = expected_gap(torch.log(p), torch.log1p(-p))
    assert not gap.isnan().any()
    torch.testing.assert_close(gap[:3], torch.tensor([1.0, 1.0, 1 + 5e-6], dtype=F64))
    # float(): pytest.approx compares a tensor only through numpy, which the core runs without
    assert float(gap[3]) == pytest.approx(-math.log(0.7) / 0.3)
    assert float(gap[4]) == pytest.approx(-math.log(1e-9), rel=1e-6) and gap[5] == torch.inf


# --- the estimator ----------------------------------------------------------------------------


@pytest.mark.parametrize("gap", [1.0, "p"])
def test_forward_is_the_discrete_sample_with_one_loss_call(gap):
    torch.manual_seed(2)
    logits = torch.randn(5, 3, 4, requires_grad=True)
    dist = lg.Categorical(logits=logits).to_event(1)
    calls = []

    def loss(z):
        calls.append(z)
        return (z * torch.arange(4.0)).sum((-1, -2)) ** 2

    out = GappedStraightThrough(gap=gap, tau=0.5, num_samples=3)(dist, loss)
    (z,) = calls
    assert z.shape == (3, 5, 3, 4) and ((z == 0) | (z == 1)).all() and (z.sum(-1) == 1).all()
    assert out.loss_evals == 3 and out.extras == {"tau": 0.5, "gap": gap}
    torch.testing.assert_close(out.value, loss(z.detach()).mean(0), rtol=0, atol=0)
    torch.testing.assert_close(out.surrogate.detach(), out.value, rtol=0, atol=0)
    out.surrogate.sum().backward()
    assert logits.grad.isfinite().all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("gap", [1.0, "p"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_extreme_logits_give_finite_values_and_gradients(gap, dtype):
    torch.manual_seed(3)
    cases = [
        (torch.tensor([[1e4, -1e4, 0.0], [-1e4, 0.0, 1e4]]), _categorical),
        (
            torch.tensor([[-torch.inf, 2.0, -torch.inf], [0.0, -torch.inf, -torch.inf]]),
            _categorical,
        ),
        (torch.tensor([[4.0], [-3.0]]), _categorical),  # one category
        (torch.tensor([[1e4, -1e4, torch.inf, -torch.inf, 0.0]]), lambda t: lg.Bernoulli(logits=t)),
    ]
    for logits, make in cases:
        leaf = logits.to(dtype).requires_grad_(True)
        est = GappedStraightThrough(gap=gap, tau=0.1, num_samples=4)
        out = est(make(leaf), lambda z: (z[..., 0] - 0.5) ** 2 + z.sum(-1))
        assert out.value.dtype == dtype and out.value.isfinite().all()
        (grad,) = torch.autograd.grad(out.surrogate.sum(), leaf)
        assert grad.dtype == dtype and grad.isfinite().all()
        assert (grad[logits.isinf()] == 0).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"gap": 0.0}, ValueError, "gap"),
        ({"gap": -1.0}, ValueError, "gap"),
        ({"gap": math.nan}, ValueError, "gap"),
        ({"gap": "q"}, ValueError, "gap"),
        ({"gap": True}, TypeError, "gap"),
        ({"gap": None}, TypeError, "gap"),
        ({"tau": 0.0}, ValueError, "tau"),
        ({"num_samples": 0}, ValueError, "num_samples"),
    ],
)
def test_constructor_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        GappedStraightThrough(**kwargs)


def test_call_validation():
    with pytest.raises(TypeError, match="has_logits"):
        GappedStraightThrough()(lg.SparsemaxCategorical(torch.zeros(2, 3)), lambda z: z.sum(-1))
    with pytest.raises(ValueError, match="loss_fn must return shape"):
        GappedStraightThrough()(lg.Bernoulli(logits=torch.zeros(2, 3)), lambda z: z)


def test_registry_entries():
    for name, gap in (("gst-1.0", 1.0), ("gst-p", "p")):
        entry = ESTIMATORS[name]
        assert entry.applies_to(lg.Categorical) and entry.applies_to(lg.Bernoulli)
        est = entry.build()
        assert isinstance(est, GappedStraightThrough) and est.gap == gap and est.tau == 1.0
    est = make_estimator("gst-1.0", {"gap": "2.5", "tau": 0.5})
    assert est.gap == 2.5 and est.tau == 0.5
    with pytest.raises(ValueError, match="gap"):
        resolve_options("gst-1.0", {"gap": 0})
    with pytest.raises(UnknownOption, match="gap"):
        resolve_options("gst-p", {"gap": 2.0})
