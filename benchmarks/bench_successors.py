"""Time per training step of the successor estimators (issue 18) against st-gs and sf-loo.

One step is a forward and backward pass of a categorical 20x10 latent (logits of a batch of
examples, as a VAE encoder would give them) through a small MLP loss (200 -> 128 tanh -> 64,
squared error to a target), the way an experiment uses an estimator. Timing is interleaved
(each round runs every estimator once, in a rotating order, so a slow spell of a shared machine
hits all alike), with one torch thread; the table reports the median and interquartile range
over rounds, the loss evaluations per example, and the median relative to st-gs.

Memory: glibc returns freed blocks above its thresholds to the system, so a step that runs
right after an estimator with large temporaries (IndeCateR's 181 rows) page-faults its own
allocations back in; interleaved, that made st-gs 1.3 -> 8.7 ms (median) and every IQR wide on
this project's machine. The script therefore raises glibc's mmap and trim thresholds with
``mallopt`` (as ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` would), so freed memory
is reused as in a training loop that runs one estimator step after step; ``--system-malloc``
keeps glibc's defaults.

The estimators are registry names (``latentgrad list``): ``ESTIMATORS`` below. Names that are
not registered (yet), or whose estimator does not apply to a categorical latent, are skipped
with a note, so the list can name estimators that other work adds.

With ``--record DIR`` every estimator's figures are also written as a results record
(``experiment`` "bench-successors"; ``ms``, ``ms_q1``, ``ms_q3``, ``ratio_to_st_gs``,
``loss_evals``); the docs' timing table is generated from ``results/bench-successors``.

Usage:
    python benchmarks/bench_successors.py [--batch 100] [--rounds 30] [--estimators NAME ...]
                                          [--record results/bench-successors]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util

import torch
from _common import interleaved_times, quartiles
from torch import Tensor, nn

import latentgrad as lg
from latentgrad.estimators import Estimator
from latentgrad.lab.records import benchmark_record, save_record
from latentgrad.lab.registry import ESTIMATORS as REGISTRY

#: Registry names timed by default: the references, then the successors of issue 18.
ESTIMATORS = [
    "st-gs",
    "sf-loo",
    "reinmax",
    "gumbel-rao",
    "gst-1.0",
    "gst-p",
    "rebar",
    "relax-concrete",
    "disarm",
    "arms",
    "vimco",
    "indecater",
    "unordered-set",
]

UNITS, CLASSES = 20, 10


def _keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (1 GiB) so freed blocks are reused, not unmapped;
    ``False`` where there is no glibc ``mallopt``."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 1 << 30))


def _mlp_loss(batch: int, seed: int = 0) -> tuple[nn.Module, Tensor]:
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(UNITS * CLASSES, 128), nn.Tanh(), nn.Linear(128, 64))
    target = torch.randn(batch, 64, generator=g)
    return net, target


def _available(names: list[str]) -> tuple[dict[str, Estimator], list[str]]:
    """The registered names that apply to a categorical latent, built; notes for the others."""
    built: dict[str, Estimator] = {}
    notes = []
    for name in names:
        entry = REGISTRY.get(name)
        if entry is None:
            notes.append(f"{name}: not in the registry, skipped")
        elif entry.latent != "softmax" or not entry.applies_to(lg.Categorical):
            notes.append(f"{name}: does not apply to a categorical latent, skipped")
        else:
            built[name] = entry.build()
    return built, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100, help="examples per step")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds (>= 2)")
    parser.add_argument("--estimators", nargs="+", default=ESTIMATORS, help="registry names")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", metavar="DIR", help="also write one results record each")
    parser.add_argument(
        "--system-malloc", action="store_true", help="keep glibc's memory thresholds"
    )
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2")
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread, batch {args.batch}, "
        f"categorical {UNITS}x{CLASSES}, {args.rounds} rounds"
    )
    if not args.system_malloc:
        kept = _keep_freed_memory()
        print("freed memory kept for reuse (mallopt)" if kept else "mallopt unavailable")
    built, notes = _available(args.estimators)
    for note in notes:
        print(note)
    net, target = _mlp_loss(args.batch, args.seed)
    logits = torch.randn(args.batch, UNITS, CLASSES, requires_grad=True)
    context = torch.randn(args.batch, 32)

    def loss_fn(z: Tensor) -> Tensor:
        flat = z.reshape((*z.shape[:-2], UNITS * CLASSES))
        return (net(flat) - target).pow(2).sum(-1)

    def step(name: str) -> int:
        est = built[name]
        logits.grad = None
        net.zero_grad(set_to_none=True)
        q = lg.Categorical(logits=logits).to_event(1)
        out = est(q, loss_fn, context=context)
        out.surrogate.mean().backward()
        return out.loss_evals

    runnable = {}
    for name in built:
        try:
            step(name)
        except (TypeError, ValueError, RuntimeError) as err:  # an estimator this loss cannot use
            print(f"{name}: failed on this problem ({type(err).__name__}: {err}), skipped")
            continue
        runnable[name] = (name,)
    evals, times = interleaved_times(runnable, step, args.rounds)
    reference = quartiles(times["st-gs"])[1] if "st-gs" in times else None
    print(f"\n{'estimator':<18} {'ms/step median':>14} {'IQR':>19} {'evals':>6} {'/ st-gs':>8}")
    for name in runnable:
        q1, med, q3 = quartiles(times[name])
        ratio = f"{med / reference:8.2f}" if reference else f"{'-':>8}"
        print(f"{name:<18} {med:>14.2f} {f'[{q1:.2f}, {q3:.2f}]':>19} {evals[name]:>6d} {ratio}")
        if args.record:
            test = {"ms": med, "ms_q1": q1, "ms_q3": q3, "loss_evals": float(evals[name])}
            if reference:
                test["ratio_to_st_gs"] = med / reference
            config = {"estimator": name, "batch": args.batch, "rounds": args.rounds}
            record = benchmark_record("bench-successors", config, test, primary_metric="ms")
            save_record(record, args.record)


if __name__ == "__main__":
    main()
