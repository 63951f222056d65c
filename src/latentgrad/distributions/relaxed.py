"""Relaxed (Concrete) distributions: continuous densities for relaxed samples.

A relaxed sample ``y = softmax((logits + G) / tau)`` lives on the simplex; its density (the
Concrete density) is needed for KL terms between relaxed posteriors and priors. Relaxed
coordinates underflow to 0 easily (``exp(-160)`` is 0 in float32), so the densities here are
computed in log space: :meth:`RelaxedCategorical.rsample_log` returns ``log y`` without forming
``y`` and :meth:`RelaxedCategorical.log_prob_log` evaluates the density there (finite for every
finite input).

:meth:`~RelaxedCategorical.log_prob` on ``y`` itself is the density at ``y`` as stored, exact down to
the smallest subnormal. Two cases need more than ``y``:

* The sample :meth:`rsample` returned last: each distribution keeps a weak one-entry cache
  (:class:`_LastSample`, in the spirit of the ``x <-> y`` cache of ``torch.distributions``'
  transforms) of its coordinates ``log y`` (``logit y`` for bits) as computed before ``y`` was
  rounded to its dtype. Where a coordinate of ``y`` rounded to the boundary (``y_i = 0``, or
  ``y_d = 1`` for bits) the density uses the cached one, so it stays exact; the gradient flows
  through the cached coordinates, well scaled in every dtype (no ``1 / y`` overflowing float16).
* Any other value: an exact 0 or 1 counts as the nearest representable point inside the
  support, and the gradient w.r.t. ``y`` is 0 where ``1 / y`` would overflow ``y``'s dtype.
"""

from __future__ import annotations

import math
import weakref
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution, constraints

from latentgrad._numerics import gumbel_noise, logistic_noise, upcast
from latentgrad._validation import (
    check_bernoulli_logits,
    check_in_support,
    check_positive,
    check_sample,
    check_scores,
    is_meta,
    resolve_validate_args,
)

_Shape = torch.Size | list[int] | tuple[int, ...]


