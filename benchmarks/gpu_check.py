"""Everything a machine with a GPU can verify, in one call: the test suite on CUDA, then the
benchmarks' GPU columns, with a summary.

1. ``pytest -m "not slow" --device cuda``: the suite with every tensor the tests build on the GPU
   (tests that cannot run there are skipped, each with its reason; see docs/testing.md).
2. The benchmarks that take ``--device``, at a reduced size, on ``cuda`` (and on ``cpu`` in the
   same call, for comparison): ``bench_gumbel.py`` and ``bench_mappings.py``.

The summary (device, torch and CUDA versions, test counts, failures, skip reasons, benchmark
tables) goes to stdout and to ``OUT/summary.md``; the raw outputs lie beside it. The whole check
is sized to finish in under 10 minutes (``--budget``). On a machine without a usable CUDA device
it prints one line saying so and exits 0: the project never needs a GPU.

Usage::

    python benchmarks/gpu_check.py [--out gpu-check] [--budget 540] [--device cuda]

Exit status: 0 when every test passed (or there is no GPU), 1 when a test failed or the tests
ran out of time (a benchmark that fails, e.g. without the ``bench`` extra, shows in the summary).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

#: The benchmarks run on the GPU (and on the CPU for comparison), with reduced sizes and their
#: share of the time left after the tests.
BENCHMARKS: dict[str, list[str]] = {
    "bench_gumbel.py": ["--rounds", "10", "--reps", "5"],
    "bench_mappings.py": ["--seconds", "0.5", "--min-rounds", "10"],
}


def _no_gpu_reason(device: str) -> str | None:
    """Why ``device`` cannot run here, or None when it can."""
    if not torch.cuda.is_available():
        build = torch.version.cuda or "none"
        return f"no CUDA device on this machine (torch {torch.__version__}, CUDA build: {build})"
    index = torch.device(device).index or 0
    if index >= torch.cuda.device_count():
        return f"{device} does not exist (this machine has {torch.cuda.device_count()} GPU(s))"
    return None


def _run(cmd: list[str], log: Path, timeout: float) -> tuple[int | None, float]:
    """Run ``cmd`` from the repository root, output to ``log``; (exit code or None on timeout,
    seconds)."""
    start = time.perf_counter()
    with log.open("w") as out:
        try:
            proc = subprocess.run(
                cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=max(timeout, 1)
            )
            code: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            code = None
    return code, time.perf_counter() - start


def _test_summary(junit: Path, limit: int = 30) -> tuple[Counter[str], list[str], Counter[str]]:
    """Counts by outcome, the failed tests (with their first message line) and the skip reasons
    (with how many tests each) of a pytest JUnit XML report."""
    counts: Counter[str] = Counter()
    failed: list[str] = []
    skips: Counter[str] = Counter()
    if not junit.is_file():
        return counts, failed, skips
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
                message = (child.get("message") or "").strip().splitlines()
                if len(failed) < limit:
                    failed.append(f"{name}: {message[0][:160] if message else child.tag}")
            elif child.tag == "skipped":
                outcome = "skipped"
                skips[(child.get("message") or "").strip()[:160]] += 1
        counts[outcome] += 1
    return counts, failed, skips


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check"), help="summary folder")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for the whole check")
    parser.add_argument("--device", default="cuda", help="the CUDA device to check")
    args = parser.parse_args(argv)
    if not args.device.startswith("cuda"):
        parser.error(f"--device must name a CUDA device (cuda, cuda:1), got {args.device!r}")

    reason = _no_gpu_reason(args.device)
    if reason is not None:
        print(f"gpu_check: {reason}; nothing to check, exiting 0.")
        return 0

    start = time.perf_counter()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    props = torch.cuda.get_device_properties(torch.device(args.device))
    lines = [
        "# GPU check",
        "",
        f"- device: {args.device}, {props.name}, {props.total_memory / 2**30:.0f} GiB",
        f"- torch {torch.__version__}, CUDA {torch.version.cuda}, Python {sys.version.split()[0]}",
        "",
    ]

    # 1. the test suite on the GPU: at most two thirds of the budget
    junit = out / "tests.xml"
    cmd = [
        sys.executable, "-m", "pytest", "-m", "not slow", "-q", "-p", "no:cacheprovider",
        "--device", args.device, f"--junitxml={junit}", "tests",
    ]  # fmt: skip
    code, seconds = _run(cmd, out / "tests.log", args.budget * 2 / 3)
    counts, failed, skips = _test_summary(junit)
    status = "timed out" if code is None else f"exit {code}"
    lines += [
        f"## Tests on {args.device} ({seconds:.0f} s, {status})",
        "",
        ", ".join(f"{counts[k]} {k}" for k in ("passed", "failed", "skipped")),
        "",
    ]
    if failed:
        lines += ["Failed:", "", *(f"- {f}" for f in failed), ""]
    if skips:
        lines += ["Skipped (tests, reason):", "", *(f"- {n} {r}" for r, n in skips.items()), ""]
    ok = code == 0

    # 2. the benchmarks' GPU columns (and the CPU beside them), in the time left
    for script, extra in BENCHMARKS.items():
        for device in (args.device, "cpu"):
            left = args.budget - (time.perf_counter() - start)
            log = out / f"{Path(script).stem}-{device.replace(':', '')}.log"
            cmd = [sys.executable, str(ROOT / "benchmarks" / script), *extra, "--device", device]
            if left < 20:
                lines += [f"## {script} on {device}: not run (out of time)", ""]
                continue
            code, seconds = _run(cmd, log, min(left, args.budget / 6))
            status = "timed out" if code is None else f"exit {code}"
            body = log.read_text().rstrip()
            lines += [f"## {script} --device {device} ({seconds:.0f} s, {status})", ""]
            lines += ["```", body[-4000:], "```", ""]

    lines.append(f"Total: {time.perf_counter() - start:.0f} s; {'OK' if ok else 'FAILED'}")
    summary = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(summary)
    print(summary, end="")
    print(f"gpu_check: summary in {os.path.relpath(out / 'summary.md')}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
