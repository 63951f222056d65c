"""Declared capabilities: every family's flags against what its hooks really do, ``require``'s
message, the registry of families, and ``Independent`` forwarding."""

import gc
from collections.abc import Callable

import pytest
import torch

import latentgrad as lg
from latentgrad.distributions import CAPABILITIES, families_with, require
from latentgrad.mappings.oracles import BudgetBits

F64 = torch.float64


def _scores(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=F64)


# A small instance of every family (batch shape (2,)).
FAMILIES: dict[str, Callable[[], lg.DiscreteDistribution]] = {
    "Categorical": lambda: lg.Categorical(logits=_scores(2, 3)),
    "SparsemaxCategorical": lambda: lg.SparsemaxCategorical(_scores(2, 4)),
    "Bernoulli": lambda: lg.Bernoulli(logits=_scores(2, 3)),
    "KSubset": lambda: lg.KSubset(_scores(2, 4), k=2),
    "PlackettLuce": lambda: lg.PlackettLuce(_scores(2, 3)),
    "SpanningTree": lambda: lg.SpanningTree(_scores(2, 4, 4)),
    "Arborescence": lambda: lg.Arborescence(_scores(2, 3, 3)),
    "BinaryTree": lambda: lg.BinaryTree(_scores(2, 4)),
    "Matching": lambda: lg.Matching(_scores(2, 3, 3)),
    "SparseMAP": lambda: lg.SparseMAP(_scores(2, 4), BudgetBits(4, budget=2)),
    "TopKSparsemax": lambda: lg.TopKSparsemax(_scores(2, 3), k=4),
}


def _check_noise(q: lg.DiscreteDistribution) -> None:
    z, noise = q.sample_with_noise((2,))
    assert z.shape == (2, *q.batch_shape, *q.event_shape)
    assert noise.shape == (2, *q.batch_shape, *q.noise_event_shape)
    torch.testing.assert_close(q.from_noise(noise), z)
    assert q.sample_noise((3,)).shape[0] == 3


def _check_relaxation(q: lg.DiscreteDistribution) -> None:
    y = q.relaxed_from_noise(q.sample_noise((2,)), 0.5)
    assert y.shape == (2, *q.batch_shape, *q.event_shape) and bool(torch.isfinite(y).all())
    assert q.rsample_relaxed(0.5, (3,)).shape[0] == 3


def _check_local_variants(q: lg.DiscreteDistribution) -> None:
    z = q.sample((2,))
    variants = q.local_variants(z)
    assert variants.values.shape[1:] == z.shape
    assert variants.probs.shape == variants.values.shape[:1] + z.shape[:2]
    assert variants.base_probs.shape == z.shape[:2]
    assert isinstance(q.unit_shape, torch.Size)


def _check_trace(q: lg.DiscreteDistribution) -> None:
    z, noise, trace = q.sample_with_trace((2,))  # type: ignore[attr-defined]
    assert z.shape == (2, *q.batch_shape, *q.event_shape)
    assert q.trace_log_prob(trace).shape == (2, *q.batch_shape)  # type: ignore[attr-defined]
    assert q.noise_log_prob(noise).shape == (2, *q.batch_shape)  # type: ignore[attr-defined]


def _check_conditional_noise(q: lg.DiscreteDistribution) -> None:
    _, noise, trace = q.sample_with_trace((2,))  # type: ignore[attr-defined]
    assert q.conditional_noise(trace).shape == noise.shape  # type: ignore[attr-defined]
    theta = q.item_scores()  # type: ignore[attr-defined]
    assert theta.shape == (*q.batch_shape, q.num_items)  # type: ignore[attr-defined]
    leaf = theta.detach().expand(2, *theta.shape).clone().requires_grad_(True)
    logp = q.trace_log_prob(trace, item_scores=leaf)  # type: ignore[attr-defined]
    torch.testing.assert_close(logp, q.trace_log_prob(trace))  # type: ignore[attr-defined]
    (grad,) = torch.autograd.grad(logp.sum(), leaf)
    assert grad.shape == leaf.shape


