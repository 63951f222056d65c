"""Baselines: unbiased with ScoreFunction, closed forms, state, variance reduction, checks."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import latentgrad as lg
from latentgrad.estimators.baselines import (
    NVIL,
    Baseline,
    BaselineOutput,
    CumulativeMean,
    IndependentSample,
    LeaveOneOut,
    MovingAverage,
)
from latentgrad.estimators.score_function import ScoreFunction
from latentgrad.testing import assert_unbiased, replicated_gradients
from latentgrad.testing.examples import EstimatorExample, WithContext, estimator_examples
from latentgrad.testing.problems import GradientProblem, replicated_and_exact, small_problems

F64 = torch.float64


Problem = GradientProblem
PROBLEMS = small_problems()


CONTEXT_DIM = 3


def _warm_up(estimator: Callable, problem: Problem) -> None:
    """One call so that running averages hold a value (and are no longer 0)."""
    estimator(problem.make_dist(problem.logits), problem.make_loss(problem.theta))


# The score-function estimators with a baseline, from the registry of examples.
ESTIMATORS: dict[str, EstimatorExample] = {x.name: x for x in estimator_examples(group="baseline")}


# -- unbiasedness --------------------------------------------------------------------------------


@pytest.mark.stat
@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_unbiased_with_baseline(problem: Problem, name: str) -> None:
    torch.manual_seed(10)
    estimator = ESTIMATORS[name].make(problem.make_dist(problem.logits))
    _warm_up(estimator, problem)
    grads, exact = replicated_and_exact(problem, estimator, 4000)
    assert_unbiased(grads, exact, name=f"{name} on {problem.name}")


@pytest.mark.stat
def test_leave_one_out_lowers_variance_under_a_large_offset() -> None:
    torch.manual_seed(11)
    logits = torch.tensor([0.5, -0.3, 0.0, 1.0], dtype=F64)
    w = torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=F64)

    def loss_fn(z: Tensor) -> Tensor:
        return 100.0 + (z * w).sum(-1)

    def variance(baseline: Baseline | None) -> Tensor:
        est = ScoreFunction(4, baseline=baseline)
        grads = replicated_gradients(
            lambda rep: est(lg.Categorical(logits=rep), loss_fn).surrogate, logits, 4000
        )
        return grads.var(0)

    none, loo = variance(None), variance(LeaveOneOut())
    # Without a baseline the variance is about 100^2 p_i (1 - p_i) / K >= 250 per coordinate
    # (observed 260..630). With leave-one-out each per-sample term is at most
    # max|w_i - w_j| * |e_z - p| <= 0.5 in absolute value, so the variance of their mean is
    # <= 0.25 whatever the seed (observed ~2e-3): a ratio of at least 1000 is guaranteed.
    assert (none > 100).all(), none
    assert (loo <= 0.25).all(), loo
    assert loo.max() * 1000 < none.min()


def test_constant_loss_gives_zero_gradient_with_leave_one_out() -> None:
    logits = torch.randn(5, 4, dtype=F64, requires_grad=True)
    out = ScoreFunction(3, baseline=LeaveOneOut())(
        lg.Categorical(logits=logits), lambda z: 42.0 + 0 * z.sum(-1)
    )
    (g,) = torch.autograd.grad(out.surrogate.sum(), logits)
    assert (g == 0).all()
    assert (out.extras["baseline"] == 42.0).all()


# -- closed forms and state ------------------------------------------------------------------------


def test_leave_one_out_closed_form() -> None:
    losses = torch.tensor([[1.0, 2.0], [3.0, 6.0], [8.0, 10.0]])
    value = LeaveOneOut()(torch.zeros(3, 2, 4), losses, None).value
    expected = torch.stack([(losses.sum(0) - losses[k]) / 2 for k in range(3)])
    torch.testing.assert_close(value, expected)
    with pytest.raises(ValueError, match="losses must hold at least 2"):
        LeaveOneOut()(torch.zeros(1, 2, 4), losses[:1], None)


def test_moving_average_uses_previous_steps_only() -> None:
    baseline = MovingAverage(decay=0.5)
    est = ScoreFunction(2, baseline=baseline)
    q = lg.Categorical(logits=torch.zeros(3, 2))
    out = est(q, lambda z: 4.0 + 0 * z.sum(-1))
    assert (out.extras["baseline"] == 0).all()  # nothing seen yet
    assert float(baseline.average) == 4.0  # starts at the first mean, not decayed from 0
    out = est(q, lambda z: 6.0 + 0 * z.sum(-1))
    assert (out.extras["baseline"] == 4.0).all()
    assert float(baseline.average) == 5.0
    est.eval()
    est(q, lambda z: 100.0 + 0 * z.sum(-1))
    assert float(baseline.average) == 5.0  # no update in eval mode


def test_cumulative_mean_averages_every_previous_step_equally() -> None:
    baseline = CumulativeMean()
    est = ScoreFunction(2, baseline=baseline)
    q = lg.Categorical(logits=torch.zeros(3, 2))
    seen = []
    for level in (4.0, 6.0, 11.0):
        out = est(q, lambda z, c=level: c + 0 * z.sum(-1))
        seen.append(float(out.extras["baseline"][0, 0]))
    assert seen == [0.0, 4.0, 5.0]  # 0, then the mean of the steps before
    assert float(baseline.average) == 7.0 and int(baseline.count) == 3
    est.eval()
    est(q, lambda z: 100.0 + 0 * z.sum(-1))
    assert float(baseline.average) == 7.0  # no update in eval mode
    restored = CumulativeMean()
    restored.load_state_dict(baseline.state_dict())
    assert float(restored.average) == 7.0 and int(restored.count) == 3


def test_independent_sample_draws_extra_samples_in_the_same_call() -> None:
    torch.manual_seed(12)
    calls: list[tuple[int, ...]] = []

    def loss_fn(z: Tensor) -> Tensor:
        calls.append(tuple(z.shape))
        return (z * torch.arange(4.0)).sum(-1)

    out = ScoreFunction(2, baseline=IndependentSample(3))(
        lg.Categorical(logits=torch.zeros(6, 4)), loss_fn
    )
    assert calls == [(5, 6, 4)]
    assert out.loss_evals == 5
    assert out.losses.shape == (2, 6) and out.extras["extra_losses"].shape == (3, 6)
    torch.testing.assert_close(
        out.extras["baseline"], out.extras["extra_losses"].mean(0).expand(2, 6)
    )
    assert out.per_sample.shape == (2, 6)
    torch.testing.assert_close(out.value, out.losses.mean(0))


def test_independent_sample_with_backprop_adds_the_extra_samples_gradient_weighted_by_surprisal():
    # Correia et al.'s SFE+: (f(z).detach() - f(z')) log q(z), f(z') not detached.
    torch.manual_seed(14)
    logits = torch.randn(6, 4, dtype=F64, requires_grad=True)
    w = torch.randn(4, dtype=F64, requires_grad=True)
    seen: list[Tensor] = []

    def loss_fn(z: Tensor) -> Tensor:
        seen.append(z)
        return (z * w).sum(-1) ** 2

    grads = {}
    for backprop in (False, True):
        torch.manual_seed(15)
        est = ScoreFunction(2, baseline=IndependentSample(3, backprop=backprop))
        out = est(lg.Categorical(logits=logits), loss_fn)
        grads[backprop] = torch.autograd.grad(out.surrogate.sum(), (logits, w))
        value = out.value
    z = seen[-1].detach()  # (2 + 3, 6, 4), the same draws both times (same seed)
    torch.testing.assert_close(seen[0], seen[1])
    torch.testing.assert_close(value, out.losses.mean(0))
    torch.testing.assert_close(grads[True][0], grads[False][0])  # q's gradient unchanged
    # d/dw of f(z) = (z.w)^2 is 2 (z.w) z; the extra term: mean_k -log q(z_k) mean_e that.
    logq = torch.distributions.OneHotCategorical(logits=logits.detach()).log_prob(z[:2])
    df = 2 * (z * w.detach()).sum(-1, keepdim=True) * z  # (5, 6, 4)
    extra = (-logq.unsqueeze(-1) * df[2:].mean(0)).mean(0).sum(0)
    torch.testing.assert_close(grads[True][1] - grads[False][1], extra)
    assert (
        repr(IndependentSample(2, backprop=True))
        == "IndependentSample(num_samples=2, backprop=True)"
    )
    with pytest.raises(TypeError, match="backprop must be a bool"):
        IndependentSample(backprop=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="baseline must not backpropagate with MuProp"):
        lg.MuProp(1, baseline=IndependentSample(backprop=True))


def test_nvil_one_backward_trains_the_network() -> None:
    torch.manual_seed(13)
    net = nn.Linear(3, 1)
    x = torch.randn(5, 3)
    logits = torch.randn(5, 4, requires_grad=True)
    est = ScoreFunction(2, baseline=NVIL(net))
    out = est(lg.Categorical(logits=logits), lambda z: (z * torch.arange(4.0)).sum(-1), context=x)
    torch.testing.assert_close(out.surrogate.detach(), out.value)
    out.surrogate.mean().backward()
    # first step: c = 0, so the own loss is the MSE between the losses and network(x)
    expected = (out.losses - net(x).squeeze(-1)).pow(2).mean()
    torch.testing.assert_close(out.extras["baseline_loss"], expected.detach())
    (gw,) = torch.autograd.grad(expected, net.weight)
    torch.testing.assert_close(net.weight.grad, gw)
    assert set(est.state_dict()) >= {
        "baseline.center",
        "baseline.variance",
        "baseline.network.weight",
    }
    assert {id(p) for p in est.parameters()} == {id(p) for p in net.parameters()}


def test_nvil_running_statistics() -> None:
    net = nn.Linear(2, 1, bias=False)
    nn.init.zeros_(net.weight)
    nvil = NVIL(net, variance_normalization=True, decay=0.5)
    x = torch.zeros(4, 2)
    losses = torch.tensor([[1.0, 2.0, 3.0, 4.0], [3.0, 4.0, 5.0, 6.0]])
    out = nvil(None, losses, x)
    assert float(out.scale) == 1.0 and (out.value == 0).all()
    assert float(nvil.center) == 3.5 and float(nvil.variance) == pytest.approx(2.25)
    out = nvil(None, losses + 2, x)
    assert (out.value == 3.5).all() and float(out.scale) == pytest.approx(1.5)
    assert float(nvil.center) == 4.5


def test_nvil_variance_normalization_rescales_the_gradient() -> None:
    problem = PROBLEMS[0]
    net = nn.Linear(CONTEXT_DIM, 1).double()
    x = torch.randn(CONTEXT_DIM, dtype=F64)

    def grads(normalize: bool, variance: float) -> tuple[Tensor, Tensor, object]:
        nvil = NVIL(net, variance_normalization=normalize).eval()  # frozen statistics
        nvil.center.fill_(0.5)
        nvil.variance.fill_(variance)
        nvil.initialized.fill_(True)
        logits = problem.logits.clone().requires_grad_(True)
        theta = problem.theta.clone().requires_grad_(True)
        torch.manual_seed(14)
        out = WithContext(ScoreFunction(3, baseline=nvil), x)(
            problem.make_dist(logits), problem.make_loss(theta)
        )
        g = torch.autograd.grad(out.surrogate.sum(), [logits, theta])
        return g[0], g[1], out.extras.get("scale")

    plain_logits, plain_theta, _ = grads(False, 9.0)
    norm_logits, norm_theta, scale = grads(True, 9.0)
    assert float(scale) == 3.0
    # the score-function part is divided by the running std, the pathwise part is untouched
    torch.testing.assert_close(norm_logits, plain_logits / 3)
    torch.testing.assert_close(norm_theta, plain_theta)
    assert not torch.allclose(norm_logits, plain_logits)
    # a running std below 1 is not amplified
    small_logits, _, scale = grads(True, 0.25)
    assert float(scale) == 1.0
    torch.testing.assert_close(small_logits, plain_logits)


def test_custom_baseline_inherits_the_protocol_default() -> None:
    class Half(Baseline):
        def __call__(self, samples, losses, context):
            return BaselineOutput(torch.full_like(losses, 0.5))

    assert Half().num_extra_samples(3) == 0
    out = ScoreFunction(2, baseline=Half())(
        lg.Categorical(logits=torch.zeros(2, 3)), lambda z: z[..., 0]
    )
    assert (out.extras["baseline"] == 0.5).all()


# -- argument checks -----------------------------------------------------------------------------


def test_argument_checks() -> None:
    q = lg.Categorical(logits=torch.zeros(3, 4))
    loss_fn = lambda z: z[..., 0]  # noqa: E731
    with pytest.raises(ValueError, match="num_samples must be >= 2 with the LeaveOneOut"):
        ScoreFunction(1, baseline=LeaveOneOut())
    with pytest.raises(ValueError, match="context is required"):
        ScoreFunction(baseline=NVIL(nn.Linear(2, 1)))(q, loss_fn)
    with pytest.raises(TypeError, match=r"network must be a torch\.nn\.Module"):
        NVIL(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="variance_normalization must be a bool"):
        NVIL(nn.Linear(2, 1), variance_normalization=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="decay must be in"):
        NVIL(nn.Linear(2, 1), decay=1.5)
    with pytest.raises(ValueError, match="decay must be in"):
        MovingAverage(decay=-0.1)
    with pytest.raises(TypeError, match="decay must be a real number"):
        MovingAverage(decay="0.8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        IndependentSample(0)
    with pytest.raises(ValueError, match="network"):
        ScoreFunction(baseline=NVIL(nn.Linear(2, 2)))(q, loss_fn, context=torch.zeros(3, 2))

    class Wrong(Baseline):
        def __call__(self, samples, losses, context):
            return losses

    class WrongShape(Baseline):
        def __call__(self, samples, losses, context):
            return BaselineOutput(torch.zeros(7))

    with pytest.raises(TypeError, match="must return a BaselineOutput"):
        ScoreFunction(baseline=Wrong())(q, loss_fn)
    with pytest.raises(ValueError, match="must broadcast"):
        ScoreFunction(baseline=WrongShape())(q, loss_fn)


# -- numerics ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("kind", ["independent", "nvil", "nvil_normalized"])
@pytest.mark.parametrize("family", ["cat_x1e4", "cat_one_left", "bern_x1e4"])
def test_extreme_inputs_stay_finite(dtype: torch.dtype, kind: str, family: str) -> None:
    torch.manual_seed(15)
    raw = {
        "cat_x1e4": torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]]) * 1e4,
        "cat_one_left": torch.tensor(
            [[-torch.inf, 0.0, -torch.inf], [-torch.inf, -torch.inf, 2.0]]
        ),
        "bern_x1e4": torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]]) * 1e4,
    }[family]
    logits = raw.to(dtype).requires_grad_()
    dist = (
        lg.Bernoulli(logits=logits) if family.startswith("bern") else lg.Categorical(logits=logits)
    )
    if kind == "independent":
        est = ScoreFunction(2, baseline=IndependentSample(2))
    else:
        est = ScoreFunction(2, baseline=NVIL(nn.Linear(3, 1), kind == "nvil_normalized"))
    w = torch.tensor([1.0, -1.0, 2.0], dtype=dtype)
    for _ in range(2):
        out = est(dist, lambda z: (z * w).sum(-1) ** 2 + 50.0, context=torch.randn(2, 3))
        (g,) = torch.autograd.grad(out.surrogate.float().sum(), logits)
        assert out.value.dtype == dtype and torch.isfinite(out.value).all()
        assert torch.isfinite(out.surrogate).all() and torch.isfinite(g).all()


@pytest.mark.stat
def test_a_baseline_using_the_own_loss_is_caught() -> None:
    # b_k = f_k / 2 depends on z_k: the score-function part of the gradient is halved.
    class OwnLoss(Baseline):
        def __call__(self, samples, losses, context):
            return BaselineOutput(losses / 2)

    torch.manual_seed(16)
    grads, exact = replicated_and_exact(PROBLEMS[0], ScoreFunction(2, baseline=OwnLoss()), 4000)
    with pytest.raises(AssertionError, match="biased"):
        assert_unbiased(grads, exact)
