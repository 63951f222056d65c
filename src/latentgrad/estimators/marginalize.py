"""Exact marginalization over the support, and the support sum it shares with
:class:`~latentgrad.estimators.SumAndSample`."""

from __future__ import annotations

from torch import Tensor

from latentgrad._validation import check_int
from latentgrad.estimators._base import (
    Estimate,
    Estimator,
    LatentDistribution,
    LossFn,
    check_support_size,
    evaluate_loss,
    mask_zero_prob,
)


def support_probs(dist: LatentDistribution, max_support: int) -> tuple[Tensor, Tensor]:
    """``dist.support_probs()`` after checking the support size against ``max_support``.

    Returns:
        ``(values, probs)``, shapes ``(S,) + batch_shape + event_shape`` and
        ``(S,) + batch_shape``.
    """
    check_support_size(dist, max_support)
    return dist.support_probs()


def support_sum(
    loss_fn: LossFn, values: Tensor, probs: Tensor, dist: LatentDistribution
) -> tuple[Tensor, Tensor]:
    """Evaluate ``loss_fn`` once on every row of ``values`` and sum ``probs * loss`` over the
    first ``probs.shape[0]`` rows, skipping exact zeros of ``probs``.

    Args:
        loss_fn: the loss.
        values: ``(N,) + batch_shape + event_shape``, the summed values first.
        probs: ``(M,) + batch_shape`` with ``M <= N``: the weights of the first ``M`` rows.
        dist: the distribution (for its batch shape).

    Returns:
        ``(sum, losses)`` of shapes ``batch_shape`` (differentiable in ``probs`` and the loss)
        and ``(N,) + batch_shape``.
    """
    losses = evaluate_loss(loss_fn, values, values.shape[:1], dist.batch_shape)
    return mask_zero_prob(probs, losses[: probs.shape[0]]), losses


class Marginalize(Estimator):
    """Exact expectation ``sum_{z: q(z) > 0} q(z) loss(z)`` and its exact gradient.

    The loss is evaluated once, batched, on every value the distribution returns from
    ``support_probs()``: all ``K`` categories for a softmax categorical, only the few values of
    nonzero probability for sparsemax (Correia et al. 2020), whose gradient is then exact and
    deterministic at the cost of the support size. Values of probability exactly 0 never enter
    the sum, so a NaN or infinite loss there does no harm.

    The distribution must declare ``has_enumerate_support``, and its support must be small
    enough (``max_support`` here, ``max_support_size`` of the family).

    Args:
        max_support: refuse (``ValueError``) distributions with more support points than this.

    Returns:
        :class:`Estimate` with ``loss_evals`` (the number of values the loss was evaluated
        on), ``losses`` (at every support value, ``(S,) + batch_shape``) and ``extras``:
        ``"support_size"`` (values of nonzero probability per batch element, a tensor of
        shape ``batch_shape``) and ``"probs"`` (their probabilities, detached).

    Example:
        >>> import torch, latentgrad as lg
        >>> logits = torch.zeros(3, 4, requires_grad=True)
        >>> out = lg.Marginalize()(lg.Categorical(logits=logits), lambda z: z[..., 0])
        >>> out.value
        tensor([0.2500, 0.2500, 0.2500])

    References:
        [1] Correia, Niculae, Aziz & Martins, "Efficient Marginalization of Discrete and
            Structured Latent Variables via Sparsity", NeurIPS 2020.
    """

    requires = ("has_enumerate_support",)

    def __init__(self, max_support: int = 2**16) -> None:
        super().__init__()
        self.max_support = check_int(max_support, "max_support", minimum=1)

    def extra_repr(self) -> str:
        return f"max_support={self.max_support}"

    def _estimate(
        self, dist: LatentDistribution, loss_fn: LossFn, context: Tensor | None
    ) -> Estimate:
        values, probs = support_probs(dist, self.max_support)
        total, losses = support_sum(loss_fn, values, probs, dist)
        return Estimate.from_terms(
            total.unsqueeze(0),
            losses=losses,
            loss_evals=values.shape[0],
            value=total,
            extras={"support_size": (probs > 0).sum(0), "probs": probs.detach()},
        )
