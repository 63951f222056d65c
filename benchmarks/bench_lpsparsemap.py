"""latentgrad's batched SparseMAP solver against LP-SparseMAP, one example at a time.

The five problems of issue 16, part 4, each with a batch of 64 float64 score vectors
``theta ~ N(0, 1)`` (fixed seed) and a fixed random cotangent ``v``; one timing is the solve
of all 64 problems plus the backward of ``sum <v, mu>`` (forward + backward: a training step
needs both, and LP-SparseMAP's backward is its own active-set Jacobian product):

==========================  ======================================  ==========================
problem                     latentgrad                              LP-SparseMAP
==========================  ======================================  ==========================
32 bits, budget 8           ``BudgetBits(32, 8)``                   ``Budget`` factor
128 bits, budget 32         ``BudgetBits(128, 32)``                 ``Budget`` factor
sequence 20 x 5 tags        ``SequenceOracle(20, 5)``               ``Sequence`` factor
arborescence n = 10         ``ArborescenceOracle(10)``              ``DepTree`` (9 words)
arborescence n = 30         ``ArborescenceOracle(30)``              ``DepTree`` (29 words)
==========================  ======================================  ==========================

latentgrad solves all rows in one call of :func:`~latentgrad.mappings.sparsemap` with its
defaults (the closed form for budgeted bits, the active set with face identification
otherwise). Where numba is installed (the ``fast`` extra) the active set and the
Chu-Liu-Edmonds and Viterbi oracles run as compiled loops (:mod:`latentgrad._native`), as a user
with that extra gets them; ``--torch-too`` adds a column with the batched PyTorch solver (the
path without numba) in the same interleaved rounds. LP-SparseMAP runs its C++ solver through
``lpsmap.TorchFactorGraph`` in a Python loop over the rows, with one ``backward`` of the summed
loss. Every row is the same problem in both libraries. For arborescences, LP-SparseMAP's packed
``DepTree`` variable ``x[m - 1, h - 1]`` is the edge ``h -> m`` and its diagonal the edges out of
the root. For sequences LP-SparseMAP's factor penalizes the unary parts only (the transition
scores enter linearly), as Niculae et al. define SparseMAP there, and latentgrad is given the
same problem with ``penalized=SequenceOracle.unary_parts``; the loss and the comparison use the
unary parts (LP-SparseMAP's ``mu`` has no others). With ``--same-sequence`` a sixth row gives
both latentgrad's default problem, every one of the 575 parts penalized: LP-SparseMAP takes all
parts as its variables, tied by logic factors (``Xor`` on each position's tags and
``XorOut`` between each tag and its incoming and outgoing transitions), whose local polytope is
the chain's marginal polytope; its ADMM then solves the same projection, with its default
1000 iterations (a round takes seconds, so the row is opt-in).

Rounds are interleaved (every contender once per round, in a rotating order); the table gives
the median and interquartile range over rounds, in ms, on one thread. It also prints, per row,
how far latentgrad's gradient is from central finite differences (the largest
``|<grad, u> - (f(theta + h u) - f(theta - h u)) / 2h|`` over the batch and a few unit
directions ``u``, with ``h = 1e-6``; ``mu`` is piecewise linear, so away from the kinks the
difference is rounding) and the largest difference between the two libraries' ``mu``
(LP-SparseMAP stops at a residual of ``1e-6``).

LP-SparseMAP is optional: its PyPI release does not build on current Python, so install it from
source (https://github.com/deep-spin/lp-sparsemap; it needs the Eigen headers, e.g. Debian's
``libeigen3-dev``). Without it the script times latentgrad alone and prints the LP-SparseMAP
times of issue 16 as the reference.

Usage::

    python benchmarks/bench_lpsparsemap.py
    python benchmarks/bench_lpsparsemap.py --rounds 5 --only arborescence
    python benchmarks/bench_lpsparsemap.py --rounds 3 --only "all parts" --same-sequence
    python benchmarks/bench_lpsparsemap.py --rounds 5 --torch-too
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from _common import interleaved_times, quartiles
from torch import Tensor

from latentgrad import _native
from latentgrad.mappings._sparsemap import sparsemap
from latentgrad.mappings.oracles import (
    ArborescenceOracle,
    BudgetBits,
    SequenceOracle,
    StructureOracle,
)

try:
    import lpsmap
except ImportError:  # the optional peer
    lpsmap = None

#: LP-SparseMAP's times (ms) in issue 16's table, printed when it is not installed.
SAME_SEQUENCE = "sequence, all parts"

ISSUE_LPSMAP_MS = {
    "32 bits, budget 8": 5.25,
    "128 bits, budget 32": 8.88,
    "sequence 20 x 5 tags": 170.0,
    "arborescence n = 10": 16.8,
    "arborescence n = 30": 414.0,
    SAME_SEQUENCE: math.nan,
}


@dataclass
class Problem:
    name: str
    oracle: StructureOracle
    #: LP-SparseMAP's ``mu`` of one row's scores (differentiable), in latentgrad's layout
    #: (the parts LP-SparseMAP does not penalize are left at 0).
    peer: Callable[[Tensor], Tensor]
    #: The parts that both libraries' ``mu`` cover (the loss and the comparison use these).
    shared: Tensor
    #: Whether both libraries solve the same problem (so that their ``mu`` agree).
    same: bool = True
    #: The parts latentgrad penalizes (``sparsemap``'s ``penalized``; None: all).
    penalized: Tensor | None = None


def _budget_peer(budget: int) -> Callable[[Tensor], Tensor]:
    def solve(theta: Tensor) -> Tensor:
        fg = lpsmap.TorchFactorGraph()
        x = fg.variable_from(theta)
        fg.add(lpsmap.Budget(x, budget))
        fg.solve()
        return x.value

    return solve


def _sequence_peer(length: int, tags: int) -> Callable[[Tensor], Tensor]:
    unary = length * tags

    def solve(theta: Tensor) -> Tensor:
        fg = lpsmap.TorchFactorGraph()
        x = fg.variable_from(theta[:unary].reshape(length, tags))
        fg.add(lpsmap.Sequence(x, theta[unary:].reshape(length - 1, tags, tags)))
        fg.solve()
        return torch.cat([x.value.reshape(-1), theta.new_zeros(theta.shape[0] - unary)])

    return solve


def _sequence_logic_peer(length: int, tags: int) -> Callable[[Tensor], Tensor]:
    # Every part is a variable: unary (t, a) at t K + a, transition (t, a, b) at
    # L K + (t K + a) K + b, as in SequenceOracle. One tag per position (Xor); each tag equals
    # the sum of its outgoing and of its incoming transitions (XorOut: inputs sum to the output).
    unary = torch.arange(length * tags).reshape(length, tags)
    pairs = length * tags + torch.arange((length - 1) * tags * tags).reshape(length - 1, tags, tags)
    groups: list[tuple[bool, Tensor]] = [(True, unary[t]) for t in range(length)]
    for t in range(length - 1):
        for a in range(tags):
            groups.append((False, torch.cat([pairs[t, a, :], unary[t, a : a + 1]])))
            groups.append((False, torch.cat([pairs[t, :, a], unary[t + 1, a : a + 1]])))
    index = [ix.numpy() for _, ix in groups]

    def solve(theta: Tensor) -> Tensor:
        fg = lpsmap.TorchFactorGraph()
        x = fg.variable_from(theta)
        for (xor, _), ix in zip(groups, index, strict=True):
            fg.add(lpsmap.Xor(x[ix]) if xor else lpsmap.XorOut(x[ix]))
        fg.solve()
        return x.value

    return solve


def _arborescence_peer(n: int) -> Callable[[Tensor], Tensor]:
    # Root 0; word m = 1..n-1 has the packed variables x[m - 1, h - 1] (h != m: the edge h -> m)
    # and x[m - 1, m - 1] (the edge 0 -> m).
    words = torch.arange(1, n)
    heads = words.unsqueeze(0).expand(n - 1, n - 1)
    tails = torch.where(heads == words.unsqueeze(1), 0, heads)
    index = tails * n + words.unsqueeze(1)  # (m - 1, h - 1) -> flat edge of latentgrad

    def solve(theta: Tensor) -> Tensor:
        fg = lpsmap.TorchFactorGraph()
        x = fg.variable_from(theta[index])
        fg.add(lpsmap.DepTree(x, packed=True))
        fg.solve()
        return theta.new_zeros(n * n).index_put((index.reshape(-1),), x.value.reshape(-1))

    return solve


def problems(same_sequence: bool = False) -> list[Problem]:
    seq = SequenceOracle(20, 5)
    unary = torch.zeros(seq.dim, dtype=torch.bool)
    unary[: 20 * 5] = True
    out = [
        Problem("32 bits, budget 8", BudgetBits(32, 8), _budget_peer(8), torch.ones(32).bool()),
        Problem(
            "128 bits, budget 32", BudgetBits(128, 32), _budget_peer(32), torch.ones(128).bool()
        ),
        Problem(
            "sequence 20 x 5 tags", seq, _sequence_peer(20, 5), unary, penalized=seq.unary_parts
        ),
    ]
    for n in (10, 30):
        oracle = ArborescenceOracle(n)
        allowed = ~torch.eye(n, dtype=torch.bool)
        allowed[:, 0] = False
        out.append(
            Problem(f"arborescence n = {n}", oracle, _arborescence_peer(n), allowed.reshape(-1))
        )
    if same_sequence:
        every = torch.ones(seq.dim, dtype=torch.bool)
        out.append(Problem(SAME_SEQUENCE, seq, _sequence_logic_peer(20, 5), every))
    return out


def latentgrad_mu(theta: Tensor, problem: Problem) -> Tensor:
    return sparsemap(theta, problem.oracle, penalized=problem.penalized).mu


def torch_mu(theta: Tensor, problem: Problem) -> Tensor:
    with _native.disabled():
        return latentgrad_mu(theta, problem)


def peer_mu(theta: Tensor, problem: Problem) -> Tensor:
    return torch.stack([problem.peer(row) for row in theta])


def step(solve: Callable[[Tensor], Tensor], theta: Tensor, v: Tensor) -> int:
    """Solve every row and backpropagate ``sum <v, mu>``."""
    x = theta.detach().requires_grad_()
    (solve(x) * v).sum().backward()
    return 0


def finite_difference_error(theta: Tensor, problem: Problem, v: Tensor) -> float:
    """Largest directional-derivative error of latentgrad's gradient of ``sum <v, mu>``."""
    x = theta.clone().requires_grad_()
    (grad,) = torch.autograd.grad((latentgrad_mu(x, problem) * v).sum(), x)
    gen = torch.Generator().manual_seed(1)
    h, worst = 1e-6, 0.0
    for _ in range(3):
        u = torch.randn(theta.shape, generator=gen, dtype=theta.dtype)
        u = u / u.norm(dim=1, keepdim=True)
        plus = (latentgrad_mu(theta + h * u, problem) * v).sum(1)
        minus = (latentgrad_mu(theta - h * u, problem) * v).sum(1)
        err = ((grad * u).sum(1) - (plus - minus) / (2 * h)).abs().max()
        worst = max(worst, float(err))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds per problem")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--only", default="", help="run the problems whose name contains this")
    parser.add_argument("--no-peer", action="store_true", help="skip LP-SparseMAP")
    parser.add_argument(
        "--same-sequence",
        action="store_true",
        help="add the sequence row with LP-SparseMAP on latentgrad's problem (slow)",
    )
    parser.add_argument(
        "--torch-too",
        action="store_true",
        help="also time latentgrad's batched PyTorch solver (the path without numba)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    both = args.torch_too and _native.available()
    print(
        "latentgrad's active set and oracles: "
        + ("compiled (numba)" if _native.available() else "batched PyTorch (numba not installed)")
    )
    use_peer = lpsmap is not None and not args.no_peer
    if not use_peer:
        why = "is not installed" if lpsmap is None else "is skipped (--no-peer)"
        print(f"LP-SparseMAP (lpsmap) {why}: its column gives issue 16's numbers.")
    print(
        f"SparseMAP, batch {args.batch}, float64, one thread, forward + backward, "
        f"median ± IQR over {args.rounds} interleaved rounds (ms)"
    )
    print(
        f"{'problem':>22} {'support':>8} {'latentgrad':>18} {'LP-SparseMAP':>18} {'ratio':>6} "
        f"{'fd error':>9} {'|mu diff|':>9}"
        + (f" {'PyTorch path':>18} {'ratio':>6}" if both else "")
    )
    for i, problem in enumerate(problems(args.same_sequence)):
        if args.only not in problem.name:
            continue
        gen = torch.Generator().manual_seed(i)
        d = problem.oracle.dim
        theta = torch.randn(args.batch, d, generator=gen, dtype=torch.float64)
        v = torch.randn(args.batch, d, generator=gen, dtype=torch.float64) * problem.shared
        oracle = problem.oracle
        ours = sparsemap(theta, oracle, penalized=problem.penalized)
        support = float((ours.weights > 0).sum(-1).double().mean())
        cases: dict[str, tuple[object, ...]] = {
            "latentgrad": (lambda t, p=problem: latentgrad_mu(t, p), theta, v)
        }
        if use_peer:
            cases["lpsmap"] = (lambda t, p=problem: peer_mu(t, p), theta, v)
        if both:
            cases["torch"] = (lambda t, p=problem: torch_mu(t, p), theta, v)
        _, times = interleaved_times(cases, step, args.rounds)
        q1, med, q3 = quartiles(times["latentgrad"])
        mine = f"{med:9.2f} ±{q3 - q1:6.2f}"
        if use_peer:
            p1, pmed, p3 = quartiles(times["lpsmap"])
            peer = f"{pmed:9.2f} ±{p3 - p1:6.2f}"
            with torch.no_grad():
                diff = (peer_mu(theta, problem) - ours.mu) * problem.shared
            mu_diff = f"{float(diff.abs().max()):9.1e}" if problem.same else f"{'(other)':>9}"
        else:
            pmed = ISSUE_LPSMAP_MS[problem.name]
            peer = f"{pmed:9.2f} (issue)" if not math.isnan(pmed) else "-"
            mu_diff = f"{'-':>9}"
        fd = finite_difference_error(theta, problem, v)
        extra = ""
        if both:
            t1, tmed, t3 = quartiles(times["torch"])
            extra = f" {tmed:9.2f} ±{t3 - t1:6.2f} {tmed / pmed:5.2f}x"
        print(
            f"{problem.name:>22} {support:8.1f} {mine:>18} {peer:>18} {med / pmed:5.2f}x "
            f"{fd:9.1e} {mu_diff}{extra}"
        )


if __name__ == "__main__":
    main()
