"""Tests of the structured output prediction experiment (Jang et al. 2017, Table 1, SBN rows)."""

from __future__ import annotations

import math

import pytest
import torch

from latentgrad.experiments.structured_output import (
    ESTIMATORS as SUPPORTED,
)
from latentgrad.experiments.structured_output import (
    EXPERIMENT,
    StochasticNet,
    StructuredOutputConfig,
    StructuredOutputTrainable,
    predictive_nll,
    split_halves,
)
from latentgrad.lab import ESTIMATORS, ResolvedEstimator
from latentgrad.lab.catalog import all_experiments
from latentgrad.lab.config import InvalidConfigValue
from latentgrad.testing import ToySplits, noisy_patterns, toy_image_splits


def patterns(n: int, seed: int) -> torch.Tensor:
    """Noisy copies of 4 prototypes whose lower half is determined by the upper half."""
    return noisy_patterns(n, seed, image_shape=(4, 4), prototypes=4, noise=0.05)


def tiny_splits() -> ToySplits:
    return toy_image_splits((4, 4), prototypes=4, noise=0.05, sizes=(64, 24, 24))


def tiny_config(**overrides: object) -> StructuredOutputConfig:
    settings: dict[str, object] = {
        "num_bits": 5,
        "num_categoricals": 2,
        "num_classes": 3,
        "batch_size": 16,
        "eval_samples": 16,
        "valid_samples": 8,
    }
    settings.update(overrides)
    return StructuredOutputConfig(**settings)  # type: ignore[arg-type]


def make(
    config: StructuredOutputConfig, data: ToySplits | None = None
) -> StructuredOutputTrainable:
    chosen = ESTIMATORS[config.estimator].resolve(config.estimator)
    data = tiny_splits() if data is None else data
    return StructuredOutputTrainable(config, chosen, data, data.image_shape)


@pytest.mark.parametrize("latent", ["bernoulli", "categorical"])
@pytest.mark.parametrize("name", SUPPORTED)
def test_every_estimator_trains_and_evaluates(latent: str, name: str) -> None:
    torch.manual_seed(0)
    trainable = make(tiny_config(estimator=name, latent=latent))
    batches = iter(trainable.train_batches(0))
    for _ in range(3):
        metrics = trainable.train_step(next(batches))
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["loss_evals"] >= 1
    for split in ("valid", "test"):
        result = trainable.evaluate(split)
        assert set(result) == {"nll", "expected_nll"}
        assert 0 < result["nll"] <= result["expected_nll"] + 1e-9


def record_loss_calls(trainable: StructuredOutputTrainable) -> list[tuple[int, ...]]:
    """The shapes of the samples ``z`` of every later call of the network's loss."""
    calls: list[tuple[int, ...]] = []
    nll = trainable.net.nll

    def counting(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(z.shape))
        return nll(z, x)

    trainable.net.nll = counting  # type: ignore[method-assign,assignment]
    return calls


def test_local_marginalization_flips_every_unit_of_both_layers_in_one_loss_call() -> None:
    torch.manual_seed(0)
    trainable = make(tiny_config(estimator="local-reparam", latent="categorical"))
    calls = record_loss_calls(trainable)
    metrics = trainable.train_step(next(iter(trainable.train_batches(0))))
    variants = 2 * (3 - 1)  # per layer: 2 units, 2 other classes each
    assert metrics["loss_evals"] == 1 + 2 * variants
    assert calls == [(1 + 2 * variants, 1, 16, 2, 3)]


@pytest.mark.parametrize("name", ["sf-loo", "gs", "muprop"])
def test_nested_estimators_call_the_loss_once(name: str) -> None:
    torch.manual_seed(0)
    trainable = make(tiny_config(estimator=name))
    calls = record_loss_calls(trainable)
    metrics = trainable.train_step(next(iter(trainable.train_batches(0))))
    assert len(calls) == 1
    rows = math.prod(calls[0][:-2])
    assert metrics["loss_evals"] == rows


