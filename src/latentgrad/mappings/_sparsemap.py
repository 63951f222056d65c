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
and adds it unless the duality gap ``<theta - mu, z - mu>`` is below the tolerance. A final
face-identification phase (exact oracle directions, refined solves) admits the structures of
tiny weight that the solution still needs, so that the support spans the optimal face and the
Jacobian is that of the projection; probes of the oracle orthogonal to the support's affine
hull then add a face dimension that it still misses by rounding. Rows that finished leave the
batch, so the loop runs over solver iterations only. On the CPU, where numba is installed (the
``fast`` extra), oracles with a compiled kernel (arborescences, tag sequences, bit-vectors) run
the same active set row by row as compiled loops (:mod:`latentgrad._native`): the per-operation
overhead of batched PyTorch, not arithmetic, sets the time of the batched loop at these sizes.
Everything is computed in float64 internally. Oracles that know the solution in closed form (free bit-vectors: the clamp, as a nested decomposition; budgeted
bit-vectors: the capped-simplex projection, by systematic sampling) skip the iterations.

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

from latentgrad import _native
from latentgrad._validation import check_int, check_nonnegative, check_part_mask
from latentgrad.mappings._shared import apply_function as _apply
from latentgrad.mappings._shared import support_slots

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


def _check_penalized(penalized: object, d: int, device: torch.device) -> Tensor | None:
    """The penalty of :func:`sparsemap` as 0/1 float64 ``(D,)``, or None for every part."""
    if penalized is None:
        return None
    mask = check_part_mask(penalized, "penalized", d)
    if bool(mask.all()):
        return None  # the ordinary SparseMAP
    return mask.to(device=device, dtype=torch.float64)


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


class _Settings(NamedTuple):
    """The solver's settings, as :func:`sparsemap` checked them."""

    max_iter: int
    tol: float
    max_active: int
    identify_face: bool
    #: The parts in the quadratic term, 0/1 float64 ``(D,)``; ``None``: all of them.
    penalty: Tensor | None = None


def _penalize(x: Tensor, penalty: Tensor | None) -> Tensor:
    """``x`` with its unpenalized parts (last dimension) set to 0."""
    return x if penalty is None else x * penalty


class _Solution(NamedTuple):
    z: Tensor  # (n, K, D) float64
    p: Tensor  # (n, K) float64, 0 outside the active set
    mask: Tensor  # (n, K) bool
    iterations: Tensor  # (n,)
    parts: Tensor  # (n, K, k) long: the slots as lists of their parts (see _parts), or dense


def _grow(t: Tensor, k: int, fill: float | int | bool = 0) -> Tensor:
    """``t`` with its dimension 1 padded with ``fill`` (default 0 or ``False``) to ``k``."""
    out = t.new_full((t.shape[0], k, *t.shape[2:]), fill)
    out[:, : t.shape[1]] = t
    return out


def _grow_square(t: Tensor, k: int) -> Tensor:
    """``(n, K, K)`` matrices zero-padded to ``(n, k, k)``."""
    out = t.new_zeros(t.shape[0], k, k)
    out[:, : t.shape[1], : t.shape[2]] = t
    return out


def _grow_inverse(kinv: Tensor, k: int) -> Tensor:
    """The inverse KKT matrices of :func:`_kkt_inverse` with ``k`` slots instead of fewer.

    The new slots are inactive (identity rows and columns); the border moves to index ``k``.
    """
    n, old = kinv.shape[0], kinv.shape[1] - 1
    out = kinv.new_zeros(n, k + 1, k + 1)
    out[:, :old, :old] = kinv[:, :old, :old]  # (slices: several times faster than an index)
    out[:, :old, k] = kinv[:, :old, old]
    out[:, k, :old] = kinv[:, old, :old]
    out[:, k, k] = kinv[:, old, old]
    out[:, old:k, old:k].diagonal(dim1=1, dim2=2).fill_(1.0)
    return out