def _check_mean_field(q: lg.DiscreteDistribution) -> None:
    assert q.mean.shape == q.batch_shape + q.event_shape


def _check_logits(q: lg.DiscreteDistribution) -> None:
    logits = q.logits  # type: ignore[attr-defined]
    other = q.with_logits(2 * logits)  # type: ignore[attr-defined]
    assert type(other) is type(q) and other.batch_shape == q.batch_shape
    assert other.mean.shape == q.mean.shape


def _check_enumerate_support(q: lg.DiscreteDistribution) -> None:
    assert q.can_enumerate_support() and q.support_size() <= q.max_support_size
    values, probs = q.support_probs()
    assert values.shape[1:] == q.batch_shape + q.event_shape
    assert 1 <= values.shape[0] <= q.support_size()
    torch.testing.assert_close(probs.sum(0), torch.ones(q.batch_shape, dtype=probs.dtype))
    assert q.enumerate_support().shape[1:] == values.shape[1:]


CHECKS: dict[str, Callable[[lg.DiscreteDistribution], None]] = {
    "has_noise": _check_noise,
    "has_relaxation": _check_relaxation,
    "has_local_variants": _check_local_variants,
    "has_trace": _check_trace,
    "has_conditional_noise": _check_conditional_noise,
    "has_mean_field": _check_mean_field,
    "has_logits": _check_logits,
    "has_enumerate_support": _check_enumerate_support,
}


def test_every_capability_is_checked() -> None:
    assert set(CHECKS) == set(CAPABILITIES)


@pytest.mark.parametrize("capability", CAPABILITIES)
@pytest.mark.parametrize("family", FAMILIES)
def test_flag_matches_what_the_family_does(family: str, capability: str) -> None:
    q = FAMILIES[family]()
    declared = getattr(type(q), capability)
    assert isinstance(declared, bool) and getattr(q, capability) is declared
    if declared:
        CHECKS[capability](q)
        require(q, capability, by="test")  # type: ignore[arg-type]
    else:
        with pytest.raises(TypeError, match=f"test needs dist.{capability}: {family} has no"):
            require(q, capability, by="test")  # type: ignore[arg-type]


def test_expected_flags_of_the_core_families() -> None:
    assert families_with("has_relaxation") == ["Bernoulli", "Categorical", "SparsemaxCategorical"]
    assert families_with("has_logits") == ["Bernoulli", "Categorical"]
    assert set(families_with("has_trace")) == {
        "Arborescence",
        "BinaryTree",
        "KSubset",
        "Matching",
        "PlackettLuce",
        "SpanningTree",
    }
    assert "StructuredDistribution" not in families_with("has_trace")  # a base, not a family
    assert "SparseMAP" not in families_with("has_noise")


def test_require_message_names_capability_estimator_hooks_and_families() -> None:
    q = lg.KSubset(_scores(2, 4), k=2)
    with pytest.raises(TypeError) as info:
        require(q, "has_noise", "has_relaxation", by="GumbelSoftmax")
    message = str(info.value)
    assert message.startswith("GumbelSoftmax needs dist.has_relaxation: KSubset has no ")
    assert "(dist.relaxed_from_noise)" in message
    assert message.endswith("families that have it: Bernoulli, Categorical, SparsemaxCategorical")
    with pytest.raises(TypeError, match=r"needs first\.has_local_variants.*\(first\.local_vari"):
        require(q, "has_local_variants", by="LocalReparam.chain", name="first")


def test_require_rejects_other_objects_and_unknown_capabilities() -> None:
    q = lg.Categorical(logits=_scores(2, 3))
    require(q, by="nothing needed")
    with pytest.raises(TypeError, match="MyEstimator needs dist to be a latentgrad distribution"):
        require(torch.distributions.Categorical(logits=_scores(2, 3)), by="MyEstimator")
    with pytest.raises(ValueError, match="unknown capability 'has_wings'"):
        require(q, "has_wings", by="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown capability"):
        families_with("rsample")  # type: ignore[arg-type]


