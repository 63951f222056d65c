"""Forward + backward time of the batched SparseMAP solver, and of a SparseMAP VAE step.

Part 1, per problem ``(oracle, D)`` with a batch of 64 rows of float32 scores
``theta ~ N(0.5, 1)``: the batched solver (one call on all rows) against the same solver run one
row at a time (a Python loop of calls with ``N = 1``). One timing is the solve plus the backward
of a loss of both ``mu`` and the weights. The table also gives the mean support size.

Part 1 runs the iterative active-set solver on every problem (``method="active_set"``), then
the closed forms that ``sparsemap`` uses by default for free bits (the clamp) and budgeted bits
(the capped-simplex projection).

Part 2: one training step of a bit-vector VAE (batch 64, D = 32, linear encoder 784 -> 32 and
linear decoder 32 -> 784, synthetic binary images drawn from random 32-bit codes): SparseMAP
marginalization (the Bernoulli NLL of every support structure weighted by its SparseMAP weight,
minus the entropy of the weights) against a Gumbel-Softmax step
(:class:`~latentgrad.estimators.relaxed.GumbelSoftmax` on the Bernoulli family, whose event is
the 32 bits), at initialization and after training with SparseMAP (the support shrinks as the
encoder grows confident, which is where marginalization is cheap). "loss only" times the
decoder and NLL on the same support alone: the part of the step that grows with the support.

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
    oracle: FreeBits | BudgetBits, batch: int, gen: torch.Generator, method: str
) -> tuple[dict[str, Step], float]:
    d = oracle.dim
    theta = (torch.randn(batch, d, generator=gen) + 0.5).requires_grad_()
    v = torch.randn(batch, d, generator=gen)

    def batched() -> None:
        theta.grad = None
        out = sparsemap(theta, oracle, method=method)
        ((out.mu * v).sum() + out.weights.square().sum()).backward()

    def one_at_a_time() -> None:
        theta.grad = None
        total = theta.new_zeros(())
        for i in range(batch):
            out = sparsemap(theta[i : i + 1], oracle, method=method)
            total = total + (out.mu * v[i]).sum() + out.weights.square().sum()
        total.backward()

    with torch.no_grad():
        support = float(
            (sparsemap(theta, oracle, method=method).weights > 0).sum(-1).float().mean()
        )
    return {"batched": batched, "one-at-a-time": one_at_a_time}, support


class BitVectorVAE(torch.nn.Module):
    """Linear encoder ``784 -> D`` (the SparseMAP scores) and linear decoder ``D -> 784``."""

    def __init__(self, d: int, pixels: int = 784) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(pixels, d)
        self.decoder = torch.nn.Linear(d, pixels)
        self.oracle = FreeBits(d)

    def nll(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Bernoulli NLL of images ``x`` given bit-vectors ``z`` (``(..., batch, D)``)."""
        logits = self.decoder(z)
        return F.binary_cross_entropy_with_logits(
            logits, x.expand(logits.shape), reduction="none"
        ).sum(-1)

    def sparsemap_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Negative ELBO with a uniform prior, summed exactly over the SparseMAP support."""
        out = sparsemap(self.encoder(x), self.oracle)
        p = out.weights  # (batch, A); structures: (batch, A, D)
        recon = (p * self.nll(out.structures, x.unsqueeze(1))).sum(-1)
        neg_entropy = torch.where(p > 0, p * p.clamp_min(1e-30).log(), 0.0).sum(-1)
        support = float((p > 0).sum(-1).float().mean())
        return (recon + neg_entropy).mean(), support


def synthetic_images(n: int, d: int, gen: torch.Generator, pixels: int = 784) -> torch.Tensor:
    """Binary images drawn from a random ``d``-bit code through a random sparse decoder."""
    codes = (torch.rand(n, d, generator=gen) < 0.5).float()
    weight = (
        torch.randn(pixels, d, generator=gen) * 3 * (torch.rand(pixels, d, generator=gen) < 0.2)
    )
    logits = codes @ weight.T - weight.sum(1) / 2
    return (torch.rand(n, pixels, generator=gen) < torch.sigmoid(logits)).float()


def vae_steps(model: BitVectorVAE, x: torch.Tensor) -> tuple[dict[str, Step], float]:
    """A SparseMAP step and a Gumbel-Softmax step (forward + backward) of ``model`` on ``x``."""
    estimator = GumbelSoftmax(tau=0.5, hard=False, honest_value=False)

    def sparsemap_step() -> None:
        model.zero_grad(set_to_none=True)
        model.sparsemap_loss(x)[0].backward()

    def gumbel_step() -> None:
        model.zero_grad(set_to_none=True)
        q = lg.Bernoulli(logits=model.encoder(x))
        est = estimator(q, lambda z: model.nll(z, x))
        est.surrogate.mean().backward()

    with torch.no_grad():
        support = model.sparsemap_loss(x)[1]
        fixed = sparsemap(model.encoder(x), model.oracle)
    weights = fixed.weights.clone().requires_grad_()

    def decoder_only() -> None:
        """The floor: the same loss on the same support, with no encoder and no solver."""
        model.zero_grad(set_to_none=True)
        weights.grad = None
        (weights * model.nll(fixed.structures, x.unsqueeze(1))).sum(-1).mean().backward()

    steps = {"sparsemap": sparsemap_step, "gumbel-softmax": gumbel_step, "loss only": decoder_only}
    return steps, support


def train(model: BitVectorVAE, data: torch.Tensor, steps: int, batch: int) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        idx = torch.randint(data.shape[0], (batch,), generator=gen)
        opt.zero_grad(set_to_none=True)
        model.sparsemap_loss(data[idx])[0].backward()
        opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per problem")
    parser.add_argument("--min-rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=500, help="VAE training steps")
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)

    print(f"SparseMAP, batched vs one row at a time (batch {args.batch}, fwd+bwd, ms)")
    print(
        f"{'problem':>28} {'method':>10} {'support':>8} {'batched':>16} "
        f"{'one-at-a-time':>18} {'speedup':>8}"
    )
    cases = [
        (oracle, "active_set") for d in (32, 128) for oracle in (FreeBits(d), BudgetBits(d, d // 4))
    ] + [(oracle, "auto") for d in (32, 128) for oracle in (FreeBits(d), BudgetBits(d, d // 4))]
    for oracle, method in cases:
        steps, support = solver_steps(oracle, args.batch, gen, method)
        times = interleaved(steps, args.seconds, args.min_rounds)
        (mb, ib), (ml, il) = summary(times["batched"]), summary(times["one-at-a-time"])
        label = "closed" if method == "auto" else "active set"
        print(
            f"{oracle!r:>28} {label:>10} {support:8.1f} {mb:9.2f} ±{ib:5.2f} "
            f"{ml:11.2f} ±{il:5.2f} {ml / mb:7.1f}x"
        )

    print(f"\nBit-vector VAE step (batch {args.batch}, D = 32, fwd+bwd, ms)")
    data = synthetic_images(4096, 32, gen)
    model = BitVectorVAE(32)
    x = data[: args.batch]
    for label in ("at initialization", f"after {args.train_steps} training steps"):
        if label != "at initialization":
            train(model, data, args.train_steps, args.batch)
        steps, support = vae_steps(model, x)
        times = interleaved(steps, args.seconds, args.min_rounds)
        (ms, is_), (mg, ig) = summary(times["sparsemap"]), summary(times["gumbel-softmax"])
        (mo, io) = summary(times["loss only"])
        print(f"  {label} (mean support {support:.1f})")
        print(f"    sparsemap      {ms:8.2f} ±{is_:5.2f}")
        print(f"    gumbel-softmax {mg:8.2f} ±{ig:5.2f}")
        print(f"    loss only      {mo:8.2f} ±{io:5.2f}  (decoder + NLL on the same support)")
        print(f"    ratio sparsemap / gumbel-softmax: {ms / mg:.1f}x")


if __name__ == "__main__":
    main()
