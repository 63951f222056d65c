"""Numerical robustness of the core families and the relaxation estimators.

Valid but extreme inputs (huge logits, huge offsets, ``-inf`` categories, a single category,
tied logits, tiny and large temperatures, every floating dtype) must give finite values and
gradients, and the noise samplers must follow their laws.
"""

import math

import pytest
import torch

from latentgrad._numerics import gumbel_noise, logistic_noise
from latentgrad.distributions.bernoulli import Bernoulli
from latentgrad.distributions.categorical import Categorical
from latentgrad.estimators.relaxed import GumbelSoftmax, StraightThrough
from latentgrad.testing.examples import (
    EstimatorExample,
    FamilyExample,
    estimator_examples,
    family_examples,
)

F64 = torch.float64
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
ALPHA = 1e-5


def _chi2_sf(stat: float, df: int) -> float:
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=F64), torch.tensor(stat / 2)))


def _ks_distance(samples: torch.Tensor, cdf) -> float:
    """``sup_x |F_n(x) - F(x)|`` of the sample against ``cdf``."""
    x, _ = torch.sort(samples.to(F64))
    n = x.numel()
    f = cdf(x)
    upper = torch.arange(1, n + 1, dtype=F64) / n - f
    lower = f - torch.arange(0, n, dtype=F64) / n
    return float(torch.maximum(upper, lower).max())


def _dkw_bound(n: int, alpha: float = ALPHA) -> float:
    """Dvoretzky-Kiefer-Wolfowitz: ``P(sup |F_n - F| > eps) <= 2 exp(-2 n eps^2) = alpha``."""
    return math.sqrt(math.log(2 / alpha) / (2 * n))


def _gumbel_cdf(x):
    return torch.exp(-torch.exp(-x))


# -- extreme inputs through families and estimators ---------------------------------------------


def _logits(case: str, example: FamilyExample) -> torch.Tensor:
    shape = example.params.shape
    base = torch.rand(shape) * 2 - 1
    if case == "scale1e4":
        return base * 1e4
    if case == "offset-1e4":
        return base - 1e4
    if case == "one-category":
        return base[..., :1]
    if case == "ties":
        return torch.zeros(shape)
    # "infinite": all -inf but one category (bits: a mix of ±inf with finite ones).
    keep = torch.randint(shape[-1], shape[:-1]).unsqueeze(-1)
    first = torch.arange(shape[-1]) == keep
    if example.infinite == "+-inf":
        return torch.where(first, base, torch.where(base > 0, math.inf, -math.inf))
    return torch.where(first, base, -math.inf)


# Families parameterized by logits and with a relaxation, and the relaxation estimators that
# take a temperature, from the registry of examples.
FAMILIES: dict[str, FamilyExample] = {
    f.name: f
    for f in family_examples(capability=("has_relaxation", "has_logits"), one_per_family=True)
}
CASES = ["scale1e4", "offset-1e4", "infinite", "one-category", "ties"]
ESTIMATORS: dict[str, EstimatorExample] = {
    x.name: x for x in estimator_examples(group="relaxed") if x.temperature is not None
}


def _estimator(name: str, tau: float):
    example = ESTIMATORS[name]
    return example.make(None, **{example.temperature: tau, "num_samples": 2})


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tau", [1e-3, 5.0])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_estimators_finite_on_extreme_inputs(estimator, family, case, tau, dtype):
    torch.manual_seed(0)
    example = FAMILIES[family]
    logits = _logits(case, example).to(dtype).requires_grad_(True)
    dist = example.make(logits)
    event_dims = len(dist.event_shape)
    w = torch.randn(dist.event_shape).to(dtype).requires_grad_(True)
    dims = tuple(range(-event_dims, 0))

    def loss(z):
        return ((z * w).sum(dims) - 0.5) ** 2

    out = _estimator(estimator, tau)(dist, loss)
    assert out.value.dtype == dtype
    assert out.value.isfinite().all() and out.surrogate.isfinite().all()
    out.surrogate.sum().backward()
    assert logits.grad.isfinite().all()
    assert w.grad.isfinite().all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("family", FAMILIES)
