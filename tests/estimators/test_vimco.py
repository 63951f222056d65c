"""Tests of VIMCO: unbiased for the gradient of the K-sample bound (against enumeration of all
K-tuples), the leave-one-out geometric-mean baseline by hand, numerics, bad input, and the VAE's
IWAE objective."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

import latentgrad as lg
from latentgrad.estimators import VIMCO
from latentgrad.estimators.vimco import leave_one_out_bounds
from latentgrad.testing import (
    assert_unbiased,
    brute_force_support,
    check_unbiased,
    replicated_gradients,
)
from latentgrad.testing.extremes import FLOAT_DTYPES, check_finite_on_extreme_logits

F64 = torch.float64
REPLICATES = 4000

#: name -> (logits, make, event dims): small latents whose support^K is small.
PROBLEMS: dict[str, tuple[Tensor, Callable[[Tensor], lg.Estimator], int]] = {
    "categorical": (
        torch.tensor([[0.3, -0.5, 1.0], [-1.0, 0.4, 0.0]], dtype=F64),
        lambda x: lg.Categorical(logits=x),
        1,
    ),
    "units": (
        torch.tensor([[[0.5, -0.2], [1.0, 0.3]]], dtype=F64),
        lambda x: lg.Categorical(logits=x).to_event(1),
        2,
    ),
    "bernoulli": (torch.tensor([[0.2, -0.7]], dtype=F64), lambda x: lg.Bernoulli(logits=x), 1),
}


def _neg_log_weight(q: object, theta: Tensor, event_ndim: int) -> Callable[[Tensor], Tensor]:
    """``-log w(z) = f_theta(z) + log q(z)``: depends on q's parameters through ``log q`` too,
    as an IWAE's does, so the pathwise part of VIMCO is tested."""

    def loss_fn(z: Tensor) -> Tensor:
        flat = z.flatten(z.dim() - event_ndim)
        c = torch.linspace(-1.0, 2.0, flat.shape[-1], dtype=F64)
        s = (flat * c).sum(-1)
        return (s - theta) ** 2 + torch.sin(2 * s) * theta + q.log_prob(z)  # type: ignore[attr-defined]

    return loss_fn


def _exact_bound_gradient(name: str, k: int, theta: Tensor) -> tuple[Tensor, Tensor]:
    """``E[F(z_1..K)]`` over every K-tuple of the support, and its gradient w.r.t. (logits, theta)."""
    logits, make, event_ndim = PROBLEMS[name]
    phi = logits.clone().requires_grad_(True)
    t = theta.clone().requires_grad_(True)
    q = make(phi)
    values, probs = brute_force_support(q)  # (S,) + B + E, (S,) + B
    size = values.shape[0]
    tuples = torch.tensor(list(itertools.product(range(size), repeat=k)))  # (S^K, K)
    z = values[tuples]  # (S^K, K) + B + E
    losses = _neg_log_weight(q, t, event_ndim)(z)  # (S^K, K) + B
    bound = math.log(k) - torch.logsumexp(-losses, 1)  # (S^K,) + B
    weight = probs[tuples].prod(1)
    expected = (weight * bound).sum(0)
    grads = torch.autograd.grad(expected.sum(), [phi, t])
    return expected.detach(), torch.cat([grads[0].flatten(), grads[1].reshape(1)])


def _replicated(
    name: str, estimator: Callable[..., lg.Estimate], theta: Tensor, num: int
) -> Tensor:
    logits, make, event_ndim = PROBLEMS[name]
    n = logits.numel()

    def surrogate(rep: Tensor) -> Tensor:
        rep_logits = rep[:, :n].reshape((rep.shape[0], *logits.shape))
        rep_t = rep[:, n].reshape(-1, *[1] * (logits.dim() - event_ndim))
        q = make(rep_logits)
        out = estimator(q, _neg_log_weight(q, rep_t, event_ndim))
        return out.surrogate.reshape(rep.shape[0], -1).sum(1)

    param = torch.cat([logits.flatten(), theta.reshape(1)])
    return replicated_gradients(surrogate, param, num)


