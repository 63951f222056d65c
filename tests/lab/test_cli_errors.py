"""Every error a user can fix is one line on stderr naming the flag or file, with exit status 2.

Each case runs through ``latentgrad.cli.main`` with the toy experiment (fast) or the VAE, after
an optional set-up that damages a run directory or hides an optional package (``sys.modules[name]
= None`` makes ``import name`` fail as if it were not installed).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import latentgrad_tests_toy as toy  # loaded by conftest.py
import pytest
import torch

from latentgrad.cli import main
from latentgrad.experiments import vae
from latentgrad.lab import catalog

TOY_RUN = ["run", "toy", "--epochs", "1", "--quiet"]
VAE_RUN = [
    *("run", "vae", "--dataset", "digits", "--epochs", "1", "--max-steps-per-epoch", "2"),
    *("--eval-samples", "2", "--max-eval-examples", "10", "--quiet"),
]


@pytest.fixture(autouse=True)
def experiments(monkeypatch):
    monkeypatch.setattr(
        catalog, "all_experiments", lambda: {"toy": toy.EXPERIMENT, "vae": vae.EXPERIMENT}
    )
    monkeypatch.delenv("LATENTGRAD_DEBUG", raising=False)


def forget(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Drop module ``name`` and its submodules from ``sys.modules`` (until the test ends)."""
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        monkeypatch.delitem(sys.modules, key)


