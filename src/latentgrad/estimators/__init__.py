"""Gradient estimators: ``estimator(dist, loss_fn) -> Estimate``."""

from latentgrad.estimators._base import Estimate, Estimator, LossFn
from latentgrad.estimators.marginalize import Marginalize

__all__ = ["Estimate", "Estimator", "LossFn", "Marginalize"]
