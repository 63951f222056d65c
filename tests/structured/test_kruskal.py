"""Kruskal's algorithm and the spanning-tree family: fast path, exact probabilities, checks."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from latentgrad.distributions import StructuredDistribution
from latentgrad.distributions.spanning_tree import (
    SpanningTree,
    all_spanning_trees,
    connected,
)
from latentgrad.structured.core import enumerate_traces, run, structure_support, trace_log_prob
from latentgrad.structured.kruskal import (
    Kruskal,
    adjacency_to_edges,
    edge_id_matrix,
    edge_index,
    edge_keys,
    edges_to_adjacency,
    num_edges,
    num_vertices,
)

F64 = torch.float64


def small_instances() -> list[SpanningTree]:
    """Small spanning-tree distributions (batch of 2) for the shared family tests."""
    g = torch.Generator().manual_seed(11)
    complete = SpanningTree(torch.randn(2, 4, 4, generator=g, dtype=F64))
    masked_scores = torch.randn(2, 5, 5, generator=g, dtype=F64)
    masked_scores[0, 0, 4] = -torch.inf
    masked_scores[0, 1, 3] = -torch.inf
    masked_scores[1, 2, 3] = -torch.inf
    masked = SpanningTree(masked_scores)
    triangle = SpanningTree(torch.randn(2, 3, 3, generator=g, dtype=F64))
    return [complete, masked, triangle]


def _connected_mask(n: int, rows: int, keep: float, g: torch.Generator) -> torch.Tensor:
    """Random edge masks that keep a random spanning path (so every row stays connected)."""
    d = num_edges(n)
    mask = torch.rand(rows, d, generator=g) < keep
    ids = edge_id_matrix(n)
    for r in range(rows):  # test setup only
        perm = torch.randperm(n, generator=g)
        mask[r, ids[perm[:-1], perm[1:]]] = True
    return mask


def _same_run(alg: Kruskal, weights: torch.Tensor, mask: torch.Tensor) -> None:
    fast_tree, fast = alg.run(weights, mask)
    ref_tree, ref = run(alg, weights, mask)
    assert torch.equal(fast_tree, ref_tree)
    assert torch.equal(fast.choices, ref.choices)
    assert torch.equal(fast.candidates, ref.candidates)


# -- the algorithm -------------------------------------------------------------------------


def test_edge_numbering_and_conversions(device):
    assert edge_index(4).tolist() == [[0, 0, 0, 1, 1, 2], [1, 2, 3, 2, 3, 3]]
    assert num_vertices(num_edges(7)) == 7
    with pytest.raises(ValueError):
        num_vertices(4)
    ids = edge_id_matrix(5, device)
    u, v = edge_index(5, device)
    assert torch.equal(ids[u, v], torch.arange(10)) and torch.equal(ids[v, u], torch.arange(10))
    x = torch.randn(3, 2, 10, dtype=F64, requires_grad=True)
    adj = edges_to_adjacency(x)
    assert adj.shape == (3, 2, 5, 5)
    assert torch.equal(adj, adj.mT) and bool((adj.diagonal(dim1=-2, dim2=-1) == 0).all())
    assert torch.equal(adjacency_to_edges(adj), x)
    adj.sum().backward()  # each edge appears twice
    assert torch.equal(x.grad, torch.full_like(x, 2.0))
    with pytest.raises(ValueError):
        adjacency_to_edges(torch.zeros(3, 4))


def test_edge_keys_follow_the_stable_order_of_the_weights():
    g = torch.Generator().manual_seed(0)
    specials = torch.tensor([0.0, -0.0, 1e-40, -1e-40, torch.inf, -torch.inf, 1.0, -1.0])
    for dtype in (torch.float32, F64, torch.float16, torch.bfloat16):
        w = torch.randint(-3, 4, (20, 40), generator=g).to(dtype) / 2
        w[:, :8] = specials.to(dtype)
        w = w[:, torch.randperm(40, generator=g)]
        keys = edge_keys(w)
        assert torch.equal(keys & (2**32 - 1), torch.arange(40).expand(20, 40))
        expected = torch.argsort(w.double(), dim=-1, stable=True)
        assert torch.equal(torch.argsort(keys, dim=-1), expected)


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_fast_run_equals_the_generic_driver(n):
    g = torch.Generator().manual_seed(n)
    alg = Kruskal(n)
    d = alg.num_items
    rows = 16
    for keep in (1.0, 0.6, 0.2):
        mask = _connected_mask(n, rows, keep, g)
        _same_run(alg, torch.randn(rows, d, generator=g), mask)  # float32 log-noise-like
        _same_run(alg, torch.randn(rows, d, generator=g, dtype=F64), mask)
        # ties everywhere: Kruskal's argmin takes the lowest edge number
        _same_run(alg, torch.randint(0, 3, (rows, d), generator=g).float(), mask)


def test_fast_run_equals_the_generic_driver_on_forests_and_large_n():
    g = torch.Generator().manual_seed(1)
    alg = Kruskal(7)
    mask = torch.rand(32, alg.num_items, generator=g) < 0.25  # mostly disconnected
    assert not bool(connected(edges_to_adjacency(mask)).all())
    _same_run(alg, torch.randn(32, alg.num_items, generator=g), mask)
    # n >= 128 takes the int16 path for the candidate sets
    big = Kruskal(130)
    w = torch.randn(2, big.num_items, generator=g)
    _same_run(big, w, torch.rand(2, big.num_items, generator=g) < 0.9)


def test_kruskal_example_and_state_machine():
    alg = Kruskal(4)
    assert alg.max_steps == 3 and alg.num_items == 6 and not alg.reduced_costs
    with pytest.raises(ValueError, match="n"):
        Kruskal(1)
    with pytest.raises(TypeError, match="n"):
        Kruskal(3.0)  # type: ignore[arg-type]
    # the candidate sets shrink as cycles close: path 0-1, then 1-2 closes nothing, ...
    w = torch.tensor([[0.0, 5.0, 4.0, 1.0, 3.0, 2.0]])  # edges 01 02 03 12 13 23
    tree, trace = alg.run(w, torch.ones(1, 6, dtype=torch.bool))
    assert trace.choices.tolist() == [[0, 3, 5]]  # 01, 12, 23
    assert trace.candidates[0].int().tolist() == [
        [1, 1, 1, 1, 1, 1],
        [0, 1, 1, 1, 1, 1],
        [0, 0, 1, 0, 1, 1],  # 02 and 12 now lie inside {0, 1, 2}
    ]
    assert tree.tolist() == [[True, False, False, True, False, True]]


# -- the distribution ----------------------------------------------------------------------


def _brute_force_max_tree(theta: torch.Tensor, n: int) -> torch.Tensor:
    """The maximum spanning tree of one graph by trying every (n-1)-subset of edges."""
    best, best_score = None, -math.inf
    for subset in itertools.combinations(range(num_edges(n)), n - 1):
        edges = torch.zeros(num_edges(n), dtype=torch.bool)
        edges[list(subset)] = True
        if not bool(torch.isfinite(theta[edges]).all()):
            continue
        if not bool(connected(edges_to_adjacency(edges))):
            continue
        score = float(theta[edges].sum())
        if score > best_score:
            best, best_score = edges, score
    assert best is not None
    return edges_to_adjacency(best.to(theta.dtype))


def test_mode_is_the_maximum_spanning_tree():
    g = torch.Generator().manual_seed(2)
    for n in (3, 4, 5):
        scores = torch.randn(6, n, n, generator=g, dtype=F64)
        mask = _connected_mask(n, 6, 0.5, g)
        theta = torch.where(mask, adjacency_to_edges(scores), -torch.inf)
        scores = edges_to_adjacency(theta)
        q = SpanningTree(scores)
        mode = q.mode()
        assert mode.shape == (6, n, n) and mode.dtype == F64
        for r in range(6):
            assert torch.equal(mode[r], _brute_force_max_tree(theta[r], n))


def test_complete_graph_on_four_vertices_has_cayley_many_trees(device):
    q = SpanningTree(torch.randn(4, 4, dtype=F64))
    enum = enumerate_traces(q.algorithm, torch.ones(1, 6, dtype=torch.bool))
    assert enum.row.shape[0] == 16 * 6  # 16 trees, 3! orders each
    values, probs = structure_support(q.algorithm, q.item_scores())
    assert values.shape == (16, 6)
    torch.testing.assert_close(probs.sum(0), torch.tensor(1.0, dtype=F64), rtol=0, atol=1e-12)
    assert q.support_size() == 16
    for n in range(2, 7):
        trees = all_spanning_trees(n, device)
        assert trees.shape == (n ** (n - 2), num_edges(n))
        assert torch.unique(trees, dim=0).shape[0] == trees.shape[0]
        assert bool((trees.sum(-1) == n - 1).all())
        assert bool(connected(edges_to_adjacency(trees)).all())


def _as_dict(values: torch.Tensor, probs: torch.Tensor) -> dict[tuple[float, ...], float]:
    """Structure -> probability, for the structures of positive probability (padding has 0)."""
    out: dict[tuple[float, ...], float] = {}
    for v, p in zip(values, probs, strict=True):
        if float(p) > 0:
            key = tuple(v.flatten().tolist())
            out[key] = out.get(key, 0.0) + float(p)
    return out


@pytest.mark.parametrize("index", [0, 1, 2])
def test_log_prob_dp_equals_enumeration(index):
    q = small_instances()[index]
    values, probs = StructuredDistribution.support_probs(q)  # by trace enumeration
    logp = q.log_prob(values)
    positive = probs > 0
    torch.testing.assert_close(logp.exp()[positive], probs[positive], rtol=1e-10, atol=1e-14)
    # the Prüfer-based support: the same trees, summing to 1
    ours, our_probs = q.support_probs()
    torch.testing.assert_close(our_probs.sum(0), torch.ones(q.batch_shape, dtype=F64))
    assert ours.shape[0] <= q.support_size()
    for b in range(2):
        ref, got = _as_dict(values[:, b], probs[:, b]), _as_dict(ours[:, b], our_probs[:, b])
        assert ref.keys() == got.keys()
        assert max(abs(ref[k] - got[k]) for k in ref) < 1e-12
    torch.testing.assert_close(q.entropy(), StructuredDistribution.entropy(q))


def test_log_prob_of_non_trees_and_broadcasting():
    q = small_instances()[1]  # n = 5; element 0 lacks edges {0, 4} and {1, 3}
    z = q.sample((3,))
    assert torch.isfinite(q.log_prob(z)).all() and q.log_prob(z).shape == (3, 2)
    uses_absent = torch.zeros(5, 5, dtype=F64)
    path = [(0, 4), (4, 1), (1, 2), (4, 3)]  # uses {0, 4}
    for a, b in path:
        uses_absent[a, b] = uses_absent[b, a] = 1
    lp = q.log_prob(uses_absent.expand(2, 5, 5))
    assert torch.isneginf(lp[0]) and torch.isfinite(lp[1])
    bad = [
        torch.zeros(5, 5, dtype=F64),  # no edges
        torch.ones(5, 5, dtype=F64) - torch.eye(5, dtype=F64),  # too many
        edges_to_adjacency(torch.tensor([1, 1, 0, 0, 1, 0, 0, 0, 0, 1.0], dtype=F64)),  # cycle
        2 * uses_absent,  # not 0/1
        torch.triu(uses_absent),  # not symmetric
    ]
    unchecked = SpanningTree(q.scores, validate_args=False)
    for value in bad:
        with pytest.raises(ValueError, match="value must be in the support of SpanningTree"):
            q.log_prob(value.expand(2, 5, 5))
        assert bool(torch.isneginf(unchecked.log_prob(value.expand(2, 5, 5))).all())
    with pytest.raises(ValueError, match="event shape"):
        q.log_prob(torch.zeros(2, 4, 4, dtype=F64))


def test_log_prob_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(4)
    scores = torch.randn(2, 4, 4, generator=g, dtype=F64)
    scores[1, 0, 2] = -torch.inf
    value = SpanningTree(scores).sample((2,))

    def f(s: torch.Tensor) -> torch.Tensor:
        return SpanningTree(torch.where(torch.isfinite(scores), s, scores)).log_prob(value)

    free = torch.where(torch.isfinite(scores), scores, 0.0).requires_grad_()
    assert torch.autograd.gradcheck(f, (free,))


def test_log_prob_dp_at_the_largest_size_on_a_cycle():
    # n = 16 (2^15 subsets) on a 16-cycle: Kruskal drops the edge of largest noise, so
    # P(drop i) = int lambda_i exp(-lambda_i x) prod_{j != i} (1 - exp(-lambda_j x)) dx.
    n = 16
    g = torch.Generator().manual_seed(5)
    lam = torch.randn(n, generator=g, dtype=F64).mul(0.5).exp()
    ring = torch.arange(n)
    theta = torch.full((n, n), -torch.inf, dtype=F64)
    theta[ring, (ring + 1) % n] = lam.log()
    theta = torch.maximum(theta, theta.mT)
    q = SpanningTree(theta)
    cycle = torch.isfinite(theta).to(F64)
    drop = torch.zeros(n, n, n, dtype=F64)
    drop[ring, ring, (ring + 1) % n] = 1
    trees = cycle - torch.maximum(drop, drop.mT)
    logp = q.log_prob(trees)
    x = torch.linspace(0, 60 / float(lam.min()), 400_001, dtype=F64)[1:]
    log_cdf = torch.log1p(-torch.exp(-lam.unsqueeze(-1) * x))  # (n, X)
    log_f = lam.log().unsqueeze(-1) - lam.unsqueeze(-1) * x + log_cdf.sum(0) - log_cdf
    expected = torch.trapezoid(log_f.exp(), x)
    torch.testing.assert_close(logp.exp(), expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(logp.exp().sum(), torch.tensor(1.0, dtype=F64))


def test_samples_equal_networkx_maximum_spanning_tree():
    nx = pytest.importorskip("networkx")
    g = torch.Generator().manual_seed(6)
    n = 7
    scores = torch.randn(3, n, n, generator=g, dtype=F64)
    scores[1, 0, 3] = -torch.inf
    scores[2, 2, 5] = -torch.inf
    q = SpanningTree(scores)
    torch.manual_seed(6)
    trees, noise, trace = q.sample_with_trace((20,))
    theta = q.item_scores()
    gumbel = -noise - theta  # theta + Gumbel = -log_noise on present edges
    u, v = edge_index(n)
    for s in range(20):
        for b in range(3):
            graph = nx.Graph()
            graph.add_nodes_from(range(n))
            for e in range(num_edges(n)):
                if torch.isfinite(theta[b, e]):
                    graph.add_edge(
                        int(u[e]), int(v[e]), weight=float(theta[b, e] + gumbel[s, b, e])
                    )
            mst = nx.maximum_spanning_tree(graph)
            expected = torch.zeros(n, n, dtype=F64)
            for a, c in mst.edges():
                expected[a, c] = expected[c, a] = 1
            assert torch.equal(trees[s, b], expected)
    assert torch.equal(q.trace_from_noise(noise)[1].choices, trace.choices)


# -- argument checks and numerics ----------------------------------------------------------


def test_argument_errors_name_scores():
    with pytest.raises(ValueError, match=r"scores.*NaN"):
        SpanningTree(torch.tensor([[0.0, float("nan")], [0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"scores.*\+inf"):
        SpanningTree(torch.tensor([[0.0, torch.inf], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="scores must be square"):
        SpanningTree(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="n >= 2"):
        SpanningTree(torch.zeros(1, 1))
    with pytest.raises(ValueError, match="at least 2 dimension"):
        SpanningTree(torch.zeros(3))
    with pytest.raises(TypeError, match="scores"):
        SpanningTree(torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="scores"):
        SpanningTree([[0.0, 1.0], [1.0, 0.0]])  # type: ignore[arg-type]
    # only batch element (1, 0) is disconnected: vertex 3 has no present edge
    scores = torch.zeros(2, 2, 4, 4)
    scores[1, 0, :, 3] = -torch.inf
    scores[1, 0, 3, :] = -torch.inf
    with pytest.raises(ValueError, match=r"scores has no spanning tree at batch index \(1, 0\)"):
        SpanningTree(scores)
    scores[1, 0, 2, 3] = 0.0  # one edge reconnects it
    SpanningTree(scores)
    # the lower triangle and the diagonal are ignored, but NaN and +inf raise anywhere
    ignored = torch.zeros(3, 3)
    ignored[2, 0] = -torch.inf
    ignored[1, 1] = 5.0
    assert SpanningTree(ignored).sample().shape == (3, 3)
    for bad in (float("nan"), torch.inf):
        below = torch.zeros(3, 3)
        below[2, 0] = bad
        with pytest.raises(ValueError, match=r"scores contains (NaN|\+inf)"):
            SpanningTree(below)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, F64])
def test_extreme_scores_give_finite_results_and_gradients(dtype):
    n = 6
    g = torch.Generator().manual_seed(7)
    big = 1e4 * torch.randn(2, n, n, generator=g).sign()
    path = torch.full((n, n), -torch.inf)
    for a in range(n - 1):
        path[a, a + 1] = float(a)
    for scores in (big, path.expand(2, n, n)):
        s = scores.to(dtype).requires_grad_()
        q = SpanningTree(s)
        trees, noise, trace = q.sample_with_trace((5,))
        assert trees.dtype == dtype and bool((trees.sum((-1, -2)) == 2 * (n - 1)).all())
        lp = q.trace_log_prob(trace)
        assert torch.isfinite(lp).all()
        (grad,) = torch.autograd.grad(lp.sum(), s)
        assert torch.isfinite(grad).all()
        exact = q.log_prob(trees)
        assert exact.dtype == dtype and torch.isfinite(exact).all()
        (grad,) = torch.autograd.grad(exact.float().sum(), s)
        assert torch.isfinite(grad).all()
        assert torch.isfinite(q.noise_log_prob(noise)).all()
        assert torch.isfinite(q.conditional_noise(trace)[torch.isfinite(noise)]).all()
    # the only spanning tree of a path has probability 1
    q = SpanningTree(path.to(dtype))
    torch.testing.assert_close(q.log_prob(q.mode()).float(), torch.tensor(0.0), atol=1e-6, rtol=0)


def test_shapes_expand_and_repr():
    q = SpanningTree(torch.randn(3, 5, 5))
    assert q.batch_shape == (3,) and q.event_shape == (5, 5) and q.num_items == 10
    assert q.sample((2,)).shape == (2, 3, 5, 5)
    e = q.expand((4, 3))
    assert isinstance(e, SpanningTree) and e.sample().shape == (4, 3, 5, 5)
    assert e.log_prob(e.mode()).shape == (4, 3)
    assert "n=5" in repr(q)
    with pytest.raises(TypeError, match="support_probs"):
        SpanningTree(torch.zeros(9, 9)).support_probs()
    with pytest.raises(TypeError, match="log_prob"):
        SpanningTree(torch.zeros(17, 17)).log_prob(torch.zeros(17, 17))
    assert torch.isfinite(trace_log_prob(q.item_scores(), q.sample_with_trace()[2])).all()
