"""The contract between an experiment and the machinery that runs it.

An experiment is a typed config (an :class:`ExperimentConfig` subclass with the paper's settings
as defaults) and a ``build(config, chosen)`` function that returns a :class:`Trainable`: modules,
an optimizer, batches, one training step and an evaluation. ``chosen`` is a
:class:`ResolvedEstimator`: the runner has already turned ``config.estimator`` (a name from the
estimator registry, :mod:`latentgrad.lab.registry`) into a fresh estimator and the latent family
that estimator asks for, so an experiment never sees estimator names. The runner owns everything
else: seeding, run directories, metrics files, checkpoints and resume, progress bars, plots.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class MyConfig(ExperimentConfig):
    ...     '''My settings.
    ...
    ...     Attributes:
    ...         width: hidden units.
    ...     '''
    ...
    ...     width: int = 32
    >>> def build(config: MyConfig, chosen: ResolvedEstimator) -> Trainable:
    ...     raise NotImplementedError  # modules, optimizer, batches, train_step, evaluate
    >>> EXPERIMENT = Experiment("mine", "my experiment", MyConfig, build)
    >>> EXPERIMENT.config_class().width
    32
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn

from latentgrad.estimators import Estimator
from latentgrad.lab.config import require, require_positive_ints

#: The latent families an estimator entry can ask the experiment for: ``"softmax"`` (the
#: experiment's usual family, e.g. ``Categorical`` or ``Bernoulli``), ``"sparsemax"``
#: (``SparsemaxCategorical``, whose small support is summed exactly), ``"topk-sparsemax"``
#: (``TopKSparsemax`` over bit-vectors, with ``k`` in ``ResolvedEstimator.latent_options``) or
#: ``"sparsemap"`` (``SparseMAP`` over bit-vectors; ``latent_options`` holds ``structures``,
#: ``"free"`` for all bit-vectors or ``"budget"`` for those with at most ``budget`` ones, and
#: ``budget``, ``None`` meaning the experiment's default).
LatentFamily = Literal["softmax", "sparsemax", "topk-sparsemax", "sparsemap"]
LATENT_FAMILIES: tuple[LatentFamily, ...] = ("softmax", "sparsemax", "topk-sparsemax", "sparsemap")


@dataclass
class ExperimentConfig:
    """Settings every experiment has; experiments subclass it and add their own fields.

    Attributes:
        estimator: name of the estimator (see ``latentgrad list``); the runner resolves it
            once, builds the estimator and hands it to the experiment's ``build``.
        estimator_options: the estimator's options by name (``num_samples``, ``baseline``,
            ``tau_initial``, ...; see ``latentgrad run EXPERIMENT --estimator NAME --help``).
            Options not given take the experiment's preset for the estimator
            (:meth:`preset_estimator_options`), then the estimator's defaults: the runner
            records all of them in ``config.json``, and those that differ from the
            estimator's defaults name the run directory.
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
    estimator_options: dict[str, Any] = field(default_factory=dict)
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

    def preset_estimator_options(self) -> Mapping[str, Mapping[str, Any]]:
        """Options by estimator name that this experiment sets unless ``estimator_options``
        gives them (a paper's own settings, e.g. the authors' baseline network); none by
        default. Read through :func:`~latentgrad.lab.registry.resolve_config_options`."""
        return {}

    def validate(self) -> None:
        """Check the ranges of the values (their types are checked when they are parsed).

        The runner calls it before it touches the run directory, so a rejected config leaves
        nothing behind. Subclasses with fields of their own extend it and call
        ``super().validate()`` first.

        Raises:
            InvalidConfigValue: (a ``ValueError``) naming the first field out of range.

        Example:
            >>> ExperimentConfig(max_eval_examples=0).validate()
            Traceback (most recent call last):
            ...
            latentgrad.lab.config.InvalidConfigValue: max_eval_examples must be a positive int or none, got 0
        """
        require_positive_ints(self, "epochs", "batch_size", "eval_samples", "eval_every")
        require_positive_ints(self, "max_steps_per_epoch", "max_eval_examples", optional=True)
        lr = self.lr
        ok = isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr)
        require(ok and lr > 0, "lr", "a positive finite number", lr)
        require(bool(self.estimator), "estimator", "an estimator name", self.estimator)
        options = self.estimator_options
        require(isinstance(options, dict), "estimator_options", "a dict of options", options)
        require(bool(self.dataset), "dataset", "a data set name", self.dataset)


#: The learning rate of an estimator missing from the preset of a :class:`PresetLRConfig`.
DEFAULT_LR = 1e-3


