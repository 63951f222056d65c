"""One training step of the bit-vector VAE: SparseMAP (exact sum over its support) against
Gumbel-Softmax, at initialization and after training; and the batched active set at D = 128.

The model is the experiment's own (:mod:`latentgrad.experiments.bitvae`: encoder 784-128-D,
decoder D-128-(784 x 5) then a per-pixel 5 -> 256 map, 256-way pixels), ``D = 32``, batch 64,
Adam with the experiment's learning rates, built by :class:`BitVAETrainable` from the
registry's ``sparsemap`` and ``gs`` estimators. One step is ``train_step``: forward, backward
and the Adam step. Images: Fashion-MNIST from ``--data`` / ``$LATENTGRAD_DATA`` when it is there,
else the embedded ``digits`` set (8 x 8 images: a much smaller decoder, so other ratios).

Contenders, timed in interleaved rounds (``_common.interleaved_times``) on one thread:

- ``sparsemap``: ``Marginalize`` with the experiment's packed loss (the loss is evaluated on
  the structures of nonzero weight only);
- ``sparsemap-padded``: the same step with an ordinary ``loss_fn`` (every padded slot). The
  model decodes each distinct bit-vector once (``BitVectorVAE.nll_rows``), and the padded
  slots repeat structures, so this now costs about what the packed step does;
- ``gs``: the registry's Gumbel-Softmax on the factorized bits (one decoder call per image
  with a graph into ``z``, and a second one without a graph at the discrete sample for the
  honest training loss, ``honest_value``).

The decoder's cost is the pixels' log-partition: 784 x 256 logits per decoded bit-vector, taken
an image at a time by ``latentgrad.lab.images.summed_linear_logsumexp`` (whose forward keeps
the gradient, so the logits are computed once), and the model decodes each distinct bit-vector
of a batch once.

Every timed call first restores the model and optimizer to the same state (a copy of a few MB,
the same for every contender), then steps on the round's batch; so the support does not drift
while timing. "After training" loads ``--checkpoint`` (a run directory's ``checkpoint.pt`` of
``latentgrad run bitvae --estimator sparsemap``, or a file written by ``--save-checkpoint``) or
else trains the whole model with the experiment's SparseMAP ``train_step`` for
``--train-steps`` steps (100: on Fashion-MNIST the mean support falls from about 19 to 1.0 within
30 steps and stays there); Gumbel-Softmax is timed on the same weights. (Training the encoder
alone against the initial decoder is cheaper but not representative: its support stays near
12.)

The step-time ratio of SparseMAP to Gumbel-Softmax is about the distinct structures per image
(``decoder calls``) times a per-row cost about half of Gumbel-Softmax's per image (which decodes
twice), since the decoder's 784 x 256 logits are nearly all of a step; the table prints the
support, the decoder calls and the ratio (also per decoded bit-vector: the step's time over its
decoder calls, against Gumbel-Softmax's), and a breakdown of the SparseMAP step (encoder and
solver, packing, decoder forward, backward, Adam) from one more set of rounds.

Last, the active-set solver (``method="active_set"``) on the scores of a ``D = 128`` encoder at
initialization (free bits and at most 64 ones), forward and backward, the batch of 64 in one
call against one example at a time: with numba installed, for the compiled solver (row by row
in compiled loops either way, so the batch saves only the per-call overhead) and for the batched
PyTorch solver (the path without numba), interleaved.

Usage::

    python benchmarks/bench_bitvae.py                        # trains 100 steps first
    python benchmarks/bench_bitvae.py --train-steps 60 --rounds 3
    python benchmarks/bench_bitvae.py --checkpoint runs/bitvae/sparsemap-seed0/checkpoint.pt
    python benchmarks/bench_bitvae.py --active-set-only
    python benchmarks/bench_bitvae.py --active-set-only --active-set-cpu-time --active-set-rounds 5
    python benchmarks/bench_bitvae.py --plain-too   # also the loss as it was: every row, all logits
    python benchmarks/bench_bitvae.py --recompute-too   # and as it was: lse recomputed backward
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import torch
from _common import interleaved_times, quartiles
from torch import Tensor

from latentgrad import _native
from latentgrad.data import load_dataset
from latentgrad.estimators import pack_support
from latentgrad.experiments.bitvae import (
    BIT_ENCODINGS,
    BitVAEConfig,
    BitVAETrainable,
    BitVectorVAE,
)
from latentgrad.lab import ESTIMATORS
from latentgrad.lab.images import linear_logsumexp
from latentgrad.mappings._sparsemap import sparsemap
from latentgrad.mappings.oracles import BudgetBits, FreeBits

Snapshot = dict[str, Any]


def load_images(data_dir: str | None) -> tuple[Any, str]:
    """Fashion-MNIST from ``data_dir`` when it is there, else the embedded digits."""
    try:
        return load_dataset("fashion-mnist", data_dir=data_dir), "fashion-mnist"
    except (OSError, RuntimeError, ValueError) as err:
        print(f"Fashion-MNIST unavailable ({type(err).__name__}); using the embedded digits")
        return load_dataset("digits"), "digits"


def trainable(name: str, num_bits: int, data: Any, encoding: str) -> BitVAETrainable:
    """The experiment's model, estimator and Adam for the registry estimator ``name``, with
    SparseMAP's ``bit_encoding`` ``encoding``."""
    config = BitVAEConfig(
        estimator=name, num_bits=num_bits, batch_size=64, bit_encoding=cast(Any, encoding)
    )
    return BitVAETrainable(config, ESTIMATORS[name].resolve(name), data)


