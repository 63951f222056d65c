"""`latentgrad run vae` on the embedded digits for two estimators, then `report` and `list`."""

import pytest

from latentgrad.cli import main


def test_run_two_estimators_and_report(tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    for estimator in ("sf-loo", "st-gs"):
        code = main(
            [
                "run",
                "vae",
                "--dataset",
                "digits",
                "--estimator",
                estimator,
                "--epochs",
                "2",
                "--max-steps-per-epoch",
                "3",
                "--eval-samples",
                "20",
                "--max-eval-examples",
                "50",
                "--out",
                str(tmp_path),
                "--quiet",
            ]
        )
        assert code == 0
    run_dir = tmp_path / "vae" / "sf-loo-seed0"
    for name in ("config.json", "env.json", "metrics.jsonl", "checkpoint.pt", "results.json"):
        assert (run_dir / name).exists(), name
    assert list(run_dir.glob("*.png"))
    capsys.readouterr()
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    table = capsys.readouterr().out
    assert "sf-loo" in table and "st-gs" in table and "nll" in table
    assert (tmp_path / "report" / "report.md").exists()
    assert list((tmp_path / "report").glob("*.png"))
    assert main(["list"]) == 0
    assert "vae" in capsys.readouterr().out


def test_an_infeasible_setting_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    pytest.importorskip("sklearn")
    monkeypatch.delenv("LATENTGRAD_DEBUG", raising=False)
    args = ["run", "vae", "--dataset", "digits", "--estimator", "exact", "--out", str(tmp_path)]
    assert main([*args, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "max_support" in err and "Traceback" not in err
    monkeypatch.setenv("LATENTGRAD_DEBUG", "1")
    with pytest.raises(ValueError, match="max_support"):
        main([*args, "--quiet"])
