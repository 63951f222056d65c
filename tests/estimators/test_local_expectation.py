"""Tests of LocalExpectation: one layer is LocalReparam's computation, unbiasedness of chains of
Bernoulli and categorical layers (against exact enumeration), Markov-blanket weights, numerics.

The tests that hold for LocalReparam and LocalExpectation alike (one-layer unbiasedness,
extreme logits, bad input) run on both in test_local_reparam.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import latentgrad as lg
from latentgrad.estimators import local_expectation
from latentgrad.estimators.local_expectation import LocalExpectation
from latentgrad.estimators.local_reparam import LocalReparam
from latentgrad.testing import (
    ChainProblem,
    assert_unbiased,
    chain_problems,
    check_unbiased,
    quadratic_loss,
    replicated_gradients,
)
from latentgrad.testing.examples import (
    UNIT_FAMILIES,
    FamilyExample,
    family_examples,
    family_examples_by_name,
)

F64 = torch.float64
REPLICATES = 4000


# The families LocalReparam is tested on (batched, -inf too).
FAMILIES: dict[str, FamilyExample] = family_examples_by_name(UNIT_FAMILIES)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_single_layer_is_local_reparam(family: str) -> None:
    """One layer: the same computation as LocalReparam (same samples, same numbers)."""
    example = FAMILIES[family]
    q = example.dist()
    loss = quadratic_loss(len(q.event_shape), q.event_shape.numel())
    t = torch.tensor(0.7, dtype=F64)
    results = []
    for est in (LocalReparam(num_samples=3), LocalExpectation(num_samples=3)):
        torch.manual_seed(5)
        phi = example.leaf(requires_grad=True)
        out = est(example.make(phi), lambda z: loss(z, t))
        (grad,) = torch.autograd.grad(out.surrogate.sum(), phi)
        results.append((out.surrogate.detach(), out.extras["variant_losses"], grad))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_variants_of_a_unit_are_consecutive() -> None:
    """The grouping the Markov-blanket weights rely on: unit-major, C - 1 variants per unit."""
    names = ["categorical", "bernoulli", "independent-categorical", "independent-bernoulli"]
    for example in family_examples(names=names):
        q = example.dist()
        z = q.sample((2,))
        variants = q.local_variants(z)
        units = max(q.unit_shape.numel(), 1)
        per_unit = variants.values.shape[0] // units
        assert per_unit * units == variants.values.shape[0], example.name
        lead = z.dim() - len(q.event_shape)
        changed = variants.values != z
        changed = changed.reshape((*changed.shape[: lead + 1], units, -1)).any(-1)
        owner = torch.arange(variants.values.shape[0]) // per_unit
        expected = F.one_hot(owner, units).bool().reshape((-1,) + (1,) * lead + (units,))
        assert torch.equal(changed, expected.expand_as(changed)), example.name


# -- chains: exact gradients by enumeration ------------------------------------------------------


# Two Bernoulli layers of 3 and 3 bits, three of 2, 3 and 2 bits, two of 2 categorical units
# with 3 classes each.
CHAINS: dict[str, ChainProblem] = {
    p.name: p for p in chain_problems(names=["sbn", "three-bernoulli", "two-categorical"])
}
D1, D2 = CHAINS["sbn"].units


def _surrogate(problem: ChainProblem, est: LocalExpectation) -> Callable[[Tensor], Tensor]:
    def surrogate(rep: Tensor) -> Tensor:
        p = problem.split(rep)
        out = est.chain(problem.first(p), problem.conditionals(p), problem.loss_fn(p))
        assert out.extras["num_variants"] == problem.num_variants
        assert out.loss_evals == 1 + sum(problem.num_variants)
        return out.surrogate

    return surrogate


@pytest.mark.stat
@pytest.mark.parametrize("chain", sorted(CHAINS))
@pytest.mark.parametrize("num_samples", [1, 2])
def test_chain_unbiased(chain: str, num_samples: int) -> None:
    """Every parameter (every layer's and the loss's own t) has the exact mean."""
    torch.manual_seed(0)
    problem = CHAINS[chain]
    expected = problem.exact_gradient()
    est = LocalExpectation(num_samples=num_samples)
    grads = replicated_gradients(_surrogate(problem, est), problem.param, REPLICATES)
    assert torch.isfinite(grads).all()
    assert_unbiased(grads, expected, name=f"LocalExpectation.chain on {chain}")


@pytest.mark.stat
@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_chain_weights_without_children_are_biased(
    chain: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weighting a unit's values by q_i(c) alone (ignoring its children) is detected as biased
    in the first layer's gradient: the tests above have power against it."""
    torch.manual_seed(0)
    problem = CHAINS[chain]
    expected = problem.exact_gradient()
    blanket = local_expectation.blanket_correction

    def without_children(row_lp: Tensor, child_lp: Tensor, *args: Any) -> Tensor:
        return blanket(row_lp, torch.zeros_like(child_lp), *args)

    monkeypatch.setattr(local_expectation, "blanket_correction", without_children)
    grads = replicated_gradients(_surrogate(problem, LocalExpectation()), problem.param, REPLICATES)
    first = problem.first_size
    assert not check_unbiased(grads[:, :first], expected[:first]).passed


