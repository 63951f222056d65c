"""Sparsemax: the Euclidean projection of scores onto the probability simplex.

``sparsemax(x) = argmin_{p in simplex} ||p - x||^2`` has the closed form ``p_i = max(x_i - tau, 0)``
where the threshold ``tau`` makes ``p`` sum to one. Unlike softmax, most entries are exactly zero,
which is what lets :class:`~latentgrad.estimators.marginalize.Marginalize` sum over a handful of
values instead of all of them.

The threshold is computed exactly. Short rows (at most :data:`_PAIRWISE_MAX` entries) need no
sort: an entry is in the support exactly when the gaps from it to the larger entries sum to less
than 1, and all those sums come from a few branch-free operations on an ``(n, n, rows)`` tensor.
Sorting is data-dependent: on a CPU, sorting the same rows again is several times faster than
sorting new ones (the branch predictor learns them), so a sort costs far more in training than in
a loop over one input. Long rows are first pruned to a small candidate set that provably contains
the support, and only the candidates are sorted. Everything is written to launch as few tensor
operations as possible, because on small inputs the per-operation overhead is what one pays.
The helpers this shares with 1.5-entmax are in :mod:`latentgrad.mappings._shared`; the sparsemax
loss is in :mod:`latentgrad.mappings._sparsemax_loss`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from latentgrad._numerics import upcast
from latentgrad._validation import check_dim, check_optional_int, check_tensor, is_meta
from latentgrad.mappings._shared import (
    FAST_DTYPES,
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
from latentgrad.mappings._shared import SORT_MAX as _SORT_MAX

#: Rows at most this long get their support from pairwise gaps, without sorting (n^2 work per
#: row). On one thread it beats sorting new rows up to n = 32 at 1024 rows (n = 48 at 64 rows).
_PAIRWISE_MAX = 32

#: Michelot steps that shrink the candidate set before it is sorted (one pass over ``x`` each).
_PRUNE_STEPS = 2


# -- the threshold --------------------------------------------------------------------------------


def _prefix_thresholds(srt: Tensor) -> Tensor:
    """``f(k) = (srt_1 + ... + srt_k - 1) / k`` for rows sorted in decreasing order.

    ``f`` increases while ``srt_k > f(k)`` and decreases afterwards, so its maximum is the
    threshold and is reached at the support size. A max is cheaper than counting the support
    and gathering, and ``-inf`` scores just give ``f = -inf`` beyond the finite ones.
    """
    inv, neg_inv = reciprocals(srt.shape[-1], srt.dtype, srt.device)
    return torch.addcmul(neg_inv, srt.cumsum(-1), inv, out=sorted_dim_outermost(srt))


def _pairwise_tau(x: Tensor) -> Tensor | None:
    """The thresholds ``(m,)`` of the rows of ``x`` ``(m, n)``, without sorting; or ``None``.

    The support comes from :func:`gap_support`; the threshold is then
    ``(sum of the support - 1) / |support|``. ``None`` when the result cannot be trusted, with
    the same rule as the sort-based path: a row holds ``-inf``, NaN or ``+inf`` (they make its
    threshold NaN or infinite), or scores too large to sum unshifted. The threshold lies in
    ``[max - 1, max)``, so ``|tau| + 1`` bounds the row maxima :func:`unshifted_limit` is about.
    """
    return by_row_chunks(_pairwise_tau_rows, x)


def _pairwise_tau_rows(x: Tensor) -> Tensor | None:
    xt = transposed(x)
    on = gap_support(xt, 1, 1.0)
    size = on.sum(0)
    tau = on.mul_(xt).sum(0).sub_(1).div_(size)
    if not max_abs(tau) + 1 <= unshifted_limit(x.dtype):  # NaN fails too
        return None
    return tau


def _lower_bound(xs: Tensor) -> Tensor:
    """A lower bound on the threshold of scores ``xs`` whose row maximum is 0 (Michelot steps).

    For any nonempty set ``C`` of entries, ``(sum_C xs - 1) / |C|`` is at most the threshold (it
    is at most ``f(|C|)`` of :func:`_prefix_thresholds`). Starting from ``-1`` (no probability
    exceeds 1, so the threshold is at least ``max - 1``) and taking ``C`` as the entries above
    the previous bound shrinks the candidates quickly. Each bound is lowered by a rounding
    allowance so that it stays below the computed threshold.
    """
    slack = (xs.shape[-1] + 2) * torch.finfo(xs.dtype).eps
    lower = torch.full_like(xs[..., :1], -1.0)
    excess = torch.empty_like(xs)
    for _ in range(_PRUNE_STEPS):
        torch.sub(xs, lower, out=excess).clamp_min_(0)
        total = excess.sum(-1, keepdim=True)  # sum over C of (xs - lower)
        count = excess.sign_().sum(-1, keepdim=True)
        lower = total.sub_(1).div_(count).add_(lower).sub_(slack)
    return lower


def _from_sorted(x: Tensor, srt: Tensor, whole: bool) -> tuple[Tensor, Tensor, bool] | None:
    """:func:`_threshold` from the largest scores of each row, sorted in decreasing order.

    ``srt`` holds whole rows (``whole``) or only the top ``k``; then ``None`` is returned when
    some row's support may extend past them. Small scores are used as they are; large ones are
    measured from the row maximum first (two more passes), which keeps them accurate.
    """
    top = srt[..., :1]
    z, s, owned = x, srt, False
    if scale_of_maxima(x, top) > unshifted_limit(x.dtype):
        z, s, owned = x - top, srt - top, True
    f = _prefix_thresholds(s)
    if whole:
        return z, f.amax(-1, keepdim=True), owned
    tau, index = f.max(-1, keepdim=True)
    if bool((index == s.shape[-1] - 1).any()):
        return None
    return z, tau, owned


def _threshold(x: Tensor, k: int | None) -> tuple[Tensor, Tensor, bool]:
    """``(z, tau, owned)`` with ``sparsemax(x) = clamp(z - tau, 0)``; ``owned``: z is a new tensor."""
    n = x.shape[-1]
    if x.numel() == 0 or is_meta(x):  # nothing to compute (meta: the shapes only)
        return x, x.new_zeros((*x.shape[:-1], 1)), False
    if k is not None and k < n:
        found = _from_sorted(x, x.topk(k, -1).values, whole=False)
        if found is not None:
            return found
    elif n <= _PAIRWISE_MAX and (tau := _pairwise_tau(x.reshape(-1, n))) is not None:
        return x, tau.view((*x.shape[:-1], 1)), False
    elif n <= _SORT_MAX:
        found = _from_sorted(x, x.sort(-1, descending=True).values, whole=True)
        if found is not None:  # always, for whole rows
            return found
    # Long rows: shift so that the row maximum is 0, then sort only the entries that can be in
    # the support.
    xs = x - x.amax(-1, keepdim=True)
    tau = _prefix_thresholds(sorted_candidates(xs, _lower_bound(xs))).amax(-1, keepdim=True)
    if not all_finite(tau):
        raise_bad_scores(x)
    return xs, tau, True


def sparsemax_threshold(x: Tensor, k: int | None = None) -> tuple[Tensor, Tensor]:
    """The threshold ``tau`` of sparsemax along the last dimension, and the scores it applies to.

    Returns ``(z, tau)`` with ``sparsemax(x) = clamp(z - tau, min=0)``: ``z`` is ``x`` itself or
    ``x`` shifted by its row maximum (the shift keeps long rows and huge scores accurate). Works
    in the dtype of ``x``, which must be float32 or float64 (upcast half precision first).

    Args:
        x: scores, the mapping dimension last.
        k: sort only the ``k`` largest scores (see :func:`sparsemax`).

    Returns:
        ``(z, tau)``.

    Shape:
        ``x``: ``(*, n)``; ``z``: ``(*, n)``; ``tau``: ``(*, 1)``.

    Raises:
        ValueError: if ``x`` contains NaN or ``+inf``, or a row is ``-inf`` everywhere.

    Example:
        >>> import torch
        >>> z, tau = sparsemax_threshold(torch.tensor([[1.0, 0.5, -1.0]]))
        >>> tau
        tensor([[0.2500]])
    """
    x = check_tensor(x, "x", min_dim=1)
    check_dim(-1, x)
    z, tau, _ = _threshold(x, check_optional_int(k, "k", minimum=1))
    return z, tau


def _sparsemax_forward(x: Tensor, k: int | None) -> Tensor:
    z, tau, owned = _threshold(x, k)
    return (z.sub_(tau) if owned else z - tau).clamp_min_(0)


def _short_rows_sparsemax(x: Tensor) -> Tensor:
    """Sparsemax of a non-empty float32/float64 ``(m, n)`` matrix with ``n <= _PAIRWISE_MAX``.

    The common case, with little but its tensor operations (see :func:`_pairwise_tau`). Rows the
    pairwise gaps cannot handle exactly (``-inf``, large scores, invalid ones) go through the
    exact sort-based path, which also raises for invalid scores.
    """
    if is_meta(x):  # the shape only
        return x.clone()
    tau = _pairwise_tau(x)
    if tau is not None:
        return (x - tau.unsqueeze(1)).clamp_min_(0)
    z, tau, owned = _from_sorted(x, x.sort(-1, descending=True).values, whole=True)  # type: ignore[misc]  # whole: never None
    return (z.sub_(tau) if owned else z - tau).clamp_min_(0)


def _sparsemax_vjp(p: Tensor, grad: Tensor) -> Tensor:
    """``J^T grad`` with ``J = diag(s) - s s^T / |S|``, ``s`` the support indicator of ``p``."""
    if p.dtype in FAST_DTYPES:  # then grad, the gradient of p, has the same dtype
        return centered_product(grad, p.sign())
    on = upcast(p).sign()  # 1 on the support, 0 elsewhere, as a float mask
    return cast(centered_product(upcast(grad), on), grad.dtype)


# -- sparsemax ------------------------------------------------------------------------------------


class SparsemaxFunction(torch.autograd.Function):
    """Autograd Function of sparsemax along the last dimension (use :func:`sparsemax`).

    Forward solves ``p = argmin_{p >= 0, sum(p) = 1} ||p - x||^2``, whose solution is
    ``p_i = max(x_i - tau, 0)``. Backward multiplies by the Jacobian
    ``J = diag(s) - s s^T / |S|`` with ``s`` the indicator of the support ``S = {i : p_i > 0}``.

    Inputs: ``x`` (float, mapping dimension last) and ``k`` (int or None, see
    :func:`sparsemax`; may be left out). Half precision is computed in float32 and returned in the input dtype.
    """

    @staticmethod
    def forward(x: Tensor, k: int | None = None) -> Tensor:
        if (
            k is None
            and x.dim() == 2
            and x.dtype in FAST_DTYPES
            and 0 < x.shape[1] <= _PAIRWISE_MAX
            and x.shape[0]
        ):
            return _short_rows_sparsemax(x)
        return cast(_sparsemax_forward(upcast(x), k), x.dtype)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None
        (p,) = ctx.saved_tensors
        return _sparsemax_vjp(p, grad), None


def sparsemax(x: Tensor, dim: int = -1, k: int | None = None) -> Tensor:
    """Sparsemax: the Euclidean projection of ``x`` onto the probability simplex along ``dim``.

    Solves ``argmin_p ||p - x||^2`` subject to ``p >= 0`` and ``sum(p) = 1``; the solution is
    ``p_i = max(x_i - tau, 0)`` with the threshold ``tau`` found exactly (see the module notes).
    Scores of ``-inf`` get probability exactly 0. The Jacobian on the support ``S`` is
    ``diag(1_S) - 1_S 1_S^T / |S|``.

    Args:
        x: scores; NaN and ``+inf`` raise ``ValueError``, ``-inf`` is allowed (but not for every
            entry of a row). Half precision is computed in float32.
        dim: the dimension to normalize.
        k: if given, sort only the ``k`` largest scores of each row (``torch.topk``) and fall
            back to the exact default when some row's support reaches ``k``. The default does
            not sort rows of up to 32 entries at all, and sorts only the scores that can be in
            the support of longer ones (within 1 of the row maximum, pruned further by Michelot
            steps), so ``k`` rarely helps.

    Returns:
        Probabilities with the shape and dtype of ``x``, summing to 1 along ``dim``.

    Shape:
        ``x``: any shape with a non-empty ``dim``; output: the same.

    Example:
        >>> import torch
        >>> sparsemax(torch.tensor([1.0, 0.5, -1.0]))
        tensor([0.7500, 0.2500, 0.0000])

    References:
        [1] Martins & Astudillo, "From Softmax to Sparsemax: A Sparse Model of Attention and
            Multi-Label Classification", ICML 2016.
        [2] Michelot, "A finite algorithm for finding the projection of a point onto the
            canonical simplex of R^n", JOTA 1986.
    """
    if k is None and type(x) is Tensor and type(dim) is int and x.dim() == 2:
        # The common case, checked in a few lines (the Function's k defaults to None).
        if (dim == -1 or dim == 1) and x.shape[1] and x.is_floating_point():
            return apply_function(SparsemaxFunction, x)
    x = check_tensor(x, "x", min_dim=1)
    dim = check_dim(dim, x)
    k = check_optional_int(k, "k", minimum=1)
    if dim == 1 and x.dim() == 2:
        return apply_function(SparsemaxFunction, x, k)
    # Rows as a matrix: the Function's fast path takes 2-D inputs.
    moved = x if dim == x.dim() - 1 else x.movedim(dim, -1)
    out = apply_function(SparsemaxFunction, moved.reshape(-1, moved.shape[-1]), k).view(moved.shape)
    return out if moved is x else out.movedim(-1, dim)


class Sparsemax(nn.Module):
    """Module form of :func:`sparsemax`.

    Args:
        dim: the dimension to normalize.
        k: partial sorting hint, see :func:`sparsemax`.

    Shape:
        Input and output: any shape, normalized along ``dim``.

    Example:
        >>> import torch
        >>> Sparsemax(dim=0)(torch.tensor([[2.0], [0.0]]))
        tensor([[1.],
                [0.]])

    References:
        [1] Martins & Astudillo, ICML 2016.
    """

    def __init__(self, dim: int = -1, k: int | None = None) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"dim must be an int, got {type(dim).__name__}")
        self.dim = dim
        self.k = check_optional_int(k, "k", minimum=1)

    def forward(self, x: Tensor) -> Tensor:
        return sparsemax(x, self.dim, self.k)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, k={self.k}"


__all__ = [
    "Sparsemax",
    "SparsemaxFunction",
    "sparsemax",
    "sparsemax_threshold",
]
