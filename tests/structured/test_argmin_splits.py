"""ArgminSplits and BinaryTree: fast path, mode, enumeration, closed-form log_prob, errors."""

from __future__ import annotations

import math

import pytest
import torch

from latentgrad.distributions import StructuredDistribution
from latentgrad.distributions.binary_tree import BinaryTree, parents_to_adjacency
from latentgrad.structured import core
from latentgrad.structured.argmin_splits import ArgminSplits
from latentgrad.structured.core import enumerate_traces, trace_log_prob

F64 = torch.float64


def small_instances() -> list[StructuredDistribution]:
    """Small BinaryTree instances (batch of 2) for the shared family tests."""
    g = torch.Generator().manual_seed(21)
    return [
        BinaryTree(torch.randn(2, 4, generator=g, dtype=F64)),
        BinaryTree(torch.tensor([[0.0, 0.0, 0.0], [2.0, -1.0, 0.5]], dtype=F64)),
    ]


def _reference_argmax_splits(scores: list[float]) -> list[int]:
    """Pure-Python argmax-splits (ties to the lowest position): the parent of each position."""
    parent = [-1] * len(scores)

    def split(lo: int, hi: int, up: int) -> None:
        if lo >= hi:
            return
        root = max(range(lo, hi), key=lambda i: (scores[i], -i))
        parent[root] = up
        split(lo, root, root)
        split(root + 1, hi, root)

    split(0, len(scores), -1)
    return parent


def _weights(rows: int, n: int, g: torch.Generator, ties: bool) -> torch.Tensor:
    if ties:  # few distinct values: many ties, broken towards the lowest position
        return torch.randint(0, 3, (rows, n), generator=g).to(F64)
    return torch.randn(rows, n, generator=g, dtype=F64)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 9, 16])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_fast_run_equals_the_generic_driver(n: int, ties: bool, masked: bool) -> None:
    g = torch.Generator().manual_seed(n + 100 * ties + 1000 * masked)
    alg = ArgminSplits(n)
    w = _weights(64, n, g, ties)
    mask = torch.rand(64, n, generator=g) < 0.7 if masked else torch.ones(64, n, dtype=torch.bool)
    parent, trace = alg.run(w, mask)
    parent_ref, trace_ref = core.run(alg, w, mask)
    assert torch.equal(parent, parent_ref)
    assert torch.equal(trace.choices, trace_ref.choices)
    assert torch.equal(trace.candidates, trace_ref.candidates)


def test_trace_is_the_preorder_with_spans_as_candidates() -> None:
    w = torch.tensor([[0.5, 0.1, 0.7, 0.3, 0.9]])
    parent, trace = ArgminSplits(5).run(w, torch.ones(1, 5, dtype=torch.bool))
    assert parent.tolist() == [[1, -1, 3, 1, 3]]
    assert trace.choices.tolist() == [[1, 0, 3, 2, 4]]
    spans = [[0, 1, 2, 3, 4], [0], [2, 3, 4], [2], [4]]
    expected = torch.zeros(5, 5, dtype=torch.bool)
    for t, span in enumerate(spans):
        expected[t, span] = True
    assert torch.equal(trace.candidates[0], expected)


