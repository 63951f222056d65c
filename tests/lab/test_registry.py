"""Estimator names: one table, one check, built estimators handed to experiments."""

from __future__ import annotations

import dataclasses

import latentgrad_tests_toy as toy  # loaded by conftest.py
import pytest
import torch

import latentgrad as lg
from latentgrad.lab import ResolvedEstimator
from latentgrad.lab.registry import (
    ESTIMATORS,
    UnknownEstimator,
    describe,
    estimator_entry,
    make_estimator,
    supported_estimators,
)


def test_every_entry_builds_a_fresh_estimator_and_resolves():
    for name, entry in ESTIMATORS.items():
        a, b = entry.build(), entry.build()
        assert callable(a) and a is not b, name
        chosen = entry.resolve(name)
        assert isinstance(chosen, ResolvedEstimator)
        assert (chosen.name, chosen.latent) == (name, entry.latent)
        assert type(chosen.estimator) is type(a)
        assert describe(name) == entry.description


def test_unknown_names_are_one_error_listing_the_valid_ones():
    with pytest.raises(UnknownEstimator, match=r"unknown estimator 'nope'; valid: exact, sf,"):
        estimator_entry("nope")
    restricted = dataclasses.replace(toy.EXPERIMENT, estimators=("sf", "exact"))
    assert supported_estimators(restricted) == ["exact", "sf"]  # registry order
    assert supported_estimators(toy.EXPERIMENT) == list(ESTIMATORS)
    with pytest.raises(UnknownEstimator, match=r"for experiment 'toy'; valid: exact, sf$"):
        estimator_entry("gs", restricted)
    assert estimator_entry("sf", restricted) is ESTIMATORS["sf"]
    assert isinstance(UnknownEstimator("x"), ValueError)
    with pytest.raises(UnknownEstimator):
        make_estimator("nope")


def test_resolved_estimator_checks_its_latent_family():
    with pytest.raises(ValueError, match="latent must be one of"):
        ResolvedEstimator("exact", lg.Marginalize(), "gaussian")  # type: ignore[arg-type]


@pytest.mark.parametrize("width", [3, 7])
def test_nvil_network_takes_the_context_width_of_its_first_call(width):
    estimator = make_estimator("nvil")
    q = lg.Bernoulli(logits=torch.zeros(5, 2))
    out = estimator(q, lambda z: z.sum(-1), context=torch.randn(5, width))
    out.surrogate.mean().backward()
    assert estimator.baseline.network[0].weight.shape == (100, width)
    assert estimator.baseline.network[0].weight.grad is not None


def test_relax_critic_width_is_an_option_and_relax_is_offered_where_it_applies():
    import torch

    import latentgrad as lg
    from latentgrad.lab.catalog import all_experiments
    from latentgrad.lab.registry import make_estimator, supported_estimators

    est = make_estimator("relax", {"critic_hidden": 8, "num_samples": 2})
    scores = torch.zeros(3, 5, requires_grad=True)
    out = est(lg.KSubset(scores, k=2), lambda z: z[..., 0] + z[..., 1])
    out.surrogate.sum().backward()
    assert scores.grad is not None and est.critic.net[0].out_features == 8
    assert out.per_sample.shape == (2, 3)
    assert ESTIMATORS["relax"].applies_to(lg.KSubset)
    assert not ESTIMATORS["relax"].applies_to(lg.Categorical)
    for experiment in all_experiments().values():  # only where every latent has a trace
        if "relax" in supported_estimators(experiment):
            families = experiment.latent_families
            assert families and all(ESTIMATORS["relax"].applies_to(f) for f in families)
    assert "relax" in supported_estimators(all_experiments()["rgm-toy"])
    assert "relax" in supported_estimators()
