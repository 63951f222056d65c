"""Gradient estimators: ``estimator(dist, loss_fn) -> Estimate``."""

from latentgrad.estimators._base import Estimate, Estimator, LatentDistribution, LossFn
from latentgrad.estimators.baselines import (
    NVIL,
    Baseline,
    BaselineOutput,
    IndependentSample,
    LeaveOneOut,
    MovingAverage,
)
from latentgrad.estimators.chain import Chain
from latentgrad.estimators.local_expectation import LocalExpectation
from latentgrad.estimators.local_reparam import LocalReparam
from latentgrad.estimators.marginalize import Marginalize
from latentgrad.estimators.muprop import DARN, MuProp
from latentgrad.estimators.relax import RELAX, MLPCritic
from latentgrad.estimators.relaxed import GumbelSoftmax, StraightThrough
from latentgrad.estimators.score_function import EReinforce, ScoreFunction, TReinforce
from latentgrad.estimators.sum_and_sample import SumAndSample

__all__ = [
    "DARN",
    "NVIL",
    "RELAX",
    "Baseline",
    "BaselineOutput",
    "Chain",
    "EReinforce",
    "Estimate",
    "Estimator",
    "GumbelSoftmax",
    "IndependentSample",
    "LatentDistribution",
    "LeaveOneOut",
    "LocalExpectation",
    "LocalReparam",
    "LossFn",
    "MLPCritic",
    "Marginalize",
    "MovingAverage",
    "MuProp",
    "ScoreFunction",
    "StraightThrough",
    "SumAndSample",
    "TReinforce",
]
