"""sparsemax, Sparsemax, SparsemaxFunction, sparsemax_threshold and the sparsemax loss."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import latentgrad.mappings._shared as shared
import latentgrad.mappings._sparsemax as sm
from latentgrad.mappings import (
    Sparsemax,
    SparsemaxLoss,
    sparsemax,
    sparsemax_loss,
    sparsemax_threshold,
)
from latentgrad.testing import reference_entmax, reference_entmax_threshold


def reference_tau(x: torch.Tensor) -> torch.Tensor:
    return reference_entmax_threshold(x, 2.0)


def reference_sparsemax(x: torch.Tensor) -> torch.Tensor:
    return reference_entmax(x, 2.0)


def random_scores(shape, seed, scale=1.0, margin=1e-4):
    """float64 scores with no entry within ``margin`` of the threshold or of another entry."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(100):
        x = torch.randn(shape, generator=g, dtype=torch.float64) * scale
        gap = (x - reference_tau(x)).abs().min()
        srt = x.sort(-1).values
        if gap > margin and (srt.diff(dim=-1).min() > margin if x.shape[-1] > 1 else True):
            return x
    raise AssertionError("could not draw scores away from ties")


# -- values ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_support_through_ties(dtype, path):
    """Ties at the edge of the support, inside it and outside it; exact values."""
    x = torch.tensor(
        [
            [1.0, 1.0, 0.0, -2.0],  # the support ends with a tie: tau = 0.5
            [0.5, 0.5, 0.5, 0.5],  # all tied
            [2.0, 0.0, 0.0, 0.0],  # a tie outside the support, at the threshold
            [0.5, 0.25, 0.25, -1.0],  # a tie inside the support: tau = 0
            [0.75, 0.25, 0.0, 0.0],  # an entry exactly at the threshold (0.25 = tau)
        ],
        dtype=dtype,
    )
    expected = torch.tensor(
        [
            [0.5, 0.5, 0.0, 0.0],
            [0.25, 0.25, 0.25, 0.25],
            [1.0, 0.0, 0.0, 0.0],
            [0.5, 0.25, 0.25, 0.0],
            [0.75, 0.25, 0.0, 0.0],
        ],
        dtype=dtype,
    )
    x = x[:, [2, 0, 3, 1]]  # the order of the entries must not matter
    torch.testing.assert_close(sparsemax(x), expected[:, [2, 0, 3, 1]], rtol=0, atol=1e-7)


@pytest.mark.parametrize("precision", ["high", "medium"])
def test_reduced_precision_products_are_not_used(precision, monkeypatch):
    """With TF32/bfloat16 float32 products allowed, transposes and row sums avoid products."""
    x = torch.randn(40, 9, generator=torch.Generator().manual_seed(13)) * 3
    x[3, 4] = -torch.inf
    w = torch.randn(40, 9)
    expected = reference_sparsemax(x)
    before = torch.get_float32_matmul_precision()
    products = []  # the identity and the ones column are only built for products
    monkeypatch.setattr(shared, "eye", lambda *a: products.append(a))
    monkeypatch.setattr(shared, "ones_column", lambda *a: products.append(a))
    try:
        torch.set_float32_matmul_precision(precision)
        xg = x.clone().requires_grad_(True)
        p = sparsemax(xg)
        (grad,) = torch.autograd.grad((p * w).sum(), xg)
    finally:
        torch.set_float32_matmul_precision(before)
    assert not products
    torch.testing.assert_close(p.double(), expected, rtol=0, atol=1e-6)
    on = (expected > 0).double()
    exact = on * (w - (on * w).sum(-1, keepdim=True) / on.sum(-1, keepdim=True))
    torch.testing.assert_close(grad.double(), exact, rtol=0, atol=1e-6)


