"""Cost per training step of local marginalization (and local expectation gradients) against the
number of stochastic units, on the `sbn` experiment's real model.

One training step (forward, backward) of a two-layer linear SBN (`latentgrad.experiments.sbn`,
784 pixels, batch 100) is timed for several layer widths; `nvil` (one loss evaluation per step)
is timed beside it as the unit of cost. Timing is interleaved: each round times every
(estimator, width) pair in a rotating order, so a slow spell of the shared machine hits all of
them alike; the table reports the median and interquartile range over rounds, the loss
evaluations per example, the time per loss evaluation, and the slope of a least-squares line of
time against the number of units (cost should be linear: 1 + units loss rows per step).

Usage:
    python benchmarks/bench_local.py [--units 25 50 100 200] [--rounds 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from latentgrad.estimators import Chain
from latentgrad.experiments.sbn import SigmoidBeliefNet
from latentgrad.lab.registry import make_estimator


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4)
    return q[0], statistics.median(xs), q[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, nargs="+", default=[25, 50, 100, 200])
    parser.add_argument(
        "--estimators", nargs="+", default=["nvil", "local-reparam", "local-expectation"]
    )
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {args.batch}")
    x = torch.rand(args.batch, 784).round()
    cases = {}
    for units in args.units:
        net = SigmoidBeliefNet(784, layers=2, units=units)
        for name in args.estimators:
            cases[(name, units)] = (net, Chain(make_estimator(name), 2))

    def step(net: SigmoidBeliefNet, chain: Chain) -> int:
        net.zero_grad(set_to_none=True)
        out = chain(net.posterior(x), net.conditionals(), lambda zs: net.loss(x, zs), context=x)
        out.surrogate.mean().backward()
        return out.loss_evals

    evals = {key: step(*case) for key, case in cases.items()}  # warm-up
    times: dict[tuple[str, int], list[float]] = {key: [] for key in cases}
    keys = list(cases)
    for r in range(args.rounds):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            start = time.perf_counter()
            step(*cases[key])
            times[key].append(1000 * (time.perf_counter() - start))
    print(
        f"\n{'estimator':<18} {'units/layer':>11} {'evals':>6} {'ms/step (median [IQR])':>26} "
        f"{'ms/eval':>8}"
    )
    for key in keys:
        lo, med, hi = quartiles(times[key])
        name, units = key
        print(
            f"{name:<18} {units:>11} {evals[key]:>6} {med:>12.1f} [{lo:.1f}, {hi:.1f}]"
            f"{'':>3} {med / evals[key]:>8.3f}"
        )
    print("\nlinear fit of median ms/step against total units (2 layers):")
    for name in args.estimators:
        xs = [2.0 * u for u in args.units]
        ys = [statistics.median(times[(name, u)]) for u in args.units]
        fit = statistics.linear_regression(xs, ys)
        pred = [fit.intercept + fit.slope * v for v in xs]
        resid = max(abs(p - y) / y for p, y in zip(pred, ys, strict=True))
        print(
            f"  {name:<18} {fit.slope:8.3f} ms per unit, intercept {fit.intercept:7.1f} ms, "
            f"largest relative residual {100 * resid:.0f}%"
        )


if __name__ == "__main__":
    main()
