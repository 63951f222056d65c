"""Tests of the unordered-set estimator: unbiasedness (against enumeration), the set
probabilities against a hand enumeration of orderings, exactness when the set covers the
support, numerics and bad input."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

import latentgrad as lg
from latentgrad.estimators import UnorderedSet
from latentgrad.estimators.unordered_set import sample_without_replacement, set_weights
from latentgrad.testing import assert_unbiased, check_unbiased, single_layer_gradients
from latentgrad.testing.examples import (
    UNIT_FAMILIES,
    FamilyExample,
    family_examples_by_name,
)
from latentgrad.testing.extremes import FLOAT_DTYPES, check_finite_on_extreme_logits
from latentgrad.testing.stats import chi_square_pvalue

F64 = torch.float64
REPLICATES = 4000

FAMILIES: dict[str, FamilyExample] = family_examples_by_name(UNIT_FAMILIES)


@pytest.mark.stat
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("k", [2, 3])
def test_unbiased(family: str, k: int) -> None:
    torch.manual_seed(0)
    grads, expected = single_layer_gradients(FAMILIES[family], UnorderedSet(k=k), REPLICATES)
    assert torch.isfinite(grads).all()
    assert grads.var(0).sum() > 0  # really sampled
    assert_unbiased(grads, expected, name=f"UnorderedSet(k={k}) on {family}")


@pytest.mark.stat
def test_value_is_unbiased() -> None:
    torch.manual_seed(0)
    logits = torch.tensor([0.3, -0.5, 1.0, 0.1, -1.2], dtype=F64)
    f = torch.tensor([1.0, -2.0, 0.5, 3.0, 2.0], dtype=F64)
    q = lg.Categorical(logits=logits.expand(REPLICATES, 5))
    out = UnorderedSet(k=3)(q, lambda z: (z * f).sum(-1))
    assert_unbiased(out.value, torch.softmax(logits, -1) @ f, name="UnorderedSet's value")


@pytest.mark.stat
def test_unbiasedness_check_has_power() -> None:
    """Weighting the set by q(s) / q(S) (differentiated) instead of P(first = s | S) is biased."""
    torch.manual_seed(0)

    def with_values(dist: lg.Categorical, loss_fn: Callable[[Tensor], Tensor]) -> lg.Estimate:
        seen: list[Tensor] = []

        def record(z: Tensor) -> Tensor:
            seen.append(z)
            return loss_fn(z)

        out = UnorderedSet(k=2)(dist, record)
        weights = torch.softmax(dist.log_prob(seen[0]), 0)  # differentiable: a plausible mistake
        out.surrogate = (weights * loss_fn(seen[0])).sum(0)
        return out

    grads, expected = single_layer_gradients(FAMILIES["categorical"], with_values, REPLICATES)
    assert not check_unbiased(grads, expected).passed


def _orders_by_hand(p: list[float], chosen: list[int]) -> tuple[list[float], list[list[float]]]:
    """P(first = s | S) and P(second = s' | first = s, S) by explicit enumeration of orderings."""
    joint = {}
    for order in itertools.permutations(chosen):
        prob, used = 1.0, 0.0
        for s in order:
            prob *= p[s] / (1.0 - used)
            used += p[s]
        joint[order] = prob
    total = sum(joint.values())
    first = [sum(v for o, v in joint.items() if o[0] == s) / total for s in chosen]
    second = [
        [
            sum(v for o, v in joint.items() if o[0] == s and o[1] == t)
            / sum(v for o, v in joint.items() if o[0] == s)
            for t in chosen
            if t != s
        ]
        for s in chosen
    ]
    return first, second


@pytest.mark.parametrize("chosen", [[0, 3], [4, 1, 2], [0, 1, 2, 3], [5, 0, 3, 1, 4]])
def test_set_weights_match_a_hand_enumeration_of_orderings(chosen: list[int]) -> None:
    p = torch.softmax(torch.tensor([0.3, -0.5, 1.0, 0.1, -1.2, 0.7], dtype=F64), 0)
    f = torch.tensor([1.0, -2.0, 0.5, 3.0, 2.0, -1.0], dtype=F64)
    index = torch.tensor(chosen)
    outside = torch.ones(6, dtype=torch.bool)
    outside[index] = False
    log_outside = p[outside].sum().log() if outside.any() else torch.tensor(-math.inf, dtype=F64)
    first, baseline = set_weights(p[index].log(), log_outside, f[index])
    by_hand, second = _orders_by_hand(p.tolist(), chosen)
    torch.testing.assert_close(first, torch.tensor(by_hand, dtype=F64), atol=1e-12, rtol=0)
    for i, s in enumerate(chosen):
        others = [t for t in chosen if t != s]
        rest = sum(w * f[t].item() for w, t in zip(second[i], others, strict=True))
        expected = p[s].item() * f[s].item() + (1 - p[s].item()) * rest
        assert baseline[i].item() == pytest.approx(expected, abs=1e-12)


SMALL = sorted(name for name, f in FAMILIES.items() if f.dist().support_size() <= 6)


def test_small_supports_are_tested() -> None:
    assert {"categorical", "categorical-neg-inf"} <= set(SMALL)


@pytest.mark.parametrize("family", SMALL)
def test_exact_when_k_covers_the_support(family: str) -> None:
    torch.manual_seed(0)
    example = FAMILIES[family]
    logits = example.params.clone().requires_grad_(True)
    t = torch.tensor(0.7, dtype=F64, requires_grad=True)
    dist = example.make(logits)
    n_event = len(dist.event_shape)

    def loss(z: Tensor) -> Tensor:
        flat = z.flatten(z.dim() - n_event)
        c = torch.linspace(-1.0, 2.0, flat.shape[-1], dtype=F64)
        return ((flat * c).sum(-1) - t) ** 2 + t * flat.sum(-1)

    size = dist.support_size()
    reference = lg.Marginalize()(dist, loss)
    ref_grad = torch.autograd.grad(reference.surrogate.sum(), [logits, t])
    for _ in range(3):
        out = UnorderedSet(k=6)(example.make(logits), loss)
        assert out.loss_evals == size
        torch.testing.assert_close(out.value, reference.value, atol=1e-10, rtol=0)
        grad = torch.autograd.grad(out.surrogate.sum(), [logits, t])
        for g, r in zip(grad, ref_grad, strict=True):
            torch.testing.assert_close(g, r, atol=1e-10, rtol=0)


def test_padding_of_a_ragged_support_is_not_drawn() -> None:
    """A batch of KSubsets whose rows have supports of different sizes pads the smaller one
    with zero-probability copies of a value; with k = the 4 subsets of nonzero probability of
    that row its estimate must be exact (drawing a copy as a value of its own was a bias,
    found by the registry's contract test)."""
    torch.manual_seed(0)
    full = [0.5, -0.3, 1.0, 0.0, -1.0]  # C(5, 3) = 10 subsets
    absent = [0.2, -torch.inf, -0.6, 0.9, 0.1]  # C(4, 3) = 4, padded to 10
    scores = torch.tensor([full, absent, absent], dtype=F64, requires_grad=True)
    c = torch.tensor([0.5, -1.0, 2.0, 0.3, -0.7], dtype=F64)

    def loss(z: Tensor) -> Tensor:
        return torch.sin((z * c).sum(-1)) + (z * c).sum(-1) ** 2

    assert lg.KSubset(scores, k=3).support_probs()[1][:, 1:].eq(0).sum() == 2 * 6
    reference = lg.Marginalize()(lg.KSubset(scores, k=3), loss)
    (ref_grad,) = torch.autograd.grad(reference.surrogate[1:].sum(), scores)
    for _ in range(5):
        out = UnorderedSet(k=4)(lg.KSubset(scores, k=3), loss)
        assert out.extras["first_probs"][:, 1:].gt(0).all()
        torch.testing.assert_close(out.value[1:], reference.value[1:], atol=1e-10, rtol=0)
        (grad,) = torch.autograd.grad(out.surrogate[1:].sum(), scores)
        torch.testing.assert_close(grad, ref_grad, atol=1e-10, rtol=0)


def test_exact_when_the_rest_has_no_mass_and_nan_there_is_ignored() -> None:
    torch.manual_seed(0)
    logits = torch.tensor([[0.3, -torch.inf, 1.0, -torch.inf, -torch.inf]] * 50, requires_grad=True)
    values = torch.tensor([1.0, torch.nan, -2.0, torch.inf, torch.nan])

    def loss(z: Tensor) -> Tensor:
        return torch.where(z > 0, values, torch.zeros_like(z)).sum(-1)

    out = UnorderedSet(k=4)(lg.Categorical(logits=logits), loss)
    assert out.loss_evals == 4 and not torch.isfinite(out.losses).all()
    p = torch.softmax(torch.tensor([0.3, 1.0]), -1)
    torch.testing.assert_close(out.value, torch.full((50,), float(p @ torch.tensor([1.0, -2.0]))))
    (grad,) = torch.autograd.grad(out.surrogate.sum(), logits)
    exact = p[0] * p[1] * (1.0 - -2.0)  # d/dlogit_0 of p0 f0 + p1 f1
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad[:, 0], torch.full((50,), float(exact)))
    assert torch.equal(grad[:, [1, 3, 4]], torch.zeros(50, 3))


