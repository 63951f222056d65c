"""The brute-force laws against every family's support_probs, log_prob and sampler, and against
perturb-and-MAP Monte Carlo written here (fresh noise, a brute-force argmax over the structures).

Statistical tests have fixed seeds; the family-wise false-failure rate of this file is below
1e-4 (Bonferroni over every chi-square test it runs).
"""

from __future__ import annotations

import pytest
import torch

import latentgrad as lg
from latentgrad.mappings.oracles import FreeBits
from latentgrad.testing import (
    brute_force_support,
    chi_square_pvalue,
    exact_expectation,
    exact_gradient,
    probabilities_of,
    register_brute_force,
)
from latentgrad.testing.examples import FamilyExample, family_examples

F64 = torch.float64
EXAMPLES = family_examples()
# chi-square tests in this file: two batch elements per example, plus the Monte Carlo checks
NUM_CHI2 = 2 * len(EXAMPLES) + 2 * 4
ALPHA = 1e-4 / NUM_CHI2


def _exact_rows(example: FamilyExample, q) -> torch.Tensor:
    """Batch elements where the family claims the exact law (TopKSparsemax: ``exact``)."""
    if example.family == "topk-sparsemax":
        return q.exact
    return torch.ones(q.batch_shape, dtype=torch.bool)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda x: x.name)
def test_support_probs_match_the_brute_force_law(example: FamilyExample) -> None:
    q = example.dist()
    values, probs = brute_force_support(q)
    assert values.shape == (probs.shape[0], *q.batch_shape, *q.event_shape)
    assert probs.dtype == F64
    torch.testing.assert_close(probs.sum(0), torch.ones(q.batch_shape, dtype=F64))
    rows = _exact_rows(example, q)
    assert bool(rows.any())
    theirs = probabilities_of(values, q.support_probs()).to(F64)
    torch.testing.assert_close(theirs[:, rows], probs[:, rows], rtol=0, atol=1e-6)
    # every value the family lists is one of the brute-force values
    torch.testing.assert_close(theirs.sum(0)[rows], torch.ones_like(theirs.sum(0)[rows]))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda x: x.name)
def test_log_prob_matches_the_brute_force_law(example: FamilyExample) -> None:
    q = example.dist()
    values, probs = brute_force_support(q)
    rows = _exact_rows(example, q)
    logp = q.log_prob(values).to(F64)
    assert logp.shape == probs.shape
    torch.testing.assert_close(logp.exp()[:, rows], probs[:, rows], rtol=0, atol=1e-6)


