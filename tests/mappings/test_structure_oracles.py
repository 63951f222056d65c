"""MAP oracles over structures: brute force, validity, ties, batching, conversions, errors."""

import math

import networkx as nx
import pytest
import torch

from latentgrad.mappings.oracles import (
    ArborescenceOracle,
    KSubsetOracle,
    PermutationOracle,
    SequenceOracle,
    SpanningTreeOracle,
    StructureOracle,
)


def small_instances() -> list[StructureOracle]:
    """Small oracles of every kind, for brute-force checks over ``enumerate()``."""
    return [
        KSubsetOracle(5, 2),
        KSubsetOracle(4, 4),
        KSubsetOracle(3, 0),
        PermutationOracle(1),
        PermutationOracle(3),
        PermutationOracle(5),
        SpanningTreeOracle(2),
        SpanningTreeOracle(4),
        SpanningTreeOracle(5),
        ArborescenceOracle(2),
        ArborescenceOracle(4, root=2),
        ArborescenceOracle(5, root=0),
        SequenceOracle(1, 3),
        SequenceOracle(3, 3),
        SequenceOracle(4, 2),
    ]


INSTANCES = small_instances()
IDS = [repr(o) for o in INSTANCES]


def brute_max(w: torch.Tensor, structures: torch.Tensor) -> torch.Tensor:
    return (w.double() @ structures.double().T).amax(-1)


def is_member(z: torch.Tensor, structures: torch.Tensor) -> torch.Tensor:
    """Whether each row of ``z`` (N, D) is one of ``structures`` (S, D)."""
    return (z.unsqueeze(1) == structures.to(z.dtype)).all(-1).any(-1)


# -- enumeration: every structure, each once, all valid -----------------------------------------


def _graph(adj: torch.Tensor, graph: nx.Graph) -> nx.Graph:
    """``graph`` with the nodes and edges of adjacency matrix ``adj`` (no numpy: the core's
    tests run without it)."""
    graph.add_nodes_from(range(adj.shape[-1]))
    graph.add_edges_from(adj.nonzero().tolist())
    return graph


def check_valid(oracle: StructureOracle, z: torch.Tensor) -> None:
    """Independent validity check of 0/1 indicators ``z`` (S, D)."""
    assert ((z == 0) | (z == 1)).all()
    value = oracle.to_value(z)
    if isinstance(oracle, KSubsetOracle):
        assert (z.sum(-1) == oracle.k).all()
    elif isinstance(oracle, PermutationOracle):
        assert (value.sum(-1) == 1).all() and (value.sum(-2) == 1).all()
    elif isinstance(oracle, SpanningTreeOracle):
        for adj in value:
            assert nx.is_tree(_graph(adj, nx.Graph()))
    elif isinstance(oracle, ArborescenceOracle):
        for adj in value:
            graph = _graph(adj, nx.DiGraph())
            assert nx.is_arborescence(graph)
            assert graph.in_degree(oracle.root) == 0
    elif isinstance(oracle, SequenceOracle):
        k, n_unary = oracle.num_tags, oracle.length * oracle.num_tags
        assert (value.sum(-1) == 1).all()
        tags = value.argmax(-1)
        trans = z[:, n_unary:].reshape(len(z), oracle.length - 1, k, k)
        assert (trans.sum((-1, -2)) == 1).all()
        flat = trans.flatten(-2).argmax(-1)
        assert (flat == tags[:, :-1] * k + tags[:, 1:]).all()
    else:  # pragma: no cover
        raise AssertionError(type(oracle))


@pytest.mark.parametrize("oracle", INSTANCES, ids=IDS)
def test_enumerate_lists_every_valid_structure_once(oracle, device):
    structures = oracle.enumerate(device=device)
    assert structures.shape == (oracle.num_structures, oracle.dim)
    assert structures.dtype == torch.float32
    assert torch.unique(structures, dim=0).shape[0] == oracle.num_structures
    check_valid(oracle, structures)


def test_structure_counts():
    assert KSubsetOracle(6, 3).num_structures == 20
    assert PermutationOracle(4).num_structures == 24
    assert SpanningTreeOracle(6).num_structures == 6**4
    assert ArborescenceOracle(6, root=3).enumerate().shape == (6**4, 36)
    assert SequenceOracle(3, 4).num_structures == 64
    with pytest.raises(ValueError, match="max_structures"):
        PermutationOracle(5).enumerate(max_structures=100)


