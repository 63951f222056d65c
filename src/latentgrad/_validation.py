"""Argument checks that raise ``TypeError``/``ValueError`` naming the offending argument.

The one vocabulary of checks for the whole library: tensors (:func:`check_tensor`), scores of
every kind (:func:`check_scores` for logits, :func:`check_structure_scores` for item scores
where ``-inf`` marks an absent item, :func:`check_finite_scores` where every entry counts),
dimensions (:func:`check_dim`), counts and sizes (:func:`check_int`, :func:`check_k`,
:func:`check_optional_int`), real parameters and indices, and the values a distribution scores
(:func:`check_sample` for their type, device and shape, :func:`check_in_support` for the
support, gated by :func:`resolve_validate_args` as ``torch.distributions`` gates it).

Checks that read the data (NaN, ranges, supports) are skipped for tensors on the ``meta``
device (:func:`is_meta`), which have shapes but no values: building a model on ``meta``
(shape-only use) works, and the checks run once the tensors are real.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from numbers import Real
from typing import Protocol

import torch
from torch import Tensor
from torch.distributions import Distribution


def is_meta(x: object) -> bool:
    """Whether ``x`` is a tensor on the ``meta`` device (shape only: no data to check)."""
    return isinstance(x, Tensor) and x.device.type == "meta"


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


def check_part_mask(x: object, name: str, d: int) -> Tensor:
    """Check that ``x`` is a bool tensor of shape ``(d,)`` (one flag per part)."""
    if not isinstance(x, Tensor) or x.dtype != torch.bool:
        got = f"a {x.dtype} tensor" if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"{name} must be a bool tensor over the {d} parts, got {got}")
    if x.shape != (d,):
        raise ValueError(f"{name} must have shape ({d},), got {tuple(x.shape)}")
    return x


def check_dim(dim: object, x: Tensor, name: str = "dim", of: str = "x") -> int:
    """A valid, non-empty dimension of ``x``, returned non-negative; ``of`` names ``x``."""
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"{name} must be an int, got {type(dim).__name__}")
    ndim = x.dim()
    if not -ndim <= dim < ndim:
        raise ValueError(f"{name}={dim} is out of range for {of}, which has {ndim} dimension(s)")
    dim %= ndim
    if x.shape[dim] == 0:
        raise ValueError(
            f"{name}={dim} is an empty dimension of {of} (shape {tuple(x.shape)}); {of} needs "
            "at least one entry along it"
        )
    return dim


def check_scores(x: object, name: str = "logits", *, allow_neg_inf: bool = True) -> Tensor:
    """Check logits/scores: a float tensor, last dim non-empty, no NaN, no +inf, not all -inf."""
    t = check_tensor(x, name, min_dim=1)
    if t.shape[-1] == 0:
        raise ValueError(f"{name} must have a non-empty last dimension, got shape {tuple(t.shape)}")
    if is_meta(t) or bool(torch.isfinite(t).all()):
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
    """Item scores of a structure: a float tensor with ``event_dims`` non-empty trailing dims, no
    NaN and no ``+inf``; ``-inf`` is allowed (it marks an absent item; the family checks what
    remains)."""
    t = check_tensor(x, name, min_dim=event_dims)
    _check_event_not_empty(t, name, event_dims)
    if not is_meta(t) and not bool(torch.isfinite(t).all()):
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
    _check_event_not_empty(t, name, event_dims)
    if not is_meta(t) and not bool(torch.isfinite(t).all()):
        if torch.isnan(t).any():
            raise ValueError(f"{name} contains NaN; it must be finite")
        sign = "+" if torch.isposinf(t).any() else "-"
        reason = f" ({why})" if why and sign == "-" else ""
        raise ValueError(f"{name} must be finite, got {sign}inf{reason}")
    return t


def _check_event_not_empty(t: Tensor, name: str, event_dims: int) -> None:
    if any(size == 0 for size in t.shape[t.dim() - event_dims :]):
        what = "a non-empty last dimension" if event_dims == 1 else "non-empty event dims"
        raise ValueError(f"{name} must have {what}, got shape {tuple(t.shape)}")


def check_bernoulli_logits(x: object, name: str = "logits") -> Tensor:
    """Check Bernoulli logits: a float tensor with a non-empty last dimension and no NaN (±inf
    allowed)."""
    t = check_tensor(x, name, min_dim=1)
    _check_event_not_empty(t, name, 1)
    if not is_meta(t) and bool(torch.isnan(t).any()):
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


def check_nonnegative(x: object, name: str) -> float:
    """Check a finite real number ``>= 0`` (tolerances)."""
    if isinstance(x, bool) or not isinstance(x, Real):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    value = float(x)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {x!r}")
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


def resolve_validate_args(validate_args: object) -> bool:
    """Whether a distribution checks the values it scores, as ``torch.distributions`` decides.

    ``None`` means torch's default (``Distribution._validate_args``: on unless
    :meth:`torch.distributions.Distribution.set_default_validate_args` turned it off).
    """
    if validate_args is None:
        return bool(Distribution._validate_args)
    if not isinstance(validate_args, bool):
        raise TypeError(f"validate_args must be a bool or None, got {type(validate_args).__name__}")
    return validate_args


class SupportChecked(Protocol):
    """What :func:`check_in_support` asks of a distribution."""

    @property
    def batch_shape(self) -> torch.Size: ...

    @property
    def event_shape(self) -> torch.Size: ...

    def _in_support(self, value: Tensor) -> Tensor:
        """Whether each value is in the support, bool ``sample_shape + batch_shape``."""
        ...

    def _support_text(self) -> str:
        """The support in words (``"one-hot vectors of length 3"``)."""
        ...


def check_sample(
    value: object,
    batch_shape: torch.Size,
    event_shape: torch.Size,
    like: Tensor,
    name: str = "value",
) -> torch.Size:
    """A value to score: a tensor on ``like``'s device ending with ``event_shape`` whose leading
    dims broadcast with ``batch_shape``. No data is read (no host sync).

    Returns:
        ``sample_shape + batch_shape`` of the value (its dims before the event).

    Example:
        >>> import torch
        >>> check_sample(torch.zeros(5, 2, 3), torch.Size([2]), torch.Size([3]), torch.zeros(()))
        torch.Size([5, 2])
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.device != like.device:
        raise ValueError(
            f"{name} is on device {value.device} but the distribution's parameters are on "
            f"{like.device}"
        )
    n = len(event_shape)
    if value.dim() < n or value.shape[value.dim() - n :] != event_shape:
        raise ValueError(
            f"{name} must end with the event shape {tuple(event_shape)}, got shape "
            f"{tuple(value.shape)}"
        )
    lead = value.shape[: value.dim() - n]
    tail = lead[max(0, len(lead) - len(batch_shape)) :]
    batch_tail = batch_shape[len(batch_shape) - len(tail) :]
    if any(a != b and a != 1 for a, b in zip(tail, batch_tail, strict=True)):
        raise ValueError(
            f"{name} must have shape sample_shape + batch_shape + event_shape with batch_shape "
            f"{tuple(batch_shape)}, got shape {tuple(value.shape)}"
        )
    return lead


