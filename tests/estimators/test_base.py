"""The Estimator base class: validation once, declared requirements, result checks; the typed
Estimate; one support sum; schedules advanced through Scheduled."""

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

import latentgrad as lg
from latentgrad.distributions import CAPABILITIES
from latentgrad.estimators import Estimate, Estimator, LatentDistribution, LossFn
from latentgrad.mappings.oracles import BudgetBits
from latentgrad.schedules import LinearGrowth, Scheduled

F64 = torch.float64


def _scores(*shape: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=F64)


class _Echo(Estimator):
    """Returns whatever ``make`` builds from the sampled losses (to test the result checks)."""

    def __init__(self, make: Callable[[Tensor], Estimate]) -> None:
        super().__init__()
        self.make = make

    def _estimate(
        self, dist: LatentDistribution, loss_fn: LossFn, context: Tensor | None
    ) -> Estimate:
        losses = loss_fn(dist.sample((2,)))
        return self.make(losses)


def _loss(z: Tensor) -> Tensor:
    return z[..., 0]


def test_call_validates_the_arguments_once() -> None:
    est = _Echo(lambda losses: Estimate.from_terms(losses, losses=losses, loss_evals=2))
    q = lg.Categorical(logits=_scores(3, 4))
    out = est(q, _loss)
    assert out.value.shape == (3,) and out.per_sample.shape == (2, 3) and out.loss_evals == 2
    with pytest.raises(TypeError, match="loss_fn must be callable, got str"):
        est(q, "loss")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dist must be a latentgrad distribution"):
        est(torch.distributions.Categorical(logits=_scores(3, 4)), _loss)


def test_requires_is_checked_with_the_estimator_name() -> None:
    class NeedsTrace(_Echo):
        requires = ("has_trace",)

    est = NeedsTrace(lambda losses: Estimate.from_terms(losses, losses=losses, loss_evals=1))
    with pytest.raises(TypeError, match=r"NeedsTrace needs dist\.has_trace: Categorical"):
        est(lg.Categorical(logits=_scores(3, 4)), _loss)
    assert est(lg.KSubset(_scores(3, 4), k=2), _loss).value.shape == (3,)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda losses: losses, TypeError, "_Echo must return an Estimate, got Tensor"),
        (
            lambda losses: Estimate(losses, losses.mean(0), losses, loss_evals=1, losses=losses),
            ValueError,
            r"returned value of shape \(2, 3\); expected the batch shape \(3,\)",
        ),
        (
            lambda losses: Estimate(losses[0], losses, losses, loss_evals=1, losses=losses),
            ValueError,
            "returned surrogate of shape",
        ),
        (
            lambda losses: Estimate(losses[0], losses[0], losses[0], loss_evals=1, losses=losses),
            ValueError,
            r"per_sample of shape \(3,\); expected \(S,\) \+ batch_shape = \(S, 3\)",
        ),
        (
            lambda losses: Estimate.from_terms(losses, losses=losses, loss_evals=0),
            ValueError,
            "loss_evals=0; expected at least 1",
        ),
        (
            lambda losses: Estimate(losses[0], losses[0], losses, loss_evals=2, losses=None),
            TypeError,
            "returned no losses",
        ),
    ],
)
def test_result_is_checked(make, error, match) -> None:
    with pytest.raises(error, match=match):
        _Echo(make)(lg.Categorical(logits=_scores(3, 4)), _loss)


def test_wrong_loss_shape_is_reported_by_every_estimator() -> None:
    q = lg.Bernoulli(logits=_scores(3, 4))
    for est in (lg.ScoreFunction(2), lg.Marginalize(), lg.LocalReparam(), lg.DARN()):
        with pytest.raises(ValueError, match=r"loss_fn must return shape"):
            est(q, lambda z: z.sum(-1).sum(-1))


def test_estimate_without_estimate_is_not_implemented() -> None:
    with pytest.raises(NotImplementedError, match="Bare must implement _estimate"):

        class Bare(Estimator):
            pass

        Bare()(lg.Categorical(logits=_scores(3, 4)), _loss)


def test_from_terms_fills_the_typed_fields() -> None:
    w = torch.tensor(2.0, requires_grad=True)
    losses = torch.tensor([[1.0, 2.0], [3.0, 6.0]]) * w
    out = Estimate.from_terms(losses, losses=losses, loss_evals=2, extras={"note": 1})
    torch.testing.assert_close(out.value, torch.tensor([4.0, 8.0]))
    assert not out.value.requires_grad and not out.losses.requires_grad
    assert out.surrogate.requires_grad and out.extras == {"note": 1}
    exact = Estimate.from_terms(losses[:1], losses=losses, loss_evals=2, value=losses[0])
    torch.testing.assert_close(exact.value, losses[0].detach())
    assert "loss_evals" not in out.extras and "losses" not in out.extras
    with pytest.raises(TypeError, match="loss_evals"):
        Estimate(out.value, out.surrogate, out.per_sample, {"loss_evals": 2})  # type: ignore[call-arg]


