"""Estimator options: typed per registry entry, on the command line and in config files,
recorded in config.json and in the run directory's name (issue 13, point 1)."""

from __future__ import annotations

import dataclasses
import json
import math

import latentgrad_tests_toy as toy  # loaded by conftest.py
import pytest
import torch

import latentgrad as lg
from latentgrad.cli import build_run_parser, main
from latentgrad.lab import catalog
from latentgrad.lab.config import ConfigError, InvalidConfigValue, config_fields
from latentgrad.lab.experiment import ExperimentConfig
from latentgrad.lab.registry import (
    ESTIMATORS,
    EstimatorOptions,
    GumbelSoftmaxOptions,
    UnknownOption,
    describe_options,
    make_estimator,
    option_fields,
    options_differences,
    options_hash,
    options_to_dict,
    resolve_options,
    with_resolved_options,
)
from latentgrad.lab.rundir import default_run_dir
from latentgrad.lab.runner import run
from latentgrad.schedules import ExponentialDecay, LinearGrowth


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_every_entry_has_typed_options_whose_defaults_build_it(name):
    entry = ESTIMATORS[name]
    assert isinstance(entry.options, EstimatorOptions)
    assert dataclasses.is_dataclass(entry.options)
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.options.x = 1  # type: ignore[attr-defined]
    assert resolve_options(name) == entry.options == resolve_options(name, {})
    assert options_differences(name, entry.options) == {} and options_hash(name, {}) is None
    assert type(entry.build()) is type(entry.build(entry.options))
    assert describe_options(name).split()[0].partition("=")[0] == next(iter(option_fields(name)))


def test_option_names_never_collide_with_config_fields():
    configs = [ExperimentConfig, toy.ToyConfig]
    try:
        configs += [e.config_class for e in catalog.all_experiments().values()]
    except ImportError:  # an extra is missing: the shared fields are still checked
        pass
    for name in ESTIMATORS:
        for cls in configs:
            assert not set(option_fields(name)) & set(config_fields(cls)), (name, cls)


def test_options_reach_the_estimator():
    sf = make_estimator("sf-loo", {"num_samples": 8})
    assert isinstance(sf, lg.ScoreFunction) and sf.num_samples == 8
    assert isinstance(sf.baseline, lg.LeaveOneOut)
    ma = make_estimator("sf", {"baseline": "moving-average", "baseline_decay": 0.5})
    assert isinstance(ma.baseline, lg.MovingAverage) and ma.baseline.decay == 0.5
    runavg = make_estimator("sf-ma", {"baseline": "cumulative-mean"})  # Correia et al.'s SFE
    assert isinstance(runavg.baseline, lg.CumulativeMean)
    with pytest.raises(InvalidConfigValue, match=r"baseline_decay must be left at 0\.8"):
        resolve_options("sf", {"baseline": "cumulative-mean", "baseline_decay": 0.5})
    plus = make_estimator("sf", {"baseline": "independent-sample", "baseline_samples": 3})
    assert isinstance(plus.baseline, lg.IndependentSample) and plus.baseline.num_samples == 3
    assert not plus.baseline.backprop
    assert make_estimator("sfe+", {"baseline_backprop": True}).baseline.backprop  # the authors'
    assert make_estimator("sf-loo", {"baseline": "none"}).baseline is None
    nvil = make_estimator("nvil", {"nvil_hidden": 7, "baseline_decay": 0.9})
    q = lg.Bernoulli(logits=torch.zeros(5, 2))
    nvil(q, lambda z: z.sum(-1), context=torch.randn(5, 3))
    assert nvil.baseline.network[0].weight.shape == (7, 3) and nvil.baseline.decay == 0.9
    authors = {"nvil_hidden": 512, "nvil_layers": 3, "nvil_activation": "relu"}
    deep = make_estimator("nvil", authors)  # Correia et al.'s bit-vector VAE baseline
    deep(q, lambda z: z.sum(-1), context=torch.randn(5, 3))
    kinds = [type(m).__name__ for m in deep.baseline.network]
    assert kinds == ["Linear", "ReLU", "Linear", "ReLU", "Linear", "ReLU", "Linear"]
    widths = [m.weight.shape for m in deep.baseline.network if isinstance(m, torch.nn.Linear)]
    assert widths == [(512, 3), (512, 512), (512, 512), (1, 512)]

    gs = make_estimator("gs", {"tau_initial": 2.0, "tau_rate": 0.5, "tau_every": 2})
    assert isinstance(gs.tau_schedule, ExponentialDecay)
    assert (gs.tau, gs.step(2), gs.hard, gs.honest_value) == (2.0, 2 * math.exp(-1), False, True)
    constant = make_estimator("st-gs", {"tau_rate": 0, "tau_initial": 0.7, "tau_minimum": 0.1})
    assert constant.tau == 0.7 and constant.step(10**6) == 0.7 and constant.hard
    assert constant.hard_at == "sample"
    at_mode = make_estimator("st-gs", {"hard_at": "mode"})  # Correia et al.'s bit-vector code
    assert at_mode.hard and at_mode.hard_at == "mode"
    # the mode forward takes honest_value (the loss at the samples, for the value)
    cheap_mode = make_estimator("st-gs", {"hard_at": "mode", "honest_value": False})
    assert cheap_mode.hard_at == "mode" and not cheap_mode.honest_value
    cheap = make_estimator("gs", {"honest_value": False, "num_samples": 3})
    out = cheap(lg.Categorical(logits=torch.zeros(4, 5)), lambda z: z[..., 0])
    assert (
        out.loss_evals == 3
        and make_estimator("gs")(
            lg.Categorical(logits=torch.zeros(4, 5)), lambda z: z[..., 0]
        ).loss_evals
        == 2
    )

    annealed = make_estimator("annealed-st", {"slope_rate": 0.5, "slope_maximum": 2.0})
    assert isinstance(annealed.slope_schedule, LinearGrowth)
    assert annealed.step(10) == 2.0
    assert (
        make_estimator("st").slope == 1.0
        and make_estimator("st", {"num_samples": 2}).num_samples == 2
    )
    assert make_estimator("sum-and-sample", {"k": 3}).k == 3
    assert make_estimator("exact", {"max_support": 10}).max_support == 10
    assert make_estimator("muprop", {"num_samples": 2}).num_samples == 2
    assert make_estimator("local-reparam", {"num_samples": 2}).num_samples == 2


