"""Tests of LocalReparam: unbiasedness (one layer and chains), common random numbers, variance.

One-layer unbiasedness, numerics and bad input are tested on its subclass LocalExpectation too
(the same code for one layer); LocalExpectation's chains are tested in test_local_expectation.py.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

import latentgrad as lg
from latentgrad.distributions import DiscreteDistribution
from latentgrad.estimators.local_expectation import LocalExpectation
from latentgrad.estimators.local_reparam import LocalReparam
from latentgrad.testing import (
    assert_unbiased,
    chain_problems,
    check_unbiased,
    exact_gradient,
    quadratic_loss,
    replicated_gradients,
    single_layer_gradients,
)
from latentgrad.testing.examples import (
    UNIT_FAMILIES,
    FamilyExample,
    family_examples_by_name,
)

F64 = torch.float64
REPLICATES = 4000

#: LocalReparam and its subclass, for the tests that hold for both.
LOCAL_ESTIMATORS = [LocalReparam, LocalExpectation]


# The families of the registry of examples that LocalReparam is tested on (batched, -inf too).
FAMILIES: dict[str, FamilyExample] = family_examples_by_name(UNIT_FAMILIES)


@pytest.mark.stat
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("num_samples", [1, 3])
@pytest.mark.parametrize("cls", LOCAL_ESTIMATORS, ids=lambda c: c.__name__)
def test_unbiased_single_layer(cls: type[LocalReparam], family: str, num_samples: int) -> None:
    torch.manual_seed(0)
    est = cls(num_samples=num_samples)
    grads, expected = single_layer_gradients(FAMILIES[family], est, REPLICATES)
    assert torch.isfinite(grads).all()
    assert_unbiased(grads, expected, name=f"{cls.__name__} on {family}")


@pytest.mark.stat
def test_unbiasedness_check_has_power() -> None:
    """Leaving out the kept value's term (sum_v grad q_v f_v only) is biased, and detected."""
    torch.manual_seed(0)
    logits = torch.tensor([0.3, -0.5, 1.2], dtype=F64)
    loss = quadratic_loss(1, 3)
    t = torch.tensor(0.7, dtype=F64)
    phi = logits.clone().requires_grad_(True)
    (expected,) = exact_gradient(lambda: lg.Bernoulli(logits=phi), lambda z: loss(z, t), [phi])

    def flips_only(rep: Tensor) -> Tensor:
        q = lg.Bernoulli(logits=rep)
        z = q.sample()
        variants = q.local_variants(z)
        return (variants.probs * loss(variants.values, t)).sum(0)

    grads = replicated_gradients(flips_only, logits, REPLICATES)
    assert not check_unbiased(grads, expected).passed


def test_estimate_contract() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 4, requires_grad=True)
    theta = torch.tensor(0.3, requires_grad=True)
    calls: list[tuple[int, ...]] = []

    def loss_fn(z: Tensor) -> Tensor:
        calls.append(tuple(z.shape))
        return (z * torch.arange(4.0)).sum(-1) * theta

    out = LocalReparam(num_samples=2)(lg.Categorical(logits=logits), loss_fn)
    assert calls == [(4, 2, 5, 4)]
    assert out.value.shape == out.surrogate.shape == (5,)
    assert out.per_sample.shape == (2, 5)
    assert not out.value.requires_grad
    torch.testing.assert_close(out.surrogate, out.per_sample.mean(0))
    torch.testing.assert_close(out.surrogate.detach(), out.value)
    assert out.loss_evals == 4
    assert out.extras["num_variants"] == (3,)
    assert out.losses.shape == (2, 5)
    assert out.extras["variant_losses"].shape == (3, 2, 5)
    out.surrogate.sum().backward()
    assert logits.grad is not None and theta.grad is not None
    assert logits.grad.abs().sum() > 0 and theta.grad.abs() > 0


def test_single_categorical_unit_is_exact() -> None:
    """One categorical unit: the local marginalization is the full sum over its values."""
    logits = torch.tensor([[0.2, -1.0, 0.7]], dtype=F64, requires_grad=True)
    values = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    out = LocalReparam()(lg.Categorical(logits=logits), lambda z: (z * values).sum(-1) ** 2)
    (grad,) = torch.autograd.grad(out.surrogate.sum(), logits)
    (expected,) = exact_gradient(
        lambda: lg.Categorical(logits=logits), lambda z: (z * values).sum(-1) ** 2, [logits]
    )
    torch.testing.assert_close(grad, expected)


# -- chains ----------------------------------------------------------------------------------------

# A two-layer sigmoid belief net of 3 and 3 bits, with its exact gradient by enumeration.
(SBN,) = chain_problems(names=["sbn"])
D1, D2 = SBN.units


