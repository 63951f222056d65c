"""Model selection, seed statistics, CSV/LaTeX, results records and generated README tables, on
tiny VAE runs on the embedded digits (2 estimators x 2 learning rates x 2 seeds, 1 epoch)."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path

import pytest

from latentgrad.cli import main
from latentgrad.lab.records import (
    UnfinishedRunWarning,
    find_blocks,
    record_name,
    stale_blocks,
    update_blocks,
    write_records,
)
from latentgrad.lab.report import Stat, report, select, t_quantile_95
from latentgrad.lab.runner import run
from latentgrad.lab.runs import RECORD_FORMAT, collect_runs, load_record, load_run

pytest.importorskip("sklearn")  # the digits

ESTIMATORS = ("st", "gs")
LRS = (1e-3, 3e-3)
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    from latentgrad.experiments.vae import EXPERIMENT, VAEConfig

    root = tmp_path_factory.mktemp("grid")
    for estimator in ESTIMATORS:
        for lr in LRS:
            for seed in SEEDS:
                config = VAEConfig(
                    estimator=estimator,
                    lr=lr,
                    seed=seed,
                    dataset="digits",
                    epochs=1,
                    batch_size=20,
                    max_steps_per_epoch=3,
                    eval_samples=2,
                    valid_samples=2,
                    max_eval_examples=20,
                    eval_every=1,
                    num_categoricals=4,
                    num_classes=3,
                )
                run_dir = root / "vae" / f"{estimator}-lr{lr}-seed{seed}"
                run(EXPERIMENT, config, run_dir, progress=False, plots=False)
    return root


def results_of(root: Path) -> dict[tuple[str, float, int], dict]:
    out = {}
    for d in (root / "vae").iterdir():
        r = json.loads((d / "results.json").read_text())
        cfg = json.loads((d / "config.json").read_text())["config"]
        out[cfg["estimator"], cfg["lr"], cfg["seed"]] = r
    return out


def md_rows(text: str) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [
        dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
        for line in lines[1:]
    ]


def test_select_picks_the_lr_with_the_best_mean_validation_nll_per_estimator(grid):
    results = results_of(grid)
    text = report([grid], select_keys=["lr"], by="valid.nll", table_only=True)
    rows = {r["estimator"]: r for r in md_rows(text)}
    assert set(rows) == set(ESTIMATORS)  # one row per estimator, the lr chosen
    for estimator in ESTIMATORS:

        def mean_valid(lr, est=estimator):
            return statistics.mean(results[est, lr, s]["valid_final"]["nll"] for s in SEEDS)

        best = min(LRS, key=mean_valid)
        row = rows[estimator]
        assert float(row["lr"]) == best
        tests = [results[estimator, best, s]["test"]["nll"] for s in SEEDS]
        mean, _, rest = row["test nll"].partition(" ± ")
        std, _, n = rest.partition(" (n=")
        unit = 10.0 ** -len(std.partition(".")[2])
        assert abs(float(mean) - statistics.mean(tests)) <= unit / 2 + 1e-12
        assert abs(float(std) - statistics.stdev(tests)) <= unit / 2 + 1e-12
        assert n == "2)" and row["seeds"] == "0, 1"
        low, high = (float(x) for x in row["95% CI test nll"].strip("[]").split(", "))
        half = t_quantile_95(1) * statistics.stdev(tests) / math.sqrt(2)
        assert low == pytest.approx(statistics.mean(tests) - half, abs=unit)
        assert high == pytest.approx(statistics.mean(tests) + half, abs=unit)
        assert row["valid nll"].startswith(f"{mean_valid(best):.{len(std.partition('.')[2])}f}")


def test_maximize_and_a_test_metric_as_the_criterion(grid):
    runs = collect_runs([grid])
    low = {tuple(c.key.items()): c.chosen for c in select(runs, ["lr"], "valid.elbo")}
    high = {tuple(c.key.items()): c.chosen for c in select(runs, ["lr"], "valid.elbo", True)}
    assert low.keys() == high.keys() and len(low) == 2
    for cell in select(runs, ["lr"], "valid.elbo", maximize=True):
        assert max(cell.candidates.values()) == cell.candidates[json.dumps(cell.chosen)]


def test_without_select_every_setting_is_a_row(grid):
    rows = md_rows(report([grid], table_only=True))
    labels = sorted(r["estimator"] for r in rows)
    assert labels == sorted(f"{e} (lr={lr})" for e in ESTIMATORS for lr in LRS)


def test_csv_holds_every_statistic_at_full_precision(grid):
    results = results_of(grid)
    text = report([grid], select_keys=["lr"], fmt="csv", table_only=True)
    table = list(csv.DictReader(io.StringIO(text)))
    assert len(table) == 2
    for row in table:
        assert row["experiment"] == "vae"
        lr = float(row["lr"])
        tests = [results[row["estimator"], lr, s]["test"]["nll"] for s in SEEDS]
        assert float(row["test nll"]) == pytest.approx(statistics.mean(tests), rel=1e-12)
        assert float(row["test nll std"]) == pytest.approx(statistics.stdev(tests), rel=1e-9)
        assert row["test nll n"] == "2"
        assert float(row["95% CI test nll low"]) < float(row["test nll"])
        assert float(row["95% CI test nll high"]) > float(row["test nll"])


def test_latex_is_a_tabular_with_aligned_rows(grid):
    text = report([grid], select_keys=["lr"], fmt="tex", table_only=True)
    lines = text.strip().splitlines()
    assert lines[0].startswith(r"\begin{tabular}{l") and lines[-1] == r"\end{tabular}"
    ncols = len(lines[0].split("{")[2].rstrip("}"))
    body = [line for line in lines if line.endswith(r"\\")]
    assert len(body) == 3  # header and two rows
    assert all(line.count(" & ") == ncols - 1 for line in body)
    assert r"$\pm$" in text and "±" not in text


def test_out_writes_all_three_formats_and_figures(grid, tmp_path):
    pytest.importorskip("matplotlib")
    md = report([grid], tmp_path / "rep", select_keys=["lr"])
    assert (tmp_path / "rep" / "report.md").read_text() == md
    assert (tmp_path / "rep" / "report.csv").read_text().startswith("experiment,estimator,lr,")
    assert (tmp_path / "rep" / "report.tex").read_text().startswith(r"\begin{tabular}")
    assert (tmp_path / "rep" / "vae-valid.png").read_bytes()[:4] == b"\x89PNG"


def test_records_round_trip(grid, tmp_path):
    written = write_records([grid], tmp_path / "results")
    assert len(written) == len(ESTIMATORS) * len(LRS) * len(SEEDS)
    assert sorted(p.name for p in write_records([grid], tmp_path / "results")) == sorted(
        p.name for p in written
    )  # stable names: the same run gets the same record
    for path in written:
        data = json.loads(path.read_text())
        assert data["format"] == RECORD_FORMAT and path.name == record_name(data)
        assert str(grid) not in path.read_text() and "cwd" not in data["env"]
        assert {"config", "env", "results", "history"} <= data.keys()
        assert data["history"][-1]["valid"]["nll"] == data["results"]["valid_final"]["nll"]
        original = load_run(grid / "vae" / data["run"])
        back = load_record(path)
        assert (back.config, back.results, back.history) == (
            original.config,
            original.results,
            original.history,
        )
    for kwargs in ({}, {"select_keys": ["lr"]}, {"fmt": "csv", "select_keys": ["lr"]}):
        assert report([tmp_path / "results"], table_only=True, **kwargs) == report(
            [grid], table_only=True, **kwargs
        )


def test_unfinished_runs_get_no_record(grid, tmp_path):
    import shutil

    copy = tmp_path / "runs"
    shutil.copytree(grid / "vae" / "st-lr0.001-seed0", copy / "done")
    shutil.copytree(grid / "vae" / "st-lr0.001-seed1", copy / "open")
    (copy / "open" / "results.json").unlink()
    with pytest.warns(UnfinishedRunWarning, match="open"):
        written = write_records([copy], tmp_path / "rec")
    assert len(written) == 1


def test_pivot_and_paper_values(grid, tmp_path):
    paper = tmp_path / "paper.json"
    entries = [{"estimator": "gs", "lr": 0.003, "value": 12.5}]
    paper.write_text(json.dumps({"source": "a paper", "metric": "test.nll", "entries": entries}))
    text = report(
        [grid], pivot="lr", columns=["test", "paper"], paper=paper, select_keys=[], table_only=True
    )
    rows = {r["estimator"]: r for r in md_rows(text)}
    assert set(rows) == set(ESTIMATORS)
    assert list(rows["gs"]) == [
        "estimator",
        "0.001: test nll",
        "0.001: paper",
        "0.003: test nll",
        "0.003: paper",
    ]
    assert rows["gs"]["0.003: paper"] == "12.5" and rows["gs"]["0.001: paper"] == "—"
    assert "Paper: a paper." in report([grid], paper=paper)


def test_bad_arguments_are_one_line_errors(grid, capsys):
    for argv, needle in (
        (["report", str(grid), "--select", "nope"], "--select 'nope'"),
        (["report", str(grid), "--select", "lr", "--by", "valid.zzz"], "--by 'valid.zzz'"),
        (["report", str(grid), "--columns", "test,zzz"], "--columns"),
        (["report", str(grid), "--format", "pdf"], "--format"),
        (["report"], "name run directories"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1


def test_cli_record_and_report(grid, tmp_path, capsys):
    assert main(["record", str(grid), "--to", str(tmp_path / "rec")]) == 0
    capsys.readouterr()
    argv = ["report", str(tmp_path / "rec"), "--select", "lr", "--by", "valid.nll"]
    assert main([*argv, "--format", "md,csv,tex", "--table-only"]) == 0
    out = capsys.readouterr().out
    assert "| estimator | lr |" in out and "experiment,estimator,lr" in out
    assert r"\begin{tabular}" in out


def test_t_quantiles():
    stats = pytest.importorskip("scipy.stats")
    for df in (*range(1, 40), 45, 50, 80, 100, 200, 1000):
        assert t_quantile_95(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-3)
    with pytest.raises(ValueError, match="df"):
        t_quantile_95(0)
    assert Stat((5.0,)).interval() is None and Stat(()).text() == "–"


def test_generated_blocks_are_checked_and_rewritten(grid, tmp_path, monkeypatch):
    write_records([grid], tmp_path / "results" / "tiny")
    monkeypatch.chdir(tmp_path)
    command = "latentgrad report results/tiny --select lr --table-only --columns seeds,test"
    doc = tmp_path / "README.md"
    doc.write_text(f"# x\n\n<!-- table: {command} -->\n| old |\n<!-- end table -->\n\ntail\n")
    assert len(stale_blocks(doc)) == 1
    assert update_blocks([doc]) == [doc]
    assert stale_blocks(doc) == [] and update_blocks([doc]) == []
    text = doc.read_text()
    assert text.startswith("# x\n\n<!-- table: ") and text.endswith("<!-- end table -->\n\ntail\n")
    (block,) = find_blocks(text)
    assert block.body == report(["results/tiny"], select_keys=["lr"], columns=["seeds", "test"],
                                table_only=True)  # fmt: skip
    # a number edited by hand is caught
    cell = md_rows(block.body)[0]["test nll"].split(" ")[0]
    doc.write_text(text.replace(cell, f"{float(cell) + 1:.2f}", 1))
    assert len(stale_blocks(doc)) == 1
    # a block without records is kept as it is while it is marked so, and only then
    marked = f"<!-- table (no record yet): {command.replace('tiny', 'later')} -->"
    doc.write_text(f"{marked}\n| 1.0 |\n<!-- end table -->\n")
    assert stale_blocks(doc) == []
    # ... also while only some of its sources exist (new records beside old ones)
    both = command.replace("results/tiny", "results/tiny results/later")
    assert both != command
    doc.write_text(f"<!-- table (no record yet): {both} -->\n| 1.0 |\n<!-- end table -->\n")
    assert stale_blocks(doc) == []
    doc.write_text(
        f"<!-- table: {command.replace('tiny', 'later')} -->\n| 1 |\n<!-- end table -->\n"
    )
    with pytest.raises(ValueError, match="failed"):
        stale_blocks(doc)
    # once its records exist, the marked block is generated and loses the mark
    doc.write_text(f"{marked.replace('later', 'tiny')}\n| 1.0 |\n<!-- end table -->\n")
    assert update_blocks([doc]) == [doc]
    assert "no record yet" not in doc.read_text() and stale_blocks(doc) == []
    assert main(["report", "--update-readme"]) == 0
