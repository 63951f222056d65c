"""Support validation of ``log_prob`` (torch semantics), empty batches, meta tensors, NaN policy."""

import pytest
import torch
from torch.distributions import Distribution

import latentgrad as lg
from latentgrad._validation import own_samples
from latentgrad.mappings import oracles
from latentgrad.testing.examples import (
    ESTIMATOR_EXAMPLES,
    FAMILY_EXAMPLES,
    FamilyExample,
    compatible,
    family_examples,
)

F64 = torch.float64
BASES = family_examples(one_per_family=True)
EXTRA = [
    FamilyExample(
        "relaxed-categorical",
        "relaxed-categorical",
        torch.tensor([[0.5, -1.0, 0.2], [0.1, 0.4, -0.6]], dtype=F64),
        lambda p: lg.RelaxedCategorical(p, 0.5),
        infinite="none",
    ),
    FamilyExample(
        "relaxed-bernoulli",
        "relaxed-bernoulli",
        torch.tensor([[0.5, -1.0, 0.2], [0.1, 0.4, -0.6]], dtype=F64),
        lambda p: lg.RelaxedBernoulli(p, 0.5),
        infinite="none",
    ),
    FamilyExample(
        "sparsemap",
        "sparsemap",
        torch.tensor([[0.9, 0.6, -0.2, 0.1], [0.3, 0.2, 0.1, 0.0]], dtype=F64),
        lambda p: lg.SparseMAP(p, oracles.BudgetBits(4, 2)),
        infinite="none",
    ),
]
ALL = BASES + EXTRA


def _ids(examples: list[FamilyExample]) -> list[str]:
    return [f.name for f in examples]


def _loss(dist: Distribution):
    n = len(dist.event_shape)
    return lambda z: z.to(F64).flatten(z.dim() - n).sum(-1)


# -- point 3: values outside the support ------------------------------------------------------


def test_the_issue_cases_raise_naming_value_and_support() -> None:
    cat = lg.Categorical(logits=torch.tensor([0.0, 1, 2]), validate_args=True)
    for value in (torch.tensor([0.5, 0.5, 0]), torch.zeros(3)):
        with pytest.raises(ValueError, match=r"value must be in the support of Categorical"):
            cat.log_prob(value)
    with pytest.raises(ValueError, match=r"value .*KSubset.*exactly k = 2 ones"):
        lg.KSubset(torch.zeros(4), k=2).log_prob(torch.tensor([1.0, 1, 1, 0]))
    pl = lg.PlackettLuce(torch.zeros(3))
    for value in (torch.tensor([0, 0, 0]), torch.tensor([0, 1, 5])):
        with pytest.raises(ValueError, match=r"value .*PlackettLuce.*permutations of 0, \.\.\., 2"):
            pl.log_prob(value)


@pytest.mark.parametrize("example", ALL, ids=_ids(ALL))
def test_own_samples_pass_validation(example: FamilyExample) -> None:
    q = example.dist()
    z = q.rsample((3,)) if isinstance(q, (lg.RelaxedCategorical, lg.RelaxedBernoulli)) else None
    z = q.sample((3,)) if z is None else z
    assert q.log_prob(z).shape == (3, *q.batch_shape)
    assert q.log_prob(z.clone()).shape == (3, *q.batch_shape)  # not the cached sample either


def test_validate_args_follows_torch_default() -> None:
    value = torch.tensor([1.0, 1, 0])
    logits = torch.zeros(3)
    assert lg.Categorical(logits=logits)._validate_args
    assert not lg.Categorical(logits=logits, validate_args=False)._validate_args
    # Off: the result is meaningless but no error (torch semantics).
    lg.Categorical(logits=logits, validate_args=False).log_prob(value)
    before = Distribution._validate_args
    try:
        Distribution.set_default_validate_args(False)
        lg.Categorical(logits=logits).log_prob(value)
        lg.KSubset(logits, k=1).log_prob(value)
        with pytest.raises(ValueError, match="support"):
            lg.Categorical(logits=logits, validate_args=True).log_prob(value)
    finally:
        Distribution.set_default_validate_args(before)
    with pytest.raises(TypeError, match="validate_args"):
        lg.Categorical(logits=logits, validate_args="yes")  # type: ignore[arg-type]


def test_validation_survives_expand_and_to_event() -> None:
    q = lg.Categorical(logits=torch.zeros(2, 3)).expand((4, 2))
    with pytest.raises(ValueError, match="support"):
        q.log_prob(torch.full((4, 2, 3), 0.5))
    ind = lg.Categorical(logits=torch.zeros(2, 3)).to_event(1)
    with pytest.raises(ValueError, match="support"):
        ind.log_prob(torch.full((2, 3), 0.5))
    off = lg.Categorical(logits=torch.zeros(2, 3), validate_args=False).expand((4, 2))
    off.log_prob(torch.full((4, 2, 3), 0.5))


def test_own_samples_skips_the_check_only_inside_the_block() -> None:
    q = lg.KSubset(torch.zeros(4), k=2)
    bad = torch.tensor([1.0, 1, 1, 0])
    with own_samples():
        q.log_prob(bad)  # trusted: not checked
    with pytest.raises(ValueError, match="support"):
        q.log_prob(bad)