def test_estimate_contract() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 6, requires_grad=True)
    theta = torch.tensor(0.3, requires_grad=True)
    calls: list[Tensor] = []

    def loss_fn(z: Tensor) -> Tensor:
        calls.append(z)
        return (z * torch.arange(6.0)).sum(-1) * theta

    out = UnorderedSet(k=3)(lg.Categorical(logits=logits), loss_fn)
    assert [tuple(z.shape) for z in calls] == [(3, 5, 6)]
    z = calls[0]
    assert torch.equal(z.sum(0).amax(-1), torch.ones(5))  # without replacement: distinct values
    assert out.loss_evals == 3 and out.losses.shape == (3, 5)
    assert out.value.shape == out.surrogate.shape == (5,) and out.per_sample.shape == (1, 5)
    torch.testing.assert_close(out.extras["first_probs"].sum(0), torch.ones(5))
    torch.testing.assert_close(out.surrogate.detach(), out.value)
    torch.testing.assert_close(out.value, (out.extras["first_probs"] * out.losses).sum(0))
    out.surrogate.sum().backward()
    assert logits.grad is not None and theta.grad is not None


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("k", [2, 4])
def test_extreme_logits_stay_finite(dtype: torch.dtype, k: int) -> None:
    torch.manual_seed(0)
    check_finite_on_extreme_logits(lambda: UnorderedSet(k=k), dtype)


