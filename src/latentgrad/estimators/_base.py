"""The estimator contract: ``(dist, loss_fn) -> Estimate``, and helpers shared by estimators."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.distributions import Distribution

from latentgrad.distributions._base import DiscreteDistribution, Independent

LossFn = Callable[[Tensor], Tensor]
"""``loss_fn(z)``: samples ``sample_shape + batch_shape + event_shape`` (one or more leading
sample dims) to losses ``sample_shape + batch_shape``. Estimators call it once per step."""


@dataclass
class Estimate:
    """What an estimator returns.

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
        extras: diagnostics: ``"loss_evals"`` (loss evaluations per batch element, an int),
            ``"losses"`` (the detached losses of the samples), and estimator-specific entries
            (``"support_size"``, ``"baseline"``, ``"baseline_loss"``, ...).
    """

    value: Tensor
    surrogate: Tensor
    per_sample: Tensor
    extras: dict[str, Any] = field(default_factory=dict)
    loss_evals: int = 0
    losses: Tensor | None = None

    def __post_init__(self) -> None:
        # TRANSITION SHIM (removed once every estimator fills the typed fields): copy the
        # untyped extras entries into the typed fields.
        if not self.loss_evals and "loss_evals" in self.extras:
            self.loss_evals = int(self.extras["loss_evals"])
        if self.losses is None and "losses" in self.extras:
            self.losses = self.extras["losses"]


@runtime_checkable
class Estimator(Protocol):
    """Anything that maps a distribution and a loss function to an :class:`Estimate`."""

    def __call__(
        self, dist: Distribution, loss_fn: LossFn, *, context: Tensor | None = None
    ) -> Estimate: ...


LatentDistribution = DiscreteDistribution | Independent


def check_distribution(dist: object, name: str = "dist") -> LatentDistribution:
    """Check that ``dist`` is a latentgrad family (which provides the estimator hooks)."""
    if not isinstance(dist, (DiscreteDistribution, Independent)):
        raise TypeError(
            f"{name} must be a latentgrad distribution (e.g. lg.Categorical), "
            f"got {type(dist).__name__}"
        )
    return dist


def check_loss_fn(loss_fn: object, name: str = "loss_fn") -> LossFn:
    if not callable(loss_fn):
        raise TypeError(f"{name} must be callable, got {type(loss_fn).__name__}")
    return loss_fn


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
    """``dist.support_size()``, or ``ValueError`` when it exceeds ``max_support``."""
    size = dist.support_size()
    if size > max_support:
        raise ValueError(f"the support has {size} values, more than max_support={max_support}")
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