def test_zero_probability_values_are_in_the_support() -> None:
    # A subset with an absent item has probability 0: -inf, not an error.
    q = lg.KSubset(torch.tensor([0.0, 0.0, -torch.inf]), k=2)
    assert torch.isneginf(q.log_prob(torch.tensor([1.0, 0, 1])))
    c = lg.Categorical(logits=torch.tensor([0.0, -torch.inf]))
    assert torch.isneginf(c.log_prob(torch.tensor([0.0, 1.0])))


def test_sparsemap_support_is_the_oracles_structures() -> None:
    q = lg.SparseMAP(torch.tensor([0.9, 0.6, -0.2, 0.1], dtype=F64), oracles.BudgetBits(4, 2))
    assert torch.isneginf(q.log_prob(torch.tensor([0.0, 0, 1, 1], dtype=F64)))  # weight 0
    with pytest.raises(ValueError, match="structures of BudgetBits"):
        q.log_prob(torch.tensor([1.0, 1, 1, 0], dtype=F64))
    perm = lg.SparseMAP(torch.randn(9, dtype=F64), oracles.PermutationOracle(3))
    perm.log_prob(torch.eye(3, dtype=F64))
    with pytest.raises(ValueError, match="structures of PermutationOracle"):
        perm.log_prob(torch.ones(3, 3, dtype=F64))


# -- point 4: empty batches ---------------------------------------------------------------------


@pytest.mark.parametrize("example", ALL, ids=_ids(ALL))
def test_empty_batch_gives_empty_results(example: FamilyExample) -> None:
    q = example.make(example.params[:0])
    assert q.batch_shape == (0,)
    event = tuple(q.event_shape)
    relaxed = isinstance(q, (lg.RelaxedCategorical, lg.RelaxedBernoulli))
    z = q.rsample((3,)) if relaxed else q.sample((3,))
    assert z.shape == (3, 0, *event)
    assert q.log_prob(z).shape == (3, 0)
    if relaxed:
        return
    assert q.entropy().shape == (0,)
    values, probs = q.support_probs()
    assert values.shape[1:] == (0, *event) and probs.shape == (values.shape[0], 0)
    out = lg.Marginalize()(q, _loss(q))
    assert out.value.shape == (0,) and out.surrogate.shape == (0,)


@pytest.mark.parametrize("estimator", ESTIMATOR_EXAMPLES, ids=lambda e: e.name)
def test_every_estimator_accepts_an_empty_batch(estimator) -> None:
    for example in BASES:
        full = example.dist()
        if not compatible(estimator, full):
            continue
        q = example.make(example.params[:0])
        est = estimator.make(full)
        out = est(q, _loss(q))
        assert out.value.shape == (0,), (estimator.name, example.name)
        assert out.surrogate.shape == (0,) and out.per_sample.shape[1:] == (0,)
        # No running statistic learns NaN from a batch with nothing in it.
        for name, state in getattr(est, "estimator", est).state_dict().items():
            assert torch.isfinite(state.float()).all(), (estimator.name, name)


def test_the_issue_empty_batch_cases() -> None:
    q = lg.KSubset(torch.randn(0, 4), 2)
    assert q.entropy().shape == (0,)
    assert lg.Marginalize()(q, lambda z: z.sum(-1)).value.shape == (0,)


# -- point 5: meta tensors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "example", [*FAMILY_EXAMPLES, *EXTRA], ids=_ids([*FAMILY_EXAMPLES, *EXTRA])
)
def test_meta_construction_and_shapes(example: FamilyExample) -> None:
    q = example.make(example.params.to("meta"))
    full = example.dist()
    assert q.batch_shape == full.batch_shape and q.event_shape == full.event_shape
    assert q.expand((3, *q.batch_shape)).batch_shape == (3, *full.batch_shape)


@pytest.mark.parametrize(
    "name", ["categorical", "bernoulli", "ksubset", "plackett-luce", "spanning-tree",
             "binary-tree", "matching", "sparsemax-categorical"]
)  # fmt: skip
def test_meta_sampling_gives_shapes(name: str) -> None:
    (example,) = family_examples(names=[name])
    q = example.make(example.params.to("meta"))
    z = q.sample((2,))
    assert z.device.type == "meta" and z.shape == (2, *q.batch_shape, *q.event_shape)
    assert q.log_prob(z).shape == (2, *q.batch_shape)


def test_meta_mappings_and_estimators_give_shapes() -> None:
    x = torch.zeros(2, 5, device="meta")
    assert lg.sparsemax(x).shape == (2, 5) and lg.entmax15(x, dim=0).shape == (2, 5)
    target = torch.zeros(2, dtype=torch.long, device="meta")
    assert lg.sparsemax_loss(x, target).shape == (2,)
    q = lg.Categorical(logits=torch.zeros(4, 3, device="meta"))
    out = lg.ScoreFunction(2, baseline=lg.LeaveOneOut())(q, lambda z: z.sum(-1))
    assert out.value.shape == (4,) and out.value.device.type == "meta"
    assert lg.GumbelSoftmax(tau=0.5)(q, lambda z: z.sum(-1)).surrogate.shape == (4,)
    assert lg.Categorical(probs=torch.ones(2, 3, device="meta")).batch_shape == (2,)


# -- point 6: one NaN policy --------------------------------------------------------------------


@pytest.mark.parametrize("example", ALL, ids=_ids(ALL))
def test_nan_anywhere_in_the_scores_raises(example: FamilyExample) -> None:
    for index in range(example.params.numel()):
        params = example.params.clone()
        params.view(-1)[index] = float("nan")
        with pytest.raises(ValueError, match="NaN"):
            example.make(params)
