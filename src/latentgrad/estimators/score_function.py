"""The score-function (likelihood-ratio, REINFORCE) estimator with optional baselines."""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from latentgrad._numerics import upcast
from latentgrad._validation import check_int, own_samples
from latentgrad.distributions import Capability
from latentgrad.estimators._base import (
    Estimate,
    Estimator,
    LatentDistribution,
    LossFn,
    evaluate_loss,
    score_term,
    zero_forward,
)
from latentgrad.estimators.baselines import (
    Baseline,
    CenteredSignal,
    apply_baseline,
    check_baseline,
)

Score = Literal["value", "trace", "noise"]
SCORES: tuple[str, ...] = ("value", "trace", "noise")
# What each score asks of the family besides sampling and log_prob.
_SCORE_REQUIRES: dict[str, tuple[Capability, ...]] = {
    "value": (),
    "trace": ("has_trace",),
    "noise": ("has_trace",),
}


class ScoreFunction(Estimator):
    """Score-function estimator ``(f(z) - b) grad log q(z)`` averaged over ``K`` samples.

    Draws ``K`` samples (plus the extra ones a baseline asks for) in one call, evaluates the
    loss once on all of them, and builds per sample::

        f(z_k) + stopgrad((f(z_k) - b_k) / s) * (log q(z_k) - stopgrad(log q(z_k)))

    whose forward value is ``f(z_k)`` and whose backward gives the score-function gradient for
    the distribution's parameters and the pathwise gradient ``grad_theta f(z_k)`` for parameters
    inside the loss. Without a baseline (``b = 0``, ``s = 1``) this is REINFORCE; any baseline
    that does not depend on ``z_k`` keeps it unbiased (see
    :mod:`latentgrad.estimators.baselines`).

    A learned baseline's own loss (NVIL) is added to every per-sample term with value 0, so a
    single backward pass of ``surrogate`` trains it too: give ``estimator.parameters()`` to the
    optimizer. With ``surrogate.mean()`` it is trained with unit weight. A baseline with a
    true ``backprop`` attribute (``IndependentSample(backprop=True)``, Correia et al.'s SFE+)
    also passes ``-log q(z_k) grad b`` to the loss's parameters (biased; see there).

    Args:
        num_samples: number of scored samples ``K`` per batch element.
        baseline: a :class:`~latentgrad.estimators.baselines.Baseline`, or ``None``. Modules
            (moving averages, networks) become submodules, so ``state_dict`` checkpoints them.
        score: what the learning signal multiplies: ``"value"`` (``log q(z)``, the default),
            or, for structured families sampled by a recursive algorithm (Struminsky et al.
            2021), ``"trace"`` (``log p(T)`` of the execution trace, T-REINFORCE) or
            ``"noise"`` (``log p(E)`` of the exponential noise, E-REINFORCE). All three are
            unbiased; the trace score has lower variance than the noise score, and the value
            score (when tractable) lower still.

    Returns:
        :class:`~latentgrad.estimators.Estimate` with ``loss_evals`` (``K`` + extra samples),
        ``losses`` (detached losses of the scored samples) and ``extras``: ``"baseline"``
        (``b_k``, detached), and ``"extra_losses"``, ``"baseline_loss"``, ``"scale"`` when the
        baseline provides them.

    Shape:
        ``dist``: batch ``B``, event ``E``; ``loss_fn``: ``(S,) + B + E -> (S,) + B``;
        ``value``, ``surrogate``: ``B``; ``per_sample``: ``(K,) + B``.

    Example:
        >>> import torch, latentgrad as lg
        >>> from latentgrad.estimators.baselines import LeaveOneOut
        >>> from latentgrad.estimators.score_function import ScoreFunction
        >>> logits = torch.zeros(8, 3, requires_grad=True)
        >>> est = ScoreFunction(num_samples=4, baseline=LeaveOneOut())
        >>> out = est(lg.Categorical(logits=logits), lambda z: (z * torch.arange(3.0)).sum(-1))
        >>> out.surrogate.mean().backward()
        >>> out.per_sample.shape, logits.grad.shape
        (torch.Size([4, 8]), torch.Size([8, 3]))

    References:
        [1] Williams, "Simple statistical gradient-following algorithms for connectionist
            reinforcement learning", Machine Learning 1992.
        [2] Glynn, "Likelihood ratio gradient estimation for stochastic systems",
            Communications of the ACM 1990.
    """

    def __init__(
        self,
        num_samples: int = 1,
        baseline: Baseline | None = None,
        *,
        score: Score = "value",
    ) -> None:
        super().__init__()
        self.num_samples = check_int(num_samples, "num_samples", minimum=1)
        self._num_extra = check_baseline(baseline, self.num_samples)
        self.baseline = baseline
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        self.score = score
        self.requires = type(self).requires + _SCORE_REQUIRES[score]

    def extra_repr(self) -> str:
        extra = "" if self.score == "value" else f", score={self.score!r}"
        return f"num_samples={self.num_samples}{extra}"

    def _draw(self, dist: LatentDistribution, total: int) -> tuple[Tensor, Any]:
        """``total`` samples and what :meth:`_score` needs besides them (traces, noise or
        ``None``)."""
        if self.score == "value":
            return dist.sample((total,)), None
        z, noise, trace = dist.sample_with_trace((total,))  # type: ignore[union-attr]
        return z, trace if self.score == "trace" else noise

    def _score(self, dist: LatentDistribution, z: Tensor, aux: Any) -> Tensor:
        """The term whose gradient the learning signal multiplies.

        ``"value"``: ``log q(z)``; ``"trace"``: ``log p(T)`` of the execution trace that
        produced ``z`` (T-REINFORCE, a Rao-Blackwellization of the noise score);
        ``"noise"``: ``log p(E)`` of the noise (E-REINFORCE).
        """
        if self.score == "trace":
            return dist.trace_log_prob(aux)  # type: ignore[union-attr]
        if self.score == "noise":
            return dist.noise_log_prob(aux)  # type: ignore[union-attr]
        with own_samples():  # z was just drawn from dist: no support check
            return dist.log_prob(z)

    def _estimate(
        self, dist: LatentDistribution, loss_fn: LossFn, context: Tensor | None
    ) -> Estimate:
        k = self.num_samples
        total = k + self._num_extra
        z, aux = self._draw(dist, total)
        losses = evaluate_loss(loss_fn, z, (total,), dist.batch_shape)
        centred = apply_baseline(self.baseline, z, upcast(losses.detach()), context, k)
        logp = upcast(self._score(dist, z[:k], None if aux is None else aux[:k]))
        terms = score_term(logp, centred.signal)
        extras: dict[str, object] = {"baseline": centred.baseline}
        if total > k:
            extras["extra_losses"] = losses[k:].detach()
            if getattr(self.baseline, "backprop", False):
                # (IndependentSample(backprop=True): -log q(z_k) grad b, see there)
                terms = terms - logp.detach() * zero_forward(upcast(losses[k:]).mean(0))
        return self._scored_estimate(losses[:k], terms, centred, total, extras)

    @staticmethod
    def _scored_estimate(
        losses: Tensor,
        terms: Tensor,
        centred: CenteredSignal,
        loss_evals: int,
        extras: dict[str, object],
    ) -> Estimate:
        """The :class:`Estimate` from the scored samples' losses and their surrogate terms.

        Adds the learned baseline's own loss (value 0) and its diagnostics to ``extras``.
        """
        if centred.loss is not None:
            terms = terms + zero_forward(centred.loss)
            extras["baseline_loss"] = centred.loss.detach()
        if centred.scale is not None:
            extras["scale"] = centred.scale
        per_sample = losses + terms.to(losses.dtype)
        return Estimate.from_terms(per_sample, losses=losses, loss_evals=loss_evals, extras=extras)


