"""The runner: run directory contents, determinism, resume, short-circuit, config checks."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import latentgrad_tests_toy as toy  # loaded by conftest.py
import pytest
import torch

from latentgrad.lab.registry import UnknownEstimator
from latentgrad.lab.rundir import RUN_FILES, RunConfigMismatch, default_run_dir
from latentgrad.lab.runner import run

TIMING_KEYS = {"time_per_epoch", "total_time"}


class Interrupt(Exception):
    """Stands for a kill in the middle of a run."""


def interrupted_at(experiment, step: int):
    """The experiment, with train_step raising once, on the ``step``-th call (1-based)."""
    armed = [True]

    def build(config, chosen):
        trainable = experiment.build(config, chosen)
        original = trainable.train_step
        calls = [0]

        def train_step(batch):
            calls[0] += 1
            if armed[0] and calls[0] == step:
                armed[0] = False
                raise Interrupt
            return original(batch)

        trainable.train_step = train_step
        return trainable

    return dataclasses.replace(experiment, build=build)


def without_timings(results: dict) -> dict:
    return {k: v for k, v in results.items() if k not in TIMING_KEYS}


def metric_lines(run_dir: Path) -> list[dict]:
    lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in ("epoch", "step", "epoch_steps", "train") if k in r} for r in lines]


def quick(run_dir: Path, experiment=None, config=None, **kwargs) -> dict:
    kwargs.setdefault("progress", False)
    kwargs.setdefault("plots", False)
    return run(experiment or toy.EXPERIMENT, config or toy.ToyConfig(), run_dir, **kwargs)


def test_run_directory_holds_config_env_metrics_checkpoint_results_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    results = run(toy.EXPERIMENT, toy.ToyConfig(), tmp_path / "r", progress=False)
    files = {p.name for p in (tmp_path / "r").iterdir()}
    assert files == set(RUN_FILES)
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["experiment"] == "toy" and config["primary_metric"] == "mse"
    options = {"num_samples": 4, "baseline": "leave-one-out", "baseline_decay": 0.8}
    options |= {"baseline_samples": 1, "baseline_backprop": False}
    options |= {"nvil_hidden": 100, "nvil_layers": 1}
    options |= {"nvil_activation": "tanh"}  # all of sf-loo's, resolved
    expected = {**dataclasses.asdict(toy.ToyConfig()), "hidden": [8], "estimator_options": options}
    assert config["config"] == expected
    env = json.loads((tmp_path / "r" / "env.json").read_text())
    assert env["seed"] == 0 and env["torch"] == torch.__version__ and env["resumed"] == []
    for key in ("python", "numpy", "latentgrad", "git", "platform", "command", "start_time"):
        assert key in env
    records = [json.loads(s) for s in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert [r["step"] for r in records] == [4, 8, 12]  # 64 examples in batches of 16
    assert all(set(r["train"]) == {"loss", "loss_evals"} and "valid" in r for r in records)
    assert json.loads((tmp_path / "r" / "results.json").read_text()) == results
    assert set(results["test"]) == {"mse", "sampled_mse"}
    assert results["total_steps"] == 12 and results["epochs"] == 3
    assert results["loss_evals_per_step"] == 4  # sf-loo: 4 samples
    assert results["valid_final"] == records[-1]["valid"] and results["valid_final_epoch"] == 3
    best = min(records, key=lambda r: r["valid"]["mse"])
    assert results["valid_best"] == best["valid"]
    assert results["valid_best_epoch"] == best["epoch"]
    for png in ("loss.png", "valid.png"):
        assert (tmp_path / "r" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    checkpoint = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 3 and checkpoint["step"] == 12
    assert len(checkpoint["history"]) == 3


def test_same_seed_same_results_other_seed_other_results(tmp_path):
    a = quick(tmp_path / "a")
    b = quick(tmp_path / "b")
    c = quick(tmp_path / "c", config=toy.ToyConfig(seed=1))
    assert without_timings(a) == without_timings(b)
    assert metric_lines(tmp_path / "a") == metric_lines(tmp_path / "b")
    assert a["test"] != c["test"]


def test_evaluation_does_not_change_training(tmp_path):
    every = quick(tmp_path / "a", config=toy.ToyConfig(eval_every=1))
    last = quick(tmp_path / "b", config=toy.ToyConfig(eval_every=3))
    assert every["test"] == last["test"] and every["train_final"] == last["train_final"]
    records = [json.loads(s) for s in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert ["valid" in r for r in records] == [False, False, True]


def test_max_steps_per_epoch_and_eval_every(tmp_path):
    config = toy.ToyConfig(epochs=5, max_steps_per_epoch=2, eval_every=2)
    results = quick(tmp_path / "r", config=config)
    records = [json.loads(s) for s in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch_steps"] for r in records] == [2] * 5
    assert [r["epoch"] for r in records if "valid" in r] == [2, 4, 5]
    assert results["total_steps"] == 10


@pytest.mark.parametrize(
    ("estimator", "checkpoint_seconds"),
    [("sf-loo", None), ("sf-loo", 0.0), ("gs", 0.0), ("nvil", 0.0)],
    ids=["epoch-checkpoints", "step-checkpoints", "gs-schedule", "nvil-baseline"],
)
def test_resume_after_an_interruption_gives_the_uninterrupted_results(
    tmp_path, capsys, estimator, checkpoint_seconds
):
    config = toy.ToyConfig(estimator=estimator)
    reference = quick(tmp_path / "ref", config=config)
    broken = interrupted_at(toy.EXPERIMENT, step=6)  # epoch 2, its second step
    with pytest.raises(Interrupt):
        quick(tmp_path / "r", broken, config, checkpoint_seconds=checkpoint_seconds)
    assert not (tmp_path / "r" / "results.json").exists()
    resumed = quick(tmp_path / "r", broken, config, checkpoint_seconds=checkpoint_seconds)
    assert "resuming after" in capsys.readouterr().err
    assert without_timings(resumed) == without_timings(reference)
    assert metric_lines(tmp_path / "r") == metric_lines(tmp_path / "ref")
    env = json.loads((tmp_path / "r" / "env.json").read_text())
    assert len(env["resumed"]) == 1
    assert env["resumed"][0]["from_epoch"] == 1
    assert env["resumed"][0]["from_step"] == (5 if checkpoint_seconds == 0 else 4)


def test_a_finished_run_is_returned_without_training(tmp_path, capsys):
    builds = []

    def build(config, chosen):
        builds.append(config)
        return toy.ToyTrainable(config, chosen)

    counted = dataclasses.replace(toy.EXPERIMENT, build=build)
    first = quick(tmp_path / "r", counted)
    again = quick(tmp_path / "r", counted)
    assert again == first and len(builds) == 1
    assert "the run is complete" in capsys.readouterr().err
    rerun = quick(tmp_path / "r", counted, resume=False)
    assert len(builds) == 2 and without_timings(rerun) == without_timings(first)


def test_a_run_directory_with_another_config_is_an_error(tmp_path):
    quick(tmp_path / "r")
    with pytest.raises(RunConfigMismatch, match=r"lr: 0\.05 there, 0\.1 requested.*--run-dir"):
        quick(tmp_path / "r", config=toy.ToyConfig(lr=0.1))
    other = dataclasses.replace(toy.EXPERIMENT, name="other")
    with pytest.raises(RunConfigMismatch, match="experiment 'toy'"):
        quick(tmp_path / "r", other)
    results = quick(tmp_path / "r", config=toy.ToyConfig(lr=0.1), resume=False)
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["config"]["lr"] == 0.1 and results["epochs"] == 3


def test_default_run_directory_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = toy.ToyConfig(estimator="st", seed=7, epochs=1)
    run(toy.EXPERIMENT, config, progress=False, plots=False)
    assert (tmp_path / "runs" / "toy" / "st-seed7" / "results.json").exists()
    assert default_run_dir(toy.EXPERIMENT, config) == Path("runs/toy/st-seed7")


def test_progress_bar_and_epoch_lines_go_to_stderr(tmp_path, capsys):
    quick(tmp_path / "r", config=toy.ToyConfig(epochs=1), progress=True)
    out = capsys.readouterr()
    assert out.out == ""
    assert "epoch 1/1" in out.err and "valid mse" in out.err and "test mse" in out.err


def test_bad_configs_and_trainables_are_errors(tmp_path):
    restricted = dataclasses.replace(toy.EXPERIMENT, estimators=("exact", "sf"))
    with pytest.raises(UnknownEstimator, match=r"experiment .toy.; valid: exact, sf"):
        quick(tmp_path / "a", restricted)
    with pytest.raises(TypeError, match="ToyConfig"):
        quick(tmp_path / "b", config=toy.ExperimentConfig())
    with pytest.raises(ValueError, match="epochs"):
        quick(tmp_path / "c", config=toy.ToyConfig(epochs=0))

    def no_loss_evals(config, chosen):
        trainable = toy.ToyTrainable(config, chosen)
        step = trainable.train_step
        trainable.train_step = lambda batch: {"loss": step(batch)["loss"]}
        return trainable

    broken = dataclasses.replace(toy.EXPERIMENT, build=no_loss_evals)
    with pytest.raises(KeyError, match="loss_evals"):
        quick(tmp_path / "d", broken)


def test_a_rejected_run_leaves_nothing_and_the_corrected_one_runs(tmp_path):
    def refuses(config, chosen):
        raise ValueError("hidden widths do not fit")

    picky = dataclasses.replace(toy.EXPERIMENT, build=refuses)
    with pytest.raises(ValueError, match="do not fit"):
        quick(tmp_path / "r", picky)
    with pytest.raises(ValueError, match="batch_size"):
        quick(tmp_path / "r", config=toy.ToyConfig(batch_size=0))
    assert not (tmp_path / "r").exists()
    assert quick(tmp_path / "r", config=toy.ToyConfig(epochs=1))["epochs"] == 1


def test_a_run_that_fails_before_its_first_checkpoint_is_discarded(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "notes.txt").write_text("mine")
    failing = interrupted_at(toy.EXPERIMENT, step=2)
    with pytest.raises(Interrupt):
        quick(tmp_path / "r", failing, checkpoint_seconds=None)
    assert {p.name for p in (tmp_path / "r").iterdir()} == {"notes.txt"}
    # so another config is not refused as a mismatch
    assert quick(tmp_path / "r", config=toy.ToyConfig(epochs=1, lr=0.01))["epochs"] == 1


def test_a_run_after_its_first_checkpoint_is_kept_for_resuming(tmp_path):
    with pytest.raises(Interrupt):
        quick(tmp_path / "r", interrupted_at(toy.EXPERIMENT, step=6), checkpoint_seconds=None)
    assert (tmp_path / "r" / "checkpoint.pt").exists()  # epoch 1 (4 steps) was saved
    with pytest.raises(RunConfigMismatch):
        quick(tmp_path / "r", config=toy.ToyConfig(lr=0.01))


def test_without_matplotlib_the_results_are_written_and_the_plots_skipped(tmp_path, monkeypatch):
    from latentgrad.lab.plots import MissingExtraWarning

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.warns(MissingExtraWarning, match=r"latentgrad\[experiments\]"):
        results = quick(tmp_path / "r", config=toy.ToyConfig(epochs=1), plots=True)
    assert json.loads((tmp_path / "r" / "results.json").read_text()) == results
    assert not list((tmp_path / "r").glob("*.png"))


@pytest.mark.parametrize(
    "damage",
    [
        b"",
        b"not a checkpoint",
        "truncated",
        "tensor",
        "other format",
    ],
)
def test_a_damaged_checkpoint_is_a_run_file_error_naming_it(tmp_path, damage):
    from latentgrad.lab.rundir import RunFileError

    config = toy.ToyConfig(epochs=1)
    quick(tmp_path / "r", config=config)
    (tmp_path / "r" / "results.json").unlink()
    path = tmp_path / "r" / "checkpoint.pt"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:500])
    elif damage == "tensor":
        torch.save(torch.zeros(3), path)
    elif damage == "other format":
        torch.save({"format": 99}, path)
    else:
        path.write_bytes(damage)
    with pytest.raises(RunFileError, match=r"checkpoint\.pt") as info:
        quick(tmp_path / "r", config=config)
    assert "--no-resume" in str(info.value) and info.value.path == path
    assert path.exists()  # a damaged checkpoint is the user's to delete, never removed
