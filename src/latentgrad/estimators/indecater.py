"""IndeCateR: per-unit exact sums for independent categorical units (De Smet et al.)."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from latentgrad._validation import check_int
from latentgrad.estimators._base import (
    Estimate,
    Estimator,
    LatentDistribution,
    LossFn,
    evaluate_loss,
)
from latentgrad.estimators.local_reparam import flip_correction, local_estimate


class IndeCateR(Estimator):
    """IndeCateR: for each unit, the exact sum over its values with the other units sampled.

    For a latent of independent categorical units ``z = (z_1..z_U)``, ``z_i ~ q_i`` (a
    :class:`~latentgrad.Categorical` with ``.to_event``, or bits, which are 2-class units), the
    gradient of ``E_q[f]`` with respect to unit ``i``'s parameters is
    ``E_{z_{-i}}[sum_c grad q_i(c) f(z_{-i}, z_i = c)]``. IndeCateR [1] estimates the outer
    expectation with ``N`` samples ``z^(n) ~ q`` (shared by all units) and sums the inner one
    exactly:

        (1/N) sum_n sum_i sum_c grad q_i(c) [f(z^(n); z_i = c) - f(z^(n))] + grad_theta f(z^(n)).

    Unbiased. Subtracting ``f(z^(n))`` changes nothing in expectation (``sum_c grad q_i(c) =
    0``) but avoids cancellation between large losses; the pathwise term is the gradient of the
    loss's own parameters at the samples.

    **Relation to** :class:`~latentgrad.estimators.LocalReparam` **and**
    :class:`~latentgrad.estimators.LocalExpectation`: for one stochastic layer all three compute
    this same sum (local expectation gradients [2] and Tokui & Sato's local marginalization
    [3] differ only in how they treat layers above the unit, see their ``chain``), and the
    code is shared (:func:`~latentgrad.estimators.local_reparam.flip_correction`,
    :func:`~latentgrad.estimators.local_reparam.local_estimate`). The paper counts
    ``N * U * C`` loss evaluations; the ``U`` rows in which a unit keeps its sampled value are
    all the sample itself, so here each sample costs ``1 + sum_i (C_i - 1)`` evaluations, made
    in one call on the stacked rows ``[z; variants]`` (the layout of :class:`LocalReparam`).
    ``loss_evals`` counts them for all ``N`` samples (LocalReparam reports them per sample).

    The distribution must declare ``has_local_variants`` (independent units that can be
    changed one at a time).

    Args:
        num_samples: the samples ``N`` of the units not summed.

    Returns:
        :class:`Estimate` with ``value`` the mean loss at the ``N`` samples, ``per_sample``
        ``(N,) + batch_shape``, ``loss_evals`` ``N * (1 + V)`` with ``V = sum_i (C_i - 1)``,
        ``losses`` ``(N,) + batch_shape`` and ``extras``: ``"variant_losses"``
        (``(V, N) + batch_shape``) and ``"num_variants"`` (``(V,)``).

    Shape:
        ``dist``: batch ``B``, event ``E``; ``loss_fn``: ``(1 + V, N) + B + E -> (1 + V, N) +
        B``; ``value``, ``surrogate``: ``B``.

    Example:
        Two examples of 3 units with 4 classes each (``V = 3 * 3 = 9`` variants per sample):

        >>> import torch, latentgrad as lg
        >>> from latentgrad.estimators import IndeCateR
        >>> logits = torch.zeros(2, 3, 4, requires_grad=True)
        >>> weights = torch.arange(4.0)
        >>> loss_fn = lambda z: ((z * weights).sum(-1) - 1.5).pow(2).sum(-1)
        >>> out = IndeCateR(num_samples=2)(lg.Categorical(logits=logits).to_event(1), loss_fn)
        >>> out.loss_evals, out.per_sample.shape
        (20, torch.Size([2, 2]))
        >>> out.surrogate.sum().backward()
        >>> logits.grad[0, 0]  # exact here: the loss is additive over units
        tensor([ 0.2500, -0.2500, -0.2500,  0.2500])

    References:
        [1] De Smet, Sansone & Zuidberg Dos Martires, "Differentiable Sampling of Categorical
            Distributions Using the CatLog-Derivative Trick", NeurIPS 2023.
        [2] Titsias & Lázaro-Gredilla, "Local Expectation Gradients for Black Box Variational
            Inference", NeurIPS 2015.
        [3] Tokui & Sato, "Evaluating the Variance of Likelihood-Ratio Gradient Estimators",
            ICML 2017.
    """

    requires = ("has_local_variants",)

    def __init__(self, num_samples: int = 1) -> None:
        super().__init__()
        self.num_samples = check_int(num_samples, "num_samples", minimum=1)

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}"

    def _estimate(
        self, dist: LatentDistribution, loss_fn: LossFn, context: Tensor | None
    ) -> Estimate:
        n = self.num_samples
        z = dist.sample((n,))
        variants = dist.local_variants(z)  # values (V, N) + B + E, probs (V, N) + B
        rows = torch.cat([z.unsqueeze(0), variants.values], 0)
        losses = evaluate_loss(loss_fn, rows, rows.shape[:2], dist.batch_shape)
        base = losses[0]
        per_sample = base + flip_correction(variants.probs, losses[1:] - base).to(base.dtype)
        out = local_estimate(per_sample, losses, [variants.probs])
        return dataclasses.replace(out, loss_evals=n * rows.shape[0])


__all__ = ["IndeCateR"]
