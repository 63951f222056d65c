"""SparseMAP and TopKSparsemax distributions: exact marginalization through Marginalize."""

from __future__ import annotations

import itertools

import pytest
import torch

import latentgrad as lg
from latentgrad.mappings import sparsemax
from latentgrad.mappings.oracles import (
    ArborescenceOracle,
    BudgetBits,
    FreeBits,
    KSubsetOracle,
    PermutationOracle,
    SequenceOracle,
    SpanningTreeOracle,
)
from latentgrad.testing.stats import chi_square_pvalue

F64 = torch.float64


def _loss(z: torch.Tensor) -> torch.Tensor:
    w = torch.linspace(-1.0, 2.0, z.shape[-1], dtype=z.dtype)
    s = (z * w).sum(-1)
    return torch.sin(3 * s) + s**2


@pytest.mark.parametrize("oracle", [FreeBits(5), BudgetBits(5, 2)], ids=repr)
def test_marginalize_gives_the_exact_gradient_of_the_sum_over_the_support(oracle) -> None:
    g = torch.Generator().manual_seed(0)
    theta = (torch.randn(3, 5, generator=g, dtype=F64) * 0.7).requires_grad_(True)

    def expected_loss(t: torch.Tensor) -> torch.Tensor:
        return lg.Marginalize()(lg.SparseMAP(t, oracle, tol=1e-12), _loss).surrogate

    out = lg.Marginalize()(lg.SparseMAP(theta, oracle), _loss)
    q = lg.SparseMAP(theta, oracle)
    values, probs = q.support_probs()
    manual = (probs * _loss(values)).sum(0)
    torch.testing.assert_close(out.surrogate, manual)
    assert torch.autograd.gradcheck(expected_loss, (theta,), atol=1e-6)
    assert out.loss_evals == values.shape[0]


def test_support_is_a_convex_combination_of_valid_structures() -> None:
    theta = torch.tensor([[0.9, 0.6, -0.2, 0.1], [0.3, 0.3, 0.3, 0.3]], dtype=F64)
    q = lg.SparseMAP(theta, BudgetBits(4, 2))
    values, probs = q.support_probs()
    assert bool((values.sum(-1) <= 2).all()) and bool(((values == 0) | (values == 1)).all())
    torch.testing.assert_close(probs.sum(0), torch.ones(2, dtype=F64))
    torch.testing.assert_close((probs.unsqueeze(-1) * values).sum(0), q.mean)
    assert q.support_size() == values.shape[0]
    logp = q.log_prob(values)
    positive = probs > 0
    torch.testing.assert_close(logp.exp()[positive], probs[positive])
    assert torch.equal(q.mode()[0], torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=F64))
    h = q.entropy()
    assert h.shape == (2,) and bool((h >= 0).all())


def test_structure_oracles_give_natural_values() -> None:
    g = torch.Generator().manual_seed(1)
    oracle = SpanningTreeOracle(4)
    theta = torch.randn(2, oracle.dim, generator=g, dtype=F64) * 0.3
    q = lg.SparseMAP(theta, oracle)
    assert q.event_shape == (4, 4)
    values, _ = q.support_probs()
    assert values.shape[-2:] == (4, 4)
    assert bool((values.sum((-1, -2)) == 6).all())  # 3 edges, symmetric
    out = lg.Marginalize()(q, lambda a: a[..., 0, :].sum(-1) ** 2)
    assert out.value.shape == (2,)


@pytest.mark.stat
def test_samples_follow_the_weights() -> None:
    torch.manual_seed(2)
    q = lg.SparseMAP(torch.tensor([0.5, 0.2, -0.1, 0.4]), FreeBits(4))
    values, probs = q.support_probs()
    z = q.sample((20000,))
    idx = (z.unsqueeze(1) == values.unsqueeze(0)).all(-1).float().argmax(-1)
    counts = torch.bincount(idx, minlength=values.shape[0])
    assert chi_square_pvalue(counts, probs) > 1e-5
    assert q.sample((3, 2)).shape == (3, 2, 4)


