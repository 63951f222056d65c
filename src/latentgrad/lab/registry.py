"""Estimator names used by the command line and configs, mapped to constructors.

The library's estimators take typed arguments and never parse strings; this table is the one
place where a name such as ``"sf-loo"`` becomes ``ScoreFunction(4, LeaveOneOut())``, and
:func:`estimator_entry` is the one place where a name is checked (against the registry and the
experiment's list of supported estimators). The runner resolves ``config.estimator`` with it
once and hands the experiment a built estimator (:class:`~latentgrad.lab.experiment.ResolvedEstimator`).

Networks inside estimators (NVIL's baseline) size their input on first use
(:class:`torch.nn.LazyLinear`), so an entry builds without knowing the experiment's data.

Example:
    >>> entry = ESTIMATORS["sf-loo"]
    >>> entry.description
    'score function, 4 samples, leave-one-out baseline'
    >>> entry.build().num_samples, entry.latent
    (4, 'softmax')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from latentgrad.estimators import (
    DARN,
    NVIL,
    Estimator,
    GumbelSoftmax,
    IndependentSample,
    LeaveOneOut,
    LocalReparam,
    Marginalize,
    MovingAverage,
    MuProp,
    ScoreFunction,
    StraightThrough,
    SumAndSample,
)
from latentgrad.lab.experiment import Experiment, LatentFamily, ResolvedEstimator
from latentgrad.schedules import ExponentialDecay, LinearGrowth


class UnknownEstimator(ValueError):
    """An estimator name that is not registered, or that the experiment does not support."""


@dataclass(frozen=True)
class EstimatorEntry:
    """A named estimator: a one-line description and a constructor.

    Attributes:
        description: one line for ``latentgrad list``.
        build: ``() -> Estimator``, a fresh estimator each call (its random initialization,
            if any, draws from torch's global RNG, which the runner has seeded).
        latent: the latent family the experiment should use with it (``"softmax"``: its usual
            family; ``"sparsemax"``: ``SparsemaxCategorical``, whose support is summed exactly).
    """

    description: str
    build: Callable[[], Estimator]
    latent: LatentFamily = "softmax"

    def resolve(self, name: str) -> ResolvedEstimator:
        """A fresh estimator with its name and latent family, as an experiment receives it."""
        return ResolvedEstimator(name, self.build(), self.latent)


def _jang_schedule() -> ExponentialDecay:
    """Jang, Gu & Poole (2017): tau = max(0.5, exp(-r t)) updated every N steps (r=1e-4, N=1000)."""
    return ExponentialDecay(initial=1.0, rate=1e-4, every=1000, minimum=0.5)


def _nvil_network(hidden: int = 100) -> nn.Module:
    """Mnih & Gregor's input-dependent baseline: one tanh layer; the input width is lazy."""
    return nn.Sequential(nn.LazyLinear(hidden), nn.Tanh(), nn.Linear(hidden, 1))


ESTIMATORS: dict[str, EstimatorEntry] = {
    "exact": EstimatorEntry("exact sum over the support (Marginalize)", Marginalize),
    "sf": EstimatorEntry("score function (REINFORCE), 1 sample", lambda: ScoreFunction(1)),
    "sf-ma": EstimatorEntry(
        "score function, moving-average baseline", lambda: ScoreFunction(1, MovingAverage())
    ),
    "sf-loo": EstimatorEntry(
        "score function, 4 samples, leave-one-out baseline",
        lambda: ScoreFunction(4, LeaveOneOut()),
    ),
    "sfe+": EstimatorEntry(
        "score function, baseline = loss of an independent sample (SFE+)",
        lambda: ScoreFunction(1, IndependentSample(1)),
    ),
    "nvil": EstimatorEntry(
        "score function, learned input-dependent baseline (NVIL)",
        lambda: ScoreFunction(1, NVIL(_nvil_network())),
    ),
    "muprop": EstimatorEntry("MuProp (Taylor baseline at the mean-field point)", MuProp),
    "darn": EstimatorEntry("DARN (Taylor signal at a fixed point, biased)", DARN),
    "gs": EstimatorEntry(
        "Gumbel-Softmax, tau = max(0.5, exp(-1e-4 t)) every 1000 steps (biased)",
        lambda: GumbelSoftmax(tau=_jang_schedule()),
    ),
    "st-gs": EstimatorEntry(
        "straight-through Gumbel-Softmax, same temperature schedule (biased)",
        lambda: GumbelSoftmax(tau=_jang_schedule(), hard=True),
    ),
    "st": EstimatorEntry("straight-through (biased)", StraightThrough),
    "annealed-st": EstimatorEntry(
        "slope-annealed straight-through (biased)",
        lambda: StraightThrough(slope=LinearGrowth(initial=1.0, rate=1e-4, maximum=5.0)),
    ),
    "local-reparam": EstimatorEntry(
        "local marginalization with common random numbers (Tokui & Sato)", LocalReparam
    ),
    "sum-and-sample": EstimatorEntry(
        "sum the top-1 value, sample the rest (Liu et al.)", lambda: SumAndSample(k=1)
    ),
    "sparsemax": EstimatorEntry(
        "sparsemax latent, exact sum over its small support (Correia et al.)",
        Marginalize,
        latent="sparsemax",
    ),
}


def supported_estimators(experiment: Experiment | None = None) -> list[str]:
    """The registered names, in registry order, that ``experiment`` supports (all: ``None``).

    Example:
        >>> supported_estimators()[:3]
        ['exact', 'sf', 'sf-ma']
    """
    allowed = None if experiment is None else experiment.estimators
    return [name for name in ESTIMATORS if allowed is None or name in allowed]


def estimator_entry(name: str, experiment: Experiment | None = None) -> EstimatorEntry:
    """The registry entry of ``name``, checked against what ``experiment`` supports.

    Raises:
        UnknownEstimator: (a ``ValueError``) naming the valid estimators.

    Example:
        >>> estimator_entry("gs").latent
        'softmax'
        >>> estimator_entry("bogus")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        latentgrad.lab.registry.UnknownEstimator: unknown estimator 'bogus'; valid: exact, ...
    """
    valid = supported_estimators(experiment)
    if name not in valid:
        where = "" if experiment is None else f" for experiment {experiment.name!r}"
        raise UnknownEstimator(f"unknown estimator {name!r}{where}; valid: {', '.join(valid)}")
    return ESTIMATORS[name]


def make_estimator(name: str) -> Estimator:
    """A fresh estimator by name; :class:`UnknownEstimator` listing the known names otherwise.

    Example:
        >>> type(make_estimator("st-gs")).__name__
        'GumbelSoftmax'
    """
    return estimator_entry(name).build()


def describe(name: str) -> str:
    """The one-line description of a registered estimator."""
    return estimator_entry(name).description