def test_loss_decreases_with_gumbel_softmax() -> None:
    torch.manual_seed(0)
    trainable = make(tiny_config(estimator="gs", lr=3e-2))
    before = trainable.evaluate("valid")["nll"]
    for epoch in range(40):
        for batch in trainable.train_batches(epoch):
            trainable.train_step(batch)
    assert trainable.evaluate("valid")["nll"] < before - 2.0


def test_every_layer_of_the_network_learns() -> None:
    torch.manual_seed(0)
    trainable = make(tiny_config(estimator="sf-loo"))
    trainable.train_step(next(iter(trainable.train_batches(0))))
    for name, p in trainable.net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_predictive_bound_tightens_and_does_not_depend_on_chunking() -> None:
    torch.manual_seed(0)
    net = StochasticNet(8, 8, (6,), layers=2)
    x = patterns(10, 4)
    upper, lower = split_halves(x, (4, 4))
    torch.manual_seed(1)
    a, _ = predictive_nll(net, upper, lower, 64)
    torch.manual_seed(1)
    b, _ = predictive_nll(net, upper, lower, 64, chunk=64 * 10)
    torch.testing.assert_close(a, b)
    torch.manual_seed(2)
    one, expected = predictive_nll(net, upper, lower, 1)
    torch.testing.assert_close(one, expected)


def test_split_halves_rows() -> None:
    x = torch.arange(2 * 35.0).view(2, 35)
    upper, lower = split_halves(x, (5, 7))
    assert upper.shape == (2, 14) and lower.shape == (2, 21)
    assert torch.equal(torch.cat([upper, lower], -1), x)


def test_paper_defaults_and_architecture() -> None:
    config = StructuredOutputConfig()
    assert (config.layers, config.num_bits, config.num_categoricals, config.num_classes) == (
        2,
        200,
        20,
        10,
    )
    assert config.dataset == "binarized-mnist" and config.eval_samples == 1000
    net = StochasticNet(392, 392, (20, 10), layers=2)
    shapes = [tuple(p.shape) for p in net.parameters() if p.dim() == 2]
    assert shapes == [(200, 392), (200, 200), (392, 200)]


def test_experiment_is_registered_with_its_estimators() -> None:
    assert all_experiments()["structured-output"] is EXPERIMENT
    assert EXPERIMENT.estimators == SUPPORTED
    assert "exact" not in SUPPORTED and "local-reparam" in SUPPORTED


@pytest.mark.parametrize(
    ("field", "value"), [("layers", 0), ("num_bits", 0), ("num_classes", 1), ("latent", "x")]
)
def test_validate_names_the_field(field: str, value: object) -> None:
    with pytest.raises(InvalidConfigValue, match=field):
        tiny_config(**{field: value}).validate()


def test_state_dict_round_trip_keeps_each_layers_baseline() -> None:
    torch.manual_seed(0)
    trainable = make(tiny_config(estimator="nvil"))
    trainable.train_step(next(iter(trainable.train_batches(0))))
    state = trainable.modules.state_dict()
    assert any(k.startswith("estimator.layers.1.") for k in state)
    again = make(tiny_config(estimator="nvil"))
    again.train_step(next(iter(again.train_batches(0))))  # materialize the lazy layers
    again.modules.load_state_dict(state)
    for k, v in again.modules.state_dict().items():
        torch.testing.assert_close(v, state[k])


def test_build_on_the_embedded_digits() -> None:
    config = tiny_config(dataset="digits", max_eval_examples=20)
    chosen: ResolvedEstimator = ESTIMATORS["gs"].resolve("gs")
    trainable = EXPERIMENT.build(config, chosen)
    assert isinstance(trainable, StructuredOutputTrainable)
    assert trainable.net.input.in_features == 32 and trainable.net.output.out_features == 32
    assert math.isfinite(trainable.evaluate("test")["nll"])
