"""Forward + backward time of latentgrad's sparse mappings against the ``entmax`` package.

Contenders, per shape ``(rows, n)`` of float32 scores normalized along the last dimension:

* sparsemax: ``latentgrad`` vs ``entmax.sparsemax`` vs ``torch.softmax`` (the floor);
* 1.5-entmax: ``latentgrad`` vs ``entmax.entmax15``.

One timing is ``y = f(x); y.backward(g)`` on one thread. Rounds are interleaved: each round times
every contender once, and the order cycles through all permutations of the contenders, so that
background load and the state left by the previous call (caches, allocator) hit all of them
alike (a plain rotation would keep each contender's predecessor fixed). The table reports the
median and interquartile range over rounds in ms, and the ratio of medians latentgrad / entmax.

Every call gets new scores, as in training (a pool of distinct inputs, taken in turn by all
contenders). Timing one input over and over flatters sorting: the CPU's branch predictor learns
the comparisons of the rows it has just sorted, and sorting a (1024, 10) float32 input it has seen
measured 42 us here against 121 us for a new one. ``--same-input`` times the old way.

Usage::

    python benchmarks/bench_mappings.py                 # the default shapes
    python benchmarks/bench_mappings.py --seconds 2 --shapes 1024x10 64x10000
    python benchmarks/bench_mappings.py --device cuda  # the GPU column (synchronized timings)
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable

import torch

from latentgrad.mappings import entmax15, sparsemax

try:
    import entmax as entmax_pkg
except ImportError as err:  # pragma: no cover - depends on the environment
    raise SystemExit(
        "this benchmark needs the entmax package: pip install 'latentgrad[bench]'"
    ) from err

Mapping = Callable[[torch.Tensor], torch.Tensor]

DEFAULT_SHAPES = ((1024, 10), (1024, 100), (256, 1000), (64, 10000))


def _softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x, -1)


GROUPS: dict[str, dict[str, Mapping]] = {
    "sparsemax": {
        "latentgrad": sparsemax,
        "entmax": entmax_pkg.sparsemax,
        "softmax": _softmax,
    },
    "entmax15": {
        "latentgrad": entmax15,
        "entmax": entmax_pkg.entmax15,
    },
}


#: Entries of all the pooled inputs of one shape together (and at most this many inputs).
POOL_ENTRIES = 1 << 23
POOL_SIZE = 64


class Inputs:
    """Scores for successive calls: a pool of distinct inputs, one after another."""

    def __init__(
        self, shape: tuple[int, int], same: bool, device: str | torch.device = "cpu"
    ) -> None:
        gen = torch.Generator().manual_seed(0)  # the same scores on every device
        count = 1 if same else max(2, min(POOL_SIZE, POOL_ENTRIES // (shape[0] * shape[1])))
        self.pool = [
            torch.randn(shape, generator=gen).to(device).requires_grad_(True) for _ in range(count)
        ]
        self.grad = torch.randn(shape, generator=gen).to(device)
        cuda = torch.device(device).type == "cuda"
        self.sync = torch.cuda.synchronize if cuda else (lambda: None)
        self.calls = 0

    def next(self) -> torch.Tensor:
        x = self.pool[self.calls % len(self.pool)]
        self.calls += 1
        x.grad = None
        return x


def _once(fn: Mapping, inputs: Inputs, inner: int = 1) -> float:
    """Seconds per call of ``inner`` back-to-back forward + backward calls."""
    total = 0.0
    for _ in range(inner):
        x = inputs.next()
        inputs.sync()
        start = time.perf_counter()
        fn(x).backward(inputs.grad)
        inputs.sync()
        total += time.perf_counter() - start
    return total / inner


def bench_shape(
    contenders: dict[str, Mapping],
    shape: tuple[int, int],
    seconds: float,
    min_rounds: int,
    inner: int = 1,
    same_input: bool = False,
    device: str | torch.device = "cpu",
) -> dict[str, list[float]]:
    """Interleaved timings (seconds) of every contender at one shape."""
    inputs = Inputs(shape, same_input, device)
    names = list(contenders)
    # Same outputs before timing anything (softmax is the floor, not a competitor).
    for x in inputs.pool[:4]:
        reference = contenders["entmax"](x).detach()
        torch.testing.assert_close(contenders["latentgrad"](x).detach(), reference)
    for name in names:  # warm up allocator and dispatch caches
        for _ in range(3):
            _once(contenders[name], inputs)
    per_round = sum(_once(contenders[name], inputs, inner) for name in names)
    rounds = max(min_rounds, int(seconds / max(per_round, 1e-9)))
    times: dict[str, list[float]] = {name: [] for name in names}
    orders = list(itertools.permutations(names))
    for r in range(rounds):
        for name in orders[r % len(orders)]:
            times[name].append(_once(contenders[name], inputs, inner))
    return times


def _summary(ts: list[float]) -> tuple[float, float]:
    q1, med, q3 = statistics.quantiles(ts, n=4, method="inclusive")
    return med * 1e3, (q3 - q1) * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=6.0, help="time budget per shape and group"
    )
    parser.add_argument("--min-rounds", type=int, default=25)
    parser.add_argument(
        "--shapes",
        nargs="+",
        default=[f"{r}x{n}" for r, n in DEFAULT_SHAPES],
        help="shapes as ROWSxN",
    )
    parser.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS))
    parser.add_argument(
        "--inner",
        type=int,
        default=1,
        help="back-to-back calls per contender and round (1: every call follows another "
        "contender, as inside a model; more: warm caches, as in a tight loop)",
    )
    parser.add_argument(
        "--same-input",
        action="store_true",
        help="time every call on the same scores (flatters sorting, see above)",
    )
    parser.add_argument("--device", default="cpu", help="where to time (cpu, cuda)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(1)
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes]

    print(
        f"torch {torch.__version__}, device {device}, 1 thread, float32, forward + backward, "
        f"{args.inner} call(s) per contender and round, "
        f"{'the same scores' if args.same_input else 'new scores'} every call; "
        "median [IQR] in ms"
    )
    for group in args.groups:
        contenders = GROUPS[group]
        names = list(contenders)
        header = ["shape", *names, "latentgrad/entmax", "rounds"]
        print(f"\n{group}\n")
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for shape in shapes:
            times = bench_shape(
                contenders,
                shape,  # type: ignore[arg-type]
                args.seconds,
                args.min_rounds,
                args.inner,
                args.same_input,
                device,
            )
            stats = {name: _summary(times[name]) for name in names}
            cells = [f"{stats[n][0]:.3f} [{stats[n][1]:.3f}]" for n in names]
            ratio = stats["latentgrad"][0] / stats["entmax"][0]
            rounds = len(times[names[0]])
            print(
                f"| {shape[0]}x{shape[1]} | " + " | ".join(cells) + f" | {ratio:.2f} | {rounds} |"
            )


if __name__ == "__main__":
    main()