@pytest.mark.stat
@pytest.mark.parametrize("num_samples", [1, 2])
def test_chain_unbiased_two_layer_sbn(num_samples: int) -> None:
    torch.manual_seed(0)
    expected = SBN.exact_gradient()
    est = LocalReparam(num_samples=num_samples)

    def surrogate(rep: Tensor) -> Tensor:
        p = SBN.split(rep)
        out = est.chain(SBN.first(p), SBN.conditionals(p), SBN.loss_fn(p))
        assert out.loss_evals == 1 + D1 + D2
        return out.surrogate

    grads = replicated_gradients(surrogate, SBN.param, REPLICATES)
    assert torch.isfinite(grads).all()
    assert_unbiased(grads, expected, name="LocalReparam.chain on a two-layer SBN")


@pytest.mark.stat
def test_chain_without_resimulation_is_biased() -> None:
    """Reusing the base z2 for layer-1 flips (no re-simulation) is detected as biased."""
    torch.manual_seed(0)
    expected = SBN.exact_gradient()

    def surrogate(rep: Tensor) -> Tensor:
        p = SBN.split(rep)

        def stale_loss(zs: list[Tensor]) -> Tensor:
            z1, z2 = zs
            return SBN.loss([z1, z2[:1].expand_as(z2)], p.t)

        return LocalReparam().chain(SBN.first(p), SBN.conditionals(p), stale_loss).surrogate

    grads = replicated_gradients(surrogate, SBN.param, REPLICATES)
    assert not check_unbiased(grads[:, :D1], expected[:D1]).passed


def test_chain_common_random_numbers() -> None:
    torch.manual_seed(0)
    batch = 2000
    # Unit 1 of layer 1 does not reach layer 2; units 0 and 2 push every layer-2 logit up.
    w = torch.tensor([[2.0, 0.0, 1.0], [1.5, 0.0, 3.0], [1.0, 0.0, 0.5]])
    b = torch.tensor([-1.0, -2.0, 0.0])
    phi1 = torch.zeros(batch, D1)
    seen: list[list[Tensor]] = []

    def loss_fn(zs: list[Tensor]) -> Tensor:
        seen.append(zs)
        return zs[0].sum(-1) + zs[1].sum(-1)

    out = LocalReparam(num_samples=2).chain(
        lg.Bernoulli(logits=phi1), [lambda z1: lg.Bernoulli(logits=z1 @ w.T + b)], loss_fn
    )
    (z1, z2) = seen[0]
    assert z1.shape == (7, 2, batch, D1) and z2.shape == (7, 2, batch, D2)
    assert out.extras["num_variants"] == (D1, D2)
    # Rows 1..3: layer-1 unit d flipped; layer 2 re-simulated from the base row's noise.
    for d in range(D1):
        assert ((z1[1 + d] != z1[0]).sum(-1) == 1).all()
        assert (z1[1 + d, ..., d] != z1[0, ..., d]).all()
    assert torch.equal(z2[2], z2[0])  # the flip of unit 1 leaves layer 2's logits unchanged
    for d in (0, 2):
        up = (z1[1 + d, ..., d] > z1[0, ..., d]).unsqueeze(-1)
        # Same noise, larger logits => bits can only turn on (and only off when logits drop).
        assert torch.where(up, z2[1 + d] >= z2[0], z2[1 + d] <= z2[0]).all()
    assert (z2[1] != z2[0]).any() and (z2[3] != z2[0]).any()
    # Rows 4..6: layer-2 flips of the base sample, layer 1 at its base value.
    assert torch.equal(z1[4:], z1[:1].expand(3, -1, -1, -1))
    for d in range(D2):
        assert ((z2[4 + d] != z2[0]).sum(-1) == 1).all()


def test_chain_three_layers_categorical_shapes() -> None:
    torch.manual_seed(0)
    first = lg.Categorical(logits=torch.randn(4, 2, 3)).to_event(1)  # batch (4,), event (2, 3)
    lin2 = torch.nn.Linear(6, 5)
    lin3 = torch.nn.Linear(5, 4)
    shapes: list[tuple[int, ...]] = []

    def layer2(z: Tensor) -> lg.Bernoulli:
        shapes.append(tuple(z.shape))
        return lg.Bernoulli(logits=lin2(z.flatten(-2)))

    def layer3(z: Tensor) -> lg.Categorical:
        shapes.append(tuple(z.shape))
        return lg.Categorical(logits=lin3(z))

    def loss_fn(zs: list[Tensor]) -> Tensor:
        shapes.extend(tuple(z.shape) for z in zs)
        return zs[0].sum((-1, -2)) + zs[1].sum(-1) * zs[2][..., 0]

    out = LocalReparam().chain(first, [layer2, layer3], loss_fn)
    n1, n2, n3 = 1 + 4, 1 + 4 + 5, 1 + 4 + 5 + 3
    assert shapes == [
        (n1, 1, 4, 2, 3),
        (n2, 1, 4, 5),
        (n3, 1, 4, 2, 3),
        (n3, 1, 4, 5),
        (n3, 1, 4, 4),
    ]
    assert out.extras["num_variants"] == (4, 5, 3)
    out.surrogate.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in (*lin2.parameters(), *lin3.parameters()))


