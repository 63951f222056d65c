"""The discrete VAE experiment (Jang et al. 2017, Table 1) at tiny size, on synthetic data."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch

import latentgrad as lg
from latentgrad.experiments.vae import (
    EXPERIMENT,
    DiscreteVAE,
    VAEConfig,
    VAETrainable,
    importance_weighted_bound,
)
from latentgrad.lab import ESTIMATORS, ExperimentConfig, ResolvedEstimator
from latentgrad.lab.registry import resolve_options, supported_estimators
from latentgrad.testing import ToySplits, noisy_patterns, toy_image_splits

D = 16


def patterns(n: int, seed: int) -> torch.Tensor:
    """``n`` noisy copies of 4 fixed binary prototypes: data a tiny VAE can learn."""
    return noisy_patterns(n, seed, image_shape=(4, 4), prototypes=4, noise=0.1)


def tiny_splits(binary: bool = True) -> ToySplits:
    """Splits of :func:`patterns`; unless ``binary``, grey levels the experiment must binarize."""
    return toy_image_splits((4, 4), prototypes=4, noise=0.1, sizes=(64, 24, 24), binary=binary)


def tiny_config(**overrides: object) -> VAEConfig:
    settings: dict[str, object] = {
        "num_categoricals": 2,
        "num_classes": 3,
        "num_bits": 4,
        "decoder_hidden": (8,),
        "batch_size": 16,
        "eval_samples": 16,
        "valid_samples": 8,
    }
    settings.update(overrides)
    return VAEConfig(**settings)  # type: ignore[arg-type]


def resolved(config: VAEConfig) -> ResolvedEstimator:
    """What the runner hands the experiment: ``config.estimator`` resolved, built."""
    return ESTIMATORS[config.estimator].resolve(config.estimator)


def make(config: VAEConfig, data: ToySplits) -> VAETrainable:
    return VAETrainable(config, resolved(config), data)


CASES = [
    (latent, name)
    for latent in ("categorical", "bernoulli")
    for name in supported_estimators(EXPERIMENT)
    if ESTIMATORS[name].latent
    != {"categorical": "topk-sparsemax", "bernoulli": "sparsemax"}[latent]
]


def test_vae_offers_only_the_latent_families_it_builds():
    offered = supported_estimators(EXPERIMENT)
    assert "sparsemap" not in offered and "relax" not in offered and "e-reinforce" not in offered
    assert {"sparsemax", "topk-sparsemax", "gs", "local-reparam"} <= set(offered)


@pytest.mark.parametrize(("latent", "name"), CASES)
def test_every_estimator_trains_and_evaluates(latent, name):
    torch.manual_seed(0)
    trainable = make(tiny_config(estimator=name, latent=latent), tiny_splits())
    batches = iter(trainable.train_batches(0))
    for _ in range(3):
        metrics = trainable.train_step(next(batches))
    assert set(metrics) >= {"loss", "loss_evals", "kl"}
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["loss_evals"] >= 1 and metrics["kl"] >= -1e-5
    for split in ("valid", "test"):
        result = trainable.evaluate(split)
        assert set(result) == {"nll", "elbo", "kl"}
        assert all(math.isfinite(v) for v in result.values())
        assert result["nll"] > 0


def test_sparsemax_uses_the_sparse_latent_and_sums_its_support():
    torch.manual_seed(0)
    trainable = make(tiny_config(estimator="sparsemax"), tiny_splits())
    q = trainable.model.posterior(trainable.data.train[:4])
    assert type(q.base_dist).__name__ == "SparsemaxCategorical"
    metrics = trainable.train_step(trainable.data.train[:16])
    assert 1 <= metrics["loss_evals"] <= 3**2


def test_loss_decreases():
    torch.manual_seed(0)
    trainable = make(tiny_config(estimator="sf-loo", lr=1e-2), tiny_splits())
    losses = [
        trainable.train_step(batch)["loss"]
        for epoch in range(13)
        for batch in trainable.train_batches(epoch)
    ][:50]
    assert len(losses) == 50
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first - 1.0, (first, last)


def sharp_model(seed: int = 0) -> DiscreteVAE:
    """A random VAE whose decoder depends strongly on z, so importance sampling matters."""
    torch.manual_seed(seed)
    model = DiscreteVAE(D, (3, 4), (), (8,), "tanh")
    with torch.no_grad():
        model.decoder[0].weight.mul_(4.0)
        model.decoder[2].weight.mul_(4.0)
    return model


def test_bound_tightens_with_more_samples():
    model, x = sharp_model(), patterns(200, 4)
    torch.manual_seed(1)
    means = [float(importance_weighted_bound(model, x, k).iwae.mean()) for k in (1, 10, 100)]
    assert means[0] + 0.5 < means[1] < means[2], means


def test_one_sample_bound_is_an_unbiased_elbo_and_many_samples_beat_it():
    model, x = sharp_model(), patterns(400, 5)
    torch.manual_seed(2)
    one = importance_weighted_bound(model, x, 1)
    gap = one.iwae - one.elbo  # mean 0: a single-sample ELBO minus the analytic-KL ELBO
    se = float(gap.std()) / math.sqrt(gap.numel())
    assert abs(float(gap.mean())) < 4 * se + 1e-6
    many = importance_weighted_bound(model, x, 1000)
    slack = many.iwae - many.elbo
    spread = 4 * float(slack.std()) / math.sqrt(slack.numel())
    assert float(slack.mean()) > -spread
    assert float(slack.mean()) > 0.5  # a loose posterior: importance sampling helps a lot


def test_bound_does_not_depend_on_the_chunking():
    model, x = sharp_model(), patterns(7, 6)
    torch.manual_seed(3)
    a = importance_weighted_bound(model, x, 50, chunk=10**6)
    torch.manual_seed(3)
    b = importance_weighted_bound(model, x, 50, chunk=10**6)
    c = importance_weighted_bound(model, x, 50, chunk=3)  # 1 example, 3 samples per pass
    torch.testing.assert_close(a.iwae, b.iwae)
    # The KL is computed in float32 (then widened) by kernels that depend on the batch size and
    # the CPU's vector width, so it agrees to float32 rounding of a sum over log |Z| nats.
    tol = 16 * torch.finfo(torch.float32).eps * max(1.0, model.log_num_values)
    torch.testing.assert_close(a.kl, c.kl, rtol=0, atol=tol)
    assert c.iwae.shape == (7,) and torch.isfinite(c.iwae).all()
    assert (a.iwae - c.iwae).abs().max() < 2.0  # same quantity, different samples


@pytest.mark.parametrize("latent", ["categorical", "bernoulli"])
def test_loss_fn_accepts_extra_leading_dims(latent):
    torch.manual_seed(0)
    trainable = make(tiny_config(latent=latent), tiny_splits())
    model, x = trainable.model, trainable.data.train[:5]
    q = model.posterior(x)
    z = q.sample((3, 2))
    loss_fn = model.reconstruction_loss(x)
    losses = loss_fn(z)
    assert losses.shape == (3, 2, 5)
    torch.testing.assert_close(losses[1, 0], loss_fn(z[1, 0]))
    logits = model.decode(z[1, 0])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, x, reduction="none"
    ).sum(-1)
    torch.testing.assert_close(losses[1, 0], expected)


@pytest.mark.parametrize("latent", ["categorical", "bernoulli"])
def test_kl_is_against_the_uniform_prior(latent):
    torch.manual_seed(0)
    model = make(tiny_config(latent=latent), tiny_splits()).model
    q = model.posterior(patterns(5, 7))
    if latent == "categorical":
        prior = type(q.base_dist)(logits=torch.zeros(5, 2, 3)).to_event(1)
    else:
        prior = type(q)(logits=torch.zeros(5, 4))
    expected = torch.distributions.kl_divergence(q, prior)
    torch.testing.assert_close(model.kl_to_prior(q), expected)
    z = q.sample((4,))
    torch.testing.assert_close(
        prior.log_prob(z), torch.full((4, 5), -model.log_num_values), atol=1e-5, rtol=0
    )


def test_gumbel_softmax_temperature_is_stepped():
    torch.manual_seed(0)
    trainable = make(tiny_config(estimator="gs"), tiny_splits())
    estimator = trainable.estimator
    batch = trainable.data.train[:16]
    trainable.train_step(batch)
    assert int(estimator.tau_schedule.step_count) == 1
    tau = estimator.tau
    estimator.step(998)  # the registry's schedule changes every 1000 steps
    trainable.train_step(batch)
    assert int(estimator.tau_schedule.step_count) == 1000
    assert estimator.tau < tau


def test_slope_is_stepped_for_annealed_straight_through():
    torch.manual_seed(0)
    trainable = make(tiny_config(estimator="annealed-st"), tiny_splits())
    slope = trainable.estimator.slope
    for _ in range(3):
        trainable.train_step(trainable.data.train[:16])
    assert trainable.estimator.slope > slope


def test_optimizer_covers_the_nvil_network():
    trainable = make(tiny_config(estimator="nvil"), tiny_splits())
    optimized = {id(p) for group in trainable.optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in trainable.estimator.parameters()} <= optimized
    assert {id(p) for p in trainable.model.parameters()} <= optimized
    assert set(trainable.modules) == {"model", "estimator"}
    network = trainable.estimator.baseline.network
    trainable.train_step(trainable.data.train[:16])  # sizes the network's input on first use
    assert network[0].weight.shape == (100, D)
    before = [p.detach().clone() for p in network.parameters()]
    trainable.train_step(trainable.data.train[:16])
    assert any(not torch.equal(a, b) for a, b in zip(before, network.parameters(), strict=True))


def test_stateless_estimators_add_no_state():
    trainable = make(tiny_config(estimator="local-reparam"), tiny_splits())
    assert set(trainable.modules) == {"model", "estimator"}
    assert not trainable.modules["estimator"].state_dict()
    assert set(trainable.modules.state_dict()) == {
        f"model.{k}" for k in trainable.model.state_dict()
    }


@pytest.mark.parametrize("name", ["nvil", "gs", "sf-ma"])
def test_state_dict_round_trip(name):
    torch.manual_seed(0)
    data = tiny_splits()
    source = make(tiny_config(estimator=name), data)
    for batch in source.train_batches(0):
        source.train_step(batch)
    torch.manual_seed(1)
    target = make(tiny_config(estimator=name), data)
    target.modules.load_state_dict(source.modules.state_dict())
    target.optimizer.load_state_dict(source.optimizer.state_dict())
    for key, value in source.modules.state_dict().items():
        assert torch.equal(value, target.modules.state_dict()[key]), key
    assert source.evaluate("test") == target.evaluate("test")
    torch.manual_seed(2)
    a = source.train_step(data.train[:16])
    torch.manual_seed(2)
    b = target.train_step(data.train[:16])
    assert a == b


def test_train_batches_cover_the_training_set_once():
    trainable = make(tiny_config(batch_size=24), tiny_splits())
    torch.manual_seed(0)
    batches = list(trainable.train_batches(0))
    assert [len(b) for b in batches] == [24, 24, 16]
    rows = sorted(map(tuple, torch.cat(batches).tolist()))
    assert rows == sorted(map(tuple, trainable.data.train.tolist()))
    capped = make(tiny_config(batch_size=8, max_steps_per_epoch=2), tiny_splits())
    assert len(list(capped.train_batches(0))) == 2


def test_evaluate_is_deterministic_and_keeps_the_global_rng():
    trainable = make(tiny_config(max_eval_examples=10), tiny_splits())
    torch.manual_seed(5)
    state = torch.get_rng_state()
    first = trainable.evaluate("test")
    assert torch.equal(torch.get_rng_state(), state)
    assert trainable.evaluate("test") == first
    assert trainable._eval_data("test").shape == (10, D)
    with pytest.raises(ValueError, match="split"):
        trainable.evaluate("validation")


@pytest.fixture
def fake_data(monkeypatch):
    """A stand-in ``latentgrad.data`` module that records its calls."""
    module = types.ModuleType("latentgrad.data")
    calls: list[tuple[str, object]] = []

    def load_dataset(name, data_dir=None, download=True):
        calls.append((name, data_dir))
        return tiny_splits(binary=name != "mnist")

    def dynamic_binarize(x, generator=None):
        calls.append(("binarize", generator))
        return torch.bernoulli(x, generator=generator)

    module.load_dataset = load_dataset  # type: ignore[attr-defined]
    module.dynamic_binarize = dynamic_binarize  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "latentgrad.data", module)
    return calls


def test_build_loads_the_configured_dataset(fake_data):
    config = tiny_config(dataset="binarized-mnist", data="/some/dir")
    trainable = EXPERIMENT.build(config, resolved(config))
    assert fake_data == [("binarized-mnist", "/some/dir")]
    trainable.train_step(next(iter(trainable.train_batches(0))))
    assert fake_data == [("binarized-mnist", "/some/dir")]  # binary data: no binarization


def test_non_binary_data_are_binarized(fake_data):
    torch.manual_seed(0)
    config = tiny_config(dataset="mnist", estimator="sf-loo")
    trainable = EXPERIMENT.build(config, resolved(config))
    assert not trainable.data.binary
    trainable.train_step(trainable.data.train[:16])
    assert fake_data[-1] == ("binarize", None)  # a fresh draw from the global RNG
    x = trainable._eval_data("valid")
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(trainable._eval_data("valid"), x)  # binarized once, then cached
    assert math.isfinite(trainable.evaluate("valid")["nll"])


def test_build_on_the_embedded_digits():
    pytest.importorskip("numpy")  # latentgrad.data reads with numpy
    pytest.importorskip("sklearn")  # the digits come with scikit-learn
    torch.manual_seed(0)
    config = tiny_config(dataset="digits", max_steps_per_epoch=2, max_eval_examples=20)
    trainable = EXPERIMENT.build(config, resolved(config))
    for batch in trainable.train_batches(0):
        assert batch.shape == (16, 64)
        trainable.train_step(batch)
    assert math.isfinite(trainable.evaluate("test")["nll"])


def test_errors_are_clear():
    data = tiny_splits()
    with pytest.raises(ValueError, match="sparsemax"):
        make(tiny_config(estimator="sparsemax", latent="bernoulli"), data)
    with pytest.raises(ValueError, match="max_support"):
        make(tiny_config(estimator="exact", num_categoricals=20, num_classes=10), data)
    with pytest.raises(ValueError, match="max_support"):
        make(tiny_config(estimator="sum-and-sample", latent="bernoulli", num_bits=200), data)
    with pytest.raises(ValueError, match="latent"):
        make(tiny_config(latent="gaussian"), data)
    with pytest.raises(ValueError, match="activation"):
        make(tiny_config(activation="sigmoid"), data)
    with pytest.raises(ValueError, match="num_classes"):
        make(tiny_config(num_classes=1), data)


def test_paper_defaults_and_architecture():
    config = VAEConfig()
    assert isinstance(config, ExperimentConfig)
    assert (config.latent, config.num_categoricals, config.num_classes) == ("categorical", 20, 10)
    assert (config.num_bits, config.dataset, config.batch_size) == (200, "binarized-mnist", 100)
    assert (config.lr, config.eval_samples, config.optimizer) == (1e-3, 1000, "adam")
    data = ToySplits(torch.zeros(4, 784), torch.zeros(2, 784), torch.zeros(2, 784), True, (28, 28))
    categorical = make(VAEConfig(), data).model
    widths = [m.out_features for m in categorical.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [200, 200, 784]  # 784-(20x10)-200-784
    bernoulli = make(VAEConfig(latent="bernoulli"), data).model
    widths = [m.out_features for m in bernoulli.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [200, 784]  # 784-200-784
    sgd = make(VAEConfig(optimizer="sgd"), data).optimizer
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.9


def test_experiment_is_registered():
    from latentgrad.lab import all_experiments

    assert all_experiments()["vae"] is EXPERIMENT
    assert EXPERIMENT.config_class is VAEConfig and EXPERIMENT.primary_metric == "nll"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_classes", 1),
        ("num_bits", 0),
        ("valid_samples", 0),
        ("encoder_hidden", (4, 0)),
        ("latent", "gaussian"),
        ("max_eval_examples", 0),
        ("batch_size", 0),
        ("lr", float("nan")),
    ],
)
def test_validate_names_the_field_out_of_range(field, value):
    from latentgrad.lab.config import InvalidConfigValue

    with pytest.raises(InvalidConfigValue) as info:
        tiny_config(**{field: value}).validate()
    assert info.value.field == field
    tiny_config().validate()  # the defaults pass


def test_topk_sparsemax_sums_at_most_k_bit_vectors():
    torch.manual_seed(0)
    options = resolve_options("topk-sparsemax", {"k": 4})
    chosen = ESTIMATORS["topk-sparsemax"].resolve("topk-sparsemax", options)
    assert chosen.latent_options == {"k": 4}
    trainable = VAETrainable(tiny_config(latent="bernoulli"), chosen, tiny_splits())
    assert isinstance(trainable.model.posterior(tiny_splits().train[:3]), lg.TopKSparsemax)
    metrics = trainable.train_step(next(iter(trainable.train_batches(0))))
    assert 1 <= metrics["loss_evals"] <= 4
    assert all(math.isfinite(v) for v in trainable.evaluate("test").values())
    with pytest.raises(ValueError, match="needs bits"):
        VAETrainable(tiny_config(latent="categorical"), chosen, tiny_splits())
