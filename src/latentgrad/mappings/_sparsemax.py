"""Sparsemax: the Euclidean projection of scores onto the probability simplex, and its loss.

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
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from latentgrad._numerics import upcast

#: The dtypes computed as they are (others are upcast to float32).
_FAST_DTYPES = (torch.float32, torch.float64)

#: Rows at most this long are sorted whole; longer ones are pruned to candidates first.
_SORT_MAX = 20

#: Rows at most this long get their support from pairwise gaps, without sorting (n^2 work per
#: row). On one thread it beats sorting new rows up to n = 32 at 1024 rows (n = 48 at 64 rows).
_PAIRWISE_MAX = 32

#: Most entries of the ``(n, n, rows)`` gap tensor built at once; more rows are taken in chunks.
_PAIRWISE_BUDGET = 1 << 22

#: Michelot steps that shrink the candidate set before it is sorted (one pass over ``x`` each).
_PRUNE_STEPS = 2


_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", None)


def _apply(function: type[torch.autograd.Function], *args: Any) -> Any:
    """``function.apply(*args)`` without the Python overhead of ``Function.apply``.

    For Functions with ``setup_context``, ``Function.apply`` binds default arguments with
    ``inspect.signature`` on every call, which costs over a tenth of a whole sparsemax forward
    and backward on a (1024, 10) input. The Functions here have no defaults (those live in the
    wrappers), so outside functorch transforms the C++ ``apply`` that ``Function.apply`` ends up
    calling is called directly; under transforms (or if torch changes) it is used as is.
    """
    if _functorch_active is None or _functorch_active():
        return function.apply(*args)
    return super(torch.autograd.Function, function).apply(*args)  # type: ignore[misc]


# -- argument checks ------------------------------------------------------------------------------


def _check_input(x: object, name: str) -> Tensor:
    """A floating-point tensor with at least one dimension (values are checked lazily)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype}")
    if x.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension, got a scalar")
    return x


def _check_dim(dim: object, x: Tensor, name: str = "dim") -> int:
    """A valid dimension of ``x``, returned non-negative; the dimension must not be empty."""
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"{name} must be an int, got {type(dim).__name__}")
    ndim = x.dim()
    if not -ndim <= dim < ndim:
        raise ValueError(f"{name}={dim} is out of range for a tensor with {ndim} dimension(s)")
    dim %= ndim
    if x.shape[dim] == 0:
        raise ValueError(f"{name}={dim} is an empty dimension of the input")
    return dim


def _check_k(k: object) -> int | None:
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int or None, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return k


def _raise_bad_scores(x: Tensor, name: str = "x") -> None:
    """Raise the ``ValueError`` that explains why a threshold came out non-finite."""
    if torch.isnan(x).any():
        raise ValueError(f"{name} contains NaN")
    if torch.isposinf(x).any():
        raise ValueError(f"{name} contains +inf")
    if torch.isneginf(x).all(-1).any():
        raise ValueError(f"{name} is -inf everywhere along the mapping dimension in some row")
    raise ValueError(f"{name} has values too large to normalize")


# -- helpers shared with 1.5-entmax ---------------------------------------------------------------


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t.to(dtype)``, skipping the call on the common path where nothing changes."""
    return t if t.dtype == dtype else t.to(dtype)


def _all_finite(t: Tensor) -> bool:
    """Whether every entry of ``t`` is finite: one reduction and one host sync.

    A sum is non-finite as soon as one entry is (``inf - inf`` is NaN); a false alarm from an
    overflowing sum only sends the caller down its slower, always accurate path.
    """
    return math.isfinite(float(t.sum()))


@functools.lru_cache(maxsize=64)
def _constants(n: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(1 / k, -1 / k)`` for ``k = 1..n``.

    Cached (a handful of tiny tensors per row length): on small inputs, building them would
    cost as much as several of the operations that use them. Never modified in place.
    """
    with torch.inference_mode(False):
        inv = torch.arange(1, n + 1, dtype=dtype, device=device).reciprocal_()
        return inv, -inv


