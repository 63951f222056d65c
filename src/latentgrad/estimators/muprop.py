"""Score-function estimators with a first-order Taylor baseline: MuProp and DARN."""

from __future__ import annotations

from typing import NamedTuple

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
    zero_forward,
)
from latentgrad.estimators.baselines import Baseline, apply_baseline
from latentgrad.estimators.score_function import Score, ScoreFunction


class _Expansion(NamedTuple):
    """Losses at the samples and the loss and its gradient at the expansion point."""

    losses: Tensor  # (S,) + batch_shape, with the graph to the loss's parameters
    point_loss: Tensor  # batch_shape, detached
    point_grad: Tensor  # batch_shape + event_shape, detached


def _event_sum(x: Tensor, num_event_dims: int) -> Tensor:
    return x.sum(tuple(range(-num_event_dims, 0))) if num_event_dims else x


def _expand_loss(loss_fn: LossFn, point: Tensor, z: Tensor, batch_shape: torch.Size) -> _Expansion:
    """Evaluate ``loss_fn`` once on ``[point, z_1, ..., z_S]`` and differentiate it at ``point``.

    The gradient at the point is taken with ``retain_graph`` so that the graph shared with the
    sample losses survives for the surrogate's backward pass. Each batch element's loss must
    depend on its own point only (true of any per-example loss). Under ``torch.no_grad`` there
    is no gradient to take and it is returned as zeros.
    """
    track = torch.is_grad_enabled()
    x = point.detach().unsqueeze(0).clone().requires_grad_(track)
    losses = evaluate_loss(
        loss_fn, torch.cat([x, z.to(x.dtype)], 0), (1 + z.shape[0],), batch_shape
    )
    point_loss = losses[0]
    grad = None
    if track and point_loss.requires_grad:
        (grad,) = torch.autograd.grad(point_loss.sum(), x, retain_graph=True, allow_unused=True)
    grad = torch.zeros_like(x) if grad is None else grad
    return _Expansion(losses[1:], point_loss.detach(), grad[0])


def _uniform_point(dist: LatentDistribution) -> Tensor:
    """The family's mean at zero logits: 1/2 per bit, 1/K per class (shape batch + event)."""
    logits: Tensor = dist.logits  # type: ignore[union-attr]
    uniform = dist.with_logits(torch.zeros_like(logits.detach()))  # type: ignore[union-attr]
    return uniform.mean.detach()


class MuProp(ScoreFunction):
    """MuProp: score function with a Taylor baseline at the mean-field point, plus its mean.

    With ``mu = E_q[z]`` (taken as a constant expansion point ``mu_0``) and the baseline
    ``b(z) = f(mu_0) + f'(mu_0)^T (z - mu_0)``, the gradient is estimated, per sample, by::

        (f(z_k) - b(z_k) - c_k) grad log q(z_k) + f'(mu_0)^T grad E_q[z] + grad_theta f(z_k)

    which is unbiased because ``E_q[b(z) grad log q(z)] = grad E_q[b(z)] = f'(mu_0)^T grad
    E_q[z]`` exactly (``b`` is linear in ``z``). ``c_k`` is an optional extra baseline on the
    residual ``f - b`` (Gu et al.'s "+C" moving average, "+IDB" input-dependent NVIL network).
    The loss is evaluated once, on the point ``mu_0`` stacked in front of the samples, and
    ``f'(mu_0)`` is taken by autograd on that slice; so ``loss_fn`` must accept continuous
    inputs (like a relaxation) and treat batch elements independently.

    Args:
        num_samples: number of scored samples ``K``.
        baseline: an extra :class:`~latentgrad.estimators.baselines.Baseline` on the residual
            ``f(z) - b(z)``, or ``None``.

    The distribution must declare ``has_mean_field``.

    Returns:
        :class:`~latentgrad.estimators.Estimate`; ``value`` averages the samples' losses
        only (``f(mu_0)`` is not an estimate of ``E_q[f]``), ``loss_evals`` is ``K + 1`` plus
        extra samples. ``extras``: ``"mean_field_loss"`` (``f(mu_0)``), ``"baseline"``
        (``b(z_k) + c_k``), and ``"baseline_loss"`` for learned baselines.

    Shape:
        ``value``, ``surrogate``: ``batch_shape``; ``per_sample``: ``(K,) + batch_shape``.

    Example:
        >>> import torch, latentgrad as lg
        >>> from latentgrad.estimators.muprop import MuProp
        >>> logits = torch.zeros(2, 3, requires_grad=True)
        >>> w = torch.tensor([1.0, 2.0, 3.0])
        >>> out = MuProp(num_samples=4)(lg.Categorical(logits=logits), lambda z: (z * w).sum(-1))
        >>> out.surrogate.sum().backward()  # a linear loss: the Taylor baseline is exact
        >>> torch.allclose(logits.grad, torch.tensor([[-1 / 3, 0.0, 1 / 3]] * 2), atol=1e-6)
        True

    References:
        [1] Gu, Levine, Sutskever & Mnih, "MuProp: Unbiased Backpropagation for Stochastic
            Neural Networks", ICLR 2016.
    """

    requires = ("has_mean_field",)

    def __init__(
        self, num_samples: int = 1, baseline: Baseline | None = None, *, score: Score = "value"
    ) -> None:
        super().__init__(num_samples, baseline, score=score)
        if getattr(baseline, "backprop", False):
            raise ValueError(
                "baseline must not backpropagate with MuProp (IndependentSample(backprop=True) "
                "is the score function's; MuProp's extra losses enter through its residual)"
            )

    def _estimate(
        self, dist: LatentDistribution, loss_fn: LossFn, context: Tensor | None
    ) -> Estimate:
        mean = dist.mean
        point = mean.detach()
        k = self.num_samples
        total = k + self._num_extra
        z, aux = self._draw(dist, total)
        ex = _expand_loss(loss_fn, point, z, dist.batch_shape)
        n = len(dist.event_shape)
        grad = upcast(ex.point_grad)
        taylor = upcast(ex.point_loss) + _event_sum(grad * (upcast(z) - upcast(point)), n)
        residual = upcast(ex.losses.detach()) - taylor
        centred = apply_baseline(self.baseline, z, residual, context, k)
        logp = upcast(self._score(dist, z[:k], None if aux is None else aux[:k]))
        # grad E_q[b(z)]: the analytic mean of the baseline, value 0 in the forward pass
        analytic = _event_sum(grad * zero_forward(upcast(mean)), n)
        terms = score_term(logp, centred.signal) + analytic
        extras: dict[str, object] = {
            "mean_field_loss": ex.point_loss,
            "baseline": taylor[:k] + centred.baseline,
        }
        return self._scored_estimate(ex.losses[:k], terms, centred, total + 1, extras)


