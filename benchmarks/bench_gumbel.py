"""Gumbel-Softmax sampling, forward + backward: latentgrad against torch.nn.functional.gumbel_softmax.

Every case draws a relaxed (or straight-through hard) sample from logits of shape
``(1024, 20, 10)`` (1024 examples, 20 categorical latents of 10 classes), takes a linear loss of
it and back-propagates to the logits. Timing is interleaved: each round runs every case once (in
a rotating order) for ``--reps`` calls, so a slow spell of a shared machine hits all cases alike;
the table gives the median time per call and the interquartile range over rounds.

Cases:
    torch soft / hard     ``F.gumbel_softmax(logits, tau, hard=...)``
    latentgrad soft       ``Categorical(logits).rsample_relaxed(tau)``
    latentgrad hard       ``GumbelSoftmax(tau, hard=True)`` on ``Categorical(logits).to_event(1)``
    latentgrad soft est.  ``GumbelSoftmax(tau, honest_value=False)``, the estimator's soft path

Usage:
    python benchmarks/bench_gumbel.py [--rounds 40] [--reps 5] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import quartiles

from latentgrad.distributions.categorical import Categorical
from latentgrad.estimators.relaxed import GumbelSoftmax


def make_cases(logits: torch.Tensor, w: torch.Tensor, tau: float) -> dict[str, Callable[[], None]]:
    hard_est = GumbelSoftmax(tau=tau, hard=True)
    soft_est = GumbelSoftmax(tau=tau, honest_value=False)

    def loss_fn(z: torch.Tensor) -> torch.Tensor:
        return (z * w).sum((-1, -2))

    def torch_soft() -> None:
        loss_fn(F.gumbel_softmax(logits, tau=tau, hard=False)).sum().backward()

    def torch_hard() -> None:
        loss_fn(F.gumbel_softmax(logits, tau=tau, hard=True)).sum().backward()

    def lg_soft() -> None:
        loss_fn(Categorical(logits=logits).rsample_relaxed(tau)).sum().backward()

    def lg_hard() -> None:
        hard_est(Categorical(logits=logits).to_event(1), loss_fn).surrogate.sum().backward()

    def lg_soft_estimator() -> None:
        soft_est(Categorical(logits=logits).to_event(1), loss_fn).surrogate.sum().backward()

    return {
        "torch soft": torch_soft,
        "latentgrad soft": lg_soft,
        "latentgrad soft est.": lg_soft_estimator,
        "torch hard": torch_hard,
        "latentgrad hard": lg_hard,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40, help="interleaved timing rounds")
    parser.add_argument("--reps", type=int, default=5, help="calls per case per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tau", type=float, default=0.5)
    parser.add_argument("--shape", type=int, nargs=3, default=[1024, 20, 10])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    torch.manual_seed(0)
    logits = torch.randn(args.shape, device=device, requires_grad=True)
    w = torch.randn(args.shape[1:], device=device)
    cases = make_cases(logits, w, args.tau)
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    for fn in cases.values():  # warm-up
        for _ in range(3):
            fn()
    for r in range(args.rounds):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            fn = cases[name]
            sync()
            start = time.perf_counter()
            for _ in range(args.reps):
                fn()
                logits.grad = None
            sync()
            times[name].append((time.perf_counter() - start) / args.reps * 1e3)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {device}, "
        f"logits {tuple(args.shape)}, tau {args.tau}, {args.rounds} rounds x {args.reps} calls"
    )
    print(f"{'case':<22}{'median ms':>10}{'IQR ms':>18}")
    for name in names:
        q1, med, q3 = quartiles(times[name])
        print(f"{name:<22}{med:>10.3f}{f'{q1:.3f}-{q3:.3f}':>18}")
    for kind in ("soft", "hard"):
        ratio = statistics.median(times[f"latentgrad {kind}"]) / statistics.median(
            times[f"torch {kind}"]
        )
        print(f"latentgrad / torch ({kind}): {ratio:.2f}")


if __name__ == "__main__":
    main()
