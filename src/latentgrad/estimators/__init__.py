"""Gradient estimators: ``estimator(dist, loss_fn) -> Estimate``."""

from latentgrad.estimators._base import Estimate, Estimator, LatentDistribution, LossFn
from latentgrad.estimators.baselines import (
    NVIL,
    Baseline,
    BaselineOutput,
    CumulativeMean,
    IndependentSample,
    LeaveOneOut,
    MovingAverage,
)
from latentgrad.estimators.chain import Chain
from latentgrad.estimators.disarm import ARMS, DisARM
from latentgrad.estimators.gapped_st import GappedStraightThrough
from latentgrad.estimators.gumbel_rao import GumbelRao
from latentgrad.estimators.indecater import IndeCateR
from latentgrad.estimators.local_expectation import LocalExpectation
from latentgrad.estimators.local_reparam import LocalReparam
from latentgrad.estimators.marginalize import Marginalize, PackedLoss, PackedSupport, pack_support
from latentgrad.estimators.muprop import DARN, MuProp
from latentgrad.estimators.rebar import REBAR, ConcreteRELAX
from latentgrad.estimators.reinmax import ReinMax
from latentgrad.estimators.relax import RELAX, MLPCritic
from latentgrad.estimators.relaxed import GumbelSoftmax, StraightThrough
from latentgrad.estimators.score_function import EReinforce, ScoreFunction, TReinforce
from latentgrad.estimators.sum_and_sample import SumAndSample
from latentgrad.estimators.unordered_set import UnorderedSet
from latentgrad.estimators.vimco import VIMCO

__all__ = [
    "ARMS",
    "DARN",
    "NVIL",
    "REBAR",
    "RELAX",
    "VIMCO",
    "Baseline",
    "BaselineOutput",
    "Chain",
    "ConcreteRELAX",
    "CumulativeMean",
    "DisARM",
    "EReinforce",
    "Estimate",
    "Estimator",
    "GappedStraightThrough",
    "GumbelRao",
    "GumbelSoftmax",
    "IndeCateR",
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
    "PackedLoss",
    "PackedSupport",
    "ReinMax",
    "ScoreFunction",
    "StraightThrough",
    "SumAndSample",
    "TReinforce",
    "UnorderedSet",
    "pack_support",
]