def test_families_are_computed_from_the_registered_classes() -> None:
    class MyTraced(lg.KSubset):
        pass

    class _Private(lg.KSubset):
        pass

    names = families_with("has_trace")
    assert "MyTraced" in names and "_Private" not in names
    assert "MyTraced" not in families_with("has_relaxation")
    del MyTraced, _Private
    gc.collect()
    assert "MyTraced" not in families_with("has_trace")


@pytest.mark.parametrize("family", ["Categorical", "Bernoulli", "KSubset", "SparsemaxCategorical"])
def test_independent_forwards_every_flag(family: str) -> None:
    base = FAMILIES[family]()
    q = base.to_event(1)
    for capability in CAPABILITIES:
        expected = False if capability == "has_conditional_noise" else getattr(base, capability)
        assert getattr(q, capability) is expected, capability
    assert q.to_event(0).has_noise is base.has_noise
    assert q.can_enumerate_support() == (base.support_size() ** 2 <= q.max_support_size)


def test_independent_hooks_behind_the_flags() -> None:
    q = lg.KSubset(_scores(2, 4), k=2).to_event(1)
    z, _, trace = q.sample_with_trace((3,))
    assert z.shape == (3, 2, 4) and q.trace_log_prob(trace).shape == (3,)
    with pytest.raises(TypeError, match=r"needs dist\.has_conditional_noise: Independent\(KSubset"):
        require(q, "has_conditional_noise", by="RELAX")
    cat = lg.Categorical(logits=_scores(2, 3)).to_event(1)
    with pytest.raises(TypeError, match=r"Categorical does not provide sample_with_trace"):
        cat.sample_with_trace((1,))
    scaled = cat.with_logits(2 * cat.logits)
    assert isinstance(scaled, lg.Independent) and scaled.event_shape == cat.event_shape
    torch.testing.assert_close(scaled.mean, torch.softmax(2 * cat.logits, -1))


def test_support_size_bounds() -> None:
    big = lg.Bernoulli(logits=torch.zeros(1, 21))
    assert big.has_enumerate_support and not big.can_enumerate_support()
    assert lg.Bernoulli.max_support_size == 2**20
    assert lg.KSubset(torch.zeros(1, 30), k=10).can_enumerate_support() is False
    assert lg.Arborescence(torch.zeros(1, 6, 6)).can_enumerate_support()
    assert not lg.Arborescence(torch.zeros(1, 7, 7)).can_enumerate_support()
    # The product of the units' supports of an Independent is bounded too.
    assert not lg.Categorical(logits=torch.zeros(1, 30, 3)).to_event(1).can_enumerate_support()


def test_structured_families_declare_real_scores() -> None:
    for q in (lg.KSubset(_scores(2, 4), k=2), lg.SpanningTree(_scores(2, 4, 4))):
        (constraint,) = q.arg_constraints.values()
        assert bool(constraint.check(q.scores).all())
        assert constraint.event_dim == q.scores.dim() - len(q.batch_shape)
    absent = torch.tensor([[0.0, -torch.inf, 1.0]])
    assert bool(lg.KSubset(absent, k=1).arg_constraints["scores"].check(absent).all())


def test_batch_row_selects_the_leading_batch_element() -> None:
    logits = _scores(4, 2, 3)
    row = lg.Categorical(logits=logits).batch_row(1)
    assert row.batch_shape == (2,) and torch.equal(row.logits, logits[1])
    units = lg.Categorical(logits=logits).to_event(1).batch_row(2)
    assert (
        isinstance(units, lg.Independent)
        and units.batch_shape == ()
        and units.event_shape == (2, 3)
    )
    with pytest.raises(ValueError, match="no batch dim"):
        lg.Bernoulli(logits=torch.zeros(3)).batch_row(0)


def test_ksubset_bounds_what_its_enumeration_walks() -> None:
    # support_probs walks the ordered top-k traces (16!/8! ~ 5e8), not the C(16, 8) = 12870 sets.
    big = lg.KSubset(torch.zeros(16), k=8)
    assert big.support_size() == 12870 and not big.can_enumerate_support()
    with pytest.raises(ValueError, match="support"):
        lg.Marginalize()(big, lambda z: z.sum(-1))
    assert lg.KSubset(torch.zeros(16), k=4).can_enumerate_support()