@pytest.mark.parametrize("oracle", INSTANCES, ids=IDS)
def test_value_roundtrip(oracle, device):
    structures = oracle.enumerate(device=device)
    value = oracle.to_value(structures)
    back = oracle.from_value(value)
    assert torch.equal(back, structures)
    batched = structures[:6].reshape(2, 3, -1) if len(structures) >= 6 else structures[None]
    assert torch.equal(oracle.from_value(oracle.to_value(batched)), batched)


# -- the argmax ----------------------------------------------------------------------------------


@pytest.mark.parametrize("oracle", INSTANCES, ids=IDS)
def test_argmax_matches_brute_force_random(oracle, device):
    g = torch.Generator().manual_seed(0)
    structures = oracle.enumerate(device=device)
    w = torch.randn(64, oracle.dim, generator=g, dtype=torch.float64) * 3
    z = oracle(w)
    assert z.shape == w.shape and z.dtype == w.dtype
    assert is_member(z, structures).all()
    best = brute_max(w, structures)
    torch.testing.assert_close((w * z).sum(-1), best, rtol=0, atol=1e-10)
    # Away from ties the maximizer is unique: the brute-force argmax itself.
    scores = w @ structures.double().T
    top2 = scores.topk(min(2, len(structures)), -1).values
    clear = top2[:, 0] - top2[:, -1] > 1e-6 if len(structures) > 1 else torch.ones(64).bool()
    expected = structures.double()[scores.argmax(-1)]
    assert torch.equal(z[clear], expected[clear])


@pytest.mark.parametrize("oracle", INSTANCES, ids=IDS)
def test_argmax_with_ties_integer_scores(oracle, device):
    g = torch.Generator().manual_seed(1)
    structures = oracle.enumerate(device=device)
    for low, high in ((-2, 3), (0, 2)):
        w = torch.randint(low, high, (64, oracle.dim), generator=g).double()
        z = oracle(w)
        assert is_member(z, structures).all()
        assert torch.equal((w * z).sum(-1), brute_max(w, structures))
    # All scores equal: every structure is a maximizer; the oracle still returns one.
    for w in (torch.zeros(3, oracle.dim), torch.full((3, oracle.dim), -1.5)):
        z = oracle(w)
        assert is_member(z, structures).all()
        assert torch.equal(z[0], z[1])


@pytest.mark.parametrize("oracle", INSTANCES, ids=IDS)
def test_batched_equals_row_by_row_and_deterministic(oracle):
    g = torch.Generator().manual_seed(2)
    w = torch.randint(-2, 3, (12, oracle.dim), generator=g).float()
    w[::2] += torch.randn(6, oracle.dim, generator=g)
    z = oracle(w)
    rows = torch.cat([oracle(w[i : i + 1]) for i in range(len(w))])
    assert torch.equal(z, rows)
    assert torch.equal(z, oracle(w.clone()))
    # Leading batch dims and dtypes.
    assert torch.equal(oracle(w.reshape(3, 4, -1)), z.reshape(3, 4, -1))
    assert torch.equal(oracle(w.double()), z.double())
    assert oracle(w.to(torch.bfloat16)).dtype == torch.bfloat16
    assert oracle(torch.zeros(0, oracle.dim)).shape == (0, oracle.dim)


def test_output_is_detached():
    w = torch.randn(4, 6, requires_grad=True)
    z = KSubsetOracle(6, 2)(w)
    assert not z.requires_grad


def test_ksubset_ties_go_to_lower_index():
    z = KSubsetOracle(5, 2)(torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]]))
    assert z.tolist() == [[0, 1, 1, 0, 0], [1, 1, 0, 0, 0]]


def test_spanning_tree_negative_scores_still_span():
    w = -torch.rand(8, 21, generator=torch.Generator().manual_seed(3)) - 1
    z = SpanningTreeOracle(7)(w)
    assert (z.sum(-1) == 6).all()
    check_valid(SpanningTreeOracle(7), z)


def test_arborescence_ignores_self_loops_and_edges_into_root():
    oracle = ArborescenceOracle(4, root=1)
    w = torch.randn(16, 16, generator=torch.Generator().manual_seed(4))
    adj = w.reshape(16, 4, 4).clone()
    adj[:, :, 1] = 1e6  # edges into the root
    adj.diagonal(dim1=-2, dim2=-1).fill_(1e6)  # self-loops
    z = oracle(adj.reshape(16, 16))
    value = oracle.to_value(z)
    assert (value[:, :, 1] == 0).all() and (value.diagonal(dim1=-2, dim2=-1) == 0).all()
    check_valid(oracle, z)
    # Their scores do not change the answer.
    assert torch.equal(z, oracle(w))