def hide(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make ``import name`` (and its submodules) fail as if the package were not installed."""
    forget(monkeypatch, name)
    monkeypatch.setitem(sys.modules, name, None)


def _no_numpy(tmp: Path, mp: pytest.MonkeyPatch) -> None:
    forget(mp, "latentgrad.data")  # imported again, it needs numpy
    hide(mp, "numpy")


def finished_toy_run(tmp: Path) -> Path:
    """A finished toy run in ``tmp/run``."""
    assert main([*TOY_RUN, "--run-dir", str(tmp / "run")]) == 0
    return tmp / "run"


def truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@dataclass
class Case:
    """argv (``{tmp}`` is the test's folder), a set-up, and what the one line must name."""

    argv: str
    names: tuple[str, ...]
    setup: Callable[[Path, pytest.MonkeyPatch], None] | None = None
    needs: tuple[str, ...] = field(default_factory=tuple)


def _unfinished(tmp: Path) -> Path:
    run_dir = finished_toy_run(tmp)
    (run_dir / "results.json").unlink()
    return run_dir / "checkpoint.pt"


def _finished(tmp: Path, *files: str) -> None:
    finished_toy_run(tmp)
    for name in files:
        (tmp / name).write_text("")


def _foreign_checkpoint(tmp: Path, mp: pytest.MonkeyPatch) -> None:
    torch.save({"weights": torch.zeros(3)}, _unfinished(tmp))


def _no_network(tmp: Path, mp: pytest.MonkeyPatch) -> None:
    import latentgrad.data.files as files

    def offline(url: str, dest: Path) -> None:
        raise OSError("network unreachable")

    mp.setattr(files, "_fetch", offline)


def _unwritable(tmp: Path, mp: pytest.MonkeyPatch) -> None:
    original = Path.mkdir

    def mkdir(self: Path, *args: object, **kwargs: object) -> None:
        if "locked" in self.parts:
            raise PermissionError(13, "Permission denied", str(self))
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    mp.setattr(Path, "mkdir", mkdir)


def _write(name: str, text: str) -> Callable[[Path, pytest.MonkeyPatch], None]:
    return lambda tmp, mp: (tmp / name).write_text(text)


CASES = {
    # flags out of range: validated before anything runs or is written
    "threads-0": Case("{toy} --threads 0 --run-dir {tmp}/r", ("--threads",)),
    "max-eval-examples-0": Case("{toy} --max-eval-examples 0 --run-dir {tmp}/r", ("--max-eval",)),
    "batch-size-0": Case("{toy} --batch-size 0 --run-dir {tmp}/r", ("--batch-size",)),
    "epochs-0": Case("{toy} --epochs 0 --run-dir {tmp}/r", ("--epochs",)),
    "eval-every-0": Case("{toy} --eval-every 0 --run-dir {tmp}/r", ("--eval-every",)),
    "lr-nan": Case("{toy} --lr nan --run-dir {tmp}/r", ("--lr",)),
    "lr-negative": Case("{toy} --lr -1 --run-dir {tmp}/r", ("--lr",)),
    "steps-0": Case("{toy} --max-steps-per-epoch 0 --run-dir {tmp}/r", ("--max-steps",)),
    "checkpoint-every": Case("{toy} --checkpoint-every -1", ("--checkpoint-every",)),
    "not-an-int": Case("{toy} --epochs two", ("--epochs", "--help")),
    "unknown-flag": Case("{toy} --epochz 2", ("--epochz", "--help")),
    "num-classes-1": Case("{vae} --num-classes 1 --run-dir {tmp}/r", ("--num-classes",)),
    "valid-samples-0": Case("{vae} --valid-samples 0 --run-dir {tmp}/r", ("--valid-samples",)),
    "print-config": Case("{toy} --batch-size 0 --print-config", ("--batch-size",)),
    # names that do not exist
    "no-experiment": Case("run", ("experiment", "vae")),
    "unknown-experiment": Case("run nope", ("'nope'", "latentgrad list")),
    "unknown-estimator": Case("{toy} --estimator nope", ("'nope'", "valid:")),
    "unknown-data-set": Case(
        "{vae} --dataset nope --run-dir {tmp}/r", ("'nope'", "digits"), needs=("numpy",)
    ),
    # --config files
    "config-missing": Case("{toy} --config {tmp}/none.json", ("none.json",)),
    "config-a-directory": Case("{toy} --config {tmp}", ("cannot read config file",)),
    "config-bad-json": Case(
        "{toy} --config {tmp}/c.json", ("c.json", "not valid JSON"), _write("c.json", '{"a": ')
    ),
    "config-not-object": Case(
        "{toy} --config {tmp}/c.json", ("c.json", "JSON object"), _write("c.json", "[1]")
    ),
    "config-unknown-key": Case(
        "{toy} --config {tmp}/c.json", ("c.json", "'epoch'"), _write("c.json", '{"epoch": 1}')
    ),
    "config-wrong-type": Case(
        "{toy} --config {tmp}/c.json", ("c.json", "'epochs'"), _write("c.json", '{"epochs": "x"}')
    ),
    "config-out-of-range": Case(
        "{toy} --config {tmp}/c.json --run-dir {tmp}/r",
        ("--batch-size",),
        _write("c.json", '{"batch_size": 0}'),
    ),
    # where the run goes
    "out-under-a-file": Case("{toy} --out {tmp}/f/runs", ("f is a file", "--out"), _write("f", "")),
    "run-dir-is-a-file": Case("{toy} --run-dir {tmp}/f", ("f is a file",), _write("f", "")),
    "out-unwritable": Case(
        "{toy} --out {tmp}/locked/runs", ("locked", "Permission denied", "--out"), _unwritable
    ),
    "another-config-there": Case(
        "{toy} --lr 0.5 --run-dir {tmp}/run",
        ("lr: 0.05 there, 0.5 requested", "--no-resume"),
        lambda tmp, mp: _finished(tmp),
    ),
    # damaged run files
    "checkpoint-zero-bytes": Case(
        "{toy} --run-dir {tmp}/run",
        ("checkpoint.pt", "--no-resume"),
        lambda tmp, mp: _unfinished(tmp).write_bytes(b""),
    ),
    "checkpoint-truncated": Case(
        "{toy} --run-dir {tmp}/run",
        ("checkpoint.pt", "--no-resume"),
        lambda tmp, mp: truncate(_unfinished(tmp), 600),
    ),
    "checkpoint-foreign": Case(
        "{toy} --run-dir {tmp}/run", ("checkpoint.pt", "not a latentgrad"), _foreign_checkpoint
    ),
    "checkpoint-text": Case(
        "{toy} --run-dir {tmp}/run",
        ("checkpoint.pt",),
        lambda tmp, mp: _unfinished(tmp).write_text("hello"),
    ),
    "results-truncated-on-resume": Case(
        "{toy} --run-dir {tmp}/run",
        ("results.json", "delete it"),
        lambda tmp, mp: truncate(finished_toy_run(tmp) / "results.json", 50),
    ),
    "config-json-truncated": Case(
        "{toy} --run-dir {tmp}/run",
        ("config cannot be read", "--no-resume"),
        lambda tmp, mp: truncate(finished_toy_run(tmp) / "config.json", 40),
    ),
    # latentgrad report
    "report-metrics-truncated": Case(
        "report {tmp}/run",
        ("metrics.jsonl", "line 1"),
        lambda tmp, mp: truncate(finished_toy_run(tmp) / "metrics.jsonl", 30),
    ),
    "report-results-truncated": Case(
        "report {tmp}/run",
        ("results.json", "not valid JSON"),
        lambda tmp, mp: truncate(finished_toy_run(tmp) / "results.json", 50),
    ),
    "report-results-zero-bytes": Case(
        "report {tmp}",
        ("results.json",),
        lambda tmp, mp: (finished_toy_run(tmp) / "results.json").write_text(""),
    ),
    "report-config-truncated": Case(
        "report {tmp}/run",
        ("config.json",),
        lambda tmp, mp: truncate(finished_toy_run(tmp) / "config.json", 40),
    ),
    "report-missing-dir": Case("report {tmp}/none", ("none",)),
    "report-no-runs": Case("report {tmp}", ("no run directories",)),
    "report-out-under-a-file": Case(
        "report {tmp}/run --out {tmp}/f/rep",
        ("f is a file", "--out"),
        lambda tmp, mp: _finished(tmp, "f"),
    ),
    # latentgrad compare
    "compare-threads-0": Case("compare --threads 0", ("--threads",)),
    "compare-replicates-1": Case("compare --replicates 1", ("--replicates",)),
    "compare-unknown-estimator": Case("compare --estimators nope", ("'nope'",)),
    "compare-json-under-a-file": Case(
        "compare --json {tmp}/f/rows.jsonl", ("f is a file", "--json"), _write("f", "")
    ),
    # missing optional packages and data
    "no-scikit-learn": Case(
        "{vae} --run-dir {tmp}/r",
        ("scikit-learn", "pip install 'latentgrad[experiments]'"),
        lambda tmp, mp: hide(mp, "sklearn"),
        needs=("numpy",),
    ),
    "no-numpy": Case(
        "{vae} --run-dir {tmp}/r",
        ("numpy", "pip install 'latentgrad[experiments]'"),
        _no_numpy,
    ),
    "data-missing": Case(
        "{vae} --dataset mnist --data {tmp}/data --run-dir {tmp}/r",
        ("data/mnist", "--data"),
        _no_network,
        needs=("numpy",),
    ),
    "estimator-does-not-fit": Case(
        "{vae} --estimator exact --run-dir {tmp}/r",
        ("max_support", "num_categoricals"),
        needs=("numpy", "sklearn"),
    ),
    "sparsemax-on-bits": Case(
        "{vae} --estimator sparsemax --latent bernoulli --run-dir {tmp}/r",
        ("--latent categorical",),
        needs=("numpy", "sklearn"),
    ),
}


def prepare(case: Case, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    for module in case.needs:
        pytest.importorskip(module)
    if case.setup is not None:
        case.setup(tmp, monkeypatch)
    text = case.argv.format(toy=" ".join(TOY_RUN), vae=" ".join(VAE_RUN), tmp=tmp)
    return text.split()


@pytest.mark.parametrize("name", list(CASES))
def test_each_error_is_one_line_naming_the_flag_or_file(name, tmp_path, monkeypatch, capsys):
    case = CASES[name]
    argv = prepare(case, tmp_path, monkeypatch)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("latentgrad ") and ": error: " in lines[0], err
    for needle in case.names:
        assert needle in lines[0], (needle, err)


@pytest.mark.parametrize("argv", [["--batch-size", "0"], ["--lr", "-1"], ["--eval-samples", "0"]])
def test_the_corrected_rerun_after_a_rejected_run_succeeds(argv, tmp_path, capsys):
    run_dir = ["--run-dir", str(tmp_path / "r")]
    assert main([*TOY_RUN, *argv, *run_dir]) == 2
    assert not (tmp_path / "r" / "config.json").exists()
    assert main([*TOY_RUN, *run_dir]) == 0
    assert (tmp_path / "r" / "results.json").exists()


def test_the_corrected_rerun_after_a_rejected_vae_run_succeeds(tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    out = ["--out", str(tmp_path)]
    assert main([*VAE_RUN, "--batch-size", "0", *out]) == 2
    assert main([*VAE_RUN, "--estimator", "exact", *out]) == 2  # found when built: 10^20 values
    assert main([*VAE_RUN, "--estimator", "exact", "--num-categoricals", "2", *out]) == 0
    assert main([*VAE_RUN, "--batch-size", "10", *out]) == 0
    assert (tmp_path / "vae" / "exact-seed0" / "results.json").exists()


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTGRAD_DEBUG", "1")
    with pytest.raises(ValueError, match="max_eval_examples"):
        main([*TOY_RUN, "--max-eval-examples", "0", "--run-dir", str(tmp_path / "r")])


@pytest.mark.filterwarnings("default::latentgrad.lab.plots.MissingExtraWarning")
def test_without_matplotlib_the_run_warns_on_one_line_and_writes_results(
    tmp_path, monkeypatch, capsys
):
    hide(monkeypatch, "matplotlib")
    run_dir = tmp_path / "run"
    assert main([*TOY_RUN, "--run-dir", str(run_dir)]) == 0
    assert (run_dir / "results.json").exists() and not list(run_dir.glob("*.png"))
    assert main(["report", str(run_dir), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.md").exists() and not list(tmp_path.glob("rep/*.png"))
    err = capsys.readouterr().err.splitlines()
    warnings = [line for line in err if line.startswith("latentgrad: warning:")]
    assert len(warnings) == 2
    assert all("matplotlib is not installed" in w for w in warnings)
    assert all("pip install 'latentgrad[experiments]'" in w for w in warnings)


def test_the_console_command_exits_2_with_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "latentgrad.cli", "run", "vae", "--threads", "0"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        "latentgrad run vae: error: argument --threads: expected an int >= 1, got '0' "
        "(see latentgrad run vae --help)"
    ]


def test_report_on_a_config_json_that_is_not_a_run_is_skipped(tmp_path, capsys):
    finished_toy_run(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"not": "a run"}))
    (tmp_path / "tool").mkdir()
    (tmp_path / "tool" / "config.json").write_text("{ not json")  # no run files beside it
    assert main(["report", str(tmp_path)]) == 0
    assert "## toy" in capsys.readouterr().out
