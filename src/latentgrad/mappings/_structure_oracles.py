"""Former home of the structure oracles, now all in :mod:`latentgrad.mappings.oracles`."""

from latentgrad.mappings.oracles import (  # noqa: F401
    ArborescenceOracle,
    KSubsetOracle,
    PermutationOracle,
    SequenceOracle,
    SpanningTreeOracle,
    StructureOracle,
)
