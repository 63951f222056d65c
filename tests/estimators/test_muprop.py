"""MuProp (unbiased) and DARN (biased): against enumeration, contract, checks, numerics."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import latentgrad as lg
from latentgrad.estimators.baselines import NVIL, LeaveOneOut, MovingAverage
from latentgrad.estimators.muprop import DARN, MuProp
from latentgrad.testing import (
    assert_unbiased,
    exact_expectation,
    exact_gradient,
    replicated_gradients,
)
from latentgrad.testing.problems import GradientProblem, replicated_and_exact, small_problems

F64 = torch.float64


Problem = GradientProblem
PROBLEMS = small_problems()


# -- MuProp is unbiased ----------------------------------------------------------------------------


@pytest.mark.stat
@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
@pytest.mark.parametrize("num_samples", [1, 3])
def test_muprop_is_unbiased(problem: Problem, num_samples: int) -> None:
    torch.manual_seed(20)
    grads, exact = replicated_and_exact(problem, MuProp(num_samples), 4000)
    assert_unbiased(grads, exact, name=f"MuProp({num_samples}) on {problem.name}")


@pytest.mark.stat
@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
@pytest.mark.parametrize("baseline", ["moving_average", "leave_one_out"])
def test_muprop_with_a_residual_baseline_is_unbiased(problem: Problem, baseline: str) -> None:
    torch.manual_seed(21)
    est = MuProp(3, baseline=MovingAverage() if baseline == "moving_average" else LeaveOneOut())
    est(problem.make_dist(problem.logits), problem.make_loss(problem.theta))  # warm-up
    grads, exact = replicated_and_exact(problem, est, 4000)
    assert_unbiased(grads, exact, name=f"MuProp + {baseline} on {problem.name}")


@pytest.mark.stat
def test_muprop_with_nvil_is_unbiased_and_trains_the_network() -> None:
    torch.manual_seed(22)
    problem = PROBLEMS[1]
    net = nn.Linear(2, 1).double()
    est = MuProp(2, baseline=NVIL(net))
    x = torch.randn(2, dtype=F64)

    def with_context(dist, loss_fn, *, context=None):
        return est(dist, loss_fn, context=x.expand(*dist.batch_shape, 2))

    with_context(problem.make_dist(problem.logits), problem.make_loss(problem.theta))
    grads, exact = replicated_and_exact(problem, with_context, 4000)
    assert_unbiased(grads, exact, name="MuProp + NVIL")
    assert net.weight.grad is None  # replicated_gradients differentiates w.r.t. its copies only
    out = with_context(problem.make_dist(problem.logits), problem.make_loss(problem.theta))
    out.surrogate.sum().backward()
    assert net.weight.grad is not None and torch.isfinite(net.weight.grad).all()
    with pytest.raises(ValueError, match="context is required"):
        est(problem.make_dist(problem.logits), problem.make_loss(problem.theta))


@pytest.mark.stat
@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
def test_muprop_value_is_unbiased_for_the_expected_loss(problem: Problem) -> None:
    torch.manual_seed(23)
    r = 4000
    logits = problem.logits.expand(r, *problem.logits.shape)
    theta = problem.theta.expand(r, *problem.theta.shape)
    out = MuProp(2)(problem.make_dist(logits), problem.make_loss(theta))
    expected = exact_expectation(
        problem.make_dist(problem.logits), problem.make_loss(problem.theta)
    )
    assert_unbiased(out.value.reshape(r, -1), expected.reshape(-1).detach(), name="value")


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
def test_muprop_is_exact_for_a_linear_loss(problem: Problem) -> None:
    # The Taylor baseline of a linear loss is the loss itself: every replicate is exact.
    torch.manual_seed(24)
    w = torch.linspace(-1.0, 2.0, problem.logits.shape[-1], dtype=F64)

    def loss_fn(z: Tensor) -> Tensor:
        s = z * w
        return s.reshape(*s.shape[: s.dim() - len(dist.event_shape)], -1).sum(-1)

    dist = problem.make_dist(problem.logits)
    grads = replicated_gradients(
        lambda rep: MuProp(2)(problem.make_dist(rep), loss_fn).surrogate.reshape(50, -1).sum(1),
        problem.logits,
        50,
    )
    logits = problem.logits.clone().requires_grad_(True)
    (exact,) = exact_gradient(lambda: problem.make_dist(logits), loss_fn, [logits])
    torch.testing.assert_close(grads, exact.expand_as(grads), rtol=0, atol=1e-12)


# -- DARN is biased --------------------------------------------------------------------------------


@pytest.mark.stat
def test_darn_fails_the_unbiasedness_test_on_a_nonlinear_loss() -> None:
    # The sin and product terms of problem (a) are far from linear around the uniform point:
    # DARN's mean gradient w.r.t. the logits is off by >100 standard errors (observed z = 162).
    torch.manual_seed(25)
    problem = PROBLEMS[0]
    grads, exact = replicated_and_exact(problem, DARN(1), 4000)
    n_logits = problem.logits.numel()
    with pytest.raises(AssertionError, match="biased"):
        assert_unbiased(grads[:, :n_logits], exact[:n_logits], name="DARN")
    # its pathwise gradient for the loss's own parameters is the unbiased one
    assert_unbiased(grads[:, n_logits:], exact[n_logits:], name="DARN theta")


@pytest.mark.stat
def test_darn_is_unbiased_where_its_expansion_is_exact() -> None:
    # A linear loss (any family), and a quadratic loss of a single bit, whose central
    # difference f(1) - f(0) equals f'(1/2): then f'(z_bar)^T grad E[z] is the true gradient.
    torch.manual_seed(26)
    linear = Problem(
        "linear",
        PROBLEMS[0].logits,
        PROBLEMS[0].theta,
        PROBLEMS[0].make_dist,
        lambda theta: lambda z: (z * theta.unsqueeze(-2)).sum(-1),
    )
    quadratic_bit = Problem(
        "quadratic_bit",
        torch.tensor([[0.7], [-1.2]], dtype=F64),
        torch.tensor([3.0, -1.0], dtype=F64),
        lambda logits: lg.Bernoulli(logits=logits),
        lambda theta: (
            lambda z: (theta[..., None, :1] * z - 1).squeeze(-1) ** 2 + 3 * theta[..., 1:]
        ),
    )
    for problem in (linear, quadratic_bit):
        grads, exact = replicated_and_exact(problem, DARN(2), 4000)
        assert_unbiased(grads, exact, name=f"DARN on {problem.name}")


def test_darn_expands_around_the_uniform_point() -> None:
    seen: list[Tensor] = []

    def loss_fn(z: Tensor) -> Tensor:
        seen.append(z[0].clone())
        return z.sum(-1)

    DARN(2)(lg.Categorical(logits=torch.randn(3, 4)), loss_fn)
    DARN(2)(lg.Bernoulli(logits=torch.randn(3, 5)), loss_fn)
    DARN(1)(lg.Categorical(logits=torch.randn(2, 3, 4)).to_event(1), lambda z: loss_fn(z).sum(-1))
    torch.testing.assert_close(seen[0], torch.full((3, 4), 0.25))
    torch.testing.assert_close(seen[1], torch.full((3, 5), 0.5))
    torch.testing.assert_close(seen[2], torch.full((2, 3, 4), 0.25))


# -- the Estimate contract -------------------------------------------------------------------------


def test_muprop_contract_and_single_loss_call() -> None:
    torch.manual_seed(27)
    logits = torch.randn(5, 4, requires_grad=True)
    theta = torch.randn(4, requires_grad=True)
    calls: list[Tensor] = []

    def loss_fn(z: Tensor) -> Tensor:
        calls.append(z.detach().clone())
        return torch.tanh(z @ theta) * 3.0 + (z**2).sum(-1)

    q = lg.Categorical(logits=logits)
    out = MuProp(3)(q, loss_fn)
    assert len(calls) == 1 and calls[0].shape == (4, 5, 4)
    torch.testing.assert_close(calls[0][0], q.probs.detach())  # the mean-field point first
    torch.testing.assert_close(out.extras["mean_field_loss"], loss_fn(q.probs.detach()).detach())
    assert out.loss_evals == 4
    assert out.value.shape == out.surrogate.shape == (5,) and out.per_sample.shape == (3, 5)
    assert not out.value.requires_grad
    torch.testing.assert_close(out.surrogate.detach(), out.value)
    torch.testing.assert_close(out.per_sample.mean(0), out.surrogate)
    torch.testing.assert_close(out.value, out.losses.mean(0))
    out.surrogate.sum().backward()
    assert logits.grad.abs().sum() > 0 and theta.grad.abs().sum() > 0
    assert isinstance(MuProp(), nn.Module) and isinstance(DARN(), lg.Estimator)
    assert "num_samples=2" in repr(MuProp(2)) and repr(DARN(2)) == "DARN(num_samples=2)"


def test_darn_contract() -> None:
    logits = torch.randn(5, 3, requires_grad=True)
    out = DARN(3)(lg.Bernoulli(logits=logits), lambda z: (z.sum(-1) - 1) ** 2)
    assert out.loss_evals == 4 and out.per_sample.shape == (3, 5)
    torch.testing.assert_close(out.surrogate.detach(), out.value)
    torch.testing.assert_close(out.per_sample.mean(0), out.surrogate)
    assert out.extras["signal"].shape == (3, 5)
    out.surrogate.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_losses_that_ignore_z_and_no_grad_mode() -> None:
    theta = torch.tensor(2.0, requires_grad=True)
    logits = torch.randn(3, 4, requires_grad=True)
    for est in (MuProp(2), DARN(2)):
        out = est(lg.Categorical(logits=logits), lambda z: theta * torch.ones(z.shape[:-1]))
        g_logits, g_theta = torch.autograd.grad(out.surrogate.sum(), [logits, theta])
        assert (g_logits == 0).all() and float(g_theta) == 3.0
        out = est(lg.Categorical(logits=logits), lambda z: torch.ones(z.shape[:-1]))
        assert (out.value == 1).all()
        with torch.no_grad():
            out = est(lg.Categorical(logits=logits), lambda z: z[..., 0])
        assert out.value.shape == (3,)


# -- argument checks -----------------------------------------------------------------------------


def test_argument_checks() -> None:
    q = lg.Categorical(logits=torch.zeros(3, 4))
    for cls in (MuProp, DARN):
        with pytest.raises(ValueError, match="num_samples must be >= 1"):
            cls(num_samples=0)
        with pytest.raises(TypeError, match="num_samples must be an int"):
            cls(num_samples=2.0)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="dist must be a latentgrad distribution"):
            cls()(torch.distributions.Categorical(logits=torch.zeros(4)), lambda z: z)
        with pytest.raises(ValueError, match=r"loss_fn must return shape .*\(3, 3\)"):
            cls(2)(q, lambda z: z.sum((-1, -2)))
        with pytest.raises(TypeError, match="loss_fn must be callable"):
            cls()(q, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="baseline must be None or a Baseline"):
        MuProp(baseline=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_samples must be >= 2 with the LeaveOneOut"):
        MuProp(1, baseline=LeaveOneOut())


# -- numerics ------------------------------------------------------------------------------------


def _extreme(
    dt: torch.dtype, family: str
) -> lg.distributions.DiscreteDistribution | lg.Independent:
    big = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]]) * 1e4
    raw = {
        "cat_x1e4": big,
        "cat_offset": big - 1e4,
        "cat_one_left": torch.tensor(
            [[-torch.inf, 0.0, -torch.inf], [-torch.inf, -torch.inf, 2.0]]
        ),
        "cat_single": torch.zeros(2, 1),
        "bern_x1e4": big,
        "units_x1e4": big.expand(4, 2, 3),
    }[family]
    logits = raw.to(dt).clone().requires_grad_()
    if family.startswith("bern"):
        return lg.Bernoulli(logits=logits)
    if family.startswith("units"):
        return lg.Categorical(logits=logits).to_event(1)
    return lg.Categorical(logits=logits)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize(
    "family", ["cat_x1e4", "cat_offset", "cat_one_left", "cat_single", "bern_x1e4", "units_x1e4"]
)
@pytest.mark.parametrize("estimator", ["muprop", "muprop_ma", "darn"])
def test_extreme_inputs_stay_finite(dtype: torch.dtype, family: str, estimator: str) -> None:
    torch.manual_seed(28)
    dist = _extreme(dtype, family)
    est = {"muprop": MuProp(2), "muprop_ma": MuProp(2, baseline=MovingAverage()), "darn": DARN(2)}[
        estimator
    ]
    w = torch.linspace(-1, 2, dist.event_shape[-1], dtype=dtype)

    def loss_fn(z: Tensor) -> Tensor:
        s = (z * w).reshape(*z.shape[: z.dim() - len(dist.event_shape)], -1).sum(-1)
        return torch.tanh(s) + s**2 + 1e2

    for _ in range(2):
        out = est(dist, loss_fn)
        (g,) = torch.autograd.grad(out.surrogate.float().sum(), dist.logits)
        assert out.value.dtype == dtype and out.surrogate.dtype == dtype
        assert torch.isfinite(out.value).all() and torch.isfinite(out.surrogate).all()
        assert torch.isfinite(g).all()
