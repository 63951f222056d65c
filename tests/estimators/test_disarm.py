"""DisARM and ARMS on Bernoulli and categorical (stick-breaking) latents: unbiasedness against
exact enumeration, the coupling's marginals and joint law, lower variance than independent
samples with a leave-one-out baseline, extreme and half-precision inputs, argument checks.

Statistical tests have fixed seeds and a Bonferroni-corrected false-failure rate of 1e-5 each
(:func:`~latentgrad.testing.assert_unbiased`, and the same level for the frequency tests).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import latentgrad.estimators.disarm as disarm_module
from latentgrad.distributions import Bernoulli, Categorical
from latentgrad.distributions.ksubset import KSubset
from latentgrad.estimators import ARMS, DisARM, LeaveOneOut, LossFn, ScoreFunction
from latentgrad.estimators.disarm import StickBits, arms_correction, dirichlet_copula_uniforms
from latentgrad.testing import assert_unbiased, bonferroni_z, check_unbiased, chi_square_pvalue
from latentgrad.testing.problems import GradientProblem, replicated_and_exact, small_problems

F64 = torch.float64
ALPHA = 1e-5


def _masked_problems() -> list[GradientProblem]:
    """Impossible classes and deterministic bits next to ordinary ones."""
    c = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0], dtype=F64)

    def categorical_loss(theta: Tensor) -> LossFn:
        def loss_fn(z: Tensor) -> Tensor:
            s = (z * theta.unsqueeze(-2)).sum(-1)
            return (s - 0.5) ** 2 + torch.sin(3 * (z * c).sum(-1))

        return loss_fn

    def bits_loss(theta: Tensor) -> LossFn:
        def loss_fn(z: Tensor) -> Tensor:
            s = (z * theta.unsqueeze(-2)).sum(-1)
            return torch.cos(2 * s) + s**2

        return loss_fn

    inf = torch.inf
    return [
        GradientProblem(
            "categorical-masked",
            torch.tensor([[0.3, -inf, 1.0, 0.1, -0.4], [-1.0, 0.4, 0.0, -inf, -inf]], dtype=F64),
            torch.tensor([0.5, -1.0, 2.0, 0.3, 1.1], dtype=F64),
            lambda logits: Categorical(logits=logits),
            categorical_loss,
        ),
        GradientProblem(
            "bernoulli-deterministic",
            torch.tensor([[0.2, inf, -0.7], [-inf, 1.1, 0.4]], dtype=F64),
            torch.tensor([0.9, -1.3, 0.6], dtype=F64),
            lambda logits: Bernoulli(logits=logits),
            bits_loss,
        ),
    ]


PROBLEMS = small_problems() + _masked_problems()
ESTIMATORS = {
    "disarm": lambda: DisARM(),
    "disarm-2pairs": lambda: DisARM(num_pairs=2),
    "arms-2": lambda: ARMS(num_samples=2),
    "arms-3": lambda: ARMS(num_samples=3),
    "arms-5": lambda: ARMS(num_samples=5),
}


# -- unbiasedness --------------------------------------------------------------------------------


@pytest.mark.stat
@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_unbiased(problem: GradientProblem, name: str) -> None:
    torch.manual_seed(11)
    grads, exact = replicated_and_exact(problem, ESTIMATORS[name](), 4000)
    assert torch.isfinite(grads).all()
    assert_unbiased(grads, exact, name=f"{name} on {problem.name}")


@pytest.mark.stat
@pytest.mark.parametrize("problem", [PROBLEMS[0], PROBLEMS[1]], ids=lambda p: p.name)
def test_negative_control_without_the_correction_is_biased(
    problem: GradientProblem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leave-one-out on the coupled samples without ARMS's factor: biased (the test can fail)."""
    monkeypatch.setattr(disarm_module, "arms_correction", lambda alpha, n: torch.ones_like(alpha))
    torch.manual_seed(12)
    grads, exact = replicated_and_exact(problem, ARMS(num_samples=4), 4000)
    result = check_unbiased(grads, exact)
    assert not result.passed
    assert result.max_abs_z > 2 * result.z_crit


