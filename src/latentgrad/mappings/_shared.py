"""Helpers shared by the sparse mappings (sparsemax, its loss, 1.5-entmax, SparseMAP).

Calling autograd Functions cheaply, dtype handling, cached constants, the sort-free support test
from pairwise gaps, candidate pruning before a sort, row-sum tricks for short rows, the
error for invalid scores, and the compaction of a support into leading slots. The mappings'
own threshold algorithms live in their modules.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

#: The dtypes computed as they are (others are upcast to float32).
FAST_DTYPES = (torch.float32, torch.float64)

#: Rows at most this long are sorted whole; longer ones are pruned to candidates first.
SORT_MAX = 20

#: Most entries of the ``(n, n, rows)`` gap tensor built at once; more rows are taken in chunks.
PAIRWISE_BUDGET = 1 << 22

_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", None)


def apply_function(function: type[torch.autograd.Function], *args: Any) -> Any:
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


def raise_bad_scores(x: Tensor, name: str = "x") -> None:
    """Raise the ``ValueError`` that explains why a threshold came out non-finite."""
    if torch.isnan(x).any():
        raise ValueError(f"{name} contains NaN")
    if torch.isposinf(x).any():
        raise ValueError(f"{name} contains +inf")
    if torch.isneginf(x).all(-1).any():
        raise ValueError(f"{name} is -inf everywhere along the mapping dimension in some row")
    raise ValueError(f"{name} has values too large to normalize")


def cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t.to(dtype)``, skipping the call on the common path where nothing changes."""
    return t if t.dtype == dtype else t.to(dtype)


def all_finite(t: Tensor) -> bool:
    """Whether every entry of ``t`` is finite: one reduction and one host sync.

    A sum is non-finite as soon as one entry is (``inf - inf`` is NaN); a false alarm from an
    overflowing sum only sends the caller down its slower, always accurate path.
    """
    return math.isfinite(float(t.sum()))


@functools.lru_cache(maxsize=64)
def reciprocals(n: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(1 / k, -1 / k)`` for ``k = 1..n``.

    Cached (a handful of tiny tensors per row length): on small inputs, building them would
    cost as much as several of the operations that use them. Never modified in place.
    """
    with torch.inference_mode(False):
        inv = torch.arange(1, n + 1, dtype=dtype, device=device).reciprocal_()
        return inv, -inv


def sorted_dim_outermost(like: Tensor) -> Tensor:
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


def sorted_candidates(xs: Tensor, lower: Tensor) -> Tensor:
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


def full_precision_products(dtype: torch.dtype) -> bool:
    """Whether matrix products in ``dtype`` are computed in that precision.

    Row sums and transposes are faster as products with ones or the identity on short rows, but
    only when float32 products are not allowed to run in TF32 or bfloat16
    (:func:`torch.set_float32_matmul_precision` other than ``"highest"``).
    """
    return dtype == torch.float64 or torch.get_float32_matmul_precision() == "highest"


def centered_product(g: Tensor, w: Tensor) -> Tensor:
    """``w * (g - c)`` with ``c = sum(w * g) / sum(w)`` over the last dimension.

    The vector-Jacobian product of sparsemax (``w`` = the support indicator) and of 1.5-entmax
    (``w = sqrt(p)``).
    """
    wg = w * g
    if full_precision_products(w.dtype):
        # Row sums as matrix-vector products: several times faster than ``sum(-1)`` on short rows.
        ones = ones_column(w.shape[-1], w.dtype, w.device)
        c = (wg @ ones).div_(w @ ones)
    else:
        c = wg.sum(-1, keepdim=True).div_(w.sum(-1, keepdim=True))
    return wg.addcmul_(w, c, value=-1)


@functools.lru_cache(maxsize=64)
def ones_column(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A cached ``(n, 1)`` column of ones (never modified in place)."""
    with torch.inference_mode(False):
        return torch.ones(n, 1, dtype=dtype, device=device)


@functools.lru_cache(maxsize=64)
def eye(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A cached ``(n, n)`` identity matrix (never modified in place)."""
    with torch.inference_mode(False):
        return torch.eye(n, dtype=dtype, device=device)


def by_row_chunks(solve: Callable[[Tensor], Tensor | None], x: Tensor) -> Tensor | None:
    """``solve(x)`` for a ``(m, n)`` matrix, on chunks of rows within :data:`PAIRWISE_BUDGET`.

    ``solve`` maps ``(r, n)`` rows to ``(r,)`` thresholds, or ``None`` when it cannot; so does
    this, for all rows at once.
    """
    m, n = x.shape
    rows = max(1, PAIRWISE_BUDGET // (n * n))
    if m <= rows:
        return solve(x)
    parts = [solve(chunk) for chunk in x.split(rows)]
    return None if any(t is None for t in parts) else torch.cat(parts)  # type: ignore[arg-type]


def transposed(x: Tensor) -> Tensor:
    """``x`` ``(m, n)`` as a contiguous ``(n, m)`` tensor.

    A product with the identity is several times faster than a strided copy when products run
    at full precision. It turns a row holding ``inf`` or NaN into NaN, which suits the callers:
    they hand such rows to the exact path. May be a view of ``x``: do not modify it in place.
    """
    if full_precision_products(x.dtype):
        return torch.mm(eye(x.shape[1], x.dtype, x.device), x.t())
    return x.t().contiguous()


def gap_support(xt: Tensor, power: int, level: float) -> Tensor:
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


def max_abs(t: Tensor) -> float:
    """``max |t|`` (NaN if ``t`` holds NaN), with one reduction and one host sync."""
    low, high = t.aminmax()
    return max(-float(low), float(high))


def scale_of_maxima(x: Tensor, top: Tensor) -> float:
    """``max |row maximum|``, after raising ``ValueError`` for NaN, ``+inf`` or all-``-inf`` rows.

    Sorting puts NaN first, so a row maximum is finite exactly when its row is valid, and then
    every prefix sum below is free of NaN and ``+inf``: one check covers the whole computation.
    """
    low, high = top.aminmax()
    lo, hi = float(low), float(high)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise_bad_scores(x)
    return max(-lo, hi)


#: Largest row maximum for which prefix sums of unshifted scores are accurate enough: they carry
#: rounding errors of a few ulps of the scores, which up to ``2^-19 / eps`` (16 in float32) stay
#: below a few ``1e-6``.
UNSHIFTED_LIMIT = {dtype: 2.0**-19 / torch.finfo(dtype).eps for dtype in FAST_DTYPES}


def unshifted_limit(dtype: torch.dtype) -> float:
    """See :data:`UNSHIFTED_LIMIT` (float32 and float64; other dtypes are upcast before)."""
    return UNSHIFTED_LIMIT.get(dtype, 0.0)


def support_slots(positive: Tensor) -> tuple[Tensor, Tensor]:
    """The slots of each row's ``True`` entries first (in order), padded with the first slot.

    Returns ``(slots (n, A), support (n, A) bool)`` with ``A`` the largest count in a row (at
    least 1); ``support`` is ``False`` on padding.
    """
    size = max(int(positive.sum(1).max()), 1) if positive.shape[0] else 1
    order = torch.sort((~positive).to(torch.uint8), dim=1, stable=True).indices[:, :size]
    support = positive.gather(1, order)
    return torch.where(support, order, order[:, :1]), support