def test_bad_arguments() -> None:
    for bad in (1, 7):
        with pytest.raises(ValueError, match="k"):
            UnorderedSet(k=bad)
    with pytest.raises(TypeError, match="k"):
        UnorderedSet(k=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_support"):
        UnorderedSet(max_support=0)
    est = UnorderedSet(k=2)
    q = lg.Categorical(logits=torch.zeros(2, 3))
    with pytest.raises(TypeError, match="dist"):
        est(torch.distributions.Categorical(logits=torch.zeros(2, 3)), lambda z: z)
    with pytest.raises(TypeError, match="loss_fn"):
        est(q, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="loss_fn"):
        est(q, lambda z: z.sum((-1, -2)))
    with pytest.raises(ValueError, match="max_support"):  # not factorized: no beam search
        UnorderedSet(k=2, max_support=4)(lg.KSubset(torch.zeros(2, 5), k=2), lambda z: z.sum(-1))


# -- factorized latents too large to enumerate: stochastic beam search ---------------------------


def _set_probabilities(p: list[float], k: int) -> dict[frozenset[int], float]:
    """P(S) of every unordered k-set drawn without replacement, by enumerating orderings."""
    sets: dict[frozenset[int], float] = {}
    for order in itertools.permutations(range(len(p)), k):
        prob, used = 1.0, 0.0
        for s in order:
            prob *= p[s] / (1.0 - used)
            used += p[s]
        key = frozenset(order)
        sets[key] = sets.get(key, 0.0) + prob
    return sets


def _support_index(z: Tensor, values: Tensor) -> Tensor:
    """The row of ``values`` (``(S,) + E``) equal to each ``z`` (``(...,) + E``)."""
    n_event = values.dim() - 1
    same = (z.unsqueeze(-1 - n_event) == values).flatten(z.dim() - n_event + 1).all(-1)
    assert torch.equal(same.sum(-1), torch.ones_like(same.sum(-1)))  # exactly one match
    return same.long().argmax(-1)


@pytest.mark.stat
@pytest.mark.parametrize(
    "make",
    [
        lambda x: lg.Categorical(logits=x.reshape((*x.shape[:-1], 2, 3))).to_event(1),
        lambda x: lg.Bernoulli(logits=x[..., :3]),
    ],
    ids=["independent-categorical", "bernoulli"],
)
@pytest.mark.parametrize("k", [2, 3])
def test_beam_search_draws_sets_with_the_gumbel_top_k_law(make: Callable, k: int) -> None:
    """The frequency of every unordered set (9 or 8 values: 36 / 84 / 28 / 56 sets) matches
    P(S) from the orderings of the enumerated joint support."""
    torch.manual_seed(0)
    n = 20000
    x = torch.tensor([0.8, -0.4, 0.1, 1.2, -1.0, 0.3], dtype=F64)
    values, probs = make(x).support_probs()
    table = _set_probabilities(probs.tolist(), k)
    z, log_q = sample_without_replacement(make(x.expand(n, 6)), k)
    assert z.shape[:2] == (k, n) and log_q.shape == (k, n)
    torch.testing.assert_close(log_q, make(x.expand(n, 6)).log_prob(z), atol=1e-12, rtol=0)
    index = _support_index(z, values)  # (k, n)
    code = (torch.zeros(n, len(probs), dtype=torch.bool)).scatter_(1, index.T, True)
    assert code.sum(1).eq(k).all()  # k distinct values
    keys = sorted(table, key=sorted)
    members = torch.tensor([[i in s for i in range(len(probs))] for s in keys])
    counts = (code.unsqueeze(1) == members.unsqueeze(0)).all(-1).sum(0)  # (sets,)
    expected = torch.tensor([table[s] for s in keys], dtype=F64)
    assert counts.sum() == n
    # Pearson's chi-square (rare sets pooled); 4 such tests at 1e-5 each.
    assert chi_square_pvalue(counts, expected) > 1e-5


@pytest.mark.stat
def test_set_law_check_has_power(monkeypatch: pytest.MonkeyPatch) -> None:
    """Perturbing each prefix afresh (not conditioned on its parent's value) is a plausible
    mistake that draws distinct but wrongly distributed sets: the chi-square test sees it."""
    from latentgrad.estimators import unordered_set

    monkeypatch.setattr(
        unordered_set,
        "_conditioned_gumbel",
        lambda log_q, maximum, noise: log_q + noise,
    )
    with pytest.raises(AssertionError):
        test_beam_search_draws_sets_with_the_gumbel_top_k_law(
            lambda x: lg.Categorical(logits=x.reshape((*x.shape[:-1], 2, 3))).to_event(1), 2
        )


@pytest.mark.stat
@pytest.mark.parametrize("family", ["bernoulli", "independent-categorical"])
def test_unbiased_with_beam_search(family: str) -> None:
    """``max_support=1`` sends every factorized family through the beam search."""
    torch.manual_seed(0)
    est = UnorderedSet(k=3, max_support=1)
    grads, expected = single_layer_gradients(FAMILIES[family], est, REPLICATES)
    assert torch.isfinite(grads).all() and grads.var(0).sum() > 0
    assert_unbiased(grads, expected, name=f"UnorderedSet(k=3) by beam search on {family}")


def test_beam_search_is_exact_when_k_covers_the_nonzero_support() -> None:
    """Two of four joint values have probability 0: with k = 4 the set holds the other two
    first, the zero-probability fillers get no weight and the estimate is exact."""
    torch.manual_seed(0)
    logits = torch.tensor([[[0.3, -0.2], [0.0, -torch.inf]]] * 5, dtype=F64, requires_grad=True)
    c = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=F64)

    def loss(z: Tensor) -> Tensor:
        return torch.sin((z * c).sum((-1, -2))) + 2.0

    reference = lg.Marginalize()(lg.Categorical(logits=logits).to_event(1), loss)
    (ref_grad,) = torch.autograd.grad(reference.surrogate.sum(), logits)
    for _ in range(3):
        q = lg.Categorical(logits=logits).to_event(1)
        out = UnorderedSet(k=4, max_support=1)(q, loss)
        assert out.loss_evals == 4
        assert out.extras["first_probs"][2:].eq(0).all()  # drawn last, weight 0
        torch.testing.assert_close(out.value, reference.value, atol=1e-12, rtol=0)
        (grad,) = torch.autograd.grad(out.surrogate.sum(), logits)
        torch.testing.assert_close(grad, ref_grad, atol=1e-12, rtol=0)


def test_vae_sized_latents_train() -> None:
    """20 categoricals of 10 classes (10^20 values) and 200 bits: no enumeration, k distinct
    values, probabilities of the set that sum to 1, finite gradients."""
    torch.manual_seed(0)
    logits = torch.randn(8, 20, 10, requires_grad=True)
    q = lg.Categorical(logits=logits).to_event(1)
    out = UnorderedSet(k=4)(q, lambda z: (z * torch.linspace(-1, 1, 10)).sum((-1, -2)) ** 2)
    assert out.loss_evals == 4 and out.losses.shape == (4, 8)
    torch.testing.assert_close(out.extras["first_probs"].sum(0), torch.ones(8))
    out.surrogate.sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    bits = torch.randn(8, 200, requires_grad=True)
    out = UnorderedSet(k=4)(lg.Bernoulli(logits=bits), lambda z: z.sum(-1))
    out.surrogate.sum().backward()
    assert bits.grad is not None and torch.isfinite(bits.grad).all()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_beam_search_extreme_logits_stay_finite(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    check_finite_on_extreme_logits(lambda: UnorderedSet(k=3, max_support=1), dtype)