@pytest.mark.stat
@pytest.mark.parametrize("name", sorted(PROBLEMS))
@pytest.mark.parametrize("k", [2, 3])
def test_unbiased_for_the_multi_sample_bound(name: str, k: int) -> None:
    torch.manual_seed(0)
    theta = torch.tensor(0.7, dtype=F64)
    _, expected = _exact_bound_gradient(name, k, theta)
    grads = _replicated(name, VIMCO(num_samples=k), theta, REPLICATES)
    assert torch.isfinite(grads).all()
    assert grads.var(0).sum() > 0
    assert_unbiased(grads, expected, name=f"VIMCO(K={k}) on {name}")


@pytest.mark.stat
def test_value_is_unbiased_for_the_bound() -> None:
    torch.manual_seed(0)
    logits, make, _ = PROBLEMS["categorical"]
    theta = torch.tensor(0.7, dtype=F64)
    expected, _ = _exact_bound_gradient("categorical", 3, theta)
    q = make(logits.expand(REPLICATES, *logits.shape))
    out = VIMCO(num_samples=3)(q, _neg_log_weight(q, theta, 1))
    assert_unbiased(out.value, expected, name="VIMCO's value")


@pytest.mark.stat
def test_unbiasedness_check_has_power() -> None:
    """Dropping the pathwise part (the weights w~_k times grad loss) is biased, and detected."""
    torch.manual_seed(0)
    theta = torch.tensor(0.7, dtype=F64)
    _, expected = _exact_bound_gradient("categorical", 3, theta)

    def score_only(dist: lg.Categorical, loss_fn: Callable[[Tensor], Tensor]) -> lg.Estimate:
        return VIMCO(num_samples=3)(dist, lambda z: loss_fn(z).detach())

    grads = _replicated("categorical", score_only, theta, REPLICATES)
    assert not check_unbiased(grads, expected).passed


def test_leave_one_out_baseline_by_hand() -> None:
    log_w = torch.tensor([[-1.0, 2.0], [0.5, 2.0], [3.0, 2.0], [-2.0, 2.0]], dtype=F64)
    got = leave_one_out_bounds(log_w)
    for b in range(2):
        column = log_w[:, b].tolist()
        for k in range(4):
            others = [w for j, w in enumerate(column) if j != k]
            geometric = sum(others) / 3  # log of the others' geometric mean
            total = sum(math.exp(w) for w in others) + math.exp(geometric)
            assert got[k, b].item() == pytest.approx(-math.log(total / 4), abs=1e-12)
    # Equal log-weights: every baseline is the bound itself (no signal).
    assert torch.allclose(got[:, 1], torch.full((4,), -2.0, dtype=F64))


def test_estimate_contract_and_signal_by_hand() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 4, dtype=F64, requires_grad=True)
    nll = torch.tensor([1.0, 3.0, 0.5, 2.0], dtype=F64)
    seen: list[Tensor] = []
    q = lg.Categorical(logits=logits)

    def loss_fn(z: Tensor) -> Tensor:
        seen.append(z)
        return (z * nll).sum(-1) + q.log_prob(z)

    out = VIMCO(num_samples=4)(q, loss_fn)
    assert [tuple(z.shape) for z in seen] == [(4, 5, 4)]
    assert out.loss_evals == 4 and out.losses.shape == (4, 5)
    assert out.per_sample.shape == (1, 5) and out.value.shape == (5,)
    assert not out.value.requires_grad
    log_w = -out.losses
    bound = math.log(4) - log_w.logsumexp(0)
    torch.testing.assert_close(out.value, bound)
    torch.testing.assert_close(out.surrogate.detach(), bound)
    weights = torch.softmax(log_w, 0)
    torch.testing.assert_close(out.extras["weights"], weights)
    torch.testing.assert_close(out.extras["baseline"], leave_one_out_bounds(log_w))
    # The gradient by hand: sum_k (F - F_-k) grad log q(z_k) + sum_k w~_k grad loss(z_k), with
    # grad loss(z_k) = grad log q(z_k) = z_k - softmax(logits) here.
    (grad,) = torch.autograd.grad(out.surrogate.sum(), logits)
    score = seen[0] - torch.softmax(logits.detach(), -1)  # (4, 5, 4)
    signal = bound - leave_one_out_bounds(log_w)  # (4, 5)
    expected = ((signal + weights).unsqueeze(-1) * score).sum(0)
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_extreme_logits_stay_finite(dtype: torch.dtype) -> None:
    """With ``log q(z)`` in the loss, as in the IWAE bound VIMCO is made for."""
    torch.manual_seed(0)
    check_finite_on_extreme_logits(lambda: VIMCO(num_samples=3), dtype, with_log_prob=True)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_samples"):
        VIMCO(num_samples=1)
    with pytest.raises(TypeError, match="num_samples"):
        VIMCO(num_samples=2.0)  # type: ignore[arg-type]
    est = VIMCO(num_samples=3)
    q = lg.Categorical(logits=torch.zeros(2, 3))
    with pytest.raises(TypeError, match="dist"):
        est(torch.distributions.Categorical(logits=torch.zeros(2, 3)), lambda z: z)
    with pytest.raises(TypeError, match="loss_fn"):
        est(q, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="loss_fn"):
        est(q, lambda z: z.sum((-1, -2)))


