"""The shared combinatorial algorithms against brute force: bit-vector and subset tables,
Prüfer decoding and tree orientation, the linear assignment problem, Viterbi."""

import itertools
import math

import pytest
import torch

from latentgrad.structured import (
    all_spanning_trees,
    bit_vectors,
    linear_assignment,
    orient_trees,
    subset_layers,
    viterbi,
)
from latentgrad.structured.kruskal import edge_index, edges_to_adjacency


@pytest.mark.parametrize("d", [0, 1, 3, 5])
def test_bit_vectors_are_the_binary_digits_least_significant_first(d: int) -> None:
    bits = bit_vectors(d)
    assert bits.shape == (2**d, d) and bits.dtype == torch.bool
    expected = [[bool(m >> i & 1) for i in range(d)] for m in range(2**d)]
    assert bits.tolist() == expected
    assert bit_vectors(d, "cpu") is bits  # cached, no copy on the CPU


def test_bit_vectors_refuse_too_many_bits() -> None:
    with pytest.raises(ValueError, match=r"2\*\*21"):
        bit_vectors(21)
    with pytest.raises(ValueError, match="d must be >= 0"):
        bit_vectors(-1)


@pytest.mark.parametrize("m", [1, 2, 4, 6])
def test_subset_layers_link_each_subset_to_its_smaller_ones(m: int, device: torch.device) -> None:
    layers = subset_layers(m, device)
    assert len(layers) == m
    previous = torch.tensor([0])  # the empty set
    for k, layer in enumerate(layers, start=1):
        assert layer.subsets.tolist() == [s for s in range(2**m) if bin(s).count("1") == k]
        assert layer.items.shape == layer.smaller.shape == layer.position.shape
        assert layer.items.shape == (math.comb(m, k), k)
        for subset, items in zip(layer.subsets.tolist(), layer.items.tolist(), strict=True):
            assert items == [i for i in range(m) if subset >> i & 1]
        assert bool((layer.smaller == layer.subsets.unsqueeze(-1) ^ (1 << layer.items)).all())
        assert bool((previous[layer.position] == layer.smaller).all())
        previous = layer.subsets


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_all_spanning_trees_are_the_cayley_trees(n: int, device: torch.device) -> None:
    trees = all_spanning_trees(n, device)
    assert trees.shape == (n ** (n - 2), n * (n - 1) // 2)
    assert len({tuple(t) for t in trees.tolist()}) == trees.shape[0]  # all distinct
    assert bool((trees.sum(-1) == n - 1).all())
    reach = edges_to_adjacency(trees).float() + torch.eye(n)
    for _ in range(n):
        reach = (reach @ reach > 0).float()
    assert bool((reach > 0).all())  # n - 1 edges, connected: a tree


@pytest.mark.parametrize(("n", "root"), [(2, 1), (4, 0), (5, 3)])
def test_orient_trees_hangs_every_tree_from_the_root(
    n: int, root: int, device: torch.device
) -> None:
    trees = all_spanning_trees(n, device)
    parent = orient_trees(trees, root)
    assert bool((parent[:, root] == -1).all())
    u, v = edge_index(n, device)
    child = torch.arange(n).expand_as(parent)
    has_parent = parent >= 0
    assert int(has_parent.sum(-1).min()) == n - 1
    # every (parent, child) pair is an edge of the tree, so the n - 1 of them are all its edges
    lo = torch.minimum(parent, child)[has_parent].reshape(-1, n - 1)
    hi = torch.maximum(parent, child)[has_parent].reshape(-1, n - 1)
    ids = torch.full((n, n), -1)
    ids[u, v] = torch.arange(u.numel())
    assert bool(trees.gather(1, ids[lo, hi]).all())
    with pytest.raises(ValueError, match="root must be in"):
        orient_trees(trees, n)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_linear_assignment_is_optimal(n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    cost = torch.randint(-5, 6, (40, n, n), generator=gen).double()
    perm = linear_assignment(cost)
    assert sorted(perm[0].tolist()) == list(range(n))
    rows = torch.arange(n)
    best = torch.stack(
        [cost[:, rows, torch.tensor(p)].sum(-1) for p in itertools.permutations(range(n))]
    ).amin(0)
    got = cost.gather(2, perm.unsqueeze(-1)).squeeze(-1).sum(-1)
    torch.testing.assert_close(got, best)


@pytest.mark.parametrize(("length", "tags"), [(1, 3), (3, 2), (4, 3)])
def test_viterbi_is_optimal(length: int, tags: int) -> None:
    gen = torch.Generator().manual_seed(length * tags)
    unary = torch.randn(20, length, tags, generator=gen, dtype=torch.float64)
    transition = torch.randn(20, length - 1, tags, tags, generator=gen, dtype=torch.float64)

    def score(seq: torch.Tensor) -> torch.Tensor:
        total = unary.gather(2, seq.unsqueeze(-1)).squeeze(-1).sum(-1)
        for t in range(length - 1):
            pair = (
                transition[:, t].flatten(1).gather(1, (seq[:, t] * tags + seq[:, t + 1])[:, None])
            )
            total = total + pair.squeeze(1)
        return total

    every = itertools.product(range(tags), repeat=length)
    best = torch.stack([score(torch.tensor(s).expand(20, length)) for s in every]).amax(0)
    torch.testing.assert_close(score(viterbi(unary, transition)), best)
