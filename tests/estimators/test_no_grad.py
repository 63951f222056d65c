"""Every estimator of the registry of examples, on every family it applies to, runs under
torch.no_grad() and keeps no autograd graph there (and builds one with grad enabled)."""

import pytest
import torch
from torch import Tensor

from latentgrad.testing.examples import EstimatorExample, FamilyExample, pairs

PAIRS = pairs()


def _loss(q, w: Tensor):
    n_event = len(q.event_shape)
    return lambda z: torch.sin((z.to(w.dtype).flatten(z.dim() - n_event) * w).sum(-1))


@pytest.mark.parametrize(
    ("estimator", "family"), PAIRS, ids=[f"{x.name}-{f.name}" for x, f in PAIRS]
)
def test_no_graph_under_no_grad(estimator: EstimatorExample, family: FamilyExample) -> None:
    torch.manual_seed(3)
    leaf = family.leaf(requires_grad=True)
    est = estimator.make(family.make(leaf))
    with torch.no_grad():
        q = family.make(leaf)
        w = torch.linspace(-1.0, 1.0, q.event_shape.numel(), dtype=leaf.dtype)
        out = est(q, _loss(q, w))
    assert not out.surrogate.requires_grad and out.surrogate.grad_fn is None
    assert not out.value.requires_grad
    assert torch.isfinite(out.value).all()
    # and with grad enabled the same call does build a graph
    q = family.make(leaf)
    assert est(q, _loss(q, w)).surrogate.requires_grad