def test_family_quantities_finite_on_extreme_inputs(family, case, dtype):
    torch.manual_seed(1)
    example = FAMILIES[family]
    logits = _logits(case, example).to(dtype).requires_grad_(True)
    dist = example.make(logits)
    z = dist.sample((3,))
    assert z.dtype == dtype
    lp = dist.log_prob(z)
    assert lp.isfinite().all()
    for tau in (1e-3, 5.0):
        y = dist.rsample_relaxed(tau, (3,))
        assert y.dtype == dtype and y.isfinite().all()
        assert ((y >= 0) & (y <= 1)).all()
    total = lp.float().sum() + dist.entropy().float().sum() + dist.mean.float().sum()
    total = total + dist.rsample_relaxed(1e-3, (2,)).float().sum()
    assert total.isfinite()
    total.backward()
    assert logits.grad.isfinite().all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_hard_samples_exactly_one_hot_with_ties(dtype):
    torch.manual_seed(2)
    logits = torch.zeros(2000, 7, dtype=dtype, requires_grad=True)
    seen = []
    GumbelSoftmax(tau=0.5, hard=True, num_samples=3)(
        Categorical(logits=logits), lambda z: seen.append(z) or z[..., 0]
    )
    z = seen[0]
    assert ((z == 0) | (z == 1)).all() and (z.sum(-1) == 1).all()
    # All categories occur (ties broken by the noise, not always towards index 0).
    assert (z.sum((0, 1)) > 0).all()
    # Exactly tied scores (noise equal too): still exactly one-hot, the lowest index.
    dist = Categorical(logits=logits.detach())
    hard = dist.from_noise(torch.zeros(3, 2000, 7))
    assert (hard.sum(-1) == 1).all() and (hard[..., 0] == 1).all()
    seen.clear()
    StraightThrough()(dist, lambda z: seen.append(z) or z[..., 0])
    assert ((seen[0] == 0) | (seen[0] == 1)).all() and (seen[0].sum(-1) == 1).all()


# -- noise samplers ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64], ids=str)
def test_ten_million_noise_draws_are_finite(dtype):
    torch.manual_seed(3)
    like = torch.zeros((), dtype=dtype)
    chunk, total = 10**6, 10**7
    lo, hi = math.inf, -math.inf
    for _ in range(total // chunk):
        g = gumbel_noise((chunk,), like)
        assert g.isfinite().all()
        lo, hi = min(lo, float(g.min())), max(hi, float(g.max()))
        assert logistic_noise((chunk,), like).isfinite().all()
    # 1e7 Gumbel draws reach about -log(log(1e7)) = -2.8 and log(1e7) = 16 at the extremes
    # (a clamped uniform bounds them by -log(-log(tiny)), -6.6 in float64, -4.5 in float32).
    assert -7.0 < lo < -2.0 and 12.0 < hi < 40.0


@pytest.mark.stat
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_noise_laws_ks(dtype):
    torch.manual_seed(4)
    n = 10**6
    like = torch.zeros((), dtype=dtype)
    bound = _dkw_bound(n)
    g = gumbel_noise((n,), like)
    assert g.dtype == dtype
    assert _ks_distance(g, _gumbel_cdf) < bound
    l_ = logistic_noise((n,), like)
    assert _ks_distance(l_, torch.sigmoid) < bound
    # Power: the same samples against the other law, or shifted by 0.02, are rejected.
    assert _ks_distance(g, torch.sigmoid) > bound
    assert _ks_distance(g + 0.02, _gumbel_cdf) > bound
    assert _ks_distance(l_ + 0.02, torch.sigmoid) > bound


@pytest.mark.stat
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_gumbel_max_frequencies_match_softmax(dtype):
    torch.manual_seed(5)
    # Exactly representable in bfloat16, so the expected probabilities are exact.
    logits = torch.tensor([1.0, 0.0, -0.5, 2.0, -1.0, 0.25, -math.inf])
    n = 10**6
    z = Categorical(logits=logits.to(dtype)).sample((n,))
    counts = z.to(F64).sum(0)
    assert counts[-1] == 0  # probability exactly 0
    expected = n * torch.softmax(logits[:-1].to(F64), -1)
    stat = float(((counts[:-1] - expected) ** 2 / expected).sum())
    assert _chi2_sf(stat, 5) > ALPHA, (counts, expected)
    # Power: the counts are rejected against a tempered softmax.
    wrong = n * torch.softmax(logits[:-1].to(F64) / 1.05, -1)
    assert _chi2_sf(float(((counts[:-1] - wrong) ** 2 / wrong).sum()), 5) < ALPHA


@pytest.mark.stat
def test_bernoulli_frequencies_match_sigmoid():
    torch.manual_seed(6)
    logits = torch.tensor([-3.0, -0.5, 0.0, 1.5, 6.0], dtype=F64)
    n = 10**6
    ones = Bernoulli(logits=logits).sample((n,)).sum(0)
    p = torch.sigmoid(logits)
    z = (ones - n * p) / (n * p * (1 - p)).sqrt()
    from latentgrad.testing import bonferroni_z

    assert (z.abs() < bonferroni_z(ALPHA, 5)).all(), z
