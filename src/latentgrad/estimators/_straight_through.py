"""Machinery shared by the straight-through successors (ReinMax, Gumbel-Rao, gapped ST).

Each of them forwards an exact discrete sample ``z ~ q`` and replaces the zero Jacobian of the
sampling step by a surrogate one, a softmax (or sigmoid) Jacobian evaluated at a point the
estimator chooses. They differ only in that point; this module holds the rest: the temperature,
the number of samples, the loss call, and the family dispatch (one-hot categoricals and
bit-vectors, also as independent units of :meth:`~latentgrad.distributions.DiscreteDistribution.to_event`).

A surrogate Jacobian is attached with a *linear* term whose Jacobian w.r.t. the logits is the
wanted one: for a point ``p`` on the simplex (detached), ``p * (theta - <p, theta>)`` has
Jacobian ``diag(p) - p p^T`` w.r.t. ``theta``, the softmax Jacobian at ``p``. Unlike
``softmax(theta + stopgrad(log p - theta))`` it needs no logarithm, so categories of
probability 0 (``-inf`` logits) give exact zeros instead of ``-inf - (-inf)``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from latentgrad._numerics import upcast
from latentgrad._validation import check_int, check_positive
from latentgrad.distributions import Capability, Categorical
from latentgrad.estimators._base import (
    Estimate,
    Estimator,
    LatentDistribution,
    LossFn,
    evaluate_loss,
    latent_family,
    zero_forward,
)
from latentgrad.schedules import Constant, Schedule, Scheduled

Family = Literal["categorical", "bernoulli"]


def unit_family(dist: LatentDistribution, by: str) -> Family:
    """``"categorical"`` or ``"bernoulli"``: the family of ``dist``'s units.

    Raises:
        TypeError: naming ``dist`` when it is neither a :class:`Categorical` nor a
            :class:`Bernoulli` (possibly reinterpreted with ``to_event``).
    """
    return "categorical" if isinstance(latent_family(dist, by), Categorical) else "bernoulli"


def _finite_part(theta: Tensor) -> Tensor:
    """``theta`` with infinite entries replaced by 0 (their gradient is then exactly 0)."""
    return torch.where(torch.isfinite(theta), theta, torch.zeros_like(theta))


def softmax_last(x: Tensor) -> Tensor:
    """``softmax(x, -1)`` of a detached tensor with at least one finite entry per row.

    Written as ``exp(x - max) / sum`` because ``torch.softmax`` over a short last dim (the
    categories) is about 10x slower on CPU than these vectorized passes (measured at
    ``(10, 100, 20, 10)``, one thread, torch 2.13: 6.6 ms against 0.5 ms).
    """
    e = (x - x.amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)


def softmax_jacobian_term(p: Tensor, theta: Tensor) -> Tensor:
    """A tensor whose Jacobian w.r.t. ``theta`` is ``diag(p) - p p^T`` (``p`` detached).

    Only its gradient is meant to be used (wrap it in :func:`zero_forward`). Entries of
    ``theta`` that are infinite get gradient 0; ``p`` must be 0 there.

    Shape:
        ``p``: ``(*, K)``; ``theta``: broadcastable to it; returns ``p``'s shape.
    """
    p = p.detach()
    t = _finite_part(theta)
    return p * (t - (p * t).sum(-1, keepdim=True))


def sigmoid_jacobian_term(p: Tensor, a: Tensor) -> Tensor:
    """A tensor whose derivative w.r.t. ``a`` is ``p (1 - p)`` elementwise (``p`` detached).

    Shape:
        ``p``: any; ``a``: broadcastable to it; returns ``p``'s shape.
    """
    p = p.detach()
    return p * (1 - p) * _finite_part(a)


def as_temperature(tau: float | Schedule) -> Schedule:
    """A schedule from a positive float (constant) or a schedule, checked now."""
    schedule = tau if isinstance(tau, Schedule) else Constant(check_positive(tau, "tau"))
    current_temperature(schedule)
    return schedule


def current_temperature(schedule: Schedule) -> float:
    """The schedule's value, checked to be a usable temperature."""
    value = schedule.value
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"the tau schedule gave {value!r}; tau must be positive and finite")
    return value


class SurrogateStraightThrough(Estimator, Scheduled):
    """Base class: forward ``z ~ q``, backward a surrogate Jacobian chosen by the subclass.

    Subclasses implement :meth:`_categorical_term` and :meth:`_bernoulli_term`, which return a
    tensor whose Jacobian w.r.t. the logits is the estimator's (built with
    :func:`softmax_jacobian_term` / :func:`sigmoid_jacobian_term`), in the compute dtype.
    """

    requires: tuple[Capability, ...] = ("has_logits",)

    def __init__(self, tau: float | Schedule, num_samples: int) -> None:
        super().__init__()
        self.tau_schedule = as_temperature(tau)
        self.num_samples = check_int(num_samples, "num_samples", minimum=1)

    @property
    def tau(self) -> float:
        """The current temperature."""
        return current_temperature(self.tau_schedule)

    def step(self, n: int = 1) -> float:
        """Advance the temperature schedule by ``n`` steps; return the new temperature."""
        self.tau_schedule.step(n)
        return self.tau

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}"

    def straight_through(self, dist: LatentDistribution, z: Tensor) -> Tensor:
        """``z`` in the forward pass, this estimator's surrogate Jacobian in the backward pass.

        Args:
            dist: the :class:`Categorical` or :class:`Bernoulli` (or ``to_event`` of them)
                that ``z`` was drawn from.
            z: samples, ``sample_shape + batch_shape + event_shape`` (one-hot or 0/1 values).

        Returns:
            A tensor equal to ``z`` (exactly) whose gradient reaches ``dist.logits``.
        """
        family = unit_family(dist, type(self).__name__)
        logits: Tensor = dist.logits  # type: ignore[union-attr]
        theta = upcast(logits)
        zc = upcast(z.detach())
        if family == "categorical":
            term = self._categorical_term(theta, zc, self.tau)
        else:
            term = self._bernoulli_term(theta, zc, self.tau)
        return z.detach() + zero_forward(term.to(z.dtype))

    def _categorical_term(self, theta: Tensor, z: Tensor, tau: float) -> Tensor:
        raise NotImplementedError

    def _bernoulli_term(self, a: Tensor, z: Tensor, tau: float) -> Tensor:
        raise NotImplementedError

    def _extras(self, tau: float) -> dict[str, object]:
        return {"tau": tau}

    def _estimate(
        self, dist: LatentDistribution, loss_fn: LossFn, context: Tensor | None
    ) -> Estimate:
        unit_family(dist, type(self).__name__)
        tau = self.tau
        s = self.num_samples
        z = self.straight_through(dist, dist.sample((s,)))
        losses = evaluate_loss(loss_fn, z, (s,), dist.batch_shape)
        return Estimate.from_terms(losses, losses=losses, loss_evals=s, extras=self._extras(tau))
