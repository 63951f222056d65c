"""kbest_free_bits, kbest_budget_bits and topk_sparsemax against brute-force enumeration."""

import math

import pytest
import torch

from latentgrad.mappings import (
    TopKResult,
    kbest_budget_bits,
    kbest_free_bits,
    sparsemax,
    topk_sparsemax,
)


def small_instances() -> list[tuple[torch.Tensor, int, dict]]:
    """Small ``(theta, k, kwargs)`` cases for ``topk_sparsemax(theta, k, **kwargs)``, batch of 2.

    Includes ties (repeated and zero scores) and a budget that makes some sizes run out.
    """
    g = torch.Generator().manual_seed(0)
    tied = torch.tensor([[1.0, -1.0, 0.0, 1.0], [0.5, 0.5, 0.5, -0.5]])
    return [
        (torch.randn(2, 4, generator=g, dtype=torch.float64), 5, {}),
        (tied, 6, {}),
        (
            torch.randn(2, 5, generator=g, dtype=torch.float64),
            7,
            {"structures": "budget", "budget": 2},
        ),
        (tied, 11, {"structures": "budget", "budget": 2}),
    ]


# -- brute force ----------------------------------------------------------------------------------


def all_bits(d: int, dtype=torch.float64) -> torch.Tensor:
    """Every vector of ``{0, 1}^d``, ``(2^d, d)``; row ``i`` is the binary expansion of ``i``."""
    return ((torch.arange(2**d).unsqueeze(-1) >> torch.arange(d)) & 1).to(dtype)


def code(z: torch.Tensor) -> torch.Tensor:
    """The row index of each 0/1 vector ``z`` in :func:`all_bits`."""
    return (z.long() << torch.arange(z.shape[-1])).sum(-1)


def brute_scores(theta: torch.Tensor, budget: int | None = None) -> torch.Tensor:
    """Scores of all structures ``(N, 2^D)``, ``-inf`` for those over budget."""
    z = all_bits(theta.shape[-1], theta.dtype)
    s = theta @ z.T
    if budget is not None:
        s = s.masked_fill(z.sum(-1) > budget, -torch.inf)
    return s


def check_kbest(theta, z, s, k, budget=None):
    """``z, s`` are valid, distinct, correctly scored, sorted, and have the brute-force scores."""
    n, d = theta.shape
    assert z.shape == (n, k, d) and s.shape == (n, k)
    assert z.dtype == theta.dtype and s.dtype == theta.dtype
    assert ((z == 0) | (z == 1)).all()
    if budget is not None:
        assert (z.sum(-1) <= budget).all()
    for i in range(n):
        assert code(z[i]).unique().numel() == k
    torch.testing.assert_close(s, (z * theta.unsqueeze(-2)).sum(-1))
    assert (s.diff(dim=-1) <= 1e-12).all()
    ref = brute_scores(theta, budget).sort(-1, descending=True).values[:, :k]
    torch.testing.assert_close(s, ref, rtol=0, atol=1e-12)


def random_theta(n, d, seed, integer=False):
    g = torch.Generator().manual_seed(seed)
    if integer:  # many ties, zeros included
        return torch.randint(-2, 3, (n, d), generator=g).double()
    return torch.randn(n, d, generator=g, dtype=torch.float64)


# -- k-best ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("integer", [False, True])
@pytest.mark.parametrize("d", [1, 2, 3, 5, 8])
def test_free_bits_equals_brute_force(d, integer):
    theta = random_theta(6, d, seed=d, integer=integer)
    for k in sorted({min(2**d, j) for j in (1, 2, 3, 7, 20)} | {2**d}):
        z, s = kbest_free_bits(theta, k)
        check_kbest(theta, z, s, k)


