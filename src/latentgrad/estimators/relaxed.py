"""Relaxation estimators: Gumbel-Softmax (Concrete), straight-through Gumbel-Softmax and
straight-through with an annealed slope.

These estimators are biased: they differentiate a continuous surrogate of the discrete sample
instead of the expectation itself. They are cheap (one loss evaluation per sample) and have low
variance, which is why they are popular; the bias shrinks with the temperature while the variance
grows.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from latentgrad._numerics import upcast
from latentgrad._validation import check_int, check_positive
from latentgrad.distributions import Capability
from latentgrad.estimators._base import (
    Estimate,
    Estimator,
    LatentDistribution,
    LossFn,
    evaluate_loss,
    zero_forward,
)
from latentgrad.schedules import Constant, Schedule, Scheduled


def _as_schedule(x: float | Schedule, name: str) -> Schedule:
    if isinstance(x, Schedule):
        return x
    return Constant(check_positive(x, name))


def _current(schedule: Schedule, name: str) -> float:
    """The schedule's value, checked to be a usable temperature or slope."""
    value = schedule.value
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"the {name} schedule gave {value!r}; {name} must be positive and finite")
    return value


class GumbelSoftmax(Estimator, Scheduled):
    """Gumbel-Softmax / Concrete relaxation, and its straight-through (``hard``) variant.

    With shared noise ``G`` the discrete sample is ``z = from_noise(G)`` (``one_hot(argmax(logits
    + G))`` for :class:`~latentgrad.distributions.categorical.Categorical`, ``1[L < a]`` for
    :class:`~latentgrad.distributions.bernoulli.Bernoulli`) and the relaxed one is
    ``y = softmax((logits + G) / tau)`` (binary Concrete ``sigmoid((a - L) / tau)`` for bits).

    * ``hard=False``: the loss is evaluated at ``y`` and differentiated through it. The
      surrogate's forward value is the mean *relaxed* loss, which is not an estimate of
      ``E_q[loss(z)]``. With ``honest_value=True`` the loss is also evaluated at the discrete
      samples ``z`` (same noise), in the same batched ``loss_fn`` call (the sample dim holds the
      ``S`` relaxed samples, then the ``S`` discrete ones), and ``value`` is their mean: an honest
      estimate at twice the loss evaluations. With ``honest_value=False``, ``value`` is the mean
      relaxed loss.
    * ``hard=True`` (straight-through Gumbel-Softmax): the loss sees exactly ``z`` (exactly
      one-hot even with ties) and its gradient flows back as if the sample were ``y``. The
      surrogate's forward value equals ``value``, an honest estimate.
    * ``hard=True, hard_at="mode"``: the loss sees the *mode* of ``q`` (``logits > 0`` for
      bits, the argmax one-hot for a categorical), the same for every sample, and the gradient
      flows back as if it were the relaxed sample ``y``. This is the straight-through estimator
      of Correia et al.'s released bit-vector VAE code (``gumbel_softmax_bit_vector_sample``).
      The forward pass is deterministic. With ``honest_value=True`` the loss is also evaluated
      at the discrete samples ``z`` (same noise, the same batched ``loss_fn`` call: the ``S``
      modes, then the ``S`` samples), and ``value`` is their mean, an honest estimate of
      ``E_q[loss(z)]`` at twice the loss evaluations; with ``honest_value=False`` ``value`` is
      the loss at the mode, *not* such an estimate. The gradient is the same either way.

    Both gradients are biased; the bias vanishes as ``tau -> 0`` while the variance grows. The
    gradient reaches the distribution's parameters through ``y`` and any parameters of
    ``loss_fn`` through the loss.

    ``tau`` may be a :class:`~latentgrad.schedules.Schedule`; it is a submodule, so
    ``state_dict`` checkpoints its step, and :meth:`step` advances it (call it once per
    training step; the estimator is :class:`~latentgrad.schedules.Scheduled`).

    The distribution must declare ``has_relaxation`` and ``has_noise`` (``Categorical``,
    ``Bernoulli``, ``SparsemaxCategorical`` and ``to_event`` of them).

    Args:
        tau: temperature, a positive float or a schedule of positive values.
        hard: forward the discrete sample (straight-through Gumbel-Softmax).
        num_samples: samples ``S`` per batch element.
        honest_value: with ``hard=False`` or ``hard_at="mode"``, also evaluate the loss at the
            discrete samples so that ``value`` estimates ``E_q[loss(z)]`` (ignored with
            ``hard=True, hard_at="sample"``, whose loss is already at the sample).
        hard_at: with ``hard=True``, the discrete point the loss sees: ``"sample"`` (``z ~ q``,
            Jang et al.) or ``"mode"`` (the mode of ``q``; needs ``hard=True``).

    Returns:
        :class:`~latentgrad.estimators.Estimate` with ``loss_evals`` (``S``, or ``2 S`` when
        ``honest_value`` adds the samples), ``losses`` (detached losses of the discrete samples
        when the loss was evaluated there, else of the points the loss saw) and ``extras``:
        ``"relaxed_losses"`` (``hard=False`` only), ``"mode_losses"`` (``hard_at="mode"``
        only) and ``"tau"`` (the temperature used).

    Shape:
        ``value``, ``surrogate``: ``batch_shape``; ``per_sample``: ``(S,) + batch_shape``.

    Example:
        >>> import torch, latentgrad as lg
        >>> from latentgrad.estimators.relaxed import GumbelSoftmax
        >>> from latentgrad.schedules import ExponentialDecay
        >>> logits = torch.zeros(8, 20, 10, requires_grad=True)
        >>> q = lg.Categorical(logits=logits).to_event(1)
        >>> est = GumbelSoftmax(tau=ExponentialDecay(rate=1e-4, every=1000), hard=True)
        >>> out = est(q, lambda z: z[..., 0].sum(-1))
        >>> out.surrogate.mean().backward()
        >>> out.value.shape, logits.grad.shape, est.step()
        (torch.Size([8]), torch.Size([8, 20, 10]), 1.0)

    References:
        [1] Jang, Gu & Poole, "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017.
        [2] Maddison, Mnih & Teh, "The Concrete Distribution", ICLR 2017.
    """

    requires = ("has_relaxation", "has_noise")

    def __init__(
        self,
        tau: float | Schedule = 1.0,
        hard: bool = False,
        num_samples: int = 1,
        honest_value: bool = True,
        hard_at: Literal["sample", "mode"] = "sample",
    ) -> None:
        super().__init__()
        if not isinstance(hard, bool):
            raise TypeError(f"hard must be a bool, got {type(hard).__name__}")
        if not isinstance(honest_value, bool):
            raise TypeError(f"honest_value must be a bool, got {type(honest_value).__name__}")
        if not isinstance(hard_at, str):
            raise TypeError(f"hard_at must be 'sample' or 'mode', got {type(hard_at).__name__}")
        if hard_at not in ("sample", "mode"):
            raise ValueError(f"hard_at must be 'sample' or 'mode', got {hard_at!r}")
        if hard_at == "mode" and not hard:
            raise ValueError("hard_at='mode' needs hard=True (the relaxed loss sees no mode)")
        self.tau_schedule = _as_schedule(tau, "tau")
        _current(self.tau_schedule, "tau")
        self.hard = hard
        self.num_samples = check_int(num_samples, "num_samples", minimum=1)
        self.honest_value = honest_value
        self.hard_at = hard_at

    @property
    def tau(self) -> float:
        """The current temperature."""
        return _current(self.tau_schedule, "tau")

    def step(self, n: int = 1) -> float:
        """Advance the temperature schedule by ``n`` steps; return the new temperature."""
        self.tau_schedule.step(n)
        return self.tau

    def extra_repr(self) -> str:
        at = f", hard_at={self.hard_at!r}" if self.hard_at != "sample" else ""
        return (
            f"hard={self.hard}, num_samples={self.num_samples}, "
            f"honest_value={self.honest_value}{at}"
        )

    def _estimate(
        self, dist: LatentDistribution, loss_fn: LossFn, context: Tensor | None
    ) -> Estimate:
        tau = self.tau
        s = self.num_samples
        batch_shape = dist.batch_shape
        noise = dist.sample_noise((s,))
        relaxed = dist.relaxed_from_noise(noise, tau)
        extras: dict[str, object] = {"tau": tau}
        mode = self.hard and self.hard_at == "mode"

        def discrete() -> Tensor:  # the samples of q at this noise (needed at most once)
            return dist.from_noise(noise).to(relaxed.dtype)

        if not self.hard:
            seen = relaxed
        else:
            # z + (y - y.detach()) is exactly z in the forward pass: y - y is exactly 0.
            seen = (dist.mode().to(relaxed.dtype) if mode else discrete()) + zero_forward(relaxed)
        # The relaxed point and the mode are not draws of q: the honest value also evaluates
        # the loss at the discrete samples of the same noise, in the same batched call.
        if self.honest_value and (mode or not self.hard):
            both = evaluate_loss(loss_fn, torch.cat([seen, discrete()]), (2 * s,), batch_shape)
            losses, honest = both[:s], both[s:]
        else:
            losses = honest = evaluate_loss(loss_fn, seen, (s,), batch_shape)
        if not self.hard or mode:
            extras["mode_losses" if mode else "relaxed_losses"] = losses.detach()
        evals = s if honest is losses else 2 * s
        return Estimate.from_terms(losses, losses=honest, loss_evals=evals, extras=extras)


