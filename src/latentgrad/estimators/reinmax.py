"""ReinMax: straight-through with a second-order (Heun's method) correction (Liu et al., 2023)."""

from __future__ import annotations

import torch
from torch import Tensor

from latentgrad.estimators._straight_through import (
    SurrogateStraightThrough,
    sigmoid_jacobian_term,
    softmax_jacobian_term,
    softmax_last,
)
from latentgrad.schedules import Schedule


class ReinMax(SurrogateStraightThrough):
    """ReinMax: forward ``z ~ q``, backward a second-order correction of straight-through.

    Write ``pi = softmax(theta)``, ``J(p) = diag(p) - p p^T`` (the softmax Jacobian at ``p``)
    and ``g = d loss / d z`` at the sample. Straight-through uses ``J(pi) g`` (the forward
    Euler step of an ODE whose solution is the gradient); ReinMax uses Heun's method::

        grad_theta = 2 J(pi_half) g - 1/2 J(pi) g,    pi_half = (z + softmax(theta / tau)) / 2

    It needs no Gumbel noise (``z`` is a plain sample of ``q``) and costs what straight-through
    costs: one loss evaluation and one backward pass per sample. Bits are the two-class case
    with logits ``(a, 0)``: ``d/da = 2 h (1 - h) g - 1/2 s (1 - s) g``, ``s = sigmoid(a)``,
    ``h = (z + sigmoid(a / tau)) / 2``.

    The estimator is biased in general. With ``tau = 1`` its expectation is the trapezoidal
    rule for ``loss(e_i) - loss(e_j) ~ (grad loss(e_i) + grad loss(e_j))^T (e_i - e_j) / 2``
    inside the exact gradient ``sum_ij pi_j (loss(e_i) - loss(e_j)) d pi_i / d theta``, which
    is exact when the loss is quadratic in ``z``: **ReinMax is unbiased for losses at most
    quadratic in each unit** (and so for every linear loss), where straight-through is exact
    only for linear ones. With other temperatures it is biased even for quadratic losses; the
    paper recommends ``tau >= 1``.

    ``tau`` may be a :class:`~latentgrad.schedules.Schedule` (a submodule, advanced by
    :meth:`step`). The distribution must be a
    :class:`~latentgrad.distributions.Categorical` or
    :class:`~latentgrad.distributions.Bernoulli`, or independent units of them
    (``.to_event``); it must declare ``has_logits``.

    Args:
        tau: temperature of the ``softmax(theta / tau)`` in ``pi_half``, a positive float or a
            schedule.
        num_samples: samples ``S`` per batch element.

    Returns:
        :class:`~latentgrad.estimators.Estimate` whose ``value`` is the mean loss of the
        samples (honest), with ``loss_evals`` (``S``), ``losses`` and ``extras["tau"]``.

    Shape:
        ``value``, ``surrogate``: ``batch_shape``; ``per_sample``: ``(S,) + batch_shape``.

    Example:
        >>> import torch, latentgrad as lg
        >>> from latentgrad.estimators import ReinMax
        >>> logits = torch.zeros(8, 20, 10, requires_grad=True)
        >>> q = lg.Categorical(logits=logits).to_event(1)
        >>> out = ReinMax(tau=1.0)(q, lambda z: (z[..., 0] ** 2).sum(-1))
        >>> out.surrogate.mean().backward()
        >>> out.value.shape, logits.grad.shape, out.loss_evals
        (torch.Size([8]), torch.Size([8, 20, 10]), 1)

    References:
        [1] Liu, Dong, Liu, Yu & Gao, "Bridging Discrete and Backpropagation: Straight-Through
            and Beyond", NeurIPS 2023.
    """

    def __init__(self, tau: float | Schedule = 1.0, num_samples: int = 1) -> None:
        super().__init__(tau, num_samples)

    def _categorical_term(self, theta: Tensor, z: Tensor, tau: float) -> Tensor:
        pi = softmax_last(theta.detach())
        half = (z + softmax_last(theta.detach() / tau)) / 2
        return 2 * softmax_jacobian_term(half, theta) - 0.5 * softmax_jacobian_term(pi, theta)

    def _bernoulli_term(self, a: Tensor, z: Tensor, tau: float) -> Tensor:
        s = torch.sigmoid(a.detach())
        half = (z + torch.sigmoid(a.detach() / tau)) / 2
        return 2 * sigmoid_jacobian_term(half, a) - 0.5 * sigmoid_jacobian_term(s, a)
