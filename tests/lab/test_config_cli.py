"""Config dataclasses on the command line and in JSON; the `run`, `report` and `list` commands."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import latentgrad_tests_toy as toy  # loaded by conftest.py
import pytest

from latentgrad.cli import build_run_parser, main
from latentgrad.lab import catalog
from latentgrad.lab.config import (
    ConfigError,
    add_config_arguments,
    cli_overrides,
    coerce_value,
    config_from_dict,
    config_to_dict,
    field_docs,
    load_config_file,
    parse_text,
    resolve_config,
)
from latentgrad.lab.experiment import ExperimentConfig
from latentgrad.lab.registry import ESTIMATORS


@dataclass
class Everything(ExperimentConfig):
    """Every supported field type.

    Attributes:
        ratio: a float, 50% of something.
        flag: a boolean.
        sizes: widths.
        pair: a fixed-length tuple
            of two numbers.
        mode: a literal choice.
        name: an optional string.
    """

    ratio: float = 0.5
    flag: bool = False
    sizes: tuple[int, ...] = (200,)
    pair: tuple[int, float] = (1, 2.0)
    mode: Literal["a", "b"] = "a"
    name: str | None = None


def parse(argv: list[str], cls: type = Everything) -> dict:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, cls)
    return cli_overrides(parser.parse_args(argv), cls)


# --- config.py ---------------------------------------------------------------------------


def test_options_are_typed_from_the_annotations():
    assert parse([]) == {}
    assert parse(["--epochs", "3", "--lr", "1e-2", "--estimator", "gs"]) == {
        "epochs": 3,
        "lr": 0.01,
        "estimator": "gs",
    }
    assert parse(["--sizes", "300,200", "--pair", "2,0.5"]) == {
        "sizes": (300, 200),
        "pair": (2, 0.5),
    }
    assert parse(["--sizes", ""]) == {"sizes": ()}
    assert parse(["--max-steps-per-epoch", "none", "--name", "x"]) == {
        "max_steps_per_epoch": None,
        "name": "x",
    }
    assert parse(["--max-steps-per-epoch", "7"]) == {"max_steps_per_epoch": 7}
    assert parse(["--mode", "b"]) == {"mode": "b"}


@pytest.mark.parametrize(
    ("argv", "value"),
    [
        (["--flag"], True),
        (["--flag", "true"], True),
        (["--flag", "no"], False),
        (["--no-flag"], False),
        (["--flag", "--no-flag"], False),
    ],
)
def test_boolean_options(argv, value):
    assert parse(argv) == {"flag": value}


@pytest.mark.parametrize(
    "argv",
    [
        ["--epochs", "2.5"],
        ["--lr", "fast"],
        ["--flag", "maybe"],
        ["--sizes", "1,x"],
        ["--pair", "1,2,3"],
        ["--mode", "c"],
        ["--max-steps-per-epoch", "many"],
        ["--nonsense", "1"],
    ],
)
def test_bad_option_values_are_argparse_errors(argv, capsys):
    with pytest.raises(SystemExit) as info:
        parse(argv)
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_help_lists_fields_with_docs_and_defaults():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Everything)
    text = parser.format_help()
    assert "a float, 50% of something. (float; default: 0.5)" in " ".join(text.split())
    assert "--sizes LIST" in text and "default: 200)" in text
    assert "--no-flag" in text and "learning rate" in text and "default: false)" in text
    assert "(int or none; default: none)" in " ".join(text.split())
    assert field_docs(Everything)["pair"] == "a fixed-length tuple of two numbers."


def test_json_round_trip():
    config = Everything(sizes=(3, 4), pair=(5, 0.25), max_steps_per_epoch=9, flag=True)
    data = json.loads(json.dumps(config_to_dict(config)))
    assert data["sizes"] == [3, 4]
    assert config_from_dict(Everything, data) == config
    assert config_from_dict(Everything, {}) == Everything()


def test_unknown_and_ill_typed_keys_are_named():
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) in here: 'bogus', 'extra'"):
        config_from_dict(Everything, {"bogus": 1, "lr": 0.1, "extra": 2}, source="here")
    with pytest.raises(ConfigError, match=r"bad value for 'epochs'.*expected int"):
        config_from_dict(Everything, {"epochs": "ten"})
    with pytest.raises(ConfigError, match="'flag'"):
        config_from_dict(Everything, {"flag": 1})
    assert coerce_value(float, 2) == 2.0 and isinstance(coerce_value(float, 2), float)
    with pytest.raises(ValueError):
        coerce_value(int, True)


def test_file_values_then_flags(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"epochs": 7, "lr": 0.5, "sizes": [1, 2]}))
    overrides = parse(["--lr", "0.25"])
    config = resolve_config(Everything, file=path, overrides=overrides)
    assert (config.epochs, config.lr, config.sizes, config.ratio) == (7, 0.25, (1, 2), 0.5)
    path.write_text(json.dumps({"epochs": 7, "typo_field": 1}))
    with pytest.raises(ConfigError, match=r"c\.json: .typo_field."):
        load_config_file(Everything, path)
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        load_config_file(Everything, path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config_file(Everything, tmp_path / "missing.json")


def test_parse_text_and_unsupported_types():
    assert parse_text(tuple[float, ...], "(0.5, 1)") == (0.5, 1.0)
    assert parse_text(str | None, "None") is None

    @dataclass
    class Bad:
        x: list[int] = dataclasses.field(default_factory=list)

    with pytest.raises(TypeError, match="unsupported type"):
        add_config_arguments(argparse.ArgumentParser(), Bad)


# --- the command line --------------------------------------------------------------------


@pytest.fixture
def experiments(monkeypatch):
    restricted = dataclasses.replace(
        toy.EXPERIMENT,
        name="toy-small",
        description="toy, two estimators",
        estimators=("exact", "sf"),
    )
    table = {"toy": toy.EXPERIMENT, "toy-small": restricted}
    monkeypatch.setattr(catalog, "all_experiments", lambda: table)
    return table


def test_list_shows_experiments_and_estimators(experiments, capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "toy-small  toy, two estimators" in out
    assert "Bernoulli latent regression" in out
    assert all(name in out for name in ESTIMATORS)


def test_run_then_report(experiments, tmp_path, capsys):
    pytest.importorskip("matplotlib")  # the report's figures
    argv = [*"run toy --estimator exact --epochs 2 --quiet --out".split(), str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr()
    run_dir = tmp_path / "toy" / "exact-seed0"
    assert f"run directory: {run_dir}" in out.out and "test mse:" in out.out
    assert out.err == ""
    results = json.loads((run_dir / "results.json").read_text())
    assert results["epochs"] == 2 and results["estimator"] == "exact"
    assert main(argv) == 0  # finished: returned without training
    assert "the run is complete" in capsys.readouterr().err

    assert main(["report", str(tmp_path), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "## toy" in out and "| exact | 0 |" in out
    assert (tmp_path / "rep" / "toy-valid.png").exists()


def test_run_with_a_config_file_and_flags(experiments, tmp_path, capsys):
    path = tmp_path / "over.json"
    path.write_text(json.dumps({"epochs": 1, "seed": 5, "hidden": [4, 4], "lr": 0.5}))
    run_dir = tmp_path / "here"
    argv = ["run", "toy", "--config", str(path), "--lr", "0.01", "--run-dir", str(run_dir)]
    assert main([*argv, "--quiet", "--no-center"]) == 0
    saved = json.loads((run_dir / "config.json").read_text())["config"]
    assert (saved["epochs"], saved["seed"], saved["hidden"], saved["lr"]) == (1, 5, [4, 4], 0.01)
    assert saved["center"] is False
    capsys.readouterr()
    # the run's own config.json repeats it; another value in the same directory is refused
    again = ["run", "toy", "--config", str(run_dir / "config.json"), "--run-dir", str(run_dir)]
    assert main([*again, "--quiet"]) == 0
    assert main([*again, "--quiet", "--lr", "0.2"]) == 2
    assert "--no-resume" in capsys.readouterr().err


def test_print_config(experiments, capsys):
    assert main(["run", "toy", "--seed", "4", "--hidden", "2,3", "--print-config"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["run_dir"] == str(Path("runs/toy/sf-loo-seed4"))
    assert record["config"]["hidden"] == [2, 3] and record["config"]["seed"] == 4


def test_unknown_names_exit_2(experiments, tmp_path, capsys):
    assert main(["run", "nope"]) == 2
    assert "unknown experiment 'nope'; known: toy, toy-small" in capsys.readouterr().err
    assert main(["run", "toy", "--estimator", "bogus", "--print-config"]) == 2
    assert "valid: exact, sf, sf-ma" in capsys.readouterr().err
    assert main(["run", "toy-small", "--estimator", "gs", "--print-config"]) == 2
    assert "valid: exact, sf\n" in capsys.readouterr().err
    assert main(["run"]) == 2
    assert "toy-small" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"epochs": 1, "epoch": 2}')
    assert main(["run", "toy", "--config", str(bad)]) == 2
    assert "unknown config key(s)" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_bad_run_option_is_an_argparse_error(experiments, capsys):
    assert main(["run", "toy", "--epochs", "two"]) == 2
    err = capsys.readouterr().err
    assert "--epochs: expected int, got 'two'" in err and len(err.splitlines()) == 1


def test_run_help_lists_fields_and_defaults(experiments):
    text = " ".join(build_run_parser(toy.EXPERIMENT).format_help().split())
    assert "--hidden LIST" in text and "default: 8)" in text
    assert "--lr FLOAT learning rate. (float; default: 0.05)" in text
    assert "--no-resume" in text and "estimators: exact, sf," in text


def test_ctrl_c_says_how_to_resume(experiments, monkeypatch, tmp_path, capsys):
    from latentgrad.lab import runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run", interrupted)
    assert main(["run", "toy", "--run-dir", str(tmp_path / "r")]) == 130
    assert "the same command resumes" in capsys.readouterr().err