def _sorted_dim_outermost(like: Tensor) -> Tensor:
    """An uninitialized tensor shaped like ``like`` whose last dimension has the largest stride.

    Reducing over a short last dimension is several times slower than over the outermost one,
    so per-prefix values are written in this layout before they are reduced.
    """
    shape = like.shape
    if len(shape) == 2:
        return torch.empty_strided(shape, (1, shape[0]), dtype=like.dtype, device=like.device)
    strides = [0] * len(shape)
    step = 1
    for i in range(len(shape) - 2, -1, -1):
        strides[i] = step
        step *= shape[i]
    strides[-1] = step
    return torch.empty_strided(shape, strides, dtype=like.dtype, device=like.device)


def _sorted_candidates(xs: Tensor, lower: Tensor) -> Tensor:
    """The entries of each row of ``xs`` above ``lower``, sorted in decreasing order.

    Rows with fewer candidates than the longest row are padded with ``-inf``. The candidates are
    listed with ``nonzero`` (row by row, so an entry's rank within its row is its position minus
    the row's start) and placed into a small padded buffer; nothing of the size of ``xs`` beyond
    one boolean mask is allocated.

    Shape:
        ``xs``: ``(*, n)``, ``lower``: ``(*, 1)``; returns ``(*, m)`` with ``m`` the largest
        number of candidates in a row (at least 1).
    """
    n = xs.shape[-1]
    flat = xs.reshape(-1, n)
    rows, cols = (flat > lower.reshape(-1, 1)).nonzero(as_tuple=True)
    counts = torch.bincount(rows, minlength=flat.shape[0])
    m = max(int(counts.max()), 1)
    starts = counts.cumsum(0).sub_(counts)
    slot = torch.arange(rows.shape[0], device=xs.device).sub_(starts[rows])
    buf = xs.new_full((flat.shape[0], m), -torch.inf)
    buf[rows, slot] = flat[rows, cols]
    return buf.reshape((*xs.shape[:-1], m)).sort(-1, descending=True).values


def _full_precision_products(dtype: torch.dtype) -> bool:
    """Whether matrix products in ``dtype`` are computed in that precision.

    Row sums and transposes are faster as products with ones or the identity on short rows, but
    only when float32 products are not allowed to run in TF32 or bfloat16
    (:func:`torch.set_float32_matmul_precision` other than ``"highest"``).
    """
    return dtype == torch.float64 or torch.get_float32_matmul_precision() == "highest"


def _centered_product(g: Tensor, w: Tensor) -> Tensor:
    """``w * (g - c)`` with ``c = sum(w * g) / sum(w)`` over the last dimension.

    The vector-Jacobian product of sparsemax (``w`` = the support indicator) and of 1.5-entmax
    (``w = sqrt(p)``).
    """
    wg = w * g
    if _full_precision_products(w.dtype):
        # Row sums as matrix-vector products: several times faster than ``sum(-1)`` on short rows.
        ones = _ones_column(w.shape[-1], w.dtype, w.device)
        c = (wg @ ones).div_(w @ ones)
    else:
        c = wg.sum(-1, keepdim=True).div_(w.sum(-1, keepdim=True))
    return wg.addcmul_(w, c, value=-1)


