"""Exact oracles and statistical assertions, shipped so users can test their own models."""

from latentgrad.testing.brute_force import (
    BruteForce,
    brute_force_support,
    probabilities_of,
    register_brute_force,
)
from latentgrad.testing.chains import (
    ChainParams,
    ChainProblem,
    chain_problems,
    quadratic_loss,
    single_layer_gradients,
    unpack_logits_and_t,
)
from latentgrad.testing.exact import (
    exact_expectation,
    exact_gradient,
    exact_multisample_bound,
    exact_multisample_gradient,
    replicated_gradients,
)
from latentgrad.testing.images import ToySplits, noisy_patterns, toy_image_splits
from latentgrad.testing.mappings import reference_entmax, reference_entmax_threshold
from latentgrad.testing.stats import (
    DEFAULT_ALPHA,
    UnbiasedCheck,
    assert_unbiased,
    bonferroni_z,
    check_unbiased,
    chi_square_pvalue,
    ks_critical_value,
    ks_statistic,
)

__all__ = [
    "DEFAULT_ALPHA",
    "BruteForce",
    "ChainParams",
    "ChainProblem",
    "ToySplits",
    "UnbiasedCheck",
    "assert_unbiased",
    "bonferroni_z",
    "brute_force_support",
    "chain_problems",
    "check_unbiased",
    "chi_square_pvalue",
    "exact_expectation",
    "exact_gradient",
    "exact_multisample_bound",
    "exact_multisample_gradient",
    "ks_critical_value",
    "ks_statistic",
    "noisy_patterns",
    "probabilities_of",
    "quadratic_loss",
    "reference_entmax",
    "reference_entmax_threshold",
    "register_brute_force",
    "replicated_gradients",
    "single_layer_gradients",
    "toy_image_splits",
    "unpack_logits_and_t",
]