# -- the coupling --------------------------------------------------------------------------------


def _recorded(est, dist, n_values: int) -> Tensor:
    """The values the estimator evaluated the loss at, ``(n_values,) + B + event``."""
    seen: list[Tensor] = []

    def loss_fn(z: Tensor) -> Tensor:
        seen.append(z)
        return z.reshape(z.shape[0], *dist.batch_shape, -1).sum(-1)

    est(dist, loss_fn)
    assert len(seen) == 1 and seen[0].shape[0] == n_values
    return seen[0]


@pytest.mark.stat
@pytest.mark.parametrize("est", [DisARM(num_pairs=4000), ARMS(num_samples=4000)], ids=repr)
def test_each_sample_is_marginally_the_latent(est) -> None:
    """Bits: each sample's frequency of ones is p; a categorical: chi-square against pi."""
    torch.manual_seed(13)
    bits = Bernoulli(logits=torch.tensor([-2.0, -0.3, 0.0, 0.8, 3.0], dtype=F64))
    z = _recorded(est, bits, 8000 if isinstance(est, DisARM) else 4000)
    groups = z.unflatten(0, (2, 4000)) if isinstance(est, DisARM) else z.unsqueeze(0)
    p = bits.probs
    z_crit = bonferroni_z(ALPHA, 2 * p.numel())
    for group in groups:
        freq = group.mean(0)
        se = (p * (1 - p) / group.shape[0]).sqrt()
        assert ((freq - p).abs() <= z_crit * se).all(), (freq, p)
    logits = torch.tensor([0.5, -1.0, 2.0, -torch.inf, 0.0], dtype=F64)
    cat = Categorical(logits=logits)
    z = _recorded(est, cat, 8000 if isinstance(est, DisARM) else 4000)
    groups = z.unflatten(0, (2, 4000)) if isinstance(est, DisARM) else z.unsqueeze(0)
    for group in groups:
        assert chi_square_pvalue(group.sum(0), cat.probs) > ALPHA / 2
        assert group[:, 3].sum() == 0  # an impossible class is never drawn


@pytest.mark.stat
def test_disarm_pair_is_antithetic() -> None:
    """``P(b = 1, b~ = 1) = max(0, 2p - 1)``: the pair uses ``u`` and ``1 - u``."""
    torch.manual_seed(14)
    bits = Bernoulli(logits=torch.tensor([-1.5, -0.2, 0.4, 2.0], dtype=F64))
    z = _recorded(DisARM(num_pairs=20000), bits, 40000).unflatten(0, (2, 20000))
    both = (z[0] * z[1]).mean(0)
    p = bits.probs
    expected = (2 * p - 1).clamp_min(0)
    se = (expected * (1 - expected) / 20000).sqrt()
    assert ((both - expected).abs() <= bonferroni_z(ALPHA, 4) * se + 1e-12).all()


@pytest.mark.stat
@pytest.mark.parametrize("n", [2, 3, 6])
def test_dirichlet_copula_marginals_and_the_joint_law_behind_the_correction(n: int) -> None:
    torch.manual_seed(15 + n)
    m = 20000
    u = dirichlet_copula_uniforms(n, (m,), torch.zeros((), dtype=F64))
    assert u.shape == (n, m) and bool(((u > 0) & (u < 1)).all())
    # Marginally uniform: each sample's KS distance to U(0, 1) is within the critical value.
    sorted_u = u.sort(-1).values
    grid = torch.arange(1, m + 1, dtype=F64) / m
    ks = torch.maximum((grid - sorted_u).abs(), (sorted_u - (grid - 1 / m)).abs()).amax(-1)
    assert bool((ks < math.sqrt(-math.log(ALPHA / (2 * n)) / (2 * m))).all())
    # The covariance of two samples' bits is what arms_correction assumes.
    alpha = torch.tensor([-1.0, 0.3, 1.7], dtype=F64)
    p = torch.sigmoid(alpha)
    b = (u.unsqueeze(-1) < p).to(F64)  # (n, m, 3)
    cov = (b[0] * b[1]).mean(0) - b[0].mean(0) * b[1].mean(0)
    factor = arms_correction(alpha, n)
    predicted = p * (1 - p) * (1 - 1 / factor)  # Cov = p(1-p) - p(1-p)/factor
    se = (p * (1 - p) / math.sqrt(m)) * 2
    assert bool(((cov - predicted).abs() <= bonferroni_z(ALPHA, 3) * se).all()), (cov, predicted)
    assert bool((predicted <= 0).all())  # antithetic: negatively correlated


