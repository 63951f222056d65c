"""Sparse probability mappings: sparsemax, its loss, 1.5-entmax, SparseMAP and top-k sparsemax
over structures (autograd Functions); MAP oracles in :mod:`latentgrad.mappings.oracles`."""

from latentgrad.mappings import oracles
from latentgrad.mappings._entmax import Entmax15, Entmax15Function, entmax15
from latentgrad.mappings._sparsemap import SparseMAPFunction, SparseMAPResult, sparsemap
from latentgrad.mappings._sparsemax import (
    Sparsemax,
    SparsemaxFunction,
    SparsemaxLoss,
    SparsemaxLossFunction,
    sparsemax,
    sparsemax_loss,
    sparsemax_threshold,
)
from latentgrad.mappings._topk_structures import (
    TopKResult,
    kbest_budget_bits,
    kbest_free_bits,
    topk_sparsemax,
)

__all__ = [
    "Entmax15",
    "Entmax15Function",
    "SparseMAPFunction",
    "SparseMAPResult",
    "Sparsemax",
    "SparsemaxFunction",
    "SparsemaxLoss",
    "SparsemaxLossFunction",
    "TopKResult",
    "entmax15",
    "kbest_budget_bits",
    "kbest_free_bits",
    "oracles",
    "sparsemap",
    "sparsemax",
    "sparsemax_loss",
    "sparsemax_threshold",
    "topk_sparsemax",
]
