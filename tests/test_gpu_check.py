"""benchmarks/gpu_check.py: a clear no-op without CUDA, and its summary of a JUnit report."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("latentgrad_gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = _load()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here: the check would run")
def test_without_cuda_it_says_so_in_one_line_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert gpu_check.main(["--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("gpu_check: no CUDA device")
    assert not (tmp_path / "out").exists()


def test_it_refuses_a_device_that_is_not_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--device", "cpu"])
    assert exit_info.value.code == 2
    assert "--device must name a CUDA device" in capsys.readouterr().err


def test_the_summary_counts_outcomes_failures_and_skip_reasons(tmp_path: Path) -> None:
    junit = tmp_path / "tests.xml"
    junit.write_text(
        """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
        <testcase classname="tests.a" name="test_ok" />
        <testcase classname="tests.a" name="test_bad"><failure message="boom&#10;more" /></testcase>
        <testcase classname="tests.b" name="test_x"><skipped message="CPU only: why" /></testcase>
        <testcase classname="tests.b" name="test_y"><skipped message="CPU only: why" /></testcase>
        </testsuite></testsuites>"""
    )
    counts, failed, skips = gpu_check._test_summary(junit)
    assert counts == {"passed": 1, "failed": 1, "skipped": 2}
    assert failed == ["tests.a::test_bad: boom"]
    assert skips == {"CPU only: why": 2}
    assert gpu_check._test_summary(tmp_path / "missing.xml") == ({}, [], {})


def test_the_check_is_documented() -> None:
    docs = (SCRIPT.parents[1] / "docs" / "testing.md").read_text()
    assert "benchmarks/gpu_check.py" in docs and "--device cuda" in docs