def _next_capacity(cap: int, max_active: int) -> int:
    """Active-set capacity after ``cap`` (grown by half)."""
    return min(max_active, cap + max(8, cap // 2))


def _native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16)."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except Exception:  # a private torch function: any failure means no
        return False


#: Whether :func:`_gram` may multiply in bfloat16 on the CPU (decided once per process).
_BF16_GRAM = _native_bfloat16()


def _gram(z: Tensor) -> Tensor:
    """The Gram matrices ``z z^T`` of 0/1 slots ``z`` ``(n, K, D)``, float64 ``(n, K, K)``.

    Computed in float32, which is exact here (integer sums below ``2**24``) and several times
    faster than float64 on the CPU. Where the CPU has bfloat16 arithmetic and no structure has
    more than 256 parts, in bfloat16, about 6 times faster again and still exact: the products
    are 0 or 1, the sums accumulate in float32, and every entry is a count of shared parts, at
    most 256, which bfloat16's 8-bit significand holds exactly.
    """
    if _BF16_GRAM and z.device.type == "cpu" and z.numel() and float(z.sum(-1).amax()) <= 256:
        zb = z.to(torch.bfloat16)
        return torch.bmm(zb, zb.transpose(1, 2)).double()
    z32 = z.float()
    return torch.bmm(z32, z32.transpose(1, 2)).double()


def _kkt_decompose(gram: Tensor, mask: Tensor, decompose: Callable[..., Any]) -> list[Tensor]:
    """``decompose`` (a ``torch.linalg.*_ex`` function) of the KKT matrices of Gram matrices.

    Returns its outputs without the trailing ``info``. Rows where the matrix is singular (never
    in exact arithmetic) are decomposed again with a tiny ridge on the Gram matrix.
    """
    *out, info = decompose(_kkt_matrix(gram, mask))
    bad = (info != 0).nonzero().squeeze(1)
    if bad.numel():
        *fixed, info_bad = decompose(_kkt_matrix(gram[bad], mask[bad], _RIDGE))
        if bool((info_bad != 0).any()):
            raise RuntimeError("singular KKT system even with a ridge")
        for t, f in zip(out, fixed, strict=True):
            t[bad] = f
    return out


def _kkt_inverse(gram: Tensor, mask: Tensor) -> Tensor:
    """The inverse of the bordered KKT matrix of :func:`_kkt_matrix`, ``(n, K+1, K+1)``."""
    (kinv,) = _kkt_decompose(gram, mask, torch.linalg.inv_ex)
    return kinv


# -- structures as lists of their parts ----------------------------------------------------------
#
# A structure has few parts among D (an arborescence n - 1 of n^2, a tag sequence 2L - 1 of
# L K + (L - 1) K^2), so the solver keeps each slot as the indices of its parts, padded with the
# index D of a spare zero column: products with all slots then touch O(K * parts) numbers per
# row instead of O(K * D). Wide structures (bit-vectors: about half of D are ones) are cheaper
# kept dense: the active set then holds the 0/1 slots ``(n, K, D)`` in the scores' dtype, and the
# functions below take either form (floating point: dense; long: part lists).

#: The active set keeps its slots dense when its first structures have at least this fraction
#: of ``D`` parts (a batched product with dense slots costs about as much as a gather over a
#: quarter of them).
_DENSE_WIDTH = 0.25


def _slots(z: Tensor, k: int, dense: bool) -> Tensor:
    """0/1 rows ``z`` ``(m, D)`` as slots: themselves (``dense``, in float64) or their part lists
    at least ``k`` wide (:func:`_parts`)."""
    return z.to(torch.float64) if dense else _parts(z, k)


def _empty(idx: Tensor, d: int) -> float | int:
    """What pads slots ``idx``: 0 in dense slots, the spare index ``d`` in part lists."""
    return 0.0 if idx.is_floating_point() else d


def _parts(z: Tensor, k: int = 1) -> Tensor:
    """The indices of the ones of 0/1 rows ``z`` ``(m, D)``, long ``(m, k')`` padded with ``D``.

    ``k'`` is the largest count of ones, at least ``k``; a row keeps the order of its indices.
    """
    m, d = z.shape
    rows, cols = (z != 0).nonzero(as_tuple=True)
    counts = torch.bincount(rows, minlength=m)
    width = max(k, int(counts.max()) if m else 0)
    start = counts.cumsum(0) - counts
    pos = torch.arange(rows.shape[0], device=z.device) - start[rows]
    out = torch.full((m, width), d, dtype=torch.long, device=z.device)
    out[rows, pos] = cols
    return out


def _widen(idx: Tensor, k: int, d: int) -> Tensor:
    """Part lists ``(..., k0)`` padded with ``d`` to ``(..., k)`` (dense slots as they are)."""
    if idx.shape[-1] >= k or idx.is_floating_point():
        return idx
    pad = idx.new_full((*idx.shape[:-1], k - idx.shape[-1]), d)
    return torch.cat([idx, pad], -1)


def _slot_scores(x: Tensor, idx: Tensor) -> Tensor:
    """``<x, z_a>`` for the slots ``idx`` ``(n, K, k)`` of rows ``x`` ``(n, D)``, ``(n, K)``."""
    if idx.is_floating_point():
        return torch.bmm(idx, x.unsqueeze(2)).squeeze(2)
    n, cap, k = idx.shape
    padded = torch.cat([x, x.new_zeros(n, 1)], 1)
    return padded.gather(1, idx.reshape(n, cap * k)).reshape(n, cap, k).sum(2)


def _combine(p: Tensor, idx: Tensor, d: int) -> Tensor:
    """``sum_a p_a z_a`` for weights ``p`` ``(n, K)`` and slots ``idx`` ``(n, K, k)``, ``(n, D)``."""
    if idx.is_floating_point():
        return torch.bmm(p.unsqueeze(1), idx).squeeze(1)
    n, cap, k = idx.shape
    out = p.new_zeros(n, d + 1)
    out.scatter_add_(1, idx.reshape(n, cap * k), p.unsqueeze(2).expand(n, cap, k).reshape(n, -1))
    return out[:, :d]


def _dense(idx: Tensor, d: int, dtype: torch.dtype) -> Tensor:
    """The 0/1 slots ``(n, K, D)`` of part lists ``idx`` ``(n, K, k)``."""
    n, cap, _ = idx.shape
    out = torch.zeros(n, cap, d + 1, dtype=dtype, device=idx.device)
    return out.scatter_(2, idx, 1.0)[:, :, :d]


#: The inverse KKT matrices, updated by rank-one terms as structures enter and leave, are
#: recomputed from scratch this often (rounding errors of the updates then never pile up).
_REFRESH = 32

#: An entering structure whose squared distance to the affine hull of the active set (the Schur
#: complement of its KKT border) is below this is affinely dependent on the active set: it is not
#: added (at the minimizer on the active set its duality gap is 0 in exact arithmetic).
_DEPENDENT = 1e-9

#: Weights of the equality-constrained minimizer above ``-_NEGATIVE`` count as 0, not as a reason
#: to step back to the boundary: whether a weight that is 0 in exact arithmetic comes out as
#: ``+1e-17`` or ``-1e-17`` then never changes the solver's path.
_NEGATIVE = 1e-12

#: The duality gap is only known to rounding: ``_FLOOR * sqrt(D) * (1 + max|theta|)^2`` per row.
#: A gap below it means the row is solved exactly (to rounding); the face-identification phase
#: stops there.
_FLOOR = 1e-15


def gap_floor(theta: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """The rounding level of the duality gap of each row of ``theta`` ``(n, D)``, ``(n,)``, for
    a point ``mu`` computed in ``dtype`` (float64 by default, as the solver works; a float32
    ``mu`` is only known to float32 rounding, about ``2^29`` times coarser)."""
    scale = theta.abs().amax(1) + 1.0
    unit = _FLOOR * torch.finfo(dtype).eps / torch.finfo(torch.float64).eps
    return unit * math.sqrt(theta.shape[1]) * scale * scale


def _grow_border(v: Tensor, k: int) -> Tensor:
    """Bordered vectors ``(n, K+1)`` (border last) with ``k`` slots instead of ``K``."""
    out = v.new_zeros(v.shape[0], k + 1)
    out[:, : v.shape[1] - 1] = v[:, :-1]
    out[:, k] = v[:, -1]
    return out


#: Rounds of iterative refinement of the minimizer on the active set in the face phase.
_REFINE = 1


def _bordered_solve(top: Tensor, kinv: Tensor) -> Tensor:
    """``[top; 1]^T K^-1`` for rows ``top`` ``(n, K)`` and inverse KKT matrices ``kinv``,
    ``(n, K+1)`` (the inverse is symmetric; a product with a vector on the left is the fast
    one)."""
    rhs = torch.cat([top, torch.ones_like(top[:, :1])], 1).unsqueeze(1)
    return torch.bmm(rhs, kinv)[:, 0]


def _refine(sol: Tensor, kinv: Tensor, gram: Tensor, score: Tensor, mask: Tensor) -> Tensor:
    """The minimizer on the active set improved by iterative refinement of ``sol = [p; nu]``,
    the solve with the inverse ``kinv``.

    The face phase compares duality gaps far below the error of a solve with an inverse that
    rank-one updates have kept (or that an ill-conditioned KKT matrix gives); each round solves
    for the residual of the KKT system, ``[M theta - G p - nu; 1 - sum(p)]``, computed with the
    slots' Gram matrix ``G = M P M^T`` (``P`` the penalty) and scores ``score = M theta``, which
    the solver keeps exactly: the Gram entries are counts of shared (penalized) parts.
    """
    m = mask.to(sol.dtype)
    for _ in range(_REFINE):
        p, nu = sol[:, :-1] * m, sol[:, -1:]
        top = (score - torch.bmm(p.unsqueeze(1), gram).squeeze(1) - nu) * m
        res = torch.cat([top, 1.0 - p.sum(1, keepdim=True)], 1)
        sol = sol + torch.bmm(res.unsqueeze(1), kinv).squeeze(1)
    return sol[:, :-1]


def _active_set(
    theta: Tensor, oracle: Oracle, settings: _Settings, warm: tuple[Tensor, Tensor] | None
) -> _Solution:
    """Batched active-set SparseMAP on float64 scores ``theta`` of shape ``(n, D)``.

    Every row keeps its active structures in ``cap`` slots (the indices of their parts, see
    :func:`_parts`, weights ``p``, ``mask``), their scores ``<z, theta>``, their Gram matrix
    (a row and a column written as a structure enters) and the inverse of its bordered KKT
    matrix. An iteration multiplies by that inverse (the equality-constrained minimizer on the
    active set), steps back to the simplex boundary and drops the blocking structure where a
    weight would turn negative (and drops weights that vanish), and otherwise calls the oracle
    (on the rows that dropped nothing) and adds its structure unless the duality gap is small
    enough or the structure is affinely dependent on the active set. Entering and leaving
    structures change the inverse by a rank-one term (the bordering formulas), so an iteration
    costs ``O(cap^2 + cap * parts)`` per row instead of a factorization or a product with
    ``(cap, D)`` matrices; the periodic refresh of the inverse reuses the kept Gram matrix.

    The oracle first sees ``theta - mu`` on a coarse grid (stable paths at ties); a row is done
    with that phase at a gap of ``tol`` or when the oracle's structure lies in the affine hull
    of the active set. With ``identify_face`` it then goes on in the face-identification phase:
    the oracle sees ``theta - mu`` itself, the minimizer on the active set is refined, and the
    row stops only at the rounding floor of the gap (:func:`gap_floor`) or on a dependent
    structure. The structures of the optimal face that the exact solution needs, however small
    their weights, have then entered, so the active set spans the face that holds ``mu*`` and
    the KKT system on it has the Jacobian of the projection.

    Rows that finish stay in the working arrays (masked) until half of them have finished;
    then the finished ones are written out and the rest compacted, so gathers stay rare.
    """
    max_iter, tol, max_active, identify_face, pen = settings
    n, d = theta.shape
    dev = theta.device
    if warm is None:
        cap = min(max_active, 8)
        z0 = _call_oracle(oracle, theta)
        dense = bool((z0 != 0).sum(1).max() >= _DENSE_WIDTH * d) if n else False
        idx = _slots(z0, 1, dense).unsqueeze(1)
        idx = _grow(idx, cap, _empty(idx, d))
        p = theta.new_zeros(n, cap)
        p[:, 0] = 1.0
        gram = theta.new_zeros(n, cap, cap)
        if pen is None:
            gram[:, 0, 0] = (z0 != 0).sum(1).to(theta.dtype)
        else:
            gram[:, 0, 0] = _slot_scores(pen.expand(n, d), idx[:, :1])[:, 0]
    else:
        z, p = warm
        cap = min(max_active, max(z.shape[1], 8))
        gram = _grow_square(_gram(_penalize(z, pen)), cap)
        dense = bool((z != 0).sum(2).max() >= _DENSE_WIDTH * d) if z.numel() else False
        idx = _slots(z.reshape(-1, d), 1, dense).reshape(n, z.shape[1], -1)
        idx = _grow(idx, cap, _empty(idx, d))
        p = _grow(p, cap)
    pad = _empty(idx, d)
    mask = p > 0
    # Outputs for all rows; the working arrays below hold the rows still being solved.
    out_idx, out_p, out_mask = idx, p, mask
    iterations = torch.zeros(n, dtype=torch.long, device=dev)
    rows = torch.arange(n, device=dev)
    th = theta
    grid = (theta.abs().amax(1, keepdim=True) + 1.0).mul_(_GRID)
    floor = gap_floor(theta)
    loose = floor.clamp_min(tol)  # a row whose gap is below this has converged
    fine = torch.zeros(n, dtype=torch.bool, device=dev)  # in the face-identification phase
    score = _slot_scores(theta, idx)
    w_iter = iterations.clone()
    live = torch.ones(n, dtype=torch.bool, device=dev)
    kinv = _kkt_inverse(gram, mask)
    since_refresh = 0

    def write_back(which: Tensor) -> None:
        nonlocal out_idx, out_p, out_mask
        if out_idx.shape[1] < cap or out_idx.shape[2] < idx.shape[2]:
            out_idx = _widen(_grow(out_idx, cap, pad), idx.shape[2], d)
            out_p, out_mask = _grow(out_p, cap), _grow(out_mask, cap)
        at = rows[which]
        out_idx[at] = _widen(idx[which], out_idx.shape[2], d)
        out_p[at], out_mask[at] = p[which], mask[which]
        iterations[at] = w_iter[which]

    for _ in range(max_iter):
        w = rows.numel()
        if w == 0:
            break
        if since_refresh >= _REFRESH:
            kinv, since_refresh = _kkt_inverse(gram, mask), 0
        since_refresh += 1
        ar = torch.arange(w, device=dev)
        # The minimizer on the active set, then a step towards it that stays feasible.
        sol = _bordered_solve(score * mask, kinv)  # [p; nu]
        p_hat = sol[:, :cap]
        # Rows in the face phase refine it. Gathering their slots and inverses costs about
        # what refining every row does, so with at least half of the rows in that phase all
        # are refined and the others keep their solve.
        in_face = int(fine.sum())
        if 2 * in_face >= w:
            refined = _refine(sol, kinv, gram, score, mask)
            p_hat = refined if in_face == w else torch.where(fine.unsqueeze(1), refined, p_hat)
        elif in_face:
            at = fine.nonzero().squeeze(1)
            p_hat[at] = _refine(sol[at], kinv[at], gram[at], score[at], mask[at])
        step = p_hat - p
        shrinking = mask & (step < 0)
        infeasible = (mask & (p_hat < -_NEGATIVE)).any(1) & live
        ratio = torch.where(shrinking, p / (-step).clamp_min(1e-300), math.inf)
        alpha, block = ratio.min(1)
        alpha = alpha.clamp(max=1.0).unsqueeze(1)
        p_new = torch.where(infeasible.unsqueeze(1), p + alpha * step, p_hat)
        # The blocking structure leaves, and so does any whose weight vanished (to rounding).
        blocked = torch.nn.functional.one_hot(block, cap).bool() & infeasible.unsqueeze(1)
        blocked = (blocked | (mask & (p_new <= _DROP))) & live.unsqueeze(1)
        new_mask = mask & ~blocked
        shrunk = blocked.any(1)
        p_new = p_new.clamp_min(0.0) * new_mask
        p_new = p_new / p_new.sum(1, keepdim=True)
        # Where nothing left, ask the oracle for the best structure in direction theta - mu.
        mu = _combine(p_new, idx, d)
        g = th - _penalize(mu, pen)  # the gradient of <theta, mu> - |P mu|^2 / 2
        # The oracle sees g rounded to a grid far coarser than rounding noise: entries that tie
        # (or vanish) in exact arithmetic then tie exactly, so the oracle's deterministic
        # tie-breaking, not noise, picks among them, and the solver's path and final support
        # are stable under tiny changes of theta (the found structure is optimal for g up to
        # D times the grid step).
        # Rows in the face-identification phase see g itself: the coarse grid would hide the
        # reduced costs of structures of tiny weight.
        g_round = torch.where(fine.unsqueeze(1), g, torch.round(g / grid) * grid)
        # Only rows at the minimizer on their active set ask the oracle (a row that dropped a
        # structure has its next minimizer to find first).
        settled = live & ~shrunk
        if bool(settled.all()):
            z_new = _call_oracle(oracle, g_round)
        else:
            at = settled.nonzero().squeeze(1)
            z_new = torch.zeros_like(g)
            if at.numel():
                z_new[at] = _call_oracle(oracle, g_round[at])
        gap_i = (g * (z_new - mu)).sum(1)
        # On the grid a row stops at gap <= tol; in the face phase at the rounding floor.
        small = gap_i <= torch.where(fine, floor, loose)
        candidate = settled & ~small
        # The entering structure's border b = [M z; 1], u = K^-1 b, and its Schur complement:
        # its squared distance to the affine hull of the active set.
        z_pen = _penalize(z_new, pen)
        inner = _slot_scores(z_pen, idx)
        size = z_pen.sum(1)
        b = torch.cat([inner * new_mask, torch.ones_like(inner[:, :1])], 1)
        b = b * candidate.unsqueeze(1)
        u = torch.bmm(b.unsqueeze(1), kinv).squeeze(1)
        schur = size - (b * u).sum(1)
        # A structure in the affine hull of the active set has gap 0 at the minimizer on it (in
        # exact arithmetic): nothing better is in sight, the row is done with this phase.
        dependent = candidate & (schur <= _DEPENDENT)
        # In the face phase a structure would enter with weight gap / schur: one at rounding
        # level would leave again at once (and come back, forever), so it ends the phase.
        dependent = dependent | (candidate & fine & (gap_i <= _DROP * schur))
        pivot = torch.zeros_like(dependent)
        if pen is not None:
            # With parts outside the penalty, a structure whose penalized parts lie in the
            # affine hull of the active set's (P z = sum_a c_a P z_a, sum c = 1) can still
            # improve the objective, by sum_a c_a <theta, z_a> - <theta, z> < 0 per unit of
            # weight moved onto it: then it replaces the structure that a ratio test picks.
            c = u[:, :cap] * new_mask
            improve = (z_new * th).sum(1) - (c * score).sum(1)
            pivot = dependent & (schur <= _DEPENDENT) & (improve > torch.where(fine, floor, loose))
            dependent = dependent & ~pivot
        add = candidate & ~dependent & ~pivot
        done = settled & (small | dependent)
        if identify_face:
            # A row done on the grid starts the face-identification phase instead.
            finish = done & fine
            fine = fine | done
            done = finish
        count = new_mask.sum(1)
        full = add & (count >= cap)
        if bool(full.any()):
            if cap < max_active:
                cap = _next_capacity(cap, max_active)
                p_new, new_mask, mask = (_grow(t, cap) for t in (p_new, new_mask, mask))
                idx, inner, score = _grow(idx, cap, pad), _grow(inner, cap), _grow(score, cap)
                kinv, gram = _grow_inverse(kinv, cap), _grow_square(gram, cap)
                b, u = _grow_border(b, cap), _grow_border(u, cap)
            else:
                live = live & ~full
                add = add & ~full
        # Rank-one updates of the inverse: a leaving slot j (K^-1 = [[E, f], [f^T, h]] with j
        # last becomes E - f f^T / h) and an entering one (border b, Schur complement s).
        # A row never gains and loses a structure in the same iteration.
        left_slots = mask & ~new_mask
        dropped = left_slots.sum(1)
        single = dropped == 1
        refresh = bool((dropped > 1).any())
        free_slot = (~new_mask).to(torch.uint8).argmax(1)
        j = torch.where(add, free_slot, left_slots.to(torch.uint8).argmax(1))
        if bool(pivot.any()):
            # the pivot: weight t moves onto z (into the slot that leaves), t c off the others
            c = _grow(c, cap)  # (other rows may have grown the slots since)
            ratio = torch.where(new_mask & (c > _NEGATIVE), p_new / c.clamp_min(1e-300), math.inf)
            t, out_slot = ratio.min(1)
            t = torch.where(pivot, t, 0.0)
            p_new = (p_new - t.unsqueeze(1) * c).clamp_min(0.0) * new_mask
            p_new = p_new.scatter_add(1, out_slot.unsqueeze(1), t.unsqueeze(1))
            p_new = torch.where(pivot.unsqueeze(1), p_new / p_new.sum(1, keepdim=True), p_new)
            j = torch.where(pivot, out_slot, j)
            refresh = True  # (a swap: the inverse is computed again)
        col = kinv[ar, j]
        h = col.gather(1, j.unsqueeze(1))
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
        local = (add | pivot).nonzero().squeeze(1)
        if local.numel():
            slot = j[local]
            z_add = z_new[local]
            parts = _slots(z_add, idx.shape[2], dense)
            if parts.shape[1] > idx.shape[2]:
                idx = _widen(idx, parts.shape[1], d)
            idx[local, slot] = parts
            new_mask[local, slot] = True
            score[local, slot] = (z_add * th[local]).sum(1)
            # The entering slot's row and column of the Gram matrix (inactive slots' entries
            # are never read: the KKT matrix masks them, and a slot that enters rewrites them).
            gram[local, slot] = inner[local]
            gram[local, :, slot] = inner[local]
            gram[local, slot, slot] = size[local]
        p, mask = p_new, new_mask
        if refresh:
            kinv, since_refresh = _kkt_inverse(gram, mask), 0
        w_iter += live
        live = live & ~done
        remaining = int(live.sum())
        if remaining <= w // 2:
            write_back(~live)
            keep = live.nonzero().squeeze(1)
            rows, th, grid, idx, p, mask = (
                rows[keep],
                th[keep],
                grid[keep],
                idx[keep],
                p[keep],
                mask[keep],
            )
            floor, loose, fine = floor[keep], loose[keep], fine[keep]
            score, kinv, live, gram = score[keep], kinv[keep], live[keep], gram[keep]
            w_iter = w_iter[keep]
    if rows.numel():
        write_back(torch.ones_like(live))
    if dense:  # (the dense slots serve as the parts too: the helpers take either form)
        return _Solution(out_idx.to(theta.dtype), out_p, out_mask, iterations, out_idx)
    return _Solution(_dense(out_idx, d, theta.dtype), out_p, out_mask, iterations, out_idx)


#: Probes of the optimal face: the oracle sees ``theta - mu +- _PROBE (1 + max|theta|) r`` for a
#: unit direction ``r`` orthogonal to the support's affine hull.
_PROBE = 1e-9

#: Rounds of probing (each can add one dimension to a row's support).
_PROBE_ROUNDS = 2

#: A probed structure whose squared distance to the support's affine hull is above this lies
#: outside it (distances between 0/1 vectors and such hulls are far larger or exactly 0).
_OUTSIDE = 1e-6


def _hull_coordinates(y: Tensor, idx: Tensor, m: Tensor, kinv: Tensor) -> tuple[Tensor, Tensor]:
    """Barycentric coordinates ``(n, K)`` of the projection of ``y`` ``(n, D)`` onto the affine
    hull of the slots ``idx`` (see :func:`_parts`) with mask ``m`` (float) and inverse KKT
    matrices ``kinv``, and ``y`` less that projection."""
    c = _bordered_solve(_slot_scores(y, idx) * m, kinv)[:, : idx.shape[1]] * m
    return c, y - _combine(c, idx, y.shape[1])


def _trim(parts: Tensor, d: int) -> Tensor:
    """Part lists ``(..., k)`` (padded with ``d``) cut to the largest count of parts (at least 1),
    the width :func:`_parts` gives the same structures, so that sums over them add in the same
    order."""
    if parts.is_floating_point():  # dense slots
        return parts
    width = max(1, int((parts < d).sum(-1).max())) if parts.numel() else 1
    return parts[..., :width]


def _complete_face(
    theta: Tensor, oracle: Oracle, z: Tensor, parts: Tensor, support: Tensor, max_active: int
) -> tuple[Tensor, Tensor]:
    """The support ``(z, support)`` (true slots first) completed to span the optimal face.

    ``parts`` holds the slots of ``z`` as part lists (see :func:`_parts`), which the solver
    kept, so that they need not be found again in the dense ``(n, K, D)`` structures (or, for
    wide structures, the dense slots themselves, see :func:`_slots`).

    After the face-identification phase a row can still miss a dimension of the optimal face
    ``F``: when ``mu*`` lies within rounding of the affine hull of a simplex of ``F``'s
    structures, the structure that would complete it has a duality gap (and weight) below
    rounding, though the Jacobian needs its direction. The oracle at ``theta - mu +- eps r``,
    with ``r`` orthogonal to the support's affine hull, returns structures of ``F`` on both
    sides of that hull; the hull cuts through ``F`` (the missing dimension is real, not a face of
    ``F`` beyond ``mu*`` as at tied scores) exactly when the two leave the hull in opposite
    directions. Then both enter and one support structure leaves by a ratio test on the affine
    dependency between them, so the weights stay positive and the support spans one more
    dimension of ``F``. The direction ``r`` comes from a fixed pseudo-random vector, so a row's
    result does not depend on the other rows.
    """
    n, _, d = z.shape
    dense = parts is z  # dense slots that are the structures: updated with them
    directions = _probe_directions(d, theta.dtype).to(theta.device)
    floor = 4.0 * gap_floor(theta)
    eps = _PROBE * (theta.abs().amax(1, keepdim=True) + 1.0)
    live = torch.arange(n, device=theta.device)
    for x in directions:
        if live.numel() == 0:
            break
        th, zs, sup = theta[live], z.index_select(0, live), support[live]
        w, k = th.shape[0], zs.shape[1]
        m = sup.to(zs.dtype)
        gram = _gram(zs)
        kinv = _kkt_inverse(gram, sup)
        ones = th.new_ones(w, 1)
        slots = zs if dense else _trim(parts.index_select(0, live), d)
        score = _slot_scores(th, slots) * m
        p = _refine(_bordered_solve(score, kinv), kinv, gram, score, sup) * m
        mu = _combine(p, slots, d)
        g = th - mu
        # r: x less its projection onto the directions of the hull (M^T S M x).
        mx = _slot_scores(x.expand(w, d), slots) * m
        coef = torch.bmm(torch.cat([mx, 0.0 * ones], 1).unsqueeze(1), kinv)
        r = x - _combine(coef[:, 0, :k] * m, slots, d)
        r = r / r.norm(dim=1, keepdim=True).clamp_min(1e-300)
        step = eps[live] * r
        found = _call_oracle(oracle, torch.cat([g + step, g - step]))

        z_plus, z_minus = found[:w], found[w:]
        c_plus, r_plus = _hull_coordinates(z_plus, slots, m, kinv)
        c_minus, r_minus = _hull_coordinates(z_minus, slots, m, kinv)
        d_plus, d_minus = (r_plus * r_plus).sum(1), (r_minus * r_minus).sum(1)
        gamma = -(r_plus * r_minus).sum(1) / d_minus.clamp_min(1e-300)
        off = r_plus + gamma.unsqueeze(1) * r_minus
        near = floor[live]
        ok = (
            (d_plus > _OUTSIDE)
            & (d_minus > _OUTSIDE)
            & (gamma > 0)
            & ((off * off).sum(1) <= 1e-10 * d_plus)
            & ((g * (z_plus - mu)).sum(1) >= -near)
            & ((g * (z_minus - mu)).sum(1) >= -near)
            & (sup.sum(1) < max_active)
        )
        if not bool(ok.any()):
            break
        # (z_plus + gamma z_minus) / (1 + gamma) lies in the hull at coordinates c_bar: moving
        # weight onto z_plus and z_minus along that dependency, the first support structure
        # whose weight reaches 0 leaves.
        c_bar = (c_plus + gamma.unsqueeze(1) * c_minus) / (1.0 + gamma).unsqueeze(1)
        ratio = torch.where(sup & (c_bar > 0), p.clamp_min(0.0) / c_bar, math.inf)
        leave = ratio.argmin(1)
        count = sup.sum(1)
        idx = ok.nonzero().squeeze(1)
        if int(count[idx].max()) >= z.shape[1]:
            z, support = _grow(z, z.shape[1] + 1), _grow(support, support.shape[1] + 1)
            parts = z if dense else _grow(parts, parts.shape[1] + 1, _empty(parts, d))
        rows = live[idx]
        z[rows, leave[idx]] = z_plus[idx]
        z[rows, count[idx]] = z_minus[idx]
        support[rows, count[idx]] = True
        if not dense:
            entering = torch.cat([z_plus[idx], z_minus[idx]])
            new_parts = _slots(entering, parts.shape[2], parts.is_floating_point())
            parts = _widen(parts, new_parts.shape[1], d)
            parts[rows, leave[idx]] = new_parts[: idx.numel()]
            parts[rows, count[idx]] = new_parts[idx.numel() :]
        live = rows
    return z, support


def _native_consts() -> Any:
    """The solver's tolerances for :func:`latentgrad._native.active_set_rows`, in its order."""
    import numpy as np

    return np.asarray(
        [_GRID, _DROP, _NEGATIVE, _DEPENDENT, _FLOOR, _RIDGE, _REFRESH, _PROBE, _OUTSIDE],
        dtype=np.float64,
    )


def _probe_directions(d: int, dtype: torch.dtype) -> Tensor:
    """The directions ``(_PROBE_ROUNDS, D)`` that :func:`_complete_face` draws, in its order."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    return torch.randn(_PROBE_ROUNDS, d, generator=gen, dtype=dtype, device="cpu")


def _native_support(
    theta: Tensor,
    spec: tuple[int, tuple[int, ...]],
    settings: _Settings,
    warm: tuple[Tensor, Tensor] | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The support of the solution (:func:`_active_set`, then :func:`_complete_face` with
    ``identify_face``) for an oracle with a compiled kernel (``spec``: its kind and sizes, from
    ``oracle._native_spec()``), row by row in :func:`latentgrad._native.active_set_rows`: the
    same phases, tolerances, updates and probes, without the per-operation overhead of batched
    PyTorch. Returns ``(structures (n, A, D), support (n, A), iterations (n,))``."""
    import numpy as np

    n, d = theta.shape
    kind, oracle_sizes = spec
    warm_np = None
    if warm is not None:
        z, p = warm
        parts = _parts(z.reshape(-1, d), int(oracle_sizes[2])).reshape(n, z.shape[1], -1)
        warm_np = (parts.numpy(), (parts < d).sum(-1).numpy(), (p * (p > 0)).numpy())
    penalty = None if settings.penalty is None else settings.penalty.cpu().numpy()
    slots, counts, iterations = _native.active_set_rows(
        theta.contiguous().numpy(),
        kind,
        np.asarray(oracle_sizes, dtype=np.int64),
        settings[:4],
        _native_consts(),
        _probe_directions(d, theta.dtype).numpy(),
        penalty,
        warm_np,
    )
    idx = torch.from_numpy(slots).to(theta.device)
    support = torch.arange(idx.shape[1], device=theta.device) < torch.from_numpy(counts).to(
        theta.device
    ).unsqueeze(1)
    return _dense(idx, d, theta.dtype), support, torch.from_numpy(iterations).to(theta.device)


def _support(
    theta: Tensor, oracle: Oracle, settings: _Settings, warm: tuple[Tensor, Tensor] | None
) -> tuple[Tensor, Tensor, Tensor]:
    """The support of SparseMAP's solution on float64 scores ``(n, D)``: the active set (and,
    with ``identify_face``, the face completion). Compiled where it can be (an oracle with a
    kernel, CPU scores, :func:`latentgrad._native.available`), batched PyTorch otherwise.
    Returns ``(structures (n, A, D), support (n, A) bool, iterations (n,))``."""
    spec = getattr(oracle, "_native_spec", None)
    if spec is not None and theta.device.type == "cpu" and _native.available():
        return _native_support(theta, spec(), settings, warm)
    sol = _active_set(theta, oracle, settings, warm)
    order, support = support_slots(sol.mask & (sol.p > _DROP))
    structures = _take_slots(sol.z, order)
    if settings.identify_face and settings.penalty is None:
        # (wide structures: the dense slots are the structures themselves)
        parts = structures if sol.parts is sol.z else _take_slots(sol.parts, order)
        structures, support = _complete_face(
            theta, oracle, structures, parts, support, settings.max_active
        )
    return structures, support, sol.iterations


def duality_gap(theta: Tensor, mu: Tensor, oracle: Oracle, penalty: Tensor | None = None) -> Tensor:
    """``max_z <theta - P mu, z - mu>`` per row (one oracle call), ``(n,)``; it bounds
    ``||P (mu - mu*)||^2`` for ``mu`` in the convex hull (``P``: the penalized parts, all by
    default)."""
    g = theta - _penalize(mu, penalty)
    return (g * (_call_oracle(oracle, g) - mu)).sum(1)


def _take_slots(t: Tensor, order: Tensor) -> Tensor:
    """The slots ``order`` ``(n, A)`` of ``t`` ``(n, K, k)``, ``(n, A, k)``."""
    return t.gather(1, order.unsqueeze(2).expand(-1, -1, t.shape[2]))


def _compact(z: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """The slots ``keep`` first (slot order kept), padded with copies of the first one.

    Returns ``(structures (n, A, D), support (n, A) bool)``.
    """
    order, support = support_slots(keep)
    return _take_slots(z, order), support


# -- differentiation ------------------------------------------------------------------------------


def _kkt_factor(z: Tensor, mask: Tensor, penalty: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """LU factors ``(LU, pivots)`` of the KKT matrices of :func:`_kkt_matrix` for slots ``z``
    (their Gram matrices over the penalized parts)."""
    lu, pivots = _kkt_decompose(_gram(_penalize(z, penalty)), mask, torch.linalg.lu_factor_ex)
    return lu, pivots


class SparseMAPFunction(torch.autograd.Function):
    """Weights and ``mu`` of SparseMAP on a fixed support, differentiable in ``theta``.

    With ``M`` the support structures as rows (``A x D``), the forward solves the
    equality-constrained least-squares problem on the support::

        p = argmin_{p : sum(p) = 1} ||M^T p - theta||^2,    mu = M^T p

    through its bordered KKT system ``[[M M^T, 1], [1^T, 0]] [p; nu] = [M theta; 1]``. When the
    support is that of SparseMAP's solution (all its structures, see :func:`sparsemap`, which
    finds it), ``mu`` is the projection of ``theta`` onto the convex hull of the structures and
    ``p`` its weights; rounding is cleaned (weights at least 0, summing to 1). The backward is
    ``dtheta = M^T S (dp + M dmu)`` with ``S`` the top-left block of the inverse KKT matrix,
    so ``dmu/dtheta`` is the orthogonal projection onto the directions of the support's affine
    hull. It factorizes the KKT matrices again, and only when ``theta`` needs a gradient.

    With a ``penalty`` (0/1 per part, ``P`` as a diagonal matrix) the quadratic term covers the
    penalized parts only: ``p = argmax_{sum(p) = 1} <theta, M^T p> - 1/2 ||P M^T p||^2``, with
    ``M P M^T`` in place of ``M M^T`` in the KKT system and in ``S``.

    Inputs: ``theta (n, D)`` (float32 or float64), ``structures (n, A, D)`` (0/1, float),
    ``support (n, A)`` (bool; slots outside get weight 0; the support structures of a row must
    be affinely independent, in the penalized parts), optionally ``penalty (D,)`` (0/1, float;
    default: every part). Returns ``(weights (n, A), mu (n, D))`` in theta's dtype, computed in
    float64. Call it through :func:`sparsemap`, which checks the arguments.
    """

    @staticmethod
    def forward(
        theta: Tensor, structures: Tensor, support: Tensor, penalty: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        z = structures.double()
        lu, pivots = _kkt_factor(z, support, penalty)
        rhs = _kkt_rhs(z, support, theta.double())
        p = torch.linalg.lu_solve(lu, pivots, rhs)[:, : z.shape[1], 0] * support
        # Rounding only: on the support of the solution the weights are positive and sum to 1
        # (the normalization's derivative vanishes on the KKT solutions, whose sum is fixed).
        p = p.clamp_min(0.0)
        p = p / p.sum(1, keepdim=True)
        mu = torch.bmm(p.unsqueeze(1), z).squeeze(1)
        return p.to(theta.dtype), mu.to(theta.dtype)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        theta, structures, support, *rest = inputs
        ctx.theta_dtype = theta.dtype
        if ctx.needs_input_grad[0]:
            ctx.penalty = rest[0] if rest else None
            ctx.save_for_backward(structures, support)

    @staticmethod
    def backward(
        ctx: Any, grad_p: Tensor | None, grad_mu: Tensor | None
    ) -> tuple[Tensor | None, None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        structures, support = ctx.saved_tensors
        z = structures.double()
        n, k, _ = z.shape
        v = z.new_zeros(n, k)
        if grad_p is not None:
            v = v + grad_p.double()
        if grad_mu is not None:
            v = v + torch.bmm(grad_mu.double().unsqueeze(1), z.transpose(1, 2)).squeeze(1)
        v = v * support
        lu, pivots = _kkt_factor(z, support, ctx.penalty)
        rhs = torch.cat([v, v.new_zeros(n, 1)], 1).unsqueeze(2)
        s_v = torch.linalg.lu_solve(lu, pivots, rhs)[:, :k, 0] * support
        grad_theta = torch.bmm(s_v.unsqueeze(1), z).squeeze(1)
        return grad_theta.to(ctx.theta_dtype), None, None, None


#: Rounds of dropping the structures whose re-solved weight vanished, then solving again.
_CLEAN_ROUNDS = 4


def _weights_on_support(
    theta: Tensor, structures: Tensor, support: Tensor, penalty: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``(structures, weights, mu)`` of :class:`SparseMAPFunction` on the support.

    A structure whose weight the final solve puts at 0 (to rounding: at most ``_DROP``) is
    taken out of the support and the rest solved again, so the support holds exactly the
    structures of positive weight (a weight that is 0 in exact arithmetic can come out as
    ``+-1e-17``, either sign, depending on the rounding).
    """
    for _ in range(_CLEAN_ROUNDS):
        weights, mu = _apply(SparseMAPFunction, theta, structures, support, penalty)
        vanished = support & (weights.detach() <= _DROP)
        if not bool(vanished.any()):
            break
        structures, support = _compact(structures, support & ~vanished)
    return structures, weights, mu


# -- public entry point ---------------------------------------------------------------------------


def sparsemap(
    theta: Tensor,
    oracle: Oracle,
    *,
    max_iter: int | None = None,
    tol: float = 1e-6,
    warm_start: SparseMAPResult | None = None,
    max_active: int | None = None,
    strict: bool = False,
    method: str = "auto",
    identify_face: bool = True,
    penalized: Tensor | None = None,
) -> SparseMAPResult:
    """SparseMAP: project ``theta`` onto the convex hull of the oracle's structures.

    Solves, independently for every row::

        mu* = argmin_{mu in conv(Z)} ||mu - theta||^2
            = argmax_{mu in conv(Z)} <theta, mu> - 1/2 ||mu||^2

    and returns ``mu*`` together with a sparse convex combination of structures
    ``mu* = sum_a weights_a structures_a``, found by a batched active-set method that only
    needs the MAP ``oracle``. The duality gap ``max_z <theta - mu, z - mu>`` is computed at the
    returned ``mu``; since ``||mu - mu*||^2 <= gap``, a row with ``gap <= tol`` is solved to
    ``sqrt(tol)`` in ``mu``. Rows that reach ``max_iter`` (or need more than ``max_active``
    structures) are reported in ``converged`` and ``gap`` rather than hidden.

    ``weights`` and ``mu`` are differentiable in ``theta`` through the KKT conditions of the
    final support; the solver itself runs without gradient. The Jacobian of ``mu`` is that of
    the projection only if the support spans the optimal face (the structures maximizing
    ``<theta - mu*, z>``) that holds ``mu*``, including structures of tiny weight. So, with
    ``identify_face`` (default), a row does not stop at ``gap <= tol``: it goes on until the
    gap is at the rounding level of float64 or the oracle's best structure lies in the affine
    hull of the support, admitting every structure of the face the solution needs. The weights
    are then solved again on the final support; a structure whose weight comes out 0 (to
    rounding) leaves it, so ``weights`` are positive on the support, 0 on padding, and sum to 1.

    Args:
        theta: scores, structure dimension last; finite (NaN and inf raise ``ValueError``).
        oracle: ``oracle(w)`` maps ``(N, D)`` scores to 0/1 indicators ``(N, D)`` of a
            maximizer of ``<w, z>`` (see :mod:`latentgrad.mappings.oracles`).
        max_iter: the largest number of iterations per row (default ``100 + 2 D``).
        tol: a row has converged when its duality gap is ``<= tol`` (a ``tol`` below the
            rounding level of the gap, about ``1e-13 sqrt(D) (1 + max|theta|)^2``, counts as
            that level).
        warm_start: a previous result for the same rows; its support is the initial active set.
        max_active: the largest active set per row (default ``D + 1``, which affinely
            independent active sets never exceed).
        strict: raise ``RuntimeError`` if some row did not converge.
        method: ``"active_set"`` runs the iterative solver; ``"auto"`` (default) first uses the
            oracle's closed form where it has one (a ``sparse_projection(theta)`` method
            returning differentiable ``(structures, weights, mu)``:
            :class:`~latentgrad.mappings.oracles.FreeBits`, the clamp, and
            :class:`~latentgrad.mappings.oracles.BudgetBits`, the capped-simplex projection)
            and ``max_active`` is not given; ``warm_start``, ``max_iter`` and ``identify_face``
            are then unused and ``iterations`` is 0.
        identify_face: run the active set to the exact face (above); ``False`` stops every
            row at ``gap <= tol``, which is faster but may leave out structures of tiny weight
            and then give a wrong Jacobian. Known limit: where the optimal face has many
            dimensions (``mu*`` inside the cube of 32 or more free bits), the active set can
            match ``mu*`` to rounding with far fewer than its dimension + 1 structures (about
            0.45 D at D = 128), the face completion adds one missing dimension at a time only
            where a single one is missing, and the Jacobian is then that of the support's
            affine hull, not of the face. The closed forms of ``"auto"`` are exact there.
        penalized: bool ``(D,)``, the parts in the quadratic term (default: all). SparseMAP
            is then ``argmax_{mu in conv(Z)} <theta, mu> - 1/2 ||P mu||^2``, ``P`` keeping
            the penalized parts, as Niculae et al. define it for structures with unary and
            higher-order parts: the others (for sequences, the transitions: the unary parts are
            :attr:`~latentgrad.mappings.oracles.SequenceOracle.unary_parts`) enter linearly.
            The active set then also swaps a structure in when its penalized parts lie in the
            affine hull of the active set's but its score improves the objective; the gap is
            ``max_z <theta - P mu, z - mu>``. Runs the active set (no closed forms), without
            the face probes (which assume every part is penalized).

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
    max_iter = 100 + 2 * d if max_iter is None else check_int(max_iter, "max_iter", minimum=1)
    tol = check_nonnegative(tol, "tol")
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, got {type(strict).__name__}")
    if not isinstance(identify_face, bool):
        raise TypeError(f"identify_face must be a bool, got {type(identify_face).__name__}")
    if method not in ("auto", "active_set"):
        raise ValueError(f"method must be 'auto' or 'active_set', got {method!r}")
    closed_form = getattr(oracle, "sparse_projection", None)
    if method == "active_set" or max_active is not None:
        closed_form = None
    max_active = d + 1 if max_active is None else check_int(max_active, "max_active", minimum=1)
    penalty = _check_penalized(penalized, d, theta.device)
    if penalty is not None:
        closed_form = None
    batch = theta.shape[:-1]
    flat = theta.reshape(-1, d)
    n = flat.shape[0]
    th = flat.detach().double()
    warm = None if warm_start is None else _warm_arrays(warm_start, n, d, max_active)
    if closed_form is None:
        with torch.no_grad():
            settings = _Settings(max_iter, tol, max_active, identify_face, penalty)
            structures, support, iterations = _support(th, oracle, settings, warm)
        compute = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
        structures, weights, mu = _weights_on_support(compute, structures, support, penalty)
    else:
        # Differentiable formulas in float64; the gap certifies them like the solver's output.
        structures, weights, mu = closed_form(flat.double())
        iterations = torch.zeros(n, dtype=torch.long, device=th.device)
    with torch.no_grad():
        # The gap of the returned point (in float64, as the solver works), never a stale one;
        # a point returned in float32 is judged at float32's rounding level.
        gap = duality_gap(th, mu.detach().double(), oracle, penalty)
        converged = gap <= gap_floor(th, mu.dtype).clamp_min(tol)
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
