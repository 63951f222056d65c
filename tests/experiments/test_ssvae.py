"""Tests of the semi-supervised VAE experiment (Kingma's M2; Correia et al. 2020, Jang et al. 2017)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from latentgrad.cli import main
from latentgrad.data import DataSplits
from latentgrad.estimators import PackedLoss
from latentgrad.experiments import ssvae
from latentgrad.experiments.ssvae import (
    EXPERIMENT,
    M2,
    SSVAEConfig,
    SSVAETrainable,
    labelled_split,
    unlabelled_nelbo,
)
from latentgrad.lab import ESTIMATORS
from latentgrad.lab.catalog import all_experiments
from latentgrad.lab.config import InvalidConfigValue
from latentgrad.lab.runner import run
from latentgrad.testing import toy_image_splits

#: Decoder calls per unlabelled image of the sampling estimators (their registry defaults):
#: SFE+ and a Gumbel-Softmax with an honest value evaluate a second sample, Sum&Sample sums
#: the top class and samples one more.
SAMPLED_EVALS = {
    "sf": 1,
    "sf-ma": 1,
    "sfe+": 2,
    "nvil": 1,
    "gs": 2,
    "st-gs": 1,
    "sum-and-sample": 2,
}


def tiny_config(**overrides: object) -> SSVAEConfig:
    settings: dict[str, object] = {
        "dataset": "digits",
        "epochs": 2,
        "warmup_epochs": 1,
        "batch_size": 16,
        "num_labelled": 50,
        "latent_dim": 2,
        "classifier_hidden": (16,),
        "encoder_hidden": (16,),
        "decoder_hidden": (16,),
        "max_eval_examples": 40,
        "eval_samples": 2,
    }
    settings.update(overrides)
    return SSVAEConfig(**settings)  # type: ignore[arg-type]


def make(config: SSVAEConfig, data: object) -> SSVAETrainable:
    chosen = ESTIMATORS[config.estimator].resolve(config.estimator)
    return SSVAETrainable(config, chosen, data)  # type: ignore[arg-type]


def brute_force_nelbo(model: M2, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``sum_c q(c | x) f(x, e_c) + sum_c q(c | x) log(K q(c | x))``, every class, by hand."""
    k = model.num_classes
    q = model.posterior(x).probs.double()
    total = torch.zeros(x.shape[0], dtype=torch.float64)
    for c in range(k):
        y = F.one_hot(torch.full((x.shape[0],), c), k).to(x.dtype)
        f = torch.zeros(x.shape[0], dtype=torch.float64)
        for eps in noise:
            stats = model.encoder(torch.cat([x, y], -1))
            mean, log_std = stats[:, : model.latent_dim], stats[:, model.latent_dim :]
            z = mean + log_std.exp() * eps
            logits = model.decoder(torch.cat([z, y], -1)).double()
            log_lik = (x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits)).sum(-1)
            var = (2 * log_std).exp()
            kl = 0.5 * (mean**2 + var - 1 - var.log()).sum(-1)
            f += (-log_lik + kl.double()) / noise.shape[0]
        qc = q[:, c]
        total += qc * f + torch.where(qc > 0, qc * (k * qc).log(), torch.zeros_like(qc))
    return total