def test_arms_with_two_samples_is_disarm() -> None:
    alpha = torch.tensor([-30.0, -2.0, -0.1, 0.0, 0.5, 4.0, 30.0], dtype=F64)
    torch.testing.assert_close(arms_correction(alpha, 2), torch.sigmoid(alpha.abs()))
    factor = arms_correction(alpha, 7)  # negative correlation: leave-one-out overshoots
    assert bool(((factor > 0) & (factor <= 1)).all())


def test_stick_breaking_bits_give_the_categorical() -> None:
    logits = torch.tensor([[0.5, -1.0, 2.0, -torch.inf, 0.0]], dtype=F64)
    cat = Categorical(logits=logits)
    sb = StickBits(cat, logits)
    rho = torch.sigmoid(sb.alpha)
    # P(class k) = rho_k prod_{j<k} (1 - rho_j)
    stay = torch.cat([torch.ones(1, 1, dtype=F64), (1 - rho).cumprod(-1)], -1)
    probs = torch.cat([rho, torch.ones(1, 1, dtype=F64)], -1) * stay
    torch.testing.assert_close(probs, cat.probs)
    bits = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]], dtype=F64)
    assert sb.bits_to_values(bits).argmax(-1).tolist() == [2, 4]
    assert sb.reached(bits).tolist() == [[True, True, True, False], [True, True, True, True]]


# -- variance ------------------------------------------------------------------------------------


