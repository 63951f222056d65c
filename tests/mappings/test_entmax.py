"""entmax15, Entmax15 and Entmax15Function."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import latentgrad.mappings._entmax as em
from latentgrad.mappings._entmax import Entmax15, entmax15

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def reference_tau(x: torch.Tensor) -> torch.Tensor:
    """Threshold of 1.5-entmax by bisection in float64, independent of the library.

    ``sum(max(x / 2 - tau, 0)^2)`` decreases in ``tau`` from at least 1 at ``max / 2 - 1`` to 0
    at ``max / 2``.
    """
    y = x.double() / 2
    hi = y.amax(-1, keepdim=True)
    lo = hi - 1
    for _ in range(200):
        mid = (lo + hi) / 2
        above = (y - mid).clamp_min(0).square().sum(-1, keepdim=True) > 1
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return (lo + hi) / 2


def reference_entmax15(x: torch.Tensor) -> torch.Tensor:
    return (x.double() / 2 - reference_tau(x)).clamp_min(0).square()


def random_scores(shape, seed, margin=1e-3):
    """float64 scores with no entry within ``margin`` of the threshold."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(100):
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        if (x / 2 - reference_tau(x)).abs().min() > margin:
            return x
    raise AssertionError("could not draw scores away from the threshold")


#: ``(_PAIRWISE_MAX, _SORT_MAX)`` that send every row through one way of finding the threshold.
PATHS = {"pairwise": (10**9, 10**9), "sort": (0, 10**9), "prune": (0, 0)}


def use_path(monkeypatch, name):
    pairwise_max, sort_max = PATHS[name]
    monkeypatch.setattr(em, "_PAIRWISE_MAX", pairwise_max)
    monkeypatch.setattr(em, "_SORT_MAX", sort_max)


@pytest.fixture(params=list(PATHS))
def path(request, monkeypatch):
    """Run a test through pairwise gaps, the whole-row sort and the pruned-candidate path."""
    use_path(monkeypatch, request.param)
    return request.param


