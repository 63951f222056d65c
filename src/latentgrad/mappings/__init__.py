"""Sparse probability mappings: sparsemax, its loss, 1.5-entmax, SparseMAP and top-k sparsemax
over structures (autograd Functions); MAP oracles in :mod:`latentgrad.mappings.oracles`.

The package exports everything public; its private modules hold one mapping each
(``_sparsemax``, ``_sparsemax_loss``, ``_entmax``, ``_sparsemap``, ``_topk_structures``) and the
helpers they share (``_shared``). Other packages import from here, never from those modules.
"""

from latentgrad.mappings import oracles
from latentgrad.mappings._entmax import Entmax15, Entmax15Function, entmax15
from latentgrad.mappings._sparsemap import SparseMAPFunction, SparseMAPResult, sparsemap
from latentgrad.mappings._sparsemax import (
    Sparsemax,
    SparsemaxFunction,
    sparsemax,
    sparsemax_threshold,
)
from latentgrad.mappings._sparsemax_loss import (
    SparsemaxLoss,
    SparsemaxLossFunction,
    sparsemax_loss,
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
