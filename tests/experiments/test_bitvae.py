"""The bit-vector VAE (Correia et al. 2020) at tiny size, on the digits and toy tensors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from latentgrad.cli import main
from latentgrad.data import DataSplits
from latentgrad.experiments import bitvae
from latentgrad.experiments.bitvae import (
    EXPERIMENT,
    BitVAEConfig,
    BitVAETrainable,
    BitVectorVAE,
    importance_sampled_bound,
    proposal_sample,
    quantize,
)
from latentgrad.lab import ESTIMATORS, ResolvedEstimator
from latentgrad.lab.catalog import all_experiments
from latentgrad.lab.config import InvalidConfigValue
from latentgrad.lab.registry import (
    options_to_dict,
    resolve_options,
    supported_estimators,
    with_resolved_options,
)
from latentgrad.lab.runner import run
from latentgrad.lab.sweep import plan_sweep
from latentgrad.mappings.oracles import bit_vectors


def tiny_config(**overrides: object) -> BitVAEConfig:
    settings: dict[str, object] = {
        "dataset": "digits",
        "num_bits": 6,
        "hidden": 16,
        "pixel_features": 2,
        "levels": 2,
        "epochs": 2,
        "max_steps_per_epoch": 3,
        "max_eval_examples": 20,
        "eval_samples": 32,
        "valid_samples": 8,
    }
    settings.update(overrides)
    return BitVAEConfig(**settings)  # type: ignore[arg-type]


def resolved(name: str, **options: object) -> ResolvedEstimator:
    return ESTIMATORS[name].resolve(name, resolve_options(name, options) if options else None)


def make(config: BitVAEConfig, data: DataSplits, **options: object) -> BitVAETrainable:
    return BitVAETrainable(config, resolved(config.estimator, **options), data)


@pytest.mark.parametrize("name", bitvae.ESTIMATORS)
def test_every_estimator_trains_and_evaluates(name: str, digits: DataSplits) -> None:
    torch.manual_seed(0)
    trainable = make(tiny_config(estimator=name), digits)
    for batch in trainable.train_batches(0):
        metrics = trainable.train_step(batch)
    assert set(metrics) >= {"loss", "loss_evals", "decoder_calls", "kl"}
    assert all(math.isfinite(v) for v in metrics.values()) and metrics["kl"] >= -1e-5
    # The decoder runs once per distinct bit-vector: at most once per loss evaluation.
    assert 0 < metrics["decoder_calls"] <= metrics["loss_evals"]
    if trainable.model.sparse:  # loss evaluations: the packed support, rounded up
        assert 1 <= metrics["support_size"] <= metrics["loss_evals"]
        assert metrics["decoder_calls"] <= metrics["support_size"] + 1e-12
    for split in ("valid", "test"):
        result = trainable.evaluate(split)
        sparse = {"support_bpd"} if trainable.model.sparse else set()
        assert set(result) == {"nelbo", "nll", "bpd", "kl", "support_size", "codes"} | sparse
        assert all(math.isfinite(v) for v in result.values()) and result["nll"] > 0
        assert 1 <= result["codes"] <= 20 and result["codes"] == int(result["codes"])
        assert result["bpd"] == pytest.approx(result["nll"] / (64 * math.log(2)))


@pytest.mark.parametrize("honest", [True, False])
def test_straight_through_at_the_mode_reports_the_negative_elbo(
    honest: bool, digits: DataSplits
) -> None:
    # hard_at="mode": the gradient from the loss at the mode; with honest_value the reported
    # loss is the loss at the samples of the same noise (one more decoder pass), without it
    # the loss at the mode.
    torch.manual_seed(0)
    trainable = make(tiny_config(estimator="st-gs"), digits, hard_at="mode", honest_value=honest)
    batch = next(iter(trainable.train_batches(0)))
    x = batch.long()
    model = trainable.model
    with torch.no_grad():
        q = model.posterior(x)
        kl = model.kl_to_prior(q)
        at_mode = (model.nll_rows(q.mode(), x) + kl).mean()
        torch.manual_seed(1)
        sample = q.from_noise(q.sample_noise((1,)))[0]
        at_sample = (model.nll_rows(sample, x) + kl).mean()
    assert abs(float(at_sample - at_mode)) > 1e-3  # the samples are not the mode
    torch.manual_seed(1)  # the same noise
    metrics = trainable.train_step(batch)
    assert metrics["loss_evals"] == (2 if honest else 1)
    # the decoder runs on every row with a relaxed gradient, on the distinct samples without
    if honest:
        assert 1 < metrics["decoder_calls"] <= 2
    else:
        assert metrics["decoder_calls"] == 1
    expected = at_sample if honest else at_mode
    assert metrics["loss"] == pytest.approx(float(expected), rel=1e-6)


def test_the_latent_family_follows_the_estimator(digits: DataSplits) -> None:
    x = digits.train[:5].long()
    kinds = {
        "gs": "Bernoulli",
        "topk-sparsemax": "TopKSparsemax",
        "sparsemap": "SparseMAP",
        "sparsemap-budget": "SparseMAP",
    }
    for name, kind in kinds.items():
        trainable = make(tiny_config(estimator=name, num_bits=8), digits)
        assert type(trainable.model.posterior(x)).__name__ == kind
    top = make(tiny_config(estimator="topk-sparsemax"), digits, k=3).model
    values, probs = top.posterior(x).support_probs()
    assert values.shape[0] <= 3
    budget = make(tiny_config(estimator="sparsemap-budget", num_bits=8), digits).model
    assert budget.budget == 4  # the default: half the bits
    values, probs = budget.posterior(x).support_probs()
    assert bool((values.sum(-1)[probs > 0] <= 4).all())
    assert make(tiny_config(estimator="sparsemap"), digits).model.budget is None
    given = make(tiny_config(estimator="sparsemap-budget"), digits, budget=2)
    assert given.model.budget == 2


def model_with_exact_likelihood(family: str, seed: int = 0) -> BitVectorVAE:
    """A small random VAE (4 bits) whose decoder depends strongly on z."""
    torch.manual_seed(seed)
    model = BitVectorVAE(6, 4, levels=4, hidden=8, pixel_features=2, family=family)
    with torch.no_grad():
        for layer in (model.encoder[0], model.encoder[2], model.decoder[2]):
            layer.weight.mul_(3.0)
    return model


def exact_log_px(model: BitVectorVAE, x: torch.Tensor) -> torch.Tensor:
    """``log p(x) = logsumexp_z log p(x | z) - D log 2`` over all ``2^D`` bit-vectors."""
    z = bit_vectors(model.num_bits).float()  # (2^D, D)
    ll = model.log_likelihood(x)(z.unsqueeze(1).expand(-1, x.shape[0], -1)).double()
    return ll.logsumexp(0) - model.log_num_values


@pytest.mark.parametrize("family", ["softmax", "topk-sparsemax", "sparsemap"])
@torch.no_grad()
def test_the_bound_is_unbiased_in_p_and_below_log_p_in_expectation(family: str) -> None:
    model = model_with_exact_likelihood(family)
    x = torch.randint(0, 4, (3, 6), generator=torch.Generator().manual_seed(1))
    truth = exact_log_px(model, x)
    torch.manual_seed(2)
    # The weights p(x, z) / r(z): their mean is unbiased for p(x) (r > 0 everywhere).
    z, log_r, _ = proposal_sample(model.posterior(x), 4096, 0.1)
    ll = model.log_likelihood(x)(z).double()
    ratio = (ll - model.log_num_values - log_r - truth).exp()  # w / p(x), mean 1
    se = ratio.std(0) / math.sqrt(ratio.shape[0])
    assert bool(((ratio.mean(0) - 1).abs() < 4 * se + 1e-9).all()), (ratio.mean(0), se)
    # The log of the mean is a lower bound in expectation: average over repeated estimates.
    estimates = torch.stack([importance_sampled_bound(model, x, 16).log_px for _ in range(200)])
    spread = 4 * estimates.std(0) / math.sqrt(estimates.shape[0])
    assert bool((estimates.mean(0) <= truth + spread).all())
    # 1024 samples: the mean ratio has twice the standard error of 4096 draws' (se).
    many = importance_sampled_bound(model, x, 1024)
    assert bool(((many.log_px - truth).abs() < 8 * se + 2 * (2 * se) ** 2 + 1e-6).all())
    assert bool((many.elbo <= truth + 1e-9).all())  # the ELBO is below log p(x)


@torch.no_grad()
def test_the_sparse_elbo_is_exact_and_the_bound_beats_it() -> None:
    model = model_with_exact_likelihood("sparsemap", seed=3)
    x = torch.randint(0, 4, (4, 6), generator=torch.Generator().manual_seed(4))
    q = model.posterior(x)
    values, probs = q.support_probs()
    expected = (probs.double() * model.log_likelihood(x)(values).double()).sum(0)
    torch.manual_seed(5)
    bound = importance_sampled_bound(model, x, 1024, chunk=100)
    torch.testing.assert_close(bound.elbo, expected - bound.kl)
    assert bool((bound.log_px >= bound.elbo - 0.05).all())  # nll <= nelbo, up to the MC error
    torch.testing.assert_close(bound.support_size, (probs > 0).sum(0).double())
    # The exact sum over the support: logsumexp of log p(x, z) over it, below log p(x).
    joint = model.log_likelihood(x)(values).double() - model.log_num_values
    by_hand = joint.masked_fill(probs == 0, -math.inf).logsumexp(0)
    torch.testing.assert_close(bound.log_px_support, by_hand)
    assert bool((bound.log_px_support <= exact_log_px(model, x) + 1e-9).all())
    assert bool((bound.log_px_support >= bound.elbo - 1e-9).all())  # (Jensen, over q)


@pytest.mark.parametrize("budget", [None, 3])
def test_the_one_hot_bit_encoding_is_sparsemap_over_half_shifted_scores(budget: int | None) -> None:
    torch.manual_seed(8)
    ones = BitVectorVAE(
        6, 5, levels=4, hidden=8, family="sparsemap", budget=budget, bit_encoding="ones"
    )
    pairs = BitVectorVAE(6, 5, levels=4, hidden=8, family="sparsemap", budget=budget)
    assert pairs.bit_encoding == "one-hot" == BitVAEConfig().bit_encoding  # the default
    pairs.load_state_dict(ones.state_dict())
    x = torch.randint(0, 4, (7, 6))
    s = ones.encoder(ones.inputs(x)).detach()
    mean = pairs.posterior(x).mean
    if budget is None:  # the box: Correia et al.'s clamp((s + 1) / 2, 0, 1)
        torch.testing.assert_close(mean, ((s + 1) / 2).clamp(0, 1))

    # Over the pairs [m; 1 - m] with scores [s; 0] the objective is twice SparseMAP's over m
    # with scores (s + 1) / 2 (plus a constant): compare the objectives at both means.
    def pair_objective(m: torch.Tensor) -> torch.Tensor:
        both = torch.cat([m, 1 - m], -1)
        return (torch.cat([s, torch.zeros_like(s)], -1) * both).sum(-1) - both.square().sum(-1) / 2

    assert bool((pair_objective(mean) >= pair_objective(ones.posterior(x).mean) - 1e-5).all())
    with pytest.raises(ValueError, match="bit_encoding"):
        BitVectorVAE(6, 5, family="sparsemap", bit_encoding="pairs")


def test_repeated_bit_vectors_are_decoded_once_with_the_same_values_and_gradients() -> None:
    torch.manual_seed(7)
    model = BitVectorVAE(6, 5, levels=4, hidden=8, pixel_features=3).double()
    z = bit_vectors(5).double()[torch.randint(0, 32, (60,))]  # about 27 distinct of 60
    x = torch.randint(0, 4, (12, 6)).repeat(5, 1)  # pair n gets image n % 12
    rows: list[int] = []
    model.decoder.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    params = [*model.decoder.parameters(), *model.pixel_logits.parameters()]
    nll = model.nll_rows(z, x)
    grads = torch.autograd.grad((nll * torch.linspace(0.5, 2.0, 60)).sum(), params)
    # The reference: every row decoded, the plain cross-entropy of the pixel logits.
    logits = model.decode(z)
    ref = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x, reduction="none").sum(-1)
    ref_grads = torch.autograd.grad((ref * torch.linspace(0.5, 2.0, 60)).sum(), params)
    assert rows == [torch.unique(z, dim=0).shape[0], 60] and rows[0] < 40
    torch.testing.assert_close(nll, ref, rtol=0, atol=1e-10)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-10)
    # log_likelihood: a leading sample dim, the images broadcast over it; the same pairs.
    ll = model.log_likelihood(x[:12])(z.view(5, 12, 5))
    torch.testing.assert_close(ll, -ref.detach().view(5, 12), rtol=0, atol=1e-10)
    # A z with a gradient (a relaxation) is decoded row by row, with a gradient into z.
    z_grad = z.clone().requires_grad_()
    (got,) = torch.autograd.grad(model.nll_rows(z_grad, x).sum(), z_grad)
    plain = torch.nn.functional.cross_entropy(model.decode(z_grad).transpose(1, 2), x)
    (want,) = torch.autograd.grad(plain * x.numel(), z_grad)
    assert rows[-2:] == [60, 60]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("family", ["softmax", "topk-sparsemax", "sparsemap"])
def test_kl_is_d_log_2_minus_the_entropy_by_enumeration(family: str) -> None:
    model = model_with_exact_likelihood(family)
    x = torch.randint(0, 4, (3, 6), generator=torch.Generator().manual_seed(6))
    q = model.posterior(x)
    z = bit_vectors(model.num_bits).float().unsqueeze(1).expand(-1, 3, -1)
    log_q = q.log_prob(z).double()
    kl = torch.where(log_q > -math.inf, log_q.exp() * (log_q + model.log_num_values), 0.0).sum(0)
    torch.testing.assert_close(model.kl_to_prior(q).double(), kl, rtol=1e-5, atol=1e-5)


def test_the_proposal_covers_every_bit_vector() -> None:
    model = model_with_exact_likelihood("sparsemap")
    q = model.posterior(torch.zeros(2, 6, dtype=torch.long))
    torch.manual_seed(7)
    z, log_r, log_q = proposal_sample(q, 2000, 0.5)
    assert bool(torch.isfinite(log_r).all()) and bool((log_q == -math.inf).any())
    assert len({tuple(v) for v in z[:, 0].tolist()}) == 16  # all 2^4 bit-vectors are drawn
    assert bool((log_r >= math.log(0.5) - 4 * math.log(2) - 1e-9).all())


def test_pixels_are_quantized_to_the_levels() -> None:
    x = torch.tensor([[0.0, 0.4, 1.0]])
    assert quantize(x, 256).tolist() == [[0, 102, 255]]
    assert quantize(x, 2).tolist() == [[0, 0, 1]]
    fashion_like = torch.arange(256.0) / 255
    assert quantize(fashion_like, 256).long().tolist() == list(range(256))


def test_presets_and_learning_rates_resolve() -> None:
    assert BitVAEConfig().num_bits == 32 and BitVAEConfig().batch_size == 64
    assert BitVAEConfig().eval_samples == 1024 and BitVAEConfig().lr is None
    for bits, name, lr in [
        (32, "sf-ma", 1e-3),
        (32, "st-gs", 1e-3),
        (32, "topk-sparsemax", 2e-3),
        (32, "sparsemap-budget", 2e-3),
        (128, "gs", 1e-3),
        (128, "nvil", 5e-4),
        (128, "st-gs", 5e-4),
        (128, "topk-sparsemax", 1e-3),
        (128, "sparsemap", 2e-3),
        (128, "sparsemap-budget", 2e-3),
        (8, "sparsemap", 2e-3),  # small latents take the D = 32 rates
    ]:
        assert BitVAEConfig(estimator=name, num_bits=bits).resolved_lr() == lr, (bits, name)
    assert BitVAEConfig(lr=0.01).resolved_lr() == 0.01
    assert set(bitvae.LEARNING_RATES[32]) == set(bitvae.ESTIMATORS)
    assert (bitvae.default_budget(32), bitvae.default_budget(128)) == (16, 64)
    BitVAEConfig(lr=None).validate()


AUTHORS_NVIL = {"nvil_hidden": 512, "nvil_layers": 3, "nvil_activation": "relu"}
REGISTRY_NVIL = {"nvil_hidden": 100, "nvil_layers": 1, "nvil_activation": "tanh"}


def _network(options: dict[str, object]) -> dict[str, object]:
    return {key: options[key] for key in AUTHORS_NVIL}


def test_nvil_takes_the_authors_network_unless_its_options_are_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bitvae.ESTIMATOR_PRESETS[32]["nvil"] == bitvae.ESTIMATOR_PRESETS[128]["nvil"]
    assert bitvae.ESTIMATOR_PRESETS[32]["nvil"] == AUTHORS_NVIL
    config = with_resolved_options(BitVAEConfig(estimator="nvil"), EXPERIMENT)
    assert _network(config.estimator_options) == AUTHORS_NVIL
    given = BitVAEConfig(estimator="nvil", estimator_options={"nvil_layers": 2})
    assert with_resolved_options(given, EXPERIMENT).estimator_options["nvil_layers"] == 2
    assert with_resolved_options(given, EXPERIMENT).estimator_options["nvil_hidden"] == 512
    # the preset gives way where a given option makes it invalid (no network to set)
    plain = BitVAEConfig(estimator="nvil", estimator_options={"baseline": "moving-average"})
    assert _network(with_resolved_options(plain, EXPERIMENT).estimator_options) == REGISTRY_NVIL
    wrong = BitVAEConfig(estimator="nvil", estimator_options={"baseline": "none", "nvil_layers": 3})
    with pytest.raises(InvalidConfigValue, match="nvil_layers must be left at 1"):
        with_resolved_options(wrong, EXPERIMENT)  # a given option is still checked
    other = with_resolved_options(BitVAEConfig(estimator="sf-ma"), EXPERIMENT)
    assert other.estimator_options == options_to_dict(resolve_options("sf-ma"))
    (planned,) = plan_sweep(EXPERIMENT, [{"estimator": ["nvil"]}], out=tmp_path)
    assert _network(planned.config.estimator_options) == AUTHORS_NVIL
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in REGISTRY_NVIL.items()]
    (explicit,) = plan_sweep(
        EXPERIMENT, [{"estimator": ["nvil"], **{k: [v] for k, v in REGISTRY_NVIL.items()}}]
    )
    assert _network(explicit.config.estimator_options) == REGISTRY_NVIL
    # the runner and the command line resolve it the same way
    run(
        EXPERIMENT,
        tiny_config(estimator="nvil", epochs=1, max_steps_per_epoch=1),
        tmp_path / "run",
        progress=False,
        plots=False,
    )
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert _network(recorded["estimator_options"]) == AUTHORS_NVIL
    argv = ["run", "bitvae", "--estimator", "nvil", "--dataset", "digits", "--print-config"]
    for extra, expected in (([], AUTHORS_NVIL), (flags, REGISTRY_NVIL)):
        capsys.readouterr()
        assert main([*argv, *extra]) == 0
        printed = json.loads(capsys.readouterr().out)["config"]["estimator_options"]
        assert _network(printed) == expected


def test_gumbel_softmax_anneals_as_the_authors_scripts_by_latent_size() -> None:
    # their scripts: r = 1e-5 for GS at D = 32 and ST-GS at both sizes, 1e-4 for GS at 128
    for name, bits, rate in [("gs", 32, 1e-5), ("gs", 128, 1e-4), ("st-gs", 32, 1e-5)]:
        config = BitVAEConfig(estimator=name, num_bits=bits)
        options = with_resolved_options(config, EXPERIMENT).estimator_options
        assert options["tau_rate"] == rate and options["tau_every"] == 1000, (name, bits)
        assert options["tau_minimum"] == 0.5 and options["tau_initial"] == 1.0
    config = BitVAEConfig(estimator="st-gs", num_bits=128, estimator_options={"tau_rate": 0})
    assert with_resolved_options(config, EXPERIMENT).estimator_options["tau_rate"] == 0.0


def test_the_optimizer_gets_the_preset_learning_rate(digits: DataSplits) -> None:
    trainable = make(tiny_config(estimator="topk-sparsemax"), digits)
    assert trainable.optimizer.param_groups[0]["lr"] == 2e-3


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_bits", 0),
        ("hidden", 0),
        ("pixel_features", 0),
        ("levels", 1),
        ("levels", 257),
        ("activation", "gelu"),
        ("uniform_mix", 0.0),
        ("uniform_mix", 1.5),
        ("valid_samples", 0),
        ("lr", -1.0),
        ("eval_samples", 0),
        ("bit_encoding", "pairs"),
        ("sparsemap_method", "lp"),
    ],
)
def test_validate_names_the_field(field: str, value: object) -> None:
    with pytest.raises(InvalidConfigValue, match=f"^{field} "):
        tiny_config(**{field: value}).validate()


def test_a_budget_above_the_bits_is_refused(digits: DataSplits) -> None:
    config = tiny_config(estimator="sparsemap-budget", estimator_options={"budget": 7})
    with pytest.raises(InvalidConfigValue, match=r"^budget must be at most num_bits \(6\)"):
        config.validate()
    with pytest.raises(InvalidConfigValue, match=r"^budget must be at most num_bits \(6\)"):
        make(tiny_config(estimator="sparsemap-budget"), digits, budget=7)
    tiny_config(uniform_mix=1.0).validate()  # pure uniform proposal: valid, if noisy


def test_the_vae_refuses_the_sparsemap_family() -> None:
    from latentgrad.experiments.vae import VAEConfig, VAETrainable

    x = (torch.rand(16, 8, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    data = type("Splits", (), {"train": x, "valid": x, "test": x, "binary": True})()
    with pytest.raises(ValueError, match="asks for a 'sparsemap' latent, which the VAE"):
        VAETrainable(
            VAEConfig(estimator="sparsemap", latent="bernoulli"), resolved("sparsemap"), data
        )


def test_experiment_is_registered_with_its_estimators() -> None:
    assert all_experiments()["bitvae"] is EXPERIMENT
    assert EXPERIMENT.primary_metric == "bpd"
    assert supported_estimators(EXPERIMENT) == list(bitvae.ESTIMATORS)
    assert ESTIMATORS["sparsemap"].latent == ESTIMATORS["sparsemap-budget"].latent == "sparsemap"
    assert resolved("sparsemap").latent_options == {"structures": "free", "budget": None}
    assert resolved("sparsemap-budget", budget=3).latent_options["budget"] == 3


def test_runs_through_the_runner(tmp_path: Path) -> None:
    config = tiny_config(estimator="sparsemap", epochs=1, max_steps_per_epoch=2)
    results = run(EXPERIMENT, config, tmp_path / "run", progress=False, plots=False)
    assert results["primary_metric"] == "bpd" and results["epochs"] == 1
    assert set(results["test"]) == {
        "nelbo",
        "nll",
        "bpd",
        "kl",
        "support_size",
        "codes",
        "support_bpd",
    }
    assert results["train_final"]["support_size"] >= 1
    assert (tmp_path / "run" / "results.json").exists()


def test_the_command_line_runs_it_on_the_digits(tmp_path: Path) -> None:
    argv = [
        "run",
        "bitvae",
        "--dataset",
        "digits",
        "--estimator",
        "sparsemap-budget",
        "--budget",
        "3",
        "--num-bits",
        "8",
        "--epochs",
        "1",
        "--max-steps-per-epoch",
        "2",
        "--max-eval-examples",
        "10",
        "--eval-samples",
        "16",
        "--hidden",
        "16",
        "--run-dir",
        str(tmp_path / "cli"),
        "--quiet",
    ]
    assert main(argv) == 0
    results = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert results["experiment"] == "bitvae" and results["estimator"] == "sparsemap-budget"
    config = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert config["config"]["estimator_options"]["budget"] == 3


def test_support_figure_one_panel_per_latent_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    pytest.importorskip("matplotlib")
    for name, bits in (("sparsemap", 6), ("topk-sparsemax", 6), ("sparsemap", 8), ("gs", 6)):
        config = tiny_config(estimator=name, num_bits=bits)
        run(bitvae.EXPERIMENT, config, tmp_path / "runs" / f"{name}-{bits}", progress=False)
    out = bitvae.support_figure([tmp_path / "runs"], tmp_path / "figures" / "support.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(FileNotFoundError, match="sparse family"):
        bitvae.support_figure([tmp_path / "runs" / "gs-6"], tmp_path / "none.png")


RESULTS = Path(__file__).resolve().parents[2] / "results"


def test_records_made_before_bit_encoding_existed_read_as_the_ones_encoding(tmp_path) -> None:
    from latentgrad.lab.config import load_config_file
    from latentgrad.lab.report import build_table
    from latentgrad.lab.rundir import RunConfigMismatch, RunDirectory
    from latentgrad.lab.runs import collect_runs, load_record

    old = RESULTS / "bitvae-3ep" / "bitvae-sparsemap-d9528113-seed0.json"
    new = RESULTS / "bitvae-3ep-onehot" / "bitvae-sparsemap-4d2be3ee-seed0.json"
    stored = json.loads(old.read_text())
    assert "bit_encoding" not in stored["config"]  # made before the option
    assert load_record(old).config["bit_encoding"] == "ones"
    assert load_record(new).config["bit_encoding"] == "one-hot"
    # Only SparseMAP reads it: other estimators' runs compare without it, whatever they stored.
    for gs in (RESULTS / "bitvae-3ep").glob("bitvae-gs-*.json"):
        assert "bit_encoding" not in load_record(gs).config
    ten = build_table(collect_runs([RESULTS / "bitvae-10ep"])).rows
    assert ten and not any("bit_encoding" in row[0] for row in ten)
    # Rows that differ only in it are labelled by it.
    runs = [r for r in collect_runs([old.parent, new.parent]) if r.config["num_bits"] == 32]
    labels = {row[0] for row in build_table(runs).rows}
    assert {"sparsemap (bit_encoding=ones)", "sparsemap (bit_encoding=one-hot)"} <= labels
    # A run directory of that time repeats (--config) and resumes as what it ran.
    run_dir = tmp_path / "old-run"
    run_dir.mkdir()
    meta = {k: stored[k] for k in ("experiment", "primary_metric", "config_class", "config")}
    (run_dir / "config.json").write_text(json.dumps(meta))
    assert load_config_file(BitVAEConfig, run_dir / "config.json")["bit_encoding"] == "ones"
    config = BitVAEConfig(**{**stored["config"], "bit_encoding": "ones"})
    RunDirectory(run_dir).check_config(EXPERIMENT, config)
    with pytest.raises(RunConfigMismatch, match="bit_encoding: 'ones' there, 'one-hot' requested"):
        RunDirectory(run_dir).check_config(EXPERIMENT, BitVAEConfig(**stored["config"]))


def test_records_made_before_the_nvil_network_options_read_as_one_tanh_layer() -> None:
    from latentgrad.lab.report import build_table
    from latentgrad.lab.runs import collect_runs, load_record

    folder = RESULTS / "bitvae-10ep"
    old = [json.loads(p.read_text()) for p in sorted(folder.glob("bitvae-sf-ma-*.json"))]
    lacking = [r for r in old if "nvil_layers" not in r["config"]["estimator_options"]]
    assert lacking and len(lacking) < len(old)  # made before and after the options
    for path in folder.glob("bitvae-*.json"):
        options = load_record(path).config["estimator_options"]
        if "nvil_hidden" in options:  # (a score-function run)
            assert {"nvil_layers", "nvil_activation"} <= set(options)
    # The seeds of SFE at D = 32, one made before the options, form one row.
    runs = [r for r in collect_runs([folder]) if r.config["num_bits"] == 32]
    rows = {row[0]: row for row in build_table(runs).rows}
    moving_average = "sf-ma (baseline=moving-average)"  # (beside the cumulative-mean row)
    assert len(rows[moving_average][2].values) == 3  # (the primary metric's Stat)
    relu = "nvil (nvil_activation=relu, nvil_hidden=512, nvil_layers=3)"
    assert {relu, "nvil (nvil_activation=tanh, nvil_hidden=100, nvil_layers=1)"} <= set(rows)


@pytest.mark.parametrize("budget", [None, 20])
def test_the_active_set_method_gives_the_same_mean_with_a_sparser_support(
    budget: int | None,
) -> None:
    torch.manual_seed(9)
    auto = BitVectorVAE(6, 40, levels=4, hidden=8, family="sparsemap", budget=budget)
    solver = BitVectorVAE(
        6, 40, levels=4, hidden=8, family="sparsemap", budget=budget, sparsemap_method="active_set"
    )
    solver.load_state_dict(auto.state_dict())
    x = torch.randint(0, 4, (5, 6))
    q_auto, q_solver = auto.posterior(x), solver.posterior(x)
    assert q_solver.method == "active_set" and q_auto.method == "auto"
    torch.testing.assert_close(q_solver.mean, q_auto.mean, atol=1e-6, rtol=0)
    (_, p_auto), (_, p_solver) = q_auto.support_probs(), q_solver.support_probs()
    # (the closed form's nested decomposition takes m + 1 structures for m fractional bits)
    assert int((p_solver > 0).sum()) <= int((p_auto > 0).sum())
    with pytest.raises(ValueError, match="sparsemap_method"):
        BitVectorVAE(6, 5, family="sparsemap", sparsemap_method="lp")


def test_a_run_with_the_active_set_method(tmp_path: Path) -> None:
    config = tiny_config(estimator="sparsemap", sparsemap_method="active_set", epochs=1)
    results = run(EXPERIMENT, config, tmp_path / "r", progress=False, plots=False)
    assert math.isfinite(results["test"]["bpd"]) and results["test"]["support_size"] >= 1


def test_a_record_keeps_the_config_the_run_wrote(tmp_path: Path) -> None:
    from latentgrad.lab.records import make_record
    from latentgrad.lab.runs import load_run

    config = tiny_config(estimator="gs", epochs=1, max_steps_per_epoch=2)
    run(EXPERIMENT, config, tmp_path / "r", progress=False, plots=False)
    record = make_record(tmp_path / "r")
    assert record["config"]["bit_encoding"] == "one-hot"  # as written, though GS never reads it
    assert "bit_encoding" not in load_run(tmp_path / "r").config  # how reports compare it
