"""Every registered estimator runs under torch.no_grad() and keeps no autograd graph there."""

import pytest
import torch

from latentgrad.experiments.compare import SHAPES, build_for, make_problem, run_once
from latentgrad.experiments.registry import ESTIMATORS


@pytest.mark.parametrize("family", sorted(SHAPES))
@pytest.mark.parametrize("name", [n for n, e in ESTIMATORS.items() if e.latent == "softmax"])
def test_no_graph_under_no_grad(family, name):
    problem = make_problem(family)
    estimator = build_for(ESTIMATORS[name], problem)
    with torch.no_grad():
        out = run_once(estimator, problem, requires_grad=True)
    assert not out.surrogate.requires_grad and out.surrogate.grad_fn is None
    assert not out.value.requires_grad
    assert torch.isfinite(out.value).all()
    # and with grad enabled the same call does build a graph
    out = run_once(estimator, problem, requires_grad=True)
    assert out.surrogate.requires_grad
