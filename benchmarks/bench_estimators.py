"""Time per step and gradient variance of every estimator on the `latentgrad compare` problems.

Timing is interleaved: each round runs one forward+backward step of every estimator in a rotating
order, so a slow spell of the (shared, noisy) machine hits all of them alike; the table reports
the median and the interquartile range over rounds. Variance is the mean per-coordinate variance
of the gradient w.r.t. (logits, loss parameters), from independent replicates.

Usage:
    python benchmarks/bench_estimators.py [--batch 64] [--rounds 60] [--replicates 2000]
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import quartiles

from latentgrad.lab.compare import build_for, make_problem, run_once, warm_up
from latentgrad.lab.registry import ESTIMATORS
from latentgrad.testing.problems import replicated_and_exact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="examples per timed step")
    parser.add_argument("--rounds", type=int, default=60, help="interleaved timing rounds")
    parser.add_argument("--replicates", type=int, default=2000, help="replicates for variance")
    parser.add_argument("--problems", nargs="+", default=["categorical", "bernoulli", "factorized"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {args.batch}")

    for family in args.problems:
        timing_problem = make_problem(family, batch=args.batch, seed=0, dtype=torch.float32)
        variance_problem = make_problem(family, seed=0)
        built = {}
        for name, entry in ESTIMATORS.items():
            if entry.latent != "softmax" or not entry.applies_to(
                timing_problem.make_dist(timing_problem.logits)
            ):
                continue
            built[name] = (build_for(entry, timing_problem), build_for(entry, variance_problem))
        times: dict[str, list[float]] = {n: [] for n in built}
        names = list(built)
        for name in names:  # warm-up (also trains learned baselines a little)
            warm_up(built[name][0], timing_problem, 20)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                start = time.perf_counter()
                run_once(built[name][0], timing_problem).surrogate.sum().backward()
                times[name].append(1000 * (time.perf_counter() - start))
        print(f"\n== {family} (event {tuple(timing_problem.logits.shape[1:])}) ==")
        print(
            f"{'estimator':<16} {'ms/step median':>14} {'IQR':>17} {'evals':>6} "
            f"{'grad var':>10} {'rel. bias':>9}"
        )
        for name in names:
            q1, med, q3 = quartiles(times[name])
            est = built[name][1]
            warm_up(est, variance_problem, 200)
            evals = run_once(est, variance_problem).loss_evals
            grads, exact = replicated_and_exact(
                variance_problem, est, args.replicates, chunk_size=1000
            )
            bias = float((grads.mean(0) - exact).norm() / exact.norm())
            print(
                f"{name:<16} {med:>14.3f} {f'[{q1:.3f}, {q3:.3f}]':>17} {evals:>6d} "
                f"{float(grads.var(0).mean()):>10.3g} {bias:>9.4f}"
            )


if __name__ == "__main__":
    main()