def _to_dtype(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Cast ``x`` down to ``dtype`` saturating instead of overflowing to ``±inf``."""
    if x.dtype == dtype:
        return x
    info = torch.finfo(dtype)
    return x.clamp(info.min, info.max).to(dtype)


def _smallest_positive(dtype: torch.dtype) -> float:
    """The smallest positive (subnormal) number of ``dtype``."""
    info = torch.finfo(dtype)
    return info.tiny * info.eps


def _log_floored(y: Tensor, floor: float, smallest: float) -> Tensor:
    """``log y`` exact down to ``smallest``, differentiable only where ``y >= floor``.

    Below ``floor`` the derivative ``1 / y`` would overflow the dtype of the gradient, so there
    the value is still ``log y`` (``log smallest`` for ``y = 0``, also when denormals are flushed)
    but its gradient is 0, as for a clamp.
    """
    exact = y.detach().log().clamp_min(math.log(smallest))
    return torch.where(y < floor, exact, y.clamp_min(floor).log())


def _log1m_floored(y: Tensor, floor: float, eps: float) -> Tensor:
    """``log(1 - y)`` as :func:`_log_floored` on ``1 - y``: exact down to ``1 - y = eps / 2``.

    ``eps / 2`` is the distance from 1 to the largest number below 1 in ``y``'s original dtype,
    so ``1 - y`` is never positive below it; the gradient is 0 where ``1 - y < floor``.
    """
    floor = max(floor, eps / 2)  # else y = 1 would be differentiated: 0 * inf = NaN
    exact = torch.log1p(-y.detach()).clamp_min(math.log(eps / 2))
    # 1 - y is exact for y >= 1/2 (Sterbenz), the only place where the mask can be true.
    return torch.where(1 - y < floor, exact, torch.log1p(-y.clamp_max(1 - floor)))


def _value_with_gradient_of(value: Tensor, x: Tensor, keep: Tensor) -> Tensor:
    """``value`` where ``keep`` but with the gradient of ``x`` there, ``x`` elsewhere.

    ``value`` is a coordinate read from a stored sample and ``x`` the same coordinate before
    rounding: they differ by rounding, so ``x + (value - x)`` is ``value`` up to one rounding.
    """
    return torch.where(keep, x + (value - x).detach(), x)


class _LastSample:
    """Weak one-entry cache: the exact coordinates of the last sample a distribution returned.

    :meth:`put` keeps a weak reference to the returned sample ``y`` and a strong one to its
    coordinates ``x`` (``log y`` or ``logit y``, before rounding to ``y``'s dtype); the entry is
    dropped when ``y`` is freed, so ``x`` and its graph live no longer than the sample (the cost:
    one tensor of the sample's size, in the compute dtype, while the sample lives). :meth:`get`
    returns ``x`` only for that very tensor, unchanged since: not after an in-place change (its
    version counter moved) nor after ``requires_grad_`` (the caller then wants a gradient w.r.t.
    ``y`` itself). Like ``torch.distributions.transforms.Transform``'s ``_cached_x_y``, the cache
    is keyed on identity: a copy (``y.clone()``, ``y.detach()``) is a different value.
    """

    __slots__ = ("__weakref__", "_entry")

    def __init__(self) -> None:
        self._entry: tuple[weakref.ref[Tensor], int, bool, Tensor] | None = None

    def put(self, y: Tensor, x: Tensor) -> None:
        this = weakref.ref(self)  # the callback must not keep the cache alive

        def drop(ref: weakref.ref[Tensor]) -> None:
            cache = this()
            if cache is not None and cache._entry is not None and cache._entry[0] is ref:
                cache._entry = None

        # One tuple, assigned at once: a concurrent put never leaves a mixed entry.
        self._entry = (weakref.ref(y, drop), y._version, y.requires_grad, x)

    def get(self, y: Tensor) -> Tensor | None:
        entry = self._entry
        if entry is None or entry[0]() is not y:
            return None
        if y._version != entry[1] or y.requires_grad != entry[2]:
            return None
        return entry[3]

    def __reduce__(self) -> tuple[type[_LastSample], tuple[()]]:
        return (type(self), ())  # copies and pickles start empty


class _Relaxed(Distribution):
    """Shared construction and :meth:`expand` of the two relaxed families."""

    has_rsample = True
    logits: Tensor
    tau: float
    _last: _LastSample

    def __init__(self, logits: Tensor, tau: float, validate_args: bool | None = None) -> None:
        self.logits = logits
        self.tau = check_positive(tau, "tau")
        self._last = _LastSample()
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=False)
        self._validate_args = resolve_validate_args(validate_args)

    def expand(self, batch_shape: Any, _instance: Any = None) -> _Relaxed:
        batch_shape = torch.Size(batch_shape)
        new = self._get_checked_instance(type(self), _instance)
        new.logits = self.logits.expand(batch_shape + self.event_shape)
        new.tau = self.tau
        new._last = _LastSample()
        Distribution.__init__(new, batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def sample(self, sample_shape: _Shape = ()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def _check_value(self, value: Tensor, name: str = "value") -> Tensor:
        check_sample(value, self.batch_shape, self.event_shape, self.logits, name)
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
        return value

    def _check_support(self, value: Tensor) -> None:
        """The support check of :meth:`log_prob` (``validate_args``), for values that are not
        this distribution's own last sample."""
        if self._validate_args:
            check_in_support(self, value)

    def _in_support(self, value: Tensor) -> Tensor:
        raise NotImplementedError

    def _support_text(self) -> str:
        raise NotImplementedError

    def _log_density_out(self, x: Tensor) -> Tensor:
        # A log-density beyond float16's range saturates instead of becoming -inf.
        return _to_dtype(x, self.logits.dtype)

    def _noise_shape(self, sample_shape: _Shape) -> torch.Size:
        return torch.Size(sample_shape) + self.batch_shape + self.event_shape


class RelaxedCategorical(_Relaxed):
    """Concrete (Gumbel-Softmax) distribution on the simplex, ``y = softmax((logits + G) / tau)``.

    The density of ``y`` w.r.t. Lebesgue measure on its first ``K - 1`` coordinates is

    ``p(y) = Γ(K) tau^(K-1) prod_i (pi_i y_i^(-tau-1)) / (sum_i pi_i y_i^(-tau))^K``.

    :meth:`rsample_log` draws ``x = log y = log_softmax((logits + G) / tau)`` directly (the
    ExpConcrete variable) and :meth:`log_prob_log` gives its density

    ``log Γ(K) + (K-1) log tau + sum_i (l_i - tau x_i) - K logsumexp_i(l_i - tau x_i)``

    with ``l = log_softmax(logits)``, computed as ``sum_i (v_i - logsumexp(v))`` so it is finite
    for any finite ``x``. It is the density w.r.t. ``dy_1...dy_{K-1} / prod_i y_i`` (equivalently
    ``dx_1...dx_{K-1} / y_K``, the same whichever coordinate is dropped), so
    ``log_prob(y) = log_prob_log(log y) - sum_i log y_i``; the measure cancels in a KL between
    two relaxed densities.

    Prefer the log-space pair (exact, and the gradient through the sample stays well scaled).
    :meth:`log_prob` evaluates at ``log y``, exact down to the smallest subnormal. For the
    sample :meth:`rsample` returned last (the very tensor, see :class:`_LastSample`) a ``y_i``
    that underflowed to 0 is replaced by its cached exact ``log y_i`` and the gradient flows
    through the cached coordinates, so that sample's density is exact and its gradient well
    scaled. For any other ``y`` an exact ``y_i = 0`` counts as the smallest subnormal (the
    density at the nearest representable point, finite where
    :class:`torch.distributions.RelaxedOneHotCategorical` returns NaN or inf) and the gradient
    w.r.t. ``y_i`` is 0 below ``y_min``, the larger of the dtype's ``tiny`` and
    ``2 (1 + (K+1) tau) / finfo.max``, below which it would not be representable in ``y``'s
    dtype (about ``1e-37`` in float32, ``6e-5`` in float16).
    Log-densities beyond the range of a half-precision dtype saturate at its extremes.

    Args:
        logits: unnormalized log-probabilities, shape ``batch_shape + (K,)``, finite.
        tau: temperature, a positive float.
        validate_args: whether :meth:`log_prob` checks that its value is on the simplex
            (``None``: torch's default, on unless
            ``Distribution.set_default_validate_args(False)``); the parameters are always
            checked.

    Shape:
        ``batch_shape = logits.shape[:-1]``, ``event_shape = (K,)``; samples
        ``sample_shape + batch_shape + (K,)``, densities ``sample_shape + batch_shape``.
        Half-precision inputs are computed in float32 and returned in their dtype.

    Example:
        >>> import torch
        >>> from latentgrad.distributions.relaxed import RelaxedCategorical
        >>> _ = torch.manual_seed(0)
        >>> q = RelaxedCategorical(torch.tensor([3.0, 0.0, -3.0]), tau=0.1)
        >>> y = q.rsample((1000,))  # some y_i underflow: far below float32's tiny
        >>> bool((y < torch.finfo(torch.float32).tiny).any()), bool(q.log_prob(y).isfinite().all())
        (True, True)
        >>> q = RelaxedCategorical(torch.tensor([80.0, -80.0, -80.0]), tau=1.0)
        >>> x = q.rsample_log((4,))
        >>> bool(q.log_prob_log(x).isfinite().all()), bool(q.log_prob(x.exp()).isfinite().all())
        (True, True)

    References:
        [1] Maddison, Mnih & Teh, "The Concrete Distribution", ICLR 2017.
        [2] Jang, Gu & Poole, "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017.
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {
        "logits": constraints.real_vector
    }
    support = constraints.simplex

    def __init__(self, logits: Tensor, tau: float, validate_args: bool | None = None) -> None:
        super().__init__(check_scores(logits, "logits", allow_neg_inf=False), tau, validate_args)

    def _in_support(self, value: Tensor) -> Tensor:
        # Normalizing in log space and rounding each coordinate move the sum off 1 by a few
        # eps times the scale of the scores, and K eps / 2: sqrt(eps) + K eps covers both. At
        # least float32's eps: float64 values are often upcast float32 samples.
        eps = max(torch.finfo(value.dtype).eps, torch.finfo(torch.float32).eps)
        tol = math.sqrt(eps) + self.event_shape[0] * eps
        inside = ((value >= 0) & (value <= 1)).all(-1)
        return inside & ((value.sum(-1) - 1).abs() <= tol)

    def _support_text(self) -> str:
        return f"the probability simplex: {self.event_shape[0]} entries >= 0 summing to 1"

    def _scores(self, sample_shape: _Shape) -> Tensor:
        noise = gumbel_noise(self._noise_shape(sample_shape), self.logits)
        return (upcast(self.logits) + noise) / self.tau

    def rsample(self, sample_shape: _Shape = ()) -> Tensor:
        """Relaxed one-hot sample ``y``, shape ``sample_shape + batch_shape + (K,)``.

        Its exact coordinates ``log y`` are kept for :meth:`log_prob` (see :class:`_LastSample`).
        """
        x = torch.log_softmax(self._scores(sample_shape), -1)
        y = x.exp().to(self.logits.dtype)
        self._last.put(y, x)
        return y

    def rsample_log(self, sample_shape: _Shape = ()) -> Tensor:
        """``log y`` computed in log space (finite), shape ``sample_shape + batch_shape + (K,)``."""
        return _to_dtype(torch.log_softmax(self._scores(sample_shape), -1), self.logits.dtype)

    def log_prob_log(self, value: Tensor) -> Tensor:
        """Log-density of ``x = log y`` (ExpConcrete), shape ``sample_shape + batch_shape``."""
        return self._log_density_out(self._log_prob_log(upcast(self._check_value(value))))

    def _log_prob_log(self, x: Tensor) -> Tensor:
        k = self.event_shape[0]
        logits = torch.log_softmax(upcast(self.logits), -1)
        v = logits - self.tau * x
        log_norm = math.lgamma(k) + (k - 1) * math.log(self.tau)
        # sum_i (v_i - logsumexp v) rather than sum_i v_i - K logsumexp v: no cancellation.
        return (v - v.logsumexp(-1, keepdim=True)).sum(-1) + log_norm

    def log_prob(self, value: Tensor) -> Tensor:
        """Log-density of ``y`` on the simplex, shape ``sample_shape + batch_shape``."""
        value = self._check_value(value)
        x = self._last.get(value)
        if x is not None:
            y = upcast(value.detach())
            log_y = _value_with_gradient_of(y.log(), x, y > 0)
        else:
            self._check_support(value)
            y_min = self._y_min(value.dtype)
            log_y = _log_floored(upcast(value), y_min, _smallest_positive(value.dtype))
        return self._log_density_out(self._log_prob_log(log_y) - log_y.sum(-1))

    def _y_min(self, dtype: torch.dtype) -> float:
        """Smallest ``y_i`` at which the gradient of :meth:`log_prob` w.r.t. ``y`` is finite.

        That gradient is ``(K tau w_i - tau - 1) / y_i`` with ``0 <= w_i <= 1``, in ``dtype``
        (the dtype of ``y``, not the one computed in); below ``tiny`` ``y_i`` has lost
        precision anyway.
        """
        info = torch.finfo(dtype)
        k = self.event_shape[0]
        return max(info.tiny, 2 * (1 + (k + 1) * self.tau) / info.max)


class RelaxedBernoulli(_Relaxed):
    """Binary Concrete distribution of bit-vectors, ``y_d = sigmoid((a_d + L_d) / tau)``.

    As in :class:`~latentgrad.distributions.bernoulli.Bernoulli`, the event is the whole vector
    (the last dim of ``logits``) and densities sum over it. The numerically exact variable is the
    logit ``x = logit(y) = (a + L) / tau`` with logistic ``L``, whose density is
    ``log tau + log sigmoid(a - tau x) + log sigmoid(tau x - a)`` per unit (finite for any
    finite ``x``): use :meth:`rsample_logit` and :meth:`log_prob_logit`. :meth:`log_prob`
    evaluates at ``y``, exact down to the smallest subnormal and up to the largest number below
    1. For the sample :meth:`rsample` returned last a ``y_d`` that rounded to 0 or 1 is replaced
    by its cached exact logit and the gradient flows through the cached logits (see
    :class:`_LastSample`). For any other ``y`` an exact 0 or 1 counts as the nearest
    representable point inside ``(0, 1)``, and the gradient is 0 where ``y`` or ``1 - y`` is
    below ``max(tiny, 2 (tau + 2) / finfo.max)`` of ``y``'s dtype, where it would not be
    representable.

    Args:
        logits: log-odds ``a``, shape ``batch_shape + (D,)``, finite.
        tau: temperature, a positive float.
        validate_args: whether :meth:`log_prob` checks that its value is in ``[0, 1]^D``
            (``None``: torch's default); the parameters are always checked.

    Shape:
        ``batch_shape = logits.shape[:-1]``, ``event_shape = (D,)``; samples
        ``sample_shape + batch_shape + (D,)``, densities ``sample_shape + batch_shape``.

    Example:
        >>> import torch
        >>> from latentgrad.distributions.relaxed import RelaxedBernoulli
        >>> q = RelaxedBernoulli(torch.tensor([[200.0, -3.0]]), tau=0.5)
        >>> x = q.rsample_logit((2,))
        >>> q.log_prob_logit(x).shape, bool(q.log_prob(torch.sigmoid(x)).isfinite().all())
        (torch.Size([2, 1]), True)

    References:
        [1] Maddison, Mnih & Teh, "The Concrete Distribution", ICLR 2017.
        [2] Jang, Gu & Poole, "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017.
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {
        "logits": constraints.real_vector
    }
    support = constraints.independent(constraints.unit_interval, 1)

    def __init__(self, logits: Tensor, tau: float, validate_args: bool | None = None) -> None:
        logits = check_bernoulli_logits(logits, "logits")
        if not is_meta(logits) and bool(torch.isinf(logits).any()):
            raise ValueError("logits must be finite (the relaxed density is degenerate at ±inf)")
        super().__init__(logits, tau, validate_args)

    def _in_support(self, value: Tensor) -> Tensor:
        return ((value >= 0) & (value <= 1)).all(-1)

    def _support_text(self) -> str:
        return f"[0, 1]^{self.event_shape[0]}: every entry in [0, 1]"

    def _logit(self, sample_shape: _Shape) -> Tensor:
        noise = logistic_noise(self._noise_shape(sample_shape), self.logits)
        return (upcast(self.logits) + noise) / self.tau

    def rsample(self, sample_shape: _Shape = ()) -> Tensor:
        """Relaxed bits ``y`` in ``[0, 1]``, shape ``sample_shape + batch_shape + (D,)``.

        Its exact logits are kept for :meth:`log_prob` (see :class:`_LastSample`).
        """
        x = self._logit(sample_shape)
        y = torch.sigmoid(x).to(self.logits.dtype)
        self._last.put(y, x)
        return y

    def rsample_logit(self, sample_shape: _Shape = ()) -> Tensor:
        """``x = logit(y)`` without forming ``y``, shape ``sample_shape + batch_shape + (D,)``."""
        return _to_dtype(self._logit(sample_shape), self.logits.dtype)

    def _unit_log_prob_logit(self, x: Tensor) -> Tensor:
        u = upcast(self.logits) - self.tau * x
        return math.log(self.tau) + F.logsigmoid(u) + F.logsigmoid(-u)

    def log_prob_logit(self, value: Tensor) -> Tensor:
        """Log-density of ``x = logit(y)`` (Lebesgue), shape ``sample_shape + batch_shape``."""
        x = upcast(self._check_value(value))
        return self._log_density_out(self._unit_log_prob_logit(x).sum(-1))

    def log_prob(self, value: Tensor) -> Tensor:
        """Log-density of ``y`` in ``(0, 1)^D``, shape ``sample_shape + batch_shape``."""
        value = self._check_value(value)
        x = self._last.get(value)
        if x is not None:
            y = upcast(value.detach())
            logit = _value_with_gradient_of(y.log() - torch.log1p(-y), x, (y > 0) & (y < 1))
            # -log y - log(1 - y) = softplus(-logit) + softplus(logit)
            out = self._unit_log_prob_logit(logit) + F.softplus(logit) + F.softplus(-logit)
            return self._log_density_out(out.sum(-1))
        self._check_support(value)
        info = torch.finfo(value.dtype)
        # As for RelaxedCategorical: the gradient w.r.t. y is at most (tau + 2) / y in size, and
        # (tau + 2) / (1 - y) near 1, in y's dtype. Capped at 1/4 for absurd tau.
        floor = min(max(info.tiny, 2 * (self.tau + 2) / info.max), 0.25)
        y = upcast(value)
        log_y = _log_floored(y, floor, _smallest_positive(value.dtype))
        log_1my = _log1m_floored(y, floor, info.eps)
        out = self._unit_log_prob_logit(log_y - log_1my) - log_y - log_1my
        return self._log_density_out(out.sum(-1))
