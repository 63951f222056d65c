"""SparseMAP: the Euclidean projection of scores onto the convex hull of structures, batched.

For structures ``z`` in a finite set ``Z`` of 0/1 vectors of ``R^D`` and scores ``theta``,
SparseMAP solves::

    mu* = argmin_{mu in conv(Z)} ||mu - theta||^2
        = argmin_{p in simplex(Z)} ||sum_z p_z z - theta||^2

whose solution is a sparse convex combination ``mu* = sum_{z in A} p_z z`` of a few structures
(the active set ``A``), so expectations ``E_p[f(z)]`` are exact finite sums.

The solver is the active-set method of Niculae et al. (2018), run on all rows at once in
PyTorch: each row keeps an active set of structures (padded to a common size with a mask); one
iteration solves the equality-constrained problem on the active set (a small bordered KKT
system, whose inverse each row keeps and updates by rank-one terms as structures enter and
leave), steps back to the simplex boundary and drops a structure if some weight would turn
negative, and otherwise asks the MAP oracle for the structure maximizing ``<theta - mu, z>``
and adds it unless the duality gap ``<theta - mu, z - mu>`` is below the tolerance. Rows that
converged leave the batch, so the loop runs over solver iterations only. Everything is
computed in float64 internally. Oracles that know the solution in closed form (free
bit-vectors: the clamp, as a nested decomposition) skip the iterations.

The weights and ``mu`` are differentiable through the KKT system of the final support (the
structures of positive weight): with ``M`` the support structures as rows and ``K`` the
bordered matrix ``[[M M^T, 1], [1^T, 0]]``, ``dp = S M dtheta`` where ``S`` is the top-left
block of ``K^-1`` (``S = G^-1 - G^-1 1 1^T G^-1 / (1^T G^-1 1)`` when ``G = M M^T`` is
invertible; the bordered form also covers the zero structure, for which ``G`` is singular).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from latentgrad.mappings._sparsemax import _apply

Oracle = Callable[[Tensor], Tensor]

#: Ridge added to the diagonal of the Gram matrix of an active set whose KKT system is exactly
#: singular (never the case in exact arithmetic: the solver keeps active sets affinely
#: independent; the Gram entries are integers).
_RIDGE = 1e-11

#: The oracle sees ``theta - mu`` rounded to multiples of this times ``1 + max|theta|``.
_GRID = 1e-10

#: Weights at most this small after a step to the boundary are dropped with the blocking one.
_DROP = 1e-13


class SparseMAPResult(NamedTuple):
    """The output of :func:`sparsemap`.

    Attributes:
        structures: the support structures, ``(*, A, D)``; rows with fewer than ``A`` are padded
            with copies of one of their structures at weight 0 (not differentiable).
        weights: the convex combination, ``(*, A)``, differentiable in ``theta``.
        mu: ``sum_a weights_a structures_a``, ``(*, D)``, differentiable in ``theta``.
        gap: the final duality gap ``max_z <theta - mu, z - mu>`` per row, ``(*)`` (float64);
            ``||mu - mu*||^2 <= gap``.
        converged: whether the row reached ``gap <= tol``, ``(*)`` bool.
        iterations: solver iterations per row, ``(*)`` long.
    """

    structures: Tensor
    weights: Tensor
    mu: Tensor
    gap: Tensor
    converged: Tensor
    iterations: Tensor


# -- the KKT system -------------------------------------------------------------------------------


def _kkt_matrix(gram: Tensor, mask: Tensor, ridge: float = 0.0) -> Tensor:
    """The bordered KKT matrix ``[[G, m], [m^T, 0]]`` of the active sets, ``(n, K+1, K+1)``.

    ``G``: the Gram matrix ``z z^T`` of the slots, restricted to the active slots ``m`` (plus
    ``ridge`` on its diagonal);
    inactive slots get identity rows and columns (and no border), so their weight solves to 0.
    The matrix is invertible exactly when the active structures are affinely independent.
    """
    n, k = mask.shape
    m = mask.to(gram.dtype)
    a = gram.new_zeros(n, k + 1, k + 1)
    a[:, :k, :k] = gram * (m.unsqueeze(2) * m.unsqueeze(1))
    a[:, :k, :k].diagonal(dim1=1, dim2=2).add_(1.0 - m + ridge * m)
    a[:, :k, k] = m
    a[:, k, :k] = m
    return a


def _kkt_rhs(z: Tensor, mask: Tensor, theta: Tensor) -> Tensor:
    """``[M theta; 1]`` with zeros in the inactive slots, ``(n, K+1, 1)``."""
    m = mask.to(z.dtype)
    top = torch.bmm(theta.unsqueeze(1), z.transpose(1, 2)).squeeze(1) * m
    return torch.cat([top, torch.ones_like(top[:, :1])], 1).unsqueeze(2)


# -- argument checks ------------------------------------------------------------------------------


def _check_theta(theta: object) -> Tensor:
    if not isinstance(theta, Tensor):
        raise TypeError(f"theta must be a torch.Tensor, got {type(theta).__name__}")
    if not theta.is_floating_point():
        raise TypeError(f"theta must have a floating-point dtype, got {theta.dtype}")
    if theta.dim() == 0 or theta.shape[-1] == 0:
        raise ValueError(f"theta must have shape (*, D) with D >= 1, got {tuple(theta.shape)}")
    if not bool(torch.isfinite(theta).all()):
        if bool(torch.isnan(theta).any()):
            raise ValueError("theta contains NaN")
        raise ValueError("theta contains inf")
    return theta


def _check_oracle(oracle: object, d: int) -> Oracle:
    if not callable(oracle):
        raise TypeError(f"oracle must be callable, got {type(oracle).__name__}")
    dim = getattr(oracle, "dim", None)
    if isinstance(dim, int) and dim != d:
        raise ValueError(f"oracle has dim {dim} but theta has D = {d}")
    return oracle


def _call_oracle(oracle: Oracle, w: Tensor) -> Tensor:
    z = oracle(w)
    if not isinstance(z, Tensor):
        raise TypeError(f"oracle must return a torch.Tensor, got {type(z).__name__}")
    if z.shape != w.shape:
        raise ValueError(
            f"oracle must return indicators of shape {tuple(w.shape)}, got {tuple(z.shape)}"
        )
    return z.to(w.dtype)


def _check_count(x: object, name: str, minimum: int) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError(f"{name} must be an int, got {type(x).__name__}")
    if x < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {x}")
    return x


def _check_tol(tol: object) -> float:
    if isinstance(tol, bool) or not isinstance(tol, (int, float)):
        raise TypeError(f"tol must be a real number, got {type(tol).__name__}")
    value = float(tol)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"tol must be finite and >= 0, got {tol!r}")
    return value


def _warm_arrays(warm: object, n: int, d: int, max_active: int) -> tuple[Tensor, Tensor]:
    """Structures ``(n, A, D)`` and weights ``(n, A)`` (float64) of a previous result."""
    if not isinstance(warm, SparseMAPResult):
        raise TypeError(f"warm_start must be a SparseMAPResult, got {type(warm).__name__}")
    z, w = warm.structures, warm.weights
    if z.dim() < 2 or z.shape[-1] != d or w.shape != z.shape[:-1]:
        raise ValueError("warm_start has structures/weights of inconsistent shapes")
    z = z.detach().reshape(-1, z.shape[-2], d).double()
    w = w.detach().reshape(-1, w.shape[-1]).double()
    if z.shape[0] != n:
        raise ValueError(f"warm_start has {z.shape[0]} rows, theta has {n}")
    if z.shape[1] > max_active:
        raise ValueError(f"warm_start has {z.shape[1]} structures per row, above max_active")
    w = w.clamp_min(0.0)
    total = w.sum(-1, keepdim=True)
    if not bool((total > 0).all()):
        raise ValueError("warm_start has a row without positive weight")
    return z, w / total


# -- the active-set solver ------------------------------------------------------------------------


class _Solution(NamedTuple):
    z: Tensor  # (n, K, D) float64
    p: Tensor  # (n, K) float64, 0 outside the active set
    mask: Tensor  # (n, K) bool
    gap: Tensor  # (n,)
    converged: Tensor  # (n,)
    iterations: Tensor  # (n,)


def _grow(t: Tensor, k: int) -> Tensor:
    """``t`` with its dimension 1 zero-padded (``False``-padded) to ``k``."""
    out = t.new_zeros((t.shape[0], k, *t.shape[2:]))
    out[:, : t.shape[1]] = t
    return out


def _grow_inverse(kinv: Tensor, k: int) -> Tensor:
    """The inverse KKT matrices of :func:`_kkt_inverse` with ``k`` slots instead of fewer.

    The new slots are inactive (identity rows and columns); the border moves to index ``k``.
    """
    n, old = kinv.shape[0], kinv.shape[1] - 1
    out = kinv.new_zeros(n, k + 1, k + 1)
    keep = torch.tensor([*range(old), k], device=kinv.device)
    out[:, keep.unsqueeze(1), keep] = kinv
    out[:, old:k, old:k].diagonal(dim1=1, dim2=2).fill_(1.0)
    return out


def _next_capacity(cap: int, max_active: int) -> int:
    """Active-set capacity after ``cap`` (grown by half)."""
    return min(max_active, cap + max(8, cap // 2))


def _kkt_decompose(z: Tensor, mask: Tensor, decompose: Callable[..., Any]) -> list[Tensor]:
    """``decompose`` (a ``torch.linalg.*_ex`` function) of the KKT matrices for slots ``z``.

    Returns its outputs without the trailing ``info``. Rows where the matrix is singular (never
    in exact arithmetic) are decomposed again with a tiny ridge on the Gram matrix.
    """
    gram = torch.bmm(z, z.transpose(1, 2))
    *out, info = decompose(_kkt_matrix(gram, mask))
    bad = (info != 0).nonzero().squeeze(1)
    if bad.numel():
        *fixed, info_bad = decompose(_kkt_matrix(gram[bad], mask[bad], _RIDGE))
        if bool((info_bad != 0).any()):
            raise RuntimeError("singular KKT system even with a ridge")
        for t, f in zip(out, fixed, strict=True):
            t[bad] = f
    return out


def _kkt_inverse(z: Tensor, mask: Tensor) -> Tensor:
    """The inverse of the bordered KKT matrix of :func:`_kkt_matrix`, ``(n, K+1, K+1)``."""
    (kinv,) = _kkt_decompose(z, mask, torch.linalg.inv_ex)
    return kinv


#: The inverse KKT matrices, updated by rank-one terms as structures enter and leave, are
#: recomputed from scratch this often (rounding errors of the updates then never pile up).
_REFRESH = 16

#: An entering structure whose squared distance to the affine hull of the active set (the Schur
#: complement of its KKT border) is below this is treated as dependent: the inverse is recomputed.
_DEPENDENT = 1e-9


def _active_set(
    theta: Tensor,
    oracle: Oracle,
    max_iter: int,
    tol: float,
    max_active: int,
    warm: tuple[Tensor, Tensor] | None,
) -> _Solution:
    """Batched active-set SparseMAP on float64 scores ``theta`` of shape ``(n, D)``.

    Every row keeps its active structures in ``cap`` slots (``z``, weights ``p``, ``mask``),
    their scores ``<z, theta>``, and the inverse of its bordered KKT matrix. An iteration
    multiplies by that inverse (the equality-constrained minimizer on the active set), steps
    back to the simplex boundary and drops the blocking structure where a weight would turn
    negative, and otherwise calls the oracle and adds its structure unless the duality gap is
    below ``tol``. Entering and leaving structures change the inverse by a rank-one term (the
    bordering formulas), so an iteration costs ``O(cap^2)`` per row instead of a factorization.

    Rows that finish stay in the working arrays (masked) until half of them have finished;
    then the finished ones are written out and the rest compacted, so gathers stay rare.
    """
    n, d = theta.shape
    dev = theta.device
    if warm is None:
        cap = min(max_active, 8)
        z = theta.new_zeros(n, cap, d)
        z[:, 0] = _call_oracle(oracle, theta)
        p = theta.new_zeros(n, cap)
        p[:, 0] = 1.0
    else:
        z, p = warm
        cap = min(max_active, max(z.shape[1], 8))
        z, p = _grow(z, cap), _grow(p, cap)
    mask = p > 0
    # Outputs for all rows; the working arrays below hold the rows still being solved.
    out_z, out_p, out_mask = z, p, mask
    gap = theta.new_full((n,), math.inf)
    converged = torch.zeros(n, dtype=torch.bool, device=dev)
    iterations = torch.zeros(n, dtype=torch.long, device=dev)
    rows = torch.arange(n, device=dev)
    th = theta
    grid = (theta.abs().amax(1, keepdim=True) + 1.0).mul_(_GRID)
    score = torch.bmm(theta.unsqueeze(1), z.transpose(1, 2)).squeeze(1)
    w_gap = gap.clone()
    w_conv = converged.clone()
    w_iter = iterations.clone()
    live = torch.ones(n, dtype=torch.bool, device=dev)
    kinv = _kkt_inverse(z, mask)
    since_refresh = 0

    def write_back(which: Tensor) -> None:
        nonlocal out_z, out_p, out_mask
        if out_z.shape[1] < cap:
            out_z, out_p, out_mask = _grow(out_z, cap), _grow(out_p, cap), _grow(out_mask, cap)
        idx = rows[which]
        out_z[idx], out_p[idx], out_mask[idx] = z[which], p[which], mask[which]
        gap[idx], converged[idx], iterations[idx] = w_gap[which], w_conv[which], w_iter[which]

    for _ in range(max_iter):
        w = rows.numel()
        if w == 0:
            break
        if since_refresh >= _REFRESH:
            kinv, since_refresh = _kkt_inverse(z, mask), 0
        since_refresh += 1
        ar = torch.arange(w, device=dev)
        # The minimizer on the active set, then a step towards it that stays feasible.
        # (The inverse is symmetric; products with a vector on the left are much faster.)
        rhs = torch.cat([score * mask, torch.ones_like(score[:, :1])], 1).unsqueeze(1)
        p_hat = torch.bmm(rhs, kinv)[:, 0, :cap]
        step = p_hat - p
        shrinking = mask & (step < 0)
        infeasible = (mask & (p_hat < 0)).any(1) & live
        ratio = torch.where(shrinking, p / (-step).clamp_min(1e-300), math.inf)
        alpha, block = ratio.min(1)
        alpha = alpha.clamp(max=1.0).unsqueeze(1)
        p_new = torch.where(infeasible.unsqueeze(1), p + alpha * step, p_hat)
        blocked = torch.nn.functional.one_hot(block, cap).bool() | (p_new <= _DROP)
        new_mask = mask & ~(infeasible.unsqueeze(1) & blocked)
        p_new = p_new.clamp_min(0.0) * new_mask
        p_new = p_new / p_new.sum(1, keepdim=True)
        # Where p_hat was feasible, ask the oracle for the best structure in direction theta - mu.
        mu = torch.bmm(p_new.unsqueeze(1), z).squeeze(1)
        g = th - mu
        # The oracle sees g rounded to a grid far coarser than rounding noise: entries that tie
        # (or vanish) in exact arithmetic then tie exactly, so the oracle's deterministic
        # tie-breaking, not noise, picks among them, and the solver's path and final support
        # are stable under tiny changes of theta (the found structure is optimal for g up to
        # D times the grid step).
        g_round = torch.round(g / grid) * grid
        if bool(live.all()):
            z_new = _call_oracle(oracle, g_round)
        else:
            idx = live.nonzero().squeeze(1)
            z_new = torch.zeros_like(g)
            z_new[idx] = _call_oracle(oracle, g_round[idx])
        gap_i = (g * (z_new - mu)).sum(1)
        done = live & ~infeasible & (gap_i <= tol)
        add = live & ~infeasible & ~done
        count = new_mask.sum(1)
        full = add & (count >= cap)
        if bool(full.any()):
            if cap < max_active:
                cap = _next_capacity(cap, max_active)
                z, p_new, new_mask, mask = (_grow(t, cap) for t in (z, p_new, new_mask, mask))
                score, kinv = _grow(score, cap), _grow_inverse(kinv, cap)
            else:
                live = live & ~full
                add = add & ~full
        # Rank-one updates of the inverse: a leaving slot j (K^-1 = [[E, f], [f^T, h]] with j
        # last becomes E - f f^T / h) and an entering one (border b, Schur complement s).
        dropped = (mask & ~new_mask).sum(1)
        single = dropped == 1
        refresh = bool((dropped > 1).any())
        j = torch.where(add, (~new_mask).to(torch.uint8).argmax(1), block)
        col = kinv[ar, j]
        h = col.gather(1, j.unsqueeze(1))
        inner = torch.bmm(z_new.unsqueeze(1), z.transpose(1, 2)).squeeze(1) * new_mask
        b = torch.cat([inner, torch.ones_like(inner[:, :1])], 1) * add.unsqueeze(1)
        u = torch.bmm(b.unsqueeze(1), kinv).squeeze(1)
        schur = z_new.sum(1) - (b * u).sum(1)
        if bool((add & (schur <= _DEPENDENT)).any()):
            refresh = True
        e_j = torch.nn.functional.one_hot(j, cap + 1).to(u.dtype)
        v_add = (u - e_j) * add.unsqueeze(1)
        v_drop = col * single.unsqueeze(1)
        left = v_add + v_drop
        right = v_add / torch.where(add, schur, 1.0).unsqueeze(1) - v_drop / torch.where(
            single, h.squeeze(1), 1.0
        ).unsqueeze(1)
        kinv.addcmul_(left.unsqueeze(2), right.unsqueeze(1))
        kinv.diagonal(dim1=1, dim2=2).add_(
            e_j * (single.to(u.dtype) - add.to(u.dtype)).unsqueeze(1)
        )
        local = add.nonzero().squeeze(1)
        if local.numel():
            slot = j[local]
            z_add = z_new[local]
            z[local, slot] = z_add
            new_mask[local, slot] = True
            score[local, slot] = (z_add * th[local]).sum(1)
        p, mask = p_new, new_mask
        if refresh:
            kinv, since_refresh = _kkt_inverse(z, mask), 0
        w_gap = torch.where(live & ~infeasible, gap_i, w_gap)
        w_iter += live
        w_conv |= done
        live = live & ~done
        remaining = int(live.sum())
        if remaining <= w // 2:
            write_back(~live)
            keep = live.nonzero().squeeze(1)
            rows, th, grid, z, p, mask = (
                rows[keep],
                th[keep],
                grid[keep],
                z[keep],
                p[keep],
                mask[keep],
            )
            score, kinv, live = score[keep], kinv[keep], live[keep]
            w_gap, w_iter, w_conv = w_gap[keep], w_iter[keep], w_conv[keep]
    if rows.numel():
        write_back(torch.ones_like(live))
    z, p, mask = out_z, out_p, out_mask
    # Rows left unconverged: report the duality gap of their current point.
    left = (~converged).nonzero().squeeze(1)
    if left.numel():
        mu = torch.bmm(p[left].unsqueeze(1), z[left]).squeeze(1)
        g = theta[left] - mu
        gap[left] = (g * (_call_oracle(oracle, g) - mu)).sum(1)
    return _Solution(z, p, mask, gap, converged, iterations)


def support_slots(positive: Tensor) -> tuple[Tensor, Tensor]:
    """The slots of each row's ``True`` entries first (in order), padded with the first slot.

    Returns ``(slots (n, A), support (n, A) bool)`` with ``A`` the largest count in a row (at
    least 1); ``support`` is ``False`` on padding.
    """
    size = max(int(positive.sum(1).max()), 1) if positive.shape[0] else 1
    order = torch.sort((~positive).to(torch.uint8), dim=1, stable=True).indices[:, :size]
    support = positive.gather(1, order)
    return torch.where(support, order, order[:, :1]), support


def _compact(z: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
    """Support structures first (slot order kept), padded with copies of the first one.

    Returns ``(structures (n, A, D), support (n, A) bool)``.
    """
    order, support = support_slots(p > 0)
    rows = torch.arange(z.shape[0], device=z.device).unsqueeze(1)
    return z[rows, order], support


# -- differentiation ------------------------------------------------------------------------------


def _kkt_factor(z: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """LU factors ``(LU, pivots)`` of the KKT matrices of :func:`_kkt_matrix` for slots ``z``."""
    lu, pivots = _kkt_decompose(z, mask, torch.linalg.lu_factor_ex)
    return lu, pivots


class SparseMAPFunction(torch.autograd.Function):
    """Weights and ``mu`` of SparseMAP on a fixed support, differentiable in ``theta``.

    Forward solves the KKT system of the support (use :func:`sparsemap`, which finds the
    support first): ``p = argmin ||M^T p - theta||^2`` subject to ``sum(p) = 1``, with ``M`` the
    support structures, and ``mu = M^T p``. Backward: ``dtheta = M^T S (dp + M dmu)`` with ``S``
    the top-left block of the inverse bordered KKT matrix, reusing the forward's LU factors.

    Inputs: ``theta (n, D)``, ``structures (n, A, D)`` (0/1, float), ``support (n, A)`` (bool;
    slots outside get weight 0). Returns ``(weights (n, A), mu (n, D))`` in theta's dtype.
    """

    @staticmethod
    def forward(
        ctx: Any, theta: Tensor, structures: Tensor, support: Tensor
    ) -> tuple[Tensor, Tensor]:
        z = structures.double()
        lu, pivots = _kkt_factor(z, support)
        rhs = _kkt_rhs(z, support, theta.double())
        p = torch.linalg.lu_solve(lu, pivots, rhs)[:, : z.shape[1], 0] * support
        mu = torch.bmm(p.unsqueeze(1), z).squeeze(1)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(z, support, lu, pivots)
        ctx.theta_dtype = theta.dtype
        return p.to(theta.dtype), mu.to(theta.dtype)

    @staticmethod
    def backward(
        ctx: Any, grad_p: Tensor | None, grad_mu: Tensor | None
    ) -> tuple[Tensor | None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None
        z, support, lu, pivots = ctx.saved_tensors
        n, k, _ = z.shape
        v = z.new_zeros(n, k)
        if grad_p is not None:
            v = v + grad_p.double()
        if grad_mu is not None:
            v = v + torch.bmm(grad_mu.double().unsqueeze(1), z.transpose(1, 2)).squeeze(1)
        v = v * support
        rhs = torch.cat([v, v.new_zeros(n, 1)], 1).unsqueeze(2)
        s_v = torch.linalg.lu_solve(lu, pivots, rhs)[:, :k, 0] * support
        grad_theta = torch.bmm(s_v.unsqueeze(1), z).squeeze(1)
        return grad_theta.to(ctx.theta_dtype), None, None


# -- public entry point ---------------------------------------------------------------------------


def sparsemap(
    theta: Tensor,
    oracle: Oracle,
    *,
    max_iter: int = 100,
    tol: float = 1e-6,
    warm_start: SparseMAPResult | None = None,
    max_active: int | None = None,
    strict: bool = False,
    method: str = "auto",
) -> SparseMAPResult:
    """SparseMAP: project ``theta`` onto the convex hull of the oracle's structures.

    Solves, independently for every row::

        mu* = argmin_{mu in conv(Z)} ||mu - theta||^2
            = argmax_{mu in conv(Z)} <theta, mu> - 1/2 ||mu||^2

    and returns ``mu*`` together with a sparse convex combination of structures
    ``mu* = sum_a weights_a structures_a``, found by a batched active-set method that only
    needs the MAP ``oracle``. Since ``||mu - mu*||^2 <= gap``, a row with ``gap <= tol`` is
    solved to ``sqrt(tol)`` in ``mu``. Rows that reach ``max_iter`` (or need more than
    ``max_active`` structures) are reported in ``converged`` and ``gap`` rather than hidden.
    ``weights`` and ``mu`` are differentiable in ``theta`` (through the KKT conditions of the
    final support); the solver itself runs without gradient.

    Args:
        theta: scores, structure dimension last; finite (NaN and inf raise ``ValueError``).
        oracle: ``oracle(w)`` maps ``(N, D)`` scores to 0/1 indicators ``(N, D)`` of a
            maximizer of ``<w, z>`` (see :mod:`latentgrad.mappings.oracles`).
        max_iter: the largest number of iterations per row.
        tol: stop a row once its duality gap ``<theta - mu, z_new - mu>`` is ``<= tol``.
        warm_start: a previous result for the same rows; its support is the initial active set.
        max_active: the largest active set per row (default ``D + 1``, which affinely
            independent active sets never exceed).
        strict: raise ``RuntimeError`` if some row did not converge.
        method: ``"active_set"`` runs the iterative solver; ``"auto"`` (default) first uses the
            oracle's closed form where it has one (a ``sparse_projection(theta)`` method
            returning differentiable ``(structures, weights, mu)``, as
            :class:`~latentgrad.mappings.oracles.FreeBits` does) and
            ``max_active`` is not given; ``warm_start`` and ``max_iter`` are then unused and
            ``iterations`` is 0. The weights are computed from the support either way.

    Returns:
        :class:`SparseMAPResult` ``(structures, weights, mu, gap, converged, iterations)``.

    Shape:
        ``theta``: ``(*, D)``; ``structures``: ``(*, A, D)``; ``weights``: ``(*, A)``; ``mu``:
        ``(*, D)``; ``gap``, ``converged``, ``iterations``: ``(*)``. ``A`` is the largest
        support size over the rows.

    Raises:
        ValueError: bad ``theta`` (NaN, inf, empty last dimension), an oracle output of the
            wrong shape or dimension, bad counts, or an inconsistent ``warm_start``.
        TypeError: arguments of the wrong type.
        RuntimeError: with ``strict=True``, if some row did not converge.

    Example:
        >>> import torch
        >>> from latentgrad.mappings.oracles import FreeBits
        >>> theta = torch.tensor([[0.3, 1.4, -0.2]], requires_grad=True)
        >>> out = sparsemap(theta, FreeBits(3))
        >>> out.mu.detach()  # the projection onto the cube [0, 1]^3
        tensor([[0.3000, 1.0000, 0.0000]])
        >>> out.structures, out.weights.detach()
        (tensor([[[1., 1., 0.],
                 [0., 1., 0.]]]), tensor([[0.3000, 0.7000]]))
        >>> out.mu[0, 0].backward(); theta.grad
        tensor([[1., 0., 0.]])

    References:
        [1] Niculae, Martins, Blondel & Cardie, "SparseMAP: Differentiable Sparse Structured
            Inference", ICML 2018.
        [2] Correia, Niculae, Aziz & Martins, "Efficient Marginalization of Discrete and
            Structured Latent Variables via Sparsity", NeurIPS 2020.
    """
    theta = _check_theta(theta)
    d = theta.shape[-1]
    oracle = _check_oracle(oracle, d)
    max_iter = _check_count(max_iter, "max_iter", 1)
    tol = _check_tol(tol)
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, got {type(strict).__name__}")
    if method not in ("auto", "active_set"):
        raise ValueError(f"method must be 'auto' or 'active_set', got {method!r}")
    closed_form = getattr(oracle, "sparse_projection", None)
    if method == "active_set" or max_active is not None:
        closed_form = None
    max_active = d + 1 if max_active is None else _check_count(max_active, "max_active", 1)
    batch = theta.shape[:-1]
    flat = theta.reshape(-1, d)
    n = flat.shape[0]
    th = flat.detach().double()
    warm = None if warm_start is None else _warm_arrays(warm_start, n, d, max_active)
    if closed_form is None:
        with torch.no_grad():
            sol = _active_set(th, oracle, max_iter, tol, max_active, warm)
            structures, support = _compact(sol.z, sol.p)
        gap, converged, iterations = sol.gap, sol.converged, sol.iterations
        compute = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
        weights, mu = _apply(SparseMAPFunction, compute, structures, support)
    else:
        # Differentiable formulas in float64; the gap certifies them like the solver's output.
        structures, weights, mu = closed_form(flat.double())
        with torch.no_grad():
            g = th - mu.detach()
            gap = (g * (_call_oracle(oracle, g) - mu.detach())).sum(1)
        converged = gap <= tol
        iterations = torch.zeros(n, dtype=torch.long, device=th.device)
    if strict and not bool(converged.all()):
        bad = int((~converged).sum())
        raise RuntimeError(
            f"sparsemap did not converge on {bad} of {n} rows "
            f"(largest gap {float(gap.max()):.3g} > tol {tol:g}); raise max_iter"
        )
    a = structures.shape[1]
    return SparseMAPResult(
        structures=structures.to(theta.dtype).reshape(*batch, a, d),
        weights=weights.to(theta.dtype).reshape(*batch, a),
        mu=mu.to(theta.dtype).reshape(*batch, d),
        gap=gap.reshape(batch),
        converged=converged.reshape(batch),
        iterations=iterations.reshape(batch),
    )
