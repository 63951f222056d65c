"""VIMCO: leave-one-out learning signals for multi-sample objectives (Mnih & Rezende)."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from torch import Tensor

from latentgrad._numerics import upcast
from latentgrad._validation import check_int, own_samples
from latentgrad.estimators._base import (
    Estimate,
    Estimator,
    LatentDistribution,
    LossFn,
    evaluate_loss,
    score_term,
)


class VIMCO(Estimator):
    """VIMCO for the multi-sample bound ``-log (1/K) sum_k exp(-loss(z_k))``, ``z_k ~ q`` i.i.d.

    **The contract differs from the other estimators'**: they estimate ``E_q[loss(z)]``; VIMCO
    estimates the multi-sample objective

        F(z_1..K) = -log (1/K) sum_k w_k,     w_k = exp(-loss(z_k)),

    whose expectation over the ``K`` samples is the objective (the class attribute
    :attr:`objective` says so: ``"multi-sample"``). With ``loss(z) = -log p(x, z) + log q(z | x)``
    (the negative log importance weight, ``log q`` differentiable in ``q``'s parameters) ``-F``
    is the importance-weighted bound of Burda et al. (IWAE), and ``E[F] >= -log p(x)``.

    The gradient estimate is [1]

        sum_k (F - F_{-k}) grad log q(z_k) + sum_k w~_k grad loss(z_k),

    with ``w~_k = w_k / sum_j w_j`` (the pathwise part, from differentiating ``F`` itself) and
    the leave-one-out baseline ``F_{-k}``: ``F`` with ``log w_k`` replaced by the mean of the
    other samples' ``log w_j`` (their geometric mean). ``F_{-k}`` does not depend on ``z_k``, so
    the estimate is unbiased for ``grad E[F]``; the signal ``F - F_{-k}`` is the contribution of
    sample ``k`` to the bound.

    The ``K`` samples form one estimate (the bound is not an average of per-sample terms), so
    ``per_sample`` has one row: the variance of VIMCO is measured over independent calls.

    Args:
        num_samples: ``K >= 2``, the samples of the bound.

    Returns:
        :class:`Estimate` with ``value`` the bound ``F`` (**not** a mean loss), ``per_sample``
        of shape ``(1,) + batch_shape``, ``loss_evals`` ``K``, ``losses`` (``(K,) +
        batch_shape``, the negative log-weights) and ``extras``: ``"baseline"`` (``F_{-k}``,
        ``(K,) + batch_shape``) and ``"weights"`` (``w~_k``, ``(K,) + batch_shape``).

    Shape:
        ``dist``: batch ``B``, event ``E``; ``loss_fn``: ``(K,) + B + E -> (K,) + B``;
        ``value``, ``surrogate``: ``B``.

    Example:
        A VAE's negative log-weights ``-log p(x | z) - log p(z) + log q(z | x)`` under a uniform
        prior over 4 classes:

        >>> import math, torch, latentgrad as lg
        >>> from latentgrad.estimators import VIMCO
        >>> logits = torch.zeros(3, 4, requires_grad=True)
        >>> q = lg.Categorical(logits=logits)
        >>> nll = torch.tensor([1.0, 2.0, 3.0, 4.0])  # -log p(x | z = e_c)
        >>> loss_fn = lambda z: (z * nll).sum(-1) + math.log(4) + q.log_prob(z)
        >>> out = VIMCO(num_samples=5)(q, loss_fn)
        >>> out.value.shape, out.loss_evals, out.per_sample.shape
        (torch.Size([3]), 5, torch.Size([1, 3]))
        >>> out.surrogate.sum().backward()
        >>> logits.grad.shape
        torch.Size([3, 4])

    References:
        [1] Mnih & Rezende, "Variational Inference for Monte Carlo Objectives", ICML 2016.
        [2] Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
    """

    objective: ClassVar[Literal["multi-sample"]] = "multi-sample"
    """What the estimate is of: ``-log (1/K) sum_k exp(-loss(z_k))``, not ``E_q[loss]``."""

    def __init__(self, num_samples: int = 5) -> None:
        super().__init__()
        self.num_samples = check_int(num_samples, "num_samples", minimum=2)

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}"

    def _estimate(
        self, dist: LatentDistribution, loss_fn: LossFn, context: Tensor | None
    ) -> Estimate:
        k = self.num_samples
        z = dist.sample((k,))
        losses = evaluate_loss(loss_fn, z, (k,), dist.batch_shape)
        log_w = -upcast(losses)
        bound = math.log(k) - torch.logsumexp(log_w, 0)  # differentiable: the pathwise part
        baseline = leave_one_out_bounds(log_w.detach())
        with own_samples():  # z was just drawn from dist
            log_q = upcast(dist.log_prob(z))
        signal = bound.detach() - baseline
        surrogate = bound + score_term(log_q, signal).sum(0)
        return Estimate.from_terms(
            surrogate.unsqueeze(0).to(losses.dtype),
            losses=losses,
            loss_evals=k,
            value=bound.to(losses.dtype),
            extras={"baseline": baseline, "weights": torch.softmax(log_w.detach(), 0)},
        )


def leave_one_out_bounds(log_w: Tensor) -> Tensor:
    """VIMCO's baselines ``F_{-k}``: ``-log (1/K) sum_j exp(l_j)`` with ``l_k`` replaced by the
    mean of the others, ``(sum_j l_j - l_k) / (K - 1)`` (the log of their geometric mean).

    Args:
        log_w: the log-weights ``l_k``, ``(K,) + B`` with ``K >= 2`` (finite).

    Returns:
        ``F_{-k}``, shape ``(K,) + B``.

    Example:
        >>> import torch
        >>> from latentgrad.estimators.vimco import leave_one_out_bounds
        >>> leave_one_out_bounds(torch.tensor([0.0, 0.0, 3.0]))
        tensor([-2.1427, -2.1427,  0.0000])
    """
    k = log_w.shape[0]
    others = (log_w.sum(0, keepdim=True) - log_w) / (k - 1)  # (K,) + B
    eye = torch.eye(k, dtype=torch.bool, device=log_w.device)
    eye = eye.reshape((k, k) + (1,) * (log_w.dim() - 1))
    # Row k: the log-weights with entry k replaced by the mean of the others.
    replaced = torch.where(eye, others.unsqueeze(1), log_w.unsqueeze(0))
    return math.log(k) - torch.logsumexp(replaced, 1)


__all__ = ["VIMCO", "leave_one_out_bounds"]
