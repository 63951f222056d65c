import itertools
import math

import pytest
import torch

from latentgrad.distributions import DiscreteDistribution
from latentgrad.distributions.bernoulli import Bernoulli
from latentgrad.distributions.categorical import Categorical
from latentgrad.estimators.relaxed import GumbelSoftmax, StraightThrough
from latentgrad.schedules import Constant, ExponentialDecay, LinearGrowth
from latentgrad.testing import (
    assert_unbiased,
    bonferroni_z,
    check_unbiased,
    exact_expectation,
    exact_gradient,
    replicated_gradients,
)
from latentgrad.testing.examples import (
    EstimatorExample,
    FamilyExample,
    estimator_examples,
    family_examples,
    pairs,
)

F64 = torch.float64


class CountingLoss:
    """A loss with a parameter ``w``, recording every call."""

    def __init__(self, w: torch.Tensor, event_dims: int = 1) -> None:
        self.w = w
        self.event_dims = event_dims
        self.inputs: list[torch.Tensor] = []

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        self.inputs.append(z)
        dims = tuple(range(-self.event_dims, 0))
        return ((z * self.w).sum(dims) - 0.5) ** 2


# The relaxation estimators and the families with a relaxation, from the registry of examples.
ESTIMATORS: dict[str, EstimatorExample] = {x.name: x for x in estimator_examples(group="relaxed")}
FAMILIES: dict[str, FamilyExample] = {
    f.name: f for f in family_examples(capability="has_relaxation", one_per_family=True)
}


def _estimator(name: str):
    return ESTIMATORS[name].make(None)


# every relaxation estimator on every family whose declared capabilities it needs
CONTRACT = [(x.name, f.name) for x, f in pairs(list(ESTIMATORS.values()), list(FAMILIES.values()))]


@pytest.mark.parametrize(("name", "family"), CONTRACT, ids=[f"{x}-{f}" for x, f in CONTRACT])
def test_contract(name, family):
    torch.manual_seed(0)
    example = FAMILIES[family]
    logits = example.leaf(torch.float32, requires_grad=True)
    dist = example.make(logits)
    event_dims = len(dist.event_shape)
    w = torch.randn(dist.event_shape, requires_grad=True)
    loss = CountingLoss(w, event_dims)
    est = _estimator(name)
    out = est(dist, loss)
    s = est.num_samples
    assert len(loss.inputs) == 1  # one batched call
    evals = loss.inputs[0].shape[0]
    assert out.loss_evals == evals
    assert evals == (2 * s if name in ("gumbel-softmax", "gumbel-softmax-mode") else s)
    assert loss.inputs[0].shape == (evals, *dist.batch_shape, *dist.event_shape)
    assert out.value.shape == out.surrogate.shape == dist.batch_shape
    assert out.per_sample.shape == (s, *dist.batch_shape)
    assert not out.value.requires_grad
    assert not out.losses.requires_grad
    torch.testing.assert_close(out.surrogate, out.per_sample.mean(0))
    out.surrogate.sum().backward()
    # The gradient reaches the distribution's parameters and the loss's parameters.
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert w.grad is not None and w.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "name", ["gumbel-softmax-hard", "straight-through", "straight-through-slope"]
)
def test_straight_through_forward_is_the_discrete_sample(name):
    torch.manual_seed(1)
    logits = torch.randn(6, 5, requires_grad=True)
    loss = CountingLoss(torch.randn(5))
    out = _estimator(name)(Categorical(logits=logits), loss)
    z = loss.inputs[0]
    assert ((z == 0) | (z == 1)).all() and (z.sum(-1) == 1).all()
    torch.testing.assert_close(out.value, out.surrogate.detach(), rtol=0, atol=0)
    torch.testing.assert_close(out.losses, loss(z.detach()), rtol=0, atol=0)


