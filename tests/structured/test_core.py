"""The generic trace calculus (core), top-k, KSubset and PlackettLuce."""

from __future__ import annotations

import math

import pytest
import torch

import latentgrad as lg
from latentgrad.distributions import StructuredDistribution
from latentgrad.distributions.ksubset import KSubset, PlackettLuce
from latentgrad.structured import (
    TopK,
    Trace,
    conditional_noise,
    enumerate_traces,
    noise_log_prob,
    run,
    sample_noise,
    trace_log_prob,
)
from latentgrad.testing.stats import chi_square_pvalue, ks_critical_value, ks_statistic

F64 = torch.float64


def _random_mask(g: torch.Generator, rows: int, n: int, k: int) -> torch.Tensor:
    keys = torch.rand(rows, n, generator=g)
    keep = keys.argsort(-1)[:, : max(k, n - 2)]
    return torch.zeros(rows, n, dtype=torch.bool).scatter_(-1, keep, True)


@pytest.mark.parametrize(("n", "k"), [(1, 1), (4, 2), (6, 6), (9, 3)])
def test_topk_fast_path_equals_the_generic_driver(n: int, k: int) -> None:
    g = torch.Generator().manual_seed(n * 10 + k)
    w = torch.randn(50, n, generator=g, dtype=F64)
    mask = _random_mask(g, 50, n, k)
    alg = TopK(n, k)
    s1, t1 = run(alg, w, mask)
    s2, t2 = alg.run(w, mask)
    assert torch.equal(s1, s2)
    assert torch.equal(t1.choices, t2.choices)
    assert torch.equal(t1.candidates, t2.candidates)


def test_trace_log_prob_by_hand() -> None:
    theta = torch.tensor([1.0, 0.0, -1.0, 2.0], dtype=F64)
    trace = Trace(
        torch.tensor([3, 0]),
        torch.tensor([[True, True, True, True], [True, True, True, False]]),
    )
    lam = theta.exp()
    expected = math.log(lam[3] / lam.sum()) + math.log(lam[0] / lam[:3].sum())
    assert trace_log_prob(theta, trace).item() == pytest.approx(expected, rel=1e-12)
    assert trace.valid.tolist() == [True, True]
    assert trace.chosen.tolist() == [True, False, False, True]


def test_trace_helpers_index_and_reshape() -> None:
    q = KSubset(torch.zeros(2, 3, 5), k=2)
    _, _, trace = q.sample_with_trace((4,))
    assert trace.batch_shape == (4, 2, 3)
    assert trace[0].batch_shape == (2, 3)
    assert trace.reshape((8, 3)).candidates.shape == (8, 3, 2, 5)


def test_noise_log_prob_gradient_is_the_exponential_score() -> None:
    theta = torch.tensor([[0.5, -1.0, 2.0, -torch.inf]], dtype=F64, requires_grad=True)
    noise = sample_noise(theta, (3,))
    assert bool(torch.isposinf(noise[..., 3]).all())
    lp = noise_log_prob(theta, noise)
    (grad,) = torch.autograd.grad(lp.sum(), theta)
    e = noise[..., :3].exp()
    expected = (1 - theta[..., :3].detach().exp() * e).sum(0)
    torch.testing.assert_close(grad[..., :3], expected)
    assert grad[0, 3].item() == 0


def test_conditional_noise_is_differentiable_and_gradchecks() -> None:
    theta = torch.tensor([[0.3, -0.2, 1.0, 0.0, -0.7]], dtype=F64, requires_grad=True)
    q = KSubset(theta.detach(), k=3)
    _, _, trace = q.sample_with_trace((2,))
    step = torch.empty(2, 1, 3, dtype=F64).exponential_()
    item = torch.empty(2, 1, 5, dtype=F64).exponential_()
    assert torch.autograd.gradcheck(
        lambda t: conditional_noise(t, trace, step, item), (theta,), check_undefined_grad=False
    )
    assert torch.autograd.gradcheck(lambda t: trace_log_prob(t, trace), (theta,))
    noise = conditional_noise(theta.detach(), trace, step, item)
    assert torch.autograd.gradcheck(lambda t: noise_log_prob(t, noise), (theta,))


def test_enumerate_traces_counts_and_limit() -> None:
    mask = torch.ones(1, 5, dtype=torch.bool)
    assert enumerate_traces(TopK(5, 5), mask).row.numel() == 120
    assert enumerate_traces(TopK(5, 2), mask).row.numel() == 20
    with pytest.raises(ValueError, match="max_traces"):
        enumerate_traces(TopK(5, 5), mask, max_traces=50)


def test_support_probs_pads_rows_with_different_masks() -> None:
    s = torch.tensor([[0.0, 1.0, 2.0], [0.0, -torch.inf, 1.0]], dtype=F64, requires_grad=True)
    values, probs = KSubset(s, k=2).support_probs()
    assert values.shape == (3, 2, 3)
    assert (probs[:, 1] > 0).sum() == 1  # only {0, 2} in the second row
    torch.testing.assert_close(probs.sum(0), torch.ones(2, dtype=F64))
    probs[0, 0].backward()
    assert bool(torch.isfinite(s.grad).all())


# -- negative controls: the statistical tests of test_families can fail ------------------------


