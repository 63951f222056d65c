"""Cost of one training step of the semi-supervised VAE (the `ssvae` experiment's M2 model) with
exact marginalization, sparsemax marginalization and Gumbel-Softmax, at 10 and 100 classes.

Jang et al. (2017, Table 2 and Section 4.3) report Gumbel-Softmax training the M2 model 2x faster
than marginalizing the class with 10 classes and 9.9x with 100: marginalization decodes every
image once per class, Gumbel-Softmax once. Sparse marginalization (Correia et al. 2020) decodes it
once per class in the support of sparsemax(scores), which is large at initialization (the scores
are all close) and small once the classifier is confident. Here one step of the unlabelled
objective (forward and backward; no optimizer step) is timed on the experiment's real model
(784 pixels, classifier 784-256-256-256-K, encoder (784+K)-128-128-16, decoder (8+K)-128-128-784,
batch 64) for each K:

- `exact`: softmax q(y | x), the loss on all K classes (`Marginalize`);
- `sparsemax`: sparsemax q(y | x) at initialization, the loss on its support;
- `sparsemax-trained`: the same after `--train-steps` warm-start steps (the classifier's
  cross-entropy on labelled synthetic images: noisy copies of one random binary prototype per
  class), timed on images of those classes;
- `gs`: Gumbel-Softmax with one relaxed sample and no second, discrete pass (the registry's
  `gs` with `honest_value=false`), as in Jang et al.

The images are the synthetic prototypes' noisy copies for every case. Timing is interleaved: each
round times every case in a rotating order, so a slow spell of a shared machine hits all of them
alike; the table reports the median and interquartile range over rounds.

With ``--record DIR`` every case is also written as a results record (``experiment``
"bench-ssvae"; figures ``ms``, ``ms_q1``, ``ms_q3``, ``ratio_to_gs``, ``rows_per_image``,
``support``), which ``latentgrad report DIR --pivot classes`` tabulates; the docs' speed table
is generated from ``results/ssvae-speed``.

Usage:
    python benchmarks/bench_ssvae.py [--classes 10 100] [--rounds 15] [--train-steps 300]
                                     [--record results/ssvae-speed]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from _common import interleaved_times, quartiles

from latentgrad.estimators import Estimator
from latentgrad.experiments.ssvae import M2
from latentgrad.lab.records import benchmark_record, save_record
from latentgrad.lab.registry import make_estimator

PIXELS = 784


def synthetic(classes: int, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Noisy copies (10% of the pixels flipped) of one random binary prototype per class."""
    prototypes = torch.rand(classes, PIXELS, generator=generator).round()
    labels = torch.randint(classes, (batch,), generator=generator)
    x = prototypes[labels]
    flip = torch.rand(x.shape, generator=generator) < 0.1
    return torch.where(flip, 1 - x, x), labels, prototypes


def images_of(
    prototypes: torch.Tensor, batch: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.randint(prototypes.shape[0], (batch,), generator=generator)
    x = prototypes[labels]
    flip = torch.rand(x.shape, generator=generator) < 0.1
    return torch.where(flip, 1 - x, x), labels


def warm_start(
    model: M2, prototypes: torch.Tensor, steps: int, batch: int, generator: torch.Generator
) -> None:
    """``steps`` Adam steps (lr 1e-3) on the classifier's cross-entropy, as in a warm start."""
    optimizer = torch.optim.Adam(model.classifier.parameters(), lr=1e-3)
    for _ in range(steps):
        x, labels = images_of(prototypes, batch, generator)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model.classifier(x), labels).backward()
        optimizer.step()


def support_size(model: M2, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model.posterior(x).probs > 0).sum(-1).double().mean())


def step(model: M2, estimator: Estimator, x: torch.Tensor) -> int:
    """One step of the unlabelled objective, forward and backward; the decoder rows per image."""
    model.zero_grad(set_to_none=True)
    q = model.posterior(x)
    out = estimator(q, model.loss_fn(x), context=x)
    (out.surrogate + model.kl_to_prior(q)).mean().backward()
    return out.loss_evals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--record", metavar="DIR", help="also write one results record per case")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {args.batch}")

    cases: dict[tuple[str, int], tuple[M2, Estimator, torch.Tensor]] = {}
    supports: dict[tuple[str, int], float] = {}
    for k in args.classes:
        x, _, prototypes = synthetic(k, args.batch, generator)
        cases[("exact", k)] = (M2(PIXELS, k), make_estimator("exact"), x)
        cases[("gs", k)] = (M2(PIXELS, k), make_estimator("gs", {"honest_value": False}), x)
        sparse = M2(PIXELS, k, sparsemax=True)
        cases[("sparsemax", k)] = (sparse, make_estimator("sparsemax"), x)
        supports[("sparsemax", k)] = support_size(sparse, x)
        if args.train_steps > 0:
            trained = M2(PIXELS, k, sparsemax=True)
            start = time.perf_counter()
            warm_start(trained, prototypes, args.train_steps, args.batch, generator)
            seconds = time.perf_counter() - start
            held_out, _ = images_of(prototypes, args.batch, generator)
            cases[("sparsemax-trained", k)] = (trained, make_estimator("sparsemax"), held_out)
            supports[("sparsemax-trained", k)] = support_size(trained, held_out)
            print(f"K={k}: {args.train_steps} warm-start steps in {seconds:.1f} s")

    evals, times = interleaved_times(cases, step, args.rounds)
    keys = list(cases)

    print(
        f"\n{'estimator':<18} {'K':>4} {'rows/image':>10} {'support':>8} "
        f"{'ms/step (median [IQR])':>26} {'/ gs':>6}"
    )
    for key in sorted(keys, key=lambda k: (k[1], k[0])):
        name, k = key
        lo, med, hi = quartiles(times[key])
        ratio = med / statistics.median(times[("gs", k)])
        support = f"{supports[key]:.2f}" if key in supports else "-"
        print(
            f"{name:<18} {k:>4} {evals[key]:>10} {support:>8} {med:>12.1f} [{lo:.1f}, {hi:.1f}]"
            f"{'':>3} {ratio:>6.2f}"
        )
    print("\nmedian step time over Gumbel-Softmax's (Jang et al.: 2x at K=10, 9.9x at K=100):")
    for k in args.classes:
        gs = statistics.median(times[("gs", k)])
        parts = [
            f"{name} {statistics.median(times[(name, k)]) / gs:.2f}x"
            for name in ("exact", "sparsemax", "sparsemax-trained")
            if (name, k) in times
        ]
        print(f"  K={k:<4} " + ", ".join(parts))

    if args.record:
        for (name, k), ms in times.items():
            lo, med, hi = quartiles(ms)
            test = {
                "ms": med,
                "ms_q1": lo,
                "ms_q3": hi,
                "ratio_to_gs": med / statistics.median(times[("gs", k)]),
                "rows_per_image": float(evals[(name, k)]),
            }
            if (name, k) in supports:
                test["support"] = supports[(name, k)]
            config = {
                "estimator": name,
                "classes": k,
                "batch": args.batch,
                "rounds": args.rounds,
                "threads": args.threads,
            }
            save_record(
                benchmark_record("bench-ssvae", config, test, primary_metric="ms"), args.record
            )
        print(f"\nrecords written to {args.record}")


if __name__ == "__main__":
    main()
