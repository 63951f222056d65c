"""ScoreFunction: unbiased against enumeration, the Estimate contract, argument checks, numerics."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

import latentgrad as lg
from latentgrad.estimators.baselines import LeaveOneOut, MovingAverage
from latentgrad.estimators.score_function import ScoreFunction
from latentgrad.testing import (
    assert_unbiased,
    exact_expectation,
)
from latentgrad.testing.problems import (
    GradientProblem,
    pathwise_only,
    replicated_and_exact,
    small_problems,
)

F64 = torch.float64


Problem = GradientProblem
PROBLEMS = small_problems()


# -- unbiasedness --------------------------------------------------------------------------------


@pytest.mark.stat
@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
@pytest.mark.parametrize("num_samples", [1, 3])
def test_unbiased_without_baseline(problem: Problem, num_samples: int) -> None:
    torch.manual_seed(0)
    grads, exact = replicated_and_exact(problem, ScoreFunction(num_samples), 4000)
    assert_unbiased(grads, exact, name=f"ScoreFunction({num_samples}) on {problem.name}")


@pytest.mark.stat
def test_the_test_detects_a_wrong_gradient() -> None:
    # Sanity check of the harness: dropping the score term leaves only the pathwise part,
    # whose mean w.r.t. the logits is 0, far from the exact gradient.
    torch.manual_seed(1)
    grads, exact = replicated_and_exact(PROBLEMS[0], pathwise_only(ScoreFunction(2)), 4000)
    with pytest.raises(AssertionError, match="biased"):
        assert_unbiased(grads, exact)


@pytest.mark.stat
@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
def test_value_is_unbiased_for_the_expected_loss(problem: Problem) -> None:
    torch.manual_seed(2)
    r = 4000
    logits = problem.logits.expand(r, *problem.logits.shape)
    theta = problem.theta.expand(r, *problem.theta.shape)
    out = ScoreFunction(2)(problem.make_dist(logits), problem.make_loss(theta))
    expected = exact_expectation(
        problem.make_dist(problem.logits), problem.make_loss(problem.theta)
    )
    assert_unbiased(out.value.reshape(r, -1), expected.reshape(-1).detach(), name="value")


# -- the Estimate contract -------------------------------------------------------------------------


def test_estimate_contract_and_single_loss_call() -> None:
    torch.manual_seed(3)
    logits = torch.randn(5, 4, requires_grad=True)
    theta = torch.randn(4, requires_grad=True)
    calls: list[tuple[int, ...]] = []

    def loss_fn(z: Tensor) -> Tensor:
        calls.append(tuple(z.shape))
        return torch.tanh(z @ theta) * 3.0

    out = ScoreFunction(num_samples=3)(lg.Categorical(logits=logits), loss_fn)
    assert calls == [(3, 5, 4)]
    assert out.value.shape == out.surrogate.shape == (5,)
    assert out.per_sample.shape == (3, 5)
    assert not out.value.requires_grad
    torch.testing.assert_close(out.surrogate.detach(), out.value)
    torch.testing.assert_close(out.per_sample.mean(0), out.surrogate)
    torch.testing.assert_close(out.value, out.losses.mean(0))
    assert out.loss_evals == 3
    assert out.extras["baseline"].shape == (3, 5)
    out.surrogate.sum().backward()
    assert logits.grad is not None and theta.grad is not None
    assert logits.grad.abs().sum() > 0 and theta.grad.abs().sum() > 0


def test_gradient_matches_manual_reinforce_formula() -> None:
    torch.manual_seed(4)
    logits = torch.randn(6, 3, dtype=F64, requires_grad=True)
    w = torch.tensor([1.0, -2.0, 4.0], dtype=F64)
    torch.manual_seed(5)
    out = ScoreFunction(2)(lg.Categorical(logits=logits), lambda z: (z * w).sum(-1) ** 2)
    (g,) = torch.autograd.grad(out.surrogate.sum(), logits)
    torch.manual_seed(5)
    q = lg.Categorical(logits=logits)
    z = q.sample((2,))
    f = (z * w).sum(-1) ** 2
    (h,) = torch.autograd.grad((f * q.log_prob(z)).mean(0).sum(), logits)
    torch.testing.assert_close(g, h)


def test_score_hook_is_used() -> None:
    class Traced(ScoreFunction):
        def _score(self, dist, z, noise):
            self.seen = z.shape
            return 2 * dist.log_prob(z)

    logits = torch.zeros(2, 3, requires_grad=True)
    est = Traced(4)
    est(lg.Categorical(logits=logits), lambda z: z[..., 0]).surrogate.sum().backward()
    assert est.seen == (4, 2, 3)


def test_is_a_module_and_checkpoints_its_baseline() -> None:
    est = ScoreFunction(2, baseline=MovingAverage(decay=0.5))
    assert isinstance(est, torch.nn.Module) and isinstance(est, lg.Estimator)
    q = lg.Categorical(logits=torch.zeros(3, 2))
    est(q, lambda z: 7.0 + z[..., 0])
    state = est.state_dict()
    assert set(state) == {"baseline.average", "baseline.initialized"}
    fresh = ScoreFunction(2, baseline=MovingAverage(decay=0.5))
    fresh.load_state_dict(state)
    assert float(fresh.baseline.average) == float(est.baseline.average) >= 7.0
    assert "num_samples=2" in repr(est)


def test_works_under_no_grad() -> None:
    with torch.no_grad():
        out = ScoreFunction(2, baseline=LeaveOneOut())(
            lg.Bernoulli(logits=torch.zeros(3, 4)), lambda z: z.sum(-1)
        )
    assert out.value.shape == (3,)


# -- argument checks -----------------------------------------------------------------------------


def test_argument_checks() -> None:
    q = lg.Categorical(logits=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        ScoreFunction(num_samples=0)
    with pytest.raises(TypeError, match="num_samples must be an int"):
        ScoreFunction(num_samples=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="baseline must be None or a Baseline"):
        ScoreFunction(baseline="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_samples must be >= 2 with the LeaveOneOut"):
        ScoreFunction(num_samples=1, baseline=LeaveOneOut())
    with pytest.raises(TypeError, match="dist must be a latentgrad distribution"):
        ScoreFunction()(torch.distributions.Categorical(logits=torch.zeros(4)), lambda z: z)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        ScoreFunction()(q, 3.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"loss_fn must return shape .*\(2, 3\)"):
        ScoreFunction(2)(q, lambda z: z.sum(-1).sum(-1))


# -- numerics ------------------------------------------------------------------------------------


def _extreme_cases() -> list[tuple[str, Callable[[torch.dtype], object]]]:
    big = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]]) * 1e4
    one_left = torch.tensor([[-torch.inf, 0.0, -torch.inf], [-torch.inf, -torch.inf, 2.0]])
    return [
        ("cat_x1e4", lambda dt: lg.Categorical(logits=big.to(dt).requires_grad_())),
        ("cat_offset", lambda dt: lg.Categorical(logits=(big - 1e4).to(dt).requires_grad_())),
        ("cat_one_left", lambda dt: lg.Categorical(logits=one_left.to(dt).requires_grad_())),
        (
            "cat_single",
            lambda dt: lg.Categorical(logits=torch.zeros(2, 1, dtype=dt).requires_grad_()),
        ),
        ("bern_x1e4", lambda dt: lg.Bernoulli(logits=big.to(dt).requires_grad_())),
        (
            "units_x1e4",
            lambda dt: lg.Categorical(
                logits=big.to(dt).expand(4, 2, 3).clone().requires_grad_()
            ).to_event(1),
        ),
    ]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("case", _extreme_cases(), ids=lambda c: c[0])
@pytest.mark.parametrize("baseline", [None, "loo", "ma"])
def test_extreme_inputs_stay_finite(case, dtype: torch.dtype, baseline: str | None) -> None:
    torch.manual_seed(6)
    dist = case[1](dtype)
    b = {None: None, "loo": LeaveOneOut(), "ma": MovingAverage()}[baseline]
    est = ScoreFunction(3, baseline=b)
    w = torch.linspace(-1, 2, dist.event_shape[-1], dtype=dtype)

    def loss_fn(z: Tensor) -> Tensor:
        s = (z * w).reshape(*z.shape[: z.dim() - len(dist.event_shape)], -1).sum(-1)
        return s**2 + 1e2

    for _ in range(2):  # the second call uses an initialized moving average
        out = est(dist, loss_fn)
        logits = dist.logits
        (g,) = torch.autograd.grad(out.surrogate.float().sum(), logits)
        assert out.value.dtype == dtype and out.surrogate.dtype == dtype
        assert torch.isfinite(out.value).all() and torch.isfinite(out.surrogate).all()
        assert torch.isfinite(g).all()
