"""The compiled kernels of :mod:`latentgrad._native` against the PyTorch implementations.

They must be interchangeable: the same oracle outputs bit for bit (ties included), and the same
SparseMAP solutions (support, weights, ``mu`` and gradients) whichever runs. Skipped where numba
is not installed (the core environment), where only the PyTorch paths exist.
"""

import pytest
import torch

from latentgrad import _native
from latentgrad.mappings import sparsemap
from latentgrad.mappings.oracles import ArborescenceOracle, BudgetBits, FreeBits, SequenceOracle
from latentgrad.structured.chu_liu_edmonds import min_cost_arborescence
from latentgrad.structured.viterbi import viterbi

pytest.importorskip("numba")


def _torch_and_native(fn):  # type: ignore[no-untyped-def]
    with _native.disabled():
        assert not _native.available()
        reference = fn()
    assert _native.available()
    return reference, fn()


@pytest.mark.parametrize("n", [2, 3, 5, 10, 30])
@pytest.mark.parametrize("tied", [False, True], ids=["continuous", "tied"])
def test_arborescence_kernel_matches_torch_bit_for_bit(n: int, tied: bool) -> None:
    gen = torch.Generator().manual_seed(n)
    if tied:  # integer costs in {0, 1, 2}: many ties, broken by the lowest edge number
        costs = torch.randint(0, 3, (300, n * n), generator=gen).double()
    else:
        costs = torch.randn(300, n * n, generator=gen, dtype=torch.float64)
    for root in {0, n - 1}:
        ref, out = _torch_and_native(lambda r=root: min_cost_arborescence(costs, r))
        assert out.dtype == ref.dtype == torch.long
        assert torch.equal(out, ref)


@pytest.mark.parametrize(("length", "tags"), [(1, 3), (2, 2), (5, 1), (20, 5)])
@pytest.mark.parametrize("tied", [False, True], ids=["continuous", "tied"])
def test_viterbi_kernel_matches_torch_bit_for_bit(length: int, tags: int, tied: bool) -> None:
    gen = torch.Generator().manual_seed(length * 10 + tags)
    shape_u, shape_t = (200, length, tags), (200, length - 1, tags, tags)
    if tied:
        unary = torch.randint(0, 2, shape_u, generator=gen).double()
        transition = torch.randint(0, 2, shape_t, generator=gen).double()
    else:
        unary = torch.randn(shape_u, generator=gen, dtype=torch.float64)
        transition = torch.randn(shape_t, generator=gen, dtype=torch.float64)
    ref, out = _torch_and_native(lambda: viterbi(unary, transition))
    assert torch.equal(out, ref)


def test_float32_costs_keep_the_torch_path() -> None:
    # float32 costs are reduced in float32 by the PyTorch rounds; the kernel works in float64
    costs = torch.randn(50, 36, generator=torch.Generator().manual_seed(0))
    with _native.disabled():
        ref = min_cost_arborescence(costs, 0)
    assert torch.equal(min_cost_arborescence(costs, 0), ref)


def test_environment_variable_switches_the_kernels_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATENTGRAD_NATIVE", "0")
    assert not _native.available()
    monkeypatch.setenv("LATENTGRAD_NATIVE", "1")
    assert _native.available()


def _solve(theta: torch.Tensor, oracle, **kwargs):  # type: ignore[no-untyped-def]
    x = theta.clone().requires_grad_()
    out = sparsemap(x, oracle, **kwargs)
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(5), dtype=theta.dtype)
    (grad,) = torch.autograd.grad((out.mu * v).sum(), x)
    return out, grad


def _support_sets(out) -> list[set[bytes]]:  # type: ignore[no-untyped-def]
    sets = []
    for z, w in zip(out.structures, out.weights, strict=True):
        sets.append({bytes(s.bool().tolist()) for s, p in zip(z, w, strict=True) if p > 0})
    return sets


@pytest.mark.parametrize(
    "oracle",
    [
        ArborescenceOracle(4),
        ArborescenceOracle(10, root=3),
        SequenceOracle(6, 3),
        SequenceOracle(20, 5),
        FreeBits(12),
        BudgetBits(20, 5),
        BudgetBits(128, 64),
    ],
    ids=repr,
)
@pytest.mark.parametrize("identify_face", [True, False])
def test_compiled_active_set_gives_the_torch_solution(
    oracle: ArborescenceOracle | SequenceOracle | FreeBits | BudgetBits, identify_face: bool
) -> None:
    gen = torch.Generator().manual_seed(oracle.dim)
    theta = torch.randn(40, oracle.dim, generator=gen, dtype=torch.float64)
    (ref, ref_grad), (out, grad) = _torch_and_native(
        lambda: _solve(theta, oracle, identify_face=identify_face, method="active_set")
    )
    # A face can be spanned by several affinely independent sets of its structures, and
    # rounding may steer the two paths to different ones; mu and the Jacobian (the projection
    # onto the face's directions) are the same. Bit-vector faces have very many such sets
    # (at D = 128 the paths part on about one row in seven); the others follow the same path.
    if not isinstance(oracle, FreeBits | BudgetBits):
        assert _support_sets(out) == _support_sets(ref)
        # the iteration counts agree up to a rounding-level tie at the end of a row
        assert int((out.iterations - ref.iterations).abs().max()) <= 1
    assert torch.allclose(out.mu, ref.mu, atol=1e-10, rtol=0)
    if oracle.dim < 128:
        # (at D = 128 the optimal faces of the bits have ~40 dimensions, more than the active
        # set identifies from the oracle's vertices at the optimum, where every vertex of the
        # face ties; such rows need the closed form, the default, for their Jacobian)
        assert torch.allclose(grad, ref_grad, atol=1e-9, rtol=0)
    assert torch.equal(out.converged, ref.converged) and bool(out.converged.all())


