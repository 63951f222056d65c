"""Structured sampling speed against networkx, and the variance of the structured estimators.

Part 1 (speed): samples per second of a spanning tree and an arborescence with its execution
trace, for a batch of 256 complete graphs with n in {10, 30, 100} vertices, against a
per-sample Python loop with networkx on the SAME noise in the same run:

    SpanningTree   Kruskal on exponential noise  vs  nx.maximum_spanning_tree on theta + Gumbel
                   (only the order of the noise matters, so the trees are the same)
    Arborescence   Chu-Liu-Edmonds on E (root 0) vs  nx.minimum_spanning_arborescence on E
                   (edges into the root removed; CLE minimises the SUM of E)

The networkx loop builds each graph from the noise matrix and runs the algorithm; it runs on
``--nx-samples`` graphs per round (its rate is per sample, so fewer graphs do not change it).
Every networkx result is compared with latentgrad's (``mismatch`` must be 0). Timing is
interleaved (each round times every case once), one thread; the table gives the median rate
and the interquartile range over rounds.

Part 2 (variance): on the toy losses of Struminsky et al. (2021) at sizes small enough to
enumerate, the total variance over the scores of one gradient estimate, E-REINFORCE against
T-REINFORCE (and their leave-one-out "+" versions with K = 3) and RELAX (one sample, an MLP
critic trained for ``--relax-steps`` Adam steps on the same problem), relative to the squared
norm of the exact gradient.

Usage:
    python benchmarks/bench_structured.py [--sizes 10 30 100] [--batch 256] [--rounds 5]
        [--threads 1] [--relax-steps 300] [--skip-variance]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from latentgrad.distributions.arborescence import Arborescence
from latentgrad.distributions.spanning_tree import SpanningTree
from latentgrad.estimators.relax import RELAX, MLPCritic
from latentgrad.testing.problems import GradientProblem


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4)
    return q[0], statistics.median(xs), q[2]


def nx_spanning_trees(weights: list[list[list[float]]], n: int) -> list[set[tuple[int, int]]]:
    import networkx as nx

    out = []
    for w in weights:
        g = nx.Graph()
        g.add_weighted_edges_from(
            (u, v, w[u][v]) for u in range(n) for v in range(u + 1, n) if w[u][v] != float("inf")
        )
        tree = nx.maximum_spanning_tree(g, algorithm="kruskal")
        out.append({(min(u, v), max(u, v)) for u, v in tree.edges()})
    return out


def nx_arborescences(costs: list[list[list[float]]], n: int) -> list[set[tuple[int, int]]]:
    import networkx as nx

    out = []
    for c in costs:
        g = nx.DiGraph()
        g.add_weighted_edges_from((u, v, c[u][v]) for u in range(n) for v in range(1, n) if u != v)
        tree = nx.minimum_spanning_arborescence(g)
        out.append(set(tree.edges()))
    return out


def edge_sets(adjacency: torch.Tensor, *, directed: bool) -> list[set[tuple[int, int]]]:
    out = []
    for a in adjacency:
        idx = torch.nonzero(torch.triu(a) if not directed else a).tolist()
        out.append({(int(u), int(v)) for u, v in idx})
    return out


def speed(args: argparse.Namespace) -> None:
    print(
        f"Part 1: samples/s at batch {args.batch}, {args.threads} thread(s), median [IQR] over "
        f"{args.rounds} interleaved rounds"
    )
    header = (
        f"{'family':<14}{'n':>5}  {'latentgrad':>24}  {'networkx':>22}  {'speed-up':>8}  mismatch"
    )
    print(header)
    print("-" * len(header))
    g = torch.Generator().manual_seed(0)
    for n in args.sizes:
        bench_size(n, args, g)


def lg_rate(dist: SpanningTree | Arborescence, batch: int) -> float:
    """latentgrad samples (with traces) per second, one batched call."""
    t = time.perf_counter()
    dist.sample_with_trace()
    return batch / (time.perf_counter() - t)


def nx_rate(
    dist: SpanningTree | Arborescence,
    m: int,
    inputs: Callable[[torch.Tensor], list[list[list[float]]]],
    solve: Callable[[list[list[list[float]]], int], list[set[tuple[int, int]]]],
    mismatches: list[int],
) -> float:
    """networkx structures per second on the noise of ``m`` latentgrad samples; counts the
    samples whose structure differs from latentgrad's in ``mismatches[0]``."""
    n = dist.scores.shape[-1]
    z, noise, _ = dist.sample_with_trace()
    graphs = inputs(noise[:m])
    t = time.perf_counter()
    trees = solve(graphs, n)
    rate = m / (time.perf_counter() - t)
    ours = edge_sets(z[:m], directed=isinstance(dist, Arborescence))
    mismatches[0] += sum(a != b for a, b in zip(trees, ours, strict=True))
    return rate


