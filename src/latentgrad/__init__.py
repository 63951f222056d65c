"""latentgrad: gradients through discrete and structured latent variables.

A distribution, a loss function of a sample and an estimator give a surrogate loss whose
gradient estimates ``grad E_{z~q}[loss(z)]``::

    q = lg.Categorical(logits=encoder(x)).to_event(1)
    out = lg.ScoreFunction(num_samples=4, baseline=lg.LeaveOneOut())(q, loss_fn)
    out.surrogate.mean().backward()

Importing latentgrad changes no global state.
"""

from latentgrad import distributions, estimators, testing
from latentgrad.distributions import Bernoulli, Categorical, Independent
from latentgrad.estimators import Estimate, Estimator, Marginalize

__version__ = "0.1.0"

__all__ = [
    "Bernoulli",
    "Categorical",
    "Estimate",
    "Estimator",
    "Independent",
    "Marginalize",
    "distributions",
    "estimators",
    "testing",
]
