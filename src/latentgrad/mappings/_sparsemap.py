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
system), steps back to the simplex boundary and drops a structure if some weight would turn
negative, and otherwise asks the MAP oracle for the structure maximizing ``<theta - mu, z>``
and adds it unless the duality gap ``<theta - mu, z - mu>`` is below the tolerance. Rows that
converged leave the batch, so the loop runs over solver iterations only. Everything is
computed in float64 internally.

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


def _kkt_solve(gram: Tensor, mask: Tensor, rhs: Tensor) -> Tensor:
    """Solve the KKT system of :func:`_kkt_matrix`; rows where it is singular get a tiny ridge."""
    a = _kkt_matrix(gram, mask)
    sol, info = torch.linalg.solve_ex(a, rhs)
    bad = (info != 0).nonzero().squeeze(1)
    if bad.numel():
        a_bad = _kkt_matrix(gram[bad], mask[bad], _RIDGE)
        sol = sol.index_put((bad,), torch.linalg.solve(a_bad, rhs[bad]))
    return sol


def _kkt_rhs(z: Tensor, mask: Tensor, theta: Tensor) -> Tensor:
    """``[M theta; 1]`` with zeros in the inactive slots, ``(n, K+1, 1)``."""
    m = mask.to(z.dtype)
    top = torch.bmm(z, theta.unsqueeze(2)).squeeze(2) * m
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


def _grow(t: Tensor, k: int, dims: int = 1) -> Tensor:
    """``t`` with its dimension 1 (and 2 if ``dims == 2``) zero-padded to ``k``."""
    out = t.new_zeros(
        (t.shape[0], k, k, *t.shape[3:]) if dims == 2 else (t.shape[0], k, *t.shape[2:])
    )
    if dims == 2:
        out[:, : t.shape[1], : t.shape[2]] = t
    else:
        out[:, : t.shape[1]] = t
    return out