class TReinforce(ScoreFunction):
    """T-REINFORCE: the score function of the execution trace, ``f(X) grad log p(T)``.

    For families sampled by a recursive algorithm on exponential noise (``KSubset``,
    ``SpanningTree``, ``Arborescence``, ...), whose structure probability is a sum over traces
    that is rarely tractable, the trace probability is always a product of softmaxes. It is
    the Rao-Blackwellization of :class:`EReinforce` over the noise given the trace, so its
    variance is never larger. With ``num_samples >= 2`` and
    :class:`~latentgrad.estimators.baselines.LeaveOneOut` it is "T-REINFORCE+".

    Equivalent to ``ScoreFunction(num_samples, baseline, score="trace")``.

    Example:
        >>> import torch, latentgrad as lg
        >>> scores = torch.zeros(5, 4, requires_grad=True)
        >>> est = lg.TReinforce(num_samples=3, baseline=lg.LeaveOneOut())
        >>> out = est(lg.KSubset(scores, k=2), lambda z: z[..., 0] + z[..., 1])
        >>> out.surrogate.sum().backward()
        >>> scores.grad.shape
        torch.Size([5, 4])

    References:
        [1] Struminsky, Gadetsky, Rakitin, Karpushkin & Vetrov, "Leveraging recursive
            Gumbel-max trick for approximate inference in combinatorial spaces", NeurIPS 2021.
    """

    def __init__(self, num_samples: int = 1, baseline: Baseline | None = None) -> None:
        super().__init__(num_samples, baseline, score="trace")


class EReinforce(ScoreFunction):
    """E-REINFORCE: the score function of the exponential noise, ``f(X) grad log p(E)``.

    Needs only the noise density, so it works for any algorithm on the noise; its variance is
    at least that of :class:`TReinforce`. With ``num_samples >= 2`` and
    :class:`~latentgrad.estimators.baselines.LeaveOneOut` it is "E-REINFORCE+".

    Equivalent to ``ScoreFunction(num_samples, baseline, score="noise")``.

    References:
        [1] Struminsky et al., "Leveraging recursive Gumbel-max trick for approximate inference
            in combinatorial spaces", NeurIPS 2021.
    """

    def __init__(self, num_samples: int = 1, baseline: Baseline | None = None) -> None:
        super().__init__(num_samples, baseline, score="noise")
