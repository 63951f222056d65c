"""Tests of Gumbel-Rao: the conditional noise samplers' laws (against rejection sampling and the
unconditional noise), the Rao-Blackwellization (same mean as straight-through Gumbel-Softmax, no
more variance), numerics and validation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import latentgrad as lg
from latentgrad._numerics import gumbel_noise, logistic_noise
from latentgrad.estimators import GumbelRao, GumbelSoftmax
from latentgrad.estimators.gumbel_rao import conditional_gumbel, conditional_logistic
from latentgrad.lab.registry import ESTIMATORS, make_estimator, resolve_options
from latentgrad.schedules import ExponentialDecay
from latentgrad.testing import (
    assert_unbiased,
    bonferroni_z,
    check_unbiased,
    ks_critical_value,
    ks_statistic,
    replicated_gradients,
)

F64 = torch.float64
ALPHA = 1e-5  # family-wise false-failure rate of each statistical test below


# --- the conditional Gumbel sampler -----------------------------------------------------------


@pytest.mark.parametrize(
    "scores",
    [
        torch.tensor([0.5, -0.3, 1.2, 0.0]),
        torch.tensor([30.0, -30.0, 0.0, 29.0]),
        torch.tensor([1e4, -1e4, 0.0, 1e4 - 1.0]),
        torch.tensor([-torch.inf, 2.0, -torch.inf, 1.0]),
    ],
    ids=["moderate", "large", "pm1e4", "neg-inf"],
)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_conditional_gumbel_argmax_is_always_the_given_category(scores, dtype):
    torch.manual_seed(0)
    scores = scores.to(dtype)
    possible = torch.isfinite(scores).nonzero().flatten()
    index = possible[torch.randint(len(possible), (20000,))]
    x = conditional_gumbel(scores, index)
    assert x.shape == (20000, 4)
    assert torch.equal(x.argmax(-1), index)
    assert not x.isnan().any()
    assert (x[:, ~torch.isfinite(scores)] == -torch.inf).all()
    assert x[:, torch.isfinite(scores)].isfinite().all()


def _ks_pass(x: Tensor, y: Tensor, num_tests: int) -> tuple[bool, Tensor, float]:
    stat = ks_statistic(x, y)
    crit = ks_critical_value(x.shape[0], y.shape[0], ALPHA / num_tests)
    return bool((stat <= crit).all()), stat, crit


@pytest.mark.stat
def test_conditional_gumbel_law_matches_rejection_sampling():
    # For each category i, the draws given argmax = i against unconditional perturbed scores
    # that happened to have their argmax at i (two-sample KS per coordinate, Bonferroni).
    torch.manual_seed(1)
    scores = torch.tensor([0.5, -0.3, 1.2], dtype=F64)
    free = scores + gumbel_noise((300_000, 3), scores)
    winner = free.argmax(-1)
    for i in range(3):
        reference = free[winner == i]
        given = conditional_gumbel(scores, torch.tensor(i), (20000,))
        ok, stat, crit = _ks_pass(given, reference, 9)
        assert ok, (i, stat, crit)
    # Power: the unconditional draws are rejected as draws given argmax = 1.
    ok, _, _ = _ks_pass(free[:20000], free[winner == 1], 9)
    assert not ok


@pytest.mark.stat
def test_conditional_gumbel_marginal_is_unconditional():
    # Index ~ softmax(scores), then x | index: x - scores is i.i.d. standard Gumbel (checked per
    # coordinate and on the pairwise differences, which see the dependence).
    torch.manual_seed(2)
    scores = torch.tensor([0.5, -0.3, 1.2], dtype=F64)
    n = 50000
    index = lg.Categorical(logits=scores).sample((n,)).argmax(-1)
    g = conditional_gumbel(scores, index) - scores
    ref = gumbel_noise((n, 3), scores)
    pairs = [(0, 1), (0, 2), (1, 2)]

    def with_differences(u: Tensor) -> Tensor:
        return torch.cat([u, torch.stack([u[:, i] - u[:, j] for i, j in pairs], -1)], -1)

    ok, stat, crit = _ks_pass(with_differences(g), with_differences(ref), 6)
    assert ok, (stat, crit)


def test_conditional_logistic_reproduces_the_bits():
    torch.manual_seed(3)
    a = torch.tensor([-3.0, 0.0, 2.0, 1e4, -1e4, torch.inf, -torch.inf])
    z = lg.Bernoulli(logits=a).sample((5000,))
    noise = conditional_logistic(a, z)
    assert noise.shape == (5000, 7) and not noise.isnan().any()
    assert torch.equal((noise < a).to(z.dtype), z)
    assert noise[:, :5].isfinite().all()


@pytest.mark.stat
def test_conditional_logistic_law_matches_rejection_and_marginal():
    torch.manual_seed(4)
    a = torch.tensor([-1.0, 0.3, 2.0], dtype=F64)
    free = logistic_noise((200_000, 3), a)
    for value in (0.0, 1.0):
        given = conditional_logistic(a, torch.full((3,), value, dtype=F64), (20000,))
        for d in range(3):
            column = free[:, d]
            reference = column[(column < a[d]).to(F64) == value]
            ok, stat, crit = _ks_pass(given[:, d : d + 1], reference[:, None], 9)
            assert ok, (value, d, stat, crit)
    z = lg.Bernoulli(logits=a).sample((50000,))
    ok, stat, crit = _ks_pass(conditional_logistic(a, z), free[:50000], 9)
    assert ok, (stat, crit)


# --- the estimator: a Rao-Blackwellization of straight-through Gumbel-Softmax ----------------


def _problem(family: str):
    """Logits (float64) and a nonlinear loss for a small latent of ``family``."""
    if family == "categorical":
        logits = torch.tensor([[0.5, -0.3, 1.2, 0.0, -1.0], [2.0, 0.0, 0.0, -0.5, 1.0]], dtype=F64)

        def make(t):
            return lg.Categorical(logits=t)

        c = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0], dtype=F64)
    elif family == "bernoulli":
        logits = torch.tensor([[0.5, -1.3, 2.0], [0.0, 1.0, -0.4]], dtype=F64)

        def make(t):
            return lg.Bernoulli(logits=t)

        c = torch.tensor([1.0, -2.0, 1.5], dtype=F64)
    else:  # independent categoricals
        logits = torch.tensor([[[0.5, -0.3, 1.2], [0.0, 1.0, -1.0]]], dtype=F64)

        def make(t):
            return lg.Categorical(logits=t).to_event(1)

        c = torch.tensor([[1.0, -2.0, 0.5], [3.0, -1.0, 0.2]], dtype=F64)
    dims = tuple(range(-c.dim(), 0))

    def loss(z: Tensor) -> Tensor:
        s = (z * c).sum(dims)
        return (s - 0.3) ** 2 + torch.sin(2 * s)

    return logits, make, loss


def _gradients(est, family: str, n: int) -> Tensor:
    logits, make, loss = _problem(family)
    grads = replicated_gradients(
        lambda rep: est(make(rep), loss).surrogate.reshape(rep.shape[0], -1).sum(-1), logits, n
    )
    return grads.reshape(n, -1)


FAMILIES = ["categorical", "bernoulli", "independent"]


@pytest.mark.stat
@pytest.mark.parametrize("family", FAMILIES)
def test_same_mean_as_straight_through_gumbel_softmax(family):
    # Independent replicates of both estimators; their paired differences have mean 0 (z-test
    # per coordinate, alpha = 1e-5 family-wise).
    torch.manual_seed(5)
    n = 20000
    st = _gradients(GumbelSoftmax(tau=0.7, hard=True), family, n)
    gr = _gradients(GumbelRao(tau=0.7, num_draws=10), family, n)
    assert_unbiased(gr - st, torch.zeros(st.shape[1], dtype=F64), name="GumbelRao - ST-GS")
    # Power: the same test sees the difference a change of temperature makes.
    other = _gradients(GumbelRao(tau=0.35, num_draws=10), family, n)
    assert not check_unbiased(other - st, torch.zeros(st.shape[1], dtype=F64)).passed


def _variance_and_se(g: Tensor) -> tuple[Tensor, Tensor]:
    """Per-coordinate variance and the standard error of that estimate."""
    centered = g - g.mean(0)
    var = centered.pow(2).mean(0)
    se = ((centered.pow(4).mean(0) - var**2).clamp_min(0) / g.shape[0]).sqrt()
    return var, se


@pytest.mark.stat
@pytest.mark.parametrize("family", FAMILIES)
def test_variance_not_larger_than_straight_through_gumbel_softmax(family):
    torch.manual_seed(6)
    n = 20000
    st = _gradients(GumbelSoftmax(tau=0.7, hard=True), family, n)
    gr = _gradients(GumbelRao(tau=0.7, num_draws=10), family, n)
    (v_st, se_st), (v_gr, se_gr) = _variance_and_se(st), _variance_and_se(gr)
    z = bonferroni_z(ALPHA, st.shape[1] + 1)
    # No coordinate has a significantly larger variance ...
    assert (v_gr - v_st < z * (se_st**2 + se_gr**2).sqrt()).all(), (v_gr, v_st)
    # ... and the total variance is significantly smaller.
    tot_st = (st - st.mean(0)).pow(2).sum(1)
    tot_gr = (gr - gr.mean(0)).pow(2).sum(1)
    se = math.sqrt((tot_st.var() + tot_gr.var()) / n)
    assert tot_st.mean() - tot_gr.mean() > z * se, (tot_st.mean(), tot_gr.mean())


def test_forward_is_the_discrete_sample_with_one_loss_call():
    torch.manual_seed(7)
    logits = torch.randn(6, 4, 5, requires_grad=True)
    dist = lg.Categorical(logits=logits).to_event(1)
    calls = []

    def loss(z):
        calls.append(z)
        return (z * torch.arange(5.0)).sum((-1, -2))

    out = GumbelRao(tau=0.5, num_draws=7, num_samples=2)(dist, loss)
    (z,) = calls
    assert z.shape == (2, 6, 4, 5) and ((z == 0) | (z == 1)).all() and (z.sum(-1) == 1).all()
    assert out.loss_evals == 2 and out.extras == {"tau": 0.5, "num_draws": 7}
    torch.testing.assert_close(out.value, loss(z.detach()).mean(0), rtol=0, atol=0)
    out.surrogate.sum().backward()
    assert logits.grad.isfinite().all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_extreme_logits_give_finite_values_and_gradients(dtype):
    torch.manual_seed(8)
    cats = torch.tensor(
        [[1e4, -1e4, 0.0], [-torch.inf, 2.0, -torch.inf], [0.0, -1e4, 1e4 - 1.0]]
    ).to(dtype)
    for logits, make, loss in [
        (cats, lambda t: lg.Categorical(logits=t), lambda z: (z[..., 0] - 2 * z[..., 2]) ** 2),
        (
            torch.tensor([[4.0], [-3.0]]).to(dtype),
            lambda t: lg.Categorical(logits=t),
            lambda z: z[..., 0] * 3,
        ),
        (
            torch.tensor([[1e4, -1e4, torch.inf, -torch.inf, 0.0]]).to(dtype),
            lambda t: lg.Bernoulli(logits=t),
            lambda z: (z.sum(-1) - 1) ** 2,
        ),
    ]:
        leaf = logits.clone().requires_grad_(True)
        out = GumbelRao(tau=0.3, num_draws=5, num_samples=4)(make(leaf), loss)
        assert out.value.dtype == dtype and out.value.isfinite().all()
        (grad,) = torch.autograd.grad(out.surrogate.sum(), leaf)
        assert grad.dtype == dtype and grad.isfinite().all()
        assert (grad[logits.isinf()] == 0).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_draws": 0}, ValueError, "num_draws"),
        ({"num_draws": 2.5}, TypeError, "num_draws"),
        ({"num_samples": 0}, ValueError, "num_samples"),
        ({"tau": 0.0}, ValueError, "tau"),
        ({"tau": math.inf}, ValueError, "tau"),
        ({"tau": None}, TypeError, "tau"),
    ],
)
def test_constructor_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        GumbelRao(**kwargs)


def test_call_validation():
    est = GumbelRao()
    with pytest.raises(TypeError, match="dist"):
        est(torch.distributions.Bernoulli(logits=torch.zeros(3)), lambda z: z)
    with pytest.raises(TypeError, match="has_logits"):
        est(lg.KSubset(torch.zeros(2, 4), k=2), lambda z: z.sum(-1))


def test_registry_entry_has_the_st_gs_schedule_and_num_draws():
    entry = ESTIMATORS["gumbel-rao"]
    assert entry.applies_to(lg.Categorical) and entry.applies_to(lg.Bernoulli)
    est = entry.build()
    assert isinstance(est, GumbelRao) and est.num_draws == 10
    assert isinstance(est.tau_schedule, ExponentialDecay) and est.tau == 1.0
    est.step(1000)
    assert est.tau == pytest.approx(math.exp(-0.1))
    options = {"num_draws": "5", "tau_rate": "0", "tau_initial": 0.4, "tau_minimum": 0.4}
    est = make_estimator("gumbel-rao", options)
    assert est.num_draws == 5 and est.tau == 0.4
    for bad in ({"num_draws": 0}, {"tau_minimum": 2.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            resolve_options("gumbel-rao", bad)
