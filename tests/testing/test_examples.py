"""The family and estimator contracts, driven by the registry of examples.

Every family example: shapes of samples and log-probs, ``expand``, dtypes, no graph under
``no_grad``. Every compatible (estimator, family) pair: the Estimate's shapes and typed fields,
finite gradients reaching the parameters; exact estimators equal the
brute-force expectation and gradient; (no_grad: tests/estimators/test_no_grad.py); unbiased estimators pass a z-test against the brute-force
gradient (of E[loss], or of the K-sample bound for a multi-sample objective: VIMCO; fixed seed,
Bonferroni-corrected, false-failure rate below 1e-5 per pair; the whole matrix is marked slow).
The estimators that take a Categorical or a Bernoulli only are paired with exactly those.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from latentgrad.estimators import Estimate
from latentgrad.testing import (
    assert_unbiased,
    exact_expectation,
    exact_gradient,
    exact_multisample_gradient,
    replicated_gradients,
)
from latentgrad.testing.examples import (
    ESTIMATOR_EXAMPLES,
    FAMILY_EXAMPLES,
    EstimatorExample,
    FamilyExample,
    compatible,
    estimator_examples,
    family_examples,
    pairs,
)

F64 = torch.float64
PAIRS = pairs()
PAIR_IDS = [f"{x.name}-{f.name}" for x, f in PAIRS]


def _loss(q, w: Tensor):
    """A smooth nonlinear loss of the whole value, with a parameter ``w`` (one per entry)."""
    n_event = len(q.event_shape)

    def loss_fn(z: Tensor) -> Tensor:
        flat = z.to(w.dtype).flatten(z.dim() - n_event) if n_event else z.to(w.dtype)
        s = (flat * w).sum(-1)
        return (s - 0.5) ** 2 + torch.sin(2 * s)

    return loss_fn


def _weights(q, dtype: torch.dtype = F64) -> Tensor:
    # Not affine in the entry's index: an affine weight makes <z, w> constant over the
    # permutation matrices, and the loss of a matching constant.
    return torch.cos(1.7 * torch.arange(q.event_shape.numel(), dtype=dtype) + 0.3)


# -- families ------------------------------------------------------------------------------------


def test_registry_names_are_unique_and_capabilities_known() -> None:
    assert len({f.name for f in FAMILY_EXAMPLES}) == len(FAMILY_EXAMPLES)
    assert len({x.name for x in ESTIMATOR_EXAMPLES}) == len(ESTIMATOR_EXAMPLES)
    flags = {flag for x in ESTIMATOR_EXAMPLES for flag in x.needs}
    q = FAMILY_EXAMPLES[0].dist()
    assert all(isinstance(getattr(q, flag), bool) for flag in flags)
    # every estimator applies to some family, every family to some estimator
    assert {x.name for x, _ in PAIRS} == {x.name for x in ESTIMATOR_EXAMPLES}
    assert {f.name for _, f in PAIRS} == {f.name for f in FAMILY_EXAMPLES}
    with pytest.raises(ValueError, match="unknown family"):
        family_examples(names=["no-such-family"])
    assert [x.name for x in estimator_examples(kind="exact")] == ["marginalize"]


@pytest.mark.parametrize("example", FAMILY_EXAMPLES, ids=lambda x: x.name)
def test_family_shapes(example: FamilyExample) -> None:
    torch.manual_seed(0)
    q = example.dist()
    assert q.batch_shape == example.params.shape[:1]
    z = q.sample((3,))
    assert z.shape == (3, *q.batch_shape, *q.event_shape)
    assert q.log_prob(z).shape == (3, *q.batch_shape)
    assert bool(torch.isfinite(q.log_prob(z)).all())


@pytest.mark.parametrize("example", FAMILY_EXAMPLES, ids=lambda x: x.name)
def test_family_expand(example: FamilyExample) -> None:
    torch.manual_seed(0)
    q = example.dist()
    big = q.expand((4, *q.batch_shape))
    assert big.batch_shape == (4, *q.batch_shape) and big.event_shape == q.event_shape
    zb = big.sample((2,))
    assert zb.shape == (2, 4, *q.batch_shape, *q.event_shape)
    torch.testing.assert_close(big.log_prob(zb)[:, 0], q.log_prob(zb[:, 0]))


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
@pytest.mark.parametrize("example", FAMILY_EXAMPLES, ids=lambda x: x.name)
def test_family_dtype_and_no_grad(example: FamilyExample, dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    leaf = example.leaf(dtype, requires_grad=True)
    q = example.make(leaf)
    z = q.sample((2,))
    assert z.dtype in (dtype, torch.long)
    lp = q.log_prob(z)
    assert lp.dtype == dtype and lp.requires_grad
    with torch.no_grad():
        assert not example.make(leaf).log_prob(z).requires_grad


# -- estimators ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("estimator", "family"), PAIRS, ids=PAIR_IDS)
def test_estimate_contract(estimator: EstimatorExample, family: FamilyExample) -> None:
    torch.manual_seed(2)
    leaf = family.leaf(requires_grad=True)
    q = family.make(leaf)
    w = _weights(q).requires_grad_(True)
    out = estimator.make(q)(q, _loss(q, w))
    assert isinstance(out, Estimate)
    assert out.value.shape == out.surrogate.shape == q.batch_shape
    assert out.per_sample.shape == (estimator.num_samples, *q.batch_shape)
    assert not out.value.requires_grad
    assert isinstance(out.loss_evals, int) and out.loss_evals >= 1
    assert out.losses is None or not out.losses.requires_grad
    torch.testing.assert_close(out.surrogate, out.per_sample.mean(0))
    assert bool(torch.isfinite(out.value).all())
    out.surrogate.sum().backward()
    assert leaf.grad is not None and bool(torch.isfinite(leaf.grad).all())
    assert w.grad is not None and bool(torch.isfinite(w.grad).all())


EXACT = [(x, f) for x, f in PAIRS if x.kind == "exact"]


@pytest.mark.parametrize(
    ("estimator", "family"), EXACT, ids=[f"{x.name}-{f.name}" for x, f in EXACT]
)
def test_exact_estimators_match_brute_force(
    estimator: EstimatorExample, family: FamilyExample
) -> None:
    leaf = family.leaf(requires_grad=True)
    q = family.make(leaf)
    w = _weights(q)
    rows = (
        q.exact
        if family.family == "topk-sparsemax"
        else torch.ones(q.batch_shape, dtype=torch.bool)
    )
    out = estimator.make(q)(q, _loss(q, w))
    torch.testing.assert_close(out.value[rows], exact_expectation(q, _loss(q, w)).detach()[rows])
    (grad,) = torch.autograd.grad(out.surrogate[rows].sum(), leaf)
    (expected,) = exact_gradient(lambda: family.make(leaf), _loss(q, w), [leaf])
    flat = (*q.batch_shape, -1)
    torch.testing.assert_close(
        grad.reshape(flat)[rows], expected.reshape(flat)[rows], atol=1e-6, rtol=0
    )


UNBIASED = [
    (x, f)
    for x, f in PAIRS
    if x.kind == "unbiased" and f.family != "topk-sparsemax" and not f.name.startswith("sparsemax")
]


@pytest.mark.slow
@pytest.mark.stat
@pytest.mark.parametrize(
    ("estimator", "family"), UNBIASED, ids=[f"{x.name}-{f.name}" for x, f in UNBIASED]
)
def test_unbiased_estimators_against_brute_force(
    estimator: EstimatorExample, family: FamilyExample
) -> None:
    torch.manual_seed(4)
    q0 = family.dist()
    est = estimator.make(q0)
    w = _weights(q0)
    if estimator.stateful:  # running averages start from a value
        est(q0, _loss(q0, w))

    def surrogate(rep: Tensor) -> Tensor:
        q = family.make(rep)
        return est(q, _loss(q, w)).surrogate.reshape(rep.shape[0], -1).sum(1)

    grads = replicated_gradients(surrogate, family.params, 4000)
    leaf = family.leaf(requires_grad=True)
    if estimator.objective == "multi-sample":  # VIMCO: the gradient of the K-sample bound
        (exact,) = exact_multisample_gradient(
            lambda: family.make(leaf), _loss(q0, w), [leaf], est.num_samples
        )
    else:
        (exact,) = exact_gradient(lambda: family.make(leaf), _loss(q0, w), [leaf])
    assert bool(torch.isfinite(grads).all())
    assert_unbiased(grads.flatten(1), exact.flatten(), name=f"{estimator.name} on {family.name}")


def test_compatible_reads_the_declared_flags() -> None:
    cat = family_examples(names=["categorical"])[0].dist()
    tree = family_examples(names=["spanning-tree"])[0].dist()
    (t_reinforce,) = estimator_examples(names=["t-reinforce"])
    assert compatible(t_reinforce, tree) and not compatible(t_reinforce, cat)


SOFTMAX_ONLY = [
    "reinmax",
    "gumbel-rao",
    "gst-1.0",
    "gst-p",
    "rebar",
    "relax-concrete",
    "disarm",
    "arms",
]


@pytest.mark.parametrize("name", SOFTMAX_ONLY)
def test_estimators_for_categorical_and_bernoulli_only_are_routed_there(name: str) -> None:
    # They accept a Categorical or a Bernoulli (or to_event of them) by type; their declared
    # needs (has_logits) must pair them with exactly those families, and every other family
    # must get the TypeError of the capability check, naming dist.
    (example,) = estimator_examples(names=[name])
    base = {"categorical", "bernoulli", "independent-categorical", "independent-bernoulli"}
    assert {f.family for x, f in PAIRS if x.name == name} == base
    for family in FAMILY_EXAMPLES:
        if family.family in base:
            continue
        q = family.dist()
        with pytest.raises(TypeError, match=r"needs dist\.has_logits"):
            example.make(family_examples(names=["categorical"])[0].dist())(q, _loss(q, _weights(q)))


@pytest.mark.parametrize("example", ESTIMATOR_EXAMPLES, ids=lambda x: x.name)
def test_needs_are_what_the_estimator_requires(example: EstimatorExample) -> None:
    # `needs` picks the families an estimator is tested on: it must be the estimator's own
    # declared `requires`, or pairs would be tested that the estimator refuses (or skipped).
    family = next(f for f in FAMILY_EXAMPLES if compatible(example, f.dist()))
    built = example.make(family.dist())
    built = getattr(built, "estimator", built)  # WithContext wraps NVIL
    assert set(built.requires) == set(example.needs)