def test_soft_gumbel_softmax_honest_value_uses_the_same_noise():
    torch.manual_seed(2)
    logits = torch.randn(6, 5, dtype=F64, requires_grad=True)
    loss = CountingLoss(torch.randn(5, dtype=F64))
    est = GumbelSoftmax(tau=0.3, num_samples=4)
    out = est(Categorical(logits=logits), loss)
    both = loss.inputs[0]
    relaxed, discrete = both[:4], both[4:]
    assert (discrete.sum(-1) == 1).all() and ((discrete == 0) | (discrete == 1)).all()
    # Same noise: the discrete sample is the argmax of the relaxed one.
    assert torch.equal(relaxed.argmax(-1), discrete.argmax(-1))
    assert ((relaxed > 0) & (relaxed < 1)).any()
    torch.testing.assert_close(out.value, loss(discrete).mean(0))
    torch.testing.assert_close(out.surrogate.detach(), loss(relaxed).mean(0).detach())
    torch.testing.assert_close(out.extras["relaxed_losses"], loss(relaxed).detach())

    dishonest = GumbelSoftmax(tau=0.3, num_samples=4, honest_value=False)
    out = dishonest(Categorical(logits=logits), loss)
    torch.testing.assert_close(out.value, out.surrogate.detach())


def _linear_setup(family: str):
    """Parameters ``[logits, c]`` flattened in one vector and a loss linear in ``z``."""
    example = family_examples(names=[family])[0]
    make, shape = example.make, example.params.shape
    event_dims = len(example.dist().event_shape)
    n = math.prod(shape)
    param = torch.randn(2 * n, dtype=F64)

    def split(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lead = p.shape[:-1]
        return p[..., :n].reshape(*lead, *shape), p[..., n:].reshape(*lead, *shape)

    def surrogate(est, rep):
        logits, c = split(rep)  # (R, *shape)
        dims = tuple(range(-event_dims, 0))
        out = est(make(logits), lambda z: (z * c).sum(dims) + 0.7)
        return out.surrogate

    def exact():
        leaf = param.clone().requires_grad_(True)
        logits, c = split(leaf)
        dims = tuple(range(-event_dims, 0))
        return exact_gradient(lambda: make(logits), lambda z: (z * c).sum(dims) + 0.7, [leaf])[0]

    return param, surrogate, exact()


@pytest.mark.stat
@pytest.mark.parametrize(
    "family",
    ["categorical", "bernoulli", "independent-categorical", "independent-bernoulli"],
)
def test_straight_through_unbiased_for_linear_loss(family):
    torch.manual_seed(3)
    param, surrogate, expected = _linear_setup(family)
    est = StraightThrough(num_samples=2)
    grads = replicated_gradients(lambda rep: surrogate(est, rep), param, 4000)
    result = assert_unbiased(grads, expected, name="StraightThrough")
    # The theta part (gradient = z) is random, so the test is not a zero-variance comparison.
    assert (result.standard_error > 0).any()


@pytest.mark.stat
def test_straight_through_with_slope_is_biased_even_for_linear_loss():
    torch.manual_seed(4)
    param, surrogate, expected = _linear_setup("bernoulli")
    grads = replicated_gradients(
        lambda rep: surrogate(StraightThrough(slope=2.0), rep), param, 4000
    )
    with pytest.raises(AssertionError, match="biased"):
        assert_unbiased(grads, expected)


def _nonlinear_setup():
    logits = torch.tensor([0.5, -0.3, 0.1], dtype=F64)
    c = torch.tensor([1.0, -2.0, 0.5], dtype=F64)

    def loss(z):
        return ((z * c).sum(-1) - 0.3) ** 2

    leaf = logits.clone().requires_grad_(True)
    expected = exact_gradient(lambda: Categorical(logits=leaf), loss, [leaf])[0]
    return logits, loss, expected


def _gs_gradients(tau: float, num: int, hard: bool = False) -> torch.Tensor:
    logits, loss, _ = _nonlinear_setup()
    est = GumbelSoftmax(tau=tau, hard=hard)
    return replicated_gradients(
        lambda rep: est(Categorical(logits=rep), loss).surrogate, logits, num
    )


@pytest.mark.stat
@pytest.mark.parametrize("hard", [False, True])
def test_gumbel_softmax_is_biased_for_nonlinear_loss(hard):
    # The unbiasedness test has power: it rejects Gumbel-Softmax at tau = 1.
    torch.manual_seed(5)
    _, _, expected = _nonlinear_setup()
    grads = _gs_gradients(1.0, 4000, hard=hard)
    assert not check_unbiased(grads, expected).passed
    with pytest.raises(AssertionError, match="biased"):
        assert_unbiased(grads, expected, name="GumbelSoftmax")


@pytest.mark.stat
def test_gumbel_softmax_bias_shrinks_with_temperature():
    torch.manual_seed(6)
    _, _, expected = _nonlinear_setup()
    taus = [1.0, 0.5, 0.25, 0.1]
    n = 200_000
    stats = []
    for tau in taus:
        g = _gs_gradients(tau, n)
        bias = g.mean(0) - expected
        se = g.std(0) / math.sqrt(n)
        stats.append((bias, se))
    # Every coordinate's |bias| decreases from each temperature to the next, by more than a
    # Bonferroni-corrected z-test allows (false-failure rate < 1e-5 if the bias did not shrink).
    z = bonferroni_z(1e-5, 3 * (len(taus) - 1))
    for (b_hi, se_hi), (b_lo, se_lo) in itertools.pairwise(stats):
        margin = b_hi.abs() - b_lo.abs()
        assert (margin > z * (se_hi**2 + se_lo**2).sqrt()).all(), (margin, se_hi, se_lo)
    # Measured: max |bias| is about 0.51 at tau = 1 and 0.07 at tau = 0.1 (se 0.007); the upper
    # confidence bound at tau = 0.1 is below a third of the lower one at tau = 1.
    (b_first, se_first), (b_last, se_last) = stats[0], stats[-1]
    assert (b_last.abs() + z * se_last).max() < (b_first.abs() - z * se_first).max() / 3


@pytest.mark.stat
@pytest.mark.parametrize(
    "make_est",
    [
        lambda: GumbelSoftmax(tau=0.5, num_samples=2),
        lambda: GumbelSoftmax(tau=0.5, hard=True, num_samples=2),
        lambda: StraightThrough(num_samples=2),
    ],
)
def test_value_is_an_honest_estimate(make_est):
    torch.manual_seed(7)
    logits, loss, _ = _nonlinear_setup()
    reps = 4000
    dist = Categorical(logits=logits.expand(reps, 3))
    values = make_est()(dist, loss).value
    expected = exact_expectation(Categorical(logits=logits), loss)
    assert_unbiased(values.unsqueeze(-1), expected.reshape(1))


@pytest.mark.stat
def test_dishonest_soft_value_is_biased():
    # Documented: without honest_value the value is the relaxed loss, not E_q[loss].
    torch.manual_seed(8)
    logits, loss, _ = _nonlinear_setup()
    dist = Categorical(logits=logits.expand(4000, 3))
    values = GumbelSoftmax(tau=1.0, honest_value=False)(dist, loss).value
    expected = exact_expectation(Categorical(logits=logits), loss)
    with pytest.raises(AssertionError):
        assert_unbiased(values.unsqueeze(-1), expected.reshape(1))


def test_straight_through_gradient_uses_slope():
    logits = torch.tensor([[0.3, -1.2]], requires_grad=True)
    StraightThrough(slope=3.0)(
        Bernoulli(logits=logits), lambda z: z.sum(-1)
    ).surrogate.sum().backward()
    s = torch.sigmoid(3.0 * logits.detach())
    torch.testing.assert_close(logits.grad, 3.0 * s * (1 - s))


@pytest.mark.parametrize("honest", [False, True])
@pytest.mark.parametrize("family", ["bernoulli", "categorical"])
def test_straight_through_at_the_mode(family, honest):
    # hard_at="mode" (Correia et al.'s code): every sample's loss sees the mode of q, and the
    # gradient is the relaxed sample's Jacobian at the noise the estimator drew. With
    # honest_value the loss is also evaluated at the samples of that noise, for the value.
    torch.manual_seed(4)
    logits = torch.randn(4, 6, dtype=F64, requires_grad=True)
    make = {"bernoulli": Bernoulli, "categorical": Categorical}[family]
    dist = make(logits=logits)
    loss = CountingLoss(torch.randn(6, dtype=F64))
    est = GumbelSoftmax(tau=0.6, hard=True, hard_at="mode", num_samples=3, honest_value=honest)
    torch.manual_seed(5)
    out = est(dist, loss)
    (grad,) = torch.autograd.grad(out.surrogate.sum(), logits)
    mode = dist.mode()
    torch.manual_seed(5)
    noise = dist.sample_noise((3,))
    relaxed = dist.relaxed_from_noise(noise, 0.6)
    samples = dist.from_noise(noise).to(F64)
    seen = loss.inputs[0].detach()
    assert len(loss.inputs) == 1  # one batched call
    assert seen.shape == (6 if honest else 3, 4, 6)
    assert torch.equal(seen[:3], mode.expand(3, 4, 6))
    if family == "bernoulli":
        assert torch.equal(mode, (logits > 0).to(F64))
    at_mode = loss(mode).detach()
    # (a mean of S equal losses: equal up to rounding)
    torch.testing.assert_close(out.extras["mode_losses"], at_mode.expand(3, 4), rtol=0, atol=0)
    if honest:
        assert torch.equal(seen[3:], samples)
        assert out.loss_evals == 6
        at_samples = loss(samples).detach()
        torch.testing.assert_close(out.losses, at_samples, rtol=0, atol=0)
        torch.testing.assert_close(out.value, at_samples.mean(0), rtol=1e-14, atol=1e-12)
        assert not torch.allclose(out.value, at_mode)  # the samples are not all the mode
    else:
        assert out.loss_evals == 3
        torch.testing.assert_close(out.value, at_mode, rtol=1e-14, atol=1e-12)
        torch.testing.assert_close(out.losses, at_mode.expand(3, 4), rtol=0, atol=0)
    # the gradient by hand at the same noise (the same with and without honest_value)
    by_hand = loss(mode + relaxed - relaxed.detach()).mean(0)
    (expected,) = torch.autograd.grad(by_hand.sum(), logits)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)
    assert grad.abs().sum() > 0
    # the forward at the mode is deterministic; the gradient is not
    torch.manual_seed(6)
    again = est(dist, loss)
    torch.testing.assert_close(
        again.extras["mode_losses"], out.extras["mode_losses"], rtol=0, atol=0
    )
    (grad2,) = torch.autograd.grad(again.surrogate.sum(), logits)
    assert not torch.allclose(grad2, grad)