class DARN(Estimator):
    """DARN's biased estimator: the score function with a first-order learning signal.

    Gregor et al. replace the learning signal ``f(z) - f(z_bar)`` by its first-order Taylor
    approximation around a fixed point ``z_bar`` (1/2 for bits; we use 1/K per class for
    categories, the family's mean at zero logits) and add no analytic correction; this is the
    DARN estimator as Gu et al. (2016) and Jang et al. (2017) compare it. Per sample::

        f'(z_bar)^T (z_k - z_bar) grad log q(z_k) + grad_theta f(z_k)

    Its expectation for the distribution's parameters is ``f'(z_bar)^T grad E_q[z]`` (the
    analytic term of MuProp at ``z_bar``) instead of ``grad E_q[f(z)]``: exact when ``f`` is
    linear (and, for a single bit, quadratic), biased otherwise. The pathwise gradient for
    parameters inside the loss is unbiased. The loss is evaluated once, on ``z_bar`` stacked in
    front of the samples, so ``loss_fn`` must accept continuous inputs.

    Args:
        num_samples: number of samples ``K``.

    The distribution must declare ``has_logits`` and ``has_mean_field``.

    Returns:
        :class:`~latentgrad.estimators.Estimate` with ``loss_evals`` (``K + 1``), ``losses``
        and ``extras``: ``"signal"`` (``f'(z_bar)^T (z_k - z_bar)``) and ``"point_loss"``
        (``f(z_bar)``).

    Shape:
        ``value``, ``surrogate``: ``batch_shape``; ``per_sample``: ``(K,) + batch_shape``.

    Example:
        >>> import torch, latentgrad as lg
        >>> from latentgrad.estimators.muprop import DARN
        >>> logits = torch.zeros(4, 3, requires_grad=True)
        >>> out = DARN(num_samples=2)(lg.Bernoulli(logits=logits), lambda z: z.sum(-1) ** 2)
        >>> out.surrogate.sum().backward()
        >>> out.per_sample.shape, logits.grad.shape
        (torch.Size([2, 4]), torch.Size([4, 3]))

    References:
        [1] Gregor, Danihelka, Mnih, Blundell & Wierstra, "Deep AutoRegressive Networks",
            ICML 2014.
        [2] Gu, Levine, Sutskever & Mnih, "MuProp: Unbiased Backpropagation for Stochastic
            Neural Networks", ICLR 2016.
        [3] Jang, Gu & Poole, "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017.
    """

    requires = ("has_logits", "has_mean_field")

    def __init__(self, num_samples: int = 1) -> None:
        super().__init__()
        self.num_samples = check_int(num_samples, "num_samples", minimum=1)

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}"

    def _estimate(
        self, dist: LatentDistribution, loss_fn: LossFn, context: Tensor | None
    ) -> Estimate:
        point = _uniform_point(dist)
        k = self.num_samples
        z = dist.sample((k,))
        ex = _expand_loss(loss_fn, point, z, dist.batch_shape)
        n = len(dist.event_shape)
        signal = _event_sum(upcast(ex.point_grad) * (upcast(z) - upcast(point)), n)
        with own_samples():  # z was just drawn from dist: no support check
            logp = upcast(dist.log_prob(z))
        losses = ex.losses
        per_sample = losses + score_term(logp, signal).to(losses.dtype)
        return Estimate.from_terms(
            per_sample,
            losses=losses,
            loss_evals=k + 1,
            extras={"signal": signal, "point_loss": ex.point_loss},
        )
