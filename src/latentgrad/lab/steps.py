"""What the trainables of the single-estimator experiments share
(:mod:`latentgrad.experiments.listops`, :mod:`~latentgrad.experiments.parentheses`,
:mod:`~latentgrad.experiments.rgm_toy`): one optimizer step on an estimator's surrogate, and the
batches of equal length of a generated sequence data set."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import torch
from torch import nn

from latentgrad.data.sequences import length_batches
from latentgrad.estimators import Estimator, LatentDistribution, LossFn

T = TypeVar("T")


def estimator_step(
    modules: nn.Module,
    optimizer: torch.optim.Optimizer,
    estimator: Estimator,
    problem: Callable[[], tuple[LatentDistribution, LossFn]],
) -> dict[str, float]:
    """One optimizer step on the mean of ``estimator``'s surrogate for ``problem()``.

    ``modules`` are put in training mode and the gradients cleared before ``problem()`` builds
    the latent and the loss, so that what it runs (an encoder) is in training mode and its
    gradient is the step's alone.

    Args:
        modules: every trained module (the estimator's included).
        optimizer: the optimizer over their parameters.
        estimator: the gradient estimator.
        problem: builds ``(dist, loss_fn)`` for this step.

    Returns:
        ``loss`` (the mean of the estimate's ``value``), ``loss_evals`` and, when the estimator
        reports one (RELAX), ``critic_loss``.

    Example:
        >>> import latentgrad as lg
        >>> logits = nn.Parameter(torch.zeros(3))
        >>> est = lg.ScoreFunction()
        >>> modules = nn.ModuleDict({"estimator": est})
        >>> opt = torch.optim.SGD([logits], lr=0.1)
        >>> step = estimator_step(
        ...     modules, opt, est, lambda: (lg.Categorical(logits=logits), lambda z: z[..., 0])
        ... )
        >>> sorted(step), step["loss_evals"]
        (['loss', 'loss_evals'], 1.0)
    """
    modules.train()
    optimizer.zero_grad(set_to_none=True)
    dist, loss_fn = problem()
    out = estimator(dist, loss_fn)
    out.surrogate.mean().backward()
    optimizer.step()
    metrics = {"loss": float(out.value.mean()), "loss_evals": float(out.loss_evals)}
    if "critic_loss" in out.extras:
        metrics["critic_loss"] = float(out.extras["critic_loss"])
    return metrics


def batches_by_length(
    examples: Sequence[T],
    lengths: Sequence[int],
    batch_size: int,
    *,
    shuffle: bool,
    limit: int | None,
) -> Iterator[list[T]]:
    """The examples in batches of equal length (:func:`~latentgrad.data.sequences.length_batches`
    gives the indices; ``lengths[i]`` is the length of ``examples[i]``).

    Example:
        >>> words = ["ab", "c", "de", "f"]
        >>> list(batches_by_length(words, [len(w) for w in words], 2, shuffle=False, limit=None))
        [['c', 'f'], ['ab', 'de']]
    """
    for indices in length_batches(lengths, batch_size, shuffle=shuffle, limit=limit):
        yield [examples[i] for i in indices]