def snapshot(t: BitVAETrainable) -> Snapshot:
    return {
        "modules": copy.deepcopy(t.modules.state_dict()),
        "optimizer": copy.deepcopy(t.optimizer.state_dict()),
    }


def restore(t: BitVAETrainable, state: Snapshot) -> None:
    t.modules.load_state_dict(state["modules"])
    t.optimizer.load_state_dict(state["optimizer"])


def padded_step(t: BitVAETrainable, batch: Tensor) -> dict[str, float]:
    """``train_step`` with the packed loss hidden behind an ordinary ``loss_fn``."""
    t.modules.train()
    t.optimizer.zero_grad(set_to_none=True)
    t.model.decoded_rows = 0
    q = t.model.posterior(batch)
    loss = t.model.reconstruction_loss(batch)
    out = t.estimator(q, lambda z: loss(z))
    kl = t.model.kl_to_prior(q)
    (out.surrogate.mean() + kl.mean()).backward()
    t.optimizer.step()
    calls = t.model.decoded_rows / batch.shape[0]
    return {"loss_evals": float(out.loss_evals), "decoder_calls": calls}


class Contender:
    """A step of one trainable from a fixed state, on the batches of the rounds in turn."""

    def __init__(
        self,
        t: BitVAETrainable,
        state: Snapshot,
        batches: list[Tensor],
        step: Callable[[BitVAETrainable, Tensor], Any],
    ) -> None:
        self.t, self.state, self.batches, self.step = t, state, batches, step
        self.calls = 0
        self.metrics: list[Any] = []

    def __call__(self) -> int:
        restore(self.t, self.state)
        batch = self.batches[self.calls % len(self.batches)]
        self.calls += 1
        self.metrics.append(self.step(self.t, batch))
        return 1


def time_steps(
    contenders: dict[str, Contender], rounds: int
) -> dict[str, tuple[float, float, float]]:
    _, times = interleaved_times({k: (c,) for k, c in contenders.items()}, lambda c: c(), rounds)
    return {k: quartiles(v) for k, v in times.items()}


