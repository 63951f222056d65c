"""Recursive algorithms on exponential noise, their execution traces and the trace calculus.

Each algorithm (:class:`TopK`, ...) is a batched state machine over items; :func:`run` drives
it on noise; :func:`trace_log_prob`, :func:`conditional_noise`, :func:`noise_log_prob` and
:func:`enumerate_traces` work for every algorithm (Struminsky et al., NeurIPS 2021). The
distributions in :mod:`latentgrad.distributions` compose them; estimators never see them.
"""

from latentgrad.structured._core import (
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
from latentgrad.structured.argmin_splits import ArgminSplits
from latentgrad.structured.chu_liu_edmonds import ChuLiuEdmonds
from latentgrad.structured.elimination import Elimination
from latentgrad.structured.kruskal import Kruskal
from latentgrad.structured.topk import TopK

__all__ = [
    "ArgminSplits",
    "ChuLiuEdmonds",
    "Elimination",
    "Enumeration",
    "Kruskal",
    "RecursiveAlgorithm",
    "State",
    "TopK",
    "Trace",
    "conditional_noise",
    "enumerate_traces",
    "noise_log_prob",
    "run",
    "sample_noise",
    "structure_support",
    "trace_log_prob",
]
