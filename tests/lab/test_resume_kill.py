"""A run killed with SIGKILL mid-way resumes from its checkpoint and ends with the same results."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TIMING_KEYS = {"time_per_epoch", "total_time"}

ARGS = [
    "run",
    "vae",
    "--dataset",
    "digits",
    "--estimator",
    "sf-loo",
    "--epochs",
    "6",
    "--eval-samples",
    "50",
    "--max-eval-examples",
    "100",
    "--threads",
    "1",
    "--quiet",
]


def _cli(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "latentgrad.cli", *ARGS, "--run-dir", str(run_dir)]


def _results(run_dir: Path) -> dict:
    data = json.loads((run_dir / "results.json").read_text())
    return {k: v for k, v in data.items() if k not in TIMING_KEYS}


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_run_resumes_to_the_uninterrupted_results(tmp_path):
    pytest.importorskip("sklearn")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference"
    subprocess.run(_cli(reference), check=True, env=env, capture_output=True, timeout=300)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 240
    try:
        # kill as soon as the first epoch's checkpoint is on disk, before the run can finish
        while not (killed / "checkpoint.pt").exists():
            assert proc.poll() is None, "the run ended before writing a checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert not (killed / "results.json").exists(), "the run finished before it was killed"
    epochs_done = len((killed / "metrics.jsonl").read_text().splitlines())
    assert epochs_done < 6

    subprocess.run(_cli(killed), check=True, env=env, capture_output=True, timeout=300)
    assert _results(killed) == _results(reference)
