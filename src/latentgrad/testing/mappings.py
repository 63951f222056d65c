"""Reference values of the sparse mappings, by bisection: slow, simple and independent of them."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _check_alpha(alpha: object) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a float, got {type(alpha).__name__}")
    if not (math.isfinite(alpha) and alpha > 1):
        raise ValueError(f"alpha must be a finite number > 1, got {alpha}")
    return float(alpha)


def reference_entmax_threshold(x: Tensor, alpha: float = 1.5, iterations: int = 200) -> Tensor:
    """The threshold ``tau`` of alpha-entmax along the last dimension, by bisection in float64.

    alpha-entmax is ``p_i = max((alpha - 1) x_i - tau, 0)^(1 / (alpha - 1))`` with ``tau`` such
    that ``p`` sums to one: sparsemax for ``alpha = 2``, 1.5-entmax for ``alpha = 1.5``. The sum
    decreases in ``tau``, from at least 1 at ``(alpha - 1) max(x) - 1`` (the largest entry alone
    gives 1) to 0 at ``(alpha - 1) max(x)``; ``iterations`` halvings of that interval follow.

    Args:
        x: scores (any float dtype; ``-inf`` allowed, but not everywhere in a row).
        alpha: the entmax parameter, > 1.
        iterations: bisection steps (200 reach float64 resolution).

    Returns:
        ``tau`` in float64.

    Shape:
        ``x``: ``(*, n)``; returns ``(*, 1)``.

    Example:
        >>> import torch
        >>> reference_entmax_threshold(torch.tensor([1.0, 0.5, -1.0]), alpha=2.0)
        tensor([0.2500], dtype=torch.float64)
    """
    alpha = _check_alpha(alpha)
    y = x.double() * (alpha - 1)
    power = 1 / (alpha - 1)
    hi = y.amax(-1, keepdim=True)
    lo = hi - 1
    for _ in range(iterations):
        mid = (lo + hi) / 2
        above = (y - mid).clamp_min(0).pow(power).sum(-1, keepdim=True) > 1
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return (lo + hi) / 2


def reference_entmax(x: Tensor, alpha: float = 1.5) -> Tensor:
    """alpha-entmax of ``x`` along the last dimension in float64 (see
    :func:`reference_entmax_threshold`): ``alpha = 2`` is sparsemax, ``1.5`` is 1.5-entmax.

    Example:
        >>> import torch
        >>> reference_entmax(torch.tensor([1.0, 0.5, -1.0]), alpha=2.0)
        tensor([0.7500, 0.2500, 0.0000], dtype=torch.float64)
    """
    tau = reference_entmax_threshold(x, alpha)
    return (x.double() * (alpha - 1) - tau).clamp_min(0).pow(1 / (alpha - 1))