@pytest.mark.parametrize("n", [1, 2, 5, 20, 21, 100, 2000])
@pytest.mark.parametrize("scale", [0.01, 1.0, 30.0])
def test_matches_bisection_reference(n, scale):
    x = torch.randn(5, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64) * scale
    torch.testing.assert_close(entmax15(x), reference_entmax15(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [1, 6, 16, 50])
def test_sort_pairwise_and_pruned_paths_agree(n, monkeypatch):
    x = torch.randn(9, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    use_path(monkeypatch, "sort")
    whole = entmax15(x)
    use_path(monkeypatch, "pairwise")
    torch.testing.assert_close(entmax15(x), whole, rtol=0, atol=1e-13)
    use_path(monkeypatch, "prune")
    for steps in (0, 1, 2, 6):
        monkeypatch.setattr(em, "_PRUNE_STEPS", steps)
        torch.testing.assert_close(entmax15(x), whole, rtol=0, atol=1e-13)


def test_pairwise_thresholds_match_the_sort(monkeypatch):
    """Rows with many ties and all row lengths of the pairwise path, float32 and float64."""
    g = torch.Generator().manual_seed(11)
    for n in range(1, em._PAIRWISE_MAX + 1):
        x = torch.randint(-6, 7, (300, n), generator=g).double() / 2  # ties everywhere
        x = torch.cat([x, torch.randn(300, n, generator=g, dtype=torch.float64) * 3])
        use_path(monkeypatch, "sort")
        expected = entmax15(x)
        use_path(monkeypatch, "pairwise")
        torch.testing.assert_close(entmax15(x), expected, rtol=0, atol=1e-13)
        torch.testing.assert_close(entmax15(x.float()), expected.float(), rtol=0, atol=2e-6)


def test_pairwise_falls_back_and_leaves_the_input_alone(monkeypatch):
    x = torch.randn(30, 6, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    xt = x.t().contiguous().t()  # a view whose transpose is contiguous
    before = xt.clone()
    expected = reference_entmax15(x)
    torch.testing.assert_close(entmax15(xt), expected, rtol=0, atol=1e-12)
    assert torch.equal(xt, before)
    x[4, 1] = -torch.inf
    assert em._pairwise_threshold(x) is None
    torch.testing.assert_close(entmax15(x), reference_entmax15(x), rtol=0, atol=1e-12)
    big = torch.tensor([[3e4, 0.0, 3e4 - 1.0]])  # too large to subtract T unshifted in float32
    assert em._pairwise_threshold(big) is None
    expected = reference_entmax15(big.double()).float()
    torch.testing.assert_close(entmax15(big), expected)


def test_properties(path):
    x = torch.randn(40, 30, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3
    p = entmax15(x)
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(40, dtype=torch.float64))
    # on the support sqrt(p) = x / 2 - tau with one tau per row
    shift = torch.where(p > 0, x / 2 - p.sqrt(), torch.nan)
    spread = shift.nan_to_num(0).amax(-1) - shift.nan_to_num(1e9).amin(-1)
    assert spread.max() < 1e-12
    torch.testing.assert_close(entmax15(x - 4.0), p, rtol=0, atol=1e-12)
    assert (p == 0).any()  # sparse, unlike softmax
    # between softmax and sparsemax: fewer zeros than sparsemax
    from latentgrad.mappings._sparsemax import sparsemax

    assert ((p > 0).sum(-1) >= (sparsemax(x) > 0).sum(-1)).all()


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_dim_and_module(dim):
    x = torch.randn(4, 5, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = reference_entmax15(x.movedim(dim, -1)).movedim(-1, dim)
    torch.testing.assert_close(entmax15(x, dim=dim), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(Entmax15(dim=dim)(x), expected, rtol=0, atol=1e-12)
    assert f"dim={dim}" in repr(Entmax15(dim=dim))
    assert entmax15(torch.zeros(0, 30)).shape == (0, 30)


@pytest.mark.parametrize("shape", [(1,), (4,), (3, 6), (2, 3, 5), (2, 40)])
def test_gradcheck(shape, path):
    for dim in range(len(shape)):
        x = random_scores(shape, seed=dim).requires_grad_(True)
        assert torch.autograd.gradcheck(lambda t, d=dim: entmax15(t, dim=d), (x,))


def test_gradgradcheck(path):
    x = random_scores((3, 7), seed=4).requires_grad_(True)
    assert torch.autograd.gradgradcheck(entmax15, (x,))


def test_jacobian_formula():
    x = random_scores((9,), seed=5)
    g = entmax15(x).sqrt()
    expected = torch.diag(g) - torch.outer(g, g) / g.sum()
    torch.testing.assert_close(torch.autograd.functional.jacobian(entmax15, x), expected)


def _extreme_inputs(n):
    gen = torch.Generator().manual_seed(n)
    big = torch.randn(3, n, generator=gen).sign() * 1e4
    offset = torch.randn(3, n, generator=gen) - 1e4
    one_left = torch.full((3, n), -torch.inf)
    one_left[:, n // 2] = 2.0
    some_inf = torch.randn(3, n, generator=gen)
    some_inf[:, ::2] = -torch.inf
    some_inf[:, -1] = 0.0
    return {"big": big, "offset": offset, "one_left": one_left, "some_inf": some_inf}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 6, 64])
@pytest.mark.parametrize("case", ["big", "offset", "one_left", "some_inf"])
def test_extreme_inputs_stay_finite(dtype, n, case):
    x = _extreme_inputs(n)[case].to(dtype).requires_grad_(True)
    p = entmax15(x)
    assert p.dtype == dtype
    assert torch.isfinite(p).all() and (p >= 0).all()
    tol = {torch.float16: 1e-2, torch.bfloat16: 2e-2}.get(dtype, 1e-4)
    torch.testing.assert_close(p.double(), reference_entmax15(x.detach()), rtol=0, atol=tol)
    (p * torch.randn(p.shape).to(dtype)).sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(-50, 50, allow_nan=False, width=64), min_size=4, max_size=4).map(tuple),
        min_size=1,
        max_size=3,
    )
)
def test_hypothesis_small_inputs(rows):
    x = torch.tensor(rows, dtype=torch.float64)
    p = entmax15(x)
    torch.testing.assert_close(p, reference_entmax15(x), rtol=0, atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 60), st.floats(0.01, 100), st.integers(0, 2**31 - 1))
def test_hypothesis_row_lengths(n, scale, seed):
    x = torch.randn(3, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x * scale
    torch.testing.assert_close(entmax15(x), reference_entmax15(x), rtol=0, atol=1e-10)


def test_matches_entmax_package():
    entmax = pytest.importorskip("entmax")
    x = torch.randn(20, 33, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    x.requires_grad_(True)
    w = torch.randn(20, 33, dtype=torch.float64)
    ours, theirs = entmax15(x), entmax.entmax15(x)
    torch.testing.assert_close(ours, theirs)
    g1, g2 = (torch.autograd.grad((y * w).sum(), x)[0] for y in (ours, theirs))
    torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize("n", [4, 40])
@pytest.mark.parametrize(
    ("value", "message"), [(math.nan, "NaN"), (math.inf, r"\+inf"), (-math.inf, "-inf everywhere")]
)
def test_bad_values_raise(n, value, message):
    x = torch.randn(3, n)
    if value == -math.inf:
        x[1] = value
    else:
        x[1, 2] = value
    with pytest.raises(ValueError, match=message):
        entmax15(x)


def test_bad_arguments_raise():
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        entmax15([1.0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="floating-point"):
        entmax15(torch.ones(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="at least one dimension"):
        entmax15(torch.tensor(0.5))
    with pytest.raises(ValueError, match="dim=-3"):
        entmax15(torch.ones(2, 3), dim=-3)
    with pytest.raises(TypeError, match="dim must be an int"):
        Entmax15(dim=None)  # type: ignore[arg-type]
