"""The capped-simplex projection (sort and threshold) and its systematic-sampling decomposition."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from latentgrad.mappings._capped_simplex import (
    capped_simplex_decomposition,
    capped_simplex_projection,
)

DT = torch.float64


def bisection(theta: Tensor, budget: int, equality: bool) -> Tensor:
    """The projection by bisection on ``tau``: an independent reference."""
    lo = theta.amin(1, keepdim=True) - 2
    hi = theta.amax(1, keepdim=True) + 1
    if not equality:
        lo = lo.clamp_min(0)
    for _ in range(200):
        mid = (lo + hi) / 2
        over = (theta - mid).clamp(0, 1).sum(1, keepdim=True) > budget
        lo, hi = torch.where(over, mid, lo), torch.where(over, hi, mid)
    mu = (theta - hi).clamp(0, 1)
    if equality:
        return mu
    loose = theta.clamp(0, 1)
    return torch.where(loose.sum(1, keepdim=True) > budget, mu, loose)


def exact_jacobian(mu: Tensor, binding: Tensor) -> Tensor:
    """``I_F - 1_F 1_F^T / |F|`` where the budget binds, ``I_F`` where not; ``(N, D, D)``."""
    free = ((mu > 1e-12) & (mu < 1 - 1e-12)).to(DT)
    eye = torch.diag_embed(free)
    mean = free.unsqueeze(2) * free.unsqueeze(1) / free.sum(1).clamp_min(1)[:, None, None]
    return torch.where(binding[:, None, None], eye - mean, eye)


def draw(n: int, d: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(n, d, generator=gen, dtype=DT) * 0.8 + 0.3
    theta[: n // 4] = (theta[: n // 4] * 2).round() / 2  # ties, values at the breakpoints
    return theta


SIZES = [(1, 1), (3, 1), (5, 2), (8, 3), (32, 8), (128, 32), (6, 6)]


@pytest.mark.parametrize("equality", [False, True])
@pytest.mark.parametrize(("d", "budget"), SIZES)
def test_projection_matches_bisection(d: int, budget: int, equality: bool) -> None:
    theta = draw(200, d, d + budget)
    out = capped_simplex_projection(theta, budget, equality=equality)
    torch.testing.assert_close(out.mu, bisection(theta, budget, equality), atol=1e-12, rtol=0)
    total = out.mu.sum(1)
    assert bool((total <= budget + 1e-12).all())
    if equality:
        torch.testing.assert_close(total, torch.full_like(total, budget))


@pytest.mark.parametrize("equality", [False, True])
@pytest.mark.parametrize(("d", "budget"), SIZES)
def test_decomposition_is_a_minimal_mixture_of_structures(
    d: int, budget: int, equality: bool
) -> None:
    theta = draw(200, d, 7 * d + budget)
    z, w, mu = capped_simplex_decomposition(theta, budget, equality=equality)
    assert z.dtype == torch.bool and w.dtype == DT
    count = z.sum(-1)
    assert bool((count == budget).all() if equality else (count <= budget).all())
    assert bool((w >= 0).all())
    torch.testing.assert_close(w.sum(1), torch.ones(200, dtype=DT), atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.einsum("na,nad->nd", w, z.to(DT)), mu, atol=1e-10, rtol=0)
    # As few structures as the face allows (|F| where the budget binds, |F| + 1 where not),
    # never more, affinely independent, and no structure at weight 0 inside the support.
    proj = capped_simplex_projection(theta, budget, equality=equality)
    bound = proj.free.sum(1) + (~proj.binding).long()
    positive = w > 0
    assert bool((positive.sum(1) <= bound.clamp_min(1)).all())
    for row in range(0, 200, 13):
        zz = z[row][positive[row]].to(DT)
        if zz.shape[0] > 1:
            assert int(torch.linalg.matrix_rank(zz[1:] - zz[:1])) == zz.shape[0] - 1
    # Padding repeats the first structure.
    first = z[:, :1].expand_as(z)
    assert torch.equal(z[~positive], first[~positive])


@pytest.mark.parametrize("equality", [False, True])
def test_jacobian_is_the_exact_projection_jacobian(equality: bool) -> None:
    theta = draw(300, 128, 3)[75:].requires_grad_()  # no ties: differentiable points
    out = capped_simplex_projection(theta, 32, equality=equality)
    c = torch.randn(theta.shape, generator=torch.Generator().manual_seed(4), dtype=DT)
    (grad,) = torch.autograd.grad((out.mu * c).sum(), theta)
    expected = (exact_jacobian(out.mu.detach(), out.binding) @ c.unsqueeze(2)).squeeze(2)
    off = (grad - expected).abs().amax(1) > 1e-10
    assert int(off.sum()) == 0


@pytest.mark.parametrize("equality", [False, True])
def test_gradcheck(equality: bool) -> None:
    gen = torch.Generator().manual_seed(5)
    theta = (torch.randn(12, 9, generator=gen, dtype=DT) * 0.6 + 0.4).requires_grad_()

    def fn(t: Tensor) -> tuple[Tensor, Tensor]:
        _, w, mu = capped_simplex_decomposition(t, 3, equality=equality)
        return w, mu

    assert torch.autograd.gradcheck(fn, (theta,))


def test_float32_weights_are_clean() -> None:
    theta = torch.tensor([[0.9, 0.8, 1.5, -0.2], [0.3, 0.3, 0.3, 0.3]])
    z, w, mu = capped_simplex_decomposition(theta, 2)
    assert w.dtype == torch.float32
    assert bool((w >= 0).all()) and int((w > 0).sum(1)[0]) == 2
    torch.testing.assert_close(torch.einsum("na,nad->nd", w, z.float()), mu)
