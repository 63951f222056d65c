"""Tests of Chain: one estimator per stochastic layer, unbiased against exact enumeration."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import latentgrad as lg
from latentgrad.testing import assert_unbiased, replicated_gradients

F64 = torch.float64
REPLICATES = 4000
D1, D2 = 3, 2
A1 = torch.tensor([0.5, -1.0, 1.5], dtype=F64)
A2 = torch.tensor([1.0, -2.0], dtype=F64)
M = torch.tensor([[0.5, -1.0], [1.0, 2.0], [-0.5, 1.0]], dtype=F64)


def _loss(z1: Tensor, z2: Tensor, t: Tensor) -> Tensor:
    """Couples the layers (so the second layer's estimate matters to the first's)."""
    inter = (z1.unsqueeze(-1) * M * z2.unsqueeze(-2)).sum((-1, -2))
    return ((z1 * A1).sum(-1) + (z2 * A2).sum(-1) + inter - t) ** 2 + t * z2.sum(-1)


def _split(p: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """phi1 (D1,), W (D2, D1), b (D2,), t () from a flat vector (leading dims kept)."""
    lead = p.shape[:-1]
    phi1 = p[..., :D1]
    w = p[..., D1 : D1 + D2 * D1].reshape((*lead, D2, D1))
    b = p[..., D1 + D2 * D1 : D1 + D2 * D1 + D2]
    return phi1, w, b, p[..., -1]


def _bits(n: int) -> Tensor:
    codes = torch.arange(2**n).unsqueeze(-1)
    return ((codes >> torch.arange(n)) & 1).to(F64)


def _exact_gradient(param: Tensor) -> Tensor:
    """Gradient of E[f(z1, z2)] summed over all 2^D1 * 2^D2 configurations."""
    p = param.clone().requires_grad_(True)
    phi1, w, b, t = _split(p)
    z1, z2 = _bits(D1), _bits(D2)
    n1, n2 = z1.shape[0], z2.shape[0]
    log_q1 = (z1 * F.logsigmoid(phi1) + (1 - z1) * F.logsigmoid(-phi1)).sum(-1)
    logits2 = (z1 @ w.T + b).unsqueeze(1)  # (n1, 1, D2)
    log_q2 = (z2 * F.logsigmoid(logits2) + (1 - z2) * F.logsigmoid(-logits2)).sum(-1)
    f = _loss(z1.unsqueeze(1).expand(n1, n2, D1), z2.unsqueeze(0).expand(n1, n2, D2), t)
    (grad,) = torch.autograd.grad((log_q1.exp().unsqueeze(1) * log_q2.exp() * f).sum(), p)
    return grad


PARAM = torch.tensor([0.4, -0.8, 1.1, 1.0, -2.0, 0.5, 0.3, 0.7, -1.2, 0.2, -0.4, 0.6], dtype=F64)

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
    expected = _exact_gradient(PARAM)
    chain = lg.Chain(ESTIMATORS[name](), num_layers=2)
    # Warm the stateful baselines (moving average, NVIL's lazy net) on a first call.
    calls = 0

    def surrogate(rep: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        phi1, w, b, t = _split(rep)

        def layer2(z1: Tensor) -> lg.Bernoulli:
            return lg.Bernoulli(logits=(w @ z1.unsqueeze(-1)).squeeze(-1) + b)

        out = chain(
            lg.Bernoulli(logits=phi1),
            [layer2],
            lambda zs: _loss(zs[0], zs[1], t),
            context=rep.detach()[..., :D1],
        )
        return out.surrogate

    grads = replicated_gradients(surrogate, PARAM, REPLICATES)
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