# -- the VAE's IWAE objective -------------------------------------------------------------------


def _tiny_vae(objective: str, estimator: str, latent: str = "categorical", **options: object):
    from latentgrad.experiments.vae import VAEConfig, VAETrainable
    from latentgrad.lab import ESTIMATORS
    from latentgrad.lab.registry import resolve_options
    from latentgrad.testing import toy_image_splits

    config = VAEConfig(
        estimator=estimator,
        objective=objective,  # type: ignore[arg-type]
        latent=latent,  # type: ignore[arg-type]
        num_categoricals=2,
        num_classes=3,
        num_bits=4,
        decoder_hidden=(8,),
        batch_size=16,
        eval_samples=16,
        valid_samples=8,
    )
    data = toy_image_splits((4, 4), prototypes=4, noise=0.1, sizes=(64, 24, 24))
    chosen = ESTIMATORS[estimator].resolve(estimator, resolve_options(estimator, options))
    return VAETrainable(config, chosen, data)


@pytest.mark.parametrize("latent", ["categorical", "bernoulli"])
@pytest.mark.parametrize("objective", ["auto", "iwae"])
def test_vae_trains_on_the_iwae_bound_with_vimco(latent: str, objective: str) -> None:
    torch.manual_seed(0)
    trainable = _tiny_vae(objective, "vimco", latent, num_samples=3)
    batch = next(iter(trainable.train_batches(0)))
    x = trainable.images.binarize(batch)
    metrics = trainable.train_step(batch)
    assert metrics["loss_evals"] == 3 and all(math.isfinite(v) for v in metrics.values())
    # The reported loss is the negative 3-sample bound, at least -log p(x) on average.
    with torch.no_grad():
        q = trainable.model.posterior(x)
        out = trainable.estimator(q, trainable.training_loss(x, q))
        assert out.value.shape == (x.shape[0],)
    assert all(math.isfinite(v) for v in trainable.evaluate("test").values())


def test_vae_iwae_loss_is_the_negative_log_weight() -> None:
    torch.manual_seed(0)
    trainable = _tiny_vae("iwae", "vimco")
    x = torch.rand(5, 16).bernoulli()
    q = trainable.model.posterior(x)
    z = q.sample((2,))
    expected = (
        trainable.model.reconstruction_loss(x)(z) + trainable.model.log_num_values + q.log_prob(z)
    )
    torch.testing.assert_close(trainable.training_loss(x, q)(z), expected)


@pytest.mark.parametrize(
    ("objective", "estimator", "message"),
    [("iwae", "sf-loo", "objective"), ("elbo", "vimco", "objective")],
)
def test_vae_refuses_an_estimator_of_another_objective(
    objective: str, estimator: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        _tiny_vae(objective, estimator)
