"""Cost per training step of local marginalization (and local expectation gradients) against the
number of stochastic units, on the `sbn` experiment's real model.

One training step (forward, backward) of a two-layer linear SBN (`latentgrad.experiments.sbn`,
784 pixels, batch 100) is timed for several layer widths u. Local marginalization evaluates the
loss on 1 + 2u rows (the sample and one flip per unit), so its cost is linear in the units *in
loss evaluations*; but one evaluation of a wider network also costs more. To separate the two,
each width also times `rows`: the loss alone, forward and backward, on 1 + 2u rows sampled from
the network (the same tensors through the same network, no marginalization machinery), and
`nvil` (one row). The column `/ rows` is a step's time over that of `rows` at the same width:
constant in u means the marginalization adds a constant factor to evaluating that many rows, so
its cost is linear in the number of units at a fixed cost per evaluation.

Timing is interleaved: each round times every (estimator, width) pair in a rotating order, so a
slow spell of the shared machine hits all of them alike; the table reports the median and
interquartile range over rounds.

Usage:
    python benchmarks/bench_local.py [--units 25 50 100 200] [--rounds 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _common import interleaved_times, quartiles

from latentgrad.estimators import Chain
from latentgrad.experiments.sbn import SigmoidBeliefNet
from latentgrad.lab.registry import make_estimator


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
        cases[("rows", units)] = (net, None)

    def step(net: SigmoidBeliefNet, chain: Chain | None) -> int:
        net.zero_grad(set_to_none=True)
        if chain is None:  # the loss alone on 1 + 2u sampled rows, forward and backward
            rows = 1 + 2 * net.prior_logits.shape[0]
            with torch.no_grad():
                zs = net.sample_posterior(x, rows)
            net.loss(x, zs).mean().backward()
            return rows
        out = chain(net.posterior(x), net.conditionals(), lambda zs: net.loss(x, zs), context=x)
        out.surrogate.mean().backward()
        return out.loss_evals

    evals, times = interleaved_times(cases, step, args.rounds)
    keys = list(cases)
    print(
        f"\n{'estimator':<18} {'units/layer':>11} {'evals':>6} {'ms/step (median [IQR])':>26} "
        f"{'ms/eval':>8} {'/ rows':>7}"
    )
    for key in sorted(keys, key=lambda k: (k[1], k[0])):
        lo, med, hi = quartiles(times[key])
        name, units = key
        ratio = med / statistics.median(times[("rows", units)])
        print(
            f"{name:<18} {units:>11} {evals[key]:>6} {med:>12.1f} [{lo:.1f}, {hi:.1f}]"
            f"{'':>3} {med / evals[key]:>8.3f} {ratio:>7.2f}"
        )
    print("\nstep time / time of the loss alone on the same rows, across widths:")
    for name in args.estimators:
        ratios = [
            statistics.median(times[(name, u)]) / statistics.median(times[("rows", u)])
            for u in args.units
        ]
        print(f"  {name:<18} {min(ratios):.2f} to {max(ratios):.2f}")


if __name__ == "__main__":
    main()
