"""Euclidean projection onto the capped simplex, and its decomposition into bit-vectors.

The capped simplex of budget ``B`` is ``C_B = {mu in [0, 1]^D : sum(mu) <= B}`` (with
``equality=True``: ``sum(mu) = B``). For an integer ``B`` it is the convex hull of the
bit-vectors with at most (exactly) ``B`` ones, so projecting onto it is SparseMAP for budgeted
bit-vectors (k-subsets). The projection is the clamp of shifted scores::

    mu* = argmin_{mu in C_B} ||mu - theta||^2 = clamp(theta - tau, 0, 1)

with ``tau = 0`` when ``sum(clamp(theta, 0, 1)) <= B`` (inequality case) and otherwise the root
of ``s(tau) = sum_i clamp(theta_i - tau, 0, 1) = B``. ``s`` is piecewise linear and
non-increasing, with breakpoints at ``theta_i`` and ``theta_i - 1``: one sort of the ``2 D``
breakpoints and running sums give ``s`` at every breakpoint, and the root is interpolated on the
piece that holds it. On the free coordinates ``F = {i : 0 < mu*_i < 1}`` the solution is
``theta_i - tau`` with ``tau = (sum_F theta + |{mu* = 1}| - B) / |F|``; differentiating that
formula gives the exact Jacobian ``I_F - 1_F 1_F^T / |F|`` where the budget binds (``I_F``
where it does not).

The decomposition into structures is systematic sampling: lay the free coordinates end to end
on ``[0, sum_F mu)`` (in index order) and, for ``t`` in ``[0, 1)``, select the coordinates whose
interval holds one of the points ``t, t + 1, t + 2, ...``; coordinates at 1 are always selected.
Each coordinate is selected for a set of ``t`` of measure ``mu_i``, and at most ``B`` points fit,
so the selected sets are structures whose mixture, weighted by the lengths of the ranges of
``t`` that give them, is ``mu*``. Consecutive sets differ by moving one point to the next
coordinate (or, without a binding budget, dropping the last one), so they are affinely
independent, and generically there are ``|F|`` of them where the budget binds and ``|F| + 1``
where it does not: one more than the dimension of the face of ``C_B`` that holds ``mu*`` in its
relative interior, the fewest any decomposition can have. The weights are continuous in
``theta``: a set enters or leaves the support at weight 0.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from latentgrad.mappings._shared import support_slots

#: Breakpoints (fractional parts of the running sums, in float64) closer than this are merged,
#: and ranges of ``t`` shorter than this are dropped: far above rounding noise, far below any
#: weight that matters.
_MERGE = 1e-12


class CappedSimplexProjection(NamedTuple):
    """The projection onto the capped simplex with the data of its face.

    Attributes:
        mu: the projection, ``(N, D)``, differentiable in ``theta`` (exact Jacobian).
        tau: the threshold, ``(N,)``, differentiable.
        free: ``(N, D)`` bool, the coordinates strictly inside ``(0, 1)``.
        ones: ``(N, D)`` bool, the coordinates at 1.
        binding: ``(N,)`` bool, whether the sum constraint is active (``tau`` is its
            multiplier; always ``True`` with ``equality=True``).
    """

    mu: Tensor
    tau: Tensor
    free: Tensor
    ones: Tensor
    binding: Tensor


def _threshold(theta: Tensor, budget: int, equality: bool) -> Tensor:
    """The root ``tau`` of ``sum_i clamp(theta_i - tau, 0, 1) = budget`` (no gradient)."""
    d = theta.shape[1]
    breaks = torch.cat([theta, theta - 1.0], 1)
    top = torch.cat([torch.ones_like(theta), torch.zeros_like(theta)], 1)
    b, order = breaks.sort(dim=1, descending=True, stable=True)
    is_top = top.gather(1, order)
    value = torch.cat([theta, theta], 1).gather(1, order)
    # Below breakpoint j: the coordinates whose upper breakpoint is passed contribute
    # theta_i - b_j, those whose lower one is passed too contribute 1.
    n_top = is_top.cumsum(1)
    n_one = (1.0 - is_top).cumsum(1)
    sum_mid = (value * (2.0 * is_top - 1.0)).cumsum(1)  # sum of theta over the middle ones
    slope = n_top - n_one
    s = n_one + sum_mid - slope * b
    # The first breakpoint where s reaches the budget; the root lies on the piece above it
    # (s is 0 at the first breakpoint, D at the last, and the budget is in [1, D]).
    j = (s < budget).sum(1, keepdim=True).clamp(1, 2 * d - 1)
    prev = j - 1
    tau = b.gather(1, prev) - (budget - s.gather(1, prev)) / slope.gather(1, prev).clamp_min(1.0)
    tau = tau.squeeze(1)
    return tau if equality else tau.clamp_min(0.0)


def capped_simplex_projection(
    theta: Tensor, budget: int, *, equality: bool = False
) -> CappedSimplexProjection:
    """Project rows of ``theta`` onto ``{mu in [0, 1]^D : sum(mu) <= budget}`` (or ``= budget``).

    Solves ``argmin_mu ||mu - theta||^2`` over the capped simplex exactly, by sorting (see the
    module docstring); ``mu`` and ``tau`` are differentiable with the exact Jacobian.

    Args:
        theta: scores, ``(N, D)``, finite, floating point.
        budget: the cap ``B``, ``1 <= B <= D`` (the caller checks it).
        equality: project onto ``sum(mu) = B`` instead of ``sum(mu) <= B``.

    Returns:
        :class:`CappedSimplexProjection` ``(mu, tau, free, ones, binding)``.

    Shape:
        ``theta``, ``mu``, ``free``, ``ones``: ``(N, D)``; ``tau``, ``binding``: ``(N,)``.

    Example:
        >>> import torch
        >>> out = capped_simplex_projection(torch.tensor([[0.9, 0.8, 1.5, -0.2]]), 2)
        >>> out.mu, out.tau
        (tensor([[0.5500, 0.4500, 1.0000, 0.0000]]), tensor([0.3500]))
    """
    with torch.no_grad():
        tau0 = _threshold(theta.detach(), budget, equality)
        shifted = theta.detach() - tau0.unsqueeze(1)
        free = (shifted > 0) & (shifted < 1)
        ones = shifted >= 1
        binding = tau0 > 0 if not equality else torch.ones_like(tau0, dtype=torch.bool)
        count = free.sum(1)
        exact = binding & (count > 0)
    # Where the budget binds, tau is the mean excess over the free coordinates: differentiating
    # this (rather than the sort) gives the Jacobian of the projection.
    excess = (theta * free).sum(1) + ones.sum(1) - budget
    tau = torch.where(exact, excess / count.clamp_min(1), tau0)
    inside = theta - tau.unsqueeze(1)
    # (The clamp only catches rounding at coordinates classified free at a breakpoint.)
    mu = torch.where(free, inside.clamp(0.0, 1.0), ones.to(theta.dtype))
    return CappedSimplexProjection(mu, tau, free, ones, binding)


def capped_simplex_decomposition(
    theta: Tensor, budget: int, *, equality: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """The projection onto the capped simplex as a sparse mixture of bit-vectors.

    ``mu* = sum_a weights_a structures_a`` where every structure has at most ``budget`` ones
    (exactly ``budget`` with ``equality=True``), by systematic sampling (see the module
    docstring): affinely independent structures, as few as the face of ``mu*`` allows.

    Args:
        theta: scores, ``(N, D)``, finite, floating point.
        budget: the cap ``B``, ``1 <= B <= D`` (the caller checks it).
        equality: structures with exactly ``budget`` ones (k-subsets).

    Returns:
        ``(structures, weights, mu)``: ``(N, A, D)`` bool (padding slots repeat the first
        structure at weight 0); ``(N, A)`` in ``theta``'s dtype, non-negative, summing to 1,
        differentiable; and ``mu*``, ``(N, D)``, differentiable with the exact Jacobian.

    Shape:
        ``theta``: ``(N, D)``; ``A`` is the largest support size over the rows.

    Example:
        >>> import torch
        >>> z, w, mu = capped_simplex_decomposition(torch.tensor([[0.9, 0.8, 1.5, -0.2]]), 2)
        >>> z.int(), w
        (tensor([[[1, 0, 1, 0],
                 [0, 1, 1, 0]]], dtype=torch.int32), tensor([[0.5500, 0.4500]]))
    """
    proj = capped_simplex_projection(theta, budget, equality=equality)
    # The ranges of t are differences of running sums: float64 keeps them clean.
    x = torch.where(proj.free, proj.mu, torch.zeros_like(proj.mu)).double()
    # Where the budget binds the free coordinates fill [0, B - |ones|) exactly: rescale away the
    # rounding (a factor 1 in exact arithmetic, with zero derivative since sum(dmu) = 0 there)
    # so that no sliver of a range is left at the end.
    total = x.sum(1, keepdim=True)
    target = total.detach().round()
    whole = proj.binding.unsqueeze(1) & (target >= 1)
    x = x * torch.where(whole, target / total.clamp_min(0.5), torch.ones_like(total))
    ends = x.cumsum(1)
    frac = ends - ends.detach().floor()
    frac = torch.where((frac.detach() < _MERGE) | (frac.detach() > 1 - _MERGE), 0.0 * frac, frac)
    # The ranges of t: between consecutive distinct breakpoints in [0, 1).
    cuts = torch.cat([torch.zeros_like(frac[:, :1]), frac], 1)
    cuts, _ = cuts.sort(dim=1)
    upper = torch.cat([cuts[:, 1:], torch.ones_like(cuts[:, :1])], 1)
    width = upper - cuts
    keep = width.detach() > _MERGE
    width = width * keep
    width = width / width.sum(1, keepdim=True)
    slots, support = support_slots(keep)
    weights = (width.gather(1, slots) * support).to(theta.dtype)
    with torch.no_grad():
        # One t inside each range (its middle), and the coordinates it selects: the interval
        # [start_i, end_i) holds ceil(end_i - t) - ceil(start_i - t) points of t + Z. With
        # start_i = s_i + f_i and end_i = e_i + g_i (integer and fractional parts) and t in
        # [0, 1), that count is (e_i - s_i) + [g_i > t] - [f_i > t]; a free coordinate has
        # x_i < 1, so e_i - s_i is 0 (one point iff f_i <= t < g_i) or 1 (one point unless
        # g_i <= t < f_i). Per range this is two comparisons, not two ceilings of differences.
        middle = ((cuts.gather(1, slots) + upper.gather(1, slots)) / 2).unsqueeze(2)
        end = ends.detach()
        start = end - x.detach()
        crossed = end.floor() > start.floor()
        f, g = start - start.floor(), end - end.floor()
        low, high = torch.where(crossed, g, f).unsqueeze(1), torch.where(crossed, f, g).unsqueeze(1)
        hits = ((middle >= low) & (middle < high)) ^ crossed.unsqueeze(1)
        structures = (hits & proj.free.unsqueeze(1)) | proj.ones.unsqueeze(1)
    return structures, weights, proj.mu
