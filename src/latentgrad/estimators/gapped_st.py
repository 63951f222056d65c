"""Gapped straight-through (GST; Fan, Chi, Rudnicky & Ramadge, 2022): the backward pass of
straight-through Gumbel-Softmax through a deterministic, "gapped" perturbation of the logits."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from latentgrad._validation import check_positive
from latentgrad.estimators._straight_through import (
    SurrogateStraightThrough,
    sigmoid_jacobian_term,
    softmax_jacobian_term,
    softmax_last,
)
from latentgrad.schedules import Schedule

Gap = float | Literal["p"]

#: Below this probability of the sampled value, ``-log(1 - p) / p`` is computed as
#: ``1 + p / 2`` (its expansion), which avoids ``0 / 0``.
_SMALL_P = 1e-4


def expected_gap(log_p: Tensor, log_rest: Tensor) -> Tensor:
    """``-log(1 - p) / p``: the mean gap between the winning and the runner-up perturbed logit
    of Gumbel-max given that the category of probability ``p`` won (GST-p's gap).

    The difference of the winner's and the best other perturbed logit is logistic with
    location ``logit(p)``; given that it is positive its mean is ``log(1 + e^logit p) / p =
    -log(1 - p) / p``. It is 1 as ``p -> 0`` and grows without bound as ``p -> 1``.

    Args:
        log_p: ``log p``; log_rest: ``log(1 - p)`` (computed stably by the caller).

    Example:
        >>> import torch
        >>> from latentgrad.estimators.gapped_st import expected_gap
        >>> p = torch.tensor([1e-8, 0.5])
        >>> expected_gap(p.log(), torch.log1p(-p))
        tensor([1.0000, 1.3863])
    """
    p = log_p.exp()
    small = p < _SMALL_P
    safe_p = torch.where(small, torch.ones_like(p), p)
    return torch.where(small, 1 + p / 2, -log_rest / safe_p)


def gapped_logits(theta: Tensor, index: Tensor, gap: Gap) -> Tensor:
    """GST's perturbed logits: the sampled category raised to the largest logit, every other
    one lowered to at most ``gap`` below it.

    ``theta_tilde_i = max_j theta_j`` for the sampled ``i`` and ``theta_tilde_j = min(theta_j,
    max theta - gap)`` otherwise, so ``argmax theta_tilde = i`` with a margin of at least
    ``gap`` (the "gapped" consistency of straight-through Gumbel-Softmax's perturbed logits),
    with no noise. ``gap="p"`` uses :func:`expected_gap` of the sampled category's probability
    (GST-p). Detached.

    Args:
        theta: logits, ``batch_shape + (K,)``.
        index: the sampled category, ``lead + batch_shape`` (integer).
        gap: a positive float, or ``"p"``.

    Returns:
        ``lead + batch_shape + (K,)``.

    Example:
        >>> import torch
        >>> from latentgrad.estimators.gapped_st import gapped_logits
        >>> gapped_logits(torch.tensor([1.0, 0.0, 2.0]), torch.tensor(1), 1.0)
        tensor([1., 2., 1.])
    """
    theta = theta.detach()
    k = theta.shape[-1]
    shape = torch.Size((*torch.broadcast_shapes(index.shape, theta.shape[:-1]), k))
    chosen = F.one_hot(index, k).bool().expand(shape)
    theta = theta.expand(shape)
    top = theta.amax(-1, keepdim=True)
    if gap == "p":
        log_z = torch.logsumexp(theta, dim=-1, keepdim=True)
        log_p = theta.gather(-1, index.expand(shape[:-1]).unsqueeze(-1)) - log_z
        rest = torch.where(chosen, torch.full_like(theta, -torch.inf), theta)
        log_rest = torch.logsumexp(rest, dim=-1, keepdim=True) - log_z
        margin = expected_gap(log_p, log_rest)
    else:
        margin = torch.as_tensor(gap, dtype=theta.dtype, device=theta.device)
    return torch.where(chosen, top, torch.minimum(theta, top - margin))


def _check_gap(gap: object) -> Gap:
    if gap == "p" and isinstance(gap, str):
        return "p"
    if isinstance(gap, str):
        raise ValueError(f"gap must be a positive number or 'p', got {gap!r}")
    return check_positive(gap, "gap")


class GappedStraightThrough(SurrogateStraightThrough):
    """Gapped straight-through (GST): forward ``z ~ q``, backward through a deterministic soft
    sample whose logits are "gapped" around the sampled category.

    The paper keeps the two properties of straight-through Gumbel-Softmax's perturbed logits
    ``theta + G`` that matter — the sampled category is their argmax (consistency), and it wins
    by a gap — and drops the noise. The backward pass differentiates
    ``y = softmax(theta_tilde / tau)`` with ``theta_tilde = theta + stopgrad(delta)`` the
    :func:`gapped_logits`::

        theta_tilde_i = max_j theta_j  (i sampled),   theta_tilde_j = min(theta_j, max theta - gap)
        grad_theta = J(y) g / tau,   J(y) = diag(y) - y y^T,   g = d loss / d z

    GST-1.0 uses ``gap = 1``; GST-p uses ``gap = -log(1 - p_i) / p_i``, the mean gap of
    Gumbel-max given that category ``i`` (of probability ``p_i``) won
    (:func:`expected_gap`). Bits are the two-class case with logits ``(a, 0)``:
    ``y = sigmoid(s max(s a, gap) / tau)``, ``s = 2 z - 1``. Biased (like the estimator it
    imitates); no Gumbel noise, one loss evaluation per sample.

    ``tau`` may be a :class:`~latentgrad.schedules.Schedule` (advanced by :meth:`step`). The
    distribution must be a :class:`~latentgrad.distributions.Categorical` or
    :class:`~latentgrad.distributions.Bernoulli`, or independent units of them.

    Args:
        gap: a positive float (``1.0``: GST-1.0) or ``"p"`` (GST-p).
        tau: temperature, a positive float or a schedule.
        num_samples: samples ``S`` per batch element.

    Returns:
        :class:`~latentgrad.estimators.Estimate` whose ``value`` is the mean loss of the
        samples (honest), with ``loss_evals`` (``S``), ``losses`` and ``extras``: ``"tau"``
        and ``"gap"``.

    Shape:
        ``value``, ``surrogate``: ``batch_shape``; ``per_sample``: ``(S,) + batch_shape``.

    Example:
        >>> import torch, latentgrad as lg
        >>> from latentgrad.estimators import GappedStraightThrough
        >>> logits = torch.zeros(8, 200, requires_grad=True)
        >>> est = GappedStraightThrough(gap="p", tau=0.5)
        >>> out = est(lg.Bernoulli(logits=logits), lambda z: z.sum(-1))
        >>> out.surrogate.mean().backward()
        >>> out.value.shape, logits.grad.shape, out.extras["gap"]
        (torch.Size([8]), torch.Size([8, 200]), 'p')

    References:
        [1] Fan, Chi, Rudnicky & Ramadge, "Training Discrete Deep Generative Models via Gapped
            Straight-Through Estimator", ICML 2022.
    """

    def __init__(self, gap: Gap = 1.0, tau: float | Schedule = 1.0, num_samples: int = 1) -> None:
        super().__init__(tau, num_samples)
        self.gap: Gap = _check_gap(gap)

    def extra_repr(self) -> str:
        return f"gap={self.gap!r}, num_samples={self.num_samples}"

    def _extras(self, tau: float) -> dict[str, object]:
        return {"tau": tau, "gap": self.gap}

    def _categorical_term(self, theta: Tensor, z: Tensor, tau: float) -> Tensor:
        perturbed = gapped_logits(theta, z.argmax(-1), self.gap)
        y = softmax_last(perturbed / tau)
        return softmax_jacobian_term(y, theta) / tau

    def _bernoulli_term(self, a: Tensor, z: Tensor, tau: float) -> Tensor:
        sign = 2 * z - 1
        own = sign * a.detach()  # logit of the sampled value
        if self.gap == "p":
            margin = expected_gap(F.logsigmoid(own), F.logsigmoid(-own))
        else:
            margin = torch.full_like(own, self.gap)
        y = torch.sigmoid(sign * torch.maximum(own, margin) / tau)
        return sigmoid_jacobian_term(y, a) / tau
