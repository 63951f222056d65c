"""Argument checks that raise ``TypeError``/``ValueError`` naming the offending argument.

The one vocabulary of checks for the whole library: tensors (:func:`check_tensor`), scores of
every kind (:func:`check_scores` for logits, :func:`check_structure_scores` for item scores
where ``-inf`` marks an absent item, :func:`check_finite_scores` where every entry counts),
dimensions (:func:`check_dim`), counts and sizes (:func:`check_int`, :func:`check_k`,
:func:`check_optional_int`), real parameters and indices.
"""

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
        got = f"shape {tuple(x.shape)}" if x.dim() else "a scalar (it needs at least one dimension)"
        raise ValueError(f"{name} must have at least {min_dim} dimension(s), got {got}")
    return x


def check_dim(dim: object, x: Tensor, name: str = "dim") -> int:
    """A valid, non-empty dimension of ``x``, returned non-negative."""
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"{name} must be an int, got {type(dim).__name__}")
    ndim = x.dim()
    if not -ndim <= dim < ndim:
        raise ValueError(f"{name}={dim} is out of range for a tensor with {ndim} dimension(s)")
    dim %= ndim
    if x.shape[dim] == 0:
        raise ValueError(f"{name}={dim} is an empty dimension of the input")
    return dim


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


def check_structure_scores(x: object, name: str = "scores", event_dims: int = 1) -> Tensor:
    """Item scores of a structure: a float tensor with ``event_dims`` trailing dims, no NaN and no
    ``+inf``; ``-inf`` is allowed (it marks an absent item; the family checks what remains)."""
    t = check_tensor(x, name, min_dim=event_dims)
    if not bool(torch.isfinite(t).all()):
        if torch.isnan(t).any():
            raise ValueError(f"{name} contains NaN")
        if torch.isposinf(t).any():
            raise ValueError(f"{name} contains +inf")
    return t


def check_finite_scores(
    x: object, name: str = "scores", event_dims: int = 1, why: str | None = None
) -> Tensor:
    """Scores that must all be finite: a float tensor with ``event_dims`` non-empty trailing dims.

    ``why`` (optional) says in the error why ``-inf`` cannot mark an absent item here.
    """
    t = check_tensor(x, name, min_dim=event_dims)
    if any(size == 0 for size in t.shape[t.dim() - event_dims :]):
        what = "a non-empty last dimension" if event_dims == 1 else "non-empty event dims"
        raise ValueError(f"{name} must have {what}, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        if torch.isnan(t).any():
            raise ValueError(f"{name} contains NaN; it must be finite")
        sign = "+" if torch.isposinf(t).any() else "-"
        reason = f" ({why})" if why and sign == "-" else ""
        raise ValueError(f"{name} must be finite, got {sign}inf{reason}")
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


def check_int(
    x: object, name: str, *, minimum: int, maximum: int | None = None, of: str = ""
) -> int:
    """Check an integer ``>= minimum`` (sample counts, sizes), and ``<= maximum`` if given.

    ``of`` names the upper bound in the error (``"the number of structures"``).
    """
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError(f"{name} must be an int, got {type(x).__name__}")
    if x < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {x}")
    if maximum is not None and x > maximum:
        bound = f"{of} ({maximum})" if of else str(maximum)
        raise ValueError(f"{name} must be at most {bound}, got {x}")
    return x


def check_optional_int(x: object, name: str, *, minimum: int) -> int | None:
    """``None``, or an integer ``>= minimum`` (optional hints such as a partial-sort size)."""
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError(f"{name} must be an int or None, got {type(x).__name__}")
    return check_int(x, name, minimum=minimum)


def check_k(k: object, n: int, name: str = "k", *, minimum: int = 1, of: str = "n") -> int:
    """A size ``k`` in ``[minimum, n]`` (a subset size, a number of steps or ones).

    ``of`` names ``n`` in the error (``"n"``, ``"d"``).
    """
    k = check_int(k, name, minimum=minimum)
    if k > n:
        raise ValueError(
            f"{name} must be in [{minimum}, {of}]: {name} must be <= {of} = {n}, got {k}"
        )
    return k


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
