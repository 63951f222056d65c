"""Chu-Liu-Edmonds on exponential noise and the Arborescence family: family-specific tests."""

import itertools
import math

import pytest
import torch

import latentgrad.structured.chu_liu_edmonds as cle
from latentgrad.distributions.arborescence import Arborescence
from latentgrad.structured.chu_liu_edmonds import ChuLiuEdmonds, min_cost_arborescence
from latentgrad.structured.core import enumerate_traces, run, sample_noise, trace_log_prob
from latentgrad.testing.stats import bonferroni_z


def small_instances() -> list[Arborescence]:
    """Small arborescence distributions (batch of 2) for the shared property tests."""
    g = torch.Generator().manual_seed(0)
    complete3 = Arborescence(torch.randn(2, 3, 3, generator=g, dtype=torch.float64))
    masked = torch.randn(2, 4, 4, generator=g, dtype=torch.float64)
    masked[0, 2, 1] = -torch.inf  # root 2: vertex 1 only from 0 or 3
    masked[1, 0, 3] = -torch.inf
    masked[1, 1, 3] = -torch.inf  # vertex 3 only from 2
    rooted = Arborescence(masked, root=2)
    complete4 = Arborescence(torch.randn(2, 4, 4, generator=g, dtype=torch.float64), root=0)
    return [complete3, rooted, complete4]


# -- helpers -----------------------------------------------------------------------------------


def _random_mask(rows: int, n: int, root: int, g: torch.Generator, drop: float = 0.4):
    """Present edges (rows, n, n): a random arborescence plus each other edge w.p. 1 - drop."""
    present = torch.rand(rows, n, n, generator=g) >= drop
    order = torch.argsort(torch.rand(rows, n, generator=g), -1)
    # Put the root first; each later vertex in the order hangs below an earlier one.
    first = (order == root).long().argmax(-1)
    order[torch.arange(rows), first] = order[:, 0]
    order[:, 0] = root
    for i in range(1, n):
        parent_pos = (torch.rand(rows, generator=g) * i).long()
        parent = order.gather(1, parent_pos.unsqueeze(-1)).squeeze(-1)
        present[torch.arange(rows), parent, order[:, i]] = True
    return present


def _arborescences(n: int, root: int):
    """Every spanning arborescence rooted at ``root``, as parent lists (brute force)."""
    others = [v for v in range(n) if v != root]
    out = []
    for tails in itertools.product(range(n), repeat=n - 1):
        parent = [-1] * n
        for v, u in zip(others, tails, strict=True):
            parent[v] = u
        if any(parent[v] == v for v in others):
            continue
        ok = True
        for v in others:
            w, hops = v, 0
            while w != root and hops <= n:
                w, hops = parent[w], hops + 1
            ok = ok and w == root
        if ok:
            out.append(parent)
    return out


def _adjacency(parent: list[int]) -> torch.Tensor:
    n = len(parent)
    a = torch.zeros(n, n)
    for v, u in enumerate(parent):
        if u >= 0:
            a[u, v] = 1
    return a


def _assert_arborescences(adj: torch.Tensor, present: torch.Tensor, root: int) -> None:
    """Every (…, n, n) 0/1 matrix is a spanning arborescence of ``present`` rooted at ``root``."""
    n = adj.shape[-1]
    a = adj.reshape(-1, n, n).double()
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    indeg = a.sum(-2)
    assert (indeg[:, root] == 0).all()
    assert (torch.cat([indeg[:, :root], indeg[:, root + 1 :]], -1) == 1).all()
    assert not (a.bool() & ~present.expand(adj.shape).reshape(-1, n, n)).any()
    reach = torch.zeros(a.shape[0], n, dtype=torch.float64)
    reach[:, root] = 1
    for _ in range(n):
        reach = ((reach.unsqueeze(-2) @ a).squeeze(-2) + reach).clamp_max(1)
    assert (reach == 1).all(), "some vertex is not below the root"


# -- the algorithm -----------------------------------------------------------------------------