def test_sequence_decode_and_from_tags():
    oracle = SequenceOracle(3, 3)
    g = torch.Generator().manual_seed(5)
    w = torch.randn(10, oracle.dim, generator=g)
    tags = oracle.decode(w)
    assert tags.shape == (10, 3) and tags.dtype == torch.long
    assert torch.equal(oracle.from_tags(tags).float(), oracle(w))


def test_permutation_solve_permutation():
    oracle = PermutationOracle(4)
    w = torch.randn(5, 16, generator=torch.Generator().manual_seed(6))
    sigma = oracle.solve_permutation(w)
    assert torch.equal(sigma.sort(-1).values, torch.arange(4).expand(5, 4))
    assert torch.equal(oracle.to_value(oracle(w)).argmax(-1), sigma)


def test_permutation_six_brute_force(device):
    oracle = PermutationOracle(6)
    structures = oracle.enumerate(device=device)
    g = torch.Generator().manual_seed(7)
    w = torch.cat(
        [
            torch.randn(32, 36, generator=g, dtype=torch.float64),
            torch.randint(-1, 2, (32, 36), generator=g).double(),
            torch.randint(0, 3, (32, 36), generator=g).double() * 1e5,
        ]
    )
    z = oracle(w)
    assert is_member(z, structures).all()
    torch.testing.assert_close((w * z).sum(-1), brute_max(w, structures), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("n", [7, 12, 30])
def test_permutation_matches_scipy(n):
    optimize = pytest.importorskip("scipy.optimize")
    g = torch.Generator().manual_seed(n)
    w = torch.cat(
        [
            torch.randn(8, n * n, generator=g, dtype=torch.float64),
            torch.randint(-3, 4, (8, n * n), generator=g).double(),
            torch.rand(4, n * n, generator=g, dtype=torch.float64) * 1e3,
        ]
    )
    z = PermutationOracle(n)(w)
    check_valid(PermutationOracle(n), z)
    ours = (w * z).sum(-1)
    for i in range(len(w)):
        matrix = w[i].reshape(n, n).cpu().numpy()
        r, c = optimize.linear_sum_assignment(matrix, maximize=True)
        best = float(matrix[r, c].sum())
        assert math.isclose(float(ours[i]), best, rel_tol=1e-12, abs_tol=1e-9)


def test_large_spanning_tree_and_arborescence_against_networkx():
    g = torch.Generator().manual_seed(8)
    n = 9
    tree = SpanningTreeOracle(n)
    w = torch.randn(4, tree.dim, generator=g, dtype=torch.float64)
    z = tree(w)
    arb = ArborescenceOracle(n, root=0)
    wa = torch.randn(4, arb.dim, generator=g, dtype=torch.float64)
    za = arb(wa)
    for i in range(4):
        graph = nx.Graph()
        for e, (u, v) in enumerate(torch.triu_indices(n, n, 1).T.tolist()):
            graph.add_edge(u, v, weight=float(w[i, e]))
        best = nx.maximum_spanning_tree(graph).size(weight="weight")
        assert math.isclose(float((w[i] * z[i]).sum()), best, rel_tol=1e-12, abs_tol=1e-12)
        digraph = nx.DiGraph()
        for u in range(n):
            for v in range(1, n):
                if u != v:
                    digraph.add_edge(u, v, weight=float(wa[i, u * n + v]))
        best_arb = nx.maximum_spanning_arborescence(digraph).size(weight="weight")
        assert math.isclose(float((wa[i] * za[i]).sum()), best_arb, rel_tol=1e-12, abs_tol=1e-12)


# -- argument checks -----------------------------------------------------------------------------


def test_errors():
    oracle = KSubsetOracle(4, 2)
    with pytest.raises(TypeError, match="w must"):
        oracle(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="w must"):
        oracle([[0.0] * 4])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="w must have last dimension D=4"):
        oracle(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="w must have at least 1"):
        oracle(torch.tensor(1.0))
    with pytest.raises(ValueError, match="k must be in"):
        KSubsetOracle(3, 4)
    with pytest.raises(ValueError, match="n must be >= 2"):
        SpanningTreeOracle(1)
    with pytest.raises(ValueError, match="root must be in"):
        ArborescenceOracle(3, root=3)
    with pytest.raises(TypeError, match="n must be an int"):
        PermutationOracle(2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_tags must be >= 1"):
        SequenceOracle(3, 0)
    with pytest.raises(ValueError, match="z must have shape"):
        PermutationOracle(3).to_value(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="value must have shape"):
        SpanningTreeOracle(3).from_value(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="tags must have shape"):
        SequenceOracle(3, 2).from_tags(torch.zeros(2, 4, dtype=torch.long))
