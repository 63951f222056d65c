"""`latentgrad sweep`: grids, planning, the local process pool and a local Ray runtime.

The runs are tiny (the embedded digits, 1 epoch of 2 steps, 10 importance samples on 20
examples); a 2 x 2 x 2 grid takes some seconds per backend, most of it starting processes.
"""

import dataclasses
import json

import pytest

from latentgrad.cli import main
from latentgrad.lab import registry
from latentgrad.lab.catalog import all_experiments
from latentgrad.lab.experiment import ExperimentConfig
from latentgrad.lab.sweep import (
    RunOutcome,
    expand_grid,
    format_summary,
    load_grid_file,
    parse_grid,
    plan_sweep,
)

TINY = {
    "dataset": "digits",
    "epochs": 1,
    "max_steps_per_epoch": 2,
    "eval_samples": 10,
    "max_eval_examples": 20,
    "eval_every": 1,
}
TINY_FLAGS = [arg for k, v in TINY.items() for arg in ("--" + k.replace("_", "-"), str(v))]
GRID = ["estimator=gs,st-gs", "lr=1e-3,3e-4", "seed=0..1"]
HAS_OPTIONS = hasattr(registry, "resolve_options") and any(
    f.name == "estimator_options" for f in dataclasses.fields(ExperimentConfig)
)


@pytest.fixture(scope="module")
def vae():
    pytest.importorskip("sklearn")  # the experiments extra: the embedded digits
    return all_experiments()["vae"]


def _sweep(out, *extra):
    return main(["sweep", "vae", "--grid", *GRID, *TINY_FLAGS, "--out", str(out), *extra])


def _results(out):
    return sorted(out.rglob("results.json"))


# --- grids ---------------------------------------------------------------------------------


def test_parse_grid_ranges_brackets_and_dashes():
    grid = parse_grid(["seed=0..2,7", "hidden=[300,200],[200]", "max-eval-examples=none"])
    assert grid == {
        "seed": ["0", "1", "2", "7"],
        "hidden": ["[300,200]", "[200]"],
        "max_eval_examples": ["none"],
    }


@pytest.mark.parametrize("item", ["seed", "=1,2", "lr=1e-3,", "seed=3..1"])
def test_parse_grid_rejects_malformed_items(item):
    with pytest.raises(ValueError, match=r"grid item|range"):
        parse_grid([item])


def test_expand_grid_is_the_cartesian_product_in_order():
    points = expand_grid([parse_grid(GRID)])
    assert len(points) == 8
    assert points[0] == {"estimator": "gs", "lr": "1e-3", "seed": "0"}
    assert points[-1] == {"estimator": "st-gs", "lr": "3e-4", "seed": "1"}
    assert expand_grid([{"a": [1]}, {"a": [2, 3]}]) == [{"a": 1}, {"a": 2}, {"a": 3}]


def test_grid_files_json_list_and_yaml(tmp_path):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps([{"estimator": "gs", "seed": "0..1"}, {"lr": [0.001, 3e-4]}]))
    assert load_grid_file(path) == [
        {"estimator": ["gs"], "seed": ["0", "1"]},
        {"lr": [0.001, 3e-4]},
    ]
    pytest.importorskip("yaml")
    path = tmp_path / "grid.yaml"
    path.write_text("estimator: [gs, st-gs]\nseed: 0..4\n")
    assert load_grid_file(path) == [{"estimator": ["gs", "st-gs"], "seed": list("01234")}]


@pytest.mark.parametrize("text", ["[1, 2]", "{}", '{"seed": []}', "{oops"])
def test_bad_grid_files_are_value_errors(tmp_path, text):
    path = tmp_path / "grid.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"grid\.json"):
        load_grid_file(path)


# --- planning ------------------------------------------------------------------------------


def test_plan_gives_each_point_its_own_typed_config_and_directory(vae, tmp_path):
    runs = plan_sweep(vae, [parse_grid(GRID)], out=tmp_path, fixed=TINY)
    assert len({r.run_dir for r in runs}) == 8
    first = runs[0]
    assert first.run_dir == tmp_path / "vae" / "lr=0.001" / "gs-seed0"
    assert (first.config.lr, first.config.seed, first.config.epochs) == (1e-3, 0, 1)
    assert first.point == {"estimator": "gs", "lr": 1e-3, "seed": 0}
    # a repeated point is planned once
    assert len(plan_sweep(vae, [{"seed": [0, 0]}, {"seed": ["0"]}], out=tmp_path)) == 1


def test_plan_layers_config_file_fixed_values_and_grid(vae, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"lr": 0.01, "epochs": 3, "batch_size": 20}))
    runs = plan_sweep(
        vae, [{"epochs": [2]}], out=tmp_path, config_file=config, fixed={"batch_size": "50"}
    )
    assert (runs[0].config.lr, runs[0].config.epochs, runs[0].config.batch_size) == (0.01, 2, 50)