def bench_size(n: int, args: argparse.Namespace, g: torch.Generator) -> None:
    scores = torch.randn(args.batch, n, n, generator=g)
    tree = SpanningTree(scores)
    arbo = Arborescence(scores, root=0)
    m = min(args.batch, args.nx_samples if n >= 100 else args.batch)
    mismatches = {"tree": [0], "arbo": [0]}

    def tree_keys(noise: torch.Tensor) -> list[list[list[float]]]:
        return _edge_matrix(-noise, n)  # theta + Gumbel = -log E

    def arbo_costs(noise: torch.Tensor) -> list[list[list[float]]]:
        return noise.double().exp().reshape(-1, n, n).tolist()

    cases: dict[str, Callable[[], float]] = {
        "lg tree": lambda: lg_rate(tree, args.batch),
        "nx tree": lambda: nx_rate(tree, m, tree_keys, nx_spanning_trees, mismatches["tree"]),
        "lg arbo": lambda: lg_rate(arbo, args.batch),
        "nx arbo": lambda: nx_rate(arbo, m, arbo_costs, nx_arborescences, mismatches["arbo"]),
    }
    for fn in cases.values():  # warm-up
        fn()
    for count in mismatches.values():
        count[0] = 0
    rates: dict[str, list[float]] = {k: [] for k in cases}
    names = list(cases)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            rates[name].append(cases[name]())
    for fam, key in (("SpanningTree", "tree"), ("Arborescence", "arbo")):
        lq, med, hq = quartiles(rates[f"lg {key}"])
        nlq, nmed, nhq = quartiles(rates[f"nx {key}"])
        print(
            f"{fam:<14}{n:>5}  {med:>10.0f} [{lq:>5.0f}, {hq:>5.0f}]  "
            f"{nmed:>8.0f} [{nlq:>5.0f}, {nhq:>5.0f}]  {med / nmed:>7.1f}x  "
            f"{mismatches[key][0]}/{args.rounds * m}"
        )


def _edge_matrix(keys: torch.Tensor, n: int) -> list[list[list[float]]]:
    """Per-sample (n, n) nested lists of the edge keys (upper triangle), +inf elsewhere."""
    from latentgrad.structured.kruskal import edge_index

    u, v = edge_index(n)
    full = torch.full((keys.shape[0], n, n), float("inf"), dtype=torch.float64)
    full[:, u, v] = keys.double()
    return full.tolist()


def variance(args: argparse.Namespace) -> None:
    from latentgrad.estimators.baselines import LeaveOneOut
    from latentgrad.estimators.score_function import EReinforce, TReinforce
    from latentgrad.testing.problems import toy_problems

    torch.manual_seed(0)
    print()
    print(
        "Part 2: total variance over the scores of one gradient estimate / |exact gradient|^2 "
        f"({args.replicates} estimates)"
    )
    estimators = {
        "E-REINFORCE": lambda: EReinforce(1),
        "T-REINFORCE": lambda: TReinforce(1),
        "E-REINFORCE+ K=3": lambda: EReinforce(3, LeaveOneOut()),
        "T-REINFORCE+ K=3": lambda: TReinforce(3, LeaveOneOut()),
    }
    from latentgrad.testing.problems import replicated_and_exact

    names = [*estimators, f"RELAX ({args.relax_steps} st.)"]
    print(f"{'problem':<26}" + "".join(f"{k:>18}" for k in names) + f"{'T/E':>7}")
    for problem in toy_problems():
        n = problem.logits.numel()
        row = []
        for make in [*estimators.values(), lambda p=problem: trained_relax(p, args.relax_steps)]:
            grads, exact = replicated_and_exact(problem, make(), args.replicates)
            row.append(float(grads[:, :n].var(0).sum() / exact[:n].pow(2).sum()))
        print(
            f"{problem.name:<26}" + "".join(f"{x:>18.3g}" for x in row) + f"{row[1] / row[0]:>7.2f}"
        )


def trained_relax(problem: GradientProblem, steps: int) -> RELAX:
    """RELAX with an MLP critic trained for ``steps`` Adam steps (batch 64) on the problem."""
    dist = problem.make_dist(problem.logits)
    est = RELAX(MLPCritic(dist.num_items, hidden=32).to(problem.logits.dtype))
    opt = torch.optim.Adam(est.parameters(), lr=1e-2)
    loss_fn = problem.make_loss(problem.theta)
    for _ in range(steps):
        scores = problem.logits.expand(64, *problem.logits.shape[1:]).clone().requires_grad_()
        opt.zero_grad()
        est(problem.make_dist(scores), loss_fn).surrogate.sum().backward()
        opt.step()
    return est


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 30, 100])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--nx-samples", type=int, default=16, help="networkx graphs per round at n >= 100"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--replicates", type=int, default=4000)
    parser.add_argument("--relax-steps", type=int, default=300, help="critic training steps")
    parser.add_argument("--skip-variance", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.skip_speed:
        speed(args)
    if not args.skip_variance:
        variance(args)


if __name__ == "__main__":
    main()
