"""Families of discrete latent values (``torch.distributions``-compatible)."""

from latentgrad.distributions import kl  # noqa: F401  (registers closed-form KL divergences)
from latentgrad.distributions._base import DiscreteDistribution, Independent, LocalVariants
from latentgrad.distributions._structured import StructuredDistribution
from latentgrad.distributions.arborescence import Arborescence
from latentgrad.distributions.bernoulli import Bernoulli
from latentgrad.distributions.binary_tree import BinaryTree
from latentgrad.distributions.capabilities import (
    CAPABILITIES,
    Capability,
    declares,
    families_with,
    require,
)
from latentgrad.distributions.categorical import Categorical
from latentgrad.distributions.ksubset import KSubset, PlackettLuce
from latentgrad.distributions.matching import Matching
from latentgrad.distributions.relaxed import RelaxedBernoulli, RelaxedCategorical
from latentgrad.distributions.spanning_tree import SpanningTree
from latentgrad.distributions.sparsemap import SparseMAP, TopKSparsemax
from latentgrad.distributions.sparsemax import SparsemaxCategorical

__all__ = [
    "CAPABILITIES",
    "Arborescence",
    "Bernoulli",
    "BinaryTree",
    "Capability",
    "Categorical",
    "DiscreteDistribution",
    "Independent",
    "KSubset",
    "LocalVariants",
    "Matching",
    "PlackettLuce",
    "RelaxedBernoulli",
    "RelaxedCategorical",
    "SpanningTree",
    "SparseMAP",
    "SparsemaxCategorical",
    "StructuredDistribution",
    "TopKSparsemax",
    "declares",
    "families_with",
    "require",
]