@pytest.mark.parametrize(
    ("grid", "match"),
    [
        ({"bogus": ["1"]}, "bogus"),
        ({"lr": ["fast"]}, "'lr'.*expected float"),
        ({"epochs": ["0"]}, "epochs"),
        ({"estimator": ["nope"]}, "unknown estimator 'nope'"),
    ],
)
def test_plan_errors_name_the_key(vae, tmp_path, grid, match):
    with pytest.raises(ValueError, match=match):
        plan_sweep(vae, [grid], out=tmp_path)


@pytest.mark.skipif(not HAS_OPTIONS, reason="estimator options not in the registry yet")
def test_estimator_options_are_grid_keys(vae, tmp_path):
    runs = plan_sweep(
        vae, [{"estimator": ["sf-loo"], "num_samples": ["2", "8"]}], out=tmp_path, fixed=TINY
    )
    assert [r.config.estimator_options["num_samples"] for r in runs] == [2, 8]
    assert runs[0].run_dir != runs[1].run_dir
    assert runs[1].point == {"estimator": "sf-loo", "num_samples": 8}
    with pytest.raises(ValueError, match="samples"):
        plan_sweep(vae, [{"estimator": ["sf-loo"], "samples": ["2"]}], out=tmp_path)


def test_summary_lists_each_run_and_the_counts(tmp_path):
    text = format_summary(
        [
            RunOutcome(tmp_path / "a", "skipped", test={"nll": 1.5}),
            RunOutcome(tmp_path / "b", "failed", "ValueError: bad"),
        ],
        "nll",
    )
    assert f"skipped  {tmp_path / 'a'}  test nll 1.5" in text
    assert "ValueError: bad" in text and text.endswith("2 runs: 1 skipped, 1 failed\n")


# --- the command ---------------------------------------------------------------------------


def test_command_errors_are_one_line(vae, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LATENTGRAD_DEBUG", raising=False)
    assert main(["sweep", "vae", "--grid", "bogus=1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "bogus" in err and len(err.strip().splitlines()) == 1
    assert main(["sweep", "vae", "--out", str(tmp_path)]) == 2
    assert "--grid" in capsys.readouterr().err
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # ray not installed
    assert main(["sweep", "vae", "--grid", "seed=0", "--ray", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "pip install 'latentgrad[ray]'" in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # nothing ran


def test_dry_run_prints_the_plan(vae, tmp_path, capsys):
    assert _sweep(tmp_path, "--dry-run") == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "vae" / "lr=0.0003" / "st-gs-seed1") in out
    assert out.endswith("8 runs\n") and not list(tmp_path.iterdir())


def test_pool_runs_the_grid_once_resumes_and_reports_failures(vae, tmp_path, capsys):
    assert _sweep(tmp_path, "--workers", "2", "--quiet") == 0
    out = capsys.readouterr().out
    assert out.endswith("8 runs: 8 done\n")
    results = _results(tmp_path)
    assert len(results) == 8
    stamps = {p: p.stat().st_mtime_ns for p in results}

    # the same sweep again: nothing is redone
    assert _sweep(tmp_path, "--workers", "2", "--quiet") == 0
    assert capsys.readouterr().out.endswith("8 runs: 8 skipped\n")
    assert {p: p.stat().st_mtime_ns for p in _results(tmp_path)} == stamps

    # a run killed after its last checkpoint resumes; an estimator that cannot run fails alone
    killed = tmp_path / "vae" / "lr=0.001" / "gs-seed1" / "results.json"
    killed.unlink()
    args = ["sweep", "vae", "--grid", *GRID, "estimator=gs,st-gs,exact", *TINY_FLAGS]
    assert main([*args, "--out", str(tmp_path), "--workers", "2", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert out.endswith("12 runs: 1 resumed, 7 skipped, 4 failed\n")
    assert f"resumed  {killed.parent}" in out
    failed = [line for line in out.splitlines() if line.startswith("failed")]
    assert len(failed) == 4 and all("max_support" in line for line in failed)
    assert killed.exists()
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p != killed)


def test_ray_runs_the_grid_once(vae, tmp_path, capsys):
    pytest.importorskip("ray")
    assert _sweep(tmp_path, "--ray", "--workers", "2", "--quiet") == 0
    assert capsys.readouterr().out.endswith("8 runs: 8 done\n")
    results = _results(tmp_path)
    assert len(results) == 8
    stamps = {p: p.stat().st_mtime_ns for p in results}
    assert _sweep(tmp_path, "--ray", "--workers", "2", "--quiet") == 0
    assert capsys.readouterr().out.endswith("8 runs: 8 skipped\n")
    assert {p: p.stat().st_mtime_ns for p in _results(tmp_path)} == stamps
