"""Helpers the benchmark scripts share.

A script run as ``python benchmarks/NAME.py`` has this folder first on ``sys.path``, so it
imports these as ``from _common import ...``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, TypeVar

K = TypeVar("K", bound=Hashable)


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    """``(first quartile, median, third quartile)`` of ``xs`` (at least two values)."""
    q = statistics.quantiles(xs, n=4)
    return q[0], statistics.median(xs), q[2]


def interleaved_times(
    cases: Mapping[K, Sequence[Any]],
    step: Callable[..., int],
    rounds: int,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[dict[K, int], dict[K, list[float]]]:
    """Time ``step(*case)`` for every case, in milliseconds, over ``rounds`` rounds.

    Each case runs once first, untimed (a warm-up; its return value, the loss evaluations of a
    step, is kept). Each round then times every case in a rotating order, so a slow spell of a
    shared machine hits all of them alike. ``clock``: the wall clock by default;
    ``time.thread_time`` (the calling thread's CPU time) leaves out the time other processes
    hold the core, for one-thread work on a busy machine.

    Returns:
        ``(evals, times)``: the warm-up's return value and the ``rounds`` times of each case.
    """
    evals = {key: step(*case) for key, case in cases.items()}
    times: dict[K, list[float]] = {key: [] for key in cases}
    keys = list(cases)
    for r in range(rounds):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            start = clock()
            step(*cases[key])
            times[key].append(1000 * (clock() - start))
    return evals, times
