"""Tests of SBN variational learning and its gradient-variance study (Tokui & Sato 2017)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from latentgrad.experiments import sbn
from latentgrad.experiments.sbn import (
    EXPERIMENT,
    SBNConfig,
    SBNTrainable,
    SigmoidBeliefNet,
    bernoulli_log_lik,
    bounds,
    gradient_variance,
)
from latentgrad.lab import ESTIMATORS
from latentgrad.lab.catalog import all_experiments
from latentgrad.lab.config import InvalidConfigValue
from latentgrad.lab.registry import make_estimator
from latentgrad.lab.runner import run
from latentgrad.testing import ToySplits, noisy_patterns, toy_image_splits


def patterns(n: int, seed: int) -> torch.Tensor:
    """Noisy copies of 3 prototypes of 3 x 4 pixels."""
    return noisy_patterns(n, seed, image_shape=(3, 4), prototypes=3, noise=0.05)


def tiny_splits() -> ToySplits:
    return toy_image_splits((3, 4), prototypes=3, noise=0.05, sizes=(48, 16, 16))


def tiny_config(**overrides: object) -> SBNConfig:
    settings: dict[str, object] = {
        "units": 3,
        "hidden": 4,
        "batch_size": 16,
        "eval_samples": 16,
        "valid_samples": 8,
        "variance_repeats": 8,
        "variance_batches": 1,
        "variance_warmup": 2,
    }
    settings.update(overrides)
    return SBNConfig(**settings)  # type: ignore[arg-type]


def make(config: SBNConfig) -> SBNTrainable:
    chosen = ESTIMATORS[config.estimator].resolve(config.estimator)
    return SBNTrainable(config, chosen, tiny_splits())


@pytest.mark.parametrize("architecture", ["linear", "deep", "nonlinear"])
@pytest.mark.parametrize("name", sbn.ESTIMATORS)
def test_every_estimator_trains_and_evaluates(architecture: str, name: str) -> None:
    torch.manual_seed(0)
    trainable = make(tiny_config(estimator=name, architecture=architecture))
    batches = iter(trainable.train_batches(0))
    for _ in range(2):
        metrics = trainable.train_step(next(batches))
    assert all(math.isfinite(v) for v in metrics.values()) and metrics["loss_evals"] >= 1
    result = trainable.evaluate("test")
    assert set(result) == {"nelbo", "nll"}
    assert 0 < result["nll"] <= result["nelbo"] + 1e-9


@torch.no_grad()
def test_loss_is_the_negative_elbo_by_enumeration() -> None:
    """E_q[f] summed over all z equals -ELBO; the S-sample bound is near -log p(x).

    Tolerances: 5 standard errors computed from the enumerated distribution (two-sided
    false-failure rate below 1e-6 each, normal approximation).
    """
    torch.manual_seed(0)
    net = SigmoidBeliefNet(12, layers=2, units=2).double()
    x = patterns(1, 5).double()
    codes = torch.arange(4)
    bits = ((codes.unsqueeze(-1) >> torch.arange(2)) & 1).double()
    z1 = bits.repeat_interleave(4, 0).view(16, 1, 2)
    z2 = bits.repeat(4, 1).view(16, 1, 2)
    log_q = net.log_posterior(x, [z1, z2])
    log_joint = net.log_joint(x, [z1, z2])
    q = log_q.exp()
    torch.testing.assert_close(q.sum(0), torch.ones(1, dtype=torch.float64))
    f = log_q - log_joint
    nelbo = (q * f).sum(0)
    n = 20000
    se_f = float(((q * (f - nelbo) ** 2).sum(0) / n).sqrt())
    log_px = log_joint.logsumexp(0)
    w = (log_joint - log_q - log_px).exp()  # importance weights / p(x): mean 1 under q
    rel_se = float(((q * (w - 1) ** 2).sum(0) / n).sqrt())
    torch.manual_seed(1)
    mc_nelbo, mc_nll = bounds(net, x, n)
    assert abs(float(mc_nelbo) - float(nelbo)) < 5 * se_f
    assert abs(float(mc_nll) - float(-log_px)) < 5 * rel_se


def test_inference_gradient_comes_from_the_estimator_only() -> None:
    """``loss`` reads log q with detached inference parameters."""
    net = SigmoidBeliefNet(12, layers=2, units=3)
    x = patterns(4, 1)
    zs = net.sample_posterior(x, 2)
    net.loss(x, zs).sum().backward()
    assert all(p.grad is None for p in net.encoders.parameters())
    assert all(p.grad is not None for p in net.decoders.parameters())


def test_bernoulli_log_lik_matches_torch() -> None:
    logits = torch.randn(5, 3)
    z = torch.rand(5, 3).round()
    expected = torch.distributions.Bernoulli(logits=logits).log_prob(z).sum(-1)
    torch.testing.assert_close(bernoulli_log_lik(logits, z), expected)


def test_local_marginalization_has_far_lower_variance_than_plain_lr() -> None:
    torch.manual_seed(0)
    trainable = make(tiny_config(units=4))
    batch = trainable.images.binarize(tiny_splits().train[:16])
    variances = {}
    for name in ("sf", "local-reparam"):
        chain = sbn.Chain(make_estimator(name), 2)
        variances[name], _ = gradient_variance(trainable, chain, [batch], 30, 0)
    for layer in ("layer1", "layer2", "all"):
        assert variances["local-reparam"][layer] < variances["sf"][layer] / 10


def test_variance_study_writes_csv_and_png(tmp_path: Path) -> None:
    config = tiny_config(
        dataset="digits",
        epochs=2,
        max_steps_per_epoch=3,
        max_eval_examples=20,
        variance_every=1,
        variance_estimators=("sf", "nvil", "local-reparam"),
        estimator="sf-ma",
    )
    run(EXPERIMENT, config, tmp_path / "run", progress=False, plots=True)
    with (tmp_path / "run" / "variance.csv").open() as f:
        rows = list(csv.DictReader(f))
    # 2 checkpoints x 3 estimators x (2 layers + all)
    assert len(rows) == 2 * 3 * 3
    assert {r["estimator"] for r in rows} == {"sf", "nvil", "local-reparam"}
    assert {r["layer"] for r in rows} == {"layer1", "layer2", "all"}
    evals = {r["estimator"]: float(r["loss_evals"]) for r in rows}
    assert evals == {"sf": 1.0, "nvil": 1.0, "local-reparam": 1.0 + 3 + 3}
    assert all(float(r["variance"]) >= 0 for r in rows)
    assert (tmp_path / "run" / "variance.png").read_bytes()[:4] == b"\x89PNG"


def test_no_study_no_files(tmp_path: Path) -> None:
    config = tiny_config(dataset="digits", epochs=1, max_steps_per_epoch=2, max_eval_examples=10)
    run(EXPERIMENT, config, tmp_path / "run", progress=False, plots=False)
    assert not (tmp_path / "run" / "variance.csv").exists()


def test_paper_architectures() -> None:
    config = SBNConfig()
    assert (config.units, config.batch_size, config.optimizer) == (200, 100, "rmsprop")
    assert config.weight_decay == 1e-3 and config.dataset == "mnist"
    deep = SigmoidBeliefNet(784, layers=4, units=200)
    assert len(deep.encoders) == 4 and len(deep.decoders) == 3
    nonlinear = SigmoidBeliefNet(784, layers=2, units=200, hidden=200)
    tanh = [m for m in nonlinear.encoders[0] if isinstance(m, torch.nn.Tanh)]
    assert len(tanh) == 2


def test_experiment_is_registered() -> None:
    assert all_experiments()["sbn"] is EXPERIMENT
    assert EXPERIMENT.estimators == sbn.ESTIMATORS
    assert "gs" not in sbn.ESTIMATORS  # log q of a relaxed sample is not the Bernoulli's


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("architecture", "wide"),
        ("units", 0),
        ("variance_repeats", 1),
        ("weight_decay", -1.0),
        ("variance_estimators", ("sf", "gs")),
        ("variance_every", 3),
    ],
)
def test_validate_names_the_field(field: str, value: object) -> None:
    with pytest.raises(InvalidConfigValue, match=field):
        tiny_config(eval_every=2, **{field: value}).validate()
