"""The report: markdown tables aggregated over seeds, unfinished runs, figures."""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

import latentgrad_tests_toy as toy  # loaded by conftest.py
import pytest

from latentgrad.lab.report import mean_std, report
from latentgrad.lab.runner import run
from latentgrad.lab.runs import find_runs


class Interrupt(Exception):
    pass


def parse_stat(cell: str) -> tuple[str, str, int]:
    """``mean ± std (n=N)`` -> (mean, std, N); std is "" for one value."""
    value, _, n = cell.rpartition(" (n=")
    mean, _, std = value.partition(" ± ")
    return mean, std, int(n.rstrip(")"))


def table_rows(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows[1:]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("runs")
    results = {}
    for estimator in ("exact", "sf"):
        for seed in (0, 1):
            config = toy.ToyConfig(estimator=estimator, seed=seed, epochs=2)
            out = run(
                toy.EXPERIMENT,
                config,
                root / "toy" / f"{estimator}-seed{seed}",
                progress=False,
                plots=False,
            )
            results[estimator, seed] = out
    return root, results


def test_table_aggregates_seeds_and_sorts_by_the_primary_metric(runs):
    root, results = runs
    text = report([root])
    assert "## toy" in text and "test `mse`" in text
    header = next(line for line in text.splitlines() if line.startswith("| estimator"))
    assert "test mse" in header and "valid mse" in header and "loss evals/step" in header
    rows = table_rows(text)
    assert len(rows) == 2
    means = {}
    for estimator in ("exact", "sf"):
        tests = [results[estimator, s]["test"]["mse"] for s in (0, 1)]
        means[estimator] = statistics.mean(tests)
        row = next(r for r in rows if r[0] == estimator)
        assert row[1] == "0, 1"
        mean, std, n = parse_stat(row[2])
        assert n == 2
        half_unit = 0.5 * 10.0 ** -len(std.partition(".")[2]) + 1e-12  # shown to std's digits
        assert abs(float(mean) - statistics.mean(tests)) <= half_unit
        assert abs(float(std) - statistics.stdev(tests)) <= half_unit
        low, high = (float(x) for x in row[3].strip("[]").split(", "))
        assert low < float(mean) < high  # the 95% interval of the test metric
        assert "±" in row[4]
        evals = {"exact": "8 (n=2)", "sf": "1 (n=2)"}[estimator]  # 2**3 configurations, 1 sample
        assert row[6] == evals
        assert row[7] == "2 (n=2)"
    assert [r[0] for r in rows] == sorted(means, key=means.get)


def test_report_writes_markdown_and_figures(runs, tmp_path):
    pytest.importorskip("matplotlib")
    root, _ = runs
    text = report([root / "toy"], out=tmp_path / "rep")
    assert (tmp_path / "rep" / "report.md").read_text() == text
    for name in ("toy-valid.png", "toy-loss.png"):
        assert (tmp_path / "rep" / name).read_bytes()[:4] == b"\x89PNG"
        assert f"]({name})" in text


def test_single_run_and_run_directories_given_directly(runs):
    root, results = runs
    text = report([root / "toy" / "sf-seed1", root / "toy" / "exact-seed0"])
    rows = table_rows(text)
    assert {r[0]: r[1] for r in rows} == {"sf": "1", "exact": "0"}
    assert "±" not in rows[0][2] and rows[0][3] == "–"
    assert float(parse_stat(rows[0][2])[0]) == pytest.approx(
        results[rows[0][0], int(rows[0][1])]["test"]["mse"], rel=1e-3
    )


def test_unfinished_runs_are_listed(tmp_path):
    def build(config, chosen):
        trainable = toy.ToyTrainable(config, chosen)
        step = trainable.train_step
        calls = [0]

        def train_step(batch):
            calls[0] += 1
            if calls[0] == 6:
                raise Interrupt
            return step(batch)

        trainable.train_step = train_step
        return trainable

    broken = dataclasses.replace(toy.EXPERIMENT, build=build)
    with pytest.raises(Interrupt):
        run(broken, toy.ToyConfig(estimator="gs", seed=3), tmp_path / "gs", progress=False)
    run(toy.EXPERIMENT, toy.ToyConfig(epochs=1), tmp_path / "ok", progress=False, plots=False)
    text = report([tmp_path])
    assert "Unfinished runs:" in text
    assert f"- gs seed 3: 1/3 epochs (`{tmp_path / 'gs'}`)" in text
    assert [r[0] for r in table_rows(text)] == ["sf-loo"]
    only = report([tmp_path / "gs"])
    assert "No finished runs." in only and "gs seed 3" in only


def test_configs_that_differ_beyond_the_seed_get_their_own_rows(tmp_path):
    for lr in (0.05, 0.01):
        config = toy.ToyConfig(estimator="exact", lr=lr, epochs=1)
        run(toy.EXPERIMENT, config, tmp_path / f"lr{lr}", progress=False, plots=False)
    labels = sorted(r[0] for r in table_rows(report([tmp_path])))
    assert labels == ["exact (lr=0.01)", "exact (lr=0.05)"]


def test_no_runs_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run directories"):
        report([tmp_path])
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        report([tmp_path / "missing"])
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text('{"lr": 1}')  # an override file, not a run
    assert find_runs([tmp_path]) == []


def test_mean_std_format():
    assert mean_std([1.0, 2.0]) == "1.50 ± 0.71"
    assert mean_std([100.0, 102.0, 104.0]) == "102.0 ± 2.0"
    assert mean_std([0.5]) == "0.5"
    assert mean_std([3, 3]) == "3"
    assert mean_std([]) == "–"


def test_metrics_of_other_sections_are_columns(runs):
    root, results = runs
    text = report([root], metrics=["mse", "valid.mse"], columns=["test"], table_only=True)
    header = next(line for line in text.splitlines() if line.startswith("| estimator"))
    assert "| test mse | valid mse |" in header
    for row in table_rows(text):
        for cell, section in ((row[1], "test"), (row[2], "valid_final")):
            mean, std, n = parse_stat(cell)
            values = [results[row[0], s][section]["mse"] for s in (0, 1)]
            half_unit = 0.5 * 10.0 ** -len(std.partition(".")[2]) + 1e-12
            assert n == 2 and abs(float(mean) - statistics.mean(values)) <= half_unit
    with pytest.raises(ValueError, match=r"valid\.nope"):
        report([root], metrics=["valid.nope"])


def test_eval_every_does_not_split_rows(tmp_path):
    """The validation cadence changes neither training nor the test metric: one setting."""
    outs = []
    for seed, every in ((0, 1), (1, 2)):
        config = toy.ToyConfig(estimator="sf", seed=seed, epochs=2, eval_every=every)
        outs.append(run(toy.EXPERIMENT, config, tmp_path / f"r{seed}", progress=False, plots=False))
    rows = table_rows(report([tmp_path], table_only=True))
    assert len(rows) == 1 and rows[0][0] == "sf" and parse_stat(rows[0][2])[2] == 2
    same = toy.ToyConfig(estimator="sf", seed=0, epochs=2, eval_every=2)
    again = run(toy.EXPERIMENT, same, tmp_path / "again", progress=False, plots=False)
    assert again["test"] == outs[0]["test"]


def test_a_field_older_runs_lack_labels_rows_only_where_it_differs():
    from latentgrad.lab.report import _labels

    old = {"estimator": "gs", "lr": 0.001}
    new = [{"estimator": e, "lr": 0.001, "objective": "auto"} for e in ("reinmax", "vimco")]
    assert _labels([old, *new], set()) == ["gs", "reinmax", "vimco"]
    new[1]["objective"] = "iwae"
    assert _labels([old, *new], set()) == [
        "gs",
        "reinmax (objective=auto)",
        "vimco (objective=iwae)",
    ]
    assert _labels([old, {**old, "lr": 0.01}], set()) == ["gs (lr=0.001)", "gs (lr=0.01)"]
    # Rows that differ only in whether they have the field are told apart by it.
    newer = {**old, "objective": "iwae"}
    assert _labels([old, newer], set()) == ["gs (objective=—)", "gs (objective=iwae)"]
    both = ["gs (objective=—)", "gs (objective=iwae)", "vimco"]  # (vimco's is iwae too)
    assert _labels([old, newer, new[1]], set()) == both