# -- chains: calls, rows, weights ----------------------------------------------------------------


def test_chain_calls_and_rows() -> None:
    """One call of each conditional (on its layer's rows) and of the loss (on all rows); the
    upper layers stay at their samples when a lower unit changes."""
    torch.manual_seed(0)
    batch = 5
    w = torch.randn(D2, D1)
    cond_shapes: list[tuple[int, ...]] = []
    seen: list[list[Tensor]] = []

    def layer2(z1: Tensor) -> lg.Bernoulli:
        cond_shapes.append(tuple(z1.shape))
        return lg.Bernoulli(logits=z1 @ w.T)

    def loss_fn(zs: list[Tensor]) -> Tensor:
        seen.append(zs)
        return zs[0].sum(-1) + zs[1].sum(-1)

    out = LocalExpectation(num_samples=2).chain(
        lg.Bernoulli(logits=torch.randn(batch, D1)), [layer2], loss_fn
    )
    assert cond_shapes == [(1 + D1, 2, batch, D1)]
    assert len(seen) == 1
    z1, z2 = seen[0]
    assert z1.shape == (1 + D1 + D2, 2, batch, D1) and z2.shape == (1 + D1 + D2, 2, batch, D2)
    assert out.loss_evals == 1 + D1 + D2 and out.extras["num_variants"] == (D1, D2)
    assert out.value.shape == out.surrogate.shape == (batch,)
    assert out.per_sample.shape == out.losses.shape == (2, batch)
    assert out.extras["variant_losses"].shape == (D1 + D2, 2, batch)
    torch.testing.assert_close(out.surrogate.detach(), out.value)
    for d in range(D1):  # layer-1 unit d changed, layer 2 at its sample
        assert ((z1[1 + d] != z1[0]).sum(-1) == 1).all() and (
            z1[1 + d, ..., d] != z1[0, ..., d]
        ).all()
        assert torch.equal(z2[1 + d], z2[0])
    for d in range(D2):  # layer-2 unit d changed, layer 1 at its sample
        assert torch.equal(z1[1 + D1 + d], z1[0])
        assert ((z2[1 + D1 + d] != z2[0]).sum(-1) == 1).all()


def test_chain_markov_blanket_weights_by_hand() -> None:
    """One bit per layer: layer 1 gets sum_c w(c) f(c, z2) grad log q1(c) with
    w(c) ∝ q1(c) q2(z2 | c) at the sampled z2; layer 2 (the top) gets
    sum_c grad q2(c | z1) f(z1, c). Both worked out here by hand."""
    torch.manual_seed(0)
    a = torch.tensor([[0.3], [-1.2], [2.0], [0.0]], dtype=F64, requires_grad=True)
    u = torch.tensor(1.5, dtype=F64, requires_grad=True)
    v = torch.tensor(-0.5, dtype=F64, requires_grad=True)
    table = torch.tensor([[1.0, -2.0], [3.0, 0.5]], dtype=F64)  # f(z1, z2)
    seen: list[list[Tensor]] = []

    def loss_fn(zs: list[Tensor]) -> Tensor:
        seen.append(zs)
        return table[zs[0][..., 0].long(), zs[1][..., 0].long()]

    out = LocalExpectation(num_samples=3).chain(
        lg.Bernoulli(logits=a), [lambda z1: lg.Bernoulli(logits=u * z1 + v)], loss_fn
    )
    grad_a, grad_u, grad_v = torch.autograd.grad(out.surrogate.sum(), [a, u, v])
    with torch.no_grad():
        z1, z2 = seen[0][0][0, ..., 0], seen[0][1][0, ..., 0]  # base samples, (K, 4)
        logit1 = a[:, 0]
        c = torch.tensor([0.0, 1.0], dtype=F64).reshape(2, 1, 1)
        log_q1 = torch.where(c > 0, F.logsigmoid(logit1), F.logsigmoid(-logit1))
        logit2 = u * c + v
        log_q2 = torch.where(z2 > 0, F.logsigmoid(logit2), F.logsigmoid(-logit2))
        w = torch.softmax(log_q1 + log_q2, 0)
        f = table[c.long().expand(2, *z2.shape), z2.long().expand(2, *z2.shape)]
        expected_a = (w * f * (c - torch.sigmoid(logit1))).sum(0).mean(0)
        s = torch.sigmoid(u * z1 + v)
        change = table[z1.long(), 1] - table[z1.long(), 0]
        expected_u = (s * (1 - s) * change * z1).mean(0).sum()
        expected_v = (s * (1 - s) * change).mean(0).sum()
    torch.testing.assert_close(grad_a[:, 0], expected_a)
    torch.testing.assert_close(grad_u, expected_u)
    torch.testing.assert_close(grad_v, expected_v)