def phases(t: BitVAETrainable, state: Snapshot, batch: Tensor) -> dict[str, float]:
    """Milliseconds of the parts of one packed SparseMAP step (the Marginalize path by hand)."""
    restore(t, state)
    model = t.model
    marks = [time.perf_counter()]
    t.optimizer.zero_grad(set_to_none=True)
    q = model.posterior(batch)
    values, probs = q.support_probs()
    marks.append(time.perf_counter())
    packed = pack_support(values, probs, q.batch_shape)
    marks.append(time.perf_counter())
    losses = model.nll_rows(packed.values, batch[packed.element])
    total = losses.new_zeros(batch.shape[0]).index_add(0, packed.element, packed.probs * losses)
    marks.append(time.perf_counter())
    (total.mean() + model.kl_to_prior(q).mean()).backward()
    marks.append(time.perf_counter())
    t.optimizer.step()
    marks.append(time.perf_counter())
    names = ("encoder + solver", "packing", "decoder forward", "backward", "Adam")
    return {n: 1000 * (b - a) for n, a, b in zip(names, marks[:-1], marks[1:], strict=True)}


def solver_alone(t: BitVAETrainable, batch: Tensor) -> float:
    """Milliseconds of the solver's forward and backward alone on the step's scores."""
    with torch.no_grad():
        scores = t.model.sparsemap_scores(batch)
    theta = scores.clone().requires_grad_()
    oracle = t.model.oracle()
    start = time.perf_counter()
    out = sparsemap(theta, oracle)
    (out.weights * torch.arange(out.weights.shape[-1])).sum().backward()
    return 1000 * (time.perf_counter() - start)


def fmt(q: tuple[float, float, float]) -> str:
    return f"{q[1]:9.1f} [{q[0]:.1f}, {q[2]:.1f}]"


def plain_nll_rows(model: BitVectorVAE, z: Tensor, x: Tensor) -> Tensor:
    """The decoder on every row and the cross-entropy of all its logits (no distinct rows, no
    blocked log-partition): how ``BitVectorVAE.nll_rows`` computed the loss before."""
    model.decoded_rows += z.shape[0]
    logits = model.decode(z)
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, -2), x.flatten(), reduction="none")
    return nll.view(x.shape).sum(-1)


def recomputed(t: BitVAETrainable) -> BitVAETrainable:
    """``t`` with the log-partition of the previous version: per pixel, summed outside, the
    backward recomputing the logits (``linear_logsumexp``) instead of the forward keeping the
    gradient (``summed_linear_logsumexp``)."""
    t.model.log_partition = lambda f, w, b: linear_logsumexp(f, w, b).sum(-1)
    return t


def plain(t: BitVAETrainable) -> BitVAETrainable:
    """``t`` with its model's ``nll_rows`` replaced by :func:`plain_nll_rows`."""
    model = t.model
    model.nll_rows = lambda z, x: plain_nll_rows(model, z, x)  # type: ignore[method-assign]
    return t


def compare(
    label: str,
    ts: dict[str, BitVAETrainable],
    batches: list[Tensor],
    rounds: int,
) -> None:
    """Time the contenders from the current state of ``ts`` and print the table."""
    states = {k: snapshot(t) for k, t in ts.items()}
    steps = {
        "sparsemap": Contender(
            ts["sparsemap"], states["sparsemap"], batches, BitVAETrainable.train_step
        ),
        "sparsemap-padded": Contender(ts["padded"], states["padded"], batches, padded_step),
        "gs": Contender(ts["gs"], states["gs"], batches, BitVAETrainable.train_step),
    }
    for name in ("sparsemap", "gs"):
        for kind, shown in (("plain", "plain decoder"), ("recompute", "recomputed lse")):
            if f"{name}-{kind}" in ts:
                t = ts[f"{name}-{kind}"]
                steps[f"{name}, {shown}"] = Contender(
                    t, states[f"{name}-{kind}"], batches, BitVAETrainable.train_step
                )
    stats = time_steps(steps, rounds)
    sm = steps["sparsemap"].metrics
    support = statistics.mean(m["support_size"] for m in sm)
    packed_evals = statistics.mean(m["loss_evals"] for m in sm)
    padded = statistics.mean(m["loss_evals"] for m in steps["sparsemap-padded"].metrics)
    calls = {k: statistics.mean(m["decoder_calls"] for m in c.metrics) for k, c in steps.items()}
    gs = stats["gs"][1]
    print(f"\n{label}: step ms, median [IQR] over {rounds} interleaved rounds")
    print(
        f"  mean support {support:.2f} structures/image (packed loss_evals {packed_evals:.1f}, padded {padded:.1f})"
    )
    print(
        "  decoder calls per image (distinct bit-vectors decoded): "
        + ", ".join(f"{k} {v:.2f}" for k, v in calls.items())
    )
    for name, q in stats.items():
        # per decoded bit-vector: what the step costs beyond the decoder's share of the work
        per_call = (q[1] / calls[name]) / (gs / calls["gs"])
        print(
            f"  {name:24s} {fmt(q)}   ratio to gs {q[1] / gs:5.2f}x"
            f" ({per_call:4.2f}x per decoded bit-vector)"
        )
    parts = [phases(ts["sparsemap"], states["sparsemap"], b) for b in batches[:rounds]]
    solver = [solver_alone(ts["sparsemap"], b) for b in batches[:rounds]]
    restore(ts["sparsemap"], states["sparsemap"])
    print("  sparsemap step by part (ms, median):")
    for name in parts[0]:
        print(f"    {name:18s} {statistics.median(p[name] for p in parts):9.1f}")
    print(f"    (solver fwd+bwd alone {statistics.median(solver):.2f})")


