"""latentgrad: gradients through discrete latent variables.

A distribution, a loss function of a sample and an estimator give a surrogate loss whose
gradient estimates ``grad E_{z~q}[loss(z)]``::

    q = lg.Categorical(logits=encoder(x)).to_event(1)
    out = lg.ScoreFunction(num_samples=4, baseline=lg.LeaveOneOut())(q, loss_fn)
    out.surrogate.mean().backward()

Importing latentgrad changes no global state.
"""

from latentgrad import distributions, estimators, mappings, schedules, structured, testing
from latentgrad.distributions import (
    Arborescence,
    Bernoulli,
    BinaryTree,
    Categorical,
    DiscreteDistribution,
    Independent,
    KSubset,
    Matching,
    PlackettLuce,
    RelaxedBernoulli,
    RelaxedCategorical,
    SpanningTree,
    SparseMAP,
    SparsemaxCategorical,
    StructuredDistribution,
    TopKSparsemax,
    require,
)
from latentgrad.estimators import (
    DARN,
    NVIL,
    RELAX,
    Baseline,
    BaselineOutput,
    Chain,
    EReinforce,
    Estimate,
    Estimator,
    GumbelSoftmax,
    IndependentSample,
    LeaveOneOut,
    LocalExpectation,
    LocalReparam,
    Marginalize,
    MLPCritic,
    MovingAverage,
    MuProp,
    ScoreFunction,
    StraightThrough,
    SumAndSample,
    TReinforce,
)
from latentgrad.mappings import entmax15, sparsemax, sparsemax_loss
from latentgrad.schedules import Constant, ExponentialDecay, LinearGrowth, Schedule, Scheduled

__version__ = "0.1.0"

__all__ = [
    "DARN",
    "NVIL",
    "RELAX",
    "Arborescence",
    "Baseline",
    "BaselineOutput",
    "Bernoulli",
    "BinaryTree",
    "Categorical",
    "Chain",
    "Constant",
    "DiscreteDistribution",
    "EReinforce",
    "Estimate",
    "Estimator",
    "ExponentialDecay",
    "GumbelSoftmax",
    "Independent",
    "IndependentSample",
    "KSubset",
    "LeaveOneOut",
    "LinearGrowth",
    "LocalExpectation",
    "LocalReparam",
    "MLPCritic",
    "Marginalize",
    "Matching",
    "MovingAverage",
    "MuProp",
    "PlackettLuce",
    "RelaxedBernoulli",
    "RelaxedCategorical",
    "Schedule",
    "Scheduled",
    "ScoreFunction",
    "SpanningTree",
    "SparseMAP",
    "SparsemaxCategorical",
    "StraightThrough",
    "StructuredDistribution",
    "SumAndSample",
    "TReinforce",
    "TopKSparsemax",
    "distributions",
    "entmax15",
    "estimators",
    "mappings",
    "require",
    "schedules",
    "sparsemax",
    "sparsemax_loss",
    "structured",
    "testing",
]
