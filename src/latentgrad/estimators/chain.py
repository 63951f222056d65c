"""Estimators for chains of stochastic layers: ``z_1 ~ q_1``, ``z_{l+1} ~ q_{l+1}(. | z_l)``."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import replace

from torch import Tensor, nn
from torch.distributions import Distribution

from latentgrad._validation import check_int
from latentgrad.estimators._base import (
    Estimate,
    Estimator,
    LatentDistribution,
    check_distribution,
    check_estimate,
    check_loss_fn,
    zero_forward,
)
from latentgrad.estimators.local_expectation import LocalExpectation
from latentgrad.estimators.local_reparam import (
    ChainLossFn,
    Conditional,
    LocalReparam,
    check_layer,
)
from latentgrad.schedules import Scheduled

JOINT: tuple[type[LocalReparam], ...] = (LocalReparam, LocalExpectation)
"""The estimators whose ``chain(first, conditionals, loss_fn)`` handles every layer at once."""


class Chain(nn.Module, Scheduled):
    """One estimator per stochastic layer of ``z_1 ~ first``, ``z_{l+1} ~ conditionals[l](z_l)``.

    Each layer gets its own copy of ``estimator`` (its own baseline, critic or schedule), and
    the layers are nested: layer ``l``'s estimator sees, as the loss of a sample ``z_l``, the
    estimate of layer ``l + 1`` given ``z_l``: forward, its honest ``value`` (an estimate of
    ``E[F | z_1..z_l]``); backward, its surrogate's gradient (the upper layers' gradients). So

    - score-function estimators (with any baseline) stay unbiased for every layer's
      parameters: each layer's signal is an unbiased, conditionally independent estimate of
      the loss below it;
    - relaxations (Gumbel-Softmax, straight-through) pass gradients from layer to layer through
      the relaxed samples, as a relaxed network would;
    - MuProp and DARN expand the loss at the mean-field point of their layer, the upper layers
      being sampled (not replaced by their means) at that point.

    :class:`LocalReparam` and :class:`LocalExpectation` are the exceptions (:data:`JOINT`):
    their ``chain`` marginalizes each unit of every layer, with the layers above re-simulated
    from common random numbers (:meth:`LocalReparam.chain`) or kept at their samples and
    weighted by the Markov blanket (:meth:`LocalExpectation.chain`), which nesting cannot do, so
    ``Chain(LocalReparam())`` and ``Chain(LocalExpectation())`` call it (one estimator for all
    layers).

    An input-dependent baseline (NVIL) of layer ``l > 1`` gets the samples of layer ``l - 1``
    (detached, event dims flattened) as its ``context``; layer 1 gets the caller's ``context``.

    ``loss_fn`` is called once per step: on all the rows of the innermost layer, whose leading
    dims are the sample dims of every layer (innermost first). ``loss_evals`` of the result is
    the product of the layers' loss evaluations (the loss rows per example);
    ``extras["layer_loss_evals"]`` lists them, outermost first, and
    ``extras["layer_estimates"]`` holds each inner layer's :class:`Estimate` (detached use
    only: diagnostics).

    Args:
        estimator: the estimator of every layer (deep-copied for layers ``2..L``, before any
            use, so copies start from the same state).
        num_layers: ``L``, the number of stochastic layers.

    Shape:
        ``first``: batch ``B``; ``conditionals[l](z)`` for ``z`` of shape ``S + B + E_l`` returns a
        distribution of batch shape ``S + B`` (or one that broadcasts to it); ``loss_fn`` maps
        ``[z_1, ..., z_L]``, each ``S + B + E_l`` with the same leading ``S``, to ``S + B``;
        ``value``, ``surrogate``: ``B``.

    Example:
        A sigmoid belief net with two Bernoulli layers, trained with the score function and a
        moving-average baseline in each layer:

        >>> import torch, torch.nn.functional as F, latentgrad as lg
        >>> _ = torch.manual_seed(0)
        >>> x = torch.rand(8, 6).round()
        >>> enc1, enc2, dec = torch.nn.Linear(6, 4), torch.nn.Linear(4, 3), torch.nn.Linear(3, 6)
        >>> def loss_fn(zs):
        ...     logits = dec(zs[-1])
        ...     nll = F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
        ...     return nll.sum(-1)
        >>> chain = lg.Chain(lg.ScoreFunction(baseline=lg.MovingAverage()), num_layers=2)
        >>> out = chain(lg.Bernoulli(logits=enc1(x)), [lambda z1: lg.Bernoulli(logits=enc2(z1))], loss_fn)
        >>> out.value.shape, out.loss_evals, out.extras["layer_loss_evals"]
        (torch.Size([8]), 1, (1, 1))
        >>> out.surrogate.mean().backward()
        >>> all(p.grad is not None for p in (*enc1.parameters(), *enc2.parameters()))
        True
    """

    def __init__(self, estimator: Estimator, num_layers: int) -> None:
        super().__init__()
        if not isinstance(estimator, Estimator):
            raise TypeError(
                f"estimator must be a latentgrad Estimator, got {type(estimator).__name__}"
            )
        self.num_layers = check_int(num_layers, "num_layers", minimum=1)
        #: Whether one estimator handles all layers at once (its ``chain``; see :data:`JOINT`).
        self.joint = isinstance(estimator, JOINT)
        copies = 1 if self.joint else self.num_layers
        self.layers = nn.ModuleList(
            [estimator, *(copy.deepcopy(estimator) for _ in range(copies - 1))]
        )

    def extra_repr(self) -> str:
        return f"num_layers={self.num_layers}, joint={self.joint}"

    def step(self, n: int = 1) -> float:
        """Advance the schedules of every layer's estimator (see :class:`Scheduled`).

        Returns:
            The new scheduled value of the first layer's estimator (its temperature or slope;
            NaN when no layer's estimator is scheduled).
        """
        values = [est.step(n) for est in self.layers if isinstance(est, Scheduled)]
        return values[0] if values else math.nan

    def forward(
        self,
        first: Distribution,
        conditionals: Sequence[Conditional],
        loss_fn: ChainLossFn,
        *,
        context: Tensor | None = None,
    ) -> Estimate:
        """Estimate ``E[loss_fn([z_1, ..., z_L])]`` and its gradient (see the class docstring).

        Raises:
            TypeError: ``first`` is not a latentgrad distribution, a conditional or
                ``loss_fn`` is not callable.
            ValueError: ``len(conditionals) != num_layers - 1``, or a conditional returns a
                distribution of the wrong batch shape.
        """
        first = check_distribution(first, "first")
        if isinstance(conditionals, (str, bytes)) or not isinstance(conditionals, Sequence):
            raise TypeError(
                f"conditionals must be a sequence of callables, got {type(conditionals).__name__}"
            )
        if len(conditionals) != self.num_layers - 1:
            raise ValueError(
                f"conditionals must have num_layers - 1 = {self.num_layers - 1} entries, got "
                f"{len(conditionals)}"
            )
        for i, fn in enumerate(conditionals):
            if not callable(fn):
                raise TypeError(f"conditionals[{i}] must be callable, got {type(fn).__name__}")
        check_loss_fn(loss_fn)
        if self.joint:
            joint = self.layers[0]
            assert isinstance(joint, LocalReparam)
            out = joint.chain(first, conditionals, loss_fn)
            return replace(out, extras={**out.extras, "layer_loss_evals": (out.loss_evals,)})
        evals: dict[int, int] = {}
        inner: dict[int, Estimate] = {}

        def estimate(level: int, dist: LatentDistribution, below: list[Tensor]) -> Estimate:
            lead = len(dist.batch_shape) - len(first.batch_shape)
            event_dims = len(dist.event_shape)

            def layer_loss(z: Tensor) -> Tensor:
                sample_dims = z.dim() - lead - len(first.batch_shape) - event_dims
                new = z.shape[:sample_dims]
                zs = [b.expand((*new, *b.shape)) for b in below] + [z]
                if level == self.num_layers - 1:
                    return loss_fn(zs)
                rows = tuple(z.shape[: z.dim() - event_dims])
                name = f"conditionals[{level}]"
                upper = check_layer(conditionals[level](z), rows, name)
                out = estimate(level + 1, upper, zs)
                inner[level + 1] = out
                # The honest value forward (what a relaxation's honest_value reports), the
                # surrogate's gradient backward.
                return out.value + zero_forward(out.surrogate)

            ctx = context if level == 0 else _flat_context(below[-1], len(dist.batch_shape))
            estimator = self.layers[level]
            out = estimator(dist, layer_loss, context=ctx)
            evals[level] = out.loss_evals
            return out

        out = estimate(0, first, [])
        per_layer = tuple(evals[i] for i in range(self.num_layers))
        total = 1
        for n in per_layer:
            total *= n
        extras = {
            **out.extras,
            "layer_loss_evals": per_layer,
            "layer_estimates": tuple(inner[i] for i in range(1, self.num_layers)),
        }
        return check_estimate(
            replace(out, loss_evals=total, extras=extras), first.batch_shape, "Chain"
        )


def _flat_context(z: Tensor, batch_dims: int) -> Tensor:
    """``z`` (``batch + event``) detached, its event dims flattened into one feature dim."""
    z = z.detach()
    return z.reshape((*z.shape[:batch_dims], -1))


__all__ = ["Chain", "ChainLossFn", "Conditional"]
