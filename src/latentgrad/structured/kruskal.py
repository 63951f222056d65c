"""Kruskal's algorithm on exponential noise: random spanning trees of an undirected graph.

The items are the edges ``{u, v}``, ``u < v``, of the complete graph on ``n`` vertices, numbered in
the order of ``torch.triu_indices(n, n, 1)`` (row-major upper triangle): ``(0, 1), (0, 2), ...,
(0, n-1), (1, 2), ...``; there are ``D = n (n - 1) / 2`` of them. :func:`edge_index` gives their
endpoints, :func:`edges_to_adjacency` and :func:`adjacency_to_edges` convert between edge
indicators ``(..., D)`` and symmetric adjacency matrices ``(..., n, n)``.

Kruskal's algorithm takes, at each step, the edge of smallest noise among the present edges that
join two different components of the forest built so far. Only the order of the noise matters, so
on the log-noise ``-(theta + G)`` it returns the maximum spanning tree of ``theta + G``
(``G`` standard Gumbel): the spanning-tree family of Struminsky et al. (2021).
"""

from __future__ import annotations

import torch
from torch import Tensor

from latentgrad._validation import check_int
from latentgrad.structured.core import RecursiveAlgorithm, State, Trace


def num_edges(n: int) -> int:
    """``D = n (n - 1) / 2``, the number of edges of the complete graph on ``n`` vertices."""
    return n * (n - 1) // 2


def num_vertices(d: int) -> int:
    """The ``n`` with ``n (n - 1) / 2 = d`` edges.

    Raises:
        ValueError: if ``d`` is not such a number (or ``n`` would be below 2).
    """
    n = round((1 + (1 + 8 * d) ** 0.5) / 2)
    if n < 2 or num_edges(n) != d:
        raise ValueError(f"{d} edges is not n(n-1)/2 for any n >= 2")
    return n


def edge_index(n: int, device: torch.device | str | None = None) -> Tensor:
    """The endpoints ``(u, v)``, ``u < v``, of the ``D`` edges in item order, long ``(2, D)``.

    Example:
        >>> edge_index(4)
        tensor([[0, 0, 0, 1, 1, 2],
                [1, 2, 3, 2, 3, 3]])
    """
    return torch.triu_indices(n, n, 1, device=device)


def edge_id_matrix(n: int, device: torch.device | str | None = None) -> Tensor:
    """The item number of edge ``{u, v}`` at ``[u, v]`` and ``[v, u]``, ``-1`` on the diagonal.

    Shape:
        long ``(n, n)``.
    """
    u, v = edge_index(n, device)
    ids = torch.full((n, n), -1, dtype=torch.long, device=u.device)
    d = torch.arange(u.shape[0], device=u.device)
    ids[u, v] = d
    ids[v, u] = d
    return ids


def edges_to_adjacency(edges: Tensor) -> Tensor:
    """The symmetric adjacency matrix of an edge indicator (differentiable, same dtype).

    The diagonal is zero (``False``).

    Shape:
        ``edges``: ``(..., D)`` with ``D = n (n - 1) / 2``; returns ``(..., n, n)``.

    Example:
        >>> edges_to_adjacency(torch.tensor([1.0, 0.0, 1.0]))
        tensor([[0., 1., 0.],
                [1., 0., 1.],
                [0., 1., 0.]])
    """
    n = num_vertices(edges.shape[-1])
    ids = edge_id_matrix(n, edges.device)
    ids.fill_diagonal_(edges.shape[-1])  # the zero column appended below
    padded = torch.cat([edges, edges.new_zeros((*edges.shape[:-1], 1))], -1)
    return padded.index_select(-1, ids.reshape(-1)).reshape(*edges.shape[:-1], n, n)


def adjacency_to_edges(adjacency: Tensor) -> Tensor:
    """The upper triangle of an ``(..., n, n)`` matrix as an ``(..., D)`` edge vector.

    The diagonal and lower triangle are ignored.

    Example:
        >>> adjacency_to_edges(torch.arange(9.0).reshape(3, 3))
        tensor([1., 2., 5.])
    """
    n = adjacency.shape[-1]
    if adjacency.dim() < 2 or adjacency.shape[-2] != n:
        raise ValueError(f"adjacency must be (..., n, n), got shape {tuple(adjacency.shape)}")
    u, v = edge_index(n, adjacency.device)
    flat = adjacency.reshape(*adjacency.shape[:-2], n * n)
    return flat.index_select(-1, u * n + v)


_ID_BITS = 32
_ID_MASK = 2**_ID_BITS - 1