@functools.lru_cache(maxsize=64)
def _ones_column(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A cached ``(n, 1)`` column of ones (never modified in place)."""
    with torch.inference_mode(False):
        return torch.ones(n, 1, dtype=dtype, device=device)


# -- the threshold --------------------------------------------------------------------------------


def _prefix_thresholds(srt: Tensor) -> Tensor:
    """``f(k) = (srt_1 + ... + srt_k - 1) / k`` for rows sorted in decreasing order.

    ``f`` increases while ``srt_k > f(k)`` and decreases afterwards, so its maximum is the
    threshold and is reached at the support size. A max is cheaper than counting the support
    and gathering, and ``-inf`` scores just give ``f = -inf`` beyond the finite ones.
    """
    inv, neg_inv = _constants(srt.shape[-1], srt.dtype, srt.device)
    return torch.addcmul(neg_inv, srt.cumsum(-1), inv, out=_sorted_dim_outermost(srt))


@functools.lru_cache(maxsize=64)
def _eye(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A cached ``(n, n)`` identity matrix (never modified in place)."""
    with torch.inference_mode(False):
        return torch.eye(n, dtype=dtype, device=device)


def _by_row_chunks(solve: Callable[[Tensor], Tensor | None], x: Tensor) -> Tensor | None:
    """``solve(x)`` for a ``(m, n)`` matrix, on chunks of rows within :data:`_PAIRWISE_BUDGET`.

    ``solve`` maps ``(r, n)`` rows to ``(r,)`` thresholds, or ``None`` when it cannot; so does
    this, for all rows at once.
    """
    m, n = x.shape
    rows = max(1, _PAIRWISE_BUDGET // (n * n))
    if m <= rows:
        return solve(x)
    parts = [solve(chunk) for chunk in x.split(rows)]
    return None if any(t is None for t in parts) else torch.cat(parts)  # type: ignore[arg-type]


def _transposed(x: Tensor) -> Tensor:
    """``x`` ``(m, n)`` as a contiguous ``(n, m)`` tensor.

    A product with the identity is several times faster than a strided copy when products run
    at full precision. It turns a row holding ``inf`` or NaN into NaN, which suits the callers:
    they hand such rows to the exact path. May be a view of ``x``: do not modify it in place.
    """
    if _full_precision_products(x.dtype):
        return torch.mm(_eye(x.shape[1], x.dtype, x.device), x.t())
    return x.t().contiguous()


def _gap_support(xt: Tensor, power: int, level: float) -> Tensor:
    """The float mask ``(n, m)`` of entries with ``sum_j max(x_j - x_i, 0)^power < level``.

    ``xt`` holds one row of scores per column. For a mapping whose threshold ``t`` solves
    ``sum_j max(x_j - t, 0)^power = level`` (sparsemax: power 1, level 1; 1.5-entmax on ``x``:
    power 2, level 4), the left side decreases in ``t``, so entry ``i`` is in the support
    (``x_i > t``) exactly when it passes this test; tied entries pass or fail together. All gaps
    of all rows form one ``(n, n, m)`` tensor with rows innermost, so every operation runs over
    long contiguous vectors, with no data-dependent branch (unlike a sort, which costs several
    times more on new rows than on rows it has just sorted).

    Each gap is exact or within an ulp of itself, so the test is off only for entries within a
    few ulps of the threshold, where including or leaving out an entry changes it by about as much.
    """
    gaps = (xt.unsqueeze(0) - xt.unsqueeze(1)).relu_()  # gaps[i, j] = max(x_j - x_i, 0)
    if power == 2:
        gaps.square_()
    return torch.lt(gaps.sum(1), level, out=torch.empty_like(xt))


def _pairwise_tau(x: Tensor) -> Tensor | None:
    """The thresholds ``(m,)`` of the rows of ``x`` ``(m, n)``, without sorting; or ``None``.

    The support comes from :func:`_gap_support`; the threshold is then
    ``(sum of the support - 1) / |support|``. ``None`` when the result cannot be trusted, with
    the same rule as the sort-based path: a row holds ``-inf``, NaN or ``+inf`` (they make its
    threshold NaN or infinite), or scores too large to sum unshifted. The threshold lies in
    ``[max - 1, max)``, so ``|tau| + 1`` bounds the row maxima :func:`_unshifted_limit` is about.
    """
    return _by_row_chunks(_pairwise_tau_rows, x)


def _pairwise_tau_rows(x: Tensor) -> Tensor | None:
    xt = _transposed(x)
    on = _gap_support(xt, 1, 1.0)
    size = on.sum(0)
    tau = on.mul_(xt).sum(0).sub_(1).div_(size)
    if not _max_abs(tau) + 1 <= _unshifted_limit(x.dtype):  # NaN fails too
        return None
    return tau


def _max_abs(t: Tensor) -> float:
    """``max |t|`` (NaN if ``t`` holds NaN), with one reduction and one host sync."""
    low, high = t.aminmax()
    return max(-float(low), float(high))


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


def _scale_of_maxima(x: Tensor, top: Tensor) -> float:
    """``max |row maximum|``, after raising ``ValueError`` for NaN, ``+inf`` or all-``-inf`` rows.

    Sorting puts NaN first, so a row maximum is finite exactly when its row is valid, and then
    every prefix sum below is free of NaN and ``+inf``: one check covers the whole computation.
    """
    low, high = top.aminmax()
    lo, hi = float(low), float(high)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        _raise_bad_scores(x)
    return max(-lo, hi)


#: Largest row maximum for which prefix sums of unshifted scores are accurate enough: they carry
#: rounding errors of a few ulps of the scores, which up to ``2^-19 / eps`` (16 in float32) stay
#: below a few ``1e-6``.
_UNSHIFTED_LIMIT = {dtype: 2.0**-19 / torch.finfo(dtype).eps for dtype in _FAST_DTYPES}


def _unshifted_limit(dtype: torch.dtype) -> float:
    """See :data:`_UNSHIFTED_LIMIT` (float32 and float64; other dtypes are upcast before)."""
    return _UNSHIFTED_LIMIT.get(dtype, 0.0)


def _from_sorted(x: Tensor, srt: Tensor, whole: bool) -> tuple[Tensor, Tensor, bool] | None:
    """:func:`_threshold` from the largest scores of each row, sorted in decreasing order.

    ``srt`` holds whole rows (``whole``) or only the top ``k``; then ``None`` is returned when
    some row's support may extend past them. Small scores are used as they are; large ones are
    measured from the row maximum first (two more passes), which keeps them accurate.
    """
    top = srt[..., :1]
    z, s, owned = x, srt, False
    if _scale_of_maxima(x, top) > _unshifted_limit(x.dtype):
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
    if x.numel() == 0:
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
    tau = _prefix_thresholds(_sorted_candidates(xs, _lower_bound(xs))).amax(-1, keepdim=True)
    if not _all_finite(tau):
        _raise_bad_scores(x)
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
    z, tau, _ = _threshold(x, _check_k(k))
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
    tau = _pairwise_tau(x)
    if tau is not None:
        return (x - tau.unsqueeze(1)).clamp_min_(0)
    z, tau, owned = _from_sorted(x, x.sort(-1, descending=True).values, whole=True)  # type: ignore[misc]  # whole: never None
    return (z.sub_(tau) if owned else z - tau).clamp_min_(0)


def _sparsemax_vjp(p: Tensor, grad: Tensor) -> Tensor:
    """``J^T grad`` with ``J = diag(s) - s s^T / |S|``, ``s`` the support indicator of ``p``."""
    if p.dtype in _FAST_DTYPES:  # then grad, the gradient of p, has the same dtype
        return _centered_product(grad, p.sign())
    on = upcast(p).sign()  # 1 on the support, 0 elsewhere, as a float mask
    return _cast(_centered_product(upcast(grad), on), grad.dtype)


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
            and x.dtype in _FAST_DTYPES
            and 0 < x.shape[1] <= _PAIRWISE_MAX
            and x.shape[0]
        ):
            return _short_rows_sparsemax(x)
        return _cast(_sparsemax_forward(upcast(x), k), x.dtype)

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
            return _apply(SparsemaxFunction, x)
    x = _check_input(x, "x")
    dim = _check_dim(dim, x)
    k = _check_k(k)
    if dim == 1 and x.dim() == 2:
        return _apply(SparsemaxFunction, x, k)
    # Rows as a matrix: the Function's fast path takes 2-D inputs.
    moved = x if dim == x.dim() - 1 else x.movedim(dim, -1)
    out = _apply(SparsemaxFunction, moved.reshape(-1, moved.shape[-1]), k).view(moved.shape)
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
        self.k = _check_k(k)

    def forward(self, x: Tensor) -> Tensor:
        return sparsemax(x, self.dim, self.k)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, k={self.k}"


# -- sparsemax loss -------------------------------------------------------------------------------


def _check_target(target: object, scores: Tensor) -> Tensor:
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.dtype != torch.long:
        raise TypeError(f"target must have dtype torch.long, got {target.dtype}")
    if target.shape != scores.shape[:-1]:
        raise ValueError(
            f"target must have shape scores.shape[:-1] = {tuple(scores.shape[:-1])}, "
            f"got {tuple(target.shape)}"
        )
    if target.numel() and bool(((target < 0) | (target >= scores.shape[-1])).any()):
        raise ValueError(f"target must hold class indices in [0, {scores.shape[-1]})")
    return target


class SparsemaxLossFunction(torch.autograd.Function):
    """Autograd Function of the sparsemax loss along the last dimension (use :func:`sparsemax_loss`).

    Forward: ``L(s, y) = -s_y + 1/2 sum_{j in S} (s_j^2 - tau^2) + 1/2``, computed as
    ``tau - s_y + ||p||^2 / 2 + 1/2`` with ``p = sparsemax(s)`` (the two agree because
    ``s_j = p_j + tau`` on the support and ``sum(p) = 1``; the second form never multiplies a
    ``-inf`` score). Backward: ``dL/ds = p - onehot(y)``.

    Inputs: ``scores`` (float, classes last) and ``target`` (long). Returns ``(loss, p)``; ``p``
    is not differentiable.
    """

    @staticmethod
    def forward(scores: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        z, tau, _ = _threshold(upcast(scores), None)
        z_target = z.gather(-1, target.unsqueeze(-1))
        p = (z - tau).clamp_min_(0)
        loss = (tau - z_target).squeeze(-1) + p.square().sum(-1).add_(1).mul_(0.5)
        return _cast(loss, scores.dtype), _cast(p, scores.dtype)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        _, target = inputs
        _, p = output
        ctx.mark_non_differentiable(p)
        ctx.save_for_backward(p, target)

    @staticmethod
    def backward(ctx: Any, grad: Tensor, _grad_p: Tensor | None) -> tuple[Tensor | None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None
        p, target = ctx.saved_tensors
        g = upcast(grad).unsqueeze(-1)
        out = upcast(p) * g
        out.scatter_add_(-1, target.unsqueeze(-1), -g)
        return _cast(out, p.dtype), None


def sparsemax_loss(scores: Tensor, target: Tensor) -> Tensor:
    """The sparsemax loss, the classification loss whose gradient is ``sparsemax(s) - onehot(y)``.

    ``L(s, y) = -s_y + 1/2 sum_{j in S(s)} (s_j^2 - tau(s)^2) + 1/2`` with ``S`` and ``tau`` the
    support and threshold of ``sparsemax(s)``. It is convex in ``s``, non-negative, and zero
    exactly when ``sparsemax(s)`` is the one-hot vector of ``y`` with a margin of 1: it plays the
    role cross-entropy plays for softmax. A target whose score is ``-inf`` gets an infinite loss
    (its gradient stays finite).

    Args:
        scores: class scores, classes along the last dimension (NaN and ``+inf`` rejected).
        target: class indices (``torch.long``) of shape ``scores.shape[:-1]``.

    Returns:
        The loss per example, shape ``scores.shape[:-1]``, in the dtype of ``scores``.

    Shape:
        ``scores``: ``(*, K)``, ``target``: ``(*)``, output: ``(*)``.

    Example:
        >>> import torch
        >>> sparsemax_loss(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0]))
        tensor([0.])
        >>> sparsemax_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([1]))
        tensor([0.2500])

    References:
        [1] Martins & Astudillo, "From Softmax to Sparsemax: A Sparse Model of Attention and
            Multi-Label Classification", ICML 2016.
    """
    scores = _check_input(scores, "scores")
    _check_dim(-1, scores, "the class dimension")
    target = _check_target(target, scores)
    loss, _ = _apply(SparsemaxLossFunction, scores, target)
    return loss


class SparsemaxLoss(nn.Module):
    """Module form of :func:`sparsemax_loss` with a reduction.

    Args:
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Shape:
        ``scores``: ``(*, K)``, ``target``: ``(*)``; output: scalar, or ``(*)`` for ``"none"``.

    Example:
        >>> import torch
        >>> SparsemaxLoss()(torch.tensor([[0.0, 0.0], [3.0, 0.0]]), torch.tensor([1, 0]))
        tensor(0.1250)

    References:
        [1] Martins & Astudillo, ICML 2016.
    """

    def __init__(self, reduction: Literal["mean", "sum", "none"] = "mean") -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.reduction = reduction

    def forward(self, scores: Tensor, target: Tensor) -> Tensor:
        loss = sparsemax_loss(scores, target)
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
