"""REBAR and ConcreteRELAX on categorical and Bernoulli latents: unbiasedness against exact
enumeration for several fixed control-variate parameters, the conditional relaxed sample, the
gradients on the estimator's own parameters, variance-reduction training, extreme and
half-precision inputs, argument checks.

Statistical tests have fixed seeds and a Bonferroni-corrected false-failure rate of 1e-5 each
(:func:`~latentgrad.testing.assert_unbiased`; the same level for the KS tests).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from latentgrad.distributions import Bernoulli, Categorical
from latentgrad.distributions.ksubset import KSubset
from latentgrad.estimators import REBAR, ConcreteRELAX, LossFn, MLPCritic
from latentgrad.estimators.rebar import conditional_draw
from latentgrad.testing import assert_unbiased, check_unbiased, ks_statistic
from latentgrad.testing.problems import (
    GradientProblem,
    packed_parameters,
    replicated_and_exact,
    run_replicated,
    small_problems,
)

F64 = torch.float64
ALPHA = 1e-5


def _masked_problems() -> list[GradientProblem]:
    """Impossible classes and deterministic bits next to ordinary ones."""
    c = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)

    def make_loss(theta: Tensor) -> LossFn:
        def loss_fn(z: Tensor) -> Tensor:
            s = (z * theta.unsqueeze(-2)).sum(-1)
            return (s - 0.5) ** 2 + torch.sin(3 * (z * c[: z.shape[-1]]).sum(-1))

        return loss_fn

    inf = torch.inf
    return [
        GradientProblem(
            "categorical-masked",
            torch.tensor([[0.3, -inf, 1.0, 0.1], [-1.0, 0.4, -inf, -inf]], dtype=F64),
            torch.tensor([0.5, -1.0, 2.0, 0.3], dtype=F64),
            lambda logits: Categorical(logits=logits),
            make_loss,
        ),
        GradientProblem(
            "bernoulli-deterministic",
            torch.tensor([[0.2, inf, -0.7], [-inf, 1.1, 0.4]], dtype=F64),
            torch.tensor([0.9, -1.3, 0.6], dtype=F64),
            lambda logits: Bernoulli(logits=logits),
            make_loss,
        ),
    ]


PROBLEMS = small_problems() + _masked_problems()


def _event_size(problem: GradientProblem) -> int:
    dist = problem.make_dist(problem.logits)
    return math.prod(dist.event_shape)


def _random_critic(size: int, seed: int) -> MLPCritic:
    """A float64 MLP critic with every weight random (its output layer is not left at zero)."""
    g = torch.Generator().manual_seed(seed)
    critic = MLPCritic(size, hidden=8).double()
    with torch.no_grad():
        for p in critic.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64))
    return critic


# Fixed control-variate parameters, untrained defaults included.
SETTINGS = {
    "rebar-default": lambda size: REBAR().double(),
    "rebar-tau2-eta-0.7-k2": lambda size: REBAR(2, tau=2.0, eta=-0.7).double(),
    "rebar-tau0.1-eta1.5": lambda size: REBAR(tau=0.1, eta=1.5, learn_eta=False).double(),
    "relax-untrained": lambda size: ConcreteRELAX(MLPCritic(size)).double(),
    "relax-random": lambda size: ConcreteRELAX(_random_critic(size, 5), tau=0.3),
    "relax-random-loss-term-k2": lambda size: ConcreteRELAX(
        _random_critic(size, 6), 2, tau=1.5, loss_term=True, eta=0.4
    ).double(),
}


# -- unbiasedness --------------------------------------------------------------------------------


@pytest.mark.stat
@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_unbiased_for_fixed_parameters(problem: GradientProblem, setting: str) -> None:
    torch.manual_seed(21)
    est = SETTINGS[setting](_event_size(problem))
    grads, exact = replicated_and_exact(problem, est, 4000)
    assert torch.isfinite(grads).all()
    assert_unbiased(grads, exact, name=f"{setting} on {problem.name}")


class _NoPathwiseTerm(REBAR):
    """A deliberately wrong REBAR: the ``grad c(z)`` term is dropped."""

    def _control(self, relaxed: Tensor, f_relaxed: Tensor | None, lead: tuple[int, ...]) -> Tensor:
        c = super()._control(relaxed, f_relaxed, lead)
        return torch.stack([c[0].detach(), c[1]])


@pytest.mark.stat
@pytest.mark.parametrize("problem", PROBLEMS[:2], ids=lambda p: p.name)
def test_negative_control_without_the_pathwise_term_is_biased(problem: GradientProblem) -> None:
    torch.manual_seed(22)
    grads, exact = replicated_and_exact(problem, _NoPathwiseTerm().double(), 4000)
    result = check_unbiased(grads, exact)
    assert not result.passed
    assert result.max_abs_z > 2 * result.z_crit


# -- the conditional sample ----------------------------------------------------------------------


@pytest.mark.stat
@pytest.mark.parametrize(
    ("family", "logits"),
    [
        (Categorical, [0.5, -1.0, 2.0, -torch.inf, 0.0]),
        (Bernoulli, [-2.0, -0.3, 0.0, 0.8, 3.0]),
    ],
    ids=["categorical", "bernoulli"],
)
def test_conditional_sample_has_the_law_of_z_given_b(family, logits: list[float]) -> None:
    """``H(z~) = b`` always, and ``z~`` (given the ``b`` of one draw) has the law of ``z``."""
    torch.manual_seed(23)
    theta = torch.tensor(logits, dtype=F64)
    q = family(logits=theta)
    m = 20000
    draw = conditional_draw(q, theta.expand(m, -1))
    present = torch.isfinite(theta)
    if family is Categorical:
        masked = torch.where(present, draw.z_cond, -torch.inf)
        assert torch.equal(masked.argmax(-1), draw.values.argmax(-1))
    else:
        assert torch.equal((draw.z_cond > 0).to(F64), draw.values)
    other = conditional_draw(q, theta.expand(m, -1))  # independent z
    stat = ks_statistic(draw.z_cond[:, present], other.z[:, present])
    critical = math.sqrt(-math.log(ALPHA / (2 * int(present.sum()))) / 2) * math.sqrt(2 / m)
    assert bool((stat < critical).all()), stat


@pytest.mark.parametrize("family", [Categorical, Bernoulli])
def test_conditional_sample_gradcheck(family) -> None:
    """The reparameterization of ``z`` and ``z~`` is smooth in the logits (float64)."""
    theta = torch.tensor([[0.3, -1.2, 0.8], [1.5, 0.1, -0.4]], dtype=F64, requires_grad=True)

    def fn(t: Tensor) -> tuple[Tensor, Tensor]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(24)
            draw = conditional_draw(family(logits=t.detach()), t.expand(3, -1, -1))
        return draw.z, draw.z_cond

    assert torch.autograd.gradcheck(fn, (theta,))


# -- gradients on the logits, the loss and the estimator's parameters ------------------------------


def test_logits_and_loss_gradients_for_a_fixed_draw() -> None:
    """With ``eta = 0`` REBAR is REINFORCE: check the logits' and the loss's gradients."""
    torch.manual_seed(25)
    logits = torch.tensor([[0.3, -1.0, 2.0], [0.0, 0.5, -0.2]], dtype=F64, requires_grad=True)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=F64, requires_grad=True)
    seen: list[Tensor] = []

    def loss_fn(z: Tensor) -> Tensor:
        seen.append(z.detach())
        return torch.sin((z * w).sum(-1)) + (z * w).sum(-1) ** 2

    est = REBAR(3, eta=0.0, learn_eta=False).double()
    out = est(Bernoulli(logits=logits), loss_fn)
    out.surrogate.mean().backward()
    b = seen[0][:3]
    f = loss_fn(b)
    expected = (f.unsqueeze(-1) * (b - torch.sigmoid(logits.detach()))).mean(0) / 2
    torch.testing.assert_close(logits.grad, expected.detach())
    (w_grad,) = torch.autograd.grad(f.mean(0).mean(), w)
    torch.testing.assert_close(w.grad, w_grad)
    torch.testing.assert_close(out.value, f.detach().mean(0))
    assert out.loss_evals == 9 and seen[0].shape == (9, 2, 3)


@pytest.mark.parametrize(
    "make", [lambda: REBAR(2), lambda: ConcreteRELAX(_random_critic(4, 7), 2, loss_term=True)]
)
def test_parameter_gradients_are_those_of_the_critic_loss(make) -> None:
    """The estimator's parameters get ``d critic_loss / d phi``: central finite differences of
    the critic loss with the same draws."""
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.1], [0.0, 0.5, -0.2, 1.0]], dtype=F64)
    logits.requires_grad_(True)
    w = torch.tensor([1.0, -2.0, 0.5, 0.7], dtype=F64)
    est = make().double()

    def loss_fn(z: Tensor) -> Tensor:
        return torch.sin(2 * (z * w).sum(-1)) + (z * w).sum(-1) ** 2

    def critic_loss() -> float:
        torch.manual_seed(26)
        return float(est(Categorical(logits=logits), loss_fn).extras["critic_loss"])

    torch.manual_seed(26)
    est(Categorical(logits=logits), loss_fn).surrogate.mean().backward()
    params = [p for p in est.parameters()][:4]
    for p in params:
        index = (0,) * p.dim()
        analytic = float(p.grad[index])
        with torch.no_grad():
            p[index] += 1e-5
        up = critic_loss()
        with torch.no_grad():
            p[index] -= 2e-5
        down = critic_loss()
        with torch.no_grad():
            p[index] += 1e-5
        assert math.isclose(analytic, (up - down) / 2e-5, rel_tol=1e-4, abs_tol=1e-7)


def _variance(problem: GradientProblem, est, seed: int) -> float:
    torch.manual_seed(seed)
    grads, _ = replicated_and_exact(problem, est, 2000)
    return float(grads[:, : problem.logits.numel()].var(0).sum())


def _train(problem: GradientProblem, est, steps: int) -> None:
    optimizer = torch.optim.Adam(est.parameters(), lr=3e-2)
    packed = packed_parameters(problem).unsqueeze(0).expand(64, -1)
    for _ in range(steps):
        out = run_replicated(problem, est, packed)
        optimizer.zero_grad()
        out.surrogate.mean().backward()
        optimizer.step()


@pytest.mark.parametrize(
    ("problem", "make", "bound"),
    [
        (PROBLEMS[0], lambda: REBAR().double(), 0.5),  # measured 0.20
        (PROBLEMS[0], lambda: ConcreteRELAX(MLPCritic(hidden=16)).double(), 0.6),  # 0.41
        (PROBLEMS[1], lambda: ConcreteRELAX(MLPCritic(hidden=16)).double(), 0.3),  # 0.05
    ],
    ids=["rebar-categorical", "relax-categorical", "relax-bernoulli"],
)
def test_variance_reduction_training(problem: GradientProblem, make, bound: float) -> None:
    """200 Adam steps on the critic loss lower the variance (the same draws before and after)."""
    torch.manual_seed(0)
    est = make()
    run_replicated(problem, est, packed_parameters(problem).unsqueeze(0))  # size a lazy critic
    before = _variance(problem, est, seed=1)
    _train(problem, est, 200)
    after = _variance(problem, est, seed=1)
    assert after < bound * before, (before, after)


# -- extremes, dtypes, no_grad, arguments --------------------------------------------------------


MAKERS = {
    "rebar": lambda: REBAR(2).double(),
    "relax": lambda: ConcreteRELAX(_random_critic(3, 8), 2),
    "relax-loss-term": lambda: ConcreteRELAX(_random_critic(3, 9), loss_term=True),
}


@pytest.mark.parametrize(
    "logits",
    [
        1e4 * torch.tensor([[1.0, -1.0, 0.5], [0.0, -0.3, 1.0]]),
        -1e4 * torch.tensor([[1.0, -1.0, 0.5], [0.0, -0.3, 1.0]]),
        torch.tensor([[0.0], [3.0]]),
        torch.tensor([[-torch.inf, 0.4, -torch.inf], [-torch.inf, -torch.inf, 2.0]]),
        torch.tensor([[torch.inf, 0.4, -torch.inf], [-torch.inf, -torch.inf, torch.inf]]),
    ],
    ids=["plus-1e4", "minus-1e4", "one-category", "all-inf-but-one", "infinite-bits"],
)
@pytest.mark.parametrize("family", [Categorical, Bernoulli])
@pytest.mark.parametrize("name", list(MAKERS))
def test_extreme_inputs_are_finite(logits: Tensor, family, name: str) -> None:
    if family is Categorical:
        logits = torch.where(logits == torch.inf, 0.0, logits)  # +inf is not a categorical logit
    torch.manual_seed(27)
    logits = logits.to(F64).requires_grad_(True)
    k = logits.shape[-1]
    est = MAKERS[name]()
    if k != 3 and name != "rebar":
        est = ConcreteRELAX(_random_critic(k, 8), loss_term=name == "relax-loss-term")
    w = torch.tensor([1.0, -2.0, 0.5][:k], dtype=F64, requires_grad=True)
    out = est(family(logits=logits), lambda z: ((z * w).sum(-1) - 0.3) ** 2)
    out.surrogate.mean().backward()
    assert torch.isfinite(out.surrogate).all() and torch.isfinite(out.value).all()
    assert torch.isfinite(out.extras["critic_loss"])
    assert torch.isfinite(logits.grad).all() and torch.isfinite(w.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in est.parameters() if p.grad is not None)
    assert bool((logits.grad[~torch.isfinite(logits.detach())] == 0).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("family", [Categorical, Bernoulli])
@pytest.mark.parametrize("name", ["rebar", "relax"])
def test_half_precision(dtype: torch.dtype, family, name: str) -> None:
    torch.manual_seed(28)
    logits = (3 * torch.randn(4, 2, 5)).to(dtype).requires_grad_(True)
    est = REBAR() if name == "rebar" else ConcreteRELAX(MLPCritic(), loss_term=True)
    out = est(family(logits=logits).to_event(1), lambda z: (z.float() - 0.5).pow(2).sum((-1, -2)))
    out.surrogate.mean().backward()
    assert logits.grad.dtype == dtype and torch.isfinite(logits.grad.float()).all()
    assert torch.isfinite(out.value).all() and out.value.shape == (4,)
    assert all(torch.isfinite(p.grad).all() for p in est.parameters())


def test_no_grad_evaluates_the_discrete_samples_only() -> None:
    logits = torch.zeros(3, 4, requires_grad=True)
    for est in (REBAR(2), ConcreteRELAX(MLPCritic(), 2, loss_term=True)):
        with torch.no_grad():
            out = est(Categorical(logits=logits), lambda z: z[..., 0])
        assert out.loss_evals == 2 and out.losses.shape == (2, 3)
        assert not out.surrogate.requires_grad and "critic_loss" not in out.extras


def test_loss_evals_extras_state_dict_and_repr() -> None:
    q = Bernoulli(logits=torch.zeros(5, 4, requires_grad=True))
    out = REBAR(2)(q, lambda z: z.sum(-1))
    assert out.loss_evals == 6 and out.per_sample.shape == (2, 5)
    assert set(out.extras) == {"critic_loss", "tau", "eta"} and out.extras["tau"] == pytest.approx(
        0.5
    )
    relax = ConcreteRELAX(MLPCritic(4, hidden=6), 3)
    out = relax(q, lambda z: z.sum(-1))
    assert out.loss_evals == 3 and set(out.extras) == {"critic_loss", "tau"}
    assert "critic.net.0.weight" in relax.state_dict() and "log_tau" in relax.state_dict()
    assert {n for n, _ in REBAR().named_parameters()} == {"log_tau", "eta"}
    assert list(REBAR(learn_tau=False, learn_eta=False).parameters()) == []
    assert "tau=0.5" in repr(REBAR()) and "loss_term=False" in repr(relax)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: REBAR(num_samples=0), ValueError, "num_samples"),
        (lambda: REBAR(num_samples=1.5), TypeError, "num_samples"),
        (lambda: REBAR(tau=0.0), ValueError, "tau"),
        (lambda: REBAR(tau=float("nan")), ValueError, "tau"),
        (lambda: REBAR(eta=float("inf")), ValueError, "eta"),
        (lambda: REBAR(learn_tau=1), TypeError, "learn_tau"),
        (lambda: ConcreteRELAX(lambda x: x.sum(-1)), TypeError, "critic"),
        (lambda: ConcreteRELAX(MLPCritic(), tau=-1.0), ValueError, "tau"),
        (lambda: ConcreteRELAX(MLPCritic(), loss_term="yes"), TypeError, "loss_term"),
    ],
)
def test_bad_arguments(make, error: type, match: str) -> None:
    with pytest.raises(error, match=rf"\b{match}\b"):
        make()


def test_bad_calls() -> None:
    q = Categorical(logits=torch.zeros(2, 4, requires_grad=True))
    with pytest.raises(TypeError, match="has_logits"):
        REBAR()(KSubset(torch.zeros(2, 4), k=2), lambda z: z.sum(-1))
    with pytest.raises(TypeError, match="loss_fn"):
        REBAR()(q, "not callable")
    with pytest.raises(ValueError, match="loss_fn"):
        REBAR()(q, lambda z: z)
    with pytest.raises(ValueError, match="critic"):
        ConcreteRELAX(nn.Linear(4, 2))(q, lambda z: z.sum(-1))