def _scaled_mean(dist: LatentDistribution, slope: float) -> Tensor:
    """Mean of the family with logits ``slope * logits`` (the plain mean when ``slope == 1``)."""
    if slope == 1.0:
        return dist.mean
    logits: Tensor = dist.logits  # type: ignore[union-attr]
    # Scaled in float32 for half precision: slope * logits may overflow float16.
    scaled = dist.with_logits(upcast(logits) * slope)  # type: ignore[union-attr]
    return scaled.mean.to(logits.dtype)


def _is_one(schedule: Schedule) -> bool:
    """Whether ``schedule`` is the constant 1 (straight-through without a slope)."""
    return isinstance(schedule, Constant) and schedule.constant == 1.0


class StraightThrough(Estimator, Scheduled):
    """Straight-through estimator: forward a discrete sample, backward ``dz/dmean = identity``.

    The loss is evaluated at ``z + (p - p.detach())`` with ``z ~ q`` and ``p`` the mean of the
    distribution with logits ``slope * logits`` (softmax probabilities for a categorical,
    ``sigmoid(slope * a)`` for bits): the forward pass sees exactly ``z`` and the gradient
    w.r.t. the parameters is ``(d loss / d z) (d p / d params)``. With ``slope = 1`` this is
    unbiased when the loss is linear in ``z`` (and biased otherwise). Slope-annealed
    straight-through lets the slope grow during training (``slope=LinearGrowth(...)``), which
    makes ``p`` approach a step function.

    The distribution must declare ``has_mean_field``, and ``has_logits`` unless the slope is
    the constant 1.

    Args:
        slope: positive float or a schedule (a submodule; :meth:`step` advances it).
        num_samples: samples ``S`` per batch element.

    Returns:
        :class:`~latentgrad.estimators.Estimate` whose ``value`` is the honest mean loss of
        the samples, with ``loss_evals`` (``S``), ``losses`` and ``extras["slope"]``.

    Shape:
        ``value``, ``surrogate``: ``batch_shape``; ``per_sample``: ``(S,) + batch_shape``.

    Example:
        >>> import torch, latentgrad as lg
        >>> from latentgrad.estimators.relaxed import StraightThrough
        >>> from latentgrad.schedules import LinearGrowth
        >>> logits = torch.zeros(4, 16, requires_grad=True)
        >>> est = StraightThrough(slope=LinearGrowth(rate=0.01, maximum=5.0), num_samples=2)
        >>> out = est(lg.Bernoulli(logits=logits), lambda z: z.sum(-1))
        >>> out.surrogate.sum().backward()
        >>> logits.grad[0, 0].item(), est.step(100)
        (0.25, 2.0)

    References:
        [1] Bengio, Léonard & Courville, "Estimating or Propagating Gradients Through Stochastic
            Neurons for Conditional Computation", arXiv 2013.
        [2] Chung, Ahn & Bengio, "Hierarchical Multiscale Recurrent Neural Networks", ICLR 2017.
        [3] Jang, Gu & Poole, "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017.
    """

    requires: tuple[Capability, ...] = ("has_mean_field",)

    def __init__(self, slope: float | Schedule = 1.0, num_samples: int = 1) -> None:
        super().__init__()
        self.slope_schedule = _as_schedule(slope, "slope")
        _current(self.slope_schedule, "slope")
        self.num_samples = check_int(num_samples, "num_samples", minimum=1)
        if not _is_one(self.slope_schedule):
            rescaled: tuple[Capability, ...] = ("has_logits",)
            self.requires = type(self).requires + rescaled

    @property
    def slope(self) -> float:
        """The current slope."""
        return _current(self.slope_schedule, "slope")

    def step(self, n: int = 1) -> float:
        """Advance the slope schedule by ``n`` steps; return the new slope."""
        self.slope_schedule.step(n)
        return self.slope

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}"

    def _estimate(
        self, dist: LatentDistribution, loss_fn: LossFn, context: Tensor | None
    ) -> Estimate:
        slope = self.slope
        s = self.num_samples
        p = _scaled_mean(dist, slope)
        z = dist.sample((s,)) + zero_forward(p)
        losses = evaluate_loss(loss_fn, z, (s,), dist.batch_shape)
        return Estimate.from_terms(losses, losses=losses, loss_evals=s, extras={"slope": slope})
