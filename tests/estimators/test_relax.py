"""RELAX on structured families: unbiasedness, exact gradients on the scores and the critic,
critic training lowers the variance, argument checks, no graph under no_grad, extreme scores.

Statistical tests have fixed seeds and a Bonferroni-corrected false-failure rate of 1e-5
(:func:`~latentgrad.testing.assert_unbiased`).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentgrad.distributions.categorical import Categorical
from latentgrad.distributions.ksubset import KSubset, PlackettLuce
from latentgrad.estimators import LossFn
from latentgrad.estimators.relax import RELAX, MLPCritic
from latentgrad.structured.core import conditional_noise, trace_log_prob
from latentgrad.testing import assert_unbiased, check_unbiased
from latentgrad.testing.problems import GradientProblem, replicated_and_exact

F64 = torch.float64


def _random_critic(num_items: int, seed: int, scale: float = 1.0) -> MLPCritic:
    """A float64 MLP critic with all weights random (its output layer is not left at zero)."""
    g = torch.Generator().manual_seed(seed)
    critic = MLPCritic(num_items, hidden=8).double()
    with torch.no_grad():
        for p in critic.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=F64))
    return critic


# -- problems ------------------------------------------------------------------------------------


def _ksubset_problem(masked: bool = False) -> GradientProblem:
    c = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)
    logits = torch.tensor([[0.3, -0.5, 1.0, 0.1], [-1.0, 0.4, 0.0, 0.7]], dtype=F64)
    if masked:
        logits[1, 2] = -torch.inf

    def make_loss(theta: Tensor) -> LossFn:
        def loss_fn(z: Tensor) -> Tensor:
            s = (z * theta.unsqueeze(-2)).sum(-1)
            t = (z * c).sum(-1)
            return (s - 0.5) ** 2 + torch.sin(3 * t) + s * t

        return loss_fn

    return GradientProblem(
        "ksubset-masked" if masked else "ksubset",
        logits,
        torch.tensor([0.5, -1.0, 2.0, 0.3], dtype=F64),
        lambda logits: KSubset(logits, k=2),
        make_loss,
    )


def _plackett_luce_problem() -> GradientProblem:
    def make_loss(theta: Tensor) -> LossFn:
        def loss_fn(order: Tensor) -> Tensor:
            ranks = F.one_hot(order, 3).to(F64)  # (..., rank, item)
            s = (ranks * theta.unsqueeze(-3)).sum((-1, -2))
            first = ranks[..., 0, :] @ torch.tensor([1.0, -1.5, 0.5], dtype=F64)
            return (s - 1.0) ** 2 + torch.sin(2 * s) * first

        return loss_fn

    return GradientProblem(
        "plackett-luce",
        torch.tensor([[0.4, -0.6, 0.9], [-0.2, 1.1, 0.0]], dtype=F64),
        torch.tensor([[0.5, -1.0, 0.2], [1.0, 0.3, -0.7], [-0.4, 0.8, 0.6]], dtype=F64),
        lambda logits: PlackettLuce(logits),
        make_loss,
    )


PROBLEMS = [_ksubset_problem(), _ksubset_problem(masked=True), _plackett_luce_problem()]


def _num_items(problem: GradientProblem) -> int:
    return problem.logits.shape[-1]


# -- unbiasedness --------------------------------------------------------------------------------


@pytest.mark.stat
@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
@pytest.mark.parametrize("k", [1, 2])
def test_unbiased(problem: GradientProblem, k: int) -> None:
    torch.manual_seed(20 + k)
    est = RELAX(_random_critic(_num_items(problem), seed=5), num_samples=k)
    grads, exact = replicated_and_exact(problem, est, 4000)
    assert torch.isfinite(grads).all()
    assert_unbiased(grads, exact, name=f"RELAX(K={k}) on {problem.name}")


class _NoNoiseTerm(RELAX):
    """A deliberately wrong RELAX: the ``grad c(E)`` term is dropped."""

    def _critic_values(self, noise: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        return super()._critic_values(noise.detach(), cond)


@pytest.mark.stat
def test_negative_control_without_noise_term_is_biased() -> None:
    torch.manual_seed(3)
    problem = PROBLEMS[0]
    est = _NoNoiseTerm(_random_critic(_num_items(problem), seed=5, scale=2.0), num_samples=1)
    grads, exact = replicated_and_exact(problem, est, 4000)
    result = check_unbiased(grads, exact)
    assert not result.passed
    # Far from the threshold: this is not a borderline rejection.
    assert result.max_abs_z > 3 * result.z_crit


# -- exact gradients on the scores and the critic --------------------------------------------------


def _reference(
    critic: nn.Module,
    theta: Tensor,
    losses: Tensor,
    noise: Tensor,
    trace,
    step_noise: Tensor,
    item_noise: Tensor,
) -> tuple[Tensor, Tensor]:
    """ĝ per (sample, element) and the critic loss, one scalar autograd call at a time."""
    k, b = noise.shape[:2]
    rows = []
    for i in range(k):
        row = []
        for j in range(b):
            th = theta[j].detach().clone().requires_grad_(True)
            logp = trace_log_prob(th, trace[i, j])
            (g_logp,) = torch.autograd.grad(logp, th)
            present = torch.isfinite(th.detach())
            safe = torch.where(present, th, torch.zeros_like(th))
            e = torch.where(present, noise[i, j] + th.detach() - safe, torch.zeros_like(th))
            e_cond = conditional_noise(th, trace[i, j], step_noise[i, j], item_noise[i, j])
            e_cond = torch.where(present, e_cond, torch.zeros_like(th))
            c_e, c_cond = critic(e), critic(e_cond)
            (g_c,) = torch.autograd.grad(c_e - c_cond, th, create_graph=True)
            g = (losses[i, j] - c_cond) * g_logp + g_c
            row.append(torch.where(present, g, torch.zeros_like(g)))
        rows.append(torch.stack(row))
    g_hat = torch.stack(rows)
    return g_hat, (g_hat.mean(0) ** 2).sum(-1).mean()


@pytest.mark.parametrize("k", [1, 3])
def test_exact_gradients_on_scores_and_critic(k: int) -> None:
    torch.manual_seed(4)
    scores = torch.tensor(
        [[0.3, -0.5, 1.0, 0.1, -torch.inf], [-1.0, 0.4, 0.0, 0.7, 0.2]], dtype=F64
    ).requires_grad_(True)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.7], dtype=F64, requires_grad=True)
    critic = _random_critic(5, seed=9)
    est = RELAX(critic, num_samples=k)
    dist = KSubset(scores, k=2)
    drawn = est._draw(dist, k)
    est._draw = lambda dist, k: drawn  # type: ignore[method-assign]

    def loss_fn(z: Tensor) -> Tensor:
        return torch.sin((z * w).sum(-1)) + (z * w).sum(-1) ** 2

    out = est(dist, loss_fn)
    out.surrogate.mean().backward()

    value, noise, trace, step_noise, item_noise = drawn
    losses = loss_fn(value).detach()
    g_hat, critic_loss = _reference(critic, scores, losses, noise, trace, step_noise, item_noise)
    batch = scores.shape[0]
    torch.testing.assert_close(scores.grad, g_hat.mean(0).detach() / batch)
    assert scores.grad[0, 4] == 0
    torch.testing.assert_close(out.extras["critic_loss"], critic_loss.detach())
    expected = torch.autograd.grad(critic_loss, list(critic.parameters()))
    for p, g in zip(critic.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g)
    # the loss's own parameters get the pathwise gradient of the mean loss, nothing else
    (w_grad,) = torch.autograd.grad(loss_fn(value).mean(0).mean(), w)
    torch.testing.assert_close(w.grad, w_grad)
    # forward values: the mean loss; each per-sample term is its own loss
    torch.testing.assert_close(out.surrogate.detach(), losses.mean(0))
    torch.testing.assert_close(out.per_sample.detach(), losses)
    torch.testing.assert_close(out.value, losses.mean(0))
    assert out.loss_evals == k
    assert out.extras["critic"].shape == (k, batch)


def test_encoder_gets_nothing_from_the_critic_loss() -> None:
    """Scores computed by an encoder: its gradient is the score gradient only."""
    torch.manual_seed(6)
    encoder = nn.Linear(3, 4).double()
    x = torch.randn(5, 3, dtype=F64)
    est = RELAX(_random_critic(4, seed=2), num_samples=2)
    scores = encoder(x)
    scores.retain_grad()
    out = est(KSubset(scores, k=2), lambda z: (z * torch.arange(4.0, dtype=F64)).sum(-1) ** 2)
    out.surrogate.sum().backward()
    (expected,) = torch.autograd.grad((encoder(x) * scores.grad).sum(), encoder.weight)
    torch.testing.assert_close(encoder.weight.grad, expected)


# -- critic training -----------------------------------------------------------------------------


def _grad_variance(est: RELAX, logits: Tensor, loss_fn: LossFn, num: int) -> float:
    """Total variance of ĝ over ``num`` fresh single-sample estimates (one batch element each)."""
    scores = logits.expand(num, -1).clone().requires_grad_(True)
    out = est(KSubset(scores, k=2), loss_fn)
    out.surrogate.sum().backward()
    return float(scores.grad.var(0).sum())


def test_training_the_critic_lowers_the_variance() -> None:
    torch.manual_seed(8)
    logits = torch.tensor([0.5, -0.5, 1.0, 0.0, -1.0])
    c = torch.tensor([2.0, -1.0, 3.0, 0.5, -2.0])

    def loss_fn(z: Tensor) -> Tensor:
        t = (z * c).sum(-1)
        return t**2 + 3 * torch.sin(t) + 4.0

    est = RELAX(MLPCritic(5, hidden=16), num_samples=1)
    before = _grad_variance(est, logits, loss_fn, 20000)
    opt = torch.optim.Adam(est.parameters(), lr=3e-2)
    for _ in range(300):
        opt.zero_grad()
        scores = logits.expand(64, -1).clone().requires_grad_(True)
        est(KSubset(scores, k=2), loss_fn).surrogate.mean().backward()
        opt.step()
    after = _grad_variance(est, logits, loss_fn, 20000)
    assert after < 0.5 * before, (before, after)


# -- module, arguments, no_grad, extremes --------------------------------------------------------


def test_state_dict_and_repr() -> None:
    est = RELAX(MLPCritic(4, hidden=6), num_samples=3)
    keys = est.state_dict().keys()
    assert any(key.startswith("critic.") for key in keys)
    assert len(list(est.parameters())) == 6
    assert "num_samples=3" in repr(est) and "hidden=6" in repr(est)
    fresh = RELAX(MLPCritic(4, hidden=6), num_samples=3)
    fresh.load_state_dict(est.state_dict())


def test_untrained_mlp_critic_is_zero() -> None:
    critic = MLPCritic(3)
    assert torch.equal(critic(torch.randn(7, 3)), torch.zeros(7))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"critic": lambda x: x.sum(-1)}, TypeError, "critic"),
        ({"critic": MLPCritic(4), "num_samples": 0}, ValueError, "num_samples"),
        ({"critic": MLPCritic(4), "num_samples": 1.5}, TypeError, "num_samples"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        RELAX(**kwargs)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((0,), ValueError, "num_items"),
        ((4, 0), ValueError, "hidden"),
        ((4.0,), TypeError, "num_items"),
    ],
)
def test_bad_critic_arguments(args: tuple, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        MLPCritic(*args)


def test_bad_calls() -> None:
    scores = torch.zeros(2, 4, requires_grad=True)
    dist = KSubset(scores, k=2)
    est = RELAX(MLPCritic(4), num_samples=2)
    with pytest.raises(TypeError, match="dist"):
        est(Categorical(logits=scores), lambda z: z.sum(-1))
    with pytest.raises(TypeError, match="loss_fn"):
        est(dist, "not callable")
    with pytest.raises(ValueError, match="loss_fn"):
        est(dist, lambda z: z.sum(-1).sum(-1))
    with pytest.raises(ValueError, match="critic"):
        RELAX(nn.Linear(4, 2))(dist, lambda z: z.sum(-1))
    with pytest.raises(ValueError, match="num_items"):
        RELAX(MLPCritic(5))(dist, lambda z: z.sum(-1))


def test_no_graph_under_no_grad() -> None:
    scores = torch.zeros(3, 4, requires_grad=True)
    w = torch.ones(4, requires_grad=True)
    est = RELAX(MLPCritic(4), num_samples=2)
    with torch.no_grad():
        out = est(KSubset(scores, k=2), lambda z: (z * w).sum(-1))
    assert out.surrogate.grad_fn is None and not out.surrogate.requires_grad
    assert out.per_sample.grad_fn is None and not out.value.requires_grad
    assert out.value.shape == (3,) and out.losses.shape == (2, 3)
    # scores that need no gradient: the critic is not evaluated, the loss keeps its path
    out = est(KSubset(scores.detach(), k=2), lambda z: (z * w).sum(-1))
    assert "critic_loss" not in out.extras
    out.surrogate.sum().backward()
    assert w.grad is not None and all(p.grad is None for p in est.parameters())


@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_finite_for_extreme_scores(scale: float) -> None:
    torch.manual_seed(1)
    scores = scale * torch.tensor([[1.0, -1.0, 0.5, 0.0], [0.3, 1.0, -0.7, 0.0]], dtype=F64)
    scores[1, 3] = -torch.inf
    scores.requires_grad_(True)
    critic = _random_critic(4, seed=3)
    est = RELAX(critic, num_samples=2)
    out = est(KSubset(scores, k=2), lambda z: (z * torch.arange(4.0, dtype=F64)).sum(-1) ** 2)
    out.surrogate.mean().backward()
    assert torch.isfinite(out.surrogate).all()
    assert torch.isfinite(out.extras["critic_loss"])
    assert torch.isfinite(scores.grad).all() and scores.grad[1, 3] == 0
    assert all(torch.isfinite(p.grad).all() for p in critic.parameters())


def test_float32_critic_with_float64_scores() -> None:
    torch.manual_seed(2)
    scores = torch.randn(3, 4, dtype=F64, requires_grad=True)
    critic = MLPCritic(4)
    nn.init.normal_(critic.net[-1].weight)
    out = RELAX(critic, num_samples=2)(PlackettLuce(scores), lambda o: o[..., 0].to(F64))
    out.surrogate.mean().backward()
    assert scores.grad.dtype == F64 and torch.isfinite(scores.grad).all()
    assert critic.net[0].weight.grad.dtype == torch.float32