def _index_of(samples: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Index of each sample (n, *event) among ``values`` (S, *event); -1 when absent."""
    eq = (samples.unsqueeze(1) == values.unsqueeze(0)).flatten(2).all(-1)
    idx = eq.to(torch.int8).argmax(-1)
    return torch.where(eq.any(-1), idx, torch.full_like(idx, -1))


def _assert_law(samples: torch.Tensor, values: torch.Tensor, probs: torch.Tensor, what: str):
    idx = _index_of(samples, values)
    assert bool((idx >= 0).all()), f"{what}: a sample outside the listed structures"
    counts = torch.bincount(idx, minlength=values.shape[0])
    pvalue = chi_square_pvalue(counts, probs)
    assert pvalue > ALPHA, f"{what}: chi-square p = {pvalue:.2e}"


@pytest.mark.stat
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda x: x.name)
def test_sampler_follows_the_brute_force_law(example: FamilyExample) -> None:
    torch.manual_seed(20)
    q = example.dist()
    values, probs = brute_force_support(q)
    rows = _exact_rows(example, q)
    z = q.sample((20000,))
    for b in range(q.batch_shape[0]):
        if bool(rows[b]):
            _assert_law(z[:, b], values[:, b], probs[:, b].detach(), f"{example.name}[{b}]")


# -- the laws derived in brute_force, checked by Monte Carlo over fresh noise ---------------------


def _gumbel(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    u = torch.rand(shape, generator=g, dtype=F64).clamp_min(1e-300)
    return -torch.log(-torch.log(u))


def _chi2_against_brute_force(q, best: torch.Tensor, what: str) -> None:
    values, probs = brute_force_support(q)
    for b in range(q.batch_shape[0]):
        _assert_law(values[best[:, b], b], values[:, b], probs[:, b].detach(), f"{what}[{b}]")


@pytest.mark.stat
def test_spanning_tree_law_is_the_max_tree_of_perturbed_scores() -> None:
    q = family_examples(names=["spanning-tree"])[0].dist()
    values, _ = brute_force_support(q)  # (S, B, n, n)
    g = torch.Generator().manual_seed(21)
    n = 20000
    iu = torch.triu_indices(4, 4, 1)
    scores = q.scores[..., iu[0], iu[1]]  # (B, D)
    edges = values[..., iu[0], iu[1]]  # (S, B, D)
    perturbed = scores + _gumbel((n, *scores.shape), g)
    weight = torch.where(edges.bool(), perturbed.unsqueeze(1), 0.0).sum(-1)  # (n, S, B)
    weight = torch.where(torch.isnan(weight), -torch.inf, weight)
    _chi2_against_brute_force(q, weight.argmax(1), "spanning-tree")


@pytest.mark.stat
def test_arborescence_law_is_the_least_total_exponential_noise() -> None:
    q = family_examples(names=["arborescence"])[0].dist()
    values, _ = brute_force_support(q)
    g = torch.Generator().manual_seed(22)
    n = 20000
    rates = q.scores.masked_fill(torch.eye(4, dtype=torch.bool), -torch.inf).exp()
    rates[..., :, 0] = 0  # edges into the root are absent
    noise = -torch.log(torch.rand((n, *rates.shape), generator=g, dtype=F64)) / rates
    cost = torch.where(values.bool(), noise.unsqueeze(1), 0.0).sum((-1, -2))  # (n, S, B)
    _chi2_against_brute_force(q, cost.argmin(1), "arborescence")


@pytest.mark.stat
def test_ksubset_and_plackett_luce_laws_are_top_k_of_perturbed_scores() -> None:
    g = torch.Generator().manual_seed(23)
    n = 20000
    q = family_examples(names=["ksubset"])[0].dist()
    values, probs = brute_force_support(q)
    top = (q.scores + _gumbel((n, *q.scores.shape), g)).topk(3, -1).indices
    z = torch.zeros((n, *q.scores.shape), dtype=F64).scatter_(-1, top, 1.0)
    for b in range(2):
        _assert_law(z[:, b], values[:, b], probs[:, b].detach(), f"ksubset[{b}]")
    q = family_examples(names=["plackett-luce"])[0].dist()
    values, probs = brute_force_support(q)
    order = (q.scores + _gumbel((n, *q.scores.shape), g)).argsort(-1, descending=True)
    for b in range(2):
        _assert_law(order[:, b], values[:, b], probs[:, b].detach(), f"plackett-luce[{b}]")


# -- exact expectations and gradients ------------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda x: x.name)
def test_exact_gradient_matches_the_family_support(example: FamilyExample) -> None:
    leaf = example.leaf(requires_grad=True)
    q = example.make(leaf)
    width = q.event_shape.numel()
    w = torch.linspace(-1.0, 1.5, width, dtype=F64)

    def loss(z: torch.Tensor) -> torch.Tensor:
        s = (z.to(F64).flatten(z.dim() - len(q.event_shape)) * w).sum(-1)
        return torch.sin(s) + s**2

    rows = _exact_rows(example, q)
    (mine,) = exact_gradient(lambda: example.make(leaf), loss, [leaf])
    values, probs = q.support_probs()
    theirs = (probs.to(F64) * loss(values)).sum(0)
    (ref,) = torch.autograd.grad(theirs[rows].sum(), leaf)
    mine_rows = mine.reshape(*q.batch_shape, -1)[rows]
    torch.testing.assert_close(mine_rows, ref.reshape(*q.batch_shape, -1)[rows], atol=1e-6, rtol=0)
    assert bool(torch.isfinite(mine).all())
    expected = exact_expectation(example.make(leaf.detach()), loss)
    torch.testing.assert_close(expected[rows], theirs.detach()[rows], atol=1e-6, rtol=0)


def test_exact_expectation_ignores_losses_of_impossible_values() -> None:
    q = lg.Categorical(logits=torch.tensor([0.0, -torch.inf, 0.0], dtype=F64))
    w = torch.tensor([1.0, 0.0, 3.0], dtype=F64)

    def loss(z: torch.Tensor) -> torch.Tensor:
        return torch.where(z[..., 1] > 0, torch.nan, (z * w).sum(-1))

    out = exact_expectation(q, loss)
    torch.testing.assert_close(out, torch.tensor(2.0, dtype=F64))


def test_argument_checks() -> None:
    q = lg.Categorical(logits=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="max_support"):
        exact_expectation(q, lambda z: z.sum(-1), max_support=2)
    with pytest.raises(ValueError, match="max_support"):
        exact_expectation(q, lambda z: z.sum(-1), max_support=0)
    with pytest.raises(ValueError, match="loss_fn"):
        exact_expectation(q, lambda z: z.sum((-1, -2)))
    with pytest.raises(TypeError, match="dist"):
        brute_force_support("not a distribution")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not unique"):
        brute_force_support(lg.SparseMAP(torch.zeros(1, 3), FreeBits(3)))
    with pytest.raises(TypeError, match="register"):
        brute_force_support(torch.distributions.Normal(0.0, 1.0))
    with pytest.raises(TypeError, match="class"):
        register_brute_force("Categorical")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="first dim"):
        probabilities_of(torch.zeros(2, 3), (torch.zeros(2, 3), torch.zeros(3)))
    with pytest.raises(ValueError, match="agree"):
        probabilities_of(torch.zeros(2, 3), (torch.zeros(2, 4), torch.zeros(2)))