def test_chain_broadcasts_conditional_batch() -> None:
    """A conditional that ignores its input (batch shape B only) is expanded to the rows."""
    torch.manual_seed(0)
    logits2 = torch.randn(3, 2, requires_grad=True)
    out = LocalReparam().chain(
        lg.Bernoulli(logits=torch.randn(3, 4)),
        [lambda z1: lg.Bernoulli(logits=logits2)],
        lambda zs: zs[0].sum(-1) * zs[1][..., 0],
    )
    out.surrogate.sum().backward()
    assert out.loss_evals == 1 + 4 + 2
    assert logits2.grad is not None and torch.isfinite(logits2.grad).all()


def test_noise_drawn_outside_loss_fn_pattern() -> None:
    """The documented single-layer pattern: upper-layer noise broadcasts over the variant rows."""
    torch.manual_seed(0)
    u2 = lg.Bernoulli(logits=torch.zeros(6, 2)).sample_noise((3,))
    w = torch.randn(2, 4)
    seen: list[Tensor] = []

    def loss_fn(z1: Tensor) -> Tensor:
        z2 = lg.Bernoulli(logits=z1 @ w.T).from_noise(u2)
        seen.append(z2)
        return z2.sum(-1)

    LocalReparam(num_samples=3)(lg.Bernoulli(logits=torch.randn(6, 4)), loss_fn)
    assert seen[0].shape == (5, 3, 6, 2)


# -- variance -------------------------------------------------------------------------------------


@pytest.mark.stat
def test_variance_below_score_function() -> None:
    torch.manual_seed(0)
    logits = torch.tensor([0.3, -0.5, 1.2, 0.0], dtype=F64)
    loss = quadratic_loss(1, 4)
    t = torch.tensor(0.7, dtype=F64)

    def local(rep: Tensor) -> Tensor:
        return LocalReparam()(lg.Bernoulli(logits=rep), lambda z: loss(z, t)).surrogate

    def reinforce(rep: Tensor) -> Tensor:
        q = lg.Bernoulli(logits=rep)
        z = q.sample()
        f = loss(z, t)
        return f + (q.log_prob(z) - q.log_prob(z).detach()) * f

    var_local = replicated_gradients(local, logits, REPLICATES).var(0).sum()
    var_sf = replicated_gradients(reinforce, logits, REPLICATES).var(0).sum()
    # Measured ratio about 0.04; the margin leaves room for sampling noise in both estimates.
    assert var_local < 0.2 * var_sf


# -- numerics -------------------------------------------------------------------------------------

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _finite_run(
    cls: type[LocalReparam],
    dist_fn: Callable[[Tensor], DiscreteDistribution | lg.Independent],
    logits: Tensor,
    event_ndim: int = 1,
) -> None:
    logits = logits.clone().requires_grad_(True)
    theta = torch.tensor(1.5, dtype=logits.dtype, requires_grad=True)
    out = cls(num_samples=2)(
        dist_fn(logits), lambda z: z.flatten(z.dim() - event_ndim).sum(-1) * theta + 1e3
    )
    out.surrogate.float().sum().backward()
    assert torch.isfinite(out.value.float()).all()
    assert torch.isfinite(out.surrogate.float()).all()
    assert logits.grad is not None and torch.isfinite(logits.grad.float()).all()
    assert theta.grad is not None and torch.isfinite(theta.grad.float())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", LOCAL_ESTIMATORS, ids=lambda c: c.__name__)