def train(t: BitVAETrainable, steps: int) -> None:
    """``steps`` steps of the experiment's own ``train_step`` (SparseMAP, the whole model)."""
    batches: Iterator[Tensor] = iter(())
    start = time.perf_counter()
    supports: list[float] = []
    for i in range(steps):
        batch = next(batches, None)
        if batch is None:
            batches = t.train_batches(0)
            batch = next(batches)
        supports.append(t.train_step(batch)["support_size"])
        if (i + 1) % max(1, steps // 5) == 0:
            recent = statistics.mean(supports[-10:])
            took = time.perf_counter() - start
            print(f"  step {i + 1}: mean support {recent:.2f} ({took:.0f} s)")


def active_set(data: Any, rounds: int, encoding: str, cpu_time: bool = False) -> None:
    """The batched active set against one example at a time, D = 128 encoder scores; timed by
    the thread's CPU time with ``cpu_time``."""
    torch.manual_seed(0)
    t = trainable("sparsemap", 128, data, encoding)
    batch = next(t.train_batches(0))
    with torch.no_grad():
        scores = t.model.sparsemap_scores(batch)
    print(
        f"\nactive set at D = 128 on the initial encoder's scores (batch {scores.shape[0]}, "
        f"{encoding} encoding), forward + backward, ms{' of CPU time' if cpu_time else ''}, "
        f"median [IQR] over {rounds} rounds"
    )
    for oracle in (FreeBits(128), BudgetBits(128, 64)):
        theta = scores.clone().requires_grad_()
        v = torch.randn(theta.shape[-1])

        def batched(theta: Tensor = theta, oracle: Any = oracle, v: Tensor = v) -> int:
            out = sparsemap(theta, oracle, method="active_set")
            ((out.mu * v).sum() + out.weights.square().sum()).backward()
            return int((out.weights > 0).sum())

        def one_at_a_time(theta: Tensor = theta, oracle: Any = oracle, v: Tensor = v) -> int:
            total = theta.new_zeros(())
            for i in range(theta.shape[0]):
                out = sparsemap(theta[i : i + 1], oracle, method="active_set")
                total = total + (out.mu * v).sum() + out.weights.square().sum()
            total.backward()
            return 0

        def in_torch(f: Callable[[], int]) -> Callable[[], int]:
            def run() -> int:
                with _native.disabled():
                    return f()

            return run

        cases: dict[str, tuple[Callable[[], int]]] = {
            "batched": (batched,),
            "one-at-a-time": (one_at_a_time,),
        }
        if _native.available():  # the compiled solver above; the batched PyTorch one here
            cases["batched, PyTorch"] = (in_torch(batched),)
            cases["one-at-a-time, PyTorch"] = (in_torch(one_at_a_time),)
        clock = time.thread_time if cpu_time else time.perf_counter
        evals, times = interleaved_times(cases, lambda f: f(), rounds, clock)
        print(f"  {oracle!r}: mean support {evals['batched'] / theta.shape[0]:.1f}")
        for kind in ("", ", PyTorch"):
            if f"batched{kind}" not in times:
                continue
            qb, qo = quartiles(times[f"batched{kind}"]), quartiles(times[f"one-at-a-time{kind}"])
            solver = "batched PyTorch" if kind else "compiled" if _native.available() else "batched"
            print(
                f"    {solver:>16}: all rows {fmt(qb)}, one at a time {fmt(qo)}; "
                f"speed-up {qo[1] / qb[1]:.1f}x"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("LATENTGRAD_DATA"))
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per contender")
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--skip-init", action="store_true", help="time after training only")
    parser.add_argument("--checkpoint", help="a checkpoint.pt of a sparsemap bitvae run")
    parser.add_argument("--save-checkpoint", help="write the trained weights here")
    parser.add_argument("--active-set-rounds", type=int, default=3)
    parser.add_argument(
        "--active-set-cpu-time",
        action="store_true",
        help="time the active set by the thread's CPU time, not the wall clock (on a busy "
        "machine the wall clock also counts the time other processes hold the core)",
    )
    parser.add_argument("--skip-active-set", action="store_true")
    parser.add_argument("--active-set-only", action="store_true", help="time the solver only")
    parser.add_argument(
        "--plain-too",
        action="store_true",
        help="also time both steps with the plain decoder loss (every row, all logits)",
    )
    parser.add_argument(
        "--recompute-too",
        action="store_true",
        help="also time both steps with the log-partition recomputed in the backward",
    )
    parser.add_argument(
        "--bit-encoding",
        choices=BIT_ENCODINGS,
        default=BitVAEConfig().bit_encoding,
        help="how SparseMAP sees the encoder's scores (default: the experiment's, %(default)s)",
    )
    args = parser.parse_args()
    encoding = args.bit_encoding
    torch.set_num_threads(1)
    data, name = load_images(args.data)
    if args.active_set_only:
        active_set(data, args.active_set_rounds, encoding, args.active_set_cpu_time)
        return
    torch.manual_seed(0)
    ts = {
        "sparsemap": trainable("sparsemap", 32, data, encoding),
        "gs": trainable("gs", 32, data, encoding),
    }
    ts["padded"] = trainable("sparsemap", 32, data, encoding)
    if args.plain_too:
        ts["sparsemap-plain"] = plain(trainable("sparsemap", 32, data, encoding))
        ts["gs-plain"] = plain(trainable("gs", 32, data, encoding))
    if args.recompute_too:
        ts["sparsemap-recompute"] = recomputed(trainable("sparsemap", 32, data, encoding))
        ts["gs-recompute"] = recomputed(trainable("gs", 32, data, encoding))
    init = ts["sparsemap"].modules.state_dict()
    for t in ts.values():
        t.modules.load_state_dict(init, strict=False)
    batches = [
        b
        for _, b in zip(range(max(args.rounds, 2)), ts["sparsemap"].train_batches(0), strict=False)
    ]
    print(
        f"bit-vector VAE, D = 32, batch 64, {name}, {encoding} encoding, "
        f"torch {torch.__version__}, 1 thread"
    )
    if not args.skip_init:
        compare("at initialization", ts, batches, args.rounds)
    if args.checkpoint:
        trained = torch.load(args.checkpoint, map_location="cpu", weights_only=False)["modules"]
        print(f"\nloaded {args.checkpoint}")
    else:
        print(f"\ntraining with SparseMAP for {args.train_steps} steps")
        train(ts["sparsemap"], args.train_steps)
        trained = ts["sparsemap"].modules.state_dict()
        if args.save_checkpoint:
            torch.save({"modules": trained}, args.save_checkpoint)
    for t in ts.values():
        t.modules.load_state_dict(trained, strict=False)
    compare("after training", ts, batches, args.rounds)
    if not args.skip_active_set:
        active_set(data, args.active_set_rounds, encoding, args.active_set_cpu_time)


if __name__ == "__main__":
    main()