# Every estimator of the library, with one small instance of every family: the call works
# exactly when the family declares what the estimator requires.
ESTIMATORS: dict[str, Callable[[], Estimator]] = {
    "score-function": lambda: lg.ScoreFunction(2, baseline=lg.LeaveOneOut()),
    "t-reinforce": lambda: lg.TReinforce(2),
    "e-reinforce": lambda: lg.EReinforce(2),
    "gumbel-softmax": lambda: lg.GumbelSoftmax(tau=0.5, num_samples=2),
    "gumbel-softmax-hard": lambda: lg.GumbelSoftmax(hard=True),
    "straight-through": lambda: lg.StraightThrough(),
    "straight-through-slope": lambda: lg.StraightThrough(slope=2.0),
    "muprop": lambda: lg.MuProp(2),
    "darn": lambda: lg.DARN(2),
    "local-reparam": lambda: lg.LocalReparam(),
    "marginalize": lambda: lg.Marginalize(),
    "sum-and-sample": lambda: lg.SumAndSample(k=1),
}

FAMILIES: dict[str, Callable[[], LatentDistribution]] = {
    "categorical": lambda: lg.Categorical(logits=_scores(2, 3)),
    "categorical-units": lambda: lg.Categorical(logits=_scores(2, 2, 3)).to_event(1),
    "sparsemax": lambda: lg.SparsemaxCategorical(_scores(2, 4)),
    "bernoulli": lambda: lg.Bernoulli(logits=_scores(2, 3)),
    "ksubset": lambda: lg.KSubset(_scores(2, 4), k=2),
    "spanning-tree": lambda: lg.SpanningTree(_scores(2, 4, 4)),
    "sparsemap": lambda: lg.SparseMAP(_scores(2, 4), BudgetBits(4, budget=2)),
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", ESTIMATORS)
def test_requires_decides_which_families_work(name: str, family: str) -> None:
    torch.manual_seed(0)
    est = ESTIMATORS[name]()
    assert isinstance(est, Estimator) and set(est.requires) <= set(CAPABILITIES)
    q = FAMILIES[family]()
    n_event = len(q.event_shape)

    def loss(z: Tensor) -> Tensor:
        return (z.to(F64) ** 2).flatten(z.dim() - n_event).sum(-1)

    if all(getattr(q, flag) for flag in est.requires):
        out = est(q, loss)
        assert out.value.shape == q.batch_shape and out.loss_evals >= 1
        assert out.losses is not None and out.losses.shape[1:] == q.batch_shape
    else:
        with pytest.raises(TypeError, match=f"{type(est).__name__} needs dist.has_"):
            est(q, loss)


def test_requires_follow_the_options() -> None:
    assert lg.ScoreFunction().requires == ()
    assert lg.ScoreFunction(score="trace").requires == ("has_trace",)
    assert lg.TReinforce().requires == lg.EReinforce().requires == ("has_trace",)
    assert lg.MuProp(score="trace").requires == ("has_mean_field", "has_trace")
    assert lg.StraightThrough().requires == ("has_mean_field",)
    assert lg.StraightThrough(slope=LinearGrowth(rate=0.1)).requires == (
        "has_mean_field",
        "has_logits",
    )
    assert lg.RELAX(lg.MLPCritic(3)).requires == ("has_trace", "has_conditional_noise")


def test_stateless_estimators_are_modules_without_state() -> None:
    for est in (lg.Marginalize(), lg.SumAndSample(k=2), lg.LocalReparam(3), lg.DARN(2)):
        assert isinstance(est, torch.nn.Module) and est.state_dict() == {}
    assert repr(lg.Marginalize()) == "Marginalize(max_support=65536)"
    assert repr(lg.SumAndSample(k=2)) == "SumAndSample(k=2, max_support=65536)"
    assert repr(lg.LocalReparam(3)) == "LocalReparam(num_samples=3)"


def test_sum_and_sample_of_the_whole_support_is_marginalize() -> None:
    logits = _scores(3, 4).requires_grad_(True)
    q = lg.Categorical(logits=logits)
    w = torch.arange(4.0, dtype=F64)

    def loss(z: Tensor) -> Tensor:
        return (z * w).sum(-1) ** 2

    exact = lg.Marginalize()(q, loss)
    summed = lg.SumAndSample(k=4)(q, loss)
    assert torch.equal(summed.value, exact.value) and torch.equal(summed.losses, exact.losses)
    (g_exact,) = torch.autograd.grad(exact.surrogate.sum(), logits)
    (g_summed,) = torch.autograd.grad(summed.surrogate.sum(), logits)
    assert torch.equal(g_summed, g_exact)
    assert summed.loss_evals == exact.loss_evals == 4
    assert float(summed.extras["rest_mass"].abs().sum()) == 0.0


def test_support_too_large_for_the_family_is_refused() -> None:
    q = lg.Bernoulli(logits=torch.zeros(1, 21))
    with pytest.raises(
        ValueError,
        match=r"Bernoulli cannot enumerate this support of \d+ values \(max_support_size=",
    ):
        lg.Marginalize(max_support=2**30)(q, lambda z: z.sum(-1))
    with pytest.raises(ValueError, match="more than max_support=65536"):
        lg.SumAndSample()(q, lambda z: z.sum(-1))


def test_scheduled_estimators_are_advanced_through_the_protocol() -> None:
    tau = LinearGrowth(initial=1.0, rate=0.5)
    estimators = [
        lg.GumbelSoftmax(tau=tau),
        lg.StraightThrough(slope=LinearGrowth(rate=0.5)),
        lg.ScoreFunction(),
        lg.Marginalize(),
    ]
    scheduled = [est for est in estimators if isinstance(est, Scheduled)]
    assert scheduled == estimators[:2]
    for est in scheduled:
        assert est.step() == 1.5 and est.step(2) == 2.5
    assert isinstance(tau, Scheduled) and lg.Scheduled is Scheduled
    assert estimators[0].tau == 2.5
