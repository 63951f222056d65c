"""Argument checks that raise ``TypeError``/``ValueError`` naming the offending argument."""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor


def check_tensor(x: object, name: str, *, min_dim: int = 0) -> Tensor:
    """Check that ``x`` is a floating-point tensor with at least ``min_dim`` dimensions."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(
            f"{name} must have at least {min_dim} dimension(s), got shape {tuple(x.shape)}"
        )
    return x


def check_scores(x: object, name: str = "logits", *, allow_neg_inf: bool = True) -> Tensor:
    """Check logits/scores: a float tensor, last dim non-empty, no NaN, no +inf, not all -inf."""
    t = check_tensor(x, name, min_dim=1)
    if t.shape[-1] == 0:
        raise ValueError(f"{name} must have a non-empty last dimension, got shape {tuple(t.shape)}")
    if bool(torch.isfinite(t).all()):
        return t  # the common case costs one reduction
    if torch.isnan(t).any():
        raise ValueError(f"{name} contains NaN")
    if torch.isposinf(t).any():
        raise ValueError(f"{name} contains +inf")
    if torch.isneginf(t).any():
        if not allow_neg_inf:
            raise ValueError(f"{name} contains -inf")
        if torch.isneginf(t).all(dim=-1).any():
            raise ValueError(f"{name} is -inf for every category of some row")
    return t


def check_bernoulli_logits(x: object, name: str = "logits") -> Tensor:
    """Check Bernoulli logits: a float tensor of at least one dimension without NaN (±inf allowed)."""
    t = check_tensor(x, name, min_dim=1)
    if torch.isnan(t).any():
        raise ValueError(f"{name} contains NaN")
    return t


def check_positive(x: object, name: str) -> float:
    """Check a strictly positive finite real number (temperatures, slopes, rates)."""
    if isinstance(x, bool) or not isinstance(x, Real):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    value = float(x)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be positive and finite, got {x!r}")
    return value


def check_int(x: object, name: str, *, minimum: int) -> int:
    """Check an integer ``>= minimum`` (sample counts, k)."""
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError(f"{name} must be an int, got {type(x).__name__}")
    if x < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {x}")
    return x


def check_probability(x: object, name: str, *, open_low: bool = False) -> float:
    """Check a real number in [0, 1] (or (0, 1] with ``open_low``)."""
    if isinstance(x, bool) or not isinstance(x, Real):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    value = float(x)
    low_ok = value > 0 if open_low else value >= 0
    if not (low_ok and value <= 1):
        interval = "(0, 1]" if open_low else "[0, 1]"
        raise ValueError(f"{name} must be in {interval}, got {x!r}")
    return value


def check_index(x: object, name: str, size: int) -> int:
    """Check an int in ``[0, size)`` (a root vertex, a position)."""
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError(f"{name} must be an int, got {type(x).__name__}")
    if not 0 <= x < size:
        raise ValueError(f"{name} must be in [0, {size}), got {x}")
    return x


def check_output_shape(out: object, shape: tuple[int, ...], what: str, expected: str) -> Tensor:
    """A network's output as a tensor of ``shape`` (a trailing singleton dim is squeezed).

    ``what`` names the call (``"critic"``), ``expected`` says what it should return.
    """
    if not isinstance(out, Tensor):
        raise TypeError(f"{what} must return a tensor, got {type(out).__name__}")
    if out.shape == (*shape, 1):
        out = out.squeeze(-1)
    if out.shape != shape:
        raise ValueError(f"{what} must return {expected}, got shape {tuple(out.shape)}")
    return out
