"""Recursive algorithms on exponential noise, their execution traces and the trace calculus, and
the other combinatorial algorithms the samplers and the MAP oracles share.

Each recursive algorithm (:class:`TopK`, ...) is a batched state machine over items; :func:`run`
drives it on noise; :func:`trace_log_prob`, :func:`conditional_noise`, :func:`noise_log_prob` and
:func:`enumerate_traces` work for every algorithm (Struminsky et al., NeurIPS 2021), see
:mod:`latentgrad.structured.core`. Beside them: the linear assignment problem
(:func:`linear_assignment`), Viterbi decoding (:func:`viterbi`), all labelled trees by Prüfer
decoding and their orientation from a root (:func:`all_spanning_trees`, :func:`orient_trees`),
and bit-vector / subset enumeration (:func:`bit_vectors`, :func:`subset_layers`). The
distributions in :mod:`latentgrad.distributions` and the oracles in
:mod:`latentgrad.mappings.oracles` compose them; estimators never see them.
"""

from latentgrad.structured.argmin_splits import ArgminSplits
from latentgrad.structured.assignment import linear_assignment
from latentgrad.structured.bits import SubsetLayer, bit_vectors, subset_layers
from latentgrad.structured.chu_liu_edmonds import ChuLiuEdmonds
from latentgrad.structured.core import (
    Enumeration,
    RecursiveAlgorithm,
    State,
    Trace,
    conditional_noise,
    enumerate_traces,
    noise_log_prob,
    run,
    sample_noise,
    structure_support,
    trace_log_prob,
)
from latentgrad.structured.elimination import Elimination
from latentgrad.structured.kruskal import Kruskal
from latentgrad.structured.topk import TopK
from latentgrad.structured.trees import all_spanning_trees, orient_trees
from latentgrad.structured.viterbi import viterbi

__all__ = [
    "ArgminSplits",
    "ChuLiuEdmonds",
    "Elimination",
    "Enumeration",
    "Kruskal",
    "RecursiveAlgorithm",
    "State",
    "SubsetLayer",
    "TopK",
    "Trace",
    "all_spanning_trees",
    "bit_vectors",
    "conditional_noise",
    "enumerate_traces",
    "linear_assignment",
    "noise_log_prob",
    "orient_trees",
    "run",
    "sample_noise",
    "structure_support",
    "subset_layers",
    "trace_log_prob",
    "viterbi",
]