def test_topk_sparsemax_equals_sparsemax_over_all_structures_when_exact() -> None:
    g = torch.Generator().manual_seed(3)
    theta = torch.randn(6, 4, generator=g, dtype=F64)
    q = lg.TopKSparsemax(theta, k=6)
    every = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)), dtype=F64)
    full = sparsemax(theta @ every.T, dim=-1)  # (6, 16)
    values, probs = q.support_probs()
    for b in range(6):
        if not bool(q.exact[b]):
            continue
        for a in range(values.shape[0]):
            if probs[a, b] > 0:
                j = int((every == values[a, b]).all(-1).float().argmax())
                assert abs(float(probs[a, b] - full[b, j])) < 1e-6
        assert abs(float(probs[:, b].sum()) - 1) < 1e-9
    assert bool(q.exact.any())


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="finite"):
        lg.SparseMAP(torch.tensor([0.0, float("nan")]), FreeBits(2))
    with pytest.raises(TypeError, match="oracle must be callable"):
        lg.SparseMAP(torch.zeros(2), "free")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        lg.SparseMAP(
            torch.randn(4, 8), FreeBits(8), max_iter=1, method="active_set"
        ).support_probs()
    with pytest.raises(ValueError, match="method must be"):
        lg.SparseMAP(torch.randn(4, 8), FreeBits(8), method="exact")
    with pytest.raises(ValueError):
        lg.TopKSparsemax(torch.zeros(3), k=9)
    with pytest.raises(ValueError):
        lg.TopKSparsemax(torch.zeros(3), k=2, structures="budget")


def test_expand_and_batch_shapes() -> None:
    q = lg.SparseMAP(torch.randn(3, 4), FreeBits(4))
    big = q.expand((2, 3))
    values, probs = big.support_probs()
    assert values.shape[1:] == (2, 3, 4) and probs.shape[1:] == (2, 3)
    assert lg.TopKSparsemax(torch.randn(2, 3, 5), k=3).support_probs()[0].shape == (3, 2, 3, 5)


@pytest.mark.parametrize(
    "oracle",
    [
        lambda: KSubsetOracle(5, 2),
        lambda: PermutationOracle(3),
        lambda: SpanningTreeOracle(4),
        lambda: ArborescenceOracle(4, root=1),
        lambda: SequenceOracle(3, 2),
    ],
    ids=["ksubset", "permutation", "spanning-tree", "arborescence", "sequence"],
)
def test_sparsemap_over_structures_is_certified_by_brute_force(oracle) -> None:
    # ||mu - mu*||^2 <= max_z <theta - mu, z - mu> over ALL structures (the duality gap), so a
    # gap of 1e-10 over the enumerated vertices certifies mu to 1e-5: a brute-force QP check.
    o = oracle()
    g = torch.Generator().manual_seed(5)
    theta = torch.randn(8, o.dim, generator=g, dtype=F64)
    theta[0] = 0.0  # degenerate: every structure ties
    result = lg.SparseMAP(theta, o, tol=1e-12).result
    vertices = o.enumerate(device=theta.device).to(F64)  # (S, D)
    r = theta - result.mu
    gap = (r @ vertices.T).amax(-1) - (r * result.mu).sum(-1)
    assert float(gap.max()) < 1e-10
    recon = (result.weights.unsqueeze(-1) * result.structures).sum(-2)
    torch.testing.assert_close(recon, result.mu, rtol=0, atol=1e-9)
    assert bool((result.weights >= 0).all())
    torch.testing.assert_close(result.weights.sum(-1), torch.ones(8, dtype=F64))
    # every returned structure with positive weight is a vertex
    member = (result.structures.unsqueeze(-2) == vertices).all(-1).any(-1)
    assert bool(member[result.weights > 0].all())


def test_the_distribution_passes_the_penalty() -> None:
    oracle = SequenceOracle(4, 3)
    theta = torch.randn(5, oracle.dim, generator=torch.Generator().manual_seed(7)).double()
    q = lg.SparseMAP(theta, oracle, penalized=oracle.unary_parts)
    direct = lg.mappings.sparsemap(theta, oracle, penalized=oracle.unary_parts)
    assert torch.equal(q.mean, direct.mu)
    with pytest.raises(ValueError, match="penalized"):
        lg.SparseMAP(theta, oracle, penalized=torch.ones(3, dtype=torch.bool))
    with pytest.raises(TypeError, match="penalized"):
        lg.SparseMAP(theta, oracle, penalized=oracle.unary_parts.double())