def edge_keys(weights: Tensor) -> Tensor:
    """Distinct int64 keys ordered like ``(weight, item number)`` (ties go to the lower number).

    For float32 (and half-precision) weights the key is the order-preserving integer image of
    the float's bits, shifted, plus the item number; for float64 it is the rank of a stable
    sort, shifted, plus the item number. Either way ``key & (2**32 - 1)`` is the item number
    and ``-0.0`` ties with ``0.0``. NaN is not supported.

    Shape:
        ``weights``: ``(N, D)`` with ``D < 2**32``; returns long ``(N, D)``.
    """
    out = torch.empty(weights.shape, dtype=torch.long, device=weights.device)
    _write_keys(weights, out)
    return out


def _write_keys(weights: Tensor, out: Tensor) -> None:
    """:func:`edge_keys` of ``weights`` (N, D) written into ``out`` (a long (N, D) view)."""
    rows, d = weights.shape
    item = torch.arange(d, device=weights.device)
    if weights.dtype == torch.float64:
        order = torch.argsort(weights, dim=-1, stable=True)
        out.scatter_(-1, order, item.expand(rows, d))
    else:
        bits = (weights.float() + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into 0.0
        bits ^= (bits >> 31) & 0x7FFFFFFF  # negative floats: reverse their order
        out.copy_(bits)
    out <<= _ID_BITS
    out |= item


def _at_least(a: Tensor, b: Tensor) -> Tensor:
    """``a >= b`` for broadcastable int8 tensors with values in ``[-1, 127)``.

    Computed as the sign bit of ``b - 1 - a`` in wrapping uint8 arithmetic, which on CPU is
    several times faster than the comparison kernel.
    """
    diff = torch.sub(b.view(torch.uint8) - 1, a.view(torch.uint8))
    return diff.bitwise_right_shift_(7).view(torch.bool)


class Kruskal(RecursiveAlgorithm):
    """Kruskal's algorithm as a batched state machine over the ``D`` edges of ``K_n``.

    ``S_t`` is the set of present edges whose endpoints lie in different components of the forest
    of the edges chosen so far (an edge that would close a cycle leaves the candidate set for
    good); the state is a component label per vertex and choosing an edge merges its two
    components. After ``n - 1`` steps on a connected graph the forest is a spanning tree (on a
    disconnected one the algorithm stops early with a spanning forest). The structure is the
    edge indicator, bool ``(D,)``.

    :meth:`run` is a faster equivalent of the generic driver (Prim's algorithm on the order of
    the weights, then the candidate sets from the bottleneck edge of every tree path).

    Args:
        n: number of vertices, ``n >= 2``.

    Example:
        >>> import torch
        >>> from latentgrad.structured.kruskal import Kruskal
        >>> w = torch.tensor([[0.5, 0.1, 0.3]])  # edges (0, 1), (0, 2), (1, 2)
        >>> tree, trace = Kruskal(3).run(w, torch.ones(1, 3, dtype=torch.bool))
        >>> tree
        tensor([[False,  True,  True]])
        >>> trace.choices
        tensor([[1, 2]])
        >>> trace.candidates[0].int()
        tensor([[1, 1, 1],
                [1, 0, 1]], dtype=torch.int32)

    References:
        [1] Kruskal, "On the shortest spanning subtree of a graph and the traveling salesman
        problem", Proceedings of the AMS, 1956.
        [2] Struminsky et al., "Leveraging Recursive Gumbel-Max Trick for Approximate Inference
        in Combinatorial Spaces", NeurIPS 2021.
    """

    reduced_costs = False

    def __init__(self, n: int) -> None:
        self.n = check_int(n, "n", minimum=2)
        self.num_items = num_edges(self.n)
        self.max_steps = self.n - 1

    def __repr__(self) -> str:
        return f"Kruskal(n={self.n})"

    # -- the state machine (the reference the fast run is tested against) -------------------

    def initial_state(self, mask: Tensor) -> State:
        rows = mask.shape[0]
        label = torch.arange(self.n, device=mask.device).expand(rows, self.n).clone()
        return {"label": label, "chosen": torch.zeros_like(mask)}

    def candidates(self, state: State) -> Tensor:
        u, v = edge_index(self.n, state["label"].device)
        label = state["label"]
        return label[:, u] != label[:, v]

    def advance(self, state: State, choice: Tensor, active: Tensor) -> State:
        label = state["label"]
        u, v = edge_index(self.n, label.device)
        a = label.gather(1, u[choice].unsqueeze(-1))
        b = label.gather(1, v[choice].unsqueeze(-1))
        low, high = torch.minimum(a, b), torch.maximum(a, b)
        merge = (label == high) & active.unsqueeze(-1)
        label = torch.where(merge, low.expand_as(label), label)
        chosen = state["chosen"].clone()
        rows = torch.arange(chosen.shape[0], device=chosen.device)
        chosen[rows, choice] |= active
        return {"label": label, "chosen": chosen}

    def structure(self, state: State) -> Tensor:
        return state["chosen"]

    # -- the fast path ----------------------------------------------------------------------

    def run(self, weights: Tensor, mask: Tensor) -> tuple[Tensor, Trace]:
        """The same tree and trace as the generic driver, in ``n - 1`` steps on ``(N, n)`` rows.

        Kruskal's argmin breaks ties towards the lower edge number, so it follows the strict
        order of the keys ``(weight, edge number)`` (:func:`edge_keys`). Under a strict order
        the minimum spanning forest is unique, so Prim's algorithm finds it, and Kruskal takes
        its edges in increasing key. While Prim grows the tree it also records, for every vertex
        pair, the largest key on the tree path between them (the bottleneck); an edge is a
        candidate at step ``t`` exactly while its bottleneck is not among the first ``t`` tree
        edges.

        The weights of present edges must not be ``+inf`` or NaN.
        """
        rows, d = weights.shape
        n, steps = self.n, self.max_steps
        device = weights.device
        u, w = edge_index(n, device)
        top = torch.iinfo(torch.long).max - 1  # absent edges, no edge
        bottom = torch.iinfo(torch.long).min
        # keys[r, ids[a, b]]: the key of edge {a, b}; top if absent and (column d) on the diagonal.
        keys = torch.empty((rows, d + 1), dtype=torch.long, device=device)
        _write_keys(weights, keys[:, :d])
        keys[:, :d].masked_fill_(~mask, top)
        keys[:, d] = top
        ids = edge_id_matrix(n, device)
        ids.fill_diagonal_(d)
        span = torch.arange(n, device=device)
        col_at = span * n  # flat offset of entry (a, v) is a * n + v
        in_tree = torch.zeros((rows, n), dtype=torch.bool, device=device)
        in_tree[:, 0] = True
        best = keys[:, ids[0]]  # each vertex's smallest key to the tree
        best_from = torch.zeros((rows, n), dtype=torch.long, device=device)
        link = torch.full((rows, n), top, dtype=torch.long, device=device)  # key to the parent
        # bottleneck[r, a * n + b]: the largest key on the tree path between a and b.
        bottleneck = torch.full((rows, n * n), top, dtype=torch.long, device=device)
        bottleneck[:, col_at + span] = bottom
        taken = torch.full_like(best, top + 1)
        for _ in range(n - 1):
            v = torch.where(in_tree, taken, best).argmin(-1, keepdim=True)  # (N, 1)
            key = best.gather(1, v)  # top: v starts a new tree (disconnected graph)
            parent = best_from.gather(1, v)
            in_tree.scatter_(1, v, True)
            link.scatter_(1, v, key)
            row = torch.maximum(bottleneck.gather(1, torch.add(span, parent, alpha=n)), key)
            row.scatter_(1, v, bottom)
            at_row = torch.add(span, v, alpha=n)
            bottleneck.scatter_(1, at_row, row)
            bottleneck.scatter_(1, col_at + v, row)
            new = keys.gather(1, ids.take(at_row))
            best_from = torch.where(new < best, v, best_from)
            best = torch.minimum(new, best)
        # Kruskal's order: the tree edges by increasing key (vertex 0 and other roots: top).
        step_key = torch.sort(link, dim=-1).values[:, :steps]  # (N, T)
        valid = step_key < top
        choices = torch.where(valid, step_key & _ID_MASK, torch.zeros_like(step_key))
        # Step of each edge's bottleneck (key & _ID_MASK is its edge number); -1 if absent.
        small = torch.int8 if steps < 127 else torch.int16
        step_of = torch.full((rows, d + 1), -1, dtype=small, device=device)
        t = torch.arange(steps, dtype=small, device=device)
        step_of.scatter_(1, torch.where(valid, choices, d), torch.where(valid, t, -1).to(small))
        through = bottleneck.index_select(1, u * n + w)
        through &= _ID_MASK
        through.masked_fill_(~mask, d)
        edge_step = step_of.gather(1, through)  # (N, D)
        if small == torch.int8:
            cands = _at_least(edge_step.unsqueeze(-2), t.unsqueeze(-1))
        else:
            cands = edge_step.unsqueeze(-2) >= t.unsqueeze(-1)
        slots = torch.where(valid, choices, d)  # d: a spare column
        chosen = torch.zeros((rows, d + 1), dtype=torch.bool, device=device)
        chosen = chosen.scatter(1, slots, True)[:, :d].contiguous()
        return chosen, Trace(choices, cands)


__all__ = [
    "Kruskal",
    "adjacency_to_edges",
    "edge_id_matrix",
    "edge_index",
    "edge_keys",
    "edges_to_adjacency",
    "num_edges",
    "num_vertices",
]
