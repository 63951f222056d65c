"""Relaxed (Concrete) distributions: continuous densities for relaxed samples.

A relaxed sample ``y = softmax((logits + G) / tau)`` lives on the simplex; its density (the
Concrete density) is needed for KL terms between relaxed posteriors and priors. Relaxed
coordinates underflow to 0 easily (``exp(-160)`` is 0 in float32), so the densities here are
computed in log space: :meth:`RelaxedCategorical.rsample_log` returns ``log y`` without forming
``y`` and :meth:`RelaxedCategorical.log_prob_log` evaluates the density there (finite for every
finite input). :meth:`~RelaxedCategorical.log_prob` on ``y`` itself stays finite by evaluating at
``max(y, tiny)``, which is exact unless ``y`` underflowed.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution, constraints

from latentgrad._numerics import gumbel_noise, logistic_noise, upcast
from latentgrad._validation import check_bernoulli_logits, check_positive, check_scores

_Shape = torch.Size | list[int] | tuple[int, ...]


def _to_dtype(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Cast ``x`` down to ``dtype`` saturating instead of overflowing to ``±inf``."""
    if x.dtype == dtype:
        return x
    info = torch.finfo(dtype)
    return x.clamp(info.min, info.max).to(dtype)


class _Relaxed(Distribution):
    """Shared construction and :meth:`expand` of the two relaxed families."""

    has_rsample = True
    logits: Tensor
    tau: float

    def __init__(self, logits: Tensor, tau: float, validate_args: bool | None = None) -> None:
        self.logits = logits
        self.tau = check_positive(tau, "tau")
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=False)

    def expand(self, batch_shape: Any, _instance: Any = None) -> _Relaxed:
        batch_shape = torch.Size(batch_shape)
        new = self._get_checked_instance(type(self), _instance)
        new.logits = self.logits.expand(batch_shape + self.event_shape)
        new.tau = self.tau
        Distribution.__init__(new, batch_shape, self.event_shape, validate_args=False)
        return new

    def sample(self, sample_shape: _Shape = ()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def _check_value(self, value: Tensor, name: str = "value") -> Tensor:
        if not isinstance(value, Tensor) or not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor")
        n = len(self.event_shape)
        if value.dim() < n or value.shape[value.dim() - n :] != self.event_shape:
            raise ValueError(
                f"{name} must end with the event shape {tuple(self.event_shape)}, "
                f"got shape {tuple(value.shape)}"
            )
        return value

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
    :meth:`log_prob` evaluates at ``log(max(y, y_min))`` with ``y_min`` the larger of the
    dtype's ``tiny`` and ``2 (1 + (K+1) tau) / finfo.max`` (below which the gradient w.r.t. ``y``
    is not representable; about ``1e-37`` in float32). That is exact unless some ``y_i``
    underflowed; then it is the density at a nearby representable point, finite with finite
    gradients, where :class:`torch.distributions.RelaxedOneHotCategorical` returns NaN or inf.
    Log-densities beyond the range of a half-precision dtype saturate at its extremes.

    Args:
        logits: unnormalized log-probabilities, shape ``batch_shape + (K,)``, finite.
        tau: temperature, a positive float.
        validate_args: kept for ``torch.distributions`` compatibility.

    Shape:
        ``batch_shape = logits.shape[:-1]``, ``event_shape = (K,)``; samples
        ``sample_shape + batch_shape + (K,)``, densities ``sample_shape + batch_shape``.
        Half-precision inputs are computed in float32 and returned in their dtype.

    Example:
        >>> import torch
        >>> from latentgrad.distributions.relaxed import RelaxedCategorical
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
        super().__init__(check_scores(logits, "logits", allow_neg_inf=False), tau)

    def _scores(self, sample_shape: _Shape) -> Tensor:
        noise = gumbel_noise(self._noise_shape(sample_shape), self.logits)
        return (upcast(self.logits) + noise) / self.tau

    def rsample(self, sample_shape: _Shape = ()) -> Tensor:
        """Relaxed one-hot sample ``y``, shape ``sample_shape + batch_shape + (K,)``."""
        return torch.softmax(self._scores(sample_shape), -1).to(self.logits.dtype)

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
        y = upcast(self._check_value(value))
        log_y = y.clamp_min(self._y_min(y.dtype)).log()
        return self._log_density_out(self._log_prob_log(log_y) - log_y.sum(-1))

    def _y_min(self, dtype: torch.dtype) -> float:
        """Smallest ``y_i`` at which the gradient of :meth:`log_prob` w.r.t. ``y`` is finite.

        That gradient is ``(K tau w_i - tau - 1) / y_i`` with ``0 <= w_i <= 1``; below ``tiny``
        ``y_i`` has lost precision anyway.
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
    finite ``x``): use :meth:`rsample_logit` and :meth:`log_prob_logit`. :meth:`log_prob` on
    ``y`` evaluates at ``y`` clamped to ``[y_min, 1 - eps/2]`` (``y_min`` as in
    :class:`RelaxedCategorical`, with ``K = 1``), exact unless ``y`` or ``1 - y`` underflowed.

    Args:
        logits: log-odds ``a``, shape ``batch_shape + (D,)``, finite.
        tau: temperature, a positive float.
        validate_args: kept for ``torch.distributions`` compatibility.

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
        if torch.isinf(logits).any():
            raise ValueError("logits must be finite (the relaxed density is degenerate at ±inf)")
        super().__init__(logits, tau)

    def _logit(self, sample_shape: _Shape) -> Tensor:
        noise = logistic_noise(self._noise_shape(sample_shape), self.logits)
        return (upcast(self.logits) + noise) / self.tau

    def rsample(self, sample_shape: _Shape = ()) -> Tensor:
        """Relaxed bits ``y`` in ``[0, 1]``, shape ``sample_shape + batch_shape + (D,)``."""
        return torch.sigmoid(self._logit(sample_shape)).to(self.logits.dtype)

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
        y = upcast(self._check_value(value))
        info = torch.finfo(y.dtype)
        # As for RelaxedCategorical: the gradient w.r.t. y is at most (tau + 2) / y in size.
        y = y.clamp(max(info.tiny, 2 * (self.tau + 2) / info.max), 1 - info.eps / 2)
        log_y, log_1my = y.log(), torch.log1p(-y)
        out = self._unit_log_prob_logit(log_y - log_1my) - log_y - log_1my
        return self._log_density_out(out.sum(-1))