@pytest.mark.parametrize("n", [1, 2, 4, 7])
@pytest.mark.parametrize("ties", [False, True])
def test_mode_is_argmax_splits(n: int, ties: bool) -> None:
    g = torch.Generator().manual_seed(7 * n + ties)
    scores = _weights(6, n, g, ties)
    mode = BinaryTree(scores).mode()
    for row in range(6):
        parent = _reference_argmax_splits(scores[row].tolist())
        expected = parents_to_adjacency(torch.tensor(parent), F64)
        assert torch.equal(mode[row], expected), (scores[row], parent)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_enumeration_gives_catalan_many_trees_and_log_prob_matches(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    q = BinaryTree(torch.randn(2, n, generator=g, dtype=F64))
    catalan = math.comb(2 * n, n) // (n + 1)
    assert q.support_size() == catalan
    values, probs = q.support_probs()
    assert values.shape == (catalan, 2, n, n)
    assert len({tuple(v.flatten().tolist()) for v in values[:, 0]}) == catalan
    assert bool((probs > 0).all())  # trees and traces are in bijection: no padding
    torch.testing.assert_close(probs.sum(0), torch.ones(2, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(q.log_prob(values), StructuredDistribution.log_prob(q, values))
    torch.testing.assert_close(q.log_prob(values).exp(), probs, rtol=1e-10, atol=1e-14)
    # trace probabilities sum to one
    theta = q.scores.reshape(-1, n)
    enum = enumerate_traces(q.algorithm, torch.ones(2, n, dtype=torch.bool))
    p = trace_log_prob(theta[enum.row], enum.trace).exp()
    totals = torch.zeros(2, dtype=F64).index_add(0, enum.row, p)
    torch.testing.assert_close(totals, torch.ones(2, dtype=F64), rtol=0, atol=1e-12)


def test_catalan_four_is_fourteen() -> None:
    q = BinaryTree(torch.zeros(4))
    values, probs = q.support_probs()
    assert values.shape[0] == 14 == q.support_size()
    torch.testing.assert_close(float(probs.sum()), 1.0)


@pytest.mark.parametrize("n", [3, 8, 30])
def test_closed_form_log_prob_equals_trace_log_prob_of_samples(n: int) -> None:
    torch.manual_seed(n)
    scores = torch.randn(3, n, dtype=F64, requires_grad=True)
    q = BinaryTree(scores)
    z, _, trace = q.sample_with_trace((50,))
    lp = q.log_prob(z)
    lt = q.trace_log_prob(trace)
    torch.testing.assert_close(lp, lt)
    g1 = torch.autograd.grad(lp.sum(), scores)[0]
    g2 = torch.autograd.grad(lt.sum(), scores)[0]
    torch.testing.assert_close(g1, g2)


def test_invalid_values_have_log_prob_minus_inf_and_zero_gradient() -> None:
    scores = torch.randn(4, dtype=F64, requires_grad=True)
    q = BinaryTree(scores)
    chain = parents_to_adjacency(torch.tensor([-1, 0, 1, 2]), F64)  # a valid right chain
    bad = []
    # span of 0 = {0, 2} is not an interval (2 is a child of 0, 1 a child of 3)
    bad.append(parents_to_adjacency(torch.tensor([3, 3, 0, -1]), F64))
    bad.append(torch.zeros(4, 4, dtype=F64))  # four roots
    cycle = chain.clone()
    cycle[3, 1] = 1
    cycle[0, 1] = 0
    bad.append(cycle)  # 1 -> 2 -> 3 -> 1, and 0 alone
    two_left = parents_to_adjacency(torch.tensor([3, 3, 3, -1]), F64)  # 3 left children
    bad.append(two_left)
    half = chain * 0.5
    bad.append(half)  # not 0/1
    values = torch.stack([chain, *bad])
    for value in bad:
        with pytest.raises(ValueError, match="value must be in the support of BinaryTree"):
            q.log_prob(value)
    lp = BinaryTree(scores, validate_args=False).log_prob(values)
    assert bool(torch.isfinite(lp[0]))
    assert bool(torch.isneginf(lp[1:]).all())
    (grad,) = torch.autograd.grad(lp[1:].clamp_min(-1e9).sum(), scores)
    assert bool((grad == 0).all())


def test_shapes_and_value_dtype() -> None:
    q = BinaryTree(torch.randn(2, 3, 5, dtype=torch.float32))
    assert q.batch_shape == (2, 3) and q.event_shape == (5, 5)
    z, noise, trace = q.sample_with_trace((4,))
    assert z.shape == (4, 2, 3, 5, 5) and z.dtype == torch.float32
    assert noise.shape == (4, 2, 3, 5)
    assert trace.choices.shape == (4, 2, 3, 5) and trace.candidates.shape == (4, 2, 3, 5, 5)
    assert q.log_prob(z).shape == (4, 2, 3)
    # every sample is a tree: n - 1 edges, one parent per non-root
    assert bool((z.sum((-1, -2)) == 4).all()) and bool((z.sum(-2) <= 1).all())
    with pytest.raises(ValueError, match="event shape"):
        q.log_prob(torch.zeros(2, 3, 4, 4))


def test_one_position_is_trivial() -> None:
    q = BinaryTree(torch.tensor([[0.3], [-2.0]], requires_grad=True))
    z = q.sample((3,))
    assert torch.equal(z, torch.zeros(3, 2, 1, 1))
    assert q.support_size() == 1
    torch.testing.assert_close(q.log_prob(z), torch.zeros(3, 2))
    assert torch.equal(q.mode(), torch.zeros(2, 1, 1))
    _, _, trace = q.sample_with_trace()
    torch.testing.assert_close(q.trace_log_prob(trace), torch.zeros(2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, F64])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_extreme_scores_and_dtypes_stay_finite(dtype: torch.dtype, scale: float) -> None:
    torch.manual_seed(3)
    base = torch.tensor([[1.0, -1.0, 0.0, 1.0, -1.0, 0.5], [0.2, 0.1, -0.3, 0.9, -0.8, 0.0]])
    scores = (base * scale).to(dtype).requires_grad_(True)
    q = BinaryTree(scores)
    z, _, trace = q.sample_with_trace((32,))
    assert z.dtype == dtype
    lt = q.trace_log_prob(trace)
    lp = q.log_prob(z)
    assert bool(torch.isfinite(lt).all()) and bool(torch.isfinite(lp).all())
    # log_prob is rounded to the scores' dtype; trace_log_prob is in float32 for halves.
    rtol = 2 * torch.finfo(dtype).eps if dtype in (torch.float16, torch.bfloat16) else 1e-6
    torch.testing.assert_close(lp.to(lt.dtype), lt, rtol=rtol, atol=1e-5 * scale)
    (lt.sum() + lp.float().sum()).backward()
    assert scores.grad is not None and bool(torch.isfinite(scores.grad).all())
    assert q.mode().dtype == dtype


@pytest.mark.parametrize(
    ("scores", "error", "match"),
    [
        (torch.tensor([0.0, float("nan"), 1.0]), ValueError, "NaN"),
        (torch.tensor([0.0, -torch.inf, 1.0]), ValueError, "-inf"),
        (torch.tensor([0.0, torch.inf]), ValueError, r"\+inf"),
        (torch.tensor(1.0), ValueError, "dimension"),
        (torch.zeros(2, 0), ValueError, "non-empty"),
        (torch.zeros(3, dtype=torch.long), TypeError, "floating"),
        ([0.0, 1.0], TypeError, "torch.Tensor"),
    ],
)
def test_bad_scores_are_rejected(scores: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        BinaryTree(scores)  # type: ignore[arg-type]


def test_algorithm_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="n must be >= 1"):
        ArgminSplits(0)
    with pytest.raises(TypeError, match="n must be an int"):
        ArgminSplits(2.0)  # type: ignore[arg-type]


def test_small_instances_are_valid() -> None:
    for q in small_instances():
        assert q.batch_shape == (2,)
        _, probs = q.support_probs()
        torch.testing.assert_close(probs.sum(0), torch.ones(2, dtype=F64))
