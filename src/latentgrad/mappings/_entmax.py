"""1.5-entmax: a sparse mapping between softmax and sparsemax.

``entmax15(x) = argmax_{p in simplex} <p, x> + H_1.5(p)`` with the Tsallis entropy
``H_1.5(p) = (1 - sum_i p_i^1.5) / 0.75``. The solution is ``p_i = max(x_i / 2 - tau, 0)^2`` with
the threshold ``tau`` that makes ``p`` sum to one; like sparsemax it has exact zeros, but its
nonzero probabilities vary smoothly (its Jacobian is continuous).

The threshold is found exactly. Short rows get their support without sorting, from pairwise
gaps (see :func:`latentgrad.mappings._shared.gap_support`); otherwise by the sort-based
algorithm of Peters, Niculae & Martins (2019), long rows being first pruned to candidates that
provably contain the support (see :mod:`latentgrad.mappings._sparsemax`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from latentgrad._numerics import upcast
from latentgrad._validation import check_dim, check_tensor, is_meta
from latentgrad.mappings._shared import SORT_MAX as _SORT_MAX
from latentgrad.mappings._shared import (
    all_finite,
    apply_function,
    by_row_chunks,
    cast,
    centered_product,
    gap_support,
    max_abs,
    raise_bad_scores,
    reciprocals,
    scale_of_maxima,
    sorted_candidates,
    sorted_dim_outermost,
    transposed,
    unshifted_limit,
)

#: Steps that shrink the candidate set before it is sorted (one pass over ``x`` each).
_PRUNE_STEPS = 2

#: Rows at most this long get their support from pairwise gaps, without sorting (n^2 work per
#: row). On one thread it beats sorting new rows up to n = 48 at both 64 and 1024 rows.
_PAIRWISE_MAX = 48


def _threshold_from_sorted(s: Tensor) -> Tensor:
    """Threshold ``T`` of rows ``s`` sorted in decreasing order with ``s_1 = 0``.

    Solves ``sum_j max(s_j - T, 0)^2 = 4`` (that is 1.5-entmax of ``x`` with ``T = 2 tau``
    measured from the row maximum). On the top ``k`` entries the equation is the quadratic
    ``k T^2 - 2 T S1 + S2 - 4 = 0`` with smaller root ``T_k = mean_k - sqrt(4 / k - var_k)``;
    ``T_k <= s_k`` holds exactly for ``k`` up to the support size, where ``T_k <= T`` with
    equality at the support size, so the threshold is the largest ``T_k`` that passes the test.

    Shape:
        ``s``: ``(*, m)``; returns ``(*, 1)``.
    """
    inv, _ = reciprocals(s.shape[-1], s.dtype, s.device)
    mean = s.cumsum(-1).mul_(inv)
    mean_sq = s.square().cumsum(-1).mul_(inv)
    # var_k - 4/k, clamped at 0 from above: a positive value means no root, and that prefix
    # fails the test anyway because then mean_k > s_k.
    excess_var = torch.sub(mean_sq, inv, alpha=4).addcmul_(mean, mean, value=-1).clamp_max_(0)
    t = mean.sub_(excess_var.neg_().sqrt_())
    # Entries past the finite scores give NaN here (inf - inf); the test rejects them. The
    # candidates are written with the sorted dimension outermost, where a max over it is fast.
    reject = t.new_full((), -torch.inf)
    out = torch.where(t <= s, t, reject, out=sorted_dim_outermost(s))
    return out.amax(-1, keepdim=True)


def _lower_bound(u: Tensor) -> Tensor:
    """A lower bound on ``T`` for scores ``u`` whose row maximum is 0.

    For any set ``C`` of ``c`` entries and ``t = mean_C - 2 / sqrt(c)``, Jensen's inequality gives
    ``sum_C max(u_j - t, 0)^2 >= (sum_C (u_j - t))^2 / c = 4``, so ``T >= t``. Starting from
    ``-2`` (no probability exceeds 1, so ``T >= -2``) and taking ``C`` as the entries above the
    previous bound shrinks the candidates; a rounding allowance keeps the bound safe.
    """
    slack = 4 * (u.shape[-1] + 2) * torch.finfo(u.dtype).eps
    lower = torch.full_like(u[..., :1], -2.0)
    excess = torch.empty_like(u)
    for _ in range(_PRUNE_STEPS):
        torch.sub(u, lower, out=excess).clamp_min_(0)
        total = excess.sum(-1, keepdim=True)  # sum over C of (u - lower)
        count = excess.sign_().sum(-1, keepdim=True)
        bound = total.div_(count).add_(lower).sub_(count.rsqrt().mul_(2)).sub_(slack)
        lower = torch.maximum(lower, bound)
    return lower


def _pairwise_threshold(x: Tensor) -> Tensor | None:
    """Thresholds ``T`` ``(m,)`` of the rows of ``x`` ``(m, n)``, without sorting; or ``None``.

    ``T`` solves ``sum_j max(x_j - T, 0)^2 = 4``. The support comes from
    :func:`~latentgrad.mappings._shared.gap_support`; on it the equation is the quadratic of
    :func:`_threshold_from_sorted`, solved relative to the row maximum (the support lies within 2
    of it, so its variance is accurate). ``None`` when a row holds ``-inf``, NaN or ``+inf``, or
    scores too large to subtract ``T`` from unshifted; the sort-based path handles those.
    """
    return by_row_chunks(_pairwise_threshold_rows, x)


def _pairwise_threshold_rows(x: Tensor) -> Tensor | None:
    xt = transposed(x)
    top = xt.amax(0)
    u = xt - top  # the row maximum is 0 (not in place: xt may be a view of x)
    on = gap_support(u, 2, 4.0)
    inv = on.sum(0).reciprocal_()
    mean = (on * u).sum(0).mul_(inv)
    mean_sq = on.mul_(u).mul_(u).sum(0).mul_(inv)
    # 4 / k - var over the support, >= 0 up to rounding: the support has a root
    slack = torch.sub(mean_sq, inv, alpha=4).addcmul_(mean, mean, value=-1).clamp_max_(0)
    t = mean.sub_(slack.neg_().sqrt_()).add_(top)
    if not max_abs(t) + 2 <= unshifted_limit(x.dtype):  # T >= max - 2; NaN fails too
        return None
    return t


def _entmax15_forward(x: Tensor) -> Tensor:
    """1.5-entmax along the last dimension of float32/float64 ``x``."""
    if x.numel() == 0 or is_meta(x):  # nothing to compute (meta: the shape only)
        return x.clone()
    n = x.shape[-1]
    if n <= _PAIRWISE_MAX:
        t = _pairwise_threshold(x.reshape(-1, n))
        if t is not None:
            return (x - t.view((*x.shape[:-1], 1))).clamp_min_(0).mul_(0.5).square_()
    if n <= _SORT_MAX:
        srt = x.sort(-1, descending=True).values
        top = srt[..., :1]
        small = scale_of_maxima(x, top) <= unshifted_limit(x.dtype)
        # The quadratic is solved relative to the row maximum: its variance term cancels badly
        # otherwise. Adding the maximum back costs an ulp of it, which only matters when large.
        t = _threshold_from_sorted(srt - top)
        g = x - t.add_(top) if small else (x - top).sub_(t)
        return g.clamp_min_(0).mul_(0.5).square_()
    u = x - x.amax(-1, keepdim=True)
    t = _threshold_from_sorted(sorted_candidates(u, _lower_bound(u)))
    if not all_finite(t):
        raise_bad_scores(x)
    return u.sub_(t).clamp_min_(0).mul_(0.5).square_()


class Entmax15Function(torch.autograd.Function):
    """Autograd Function of 1.5-entmax along the last dimension (use :func:`entmax15`).

    Forward solves ``p = argmax_{p >= 0, sum(p) = 1} <p, x> + (1 - sum_i p_i^1.5) / 0.75``,
    whose solution is ``p_i = max(x_i / 2 - tau, 0)^2``. Backward: with ``g = sqrt(p)``, the
    Jacobian is ``diag(g) - g g^T / sum(g)``, so ``dx = g * dy - g * sum(g * dy) / sum(g)``.

    Input: ``x`` (float, mapping dimension last). Half precision is computed in float32 and
    returned in the input dtype.
    """

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return cast(_entmax15_forward(upcast(x)), x.dtype)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor | None:
        if not ctx.needs_input_grad[0]:
            return None
        (p,) = ctx.saved_tensors
        p = upcast(p)
        if torch.is_grad_enabled():
            # Double backward: d sqrt(p) / dp is infinite at p = 0, where dp/dx is 0; route the
            # zeros around the square root so that the product is 0 instead of NaN.
            on = p > 0
            g = torch.where(on, p, 1).sqrt() * on
        else:
            g = p.sqrt()
        return cast(centered_product(upcast(grad), g), grad.dtype)


def entmax15(x: Tensor, dim: int = -1) -> Tensor:
    """1.5-entmax of ``x`` along ``dim``: a sparse softmax with a smooth Jacobian.

    Solves ``argmax_p <p, x> + (1 - sum_i p_i^1.5) / 0.75`` over the probability simplex; the
    solution is ``p_i = max(x_i / 2 - tau, 0)^2`` with the threshold ``tau`` computed exactly
    (from pairwise gaps for rows of up to 48 entries, by sorting for longer ones). Scores of
    ``-inf`` get probability exactly 0.

    Args:
        x: scores; NaN and ``+inf`` raise ``ValueError``, ``-inf`` is allowed (but not for every
            entry of a row). Half precision is computed in float32.
        dim: the dimension to normalize.

    Returns:
        Probabilities with the shape and dtype of ``x``, summing to 1 along ``dim``.

    Shape:
        ``x``: any shape with a non-empty ``dim``; output: the same.

    Example:
        >>> import torch
        >>> entmax15(torch.tensor([1.0, 0.5, -2.0]))
        tensor([0.6740, 0.3260, 0.0000])

    References:
        [1] Peters, Niculae & Martins, "Sparse Sequence-to-Sequence Models", ACL 2019.
        [2] Blondel, Martins & Niculae, "Learning with Fenchel-Young Losses", JMLR 2020.
    """
    x = check_tensor(x, "x", min_dim=1)
    dim = check_dim(dim, x)
    if dim == x.dim() - 1:
        return apply_function(Entmax15Function, x)
    return apply_function(Entmax15Function, x.movedim(dim, -1)).movedim(-1, dim)


class Entmax15(nn.Module):
    """Module form of :func:`entmax15`.

    Args:
        dim: the dimension to normalize.

    Shape:
        Input and output: any shape, normalized along ``dim``.

    Example:
        >>> import torch
        >>> Entmax15()(torch.tensor([[1.0, 1.0]]))
        tensor([[0.5000, 0.5000]])

    References:
        [1] Peters, Niculae & Martins, ACL 2019.
    """

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"dim must be an int, got {type(dim).__name__}")
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return entmax15(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