def test_max_steps_and_parent_vector_of_a_small_example():
    alg = ChuLiuEdmonds(5, root=3)
    assert (alg.num_items, alg.max_steps) == (25, 7)
    # Expanding the contractions outside-in; the naive rule "the last chosen edge whose head is
    # v" would give vertex 2 the parent 1 here (the edge into the contraction {1, 2}, which the
    # outer contraction voids) and leave the cycle 2 -> 3 -> 2.
    costs = torch.full((4, 4), torch.inf, dtype=torch.float64)
    costs[0, 1:] = torch.tensor([12.0, 19.0, 5.0])
    costs[1, 2:] = torch.tensor([3.0, 11.0])
    costs[2, 1], costs[2, 3] = 6.0, 3.0
    costs[3, 1], costs[3, 2] = 37.0, 2.0
    w = costs.reshape(1, 16)
    parent, trace = run(ChuLiuEdmonds(4, 0), w, torch.isfinite(w))
    # steps: 1 <- 2, 2 <- 3, 3 <- 2 (contract {2, 3}), {2, 3} <- 1 (contract {1, 2, 3}), <- 0 -> 3
    assert trace.choices.tolist() == [[2 * 4 + 1, 3 * 4 + 2, 2 * 4 + 3, 1 * 4 + 2, 0 * 4 + 3]]
    assert parent.tolist() == [[-1, 2, 3, 0]]
    best = min(
        _arborescences(4, 0),
        key=lambda p: sum(float(costs[u, v]) for v, u in enumerate(p) if u >= 0),
    )
    assert parent[0].tolist() == best


def test_some_trace_takes_every_step():
    for n in (3, 4):
        enum = enumerate_traces(ChuLiuEdmonds(n, 0), torch.ones(1, n * n, dtype=torch.bool))
        assert int(enum.trace.valid.sum(-1).max()) == 2 * n - 3
        assert int(enum.trace.valid.sum(-1).min()) == n - 1