def test_values_are_typed_and_checked_with_one_line_errors():
    assert resolve_options("gs", {"tau_initial": 2}).tau_initial == 2.0  # int -> float
    text = resolve_options("gs", {"num_samples": "3", "hard": "true", "tau_rate": "0"})
    assert (text.num_samples, text.hard, text.tau_rate) == (3, True, 0.0)  # command-line text
    with pytest.raises(UnknownOption, match=r"estimator 'sf-loo' has no option 'samples'; its"):
        resolve_options("sf-loo", {"samples": 2})
    assert issubclass(UnknownOption, ValueError)
    bad = [
        ({"num_samples": 2.5}, ConfigError, "option 'num_samples' of estimator 'sf': expected int"),
        ({"baseline": "loo"}, ConfigError, "expected one of none, moving-average"),
        ({"num_samples": 0}, InvalidConfigValue, "num_samples must be a positive int, got 0"),
        ({"baseline_decay": 2.0}, InvalidConfigValue, r"baseline_decay must be a number in \[0"),
        ({"baseline_samples": 2}, InvalidConfigValue, "unless baseline is independent-sample"),
        ({"nvil_layers": 3}, InvalidConfigValue, "nvil_layers must be left at 1 unless baseline"),
        ({"baseline_backprop": True}, InvalidConfigValue, "baseline_backprop must be left at"),
        ({"nvil_activation": "relu"}, InvalidConfigValue, "nvil_activation must be left at"),
        ({"nvil_activation": "gelu"}, ConfigError, "expected one of tanh, relu"),
    ]
    for overrides, error, message in bad:
        with pytest.raises(error, match=message):
            resolve_options("sf", overrides)
    with pytest.raises(ConfigError, match="option 'hard' of estimator 'gs': expected bool"):
        resolve_options("gs", {"hard": 1})
    with pytest.raises(InvalidConfigValue, match="at least 2 with the leave-one-out"):
        resolve_options("sf-loo", {"num_samples": 1})
    with pytest.raises(InvalidConfigValue, match="tau_minimum must be at most tau_initial"):
        resolve_options("gs", {"tau_minimum": 2.0})
    with pytest.raises(
        InvalidConfigValue,
        match="honest_value must be left at True unless hard is false or hard_at is mode",
    ):
        resolve_options("st-gs", {"honest_value": False})
    with pytest.raises(InvalidConfigValue, match="hard_at must be left at 'sample' unless hard"):
        resolve_options("gs", {"hard_at": "mode"})
    with pytest.raises(ConfigError, match="expected one of sample, mode"):
        resolve_options("st-gs", {"hard_at": "argmax"})
    with pytest.raises(InvalidConfigValue, match="slope_maximum must be at least slope_initial"):
        resolve_options("st", {"slope_initial": 6.0})
    with pytest.raises(TypeError, match="options must be ScoreFunctionOptions"):
        ESTIMATORS["sf"].build(GumbelSoftmaxOptions())  # type: ignore[arg-type]


