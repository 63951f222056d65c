"""entmax15, Entmax15 and Entmax15Function."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import latentgrad.mappings._entmax as em
from latentgrad.mappings import Entmax15, entmax15
from latentgrad.testing import reference_entmax, reference_entmax_threshold


def reference_tau(x: torch.Tensor) -> torch.Tensor:
    return reference_entmax_threshold(x, 1.5)


def reference_entmax15(x: torch.Tensor) -> torch.Tensor:
    return reference_entmax(x, 1.5)


def random_scores(shape, seed, margin=1e-3):
    """float64 scores with no entry within ``margin`` of the threshold."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(100):
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        if (x / 2 - reference_tau(x)).abs().min() > margin:
            return x
    raise AssertionError("could not draw scores away from the threshold")


def test_pairwise_falls_back_and_leaves_the_input_alone():
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