def _next_capacity(cap: int, max_active: int) -> int:
    """Active-set capacity after ``cap`` (grown by half: the KKT solve is cubic in it)."""
    return min(max_active, cap + max(8, cap // 2))


def _active_set(
    theta: Tensor,
    oracle: Oracle,
    max_iter: int,
    tol: float,
    max_active: int,
    warm: tuple[Tensor, Tensor] | None,
) -> _Solution:
    """Batched active-set SparseMAP on float64 scores ``theta`` of shape ``(n, D)``.

    Per row and slot it keeps the structure ``z``, its weight ``p``, whether it is active, the
    Gram matrix of the slots and the scores ``<z, theta>``; the last two are updated when a
    structure enters, so an iteration costs one KKT solve, one ``p^T z`` and one oracle call.
    """
    n, d = theta.shape
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
    gram = torch.bmm(z, z.transpose(1, 2))
    score = torch.bmm(z, theta.unsqueeze(2)).squeeze(2)
    gap = theta.new_full((n,), math.inf)
    converged = torch.zeros(n, dtype=torch.bool, device=theta.device)
    stuck = torch.zeros_like(converged)
    iterations = torch.zeros(n, dtype=torch.long, device=theta.device)
    rows = torch.arange(n, device=theta.device)
    grid = (theta.abs().amax(1, keepdim=True) + 1.0).mul_(_GRID)
    for _ in range(max_iter):
        m = rows.numel()
        if m == 0:
            break
        every = m == n  # then work on the full tensors, without gathering rows
        if every:
            zi, gi, si, pi, mi, th, q = z, gram, score, p, mask, theta, grid
        else:
            zi, gi, si, pi, mi = z[rows], gram[rows], score[rows], p[rows], mask[rows]
            th, q = theta[rows], grid[rows]
        rhs = torch.cat([si * mi, torch.ones_like(si[:, :1])], 1).unsqueeze(2)
        p_hat = _kkt_solve(gi, mi, rhs)[:, :cap, 0]
        step = p_hat - pi
        infeasible = (mi & (p_hat < 0)).any(1)
        # Step from p towards p_hat until the first weight hits 0 (only where p_hat < 0).
        shrinking = mi & (step < 0)
        ratio = torch.where(shrinking, pi / (-step).clamp_min(1e-300), math.inf)
        alpha, block = ratio.min(1)
        alpha = alpha.clamp(max=1.0).unsqueeze(1)
        p_new = torch.where(infeasible.unsqueeze(1), pi + alpha * step, p_hat)
        blocked = torch.nn.functional.one_hot(block, cap).bool() | (p_new <= _DROP)
        mi = mi & ~(infeasible.unsqueeze(1) & blocked)
        p_new = p_new.clamp_min(0.0) * mi
        p_new = p_new / p_new.sum(1, keepdim=True)
        # Where p_hat was feasible, ask the oracle for the best structure in direction theta - mu.
        mu = torch.bmm(p_new.unsqueeze(1), zi).squeeze(1)
        g = th - mu
        # The oracle sees g rounded to a grid far coarser than rounding noise: entries that tie
        # (or vanish) in exact arithmetic then tie exactly, so the oracle's deterministic
        # tie-breaking, not noise, picks among them, and the solver's path and final support
        # are stable under tiny changes of theta (the found structure is optimal for g up to
        # D times the grid step).
        z_new = _call_oracle(oracle, torch.round(g / q) * q)
        gap_i = (g * (z_new - mu)).sum(1)
        done = ~infeasible & (gap_i <= tol)
        add = ~infeasible & ~done
        full = add & (mi.sum(1) >= cap)
        if bool(full.any()):
            if cap < max_active:
                cap = _next_capacity(cap, max_active)
                z, p, mask = _grow(z, cap), _grow(p, cap), _grow(mask, cap)
                gram, score = _grow(gram, cap, 2), _grow(score, cap)
                zi, gi, si = _grow(zi, cap), _grow(gi, cap, 2), _grow(si, cap)
                p_new, mi = _grow(p_new, cap), _grow(mi, cap)
                if every:
                    z, gram, score = zi, gi, si
            else:
                stuck[rows[full]] = True
                add = add & ~full
        local = add.nonzero().squeeze(1)
        if local.numel():
            where = (~mi[local]).to(torch.uint8).argmax(1)
            z_add = z_new[local]
            zi[local, where] = z_add
            mi[local, where] = True
            # The new structure's inner products with every slot fill its row and column of G.
            inner = torch.bmm(zi[local], z_add.unsqueeze(2)).squeeze(2)
            gi[local, where] = inner
            gi[local, :, where] = inner
            si[local, where] = (z_add * th[local]).sum(1)
        if every:
            p, mask = p_new, mi
            gap = torch.where(infeasible, gap, gap_i)
            iterations += 1
            converged = done
            rows = (~done & ~stuck).nonzero().squeeze(1)
        else:
            z[rows], gram[rows], score[rows], p[rows], mask[rows] = zi, gi, si, p_new, mi
            gap[rows] = torch.where(infeasible, gap[rows], gap_i)
            iterations[rows] += 1
            converged[rows] = done
            rows = rows[~done & ~stuck[rows]]
    # Rows left unconverged: report the duality gap of their current point.
    left = (~converged).nonzero().squeeze(1)
    if left.numel():
        mu = torch.bmm(p[left].unsqueeze(1), z[left]).squeeze(1)
        g = theta[left] - mu
        gap[left] = (g * (_call_oracle(oracle, g) - mu)).sum(1)
    return _Solution(z, p, mask, gap, converged, iterations)


def _compact(z: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
    """Support structures first (slot order kept), padded with copies of the first one.

    Returns ``(structures (n, A, D), support (n, A) bool)``.
    """
    support = p > 0
    size = max(int(support.sum(1).max()), 1) if support.shape[0] else 1
    order = torch.sort((~support).to(torch.uint8), dim=1, stable=True).indices[:, :size]
    support = support.gather(1, order)
    z = z.gather(1, order.unsqueeze(2).expand(-1, -1, z.shape[2]))
    z = torch.where(support.unsqueeze(2), z, z[:, :1])
    return z, support


# -- differentiation ------------------------------------------------------------------------------


class SparseMAPFunction(torch.autograd.Function):
    """Weights and ``mu`` of SparseMAP on a fixed support, differentiable in ``theta``.

    Forward solves the KKT system of the support (use :func:`sparsemap`, which finds the
    support first): ``p = argmin ||M^T p - theta||^2`` subject to ``sum(p) = 1``, with ``M`` the
    support structures, and ``mu = M^T p``. Backward: ``dtheta = M^T S (dp + M dmu)`` with ``S``
    the top-left block of the inverse bordered KKT matrix.

    Inputs: ``theta (n, D)``, ``structures (n, A, D)`` (0/1, float), ``support (n, A)`` (bool;
    slots outside get weight 0). Returns ``(weights (n, A), mu (n, D))`` in theta's dtype.
    """

    @staticmethod
    def forward(theta: Tensor, structures: Tensor, support: Tensor) -> tuple[Tensor, Tensor]:
        th = theta.double()
        z = structures.double()
        gram = torch.bmm(z, z.transpose(1, 2))
        p = _kkt_solve(gram, support, _kkt_rhs(z, support, th))[:, : z.shape[1], 0] * support
        mu = torch.bmm(p.unsqueeze(1), z).squeeze(1)
        return p.to(theta.dtype), mu.to(theta.dtype)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        theta, structures, support = inputs
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(structures, support)
        ctx.theta_dtype = theta.dtype

    @staticmethod
    def backward(
        ctx: Any, grad_p: Tensor | None, grad_mu: Tensor | None
    ) -> tuple[Tensor | None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None
        structures, support = ctx.saved_tensors
        z = structures.double()
        n, k, _ = z.shape
        v = z.new_zeros(n, k)
        if grad_p is not None:
            v = v + grad_p.double()
        if grad_mu is not None:
            v = v + torch.bmm(z, grad_mu.double().unsqueeze(2)).squeeze(2)
        v = v * support
        rhs = torch.cat([v, v.new_zeros(n, 1)], 1).unsqueeze(2)
        gram = torch.bmm(z, z.transpose(1, 2))
        s_v = _kkt_solve(gram, support, rhs)[:, :k, 0] * support
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
    max_active = d + 1 if max_active is None else _check_count(max_active, "max_active", 1)
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, got {type(strict).__name__}")
    batch = theta.shape[:-1]
    flat = theta.reshape(-1, d)
    n = flat.shape[0]
    warm = None if warm_start is None else _warm_arrays(warm_start, n, d, max_active)
    with torch.no_grad():
        sol = _active_set(flat.detach().double(), oracle, max_iter, tol, max_active, warm)
        structures, support = _compact(sol.z, sol.p)
    compute = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
    weights, mu = _apply(SparseMAPFunction, compute, structures, support)
    if strict and not bool(sol.converged.all()):
        bad = int((~sol.converged).sum())
        raise RuntimeError(
            f"sparsemap did not converge on {bad} of {n} rows "
            f"(largest gap {float(sol.gap.max()):.3g} > tol {tol:g}); raise max_iter"
        )
    a = structures.shape[1]
    return SparseMAPResult(
        structures=structures.to(theta.dtype).reshape(*batch, a, d),
        weights=weights.to(theta.dtype).reshape(*batch, a),
        mu=mu.to(theta.dtype).reshape(*batch, d),
        gap=sol.gap.reshape(batch),
        converged=sol.converged.reshape(batch),
        iterations=sol.iterations.reshape(batch),
    )