@pytest.mark.parametrize("name", ssvae.ESTIMATORS)
def test_every_estimator_trains_and_evaluates(name: str, digits: DataSplits) -> None:
    torch.manual_seed(0)
    trainable = make(tiny_config(estimator=name), digits)
    calls: list[tuple[int, int]] = []  # (rows decoded, images) of each estimator call
    loss_fn = trainable.model.loss_fn

    def counting(x: torch.Tensor) -> PackedLoss:
        inner = loss_fn(x)

        def fn(y: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            calls.append((y.shape[0], x.shape[0]))
            return inner.fn(y, index)

        return PackedLoss(fn, inner.batch_shape, event_dim=inner.event_dim)

    trainable.model.loss_fn = counting  # type: ignore[method-assign]
    warm = trainable.train_step(next(iter(trainable.train_batches(1))))
    assert warm["loss_evals"] == 1 and not calls and math.isfinite(warm["loss"])
    batches = iter(trainable.train_batches(2))
    for step in range(2):
        metrics = trainable.train_step(next(batches))
        assert all(math.isfinite(v) for v in metrics.values()), metrics
        assert len(calls) == step + 1, "one batched decoder call per step"
        rows, images = calls[-1]
        assert metrics["loss_evals"] == math.ceil(rows / images)
    if name == "exact":
        assert metrics["loss_evals"] == 10 and metrics["support_size"] == 10
    elif name == "sparsemax":
        assert 1 <= metrics["support_size"] <= metrics["loss_evals"] <= 10
    else:
        assert metrics["loss_evals"] == SAMPLED_EVALS[name]
    result = trainable.evaluate("test")
    assert set(result) == {"error", "accuracy", "nelbo", "support_size"}
    assert all(math.isfinite(v) for v in result.values())
    assert result["error"] == pytest.approx(1 - result["accuracy"]) and 0 <= result["error"] <= 1
    assert result["nelbo"] > 0 and 1 <= result["support_size"] <= 10


def test_sparsemax_support_size_is_the_loss_evals_once_the_classifier_is_confident(
    digits: DataSplits,
) -> None:
    torch.manual_seed(0)
    trainable = make(tiny_config(estimator="sparsemax"), digits)
    with torch.no_grad():  # large scores: a small, varied support
        trainable.model.classifier[-1].weight.mul_(40)
    metrics = trainable.train_step(next(iter(trainable.train_batches(2))))
    x = trainable.images.binarize(trainable.data.train[trainable.unlabelled[:16]])
    sizes = (trainable.model.posterior(x).probs > 0).sum(-1)
    assert 1 <= sizes.max() < 10
    assert metrics["support_size"] <= metrics["loss_evals"] < 10


@pytest.mark.parametrize("sparse", [False, True])
def test_nelbo_is_the_sum_over_classes_by_brute_force(sparse: bool) -> None:
    torch.manual_seed(0)
    model = M2(12, 4, 3, (8,), (8,), (8,), "relu", sparsemax=sparse).double()
    if sparse:
        with torch.no_grad():
            model.classifier[-1].weight.mul_(10)
    x = torch.rand(6, 12, dtype=torch.float64).round()
    noise = torch.randn(3, 6, 3, dtype=torch.float64)
    nelbo, size = unlabelled_nelbo(model, x, noise, chunk=20)  # chunks of 1 image
    expected = brute_force_nelbo(model, x, noise)
    torch.testing.assert_close(nelbo, expected)
    assert torch.equal(size, (model.posterior(x).probs > 0).sum(-1))
    if sparse:
        assert size.min() < 4


def test_evaluate_reports_the_exact_sum_with_its_noise(digits: DataSplits) -> None:
    torch.manual_seed(0)
    trainable = make(tiny_config(estimator="sparsemax"), digits)
    torch.manual_seed(7)
    result = trainable.evaluate("valid")
    x, labels = trainable.eval_data("valid")
    torch.manual_seed(7)
    noise = torch.randn(2, x.shape[0], 2)
    with torch.no_grad():
        expected = brute_force_nelbo(trainable.model, x, noise).mean()
        accuracy = (trainable.model.classifier(x).argmax(-1) == labels).double().mean()
    assert result["nelbo"] == pytest.approx(float(expected), rel=1e-5)
    assert result["accuracy"] == pytest.approx(float(accuracy))


def test_labelled_subset_is_balanced_and_fixed_by_the_seed(digits: DataSplits) -> None:
    labels = digits.train_labels
    assert labels is not None
    labelled, rest = labelled_split(labels, 53, 10, seed=0)
    counts = torch.bincount(labels[labelled], minlength=10)
    assert counts.tolist() == [6, 6, 6] + [5] * 7
    assert torch.equal(torch.cat([labelled, rest]).sort().values, torch.arange(labels.numel()))
    again, _ = labelled_split(labels, 53, 10, seed=0)
    other, _ = labelled_split(labels, 53, 10, seed=1)
    assert torch.equal(labelled, again) and not torch.equal(labelled, other)
    # The run seed does not move it; split_seed does.
    torch.manual_seed(1)
    a = make(tiny_config(), digits)
    torch.manual_seed(2)
    b = make(tiny_config(), digits)
    c = make(tiny_config(split_seed=3), digits)
    assert torch.equal(a.labelled, b.labelled) and not torch.equal(a.labelled, c.labelled)
    with pytest.raises(ValueError, match="class 0"):
        labelled_split(torch.tensor([0, 1, 1, 1]), 4, 2, seed=0)


def test_warm_start_batches_are_labelled_only_and_joint_batches_pair_them(
    digits: DataSplits,
) -> None:
    torch.manual_seed(0)
    trainable = make(tiny_config(), digits)
    train = digits.train
    warm = list(trainable.train_batches(1))
    assert all(b.unlabelled is None for b in warm) and len(warm) == math.ceil(50 / 16)
    assert sum(b.labelled.shape[0] for b in warm) == 50
    joint = list(trainable.train_batches(2))
    assert len(joint) == math.ceil(trainable.unlabelled.numel() / 16)
    seen = torch.cat([b.unlabelled for b in joint if b.unlabelled is not None])
    assert torch.equal(
        seen.unique(dim=0), train[trainable.unlabelled].unique(dim=0)
    )  # every unlabelled image once per epoch
    labelled_rows = train[trainable.labelled]
    for b in joint:
        assert b.unlabelled is not None and b.labelled.shape == b.unlabelled.shape
        # each labelled image is one of the labelled subset's, with its label
        match = (b.labelled.unsqueeze(1) == labelled_rows.unsqueeze(0)).all(-1).any(-1)
        assert bool(match.all())
    torch.manual_seed(5)
    first = [b.labelled for b in trainable.train_batches(2)]
    torch.manual_seed(5)
    second = [b.labelled for b in trainable.train_batches(2)]
    assert all(torch.equal(u, v) for u, v in zip(first, second, strict=True))


class Sizes:
    """Labelled splits of ``n`` one-pixel images of classes ``i mod 10`` (only sizes matter)."""

    name = "sizes"
    binary = True

    def __init__(self, n: int) -> None:
        self.train = torch.zeros(n, 1)
        self.train_labels = torch.arange(n) % 10
        self.valid = self.test = torch.zeros(10, 1)
        self.valid_labels = self.test_labels = torch.arange(10)


def test_presets_and_learning_rates_resolve_as_documented() -> None:
    rates = {
        "exact": 1e-3,
        "sparsemax": 5e-4,
        "sf": 1e-4,
        "sf-ma": 1e-4,
        "sfe+": 1e-4,
        "nvil": 1e-3,
        "gs": 1e-3,
        "st-gs": 1e-3,
        "sum-and-sample": 1e-3,
    }
    assert set(rates) == set(ssvae.ESTIMATORS)
    for preset in ("correia", "jang"):
        for name, lr in rates.items():
            assert SSVAEConfig(estimator=name, preset=preset).resolved_lr() == lr
    assert SSVAEConfig(estimator="sf", lr=3e-3).resolved_lr() == 3e-3
    config = SSVAEConfig()
    assert (config.epochs, config.warmup_epochs, config.batch_size) == (300, 100, 64)
    assert (config.dataset, config.weight_decay, config.latent_dim) == ("mnist", 1e-5, 8)
    assert config.classifier_hidden == (256, 256, 256) and config.activation == "relu"
    # Correia et al.: 5k of MNIST's 50k training images labelled, alpha 1, unlabelled weight 9.
    small = {"classifier_hidden": (4,), "encoder_hidden": (4,), "decoder_hidden": (4,)}
    correia = make(SSVAEConfig(**small), Sizes(50000))  # type: ignore[arg-type]
    assert correia.labelled.numel() == 5000 and correia.unlabelled.numel() == 45000
    counts = torch.bincount(correia.labelled % 10, minlength=10)
    assert counts.tolist() == [500] * 10
    assert correia.alpha == pytest.approx(1.0) and correia.unlabelled_weight == 9.0
    lrs = [group["lr"] for group in correia.optimizer.param_groups]
    assert lrs == [1e-3] and correia.optimizer.param_groups[0]["weight_decay"] == 1e-5
    jang = make(SSVAEConfig(preset="jang", **small), Sizes(50000))  # type: ignore[arg-type]
    assert jang.labelled.numel() == 100
    assert torch.bincount(jang.labelled % 10).tolist() == [10] * 10
    assert jang.alpha == pytest.approx(50.0) and jang.unlabelled_weight == 499.0
    given = make(
        SSVAEConfig(num_labelled=20, alpha=0.5, unlabelled_weight=1.0, **small),  # type: ignore[arg-type]
        Sizes(200),
    )
    assert (given.labelled.numel(), given.alpha, given.unlabelled_weight) == (20, 0.5, 1.0)


def test_the_correia_preset_scales_to_the_digits(digits: DataSplits) -> None:
    trainable = make(tiny_config(num_labelled=None), digits)
    assert trainable.labelled.numel() == digits.train.shape[0] // 10 == 119


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("preset", "kingma"),
        ("num_labelled", 0),
        ("warmup_epochs", -1),
        ("warmup_epochs", 3),
        ("alpha", -1.0),
        ("unlabelled_weight", math.nan),
        ("latent_dim", 0),
        ("encoder_hidden", (0,)),
        ("activation", "sigmoid"),
        ("weight_decay", -1.0),
        ("lr", 0.0),
        ("lr", math.inf),
        ("split_seed", -1),
        ("batch_size", 0),
    ],
)
def test_validate_names_the_field(field: str, value: object) -> None:
    with pytest.raises(InvalidConfigValue, match=f"^{field} "):
        tiny_config(**{field: value}).validate()


