"""Tests of Chain: one estimator per stochastic layer, unbiased against exact enumeration."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

import latentgrad as lg
from latentgrad.testing import assert_unbiased, chain_problems, replicated_gradients

REPLICATES = 4000
# A two-layer sigmoid belief net of 3 and 2 bits, with its exact gradient by enumeration.
(SBN,) = chain_problems(names=["sbn-3-2"])
D1 = SBN.first_size

ESTIMATORS: dict[str, Callable[[], lg.Estimator]] = {
    "sf": lambda: lg.ScoreFunction(),
    "sf-ma": lambda: lg.ScoreFunction(baseline=lg.MovingAverage()),
    "sf-loo": lambda: lg.ScoreFunction(3, lg.LeaveOneOut()),
    "nvil": lambda: lg.ScoreFunction(
        baseline=lg.NVIL(
            torch.nn.Sequential(
                torch.nn.LazyLinear(4), torch.nn.Tanh(), torch.nn.Linear(4, 1)
            ).double()
        )
    ),
    "muprop": lambda: lg.MuProp(),
    "local-reparam": lambda: lg.LocalReparam(),
    "local-expectation": lambda: lg.LocalExpectation(),
}


@pytest.mark.stat
@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_chain_unbiased_two_layer_sbn(name: str) -> None:
    """Every parameter's gradient (both layers and the loss's own) has the exact mean."""
    torch.manual_seed(0)
    expected = SBN.exact_gradient()
    chain = lg.Chain(ESTIMATORS[name](), num_layers=2)
    # Warm the stateful baselines (moving average, NVIL's lazy net) on a first call.
    calls = 0

    def surrogate(rep: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        p = SBN.split(rep)
        out = chain(
            SBN.first(p), SBN.conditionals(p), SBN.loss_fn(p), context=rep.detach()[..., :D1]
        )
        return out.surrogate

    grads = replicated_gradients(surrogate, SBN.param, REPLICATES)
    assert torch.isfinite(grads).all()
    assert_unbiased(grads, expected, name=f"Chain({name}) on a two-layer SBN")


def test_chain_copies_estimators_and_counts_evaluations() -> None:
    chain = lg.Chain(lg.ScoreFunction(2, lg.LeaveOneOut()), num_layers=3)
    assert len(chain.layers) == 3 and chain.layers[0] is not chain.layers[1]
    x = torch.zeros(5, 4)
    calls: list[tuple[int, ...]] = []

    def loss_fn(zs: list[Tensor]) -> Tensor:
        calls.append(tuple(zs[-1].shape))
        assert all(z.shape[:-1] == zs[-1].shape[:-1] for z in zs)
        return zs[0].sum(-1) + zs[1].sum(-1) + zs[2].sum(-1)

    cond = [
        lambda z: lg.Bernoulli(logits=z @ torch.ones(4, 3)),
        lambda z: lg.Bernoulli(logits=z @ torch.ones(3, 2)),
    ]
    out = chain(lg.Bernoulli(logits=x), cond, loss_fn)
    assert calls == [(2, 2, 2, 5, 2)]  # one loss call on every row
    assert out.loss_evals == 8 and out.extras["layer_loss_evals"] == (2, 2, 2)
    assert out.value.shape == (5,)


def test_chain_local_reparam_is_joint() -> None:
    chain = lg.Chain(lg.LocalReparam(), num_layers=2)
    assert chain.joint and len(chain.layers) == 1
    q1 = lg.Bernoulli(logits=torch.zeros(4, 3))
    out = chain(q1, [lambda z: lg.Bernoulli(logits=z[..., :2])], lambda zs: zs[1].sum(-1))
    assert out.loss_evals == 1 + 3 + 2


def test_chain_steps_every_layer_schedule() -> None:
    chain = lg.Chain(lg.GumbelSoftmax(tau=lg.ExponentialDecay(rate=0.5, minimum=0.1)), num_layers=2)
    assert isinstance(chain, lg.Scheduled)
    assert chain.step() < 1.0
    taus = [est.tau for est in chain.layers]
    assert taus[0] == taus[1] < 1.0


def test_chain_relaxed_gradients_reach_both_layers() -> None:
    torch.manual_seed(0)
    logits1 = torch.zeros(6, 2, 3, requires_grad=True)
    w = torch.randn(6, 4, requires_grad=True)
    chain = lg.Chain(lg.GumbelSoftmax(), num_layers=2)

    def layer2(z1: Tensor) -> lg.Independent:
        return lg.Categorical(logits=(z1.flatten(-2) @ w).unflatten(-1, (2, 2))).to_event(1)

    out = chain(
        lg.Categorical(logits=logits1).to_event(1), [layer2], lambda zs: zs[1][..., 0].sum(-1)
    )
    out.surrogate.sum().backward()
    assert logits1.grad is not None and logits1.grad.abs().sum() > 0
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_bad_chain_arguments() -> None:
    with pytest.raises(TypeError, match="estimator"):
        lg.Chain("sf", num_layers=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_layers"):
        lg.Chain(lg.ScoreFunction(), num_layers=0)
    chain = lg.Chain(lg.ScoreFunction(), num_layers=2)
    q = lg.Bernoulli(logits=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="conditionals must have num_layers - 1 = 1"):
        chain(q, [], lambda zs: zs[0].sum(-1))
    with pytest.raises(TypeError, match=r"conditionals\[0\] must be callable"):
        chain(q, [3], lambda zs: zs[0].sum(-1))  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"conditionals\[0\]"):
        chain(q, [lambda z: lg.Bernoulli(logits=torch.zeros(7, 2))], lambda zs: zs[0].sum(-1))


def test_relaxed_chain_value_is_the_loss_at_discrete_samples_of_every_layer() -> None:
    """GumbelSoftmax's honest value holds through the layers: no relaxed upper-layer sample."""
    torch.manual_seed(0)
    chain = lg.Chain(lg.GumbelSoftmax(tau=0.5), num_layers=2)
    out = chain(
        lg.Bernoulli(logits=torch.zeros(64, 3)),
        [lambda z: lg.Bernoulli(logits=2 * z - 1)],
        lambda zs: zs[1].sum(-1),
    )
    assert torch.equal(out.value, out.value.round())  # counts of ones of discrete samples
