"""Sum-and-sample: exact sum over the most probable values, one score-function sample of the rest."""

from __future__ import annotations

import torch
from torch import Tensor

from latentgrad._numerics import gumbel_noise, safe_log, upcast
from latentgrad._validation import check_int
from latentgrad.estimators._base import Estimate, Estimator, LatentDistribution, LossFn, score_term
from latentgrad.estimators.marginalize import support_probs, support_sum


class SumAndSample(Estimator):
    """Rao-Blackwellized score function: sum the ``k`` likeliest values, sample one of the rest.

    With ``C`` the ``k`` most probable values of ``q`` and ``R = 1 - q(C)`` the mass of the
    rest, the estimate of ``E_q[f]`` is

        sum_{z in C} q(z) f(z) + R f(z'),     z' ~ q(. | not C) = q(z') / R,

    and its gradient ``sum_{z in C} grad[q(z) f(z)] + R [f(z') grad log q(z') + grad f(z')]``
    (``R`` not differentiated). Both are unbiased; the summed part is exact, so the variance
    shrinks as ``R`` does, and once ``C`` covers every value of nonzero probability (``R = 0``)
    the estimate is exact: no sample is taken into account and nothing is NaN. When ``k`` is at
    least the support size, no sample is drawn at all and the result equals
    :class:`~latentgrad.estimators.marginalize.Marginalize` (the same support sum).

    The loss is evaluated once on the ``k + 1`` values (``k`` summed, one sampled), so the
    distribution must declare ``has_enumerate_support`` (``support_probs()``).

    Args:
        k: number of values summed exactly.
        max_support: refuse (``ValueError``) distributions with more support points than this.

    Returns:
        :class:`Estimate` with ``per_sample`` of shape ``(1,) + batch_shape``, ``loss_evals``
        (``min(k + 1, S)``), ``losses`` (``(loss_evals,) + batch_shape``, the summed values
        first, then the sampled one) and ``extras``: ``"rest_mass"`` (``R``, shape
        ``batch_shape``) and ``"num_summed"`` (``min(k, S)``).

    Shape:
        ``dist``: batch ``B``, event ``E``, support size ``S``; ``loss_fn``:
        ``(min(k + 1, S),) + B + E -> (min(k + 1, S),) + B``; ``value``, ``surrogate``: ``B``.

    Example:
        >>> import torch, latentgrad as lg
        >>> from latentgrad.estimators.sum_and_sample import SumAndSample
        >>> logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]], requires_grad=True)
        >>> out = SumAndSample(k=2)(lg.Categorical(logits=logits), lambda z: z[..., 1] + z[..., 3])
        >>> out.loss_evals, round(float(out.extras["rest_mass"]), 4)
        (3, 0.1192)
        >>> out.surrogate.sum().backward()
        >>> SumAndSample(k=4)(lg.Categorical(logits=logits), lambda z: z[..., 1]).value
        tensor([0.2369])

    References:
        [1] Liu, Regier, Tripuraneni, Jordan & McAuliffe, "Rao-Blackwellized Stochastic
            Gradients for Discrete Distributions", ICML 2019.
    """

    requires = ("has_enumerate_support",)

    def __init__(self, k: int = 1, max_support: int = 2**16) -> None:
        super().__init__()
        self.k = check_int(k, "k", minimum=1)
        self.max_support = check_int(max_support, "max_support", minimum=1)

    def extra_repr(self) -> str:
        return f"k={self.k}, max_support={self.max_support}"

    def _estimate(
        self, dist: LatentDistribution, loss_fn: LossFn, context: Tensor | None
    ) -> Estimate:
        values, probs = support_probs(dist, self.max_support)  # (S,) + B + E, (S,) + B
        batch_shape = dist.batch_shape
        num_values = values.shape[0]
        k = min(self.k, num_values)
        if k == num_values:
            # Everything is summed: Marginalize's sum, nothing sampled.
            total, losses = support_sum(loss_fn, values, probs, dist)
            return Estimate.from_terms(
                total.unsqueeze(0),
                losses=losses,
                loss_evals=num_values,
                value=total,
                extras={"rest_mass": probs.new_zeros(batch_shape), "num_summed": k},
            )
        top = upcast(probs.detach()).topk(k, dim=0).indices  # (k,) + B
        in_top = torch.zeros(probs.shape, dtype=torch.bool, device=probs.device)
        in_top.scatter_(0, top, True)
        rest = upcast(probs.detach()).masked_fill(in_top, 0)
        # Gumbel-max over the rest; rows with no rest pick index 0, later weighted by R = 0.
        noisy = safe_log(rest) + gumbel_noise(rest.shape, rest)
        index = torch.cat([top, noisy.argmax(0, keepdim=True)], 0)  # (k + 1,) + B
        n_event = len(values.shape) - 1 - len(batch_shape)
        event_index = index.reshape(index.shape + (1,) * n_event)
        z = values.gather(0, event_index.expand(index.shape + values.shape[1 + len(batch_shape) :]))
        total, losses = support_sum(loss_fn, z, probs.gather(0, top), dist)
        rest_mass = rest.sum(0)
        has_rest = rest_mass > 0
        loss = torch.where(has_rest, losses[k], torch.zeros_like(losses[k]))
        prob = probs.gather(0, index[k:]).squeeze(0)
        # Route zero probabilities around the log so its gradient stays finite.
        log_prob = torch.where(prob > 0, prob, torch.ones_like(prob)).log()
        rest_mass = rest_mass.to(probs.dtype)
        total = total + rest_mass * (loss + score_term(log_prob, loss))
        return Estimate.from_terms(
            total.unsqueeze(0),
            losses=losses,
            loss_evals=k + 1,
            value=total,
            extras={"rest_mass": rest_mass, "num_summed": k},
        )