def test_straight_through_at_the_mode_differs_from_the_sample():
    # With logits near 0 a sample differs from the mode almost surely somewhere.
    torch.manual_seed(7)
    dist = Bernoulli(logits=torch.zeros(8, 16))
    at_sample = CountingLoss(torch.ones(16))
    at_mode = CountingLoss(torch.ones(16))
    GumbelSoftmax(hard=True)(dist, at_sample)
    GumbelSoftmax(hard=True, hard_at="mode")(dist, at_mode)
    assert (at_mode.inputs[0][:1] == 0).all()  # logits 0: the mode (ties) is 0
    assert (at_sample.inputs[0] == 1).any()


def test_gumbel_softmax_hard_and_soft_share_noise_with_from_noise():
    # With a seeded generator the hard sample equals from_noise of the same noise draw.
    logits = torch.randn(5, 4)
    dist = Categorical(logits=logits)
    torch.manual_seed(9)
    noise = dist.sample_noise((2,))
    expected = dist.from_noise(noise)
    torch.manual_seed(9)
    loss = CountingLoss(torch.ones(4))
    GumbelSoftmax(tau=0.5, hard=True, num_samples=2)(dist, loss)
    assert torch.equal(loss.inputs[0].detach(), expected)


def test_schedules_step_and_checkpoint():
    est = GumbelSoftmax(tau=ExponentialDecay(rate=1e-3, every=10, minimum=0.5), hard=True)
    assert est.tau == 1.0
    for _ in range(10):
        est.step()
    assert est.tau == pytest.approx(math.exp(-0.01))
    out = est(Categorical(logits=torch.zeros(2, 3)), lambda z: z[..., 0])
    assert out.extras["tau"] == est.tau
    state = est.state_dict()
    assert int(state["tau_schedule.step_count"]) == 10
    fresh = GumbelSoftmax(tau=ExponentialDecay(rate=1e-3, every=10, minimum=0.5), hard=True)
    fresh.load_state_dict(state)
    assert fresh.tau == est.tau

    st = StraightThrough(slope=LinearGrowth(rate=0.5, maximum=2.0))
    assert st.step(1) == 1.5 and st.step(5) == 2.0
    out = st(Bernoulli(logits=torch.zeros(2, 3)), lambda z: z.sum(-1))
    assert out.extras["slope"] == 2.0
    assert "slope_schedule.step_count" in st.state_dict()
    # A plain float becomes a constant schedule, also checkpointed.
    assert "tau_schedule.step_count" in GumbelSoftmax(tau=0.3).state_dict()