@pytest.mark.parametrize("n", [2, 3, 4, 6, 9])
def test_fast_run_equals_the_generic_driver(n):
    g = torch.Generator().manual_seed(n)
    for root in sorted({0, n // 2, n - 1}):
        alg = ChuLiuEdmonds(n, root)
        rows = 200
        present = _random_mask(rows, n, root, g, drop=0.3 if n > 3 else 0.0)
        log_e = torch.log(torch.rand(rows, n, n, generator=g, dtype=torch.float64))
        continuous = torch.where(present, -log_e, torch.inf).reshape(rows, -1)
        # Integer costs: many ties, as in mode() with tied scores.
        ties = torch.randint(0, 3, (rows, n, n), generator=g).double()
        tied = torch.where(present, ties, torch.inf).reshape(rows, -1)
        # A full mask (self-loops and into-root edges marked present) must not matter.
        full = torch.ones(rows, n * n, dtype=torch.bool)
        for w, m in ((continuous, present.reshape(rows, -1)), (tied, torch.isfinite(tied))):
            for mask in (m, full if bool(torch.isfinite(w).all()) else m):
                expected, expected_trace = run(alg, w, mask)
                got, got_trace = alg.run(w, mask)
                assert torch.equal(got, expected)
                assert torch.equal(got_trace.choices, expected_trace.choices)
                assert torch.equal(got_trace.candidates, expected_trace.candidates)


@pytest.mark.parametrize("n", [2, 3, 4, 6, 9, 17])
def test_min_cost_arborescence_equals_the_step_by_step_algorithm(n):
    # All cycles of a round at once, with the same reduced costs and tie-breaking: the same
    # parent vector as ChuLiuEdmonds.run, on continuous costs, integer ties and absent edges.
    g = torch.Generator().manual_seed(20 + n)
    for root in sorted({0, n // 2, n - 1}):
        alg = ChuLiuEdmonds(n, root)
        rows = 200
        present = _random_mask(rows, n, root, g, drop=0.3 if n > 3 else 0.0)
        log_e = torch.log(torch.rand(rows, n, n, generator=g, dtype=torch.float64))
        for values in (
            -log_e,
            torch.randint(0, 3, (rows, n, n), generator=g).double(),
            torch.randint(-2, 3, (rows, n, n), generator=g).double() / 2,
            torch.zeros(rows, n, n, dtype=torch.float64),
        ):
            costs = torch.where(present, values, torch.inf).reshape(rows, -1)
            expected, _ = alg.run(costs, present.reshape(rows, -1))
            assert torch.equal(min_cost_arborescence(costs, root), expected)


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_min_cost_arborescence_is_a_minimum_by_enumeration(n):
    g = torch.Generator().manual_seed(30 + n)
    for root in sorted({0, n - 1}):
        trees = torch.stack([_adjacency(p) for p in _arborescences(n, root)]).double()
        for costs in (
            torch.randn(100, n, n, generator=g, dtype=torch.float64),
            torch.randint(0, 2, (100, n, n), generator=g).double(),
        ):
            parent = min_cost_arborescence(costs.reshape(100, -1), root)
            adj = torch.zeros(100, n, n, dtype=torch.float64)
            for v in range(n):
                if v != root:
                    adj[torch.arange(100), parent[:, v], v] = 1.0
            _assert_arborescences(adj, torch.ones(n, n, dtype=torch.bool), root)
            # Self-loops and edges into the root are in no arborescence: their costs never count.
            got = (adj * costs).sum((1, 2))
            best = torch.einsum("snm,rnm->rs", trees, costs).amin(1)
            torch.testing.assert_close(got, best, rtol=0, atol=1e-12)


def test_min_cost_arborescence_extreme_and_low_precision_costs():
    g = torch.Generator().manual_seed(5)
    n = 7
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        for scale in (1.0, 1e4):
            costs = (torch.randn(20, n * n, generator=g) * scale).to(dtype)
            parent = min_cost_arborescence(costs, 3)
            expected, _ = ChuLiuEdmonds(n, 3).run(costs, torch.ones(20, n * n, dtype=torch.bool))
            assert torch.equal(parent, expected)
    # No rows, and two vertices (the only arborescence is the root's edge).
    assert min_cost_arborescence(torch.zeros(0, 9), 0).shape == (0, 3)
    assert min_cost_arborescence(torch.zeros(2, 4), 1).tolist() == [[1, -1], [1, -1]]


@pytest.mark.parametrize("n", [2, 3, 5, 10, 30])
def test_compiled_kernel_equals_the_plain_function(n):
    # min_cost_arborescence runs _arborescence_rounds through TorchScript where it compiles:
    # the same parent vectors, ties and absent edges included, in every dtype.
    kernel = cle._arborescence_kernel()
    if not isinstance(kernel, torch.jit.ScriptFunction):
        pytest.skip("TorchScript does not compile here; the plain function runs")
    g = torch.Generator().manual_seed(60 + n)
    rows = 64
    for root in sorted({0, n - 1}):
        present = _random_mask(rows, n, root, g, drop=0.3 if n > 3 else 0.0)
        for values in (
            torch.randn(rows, n, n, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (rows, n, n), generator=g).double(),
            torch.zeros(rows, n, n, dtype=torch.float64),
            torch.randn(rows, n, n, generator=g).mul(1e4).to(torch.bfloat16),
            torch.randn(rows, n, n, generator=g).to(torch.float16),
        ):
            costs = torch.where(present, values, torch.inf).reshape(rows, -1)
            expected = cle._arborescence_rounds(costs, root, n, cle._jump_rounds(n))
            assert torch.equal(kernel(costs, root, n, cle._jump_rounds(n)), expected)
            assert torch.equal(min_cost_arborescence(costs, root), expected)


def test_min_cost_arborescence_without_torchscript(monkeypatch):
    # Where torch.jit.script fails, the plain function runs and gives the same result.
    def broken(fn):
        raise RuntimeError("no TorchScript")

    g = torch.Generator().manual_seed(7)
    costs = torch.randint(0, 3, (50, 36), generator=g).double()
    expected = min_cost_arborescence(costs, 2)
    monkeypatch.setattr(cle, "_KERNEL", [])
    monkeypatch.setattr(torch.jit, "script", broken)
    assert cle._arborescence_kernel() is cle._arborescence_rounds
    assert torch.equal(min_cost_arborescence(costs, 2), expected)
    expected_slow, _ = ChuLiuEdmonds(6, 2).run(costs, torch.ones(50, 36, dtype=torch.bool))
    assert torch.equal(expected, expected_slow)


def test_min_cost_arborescence_argument_errors():
    with pytest.raises(TypeError, match="costs"):
        min_cost_arborescence(torch.zeros(2, 9, dtype=torch.long))
    with pytest.raises(TypeError, match="costs"):
        min_cost_arborescence([[0.0] * 9])  # type: ignore[arg-type]
    for shape in ((2, 8), (9,), (2, 3, 3), (2, 1)):
        with pytest.raises(ValueError, match="costs"):
            min_cost_arborescence(torch.zeros(shape))
    with pytest.raises(ValueError, match="root"):
        min_cost_arborescence(torch.zeros(2, 9), root=3)


def test_fast_run_equals_the_generic_driver_when_some_row_stalls():
    # The algorithm stops at a supernode without candidates (invalid input); both agree.
    g = torch.Generator().manual_seed(3)
    n = 5
    w = torch.rand(6, n, n, generator=g, dtype=torch.float64)
    w[0, :, 2] = torch.inf  # vertex 2 has no in-edge
    w[1, :, 3] = torch.inf
    w[1, 4, 3] = 1.0
    w[1, :, 4] = torch.inf
    w[1, 3, 4] = 1.0  # the cycle 3 <-> 4 has no edge from outside
    flat = w.reshape(6, -1)
    alg = ChuLiuEdmonds(n, 0)
    expected, expected_trace = run(alg, flat, torch.isfinite(flat))
    got, got_trace = alg.run(flat, torch.isfinite(flat))
    assert torch.equal(got, expected)
    assert torch.equal(got_trace.choices, expected_trace.choices)
    assert torch.equal(got_trace.candidates, expected_trace.candidates)


def test_algorithm_arguments():
    with pytest.raises(ValueError, match="n must be >= 2"):
        ChuLiuEdmonds(1)
    with pytest.raises(TypeError, match="root"):
        ChuLiuEdmonds(3, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="root"):
        ChuLiuEdmonds(3, 3)


# -- against brute force and networkx ---------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_mode_is_the_maximum_score_arborescence(n):
    g = torch.Generator().manual_seed(10 + n)
    rows = 40
    for root in sorted({0, n - 1}):
        scores = torch.randn(rows, n, n, generator=g, dtype=torch.float64)
        present = _random_mask(rows, n, root, g, drop=0.5)
        present[: rows // 2] = True  # half complete, half masked
        scores = torch.where(present, scores, -torch.inf)
        q = Arborescence(scores, root=root)
        mode = q.mode()
        assert mode.dtype == torch.float64
        candidates = torch.stack([_adjacency(p) for p in _arborescences(n, root)]).double()
        usable = present & ~torch.eye(n, dtype=torch.bool)
        usable[..., root] = False
        c = candidates.unsqueeze(1)  # (A, rows, n, n)
        totals = (c * torch.where(usable, scores, 0.0)).sum((-2, -1))
        totals = totals.masked_fill((c.bool() & ~usable).any(-1).any(-1), -torch.inf)
        torch.testing.assert_close(mode, candidates[totals.argmax(0)], rtol=0, atol=0)
        _assert_arborescences(mode, usable, root)


@pytest.mark.parametrize("n", [3, 5, 8])
def test_samples_are_networkx_minimum_arborescences_of_the_same_noise(n):
    nx = pytest.importorskip("networkx")
    g = torch.Generator().manual_seed(20 + n)
    draws = 100
    root = n // 2
    scores = 2 * torch.randn(draws, n, n, generator=g, dtype=torch.float64)
    present = _random_mask(draws, n, root, g, drop=0.3)
    present[: draws // 3] = True
    scores = torch.where(present, scores, -torch.inf)
    q = Arborescence(scores, root=root)
    torch.manual_seed(n)
    value, noise, _ = q.sample_with_trace((2,))
    e = noise.exp().tolist()
    for s, b in itertools.product(range(2), range(draws)):
        graph = nx.DiGraph()
        graph.add_nodes_from(range(n))
        graph.add_weighted_edges_from(
            (u, v, e[s][b][u * n + v])
            for u in range(n)
            for v in range(n)
            if math.isfinite(e[s][b][u * n + v])
        )
        tree = nx.minimum_spanning_arborescence(graph)
        expected = torch.zeros(n, n, dtype=torch.float64)
        for u, v in tree.edges():
            expected[u, v] = 1
        assert torch.equal(value[s, b], expected), (s, b)


def test_complete_digraph_on_four_vertices_has_16_arborescences():
    g = torch.Generator().manual_seed(4)
    scores = torch.randn(2, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    q = Arborescence(scores, root=1)
    enum = enumerate_traces(q.algorithm, torch.isfinite(q.item_scores()[:1]).detach())
    structures = {tuple(p) for p in enum.structures.tolist()}
    assert len(structures) == 16 == q.support_size()
    assert structures == {tuple(p) for p in _arborescences(4, 1)}
    total = trace_log_prob(q.item_scores()[0], enum.trace).exp().sum()
    torch.testing.assert_close(total, torch.tensor(1.0, dtype=torch.float64))
    values, probs = q.support_probs()
    assert values.shape == (16, 2, 4, 4)
    torch.testing.assert_close(probs.sum(0), torch.ones(2, dtype=torch.float64))
    _assert_arborescences(values, ~torch.eye(4, dtype=torch.bool), 1)
    torch.testing.assert_close(q.log_prob(values).exp(), probs)
    (grad,) = torch.autograd.grad(q.entropy().sum(), scores)
    assert torch.isfinite(grad).all()


def test_law_is_not_perturb_and_map_on_three_vertices():
    # CLE on E minimises sum(E); perturb-and-MAP maximises sum(theta + Gumbel) = -sum(log E).
    scores = torch.tensor([[0.0, 0.0, -2.0], [0.0, 0.0, 1.0], [0.0, 5.0, 0.0]], dtype=torch.float64)
    q = Arborescence(scores)
    values, probs = q.support_probs()
    assert values.shape[0] == 3
    draws = 20_000
    g = torch.Generator().manual_seed(0)
    noise = torch.empty(draws, 3, 3, dtype=torch.float64, device="cpu").exponential_(generator=g)
    gumbel = -torch.log(noise.to(scores.device))  # drawn on the CPU: the same on every device
    totals = ((scores + gumbel).unsqueeze(1) * values).sum((-2, -1))
    freq = torch.bincount(totals.argmax(-1), minlength=3).double() / draws
    # z-test per structure at family-wise level 1e-5 against the exact CLE probabilities.
    z = bonferroni_z(1e-5, 3)
    tol = z * torch.sqrt(probs * (1 - probs) / draws)
    assert ((freq - probs).abs() > tol).any()
    # A concrete gap: perturb-and-MAP mostly takes 0 -> 2 -> 1 (score 3), CLE rarely does.
    chain = values[:, 0, 2].bool() & values[:, 2, 1].bool()
    assert float(probs[chain]) < 0.2 < 0.6 < float(freq[chain])


# -- argument checks ---------------------------------------------------------------------------


def test_argument_errors():
    ok = torch.zeros(2, 3, 3)
    with pytest.raises(ValueError, match="scores contains NaN"):
        Arborescence(torch.full((3, 3), torch.nan))
    with pytest.raises(ValueError, match=r"scores contains \+inf"):
        Arborescence(torch.tensor([[0.0, torch.inf], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="root must be in"):
        Arborescence(ok, root=3)
    with pytest.raises(ValueError, match="root must be in"):
        Arborescence(ok, root=-1)
    with pytest.raises(TypeError, match="root must be an int"):
        Arborescence(ok, root=0.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="root must be an int"):
        Arborescence(ok, root=True)
    with pytest.raises(ValueError, match="square"):
        Arborescence(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="n >= 2"):
        Arborescence(torch.zeros(2, 1, 1))
    with pytest.raises(ValueError, match="at least 2 dimension"):
        Arborescence(torch.zeros(3))
    with pytest.raises(TypeError, match="scores"):
        Arborescence([[0.0, 0.0], [0.0, 0.0]])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="scores"):
        Arborescence(torch.zeros(3, 3, dtype=torch.long))


def test_unreachable_vertex_in_one_batch_element():
    scores = torch.zeros(2, 3, 4, 4)
    scores[1, 2, :, 3] = -torch.inf  # vertex 3 has no in-edge
    with pytest.raises(ValueError, match=r"unreachable from root=0.*\(1, 2\)"):
        Arborescence(scores)
    cycle = torch.zeros(4, 4)
    cycle[0, 2:] = -torch.inf
    cycle[1, 2:] = -torch.inf  # 2 and 3 reach each other only
    with pytest.raises(ValueError, match="unreachable"):
        Arborescence(cycle)
    # Edges into the root and self-loops do not count, whatever their scores.
    into_root = torch.full((3, 3), -torch.inf)
    into_root[1, 0] = into_root[2, 2] = 0.0
    with pytest.raises(ValueError, match="unreachable"):
        Arborescence(into_root)
    into_root[0, 1] = into_root[1, 2] = 0.0
    assert Arborescence(into_root).mode().tolist() == [[0, 1, 0], [0, 0, 1], [0, 0, 0]]


# -- extreme but valid inputs ------------------------------------------------------------------


def test_only_a_path_present():
    n = 5
    scores = torch.full((n, n), -torch.inf, dtype=torch.float64)
    order = [2, 0, 4, 1, 3]
    for u, v in itertools.pairwise(order):
        scores[u, v] = float(u - v)
    scores.requires_grad_(True)
    q = Arborescence(scores, root=2)
    value, _, trace = q.sample_with_trace((7,))
    path = _adjacency([-1] * n).double()
    for u, v in itertools.pairwise(order):
        path[u, v] = 1
    assert torch.equal(value, path.expand(7, n, n))
    assert torch.equal(q.mode(), path)
    logp = q.trace_log_prob(trace)
    assert torch.equal(logp, torch.zeros(7, dtype=torch.float64))
    (grad,) = torch.autograd.grad(logp.sum(), scores)
    assert torch.equal(grad, torch.zeros_like(grad))
    assert q.support_probs()[1].tolist() == [1.0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_extreme_scores_and_dtypes_give_valid_samples_and_finite_gradients(dtype, scale):
    g = torch.Generator().manual_seed(7)
    n, root = 6, 1
    base = torch.randn(3, n, n, generator=g).sign() * scale
    present = _random_mask(3, n, root, g, drop=0.3)
    scores = torch.where(present, base, -torch.inf).to(dtype).requires_grad_(True)
    q = Arborescence(scores, root=root)
    torch.manual_seed(0)
    value, noise, trace = q.sample_with_trace((16,))
    assert value.dtype == dtype and value.shape == (16, 3, n, n)
    off = present & ~torch.eye(n, dtype=torch.bool)
    off[..., root] = False
    _assert_arborescences(value, off, root)
    mode = q.mode()
    assert mode.dtype == dtype
    _assert_arborescences(mode, off, root)
    logp = q.trace_log_prob(trace)
    assert torch.isfinite(logp).all() and (logp <= 0).all()
    (grad,) = torch.autograd.grad(logp.sum(), scores)
    assert torch.isfinite(grad).all()
    assert torch.isfinite(q.noise_log_prob(noise)).all()
    resampled = q.conditional_noise(trace)
    assert resampled.dtype == noise.dtype
    assert torch.equal(torch.isfinite(resampled), torch.isfinite(noise))
    if dtype == torch.float64 and scale == 1.0:
        again, again_trace = q.trace_from_noise(resampled.detach())
        assert torch.equal(again, value)
        assert torch.equal(again_trace.choices, trace.choices)


def test_overflowing_costs_stay_finite():
    # Scores spread far beyond the float64 exponent range: the costs are clamped, not inf.
    scores = torch.tensor([[0.0, 3000.0, -3000.0], [0.0, 0.0, -3000.0], [0.0, 3000.0, 0.0]])
    q = Arborescence(scores.double())
    noise = sample_noise(q.item_scores(), (50,))
    costs = q._costs(noise)
    finite = torch.isfinite(q.item_scores())
    assert torch.isfinite(costs[:, finite]).all() and torch.isinf(costs[:, ~finite]).all()
    value = q.from_noise(noise)
    _assert_arborescences(value, finite.reshape(3, 3), 0)


def test_shapes_expand_and_repr():
    q = small_instances()[1]
    assert q.batch_shape == (2,) and q.event_shape == (4, 4)
    assert q.noise_event_shape == (16,)
    e = q.expand((3, 2))
    assert e.sample((5,)).shape == (5, 3, 2, 4, 4)
    assert e.root == 2
    assert "root=2" in repr(q)
    assert Arborescence(torch.zeros(5, 5)).support_size() == 125


def test_log_prob_refuses_too_many_traces():
    q = Arborescence(torch.zeros(7, 7))
    with pytest.raises(TypeError, match="trace_log_prob"):
        q.log_prob(q.mode())
    with pytest.raises(TypeError, match="trace_log_prob"):
        q.entropy()