def test_extreme_logits_stay_finite(cls: type[LocalReparam], dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    big = (torch.randn(3, 5) * 1e4).to(dtype)
    _finite_run(cls, lambda x: lg.Categorical(logits=x), big)
    _finite_run(cls, lambda x: lg.Bernoulli(logits=x), big)
    _finite_run(cls, lambda x: lg.Categorical(logits=x).to_event(1), big, 2)
    neg = torch.full((3, 5), -torch.inf, dtype=dtype)
    neg[:, 2] = 0
    _finite_run(cls, lambda x: lg.Categorical(logits=x), neg)
    _finite_run(cls, lambda x: lg.Categorical(logits=x), torch.full((3, 5), -1e4, dtype=dtype))
    _finite_run(cls, lambda x: lg.Categorical(logits=x), torch.zeros(3, 1, dtype=dtype))
    inf = torch.tensor([[torch.inf, -torch.inf, 0.0]], dtype=dtype)
    _finite_run(cls, lambda x: lg.Bernoulli(logits=x), inf)


def test_nan_loss_at_impossible_variant_is_ignored() -> None:
    logits = torch.tensor([[0.0, -torch.inf, 1.0]], requires_grad=True)
    out = LocalReparam(num_samples=4)(lg.Categorical(logits=logits), lambda z: 1 / (1 - z[..., 1]))
    out.surrogate.sum().backward()
    assert torch.isfinite(out.surrogate).all() and torch.isfinite(logits.grad).all()
    assert torch.isinf(out.extras["variant_losses"]).any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_chain_extreme_logits_stay_finite(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    phi1 = (torch.randn(4, 3) * 1e4).to(dtype).requires_grad_(True)
    w = (torch.randn(2, 3) * 1e4).to(dtype).requires_grad_(True)
    out = LocalReparam().chain(
        lg.Bernoulli(logits=phi1),
        [lambda z1: lg.Categorical(logits=z1 @ w.T)],
        lambda zs: zs[0].sum(-1) + 100 * zs[1][..., 0],
    )
    out.surrogate.float().sum().backward()
    assert torch.isfinite(phi1.grad.float()).all() and torch.isfinite(w.grad.float()).all()


# -- bad input ------------------------------------------------------------------------------------


class _NoUnits(DiscreteDistribution):
    """A family with noise but without independent units."""

    _param_names = ("logits",)

    def __init__(self, logits: Tensor) -> None:
        self.logits = logits
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=False)

    def sample_noise(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        return torch.rand(torch.Size(sample_shape) + self.logits.shape)

    def from_noise(self, noise: Tensor) -> Tensor:
        return (noise < torch.sigmoid(self.logits)).to(self.logits.dtype)


@pytest.mark.parametrize("cls", LOCAL_ESTIMATORS, ids=lambda c: c.__name__)
def test_bad_arguments(cls: type[LocalReparam]) -> None:
    with pytest.raises(ValueError, match="num_samples"):
        cls(num_samples=0)
    with pytest.raises(TypeError, match="num_samples"):
        cls(num_samples=2.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="num_samples"):
        cls(num_samples=True)
    est = cls()
    q = lg.Bernoulli(logits=torch.zeros(2, 3))
    with pytest.raises(TypeError, match="dist"):
        est(torch.distributions.Bernoulli(logits=torch.zeros(2)), lambda z: z)
    with pytest.raises(TypeError, match="loss_fn"):
        est(q, "loss")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="loss_fn"):
        est(q, lambda z: z.sum((-1, -2)))
    with pytest.raises(TypeError, match="local_variants"):
        est(_NoUnits(torch.zeros(2, 3)), lambda z: z.sum(-1))


@pytest.mark.parametrize("cls", LOCAL_ESTIMATORS, ids=lambda c: c.__name__)
def test_bad_chain_arguments(cls: type[LocalReparam]) -> None:
    est = cls()
    q = lg.Bernoulli(logits=torch.zeros(2, 3))

    def loss(zs: list[Tensor]) -> Tensor:
        return zs[-1].sum(-1)

    with pytest.raises(TypeError, match="first"):
        est.chain(torch.distributions.Bernoulli(logits=torch.zeros(2)), [], loss)
    with pytest.raises(TypeError, match=rf"{cls.__name__}\.chain"):
        est.chain(_NoUnits(torch.zeros(2, 3)), [], loss)
    with pytest.raises(TypeError, match="conditionals"):
        est.chain(q, lambda z: q, loss)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"conditionals\[1\]"):
        est.chain(q, [lambda z: q, 3], loss)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="loss_fn"):
        est.chain(q, [], None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"conditionals\[0\]"):
        est.chain(q, [lambda z: torch.distributions.Bernoulli(logits=z)], loss)
    with pytest.raises(ValueError, match=r"conditionals\[0\].*to_event"):
        est.chain(
            q, [lambda z: lg.Categorical(logits=z.unsqueeze(-1).expand(-1, -1, -1, -1, 2))], loss
        )
    with pytest.raises(TypeError, match=r"conditionals\[0\]\.local_variants"):
        est.chain(q, [lambda z: _NoUnits(z)], loss)
    with pytest.raises(ValueError, match="loss_fn"):
        est.chain(q, [], lambda zs: zs[0].sum((-1, -2)))
