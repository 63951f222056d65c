"""Elimination and Matching: fast path, mode, enumeration, subset-DP log_prob, errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from latentgrad.distributions import StructuredDistribution
from latentgrad.distributions import matching as matching_module
from latentgrad.distributions.matching import MAX_MATCHING_DP, Matching
from latentgrad.structured import core
from latentgrad.structured.core import enumerate_traces, trace_log_prob
from latentgrad.structured.elimination import ROUNDS_MIN_N, Elimination

F64 = torch.float64


def small_instances() -> list[StructuredDistribution]:
    """Small Matching instances (batch of 2) for the shared family tests."""
    g = torch.Generator().manual_seed(31)
    return [
        Matching(torch.randn(2, 3, 3, generator=g, dtype=F64)),
        Matching(torch.tensor([[[0.0, 0.0], [0.0, 0.0]], [[1.5, -0.5], [0.3, 2.0]]], dtype=F64)),
    ]


def _reference_greedy(scores: list[list[float]]) -> list[int]:
    """Pure-Python greedy elimination on the scores (largest first, ties to the lowest flat
    index): the column of each row."""
    n = len(scores)
    sigma = [-1] * n
    free_rows, free_cols = set(range(n)), set(range(n))
    for _ in range(n):
        i, j = max(
            ((i, j) for i in free_rows for j in free_cols),
            key=lambda ij: (scores[ij[0]][ij[1]], -(ij[0] * n + ij[1])),
        )
        sigma[i] = j
        free_rows.remove(i)
        free_cols.remove(j)
    return sigma


def _permutation_matrices(n: int) -> torch.Tensor:
    perms = torch.tensor(list(itertools.permutations(range(n))))
    return torch.nn.functional.one_hot(perms, n).to(F64)


def _weights(rows: int, n: int, g: torch.Generator, ties: bool) -> torch.Tensor:
    if ties:
        return torch.randint(0, 3, (rows, n * n), generator=g).to(F64)
    return torch.randn(rows, n * n, generator=g, dtype=F64)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_rounds_equal_the_generic_driver(n: int, ties: bool, masked: bool) -> None:
    g = torch.Generator().manual_seed(n + 100 * ties + 1000 * masked)
    alg = Elimination(n)
    w = _weights(64, n, g, ties)
    d = n * n
    mask = torch.rand(64, d, generator=g) < 0.6 if masked else torch.ones(64, d, dtype=torch.bool)
    sigma, trace = alg.run_rounds(w, mask)
    sigma_ref, trace_ref = core.run(alg, w, mask)
    assert torch.equal(sigma, sigma_ref)
    assert torch.equal(trace.choices, trace_ref.choices)
    assert torch.equal(trace.candidates, trace_ref.candidates)


@pytest.mark.parametrize("ties", [False, True])
def test_run_switches_to_rounds_for_large_n_and_equals_the_driver(ties: bool) -> None:
    g = torch.Generator().manual_seed(5 + ties)
    n = ROUNDS_MIN_N
    alg = Elimination(n)
    w = _weights(8, n, g, ties)
    mask = torch.ones(8, n * n, dtype=torch.bool)
    sigma, trace = alg.run(w, mask)
    sigma_ref, trace_ref = core.run(alg, w, mask)
    assert torch.equal(sigma, sigma_ref)
    assert torch.equal(trace.choices, trace_ref.choices)
    assert torch.equal(trace.candidates, trace_ref.candidates)


def test_stuck_elimination_stops_and_leaves_rows_unmatched() -> None:
    # Row 1 can only use column 0, which row 0 takes first: row 1 and column 1 stay free.
    w = torch.tensor([[0.0, 5.0, 1.0, 2.0]], dtype=F64)
    mask = torch.tensor([[True, True, True, False]])
    for runner in (Elimination(2).run_rounds, lambda w, m: core.run(Elimination(2), w, m)):
        sigma, trace = runner(w, mask)
        assert sigma.tolist() == [[0, -1]]
        assert trace.valid.tolist() == [[True, False]]


@pytest.mark.parametrize("n", [1, 2, 4, 6])
@pytest.mark.parametrize("ties", [False, True])
def test_mode_is_greedy_elimination(n: int, ties: bool) -> None:
    g = torch.Generator().manual_seed(3 * n + ties)
    scores = _weights(5, n, g, ties).reshape(5, n, n)
    mode = Matching(scores).mode()
    for row in range(5):
        sigma = _reference_greedy(scores[row].tolist())
        expected = torch.nn.functional.one_hot(torch.tensor(sigma), n).to(F64)
        assert torch.equal(mode[row], expected), (scores[row], sigma)


def test_mode_is_not_the_maximum_weight_assignment() -> None:
    scores = torch.tensor([[3.0, 2.9], [2.9, 0.0]])
    mode = Matching(scores).mode()  # greedy takes (0, 0) for 3.0; the best assignment is 5.8
    assert torch.equal(mode, torch.eye(2))


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_enumeration_gives_n_factorial_matchings_and_dp_matches(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    q = Matching(torch.randn(2, n, n, generator=g, dtype=F64))
    assert q.support_size() == math.factorial(n)
    values, probs = q.support_probs()
    assert values.shape == (math.factorial(n), 2, n, n)
    assert len({tuple(v.flatten().tolist()) for v in values[:, 0]}) == math.factorial(n)
    assert bool((probs > 0).all())
    torch.testing.assert_close(probs.sum(0), torch.ones(2, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(q.log_prob(values), StructuredDistribution.log_prob(q, values))
    # trace probabilities sum to one
    theta = q.item_scores().reshape(-1, n * n)
    enum = enumerate_traces(q.algorithm, torch.ones(2, n * n, dtype=torch.bool))
    p = trace_log_prob(theta[enum.row], enum.trace).exp()
    totals = torch.zeros(2, dtype=F64).index_add(0, enum.row, p)
    torch.testing.assert_close(totals, torch.ones(2, dtype=F64), rtol=0, atol=1e-12)


def test_three_by_three_has_six_matchings() -> None:
    values, probs = Matching(torch.zeros(3, 3)).support_probs()
    assert values.shape[0] == 6
    torch.testing.assert_close(float(probs.sum()), 1.0)


def test_dp_log_prob_sums_to_one_over_all_permutations() -> None:
    g = torch.Generator().manual_seed(6)
    n = 6
    q = Matching(torch.randn(n, n, generator=g, dtype=F64) * 2)
    perms = _permutation_matrices(n)
    total = q.log_prob(perms).exp().sum()
    torch.testing.assert_close(total, torch.tensor(1.0, dtype=F64), rtol=0, atol=1e-12)


def test_dp_in_chunks_equals_dp_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(8)
    q = Matching(torch.randn(3, 5, 5, generator=g, dtype=F64))
    z = q.sample((4,))
    at_once = q.log_prob(z)
    monkeypatch.setattr(matching_module, "_DP_BUDGET", 1)  # one row per chunk
    torch.testing.assert_close(q.log_prob(z), at_once, rtol=0, atol=1e-13)


def test_dp_gradient_matches_finite_differences() -> None:
    g = torch.Generator().manual_seed(9)
    scores = torch.randn(2, 3, 3, generator=g, dtype=F64, requires_grad=True)
    value = _permutation_matrices(3)[[1, 4]]
    assert torch.autograd.gradcheck(lambda s: Matching(s).log_prob(value), (scores,))


def test_dp_handles_the_largest_size() -> None:
    torch.manual_seed(16)
    n = MAX_MATCHING_DP
    q = Matching(torch.randn(n, n, dtype=F64))
    z = q.sample((2,))
    lp = q.log_prob(z)
    assert lp.shape == (2,) and bool(torch.isfinite(lp).all()) and bool((lp < 0).all())
    with pytest.raises(TypeError, match="trace_log_prob"):
        Matching(torch.randn(n + 1, n + 1)).log_prob(torch.eye(n + 1))


def test_invalid_values_have_log_prob_minus_inf() -> None:
    q = Matching(torch.randn(3, 3, dtype=F64))
    eye = torch.eye(3, dtype=F64)
    two_in_a_row = eye.clone()
    two_in_a_row[0, 1] = 1
    swapped = eye[[0, 0, 2]]  # column 1 empty, column 0 twice
    values = torch.stack([eye, two_in_a_row, swapped, eye * 0.5, torch.zeros(3, 3, dtype=F64)])
    for value in values[1:]:
        with pytest.raises(ValueError, match="value must be in the support of Matching"):
            q.log_prob(value)
    lp = Matching(q.scores, validate_args=False).log_prob(values)
    assert bool(torch.isfinite(lp[0])) and bool(torch.isneginf(lp[1:]).all())


def test_shapes_and_value_dtype() -> None:
    q = Matching(torch.randn(2, 3, 4, 4, dtype=torch.float32))
    assert q.batch_shape == (2, 3) and q.event_shape == (4, 4)
    z, noise, trace = q.sample_with_trace((5,))
    assert z.shape == (5, 2, 3, 4, 4) and z.dtype == torch.float32
    assert noise.shape == (5, 2, 3, 16)
    assert trace.choices.shape == (5, 2, 3, 4) and trace.candidates.shape == (5, 2, 3, 4, 16)
    assert bool((z.sum(-1) == 1).all()) and bool((z.sum(-2) == 1).all())
    torch.testing.assert_close(q.log_prob(z).shape, torch.Size([5, 2, 3]))
    with pytest.raises(ValueError, match="event shape"):
        q.log_prob(torch.zeros(2, 3, 3, 3))


def test_one_by_one_is_trivial() -> None:
    q = Matching(torch.tensor([[[0.7]], [[-3.0]]], requires_grad=True))
    z, _, trace = q.sample_with_trace((3,))
    assert torch.equal(z, torch.ones(3, 2, 1, 1))
    assert q.support_size() == 1
    torch.testing.assert_close(q.log_prob(z), torch.zeros(3, 2))
    torch.testing.assert_close(q.trace_log_prob(trace), torch.zeros(3, 2))
    assert torch.equal(q.mode(), torch.ones(2, 1, 1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, F64])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_extreme_scores_and_dtypes_stay_finite(dtype: torch.dtype, scale: float) -> None:
    torch.manual_seed(4)
    base = torch.tensor([[1.0, -1.0, 0.0, 0.5], [0.2, 0.1, -0.3, 1.0], [-1.0, 0.0, 1.0, -0.5]])
    base = torch.cat([base, -base[:1]]).reshape(1, 4, 4).expand(2, 4, 4) * torch.tensor(
        [1.0, -1.0]
    ).view(2, 1, 1)
    scores = (base * scale).to(dtype).requires_grad_(True)
    q = Matching(scores)
    z, _, trace = q.sample_with_trace((32,))
    assert z.dtype == dtype
    lt = q.trace_log_prob(trace)
    lp = q.log_prob(z)
    assert bool(torch.isfinite(lt).all()) and bool(torch.isfinite(lp).all())
    assert bool((lp.to(lt.dtype) >= lt - 1e-3 * max(1.0, scale)).all())  # sum over orders >= one
    (lt.sum() + lp.float().sum()).backward()
    assert scores.grad is not None and bool(torch.isfinite(scores.grad).all())
    assert q.mode().dtype == dtype


@pytest.mark.parametrize(
    ("scores", "error", "match"),
    [
        (torch.tensor([[0.0, float("nan")], [1.0, 0.0]]), ValueError, "NaN"),
        (torch.tensor([[0.0, -torch.inf], [1.0, 0.0]]), ValueError, "-inf"),
        (torch.tensor([[0.0, torch.inf], [1.0, 0.0]]), ValueError, r"\+inf"),
        (torch.zeros(2, 3), ValueError, "square"),
        (torch.zeros(3), ValueError, "dimension"),
        (torch.tensor(1.0), ValueError, "dimension"),
        (torch.zeros(2, 0, 0), ValueError, "non-empty"),
        (torch.zeros(2, 2, dtype=torch.long), TypeError, "floating"),
    ],
)
def test_bad_scores_are_rejected(scores: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        Matching(scores)  # type: ignore[arg-type]


def test_algorithm_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="n must be >= 1"):
        Elimination(0)
    with pytest.raises(TypeError, match="n must be an int"):
        Elimination(True)  # type: ignore[arg-type]


def test_small_instances_are_valid() -> None:
    for q in small_instances():
        assert q.batch_shape == (2,)
        _, probs = q.support_probs()
        torch.testing.assert_close(probs.sum(0), torch.ones(2, dtype=F64))
