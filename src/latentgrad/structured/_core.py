"""Former name of :mod:`latentgrad.structured.core`, kept while callers move to the public name."""

from latentgrad.structured.core import (  # noqa: F401
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
