"""Labelled trees on ``n`` vertices: all of them by Prüfer decoding, and hung from a root.

Trees are edge indicators over the ``D = n (n - 1) / 2`` edges of the complete graph, numbered
as in :mod:`latentgrad.structured.kruskal`. The spanning-tree family uses the enumeration for its
support, the spanning-tree and arborescence MAP oracles for their brute-force ``enumerate()``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from latentgrad._validation import check_index, check_int
from latentgrad.structured.kruskal import edge_id_matrix, edges_to_adjacency, num_edges


def all_spanning_trees(n: int, device: torch.device | str | None = None) -> Tensor:
    """The ``n^(n-2)`` spanning trees of ``K_n`` as edge indicators, bool ``(n^(n-2), D)``.

    Decodes every Prüfer sequence at once (sequence ``s`` has the base-``n`` digits of ``s``,
    most significant first): at each of the ``n - 2`` steps the smallest leaf is joined to the
    next vertex of the sequence; the last two vertices left are joined at the end.

    Args:
        n: number of vertices, ``n >= 2``.
        device: where to build the trees.

    Example:
        >>> all_spanning_trees(3).int()  # edges (0, 1), (0, 2), (1, 2)
        tensor([[1, 1, 0],
                [1, 0, 1],
                [0, 1, 1]], dtype=torch.int32)

    References:
        [1] Prüfer, "Neuer Beweis eines Satzes über Permutationen", 1918.
    """
    n = check_int(n, "n", minimum=2)
    s = n ** (n - 2)
    index = torch.arange(s, device=device)
    powers = n ** torch.arange(n - 3, -1, -1, device=device)
    seq = (index.unsqueeze(-1) // powers) % n  # (S, n - 2)
    degree = torch.ones((s, n), dtype=torch.long, device=device)
    degree = degree.scatter_add(1, seq, torch.ones_like(seq))
    ids = edge_id_matrix(n, device)
    edges = torch.zeros((s, num_edges(n)), dtype=torch.bool, device=device)
    vertices = torch.arange(n, device=device)
    rows = torch.arange(s, device=device)
    for t in range(n - 2):
        leaf = torch.where(degree == 1, vertices, n).argmin(-1)
        other = seq[:, t]
        edges[rows, ids[leaf, other]] = True
        degree[rows, leaf] -= 1
        degree[rows, other] -= 1
    last = torch.topk((degree == 1).long() * (n - vertices), 2, dim=-1).indices  # the two leaves
    edges[rows, ids[last[:, 0], last[:, 1]]] = True
    return edges


def orient_trees(edges: Tensor, root: int) -> Tensor:
    """The parent of every vertex when spanning trees are hung from ``root`` (``-1`` there).

    Breadth-first, one layer per step: a vertex next to the visited (connected) part of a tree
    has exactly one visited neighbour, its parent.

    Args:
        edges: spanning trees of ``K_n`` as edge indicators, ``(S, D)`` (any dtype, 0/1).
        root: the root vertex, in ``[0, n)``.

    Returns:
        Parent vectors, long ``(S, n)``.

    Example:
        >>> orient_trees(torch.tensor([[1, 0, 1]]), root=2)  # the path 0 - 1 - 2
        tensor([[ 1,  2, -1]])
    """
    adj = edges_to_adjacency(edges.bool())
    count, n = adj.shape[0], adj.shape[-1]
    root = check_index(root, "root", n)
    visited = torch.zeros((count, n), dtype=torch.bool, device=adj.device)
    visited[:, root] = True
    parent = torch.full((count, n), -1, dtype=torch.long, device=adj.device)
    for _ in range(n - 1):
        link = adj & visited.unsqueeze(-1)  # [u, v]: u visited and adjacent to v
        new = link.any(1) & ~visited
        parent = torch.where(new, link.to(torch.uint8).argmax(1), parent)
        visited = visited | new
    return parent


__all__ = ["all_spanning_trees", "orient_trees"]
