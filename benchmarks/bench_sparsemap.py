"""Forward + backward time of the batched SparseMAP solver, and of a SparseMAP VAE step.

Part 1, per problem ``(oracle, D)`` with a batch of 64 rows of float32 scores
``theta ~ N(0.5, 1)``: the batched solver (one call on all rows) against the same solver run one
row at a time (a Python loop of calls with ``N = 1``). One timing is the solve plus the backward
of a loss of both ``mu`` and the weights. The table also gives the mean support size.

Part 2: one training step of a bit-vector VAE (batch 64, D = 32, random binary 784-pixel
"images", linear encoder 784 -> 32 and linear decoder 32 -> 784): SparseMAP marginalization
(the Bernoulli NLL of every support structure, weighted by the SparseMAP weights) against a
Gumbel-Softmax step (:class:`~latentgrad.estimators.relaxed.GumbelSoftmax` on the Bernoulli
family, whose event is the 32 bits).

Rounds are interleaved (each round times every contender once, in an order that cycles through
the permutations); the table reports the median and interquartile range over rounds in ms. Run
on one thread.

Usage::

    python benchmarks/bench_sparsemap.py
    python benchmarks/bench_sparsemap.py --seconds 5
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import latentgrad as lg
from latentgrad.estimators.relaxed import GumbelSoftmax
from latentgrad.mappings._sparsemap import sparsemap
from latentgrad.mappings.oracles import BudgetBits, FreeBits

Step = Callable[[], object]


def interleaved(
    contenders: dict[str, Step], seconds: float, min_rounds: int
) -> dict[str, list[float]]:
    """Seconds per call of every contender, over interleaved rounds."""
    names = list(contenders)
    orders = list(itertools.permutations(names))
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm up
        contenders[name]()
    start = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or time.perf_counter() - start < seconds:
        for name in orders[rounds % len(orders)]:
            t0 = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - t0)
        rounds += 1
    return times


def summary(ts: list[float]) -> tuple[float, float]:
    """Median and interquartile range, in ms."""
    q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
    return 1e3 * statistics.median(ts), 1e3 * (q[2] - q[0])


def solver_steps(
    oracle: FreeBits | BudgetBits, batch: int, gen: torch.Generator
) -> tuple[dict[str, Step], float]:
    d = oracle.dim
    theta = (torch.randn(batch, d, generator=gen) + 0.5).requires_grad_()
    v = torch.randn(batch, d, generator=gen)

    def batched() -> None:
        theta.grad = None
        out = sparsemap(theta, oracle)
        ((out.mu * v).sum() + out.weights.square().sum()).backward()

    def one_at_a_time() -> None:
        theta.grad = None
        total = theta.new_zeros(())
        for i in range(batch):
            out = sparsemap(theta[i : i + 1], oracle)
            total = total + (out.mu * v[i]).sum() + out.weights.square().sum()
        total.backward()

    with torch.no_grad():
        support = float((sparsemap(theta, oracle).weights > 0).sum(-1).float().mean())
    return {"batched": batched, "one-at-a-time": one_at_a_time}, support


def vae_steps(batch: int, d: int, gen: torch.Generator) -> tuple[dict[str, Step], float]:
    pixels = 784
    x = (torch.rand(batch, pixels, generator=gen) < 0.3).float()
    encoder = torch.nn.Linear(pixels, d)
    decoder = torch.nn.Linear(d, pixels)
    oracle = FreeBits(d)
    estimator = GumbelSoftmax(tau=0.5, hard=False, honest_value=False)

    def nll(z: torch.Tensor, target: torch.Tensor = x) -> torch.Tensor:
        """Bernoulli NLL of the images given bit-vectors ``z`` (``(..., batch, D)``)."""
        logits = decoder(z)
        target = target.expand(logits.shape)
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)

    def sparsemap_step() -> None:
        encoder.zero_grad(set_to_none=True)
        decoder.zero_grad(set_to_none=True)
        out = sparsemap(encoder(x), oracle)
        # structures: (batch, A, D); each image is compared with its A decodings.
        loss = (out.weights * nll(out.structures, x.unsqueeze(1))).sum(-1).mean()
        loss.backward()

    def gumbel_step() -> None:
        encoder.zero_grad(set_to_none=True)
        decoder.zero_grad(set_to_none=True)
        q = lg.Bernoulli(logits=encoder(x))
        est = estimator(q, nll)
        est.surrogate.mean().backward()

    with torch.no_grad():
        support = float((sparsemap(encoder(x), oracle).weights > 0).sum(-1).float().mean())
    return {"sparsemap": sparsemap_step, "gumbel-softmax": gumbel_step}, support


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per problem")
    parser.add_argument("--min-rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)

    print(f"batched SparseMAP solver vs one row at a time (batch {args.batch}, fwd+bwd, ms)")
    print(f"{'problem':>24} {'support':>8} {'batched':>16} {'one-at-a-time':>18} {'speedup':>8}")
    for d in (32, 128):
        for oracle in (FreeBits(d), BudgetBits(d, d // 4)):
            steps, support = solver_steps(oracle, args.batch, gen)
            times = interleaved(steps, args.seconds, args.min_rounds)
            (mb, ib), (ml, il) = summary(times["batched"]), summary(times["one-at-a-time"])
            print(
                f"{oracle!r:>24} {support:8.1f} {mb:9.2f} ±{ib:5.2f} {ml:11.2f} ±{il:5.2f} "
                f"{ml / mb:7.1f}x"
            )

    print(f"\nVAE step (batch {args.batch}, D = 32, fwd+bwd, ms)")
    steps, support = vae_steps(args.batch, 32, gen)
    times = interleaved(steps, args.seconds, args.min_rounds)
    (ms, is_), (mg, ig) = summary(times["sparsemap"]), summary(times["gumbel-softmax"])
    print(f"  sparsemap      {ms:8.2f} ±{is_:5.2f}  (mean support {support:.1f})")
    print(f"  gumbel-softmax {mg:8.2f} ±{ig:5.2f}")
    print(f"  ratio sparsemap / gumbel-softmax: {ms / mg:.1f}x")


if __name__ == "__main__":
    main()
