"""The `latentgrad` command: list, compare (tiny), errors."""

import json
import subprocess
import sys

import pytest

from latentgrad.cli import main
from latentgrad.lab.registry import ESTIMATORS


def test_list_shows_every_estimator(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ESTIMATORS:
        assert name in out


def test_compare_prints_a_table_and_writes_json(capsys, tmp_path):
    path = tmp_path / "rows.jsonl"
    code = main(
        [
            "compare",
            "--problems",
            "categorical",
            "--estimators",
            "exact",
            "sf-loo",
            "gs",
            "--replicates",
            "300",
            "--quiet",
            "--json",
            str(path),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("categorical")]
    assert [line.split()[1] for line in lines] == ["exact", "sf-loo", "gs"]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    exact, loo, gs = rows
    assert exact["relative_bias"] < 1e-9 and exact["mean_variance"] == 0
    assert exact["loss_evals"] == 10 and loo["loss_evals"] == 4
    assert not exact["biased"]
    assert gs["biased"]  # Gumbel-Softmax at tau = 1 is visibly biased even with 300 replicates


def test_unknown_estimator_is_an_error(capsys):
    assert main(["compare", "--estimators", "nope", "--quiet"]) == 2
    assert "unknown estimator" in capsys.readouterr().err


def test_bad_replicates_is_an_error(capsys):
    assert main(["compare", "--replicates", "1"]) == 2


def test_console_script_entry_point_runs():
    out = subprocess.run(
        [sys.executable, "-m", "latentgrad.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "compare" in out.stdout


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_every_registered_estimator_builds(name):
    est = ESTIMATORS[name].build()
    assert callable(est)
