"""Checks shared by sparsemax and 1.5-entmax: every way of finding the threshold against a
bisection reference, extreme and invalid scores, and the entmax package."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import latentgrad.mappings._entmax as em
import latentgrad.mappings._sparsemax as sm
from latentgrad.mappings import entmax15, sparsemax
from latentgrad.testing import reference_entmax

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]

#: name -> (mapping, its alpha, its module, the keyword arguments to try it with)
MAPPINGS = {
    "sparsemax": (sparsemax, 2.0, sm, [{}, {"k": 2}]),
    "entmax15": (entmax15, 1.5, em, [{}]),
}


@pytest.fixture(params=list(MAPPINGS))
def mapping(request):
    return MAPPINGS[request.param]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 20, 21, 33, 49, 100, 2000])
@pytest.mark.parametrize("scale", [0.01, 1.0, 30.0])
def test_matches_bisection_reference(mapping, n, scale):
    fn, alpha, _, _ = mapping
    x = torch.randn(6, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64) * scale
    torch.testing.assert_close(fn(x), reference_entmax(x, alpha), rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [1, 5, 16, 40])
def test_sort_pairwise_and_pruned_paths_agree(mapping, n, use_path, monkeypatch):
    fn, _, module, _ = mapping
    x = torch.randn(9, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    use_path("sort")
    whole = fn(x)
    use_path("pairwise")
    torch.testing.assert_close(fn(x), whole, rtol=0, atol=1e-13)
    use_path("prune")
    for steps in (0, 1, 2, 6):
        monkeypatch.setattr(module, "_PRUNE_STEPS", steps)
        torch.testing.assert_close(fn(x), whole, rtol=0, atol=1e-13)


def test_pairwise_thresholds_match_the_sort(mapping, use_path):
    """Rows with many ties and all row lengths of the pairwise path, float32 and float64."""
    fn, _, module, _ = mapping
    g = torch.Generator().manual_seed(11)
    for n in range(1, module._PAIRWISE_MAX + 1):
        x = torch.randint(-6, 7, (300, n), generator=g).double() / 4  # ties everywhere
        x = torch.cat([x, torch.randn(300, n, generator=g, dtype=torch.float64) * 3])
        use_path("sort")
        expected = fn(x)
        use_path("pairwise")
        torch.testing.assert_close(fn(x), expected, rtol=0, atol=1e-13)
        torch.testing.assert_close(fn(x.float()), expected.float(), rtol=0, atol=2e-6)


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
@pytest.mark.parametrize("n", [1, 6, 40, 64])
@pytest.mark.parametrize("case", ["big", "offset", "one_left", "some_inf"])
def test_extreme_inputs_stay_finite(mapping, dtype, n, case):
    fn, alpha, _, _ = mapping
    x = _extreme_inputs(n)[case].to(dtype).requires_grad_(True)
    p = fn(x)
    assert p.dtype == dtype
    assert torch.isfinite(p).all() and (p >= 0).all()
    tol = {torch.float16: 1e-2, torch.bfloat16: 2e-2}.get(dtype, 1e-4)
    torch.testing.assert_close(p.float().sum(-1), torch.ones(3), rtol=0, atol=tol)
    torch.testing.assert_close(p.double(), reference_entmax(x.detach(), alpha), rtol=0, atol=tol)
    (p * torch.randn(p.shape).to(dtype)).sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    assert (x.grad[torch.isneginf(x.detach())] == 0).all()


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(list(MAPPINGS)),
    st.integers(1, 60),
    st.floats(0.01, 100),
    st.integers(0, 2**31 - 1),
)
def test_hypothesis_row_lengths(name, n, scale, seed):
    fn, alpha, _, _ = MAPPINGS[name]
    x = torch.randn(3, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x * scale
    torch.testing.assert_close(fn(x), reference_entmax(x, alpha), rtol=0, atol=1e-10)


def test_matches_entmax_package(mapping):
    entmax = pytest.importorskip("entmax")
    fn, _, _, _ = mapping
    theirs_fn = {sparsemax: entmax.sparsemax, entmax15: entmax.entmax15}[fn]
    x = torch.randn(20, 33, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    x.requires_grad_(True)
    w = torch.randn(20, 33, dtype=torch.float64)
    ours, theirs = fn(x), theirs_fn(x)
    torch.testing.assert_close(ours, theirs)
    g1, g2 = (torch.autograd.grad((y * w).sum(), x)[0] for y in (ours, theirs))
    torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize("n", [4, 40])
@pytest.mark.parametrize(
    ("value", "message"), [(math.nan, "NaN"), (math.inf, r"\+inf"), (-math.inf, "-inf everywhere")]
)
def test_bad_values_raise(mapping, n, value, message):
    fn, _, _, variants = mapping
    x = torch.randn(3, n)
    if value == -math.inf:
        x[1] = value
    else:
        x[1, 2] = value
    for kwargs in variants:
        with pytest.raises(ValueError, match=message):
            fn(x, **kwargs)


def test_reference_rejects_bad_alpha():
    with pytest.raises(ValueError, match="alpha must be a finite number > 1"):
        reference_entmax(torch.zeros(3), 1.0)
    with pytest.raises(TypeError, match="alpha must be a float"):
        reference_entmax(torch.zeros(3), "2")  # type: ignore[arg-type]