def test_chain_impossible_children_are_ignored() -> None:
    """A value under which the sampled children are impossible has weight 0: its loss (inf
    here, as a log q of the children would be) does no harm."""
    torch.manual_seed(0)
    phi = torch.randn(6, 3, requires_grad=True)
    # Layer 2 copies layer 1 exactly (the other value has probability 0).
    copy = torch.tensor([-torch.inf, torch.inf])

    def layer2(z1: Tensor) -> lg.Bernoulli:
        return lg.Bernoulli(logits=copy[z1.long()])

    def loss_fn(zs: list[Tensor]) -> Tensor:
        z1, z2 = zs
        mismatch = (z1 != z2).any(-1)
        return torch.where(mismatch, torch.inf, z1.sum(-1) * 2.0)

    out = LocalExpectation(num_samples=2).chain(lg.Bernoulli(logits=phi), [layer2], loss_fn)
    assert torch.isinf(out.extras["variant_losses"]).any()
    out.surrogate.sum().backward()
    assert torch.isfinite(out.surrogate).all() and torch.isfinite(phi.grad).all()


def test_chain_joint_in_chain_module() -> None:
    chain = lg.Chain(lg.LocalExpectation(), num_layers=2)
    assert chain.joint and len(chain.layers) == 1
    calls: list[int] = []

    def loss_fn(zs: list[Tensor]) -> Tensor:
        calls.append(zs[0].shape[0])
        return zs[1].sum(-1)

    out = chain(
        lg.Bernoulli(logits=torch.zeros(4, 3)), [lambda z: lg.Bernoulli(logits=z[..., :2])], loss_fn
    )
    assert calls == [1 + 3 + 2] and out.loss_evals == 1 + 3 + 2
    assert out.extras["layer_loss_evals"] == (6,)


# -- numerics -------------------------------------------------------------------------------------

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_chain_extreme_logits_stay_finite(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    phi1 = (torch.randn(4, 3) * 1e4).to(dtype).requires_grad_(True)
    w = (torch.randn(2, 3) * 1e4).to(dtype).requires_grad_(True)
    w3 = torch.tensor([[1e4, -1e4], [-1e4, 1e4], [0.0, 1e4]], dtype=dtype, requires_grad=True)
    out = LocalExpectation().chain(
        lg.Bernoulli(logits=phi1),
        [
            lambda z1: lg.Categorical(logits=z1 @ w.T),
            lambda z2: lg.Bernoulli(logits=z2 @ w3.T),
        ],
        lambda zs: zs[0].sum(-1) + 100 * zs[1][..., 0] + 1e3 * zs[2][..., 1],
    )
    out.surrogate.float().sum().backward()
    assert torch.isfinite(out.surrogate.float()).all()
    for p in (phi1, w, w3):
        assert p.grad is not None and torch.isfinite(p.grad.float()).all()


def test_chain_impossible_categories_in_a_lower_layer() -> None:
    """Categories of probability 0 in a layer with children: no NaN anywhere."""
    torch.manual_seed(0)
    logits1 = torch.tensor([[0.0, -torch.inf, 1.0], [0.5, -torch.inf, 0.0]], requires_grad=True)
    w = torch.randn(2, 3, requires_grad=True)
    out = LocalExpectation(num_samples=3).chain(
        lg.Categorical(logits=logits1),
        [lambda z1: lg.Bernoulli(logits=z1 @ w.T)],
        lambda zs: 1 / (1 - zs[0][..., 1]) + zs[1].sum(-1),
    )
    out.surrogate.sum().backward()
    assert torch.isfinite(out.surrogate).all()
    assert torch.isfinite(logits1.grad).all() and torch.isfinite(w.grad).all()
    assert torch.isinf(out.extras["variant_losses"]).any()
