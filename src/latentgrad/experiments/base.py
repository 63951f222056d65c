"""The contract between experiments and the runner.

An experiment is a typed config (a dataclass with the paper's settings as defaults) and a
``build`` function that turns a config into a :class:`Trainable`: modules, an optimizer,
batches, one training step and an evaluation. ``build`` makes the estimator from
``config.estimator`` with :func:`latentgrad.experiments.registry.make_estimator` (it knows the
width of the context that input-dependent baselines read, and which latent family the
estimator asks for: ``entry.latent`` is ``"softmax"`` or ``"sparsemax"``). The runner owns everything else:
seeding, run directories, metrics files, checkpoints and resume, progress bars, plots.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn


@dataclass
class ExperimentConfig:
    """Settings every experiment has; experiments subclass it and add their own fields.

    Attributes:
        estimator: name of the estimator (see ``latentgrad list``); the CLI maps it to a
            constructor.
        seed: seeds torch (and numpy) at the start; a run is deterministic given its seed.
        epochs: number of passes over the training set.
        batch_size: training batch size.
        lr: learning rate.
        data: data directory (``None``: ``$LATENTGRAD_DATA``, then the default cache).
        dataset: which data set to train on (experiment-specific names; ``"digits"`` is the
            embedded default that works offline).
        eval_samples: importance samples for the test bound.
        max_steps_per_epoch: cap on training steps per epoch (``None``: the whole set); for
            smoke tests and reduced budgets.
        max_eval_examples: cap on evaluated examples (``None``: the whole split).
        eval_every: evaluate on the validation split every this many epochs.
    """

    estimator: str = "sf-loo"
    seed: int = 0
    epochs: int = 10
    batch_size: int = 100
    lr: float = 1e-3
    data: str | None = None
    dataset: str = "digits"
    eval_samples: int = 1000
    max_steps_per_epoch: int | None = None
    max_eval_examples: int | None = None
    eval_every: int = 1


class Trainable(Protocol):
    """What ``Experiment.build`` returns; the runner drives it.

    Attributes:
        modules: every module whose state a checkpoint must hold (model, estimator with its
            baselines or schedules), as a :class:`torch.nn.ModuleDict`.
        optimizer: the optimizer over the trainable parameters (its state is checkpointed).
    """

    modules: nn.ModuleDict
    optimizer: torch.optim.Optimizer

    def train_batches(self, epoch: int) -> Iterable[Any]:
        """The training batches of one epoch (shuffled with torch's global RNG)."""
        ...

    def train_step(self, batch: Any) -> Mapping[str, float]:
        """One optimizer step on ``batch`` (zero_grad, backward, step inside); scalar metrics.

        Must report ``"loss"`` (the honest training objective, e.g. the negative ELBO) and
        ``"loss_evals"`` (loss evaluations per example in this step).
        """
        ...

    def evaluate(self, split: str) -> Mapping[str, float]:
        """Metrics on ``"valid"`` or ``"test"`` (e.g. ``"nll"``: the importance-sampled bound)."""
        ...


@dataclass(frozen=True)
class Experiment:
    """A registered experiment.

    Attributes:
        name: CLI name (``latentgrad run NAME``).
        description: one line for ``latentgrad list``.
        config_class: the experiment's :class:`ExperimentConfig` subclass (paper defaults).
        build: ``config -> Trainable``.
        primary_metric: the test metric reports sort by (lower is better).
        estimators: the estimator names this experiment supports (default: all registered).
    """

    name: str
    description: str
    config_class: type[ExperimentConfig]
    build: Callable[[Any], Trainable]
    primary_metric: str = "nll"
    estimators: tuple[str, ...] | None = field(default=None)
