"""The estimator contract: the :class:`Estimator` base class, :class:`Estimate`, and helpers
shared by estimators."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from latentgrad.distributions import (
    Bernoulli,
    Capability,
    Categorical,
    DiscreteDistribution,
    Independent,
    require,
)

LossFn = Callable[[Tensor], Tensor]
"""``loss_fn(z)``: samples ``sample_shape + batch_shape + event_shape`` (one or more leading
sample dims) to losses ``sample_shape + batch_shape``. Estimators call it once per step."""

LatentDistribution = DiscreteDistribution | Independent
"""A latentgrad family, or several independent units of one (:meth:`DiscreteDistribution.to_event`)."""


@dataclass
class Estimate:
    """What an estimator returns.

    Build one with :meth:`from_terms`, which fills every field consistently; ``loss_evals``
    and ``losses`` are keyword-only and required.

    Attributes:
        value: an honest estimate of ``E_q[loss(z)]`` (detached), shape ``batch_shape``. For
            exact estimators it is the expectation itself.
        surrogate: a tensor whose backward gives the gradient estimate, shape ``batch_shape``.
            Its forward value equals ``value`` unless the estimator says otherwise (relaxations
            evaluate the loss at relaxed points).
        per_sample: per-sample surrogate terms, shape ``(S,) + batch_shape`` with
            ``surrogate == per_sample.mean(0)``; each term alone is an estimate of the same
            gradient, so their spread measures the estimator's variance (``S = 1`` for exact
            estimators).
        extras: estimator-specific diagnostics (``"support_size"``, ``"baseline"``,
            ``"baseline_loss"``, ...); each estimator documents its entries.
        loss_evals: loss evaluations per batch element in this call (at least 1).
        losses: the detached losses of the scored samples (or of the summed support values),
            with the sample dim first.
    """

    value: Tensor
    surrogate: Tensor
    per_sample: Tensor
    extras: dict[str, Any] = field(default_factory=dict)
    loss_evals: int = field(kw_only=True)
    losses: Tensor = field(kw_only=True)

    @classmethod
    def from_terms(
        cls,
        per_sample: Tensor,
        *,
        losses: Tensor,
        loss_evals: int,
        value: Tensor | None = None,
        extras: dict[str, Any] | None = None,
    ) -> Estimate:
        """The estimate whose surrogate is ``per_sample.mean(0)``.

        Args:
            per_sample: the per-sample surrogate terms, ``(S,) + batch_shape``.
            losses: the losses of the scored samples, ``(S',) + batch_shape`` (detached here).
            loss_evals: loss evaluations per batch element.
            value: the honest estimate of ``E_q[loss]``; ``losses.mean(0)`` when omitted.
            extras: estimator-specific diagnostics.

        Returns:
            The :class:`Estimate`, with ``value`` and ``losses`` detached.

        Example:
            >>> import torch
            >>> from latentgrad.estimators import Estimate
            >>> losses = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
            >>> out = Estimate.from_terms(losses, losses=losses, loss_evals=2)
            >>> out.value, out.loss_evals
            (tensor([2., 3.]), 2)
        """
        losses = losses.detach()
        honest = losses.mean(0) if value is None else value.detach()
        return cls(
            value=honest,
            surrogate=per_sample.mean(0),
            per_sample=per_sample,
            extras={} if extras is None else extras,
            loss_evals=int(loss_evals),
            losses=losses,
        )


class Estimator(nn.Module):
    """Base class of every estimator: ``estimator(dist, loss_fn, *, context=None) -> Estimate``.

    A call validates once: ``dist`` must be a latentgrad distribution that declares every
    capability in :attr:`requires` (checked by
    :func:`~latentgrad.distributions.require`, which names what is missing), and ``loss_fn``
    must be callable. It then runs :meth:`_estimate` and checks the result: an
    :class:`Estimate` whose ``value`` and ``surrogate`` have the distribution's batch shape,
    whose ``per_sample`` is ``(S,) + batch_shape`` and which made at least one loss
    evaluation. Subclasses implement :meth:`_estimate` only.

    Estimators are :class:`torch.nn.Module` objects, so the state some of them hold (learned
    baselines, critics, schedules) is in ``state_dict`` and ``parameters()``; the stateless
    ones have none.

    Attributes:
        requires: the capabilities (see :data:`~latentgrad.distributions.CAPABILITIES`) the
            distribution must declare; a class attribute, which an instance may extend in its
            constructor when an option needs more (``ScoreFunction(score="trace")``).

    Example:
        The loss at the mean-field point, differentiated through it (biased; for
        illustration):

        >>> import torch, latentgrad as lg
        >>> class AtMean(lg.Estimator):
        ...     requires = ("has_mean_field",)
        ...     def _estimate(self, dist, loss_fn, context):
        ...         losses = loss_fn(dist.mean.unsqueeze(0))
        ...         return lg.Estimate.from_terms(losses, losses=losses, loss_evals=1)
        >>> q = lg.Categorical(logits=torch.tensor([[0.0, 2.0], [1.0, 0.0]]))
        >>> AtMean()(q, lambda z: z[..., 1]).value
        tensor([0.8808, 0.2689])
        >>> AtMean()(lg.KSubset(torch.zeros(2, 3), k=1), lambda z: z[..., 1])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        TypeError: AtMean needs dist.has_mean_field: KSubset has no mean-field point E[z] with the event shape (dist.mean); families that have it: Bernoulli, Categorical, ...
    """

    requires: tuple[Capability, ...] = ()

    if TYPE_CHECKING:

        def __call__(
            self, dist: Distribution, loss_fn: LossFn, *, context: Tensor | None = None
        ) -> Estimate: ...

    def forward(
        self, dist: Distribution, loss_fn: LossFn, *, context: Tensor | None = None
    ) -> Estimate:
        """Validate the arguments, estimate, and check the result.

        Args:
            dist: a latentgrad distribution with batch shape ``B``.
            loss_fn: samples ``(S,) + B + event_shape`` to losses ``(S,) + B``.
            context: passed to the estimator (e.g. the input of an input-dependent baseline).

        Returns:
            :class:`Estimate`.
        """
        name = type(self).__name__
        latent = check_distribution(dist)
        loss_fn = check_loss_fn(loss_fn)
        require(latent, *self.requires, by=name)
        return check_estimate(self._estimate(latent, loss_fn, context), latent.batch_shape, name)

    def _estimate(
        self, dist: LatentDistribution, loss_fn: LossFn, context: Tensor | None
    ) -> Estimate:
        """The estimate, with arguments already checked (what subclasses implement)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _estimate")


def check_distribution(dist: object, name: str = "dist") -> LatentDistribution:
    """Check that ``dist`` is a latentgrad family (which provides the estimator hooks)."""
    if not isinstance(dist, (DiscreteDistribution, Independent)):
        raise TypeError(
            f"{name} must be a latentgrad distribution (e.g. lg.Categorical), "
            f"got {type(dist).__name__}"
        )
    return dist


def latent_family(dist: LatentDistribution, by: str) -> Bernoulli | Categorical:
    """The :class:`Categorical` or :class:`Bernoulli` under any :class:`Independent` wrappers
    of ``dist``, for the estimators that know only these two (``by`` names the estimator).

    Raises:
        TypeError: naming ``dist`` for any other family.

    Example:
        >>> from latentgrad.distributions import Categorical
        >>> type(latent_family(Categorical(logits=torch.zeros(2, 3)).to_event(1), "DisARM"))
        <class 'latentgrad.distributions.categorical.Categorical'>
    """
    base: object = dist
    while isinstance(base, Independent):
        base = base.base_dist
    if not isinstance(base, (Bernoulli, Categorical)):
        raise TypeError(
            f"{by} needs dist to be a Categorical or a Bernoulli (or to_event of them), got "
            f"{type(base).__name__}"
        )
    return base


def check_loss_fn(loss_fn: object, name: str = "loss_fn") -> LossFn:
    if not callable(loss_fn):
        raise TypeError(f"{name} must be callable, got {type(loss_fn).__name__}")
    return loss_fn


def check_estimate(out: object, batch_shape: torch.Size, name: str) -> Estimate:
    """Check an estimator's result against the distribution's ``batch_shape``."""
    if not isinstance(out, Estimate):
        raise TypeError(f"{name} must return an Estimate, got {type(out).__name__}")
    shape = tuple(batch_shape)
    for field_name, tensor in (("value", out.value), ("surrogate", out.surrogate)):
        got = tensor.shape
        if got != batch_shape:
            raise ValueError(
                f"{name} returned {field_name} of shape {tuple(got)}; expected the batch "
                f"shape {shape}"
            )
    if out.per_sample.dim() < 1 or out.per_sample.shape[1:] != batch_shape:
        raise ValueError(
            f"{name} returned per_sample of shape {tuple(out.per_sample.shape)}; expected "
            f"(S,) + batch_shape = (S, {', '.join(map(str, shape))})"
        )
    if isinstance(out.loss_evals, bool) or not isinstance(out.loss_evals, int):
        raise TypeError(f"{name} returned loss_evals of type {type(out.loss_evals).__name__}")
    if out.loss_evals < 1:
        raise ValueError(f"{name} returned loss_evals={out.loss_evals}; expected at least 1")
    if not isinstance(out.losses, Tensor):
        raise TypeError(f"{name} returned no losses (got {type(out.losses).__name__})")
    return out


def broadcasts_to(
    shape: tuple[int, ...] | torch.Size, target: tuple[int, ...] | torch.Size
) -> bool:
    """Whether a tensor of ``shape`` broadcasts to ``target`` (without changing ``target``)."""
    if len(shape) > len(target):
        return False
    tail = target[len(target) - len(shape) :]
    return all(s in (1, t) for s, t in zip(shape, tail, strict=True))


def evaluate_loss(
    loss_fn: LossFn,
    z: Tensor | list[Tensor],
    sample_shape: torch.Size | tuple[int, ...],
    batch_shape: torch.Size,
    name: str = "loss_fn",
) -> Tensor:
    """Call ``loss_fn`` once and check that it returns ``sample_shape + batch_shape``."""
    loss = loss_fn(z)  # type: ignore[arg-type]
    if not isinstance(loss, Tensor):
        raise TypeError(f"{name} must return a torch.Tensor, got {type(loss).__name__}")
    if not loss.is_floating_point():
        raise TypeError(f"{name} must return a floating-point tensor, got {loss.dtype}")
    expected = torch.Size(sample_shape) + batch_shape
    if loss.shape != expected:
        hint = ""
        tail = loss.shape[len(sample_shape) :]
        if (
            loss.shape[: len(sample_shape)] == torch.Size(sample_shape)
            and len(tail) < len(batch_shape)
            and batch_shape[: len(tail)] == tail
        ):
            hint = (
                f"; if the trailing batch dims are independent units of one latent, use "
                f"dist.to_event({len(batch_shape) - len(tail)})"
            )
        raise ValueError(
            f"{name} must return shape sample_shape + batch_shape = {tuple(expected)}, "
            f"got {tuple(loss.shape)}{hint}"
        )
    return loss


def check_support_size(dist: LatentDistribution, max_support: int) -> int:
    """``dist.support_size()``, or ``ValueError`` when it exceeds ``max_support`` or what the
    family enumerates (``dist.max_support_size``)."""
    size = dist.support_size()
    if size > max_support:
        raise ValueError(f"the support has {size} values, more than max_support={max_support}")
    if not dist.can_enumerate_support():
        raise ValueError(
            f"{type(dist).__name__} cannot enumerate this support of {size} values "
            f"(max_support_size={dist.max_support_size}; see can_enumerate_support())"
        )
    return size


def zero_forward(x: Tensor) -> Tensor:
    """``x - x.detach()``: zero in the forward pass, the gradient of ``x`` in the backward pass."""
    return x - x.detach()


def score_term(log_prob: Tensor, signal: Tensor) -> Tensor:
    """Surrogate term with value 0 whose gradient is ``signal * grad log_prob`` (signal detached)."""
    return zero_forward(log_prob) * signal.detach()


def mask_zero_prob(probs: Tensor, losses: Tensor) -> Tensor:
    """``probs * losses`` summed over dim 0, skipping exact zeros (a NaN/inf loss there is ignored)."""
    positive = probs > 0
    safe = torch.where(positive, losses, torch.zeros_like(losses))
    return (probs * safe).sum(0)
