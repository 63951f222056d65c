"""Estimator names used by the command line, mapped to constructors.

The library's estimators take typed arguments and never parse strings; this table is the one
place where a name such as ``"sf-loo"`` becomes ``ScoreFunction(4, LeaveOneOut())``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from latentgrad.estimators._base import Estimator
from latentgrad.estimators.baselines import NVIL, IndependentSample, LeaveOneOut, MovingAverage
from latentgrad.estimators.local_reparam import LocalReparam
from latentgrad.estimators.marginalize import Marginalize
from latentgrad.estimators.muprop import DARN, MuProp
from latentgrad.estimators.relaxed import GumbelSoftmax, StraightThrough
from latentgrad.estimators.score_function import ScoreFunction
from latentgrad.estimators.sum_and_sample import SumAndSample
from latentgrad.schedules import ExponentialDecay, LinearGrowth


@dataclass(frozen=True)
class EstimatorEntry:
    """A named estimator: a one-line description and a constructor.

    ``build(context_features)`` returns a fresh estimator; ``context_features`` is the width of
    the per-example features that input-dependent baselines (NVIL) read. ``latent`` says which
    categorical family the experiment should use with it: ``"softmax"`` (``Categorical``) or
    ``"sparsemax"`` (``SparsemaxCategorical``, whose support is summed exactly).
    """

    description: str
    build: Callable[[int], Estimator]
    latent: str = "softmax"


def _jang_schedule() -> ExponentialDecay:
    """Jang, Gu & Poole (2017): tau = max(0.5, exp(-r t)) updated every N steps (r=1e-4, N=1000)."""
    return ExponentialDecay(initial=1.0, rate=1e-4, every=1000, minimum=0.5)


def _nvil_network(features: int) -> nn.Module:
    return nn.Sequential(nn.Linear(features, 100), nn.Tanh(), nn.Linear(100, 1))


ESTIMATORS: dict[str, EstimatorEntry] = {
    "exact": EstimatorEntry("exact sum over the support (Marginalize)", lambda f: Marginalize()),
    "sf": EstimatorEntry("score function (REINFORCE), 1 sample", lambda f: ScoreFunction(1)),
    "sf-ma": EstimatorEntry(
        "score function, moving-average baseline", lambda f: ScoreFunction(1, MovingAverage())
    ),
    "sf-loo": EstimatorEntry(
        "score function, 4 samples, leave-one-out baseline",
        lambda f: ScoreFunction(4, LeaveOneOut()),
    ),
    "sfe+": EstimatorEntry(
        "score function, baseline = loss of an independent sample (SFE+)",
        lambda f: ScoreFunction(1, IndependentSample(1)),
    ),
    "nvil": EstimatorEntry(
        "score function, learned input-dependent baseline (NVIL)",
        lambda f: ScoreFunction(1, NVIL(_nvil_network(f))),
    ),
    "muprop": EstimatorEntry(
        "MuProp (Taylor baseline at the mean-field point)", lambda f: MuProp()
    ),
    "darn": EstimatorEntry("DARN (Taylor signal at a fixed point, biased)", lambda f: DARN()),
    "gs": EstimatorEntry(
        "Gumbel-Softmax, tau = max(0.5, exp(-1e-4 t)) every 1000 steps (biased)",
        lambda f: GumbelSoftmax(tau=_jang_schedule()),
    ),
    "st-gs": EstimatorEntry(
        "straight-through Gumbel-Softmax, same temperature schedule (biased)",
        lambda f: GumbelSoftmax(tau=_jang_schedule(), hard=True),
    ),
    "st": EstimatorEntry("straight-through (biased)", lambda f: StraightThrough()),
    "annealed-st": EstimatorEntry(
        "slope-annealed straight-through (biased)",
        lambda f: StraightThrough(slope=LinearGrowth(initial=1.0, rate=1e-4, maximum=5.0)),
    ),
    "local-reparam": EstimatorEntry(
        "local marginalization with common random numbers (Tokui & Sato)",
        lambda f: LocalReparam(),
    ),
    "sum-and-sample": EstimatorEntry(
        "sum the top-1 value, sample the rest (Liu et al.)", lambda f: SumAndSample(k=1)
    ),
    "sparsemax": EstimatorEntry(
        "sparsemax latent, exact sum over its small support (Correia et al.)",
        lambda f: Marginalize(),
        latent="sparsemax",
    ),
}


def make_estimator(name: str, context_features: int = 0) -> Estimator:
    """A fresh estimator by name; ``ValueError`` listing the known names otherwise."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; known: {', '.join(ESTIMATORS)}")
    return ESTIMATORS[name].build(context_features)


def describe(name: str) -> str:
    """The one-line description of a registered estimator."""
    return ESTIMATORS[name].description