def _variance_problem() -> GradientProblem:
    """Three bits and a smooth nonlinear loss."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 3, generator=g, dtype=F64)
    target = torch.rand(3, generator=g, dtype=F64)

    def make_loss(theta: Tensor) -> LossFn:
        def loss_fn(z: Tensor) -> Tensor:
            return torch.sin(3 * (z * target).sum(-1)) * theta

        return loss_fn

    return GradientProblem("bits", logits, torch.ones(1, dtype=F64), Bernoulli, make_loss)


@pytest.mark.stat
@pytest.mark.parametrize(("est", "n"), [(DisARM(), 2), (ARMS(num_samples=4), 4)], ids=repr)
def test_lower_variance_than_independent_samples_with_leave_one_out(est, n: int) -> None:
    """Measured ratios of the summed variances: DisARM 0.48, ARMS(4) 0.60 (seed 16)."""
    problem = _variance_problem()
    size = problem.logits.numel()
    torch.manual_seed(16)
    coupled, exact = replicated_and_exact(problem, est, 8000)
    independent, _ = replicated_and_exact(problem, ScoreFunction(n, LeaveOneOut()), 8000)
    assert_unbiased(coupled, exact, name=repr(est))
    ratio = float(coupled[:, :size].var(0).sum() / independent[:, :size].var(0).sum())
    assert ratio < 0.75, ratio


# -- extremes, dtypes, arguments -----------------------------------------------------------------


@pytest.mark.parametrize(
    "logits",
    [
        1e4 * torch.tensor([[1.0, -1.0, 0.5], [0.0, -0.3, 1.0]]),
        -1e4 * torch.tensor([[1.0, -1.0, 0.5], [0.0, -0.3, 1.0]]),
        torch.tensor([[0.0], [3.0]]),  # one category (one bit)
        torch.tensor([[-torch.inf, 0.4, -torch.inf], [-torch.inf, -torch.inf, 2.0]]),
    ],
    ids=["plus-1e4", "minus-1e4", "one-category", "all-inf-but-one"],
)
@pytest.mark.parametrize("family", [Categorical, Bernoulli])
@pytest.mark.parametrize("make", [DisARM, lambda: ARMS(3)], ids=["disarm", "arms"])
def test_extreme_inputs_are_finite(logits: Tensor, family, make) -> None:
    torch.manual_seed(17)
    logits = logits.to(F64).requires_grad_(True)
    w = torch.tensor([1.0, -2.0, 0.5][: logits.shape[-1]], dtype=F64, requires_grad=True)
    out = make()(family(logits=logits), lambda z: ((z * w).sum(-1) - 0.3) ** 2)
    out.surrogate.sum().backward()
    assert torch.isfinite(out.surrogate).all() and torch.isfinite(out.value).all()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(w.grad).all()
    if logits.shape[-1] == 1 and family is Categorical:
        assert (logits.grad == 0).all()  # one category: the expectation does not move


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("family", [Categorical, Bernoulli])
@pytest.mark.parametrize("make", [DisARM, lambda: ARMS(3)], ids=["disarm", "arms"])
def test_half_precision(dtype: torch.dtype, family, make) -> None:
    torch.manual_seed(18)
    logits = (3 * torch.randn(4, 2, 5)).to(dtype).requires_grad_(True)
    q = family(logits=logits).to_event(1)
    out = make()(q, lambda z: (z.float() - 0.5).pow(2).sum((-1, -2)))
    out.surrogate.sum().backward()
    assert logits.grad.dtype == dtype and torch.isfinite(logits.grad.float()).all()
    assert torch.isfinite(out.value).all() and out.value.shape == (4,)


def test_loss_is_called_once_with_every_sample() -> None:
    calls: list[tuple[int, ...]] = []

    def loss_fn(z: Tensor) -> Tensor:
        calls.append(tuple(z.shape))
        return z.sum((-1, -2))

    q = Categorical(logits=torch.zeros(5, 3, 4)).to_event(1)
    out = DisARM(num_pairs=3)(q, loss_fn)
    assert calls == [(6, 5, 3, 4)] and out.loss_evals == 6 and out.per_sample.shape == (3, 5)
    assert out.losses.shape == (6, 5)
    out = ARMS(num_samples=5)(q, loss_fn)
    assert calls[-1] == (5, 5, 3, 4) and out.loss_evals == 5 and out.per_sample.shape == (5, 5)
    assert "num_pairs=3" in repr(DisARM(3)) and "num_samples=5" in repr(ARMS(5))


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: DisARM(num_pairs=0), ValueError, "num_pairs"),
        (lambda: DisARM(num_pairs=1.0), TypeError, "num_pairs"),
        (lambda: ARMS(num_samples=1), ValueError, "num_samples"),
        (lambda: ARMS(num_samples=True), TypeError, "num_samples"),
        (lambda: dirichlet_copula_uniforms(1, (3,), torch.zeros(())), ValueError, "n"),
    ],
)
def test_bad_arguments(make, error: type, match: str) -> None:
    with pytest.raises(error, match=rf"\b{match}\b"):
        make()


@pytest.mark.parametrize("est", [DisARM(), ARMS()], ids=repr)
def test_bad_calls(est) -> None:
    with pytest.raises(TypeError, match="has_logits"):
        est(KSubset(torch.zeros(2, 4), k=2), lambda z: z.sum(-1))
    with pytest.raises(TypeError, match="loss_fn"):
        est(Bernoulli(logits=torch.zeros(2, 3)), "not callable")
    with pytest.raises(ValueError, match="loss_fn"):
        est(Bernoulli(logits=torch.zeros(2, 3)), lambda z: z)
