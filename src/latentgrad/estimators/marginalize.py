"""Exact marginalization over the support."""

from __future__ import annotations

from torch import Tensor
from torch.distributions import Distribution

from latentgrad._validation import check_int
from latentgrad.estimators._base import (
    Estimate,
    LossFn,
    check_distribution,
    check_loss_fn,
    check_support_size,
    evaluate_loss,
    mask_zero_prob,
)


class Marginalize:
    """Exact expectation ``sum_{z: q(z) > 0} q(z) loss(z)`` and its exact gradient.

    The loss is evaluated once, batched, on every value the distribution returns from
    ``support_probs()``: all ``K`` categories for a softmax categorical, only the few values of
    nonzero probability for sparsemax (Correia et al. 2020), whose gradient is then exact and
    deterministic at the cost of the support size. Values of probability exactly 0 never enter
    the sum, so a NaN or infinite loss there does no harm.

    Args:
        max_support: refuse (``ValueError``) distributions with more support points than this.

    Returns:
        :class:`Estimate` with ``extras["support_size"]`` (values of nonzero probability per
        batch element, a tensor of shape ``batch_shape``) and ``extras["loss_evals"]`` (the
        number of values the loss was evaluated on).

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

    def __init__(self, max_support: int = 2**16) -> None:
        self.max_support = check_int(max_support, "max_support", minimum=1)

    def __repr__(self) -> str:
        return f"Marginalize(max_support={self.max_support})"

    def __call__(
        self, dist: Distribution, loss_fn: LossFn, *, context: Tensor | None = None
    ) -> Estimate:
        dist = check_distribution(dist)
        loss_fn = check_loss_fn(loss_fn)
        check_support_size(dist, self.max_support)
        values, probs = dist.support_probs()
        losses = evaluate_loss(loss_fn, values, values.shape[:1], dist.batch_shape)
        surrogate = mask_zero_prob(probs, losses)
        return Estimate(
            value=surrogate.detach(),
            surrogate=surrogate,
            per_sample=surrogate.unsqueeze(0),
            extras={
                "loss_evals": values.shape[0],
                "support_size": (probs > 0).sum(0),
                "losses": losses.detach(),
                "probs": probs.detach(),
            },
        )