@pytest.mark.stat
def test_chi_square_detects_a_wrong_law() -> None:
    torch.manual_seed(0)
    q = KSubset(torch.tensor([0.5, -0.3, 1.0, 0.0]), k=2)
    wrong = KSubset(torch.tensor([0.5, -0.3, 1.3, 0.0]), k=2)
    z = wrong.sample((20000,))
    values, probs = q.support_probs()
    idx = (z.unsqueeze(1) == values.unsqueeze(0)).all(-1).float().argmax(-1)
    pvalue = chi_square_pvalue(torch.bincount(idx, minlength=values.shape[0]), probs)
    assert pvalue < 1e-5


@pytest.mark.stat
def test_ks_detects_a_wrong_conditional_sampler() -> None:
    torch.manual_seed(1)
    q = KSubset(torch.tensor([0.5, -0.3, 1.0, 0.0, -1.0], dtype=F64), k=2)
    n = 20000
    _, noise, trace = q.sample_with_trace((n,))
    # unchosen items that wait no time after their last step are visibly wrong
    wrong = conditional_noise(q.scores, trace, item_noise=torch.full_like(noise, 1e-3))
    d = ks_statistic(wrong, q.sample_noise((n,)))
    assert float(d.max()) > ks_critical_value(n, n, 1e-5)


# -- KSubset and PlackettLuce ------------------------------------------------------------------


@pytest.mark.parametrize(("n", "k"), [(3, 1), (5, 2), (6, 4), (7, 7)])
def test_ksubset_log_prob_dp_equals_enumeration(n: int, k: int) -> None:
    g = torch.Generator().manual_seed(n + k)
    s = torch.randn(2, n, generator=g, dtype=F64)
    q = KSubset(s, k=k)
    values, _ = q.support_probs()
    dp = q.log_prob(values).exp()
    by_enumeration = StructuredDistribution.log_prob(q, values).exp()
    torch.testing.assert_close(dp, by_enumeration, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(dp.sum(0), torch.ones(2, dtype=F64))
    assert values.shape[0] == math.comb(n, k) == q.support_size()


def test_ksubset_mode_is_the_top_k() -> None:
    s = torch.tensor([[0.1, 3.0, -1.0, 2.0], [5.0, -torch.inf, 4.0, 0.0]])
    assert KSubset(s, k=2).mode().tolist() == [[0, 1, 0, 1], [1, 0, 1, 0]]
    assert PlackettLuce(s[:1]).mode().tolist() == [[1, 3, 0, 2]]


def test_ksubset_extreme_inputs() -> None:
    s = torch.full((3, 6), -torch.inf)
    s[:, 2] = 0.0
    q = KSubset(s, k=1)
    assert torch.equal(q.sample((4,))[..., 2], torch.ones(4, 3))
    assert q.log_prob(q.mode()).tolist() == [0.0, 0.0, 0.0]
    big = torch.tensor([[1e4, -1e4, 0.0, 5e3, -5e3]], requires_grad=True)
    q = KSubset(big, k=3)
    z, noise, trace = q.sample_with_trace((100,))
    assert bool((z == torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])).all())
    lp = q.trace_log_prob(trace) + q.log_prob(z) + q.noise_log_prob(noise)
    lp.sum().backward()
    assert bool(torch.isfinite(lp).all()) and bool(torch.isfinite(big.grad).all())
    assert q.log_prob(z)[0].item() == pytest.approx(0.0, abs=1e-6)


def test_plackett_luce_log_prob_is_the_trace_log_prob() -> None:
    q = PlackettLuce(torch.randn(3, 5, dtype=F64))
    o, _, trace = q.sample_with_trace((7,))
    torch.testing.assert_close(q.log_prob(o), q.trace_log_prob(trace))
    assert q.support_size() == 120


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: KSubset(torch.zeros(3), k=4), ValueError, "k must be <= n"),
        (lambda: KSubset(torch.zeros(3), k=0), ValueError, "k must be >= 1"),
        (lambda: KSubset(torch.zeros(3), k=1.5), TypeError, "k must be an int"),
        (lambda: KSubset(torch.tensor([0.0, math.nan]), k=1), ValueError, "scores contains NaN"),
        (lambda: KSubset(torch.tensor([0.0, math.inf]), k=1), ValueError, r"\+inf"),
        (lambda: KSubset(torch.tensor([0.0, -math.inf]), k=2), ValueError, "at least k"),
        (lambda: KSubset(torch.zeros(3, dtype=torch.long), k=1), TypeError, "floating-point"),
        (lambda: KSubset([0.0, 1.0], k=1), TypeError, "torch.Tensor"),
        (lambda: PlackettLuce(torch.tensor([0.0, -math.inf])), ValueError, "finite"),
        (lambda: TopK(3, 4), ValueError, "k must be in"),
    ],
)
def test_bad_input_is_rejected(make, error, match) -> None:
    with pytest.raises(error, match=match):
        make()


def test_public_api() -> None:
    q = lg.KSubset(torch.zeros(4), k=2)
    assert isinstance(q, lg.distributions.DiscreteDistribution)
    assert "k=2" in repr(q)
    assert lg.PlackettLuce(torch.zeros(3)).event_shape == (3,)