def test_run_identity_names_the_options_that_differ_from_the_defaults():
    exp = toy.EXPERIMENT
    base = toy.ToyConfig(estimator="sf-loo", seed=2)
    full = with_resolved_options(base)
    assert full.estimator_options == options_to_dict(ESTIMATORS["sf-loo"].options)
    assert default_run_dir(exp, base) == default_run_dir(exp, full)
    assert default_run_dir(exp, base).name == "sf-loo-seed2"
    eight = dataclasses.replace(base, estimator_options={"num_samples": 8})
    six = dataclasses.replace(base, estimator_options={"num_samples": 6})
    a, b = default_run_dir(exp, eight), default_run_dir(exp, six)
    assert a != b and a.name.startswith("sf-loo-") and a.name.endswith("-seed2")
    assert len(a.name.split("-")[2]) == 8
    assert default_run_dir(exp, with_resolved_options(eight)) == a  # full or partial: same
    # the same overrides spelled as text or as typed values are the same run
    assert options_hash("gs", {"hard": "true"}) == options_hash("gs", {"hard": True})


def test_the_runner_records_all_options_and_trains_with_them(tmp_path):
    config = toy.ToyConfig(estimator="sf-loo", epochs=1, estimator_options={"num_samples": 2})
    results = run(toy.EXPERIMENT, config, tmp_path / "r", progress=False, plots=False)
    assert results["loss_evals_per_step"] == 2
    saved = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
    assert saved["estimator_options"]["num_samples"] == 2
    assert saved["estimator_options"]["baseline"] == "leave-one-out"
    # the same run asked with all options spelled out is the finished one
    again = dataclasses.replace(config, estimator_options=saved["estimator_options"])
    assert run(toy.EXPERIMENT, again, tmp_path / "r", progress=False) == results
    with pytest.raises(ValueError, match="estimator_options"):  # another option: refused
        other = dataclasses.replace(config, estimator_options={"num_samples": 3})
        run(toy.EXPERIMENT, other, tmp_path / "r", progress=False)
    with pytest.raises(UnknownOption):
        bad = dataclasses.replace(config, estimator_options={"tau": 1})
        run(toy.EXPERIMENT, bad, tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()


def test_a_run_recorded_without_options_resumes_with_the_defaults(tmp_path):
    config = toy.ToyConfig(estimator="sf", epochs=1)
    results = run(toy.EXPERIMENT, config, tmp_path / "r", progress=False, plots=False)
    path = tmp_path / "r" / "config.json"
    record = json.loads(path.read_text())
    del record["config"]["estimator_options"]  # as written before options existed
    path.write_text(json.dumps(record))
    assert run(toy.EXPERIMENT, config, tmp_path / "r", progress=False) == results


# --- the command line --------------------------------------------------------------------


@pytest.fixture
def experiments(monkeypatch):
    table = {"toy": toy.EXPERIMENT}
    monkeypatch.setattr(catalog, "all_experiments", lambda: table)
    return table


def test_flags_set_options_and_config_json_holds_them(experiments, tmp_path, capsys):
    argv = ["run", "toy", "--estimator", "sf-loo", "--num-samples", "3", "--epochs", "1"]
    assert main([*argv, "--quiet", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    run_dir = next((tmp_path / "toy").iterdir())
    assert run_dir.name.startswith("sf-loo-") and f"run directory: {run_dir}" in out
    assert json.loads((run_dir / "results.json").read_text())["loss_evals_per_step"] == 3
    saved = json.loads((run_dir / "config.json").read_text())["config"]["estimator_options"]
    assert saved["num_samples"] == 3
    # the run's config.json repeats it, into the same directory
    again = ["run", "toy", "--config", str(run_dir / "config.json"), "--quiet"]
    assert main([*again, "--out", str(tmp_path)]) == 0
    assert "the run is complete" in capsys.readouterr().err


def test_config_files_set_options_and_flags_win(experiments, tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"estimator_options": {"num_samples": 5, "baseline": "none"}}))
    assert main(["run", "toy", "--estimator", "sf", "--config", str(path), "--print-config"]) == 0
    options = json.loads(capsys.readouterr().out)["config"]["estimator_options"]
    assert (options["num_samples"], options["baseline"]) == (5, "none")
    argv = ["run", "toy", "--config", str(path), "--num-samples", "6", "--print-config"]
    assert main(argv) == 0  # the default estimator, sf-loo, with the file's options
    options = json.loads(capsys.readouterr().out)["config"]["estimator_options"]
    assert (options["num_samples"], options["baseline"]) == (6, "none")
    # a file naming another estimator: its options are that estimator's, not applied to gs
    path.write_text(json.dumps({"estimator": "sf", "estimator_options": {"baseline": "nvil"}}))
    assert main(["run", "toy", "--config", str(path), "--estimator", "gs", "--print-config"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["config"]["estimator_options"] == options_to_dict(ESTIMATORS["gs"].options)
    assert record["run_dir"].endswith("gs-seed0")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--estimator", "sf-loo", "--num-samples", "x"], "argument --num-samples: expected int"),
        (["--estimator", "sf-loo", "--tau-rate", "1"], "unrecognized arguments: --tau-rate 1"),
        (["--estimator", "sf-loo", "--num-samples", "1"], "--num-samples must be at least 2"),
        (["--estimator", "gs", "--tau-initial", "-1"], "--tau-initial must be a positive"),
        (["--estimator", "nope", "--num-samples", "2"], "unknown estimator 'nope'"),
    ],
)
def test_unknown_or_ill_typed_options_exit_2_with_one_line(experiments, argv, message, capsys):
    assert main(["run", "toy", *argv, "--print-config"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_an_unknown_option_in_a_file_is_one_line(experiments, tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"estimator_options": {"tau": 1.0}}))
    assert main(["run", "toy", "--config", str(path), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "estimator 'sf-loo' has no option 'tau'; its options: num_samples" in err
    assert err.count("\n") == 1
    path.write_text(json.dumps({"estimator_options": [1]}))
    assert main(["run", "toy", "--config", str(path), "--print-config"]) == 2
    assert "estimator_options" in capsys.readouterr().err


def test_help_lists_the_estimators_options_with_defaults(experiments, capsys):
    text = " ".join(build_run_parser(toy.EXPERIMENT, "gs").format_help().split())
    assert "options of estimator gs" in text
    assert "--tau-rate FLOAT decay rate per step" in text and "default: 0.0001" in text
    assert "--honest-value [BOOL]" in text and "--estimator-options" not in text
    default = " ".join(build_run_parser(toy.EXPERIMENT).format_help().split())
    assert "options of estimator sf-loo" in default and "(int; default: 4)" in default
    assert main(["run", "toy", "--estimator", "st", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--slope-rate" in out and "--tau-rate" not in out


def test_list_shows_the_options(experiments, capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "num_samples=4 baseline=leave-one-out" in out and "tau_every=1000" in out


@pytest.mark.parametrize("honest", [True, False])
def test_the_vae_reports_an_honest_loss_or_none(honest):
    from latentgrad.experiments.vae import VAEConfig, VAETrainable

    x = (torch.rand(32, 16, generator=torch.Generator().manual_seed(0)) < 0.4).float()
    data = type("Splits", (), {"train": x, "valid": x, "test": x, "binary": True})()
    config = VAEConfig(estimator="gs", num_categoricals=2, num_classes=3, decoder_hidden=(8,))
    chosen = ESTIMATORS["gs"].resolve("gs", resolve_options("gs", {"honest_value": honest}))
    metrics = VAETrainable(config, chosen, data).train_step(x[:8])
    assert metrics["loss_evals"] == (2 if honest else 1)
    if honest:  # the negative ELBO at the discrete sample
        assert math.isfinite(metrics["loss"]) and "relaxed_loss" not in metrics
    else:  # the relaxed objective is not called the loss
        assert math.isnan(metrics["loss"]) and math.isfinite(metrics["relaxed_loss"])