_OWN_SAMPLES: ContextVar[bool] = ContextVar("latentgrad_own_samples", default=False)


@contextmanager
def own_samples() -> Iterator[None]:
    """Within this block :func:`check_in_support` checks nothing: for an estimator scoring the
    samples the distribution itself just drew (in the support by construction), so that the
    default validation costs nothing in its hot path. Wrap only that ``log_prob`` call, never a
    user's code (a loss function may score values of its own).

    Example:
        >>> import torch, latentgrad as lg
        >>> q = lg.Categorical(logits=torch.zeros(3))
        >>> with own_samples():
        ...     lp = q.log_prob(q.sample((4,)))
        >>> lp.shape
        torch.Size([4])
    """
    token = _OWN_SAMPLES.set(True)
    try:
        yield
    finally:
        _OWN_SAMPLES.reset(token)


def check_in_support(
    dist: SupportChecked, value: Tensor, name: str = "value", ok: Tensor | None = None
) -> None:
    """Raise ``ValueError`` if some value is outside ``dist``'s support.

    Skipped on ``meta`` tensors and inside :func:`own_samples`. The message names the argument,
    the family, its support and the first offending value.

    Args:
        dist: the distribution (its ``_in_support`` and ``_support_text``).
        value: the values, ``sample_shape + batch_shape + event_shape``.
        name: the argument's name in the error.
        ok: ``dist._in_support(value)`` when the caller has already computed it.
    """
    if _OWN_SAMPLES.get() or is_meta(value):
        return
    if ok is None:
        ok = dist._in_support(value)
    if bool(ok.all()):
        return
    bad = tuple(int(i) for i in torch.nonzero(~ok)[0].tolist()) if ok.dim() else ()
    n = len(dist.event_shape)
    event = value.shape[value.dim() - n :]
    shown = value.expand(*ok.shape, *event)[bad]
    got = f"got {shown.tolist()}" if shown.numel() <= 32 else "got a value outside it"
    where = f" at index {bad}" if bad else ""
    raise ValueError(
        f"{name} must be in the support of {type(dist).__name__} ({dist._support_text()}); "
        f"{got}{where}"
    )