@pytest.mark.parametrize("integer", [False, True])
@pytest.mark.parametrize("d", [1, 3, 5, 8])
def test_budget_bits_equals_brute_force(d, integer):
    theta = random_theta(5, d, seed=10 + d, integer=integer)
    for budget in sorted({0, 1, 2, d // 2, d, d + 2}):
        total = sum(math.comb(d, r) for r in range(min(budget, d) + 1))
        for k in sorted({1, min(total, 3), min(total, 12), total}):
            z, s = kbest_budget_bits(theta, k, budget)
            check_kbest(theta, z, s, k, budget)


def test_all_equal_scores():
    theta = torch.zeros(2, 3, dtype=torch.float64)
    z, s = kbest_free_bits(theta, 8)
    check_kbest(theta, z, s, 8)
    z, s = kbest_budget_bits(theta, 7, 2)
    check_kbest(theta, z, s, 7, 2)


def test_best_is_positive_part():
    theta = random_theta(4, 6, seed=3)
    z, s = kbest_free_bits(theta, 1)
    assert torch.equal(z[:, 0], (theta > 0).double())
    torch.testing.assert_close(s[:, 0], theta.clamp_min(0).sum(-1))


def test_budget_at_least_d_equals_free():
    theta = random_theta(3, 12, seed=4)
    zf, sf = kbest_free_bits(theta, 40)
    zb, sb = kbest_budget_bits(theta, 40, 12)
    torch.testing.assert_close(sf, sb)
    assert torch.equal(zf, zb)  # no ties in continuous scores: the same structures


def test_large_d_consistency():
    """Beyond brute force: a long row, checked against the budget algorithm and by structure."""
    theta = random_theta(2, 40, seed=5)
    z, s = kbest_free_bits(theta, 30)
    assert (s.diff(dim=-1) <= 1e-12).all()
    assert all(code(z[i]).unique().numel() == 30 for i in range(2))
    zb, sb = kbest_budget_bits(theta, 30, 40)
    torch.testing.assert_close(s, sb)
    assert torch.equal(z, zb)


def test_leading_batch_shape_and_dtype():
    theta = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(6))
    z, s = kbest_free_bits(theta, 5)
    assert z.shape == (2, 3, 5, 4) and s.shape == (2, 3, 5) and z.dtype == torch.float32
    z2, s2 = kbest_free_bits(theta.reshape(6, 4), 5)
    assert torch.equal(z.reshape(6, 5, 4), z2) and torch.equal(s.reshape(6, 5), s2)
    res = topk_sparsemax(theta, 5, structures="budget", budget=2)
    assert res.structures.shape == (2, 3, 5, 4)
    assert res.weights.shape == (2, 3, 5) and res.exact.shape == (2, 3)


@pytest.mark.parametrize("kwargs", [{}, {"structures": "budget", "budget": 2}])
def test_batch_equals_row_by_row(kwargs):
    theta = torch.cat([random_theta(3, 5, seed=7), random_theta(3, 5, seed=8, integer=True)])
    res = topk_sparsemax(theta, 9, **kwargs)
    for i in range(theta.shape[0]):
        row = topk_sparsemax(theta[i : i + 1], 9, **kwargs)
        assert torch.equal(res.structures[i], row.structures[0])
        assert torch.equal(res.weights[i], row.weights[0])
        assert torch.equal(res.exact[i], row.exact[0])


# -- top-k sparsemax ------------------------------------------------------------------------------


def full_sparsemax_check(theta, res, budget=None):
    """Per row: whether ``res`` equals sparsemax over all structures (to 1e-6)."""
    full = sparsemax(brute_scores(theta, budget), dim=-1)
    scattered = torch.zeros_like(full).scatter_add_(-1, code(res.structures), res.weights)
    return ((scattered - full).abs() <= 1e-6).all(-1)


@pytest.mark.parametrize("budget", [None, 3])
def test_topk_sparsemax_exact_iff_equal_to_full(budget):
    kwargs = {} if budget is None else {"structures": "budget", "budget": budget}
    seen_exact = seen_inexact = 0
    for seed, scale in enumerate([0.05, 0.2, 0.5, 1.0, 3.0]):
        theta = random_theta(20, 6, seed=20 + seed) * scale
        for k in [1, 2, 4, 8, 16]:
            res = topk_sparsemax(theta, k, **kwargs)
            equal = full_sparsemax_check(theta, res, budget)
            assert equal[res.exact].all()  # exact => equal to the full sparsemax
            assert not res.exact[~equal].any()  # not equal => not exact
            assert torch.equal(res.exact, res.weights[:, -1] == 0)
            torch.testing.assert_close(res.weights.sum(-1), torch.ones(20, dtype=torch.float64))
            seen_exact += int(res.exact.sum())
            seen_inexact += int((~equal).sum())
    assert seen_exact > 50 and seen_inexact > 50


def test_topk_sparsemax_all_structures_is_exact():
    theta = random_theta(4, 3, seed=30) * 0.01  # support = all 8 structures
    res = topk_sparsemax(theta, 8)
    assert (res.weights > 0).all() and res.exact.all()
    assert full_sparsemax_check(theta, res).all()
    res = topk_sparsemax(theta, 7, structures="budget", budget=2)
    assert res.exact.all() and full_sparsemax_check(theta, res, 2).all()


def test_zero_weights_are_exactly_zero():
    theta = random_theta(5, 6, seed=31) * 3
    res = topk_sparsemax(theta, 10)
    assert res.exact.all()
    w = res.weights
    assert ((w == 0) | (w > 1e-9)).all() and (w == 0).any()


def test_result_type():
    res = topk_sparsemax(random_theta(2, 3, seed=32), 3)
    assert isinstance(res, TopKResult)
    structures, weights, exact = res
    assert structures.shape == (2, 3, 3) and weights.shape == (2, 3)
    assert exact.dtype == torch.bool and not weights.requires_grad


def draw_away_from_ties(n, d, k, seed, budget=None, margin=1e-3):
    """Scores whose top ``k + 1`` structure scores and sparsemax threshold are well separated."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(200):
        theta = torch.randn(n, d, generator=g, dtype=torch.float64)
        s = brute_scores(theta, budget).sort(-1, descending=True).values[:, : k + 1]
        top = s[:, :k]
        p = sparsemax(top, dim=-1)
        on = p > 0
        tau = ((top * on).sum(-1, keepdim=True) - 1) / on.sum(-1, keepdim=True)
        if s.diff(dim=-1).abs().min() > margin and (top - tau).abs().min() > margin:
            return theta
    raise AssertionError("could not draw scores away from ties")


@pytest.mark.parametrize("kwargs", [{}, {"structures": "budget", "budget": 2}])
def test_gradcheck(kwargs):
    budget = kwargs.get("budget")
    theta = draw_away_from_ties(3, 4, 5, seed=40, budget=budget).requires_grad_()

    def weights(t):
        return topk_sparsemax(t, 5, **kwargs).weights

    assert torch.autograd.gradcheck(weights, (theta,), eps=1e-6, atol=1e-6)
    # The gradient is the sparsemax Jacobian times the structures.
    res = topk_sparsemax(theta, 5, **kwargs)
    g = torch.randn(3, 5, generator=torch.Generator().manual_seed(41), dtype=torch.float64)
    (grad,) = torch.autograd.grad((res.weights * g).sum(), theta)
    on = (res.weights > 0).double()
    vjp = on * (g - (on * g).sum(-1, keepdim=True) / on.sum(-1, keepdim=True))
    torch.testing.assert_close(grad, (vjp.unsqueeze(-1) * res.structures).sum(-2))


def test_kbest_scores_are_differentiable():
    theta = random_theta(2, 4, seed=42).requires_grad_()
    z, s = kbest_budget_bits(theta, 3, 2)
    (grad,) = torch.autograd.grad(s.sum(), theta)
    torch.testing.assert_close(grad, z.sum(-2))


# -- argument checks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda t: kbest_free_bits(t, 0), ValueError, "k must be >= 1"),
        (lambda t: kbest_free_bits(t, 9), ValueError, "k must be at most"),
        (lambda t: kbest_free_bits(t, 2.0), TypeError, "k must be an int"),
        (lambda t: kbest_free_bits(t, True), TypeError, "k must be an int"),
        (lambda t: kbest_budget_bits(t, 1, -1), ValueError, "budget must be >= 0"),
        (lambda t: kbest_budget_bits(t, 1, 1.0), TypeError, "budget must be an int"),
        (lambda t: kbest_budget_bits(t, 5, 1), ValueError, "k must be at most"),
        (lambda t: kbest_budget_bits(t, 2, 0), ValueError, "k must be at most"),
        (lambda t: kbest_budget_bits(t, 0, 1), ValueError, "k must be >= 1"),
        (lambda t: topk_sparsemax(t, 0), ValueError, "k must be >= 1"),
        (lambda t: topk_sparsemax(t, 9), ValueError, "k must be at most"),
        (lambda t: topk_sparsemax(t, 2, structures="budget"), ValueError, "budget is required"),
        (lambda t: topk_sparsemax(t, 2, budget=1), ValueError, "budget is only allowed"),
        (lambda t: topk_sparsemax(t, 2, structures="trees"), ValueError, "structures must be"),
        (
            lambda t: topk_sparsemax(t, 2, structures="budget", budget=-2),
            ValueError,
            "budget must be >= 0",
        ),
        (lambda t: kbest_free_bits(t.long(), 2), TypeError, "theta must have a floating"),
        (lambda t: kbest_free_bits(t.tolist(), 2), TypeError, "theta must be a torch.Tensor"),
        (lambda t: kbest_free_bits(t[0, 0], 1), ValueError, "theta must have at least 1"),
        (lambda t: kbest_free_bits(t[:, :0], 1), ValueError, "theta must have a non-empty"),
    ],
)
def test_invalid_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call(torch.ones(2, 3))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    "fn",
    [
        lambda t: kbest_free_bits(t, 2),
        lambda t: kbest_budget_bits(t, 2, 1),
        lambda t: topk_sparsemax(t, 2),
    ],
)
def test_non_finite_theta(bad, fn):
    theta = torch.zeros(2, 3)
    theta[1, 2] = bad
    match = "theta contains NaN" if math.isnan(bad) else "theta must be finite"
    with pytest.raises(ValueError, match=match):
        fn(theta)


def test_small_instances_run():
    for theta, k, kwargs in small_instances():
        res = topk_sparsemax(theta, k, **kwargs)
        assert res.weights.shape == (2, k)
        budget = kwargs.get("budget")
        check_kbest(
            theta.double(),
            res.structures.double(),
            (res.structures * theta.unsqueeze(-2)).sum(-1).double(),
            k,
            budget,
        )