@dataclass
class PresetLRConfig(ExperimentConfig):
    """An :class:`ExperimentConfig` whose ``lr`` may be ``None``: the preset's learning rate for
    the estimator.

    Subclasses say which rates apply (:meth:`preset_learning_rates`, e.g. by latent size or by
    a ``preset`` field); an estimator missing from them takes :data:`DEFAULT_LR`.

    Attributes:
        lr: learning rate (``None``: the preset's for ``estimator``, see :meth:`resolved_lr`).

    Example:
        >>> @dataclass
        ... class MyConfig(PresetLRConfig):
        ...     def preset_learning_rates(self) -> Mapping[str, float]:
        ...         return {"gs": 3e-4}
        >>> MyConfig(estimator="gs").resolved_lr(), MyConfig(estimator="sf").resolved_lr()
        (0.0003, 0.001)
        >>> MyConfig(estimator="gs", lr=0.01).resolved_lr()
        0.01
    """

    lr: float | None = None  # type: ignore[assignment]

    def preset_learning_rates(self) -> Mapping[str, float]:
        """The preset's learning rate by estimator name; subclasses define it."""
        raise NotImplementedError(f"{type(self).__name__} must define preset_learning_rates")

    def resolved_lr(self) -> float:
        """``lr``, or the preset's rate for ``estimator`` when ``lr`` is ``None``."""
        if self.lr is not None:
            return self.lr
        return self.preset_learning_rates().get(self.estimator, DEFAULT_LR)

    def validate(self) -> None:
        """:meth:`ExperimentConfig.validate` with ``lr`` resolved: ``None`` passes (the preset's),
        a given ``lr`` must be positive and finite. Subclasses check first what
        :meth:`preset_learning_rates` reads."""
        ExperimentConfig.validate(dataclasses.replace(self, lr=self.resolved_lr()))


@dataclass(frozen=True)
class ResolvedEstimator:
    """An estimator name turned into what an experiment needs; made by the runner only.

    Attributes:
        name: the registry name it came from (``config.estimator``), for messages.
        estimator: a fresh estimator (an ``nn.Module`` when it holds state: schedules, learned
            baselines; put it among the trainable's ``modules`` and its parameters in the
            optimizer).
        latent: the latent family the estimator asks for (see :data:`LatentFamily`).
        latent_options: settings of that family from the estimator's options (``{"k": 10}``
            for ``"topk-sparsemax"``, ``{"structures": "budget", "budget": None}`` for
            ``"sparsemap"`` with a budget); empty for the others.
        others: ``name -> Estimator``, a fresh estimator of another registered name with its
            default options, for experiments that compare estimators within one run (the
            ``sbn`` gradient-variance study); ``None`` when the caller gives none.

    Example:
        >>> import latentgrad as lg
        >>> chosen = ResolvedEstimator("exact", lg.Marginalize(), "softmax")
        >>> chosen.latent
        'softmax'
    """

    name: str
    estimator: Estimator
    latent: LatentFamily = "softmax"
    others: Callable[[str], Estimator] | None = None
    latent_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.latent not in LATENT_FAMILIES:
            raise ValueError(f"latent must be one of {LATENT_FAMILIES}, got {self.latent!r}")


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
        ``"loss_evals"`` (loss evaluations per example in this step, ``Estimate.loss_evals``).
        """
        ...

    def evaluate(self, split: str) -> Mapping[str, float]:
        """Metrics on ``"valid"`` or ``"test"`` (e.g. ``"nll"``: the importance-sampled bound)."""
        ...


@dataclass(frozen=True)
class Experiment:
    """A registered experiment: what an experiment module exposes as ``EXPERIMENT``.

    Attributes:
        name: CLI name (``latentgrad run NAME``).
        description: one line for ``latentgrad list``.
        config_class: the experiment's :class:`ExperimentConfig` subclass (paper defaults).
        build: ``(config, chosen) -> Trainable``, with ``chosen`` the
            :class:`ResolvedEstimator` of ``config.estimator``.
        primary_metric: the test metric reports sort by (lower is better).
        estimators: the estimator names this experiment supports (default: all registered).
        latent_families: the distribution classes of the experiment's latents; an estimator
            that needs a capability one of them lacks (``RELAX`` needs an execution trace) is
            not offered. ``None``: no such filter.
        latent_kinds: the latent families (:data:`LatentFamily`) the experiment can build; an
            estimator entry asking for another is not offered. ``None``: any.
        artifacts: ``(run_dir, figures) -> paths``, called when a run has finished, to write files of its own from the run's
            records (``metrics.jsonl``): tables, and figures when ``figures`` is true (the
            runner's ``plots``). ``None``: nothing beyond the runner's files.
    """

    name: str
    description: str
    config_class: type[ExperimentConfig]
    build: Callable[[Any, ResolvedEstimator], Trainable]
    primary_metric: str = "nll"
    estimators: tuple[str, ...] | None = field(default=None)
    latent_families: tuple[type, ...] | None = field(default=None)
    latent_kinds: tuple[LatentFamily, ...] | None = field(default=None)
    artifacts: Callable[[Path, bool], list[Path]] | None = field(default=None)