@pytest.mark.parametrize(
    "oracle", [ArborescenceOracle(5), SequenceOracle(4, 3), BudgetBits(10, 3)], ids=repr
)
def test_compiled_active_set_on_tied_integer_scores(
    oracle: ArborescenceOracle | SequenceOracle | BudgetBits,
) -> None:
    theta = torch.randint(-2, 3, (60, oracle.dim), generator=torch.Generator().manual_seed(1))
    theta = theta.double()
    (ref, ref_grad), (out, grad) = _torch_and_native(
        lambda: _solve(theta, oracle, method="active_set")
    )
    assert torch.allclose(out.mu, ref.mu, atol=1e-10, rtol=0)
    # Integer scores put many rows on a kink of mu (several faces meet), where the gradient
    # is one of several valid ones and the last bit of a probe decides which: the paths agree
    # on the support, and then on the gradient, on most rows.
    same = torch.tensor(
        [a == b for a, b in zip(_support_sets(out), _support_sets(ref), strict=True)]
    )
    assert int(same.sum()) >= 0.9 * len(same)
    assert torch.allclose(grad[same], ref_grad[same], atol=1e-9, rtol=0)


@pytest.mark.parametrize("oracle", [ArborescenceOracle(4, root=2), SequenceOracle(3, 3)], ids=repr)
def test_compiled_active_set_matches_enumeration_and_gradcheck(
    oracle: ArborescenceOracle | SequenceOracle,
) -> None:
    theta = torch.randn(8, oracle.dim, generator=torch.Generator().manual_seed(2)).double()
    out = sparsemap(theta, oracle)
    # optimal: a convex combination of structures with the gap over every structure at rounding
    assert torch.allclose(torch.einsum("na,nad->nd", out.weights, out.structures), out.mu)
    every = oracle.enumerate().double()
    gap = ((theta - out.mu) @ every.T).amax(1) - ((theta - out.mu) * out.mu).sum(1)
    assert float(gap.max()) <= 1e-10
    x = theta[:3].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: sparsemap(t, oracle).mu, (x,), eps=1e-6, atol=1e-6)


def test_compiled_active_set_warm_start_and_capacity() -> None:
    oracle = ArborescenceOracle(6)
    gen = torch.Generator().manual_seed(3)
    theta = torch.randn(20, oracle.dim, generator=gen, dtype=torch.float64)
    first = sparsemap(theta, oracle)
    nudged = theta + 1e-3 * torch.randn(theta.shape, generator=gen, dtype=theta.dtype)
    (ref, _), (out, _) = _torch_and_native(lambda: _solve(nudged, oracle, warm_start=first))
    assert torch.allclose(out.mu, ref.mu, atol=1e-10, rtol=0)
    assert int(out.iterations.sum()) < int(sparsemap(nudged, oracle).iterations.sum())
    # a cap on the active set that some rows need more than: reported, never hidden
    (ref, _), (out, _) = _torch_and_native(lambda: _solve(theta, oracle, max_active=2))
    assert torch.equal(out.converged, ref.converged) and not bool(out.converged.all())
    assert torch.allclose(out.gap, ref.gap, atol=1e-10, rtol=0)


def test_extreme_scores_stay_finite() -> None:
    oracle = SequenceOracle(4, 3)
    theta = torch.randn(10, oracle.dim, generator=torch.Generator().manual_seed(4)).double()
    theta = theta * 1e4
    x = theta.clone().requires_grad_()
    out = sparsemap(x, oracle)
    out.mu.sum().backward()
    assert bool(torch.isfinite(out.mu).all()) and bool(torch.isfinite(x.grad).all())
    assert bool(out.converged.all())


@pytest.mark.parametrize("oracle", [SequenceOracle(4, 3), SequenceOracle(20, 5)], ids=repr)
def test_compiled_active_set_with_a_unary_penalty(oracle: SequenceOracle) -> None:
    # the transitions enter linearly: the swaps of a structure dependent on the active set in
    # the penalized parts, in both solvers
    theta = torch.randn(40, oracle.dim, generator=torch.Generator().manual_seed(6)).double()
    pen = oracle.unary_parts
    (ref, ref_grad), (out, grad) = _torch_and_native(lambda: _solve(theta, oracle, penalized=pen))
    assert torch.allclose(out.mu, ref.mu, atol=1e-10, rtol=0)
    assert torch.allclose(grad, ref_grad, atol=1e-9, rtol=0)
    assert bool(out.converged.all()) and bool(ref.converged.all())