class _NoRelaxation(DiscreteDistribution):
    def __init__(self) -> None:
        super().__init__(torch.Size([2]), torch.Size([3]), validate_args=False)


@pytest.mark.parametrize(
    ("make", "match", "error"),
    [
        (lambda: GumbelSoftmax(tau=0.0), "tau", ValueError),
        (lambda: GumbelSoftmax(tau=-1.0), "tau", ValueError),
        (lambda: GumbelSoftmax(tau=float("nan")), "tau", ValueError),
        (lambda: GumbelSoftmax(tau="hot"), "tau", TypeError),
        (lambda: GumbelSoftmax(tau=Constant(0.0)), "tau", ValueError),
        (lambda: GumbelSoftmax(num_samples=0), "num_samples", ValueError),
        (lambda: GumbelSoftmax(num_samples=2.0), "num_samples", TypeError),
        (lambda: GumbelSoftmax(hard=1), "hard", TypeError),
        (lambda: GumbelSoftmax(honest_value=None), "honest_value", TypeError),
        (lambda: GumbelSoftmax(hard_at="mode"), "hard_at='mode' needs hard=True", ValueError),
        (lambda: GumbelSoftmax(hard=True, hard_at="argmax"), "hard_at", ValueError),
        (lambda: GumbelSoftmax(hard=True, hard_at=1), "hard_at", TypeError),
        (lambda: StraightThrough(slope=0.0), "slope", ValueError),
        (lambda: StraightThrough(slope=Constant(-2.0)), "slope", ValueError),
        (lambda: StraightThrough(num_samples=0), "num_samples", ValueError),
    ],
)
def test_constructor_validation(make, match, error):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("est", [GumbelSoftmax(), GumbelSoftmax(hard=True), StraightThrough()])
def test_call_validation(est):
    dist = Categorical(logits=torch.zeros(2, 3))
    with pytest.raises(TypeError, match="dist"):
        est(torch.distributions.OneHotCategorical(logits=torch.zeros(2, 3)), lambda z: z.sum(-1))
    with pytest.raises(TypeError, match="loss_fn"):
        est(dist, "not callable")
    with pytest.raises(ValueError, match="loss_fn must return shape"):
        est(dist, lambda z: z.sum(-1).sum(-1))


def test_distribution_without_relaxation_is_rejected():
    with pytest.raises(TypeError, match="no continuous relaxation"):
        GumbelSoftmax()(_NoRelaxation(), lambda z: z.sum(-1))
    with pytest.raises(TypeError, match="no continuous relaxation"):
        GumbelSoftmax(hard=True)(_NoRelaxation().to_event(1), lambda z: z.sum((-1, -2)))
    with pytest.raises(TypeError, match=r"StraightThrough needs dist\.has_mean_field"):
        StraightThrough(slope=2.0)(_NoRelaxation(), lambda z: z.sum(-1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("name", ESTIMATORS)
def test_dtype_is_kept(name, dtype):
    logits = torch.randn(3, 4).to(dtype).requires_grad_(True)
    seen = []

    def loss(z):
        seen.append(z.dtype)
        return z[..., 0] * 2.0

    out = _estimator(name)(Categorical(logits=logits), loss)
    assert seen == [dtype]
    assert out.value.dtype == out.surrogate.dtype == dtype
    out.surrogate.sum().backward()
    assert logits.grad.dtype == dtype and logits.grad.isfinite().all()