def test_lr_none_is_valid() -> None:
    tiny_config(lr=None).validate()


def test_labels_beyond_the_data_are_clear_errors(digits: DataSplits) -> None:
    with pytest.raises(ValueError, match=r"num_labelled=5000 .*1197 training images"):
        make(tiny_config(num_labelled=5000), digits)
    with pytest.raises(ValueError, match=r"num_labelled=5 .*10 classes"):
        make(tiny_config(num_labelled=5), digits)
    toy = toy_image_splits((3, 4), prototypes=3, noise=0.05, sizes=(48, 16, 16))
    with pytest.raises(ValueError, match="needs class labels"):
        make(tiny_config(), toy)


def test_warm_start_learns_to_classify(digits: DataSplits) -> None:
    torch.manual_seed(0)
    config = tiny_config(num_labelled=200, lr=1e-2, classifier_hidden=(32,), epochs=12)
    trainable = make(dataclasses.replace(config, warmup_epochs=12), digits)
    before = trainable.evaluate("valid")["error"]
    for epoch in range(1, 13):
        for batch in trainable.train_batches(epoch):
            trainable.train_step(batch)
    after = trainable.evaluate("valid")["error"]
    assert after < min(0.4, before - 0.3)


def test_experiment_is_registered_with_its_estimators() -> None:
    assert all_experiments()["ssvae"] is EXPERIMENT
    assert EXPERIMENT.estimators == ssvae.ESTIMATORS and EXPERIMENT.primary_metric == "error"
    assert all(name in ESTIMATORS for name in ssvae.ESTIMATORS)
    assert ESTIMATORS["sparsemax"].latent == "sparsemax"


def test_runs_through_the_runner(tmp_path: Path) -> None:
    config = tiny_config(estimator="sparsemax", max_steps_per_epoch=2, max_eval_examples=30)
    results = run(EXPERIMENT, config, tmp_path / "run", progress=False, plots=False)
    assert results["primary_metric"] == "error" and results["epochs"] == 2
    assert set(results["test"]) == {"error", "accuracy", "nelbo", "support_size"}
    records = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert "nelbo" not in records[0]["train"] and records[0]["train"]["loss_evals"] == 1
    assert "support_size" in records[1]["train"]


def test_the_command_line_runs_it_on_the_digits(tmp_path: Path) -> None:
    argv = [
        "run",
        "ssvae",
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--warmup-epochs",
        "1",
        "--num-labelled",
        "30",
        "--max-steps-per-epoch",
        "2",
        "--max-eval-examples",
        "20",
        "--classifier-hidden",
        "16",
        "--run-dir",
        str(tmp_path / "cli"),
        "--quiet",
    ]
    assert main(argv) == 0
    results = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert results["experiment"] == "ssvae" and results["estimator"] == "exact"
    assert 0 <= results["test"]["error"] <= 1