def test_pairwise_chunks_and_falls_back(monkeypatch):
    """Rows are taken in chunks within the budget; a row the gaps cannot handle sends all back."""
    x = torch.randn(50, 7, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    expected = reference_sparsemax(x)
    calls = []
    rows_tau = sm._pairwise_tau_rows
    monkeypatch.setattr(sm, "_pairwise_tau_rows", lambda t: calls.append(t.shape) or rows_tau(t))
    monkeypatch.setattr(shared, "PAIRWISE_BUDGET", 7 * 7 * 8)  # 8 rows at a time
    torch.testing.assert_close(sparsemax(x), expected, rtol=0, atol=1e-12)
    assert calls == [(8, 7)] * 6 + [(2, 7)]
    pairwise_tau = sm._pairwise_tau
    x[33, 2] = -torch.inf  # one chunk fails, so all rows go the exact way
    assert pairwise_tau(x) is None
    expected = reference_sparsemax(x.nan_to_num(neginf=-1e300))
    torch.testing.assert_close(sparsemax(x), expected, rtol=0, atol=1e-12)
    big = torch.tensor([[3e4, 0.0, 3e4 - 0.5]])  # too large to sum unshifted in float32
    assert pairwise_tau(big) is None
    torch.testing.assert_close(sparsemax(big), torch.tensor([[0.75, 0.0, 0.25]]))


@pytest.mark.parametrize("k", [1, 2, 3, 10, 39, 40, 100])
def test_topk_path_agrees_with_default(k):
    x = torch.randn(17, 40, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
    x[0] *= 0.01  # a row whose support is most of the row: the top-k path must fall back
    torch.testing.assert_close(sparsemax(x, k=k), sparsemax(x), rtol=0, atol=1e-13)
    assert torch.equal(Sparsemax(k=k)(x), sparsemax(x, k=k))


def test_threshold_reproduces_the_mapping(path):
    x = torch.randn(5, 30, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    z, tau = sparsemax_threshold(x)
    assert tau.shape == (5, 1)
    torch.testing.assert_close((z - tau).clamp_min(0), sparsemax(x))
    torch.testing.assert_close(tau - (z - x).mean(-1, keepdim=True), reference_tau(x))


@pytest.mark.parametrize("dim", [0, 1, 2, -1, -2])
def test_dim_and_module(dim):
    x = torch.randn(4, 5, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = reference_sparsemax(x.movedim(dim, -1)).movedim(-1, dim)
    torch.testing.assert_close(sparsemax(x, dim=dim), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(Sparsemax(dim=dim)(x), expected, rtol=0, atol=1e-12)
    assert "dim=" in repr(Sparsemax(dim=dim))


def test_non_contiguous_and_empty_batch():
    x = torch.randn(7, 4, dtype=torch.float64).t()
    torch.testing.assert_close(sparsemax(x), reference_sparsemax(x))
    assert sparsemax(torch.zeros(0, 5)).shape == (0, 5)
    assert sparsemax(torch.zeros(0, 50)).shape == (0, 50)


def test_properties(path):
    x = torch.randn(50, 30, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 2
    p = sparsemax(x)
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(50, dtype=torch.float64))
    # on the support p = x - tau, with the same tau for every entry
    shift = torch.where(p > 0, x - p, torch.nan)
    spread = shift.nan_to_num(0).amax(-1) - shift.nan_to_num(1e9).amin(-1)
    assert spread.max() < 1e-12
    # projecting a point of the simplex does nothing; adding a constant to a row changes nothing
    torch.testing.assert_close(sparsemax(p), p, rtol=0, atol=1e-14)
    torch.testing.assert_close(sparsemax(x + 7.5), p, rtol=0, atol=1e-12)
    assert (p > 0).sum(-1).max() < 30  # sparse


# -- gradients ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1,), (5,), (3, 7), (2, 3, 9), (3, 45)])
@pytest.mark.parametrize("k", [None, 1, 4])
def test_gradcheck(shape, k, path):
    for dim in range(len(shape)):
        x = random_scores(shape, seed=dim).requires_grad_(True)
        assert torch.autograd.gradcheck(lambda t, d=dim: sparsemax(t, dim=d, k=k), (x,))


def test_gradgradcheck():
    x = random_scores((3, 6), seed=5).requires_grad_(True)
    assert torch.autograd.gradgradcheck(sparsemax, (x,))


def test_jacobian_is_the_support_projection():
    x = random_scores((8,), seed=6)
    p = sparsemax(x)
    s = (p > 0).double()
    expected = torch.diag(s) - torch.outer(s, s) / s.sum()
    torch.testing.assert_close(torch.autograd.functional.jacobian(sparsemax, x), expected)


def test_functorch_grad_matches_autograd():
    x = random_scores((6,), seed=7)
    w = torch.randn(6, dtype=torch.float64)
    g = torch.func.grad(lambda t: (sparsemax(t) * w).sum())(x)
    xr = x.clone().requires_grad_(True)
    (sparsemax(xr) * w).sum().backward()
    torch.testing.assert_close(g, xr.grad)


def test_no_grad_and_frozen_input():
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert not sparsemax(x.requires_grad_(True)).requires_grad
    assert not sparsemax(x.detach()).requires_grad


# -- numerics -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_huge_scores_are_shifted_before_summing(dtype):
    big = torch.finfo(dtype).max / 2
    x = torch.tensor([[big, big, 0.0], [big, big - big / 4, -big]], dtype=dtype)
    expected = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]], dtype=dtype)
    torch.testing.assert_close(sparsemax(x), expected)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(-50, 50, allow_nan=False, width=64), min_size=3, max_size=3).map(tuple),
        min_size=1,
        max_size=4,
    ),
    st.sampled_from([None, 1, 2]),
)
def test_hypothesis_small_inputs(rows, k):
    x = torch.tensor(rows, dtype=torch.float64)
    p = sparsemax(x, k=k)
    torch.testing.assert_close(p, reference_sparsemax(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(p.sum(-1), torch.ones(len(rows), dtype=torch.float64))


# -- argument checks ------------------------------------------------------------------------------


def test_bad_arguments_raise():
    x = torch.randn(2, 3)
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        sparsemax([1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="floating-point"):
        sparsemax(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one dimension"):
        sparsemax(torch.tensor(1.0))
    with pytest.raises(ValueError, match="empty"):
        sparsemax(torch.zeros(2, 0))
    with pytest.raises(ValueError, match="dim=2"):
        sparsemax(x, dim=2)
    with pytest.raises(TypeError, match="dim must be an int"):
        sparsemax(x, dim=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k must be >= 1"):
        sparsemax(x, k=0)
    with pytest.raises(TypeError, match="k must be an int"):
        sparsemax(x, k=2.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="k must be an int"):
        Sparsemax(k=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dim must be an int"):
        Sparsemax(dim="0")  # type: ignore[arg-type]


# -- sparsemax loss -------------------------------------------------------------------------------


def reference_loss(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Martins & Astudillo's definition, summing over the support."""
    tau = reference_tau(s)
    on = s > tau
    sq = torch.where(on, s.square() - tau.square(), torch.zeros_like(s)).sum(-1)
    return -s.gather(-1, y.unsqueeze(-1)).squeeze(-1) + sq / 2 + 0.5


@pytest.mark.parametrize("n", [1, 4, 30])
def test_loss_value_and_gradient(n):
    g = torch.Generator().manual_seed(n)
    s = torch.randn(3, 5, n, generator=g, dtype=torch.float64).requires_grad_(True)
    y = torch.randint(n, (3, 5), generator=g)
    loss = sparsemax_loss(s, y)
    torch.testing.assert_close(loss, reference_loss(s.detach(), y))
    assert (loss >= -1e-12).all()
    (grad,) = torch.autograd.grad(loss.sum(), s)
    expected = sparsemax(s.detach()) - torch.nn.functional.one_hot(y, n).double()
    torch.testing.assert_close(grad, expected)


def test_loss_gradcheck_and_zero_at_margin():
    s = random_scores((4, 6), seed=9).requires_grad_(True)
    y = torch.tensor([0, 5, 2, 2])
    assert torch.autograd.gradcheck(lambda t: sparsemax_loss(t, y), (s,))
    confident = torch.tensor([[3.0, 1.5, 2.0]])
    assert sparsemax_loss(confident, torch.tensor([0])).item() == 0.0
    assert sparsemax_loss(confident, torch.tensor([1])).item() > 0.0


def test_loss_module_reductions_and_extremes():
    s = torch.tensor([[0.0, 0.0, -torch.inf], [3.0, 0.0, 1.0]], requires_grad=True)
    y = torch.tensor([1, 0])
    none = SparsemaxLoss(reduction="none")(s, y)
    torch.testing.assert_close(none, torch.tensor([0.25, 0.0]))
    torch.testing.assert_close(SparsemaxLoss()(s, y), none.mean())
    torch.testing.assert_close(SparsemaxLoss(reduction="sum")(s, y), none.sum())
    assert "mean" in repr(SparsemaxLoss())
    # a target of score -inf: infinite loss, finite gradient
    loss = sparsemax_loss(s, torch.tensor([2, 0]))
    assert math.isinf(loss[0].item()) and math.isfinite(loss[1].item())
    (grad,) = torch.autograd.grad(loss[1] + loss[0] * 0, s)
    assert torch.isfinite(grad).all()
    for dtype in (torch.float16, torch.bfloat16):
        half = sparsemax_loss(torch.tensor([[1e4, -1e4, 0.0]], dtype=dtype), torch.tensor([1]))
        assert half.dtype == dtype and torch.isfinite(half).all()


def test_loss_bad_arguments_raise():
    s = torch.randn(2, 3)
    with pytest.raises(TypeError, match=r"target must be a torch\.Tensor"):
        sparsemax_loss(s, [0, 1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"torch\.long"):
        sparsemax_loss(s, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="target must have shape"):
        sparsemax_loss(s, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        sparsemax_loss(s, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="NaN"):
        sparsemax_loss(torch.tensor([[0.0, math.nan]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="reduction"):
        SparsemaxLoss(reduction="avg")  # type: ignore[arg-type]
