"""Sparse probability mappings: sparsemax, its loss, and 1.5-entmax (autograd Functions)."""

from latentgrad.mappings._entmax import Entmax15, Entmax15Function, entmax15
from latentgrad.mappings._sparsemax import (
    Sparsemax,
    SparsemaxFunction,
    SparsemaxLoss,
    SparsemaxLossFunction,
    sparsemax,
    sparsemax_loss,
    sparsemax_threshold,
)

__all__ = [
    "Entmax15",
    "Entmax15Function",
    "Sparsemax",
    "SparsemaxFunction",
    "SparsemaxLoss",
    "SparsemaxLossFunction",
    "entmax15",
    "sparsemax",
    "sparsemax_loss",
    "sparsemax_threshold",
]
