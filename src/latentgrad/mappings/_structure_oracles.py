"""MAP oracles over combinatorial structures, for SparseMAP's active-set solver.

A structure is a 0/1 vector ``z`` in ``R^D`` (the indicator of its parts); an oracle maps scores
``w`` of shape ``(N, D)`` to the indicator of a maximizer of ``<w, z>`` over the structures, row
by row, batched in torch (Python loops run only over the steps of the algorithm, never over rows
or items). Ties are broken deterministically: the same scores always give the same structure.

=========================== ===================== ===========================================
oracle                      ``D``                 algorithm
=========================== ===================== ===========================================
:class:`KSubsetOracle`      ``n``                 top-``k`` (stable sort)
:class:`PermutationOracle`  ``n * n``             shortest augmenting paths (Hungarian)
:class:`SpanningTreeOracle` ``n (n - 1) / 2``     Kruskal on ``-w``
:class:`ArborescenceOracle` ``n * n``             Chu-Liu-Edmonds on ``-w``
:class:`SequenceOracle`     ``L K + (L - 1) K^2`` Viterbi
=========================== ===================== ===========================================

Every oracle has the attribute ``dim`` (``D``), the property ``num_structures``,
``enumerate()`` (all structures as an ``(S, D)`` 0/1 tensor, for small sizes and brute-force
checks) and ``to_value`` / ``from_value``, which convert between the flat indicator and the
structure's natural value (the value shape of the matching distribution family, where there is
one).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from latentgrad._numerics import upcast
from latentgrad._validation import check_index, check_int, check_tensor
from latentgrad.structured.chu_liu_edmonds import ChuLiuEdmonds
from latentgrad.structured.kruskal import (
    Kruskal,
    adjacency_to_edges,
    edge_id_matrix,
    edges_to_adjacency,
    num_edges,
)

#: Default bound on the number of structures :meth:`StructureOracle.enumerate` builds.
MAX_STRUCTURES = 2**20


class StructureOracle:
    """Base class of the structure oracles: argument checks, batching and enumeration.

    Subclasses set :attr:`dim` and implement :meth:`_solve` (scores ``(N, D)``, any floating
    dtype, to a 0/1 or bool ``(N, D)`` tensor), :meth:`_enumerate`, :attr:`num_structures`,
    :meth:`to_value` and :meth:`from_value`.

    Attributes:
        dim: ``D``, the number of parts (the length of an indicator).
    """

    dim: int

    @property
    def num_structures(self) -> int:
        """The number of structures ``S``."""
        raise NotImplementedError

    def __call__(self, w: Tensor) -> Tensor:
        """The indicator of a structure maximizing ``<w, z>``, in each row of ``w``.

        Args:
            w: finite scores, floating point (NaN and infinities are not supported).

        Returns:
            A 0/1 tensor in the dtype and on the device of ``w``, not attached to the graph.

        Shape:
            ``w``: ``batch + (D,)`` (usually ``(N, D)``); returns ``batch + (D,)``.

        Raises:
            TypeError: if ``w`` is not a floating-point tensor.
            ValueError: if the last dimension of ``w`` is not :attr:`dim`.
        """
        w = check_tensor(w, "w", min_dim=1)
        if w.shape[-1] != self.dim:
            raise ValueError(
                f"w must have last dimension D={self.dim} for {self!r}, got shape {tuple(w.shape)}"
            )
        flat = w.detach().reshape(-1, self.dim)
        if flat.shape[0] == 0:
            return torch.zeros(w.shape, dtype=w.dtype, device=w.device)
        z = self._solve(flat)
        return z.to(w.dtype).reshape(w.shape)

    def _solve(self, w: Tensor) -> Tensor:
        raise NotImplementedError

    def enumerate(self, *, max_structures: int = MAX_STRUCTURES) -> Tensor:
        """Every structure, as rows of a float32 0/1 CPU tensor (for small sizes and tests).

        Args:
            max_structures: refuse to build more structures than this.

        Returns:
            The indicators, shape ``(S, D)`` with ``S =`` :attr:`num_structures`, each once.

        Raises:
            ValueError: if there are more than ``max_structures`` structures.
        """
        limit = check_int(max_structures, "max_structures", minimum=1)
        if self.num_structures > limit:
            raise ValueError(
                f"{self!r} has {self.num_structures} structures, more than max_structures={limit}"
            )
        return self._enumerate().float()

    def _enumerate(self) -> Tensor:
        raise NotImplementedError

    def to_value(self, z: Tensor) -> Tensor:
        """The natural value of indicators ``z`` (``batch + (D,)``); see the subclass."""
        raise NotImplementedError

    def from_value(self, value: Tensor) -> Tensor:
        """The indicators ``batch + (D,)`` of natural values (inverse of :meth:`to_value`)."""
        raise NotImplementedError

    def _check_z(self, z: Tensor) -> Tensor:
        if not isinstance(z, Tensor):
            raise TypeError(f"z must be a torch.Tensor, got {type(z).__name__}")
        if z.dim() < 1 or z.shape[-1] != self.dim:
            raise ValueError(f"z must have shape (..., {self.dim}), got {tuple(z.shape)}")
        return z

    def _check_value(self, value: Tensor, event: tuple[int, ...]) -> Tensor:
        if not isinstance(value, Tensor):
            raise TypeError(f"value must be a torch.Tensor, got {type(value).__name__}")
        k = len(event)
        if value.dim() < k or tuple(value.shape[value.dim() - k :]) != event:
            raise ValueError(f"value must have shape (..., {event}), got {tuple(value.shape)}")
        return value


# -- k-subsets ----------------------------------------------------------------------------------


class KSubsetOracle(StructureOracle):
    """Subsets of exactly ``k`` of ``n`` items: the maximizer is the top ``k`` scores.

    ``D = n``; ties go to the lower item index (a stable descending sort).
    The natural value is the indicator itself (as for :class:`~latentgrad.distributions.ksubset`).

    Args:
        n: number of items (``n >= 1``).
        k: subset size, ``0 <= k <= n``.

    Example:
        >>> import torch
        >>> from latentgrad.mappings._structure_oracles import KSubsetOracle
        >>> KSubsetOracle(4, 2)(torch.tensor([[0.5, -1.0, 2.0, 0.5]]))
        tensor([[1., 0., 1., 0.]])
    """

    def __init__(self, n: int, k: int) -> None:
        self.n = check_int(n, "n", minimum=1)
        self.k = check_int(k, "k", minimum=0)
        if self.k > self.n:
            raise ValueError(f"k must be in [0, n={self.n}], got {k}")
        self.dim = self.n

    def __repr__(self) -> str:
        return f"KSubsetOracle(n={self.n}, k={self.k})"

    @property
    def num_structures(self) -> int:
        return math.comb(self.n, self.k)

    def _solve(self, w: Tensor) -> Tensor:
        z = torch.zeros(w.shape, dtype=torch.bool, device=w.device)
        if self.k == 0:
            return z
        order = torch.argsort(upcast(w), dim=-1, descending=True, stable=True)
        return z.scatter_(-1, order[:, : self.k], True)

    def _enumerate(self) -> Tensor:
        out = torch.zeros((self.num_structures, self.n), dtype=torch.bool)
        if self.k == 0:
            return out
        index = torch.combinations(torch.arange(self.n), self.k).reshape(-1, self.k)
        return out.scatter_(-1, index, True)

    def to_value(self, z: Tensor) -> Tensor:
        """The indicator itself, ``batch + (n,)``."""
        return self._check_z(z)

    def from_value(self, value: Tensor) -> Tensor:
        """The indicator itself, ``batch + (n,)``."""
        return self._check_value(value, (self.n,))


# -- permutations (linear assignment) -----------------------------------------------------------


def _assignment(cost: Tensor) -> Tensor:
    """Minimum-cost perfect matching of each ``(n, n)`` cost matrix: ``perm[r, i] = j``.

    Shortest augmenting paths with dual potentials (the O(n^3) Hungarian method): row ``i`` is
    added in phase ``i``; a Dijkstra-like search over columns, on reduced costs
    ``cost[i, j] - u[i] - v[j] >= 0``, grows a tree of tight edges from row ``i`` until it
    reaches a free column, updating the potentials by each step's minimum slack; then the path
    is flipped. Phases are shared by the whole batch; the search and the flip take a different
    number of steps per row, and rows that have finished wait (masked) for the others.

    Index 0 of the column arrays is a virtual column that holds the row being added; rows are
    numbered from 1 in ``u`` and ``owner`` (0 = no row).

    Shape:
        ``cost``: ``(N, n, n)``, finite; returns long ``(N, n)``.
    """
    rows, n, _ = cost.shape
    dev, dtype = cost.device, cost.dtype
    r = torch.arange(rows, device=dev)
    inf = torch.tensor(torch.inf, dtype=dtype, device=dev)
    # Row 0 of the padded cost is a dummy for finished rows (their current row index is 0).
    padded = torch.cat([torch.zeros((rows, 1, n), dtype=dtype, device=dev), cost], 1)
    u = torch.zeros((rows, n + 1), dtype=dtype, device=dev)
    v = torch.zeros((rows, n + 1), dtype=dtype, device=dev)
    owner = torch.zeros((rows, n + 1), dtype=torch.long, device=dev)
    for i in range(1, n + 1):
        owner[:, 0] = i
        col = torch.zeros(rows, dtype=torch.long, device=dev)  # current column of the search
        slack = torch.full((rows, n + 1), torch.inf, dtype=dtype, device=dev)
        used = torch.zeros((rows, n + 1), dtype=torch.bool, device=dev)
        way = torch.zeros((rows, n + 1), dtype=torch.long, device=dev)
        active = torch.ones(rows, dtype=torch.bool, device=dev)
        while True:
            used[r, col] |= active
            row = owner[r, col] * active  # 0 (the dummy row) where finished
            reduced = padded[r, row] - u[r, row].unsqueeze(-1) - v[:, 1:]
            reduced = torch.cat([inf.expand(rows, 1), reduced], -1)
            free = ~used
            better = free & (reduced < slack) & active.unsqueeze(-1)
            slack = torch.where(better, reduced, slack)
            way = torch.where(better, col.unsqueeze(-1), way)
            delta, nxt = torch.where(free, slack, inf).min(-1)  # ties: the lowest column
            delta = torch.where(active, delta, torch.zeros_like(delta))
            step = torch.where(used, delta.unsqueeze(-1), torch.zeros_like(slack))
            u = u.scatter_add(1, owner, step)  # used columns have distinct owners
            v = v - step
            slack = torch.where(used, slack, slack - delta.unsqueeze(-1))
            col = torch.where(active, nxt, col)
            active = active & (owner[r, col] != 0)
            if not bool(active.any()):
                break
        # Flip the alternating path from the free column back to the virtual column 0.
        going = col != 0
        while bool(going.any()):
            prev = way[r, col]
            owner[r, col] = torch.where(going, owner[r, prev], owner[r, col])
            col = torch.where(going, prev, col)
            going = col != 0
    perm = torch.empty((rows, n), dtype=torch.long, device=dev)
    columns = torch.arange(n, device=dev).expand(rows, n)
    return perm.scatter_(1, owner[:, 1:] - 1, columns)


class _SquareValues(StructureOracle):
    """Oracles whose ``D = n * n`` parts are the entries of an ``(n, n)`` matrix, row-major
    (permutation matrices, adjacency matrices of directed graphs)."""

    n: int

    def to_value(self, z: Tensor) -> Tensor:
        """The ``(n, n)`` matrices, ``batch + (n, n)``."""
        z = self._check_z(z)
        return z.reshape(*z.shape[:-1], self.n, self.n)

    def from_value(self, value: Tensor) -> Tensor:
        """The flat indicators ``batch + (n * n,)`` of matrices ``batch + (n, n)``."""
        value = self._check_value(value, (self.n, self.n))
        return value.reshape(*value.shape[:-2], self.dim)


class PermutationOracle(_SquareValues):
    """Permutation matrices of size ``n``: the maximizer is a maximum-weight perfect matching.

    ``D = n * n``: the score of assigning row ``i`` to column ``j`` is ``w[i * n + j]``. The
    oracle solves the linear assignment problem exactly with the shortest-augmenting-path
    (Hungarian, Jonker-Volgenant style) method on costs ``-w`` in float64, batched over rows:
    ``O(n^3)`` work per row in ``O(n^2)`` batched steps. Ties are broken deterministically by
    the search order (lowest column first).

    The natural value is the ``(n, n)`` permutation matrix (row ``i``, column ``sigma(i)``), as
    for :class:`~latentgrad.distributions.matching`.

    Args:
        n: size of the permutation (``n >= 1``).

    Example:
        >>> import torch
        >>> from latentgrad.mappings._structure_oracles import PermutationOracle
        >>> oracle = PermutationOracle(3)
        >>> w = torch.tensor([[1.0, 5.0, 0.0],
        ...                   [4.0, 4.0, 1.0],
        ...                   [0.0, 6.0, 2.0]]).reshape(1, 9)
        >>> oracle.to_value(oracle(w))
        tensor([[[0., 1., 0.],
                 [1., 0., 0.],
                 [0., 0., 1.]]])

    References:
        [1] Kuhn, "The Hungarian method for the assignment problem", 1955.
        [2] Jonker and Volgenant, "A shortest augmenting path algorithm for dense and sparse
        linear assignment problems", Computing, 1987.
    """

    def __init__(self, n: int) -> None:
        self.n = check_int(n, "n", minimum=1)
        self.dim = self.n * self.n

    def __repr__(self) -> str:
        return f"PermutationOracle(n={self.n})"

    @property
    def num_structures(self) -> int:
        return math.factorial(self.n)

    def solve_permutation(self, w: Tensor) -> Tensor:
        """The maximizing permutation ``sigma`` itself: ``sigma[..., i]`` is row ``i``'s column.

        Shape:
            ``w``: ``batch + (n * n,)``; returns long ``batch + (n,)``.
        """
        return self(w).reshape(*w.shape[:-1], self.n, self.n).argmax(-1)

    def _solve(self, w: Tensor) -> Tensor:
        n = self.n
        cost = -w.to(torch.float64).reshape(-1, n, n)
        perm = _assignment(cost)
        return self._from_perm(perm)

    def _from_perm(self, perm: Tensor) -> Tensor:
        n = self.n
        z = torch.zeros((perm.shape[0], self.dim), dtype=torch.bool, device=perm.device)
        flat = torch.arange(n, device=perm.device) * n + perm
        return z.scatter_(1, flat, True)

    def _enumerate(self) -> Tensor:
        perms = torch.tensor(list(itertools.permutations(range(self.n))), dtype=torch.long)
        return self._from_perm(perms.reshape(-1, self.n))


# -- undirected spanning trees and arborescences ------------------------------------------------


def _prufer_trees(n: int) -> Tensor:
    """Every labelled tree on ``n >= 2`` vertices as an edge indicator, bool ``(n^(n-2), D)``.

    Decodes all Prufer sequences at once: at each of the ``n - 2`` steps the smallest leaf is
    joined to the sequence's next vertex; the last two vertices of degree 1 are joined at the end.
    """
    count = n ** (n - 2)
    ids = edge_id_matrix(n)
    seq = torch.arange(count).unsqueeze(-1) // n ** torch.arange(n - 3, -1, -1) % n  # (S, n-2)
    rows = torch.arange(count)
    degree = torch.ones((count, n), dtype=torch.long)
    degree.scatter_add_(1, seq, torch.ones_like(seq))
    edges = torch.zeros((count, num_edges(n)), dtype=torch.bool)
    for t in range(n - 2):
        leaf = (degree == 1).to(torch.uint8).argmax(-1)
        target = seq[:, t]
        edges[rows, ids[leaf, target]] = True
        degree[rows, leaf] -= 1
        degree[rows, target] -= 1
    ends = (degree == 1).to(torch.uint8).topk(2, dim=-1, sorted=True).indices
    edges[rows, ids[ends[:, 0], ends[:, 1]]] = True
    return edges


class SpanningTreeOracle(StructureOracle):
    """Spanning trees of the complete graph on ``n`` vertices: a maximum spanning tree.

    ``D = n (n - 1) / 2`` edges ``{u, v}``, ``u < v``, in ``torch.triu_indices(n, n, 1)`` order
    (see :mod:`latentgrad.structured.kruskal`). Every spanning tree has ``n - 1`` edges, so the
    maximum spanning tree is the maximizer whatever the signs of the scores. It is computed by
    :class:`~latentgrad.structured.kruskal.Kruskal` on ``-w``; ties go to the lower edge number.

    The natural value is the symmetric 0/1 adjacency matrix ``(n, n)``, as for
    :class:`~latentgrad.distributions.spanning_tree`.

    Args:
        n: number of vertices (``n >= 2``).

    Example:
        >>> import torch
        >>> from latentgrad.mappings._structure_oracles import SpanningTreeOracle
        >>> SpanningTreeOracle(3)(torch.tensor([[-1.0, 2.0, 0.5]]))  # (0,1), (0,2), (1,2)
        tensor([[0., 1., 1.]])
    """

    def __init__(self, n: int) -> None:
        self.n = check_int(n, "n", minimum=2)
        self.dim = num_edges(self.n)
        self._kruskal = Kruskal(self.n)

    def __repr__(self) -> str:
        return f"SpanningTreeOracle(n={self.n})"

    @property
    def num_structures(self) -> int:
        return self.n ** (self.n - 2)

    def _solve(self, w: Tensor) -> Tensor:
        mask = torch.ones(w.shape, dtype=torch.bool, device=w.device)
        tree, _ = self._kruskal.run(-upcast(w), mask)
        return tree

    def _enumerate(self) -> Tensor:
        return _prufer_trees(self.n)

    def to_value(self, z: Tensor) -> Tensor:
        """The symmetric adjacency matrices, ``batch + (n, n)``."""
        return edges_to_adjacency(self._check_z(z))

    def from_value(self, value: Tensor) -> Tensor:
        """The edge indicators ``batch + (D,)`` of (upper triangles of) adjacency matrices."""
        return adjacency_to_edges(self._check_value(value, (self.n, self.n)))


def _orient(edges: Tensor, n: int, root: int) -> Tensor:
    """Parent vectors ``(S, n)`` (``-1`` at ``root``) of trees ``(S, D)`` hung from ``root``.

    Breadth-first, one layer per step: a vertex next to the visited (connected) part of a tree
    has exactly one visited neighbour, its parent.
    """
    adj = edges_to_adjacency(edges)
    count = edges.shape[0]
    visited = torch.zeros((count, n), dtype=torch.bool)
    visited[:, root] = True
    parent = torch.full((count, n), -1, dtype=torch.long)
    for _ in range(n - 1):
        link = adj & visited.unsqueeze(-1)  # [u, v]: u visited and adjacent to v
        new = link.any(1) & ~visited
        parent = torch.where(new, link.to(torch.uint8).argmax(1), parent)
        visited = visited | new
    return parent


class ArborescenceOracle(_SquareValues):
    """Spanning arborescences of the complete digraph on ``n`` vertices, rooted at ``root``.

    ``D = n * n``: the edge ``u -> v`` is part ``u * n + v``. Self-loops and edges into the
    root are in no arborescence: their indicator is always 0 (their scores are ignored). The
    maximizer is the minimum-cost arborescence under costs ``-w``, found by
    :class:`~latentgrad.structured.chu_liu_edmonds.ChuLiuEdmonds` in float64 (exact on
    integer-valued scores; ties are broken by the algorithm's fixed order).

    The natural value is the adjacency matrix ``(n, n)`` (``A[u, v] = 1`` iff ``u -> v``), as
    for :class:`~latentgrad.distributions.arborescence`.

    Args:
        n: number of vertices (``n >= 2``).
        root: the root vertex, in ``[0, n)``.

    Example:
        >>> import torch
        >>> from latentgrad.mappings._structure_oracles import ArborescenceOracle
        >>> oracle = ArborescenceOracle(3, root=0)
        >>> w = torch.tensor([[0.0, 1.0, 0.0],
        ...                   [0.0, 0.0, 5.0],
        ...                   [0.0, 2.0, 0.0]]).reshape(1, 9)
        >>> oracle.to_value(oracle(w))  # 0 -> 1 -> 2
        tensor([[[0., 1., 0.],
                 [0., 0., 1.],
                 [0., 0., 0.]]])
    """

    def __init__(self, n: int, root: int = 0) -> None:
        self.n = check_int(n, "n", minimum=2)
        self.root = check_index(root, "root", self.n)
        self.dim = self.n * self.n
        self._cle = ChuLiuEdmonds(self.n, self.root)
        allowed = ~torch.eye(self.n, dtype=torch.bool)
        allowed[:, self.root] = False
        self._allowed = allowed.reshape(-1)

    def __repr__(self) -> str:
        return f"ArborescenceOracle(n={self.n}, root={self.root})"

    @property
    def num_structures(self) -> int:
        return self.n ** (self.n - 2)

    def _solve(self, w: Tensor) -> Tensor:
        mask = self._allowed.to(w.device).expand(w.shape)
        parent, _ = self._cle.run(-w.to(torch.float64), mask)
        return self._from_parent(parent)

    def _from_parent(self, parent: Tensor) -> Tensor:
        n = self.n
        head = torch.arange(n, device=parent.device)
        slot = torch.where(parent >= 0, parent * n + head, self.dim)  # dim: a spare column
        z = torch.zeros((parent.shape[0], self.dim + 1), dtype=torch.bool, device=parent.device)
        return z.scatter_(1, slot, True)[:, : self.dim]

    def _enumerate(self) -> Tensor:
        return self._from_parent(_orient(_prufer_trees(self.n), self.n, self.root))


# -- linear-chain sequences ---------------------------------------------------------------------


class SequenceOracle(StructureOracle):
    """Tag sequences of a linear chain: Viterbi decoding.

    A structure is a sequence of ``length`` tags in ``[0, num_tags)``. Its parts are, first, the
    unary parts ``(t, a)`` (tag ``a`` at position ``t``) at ``t * K + a``, then the transition
    parts ``(t, a, b)`` (tag ``a`` at ``t`` and ``b`` at ``t + 1``) at
    ``L K + (t K + a) K + b``: ``D = L K + (L - 1) K^2`` with ``L = length``, ``K = num_tags``.
    Ties are broken towards lower tags (the first maximum of each Viterbi step, then of the last
    position).

    The natural value is the one-hot tag matrix ``(L, K)`` (``value.argmax(-1)`` gives the tags).

    Args:
        length: number of positions ``L >= 1``.
        num_tags: number of tags ``K >= 1``.

    Example:
        >>> import torch
        >>> from latentgrad.mappings._structure_oracles import SequenceOracle
        >>> oracle = SequenceOracle(2, 2)  # D = 2 * 2 + 1 * 4 = 8
        >>> unary = torch.tensor([1.0, 0.0, 1.0, 0.0])
        >>> transition = torch.tensor([0.0, 0.0, 0.0, 3.0])  # rewards tag 1 then tag 1
        >>> z = oracle(torch.cat([unary, transition]).unsqueeze(0))
        >>> z
        tensor([[0., 1., 0., 1., 0., 0., 0., 1.]])
        >>> oracle.to_value(z).argmax(-1)
        tensor([[1, 1]])
    """

    def __init__(self, length: int, num_tags: int) -> None:
        self.length = check_int(length, "length", minimum=1)
        self.num_tags = check_int(num_tags, "num_tags", minimum=1)
        k = self.num_tags
        self._num_unary = self.length * k
        self.dim = self._num_unary + (self.length - 1) * k * k

    def __repr__(self) -> str:
        return f"SequenceOracle(length={self.length}, num_tags={self.num_tags})"

    @property
    def num_structures(self) -> int:
        return self.num_tags**self.length

    def decode(self, w: Tensor) -> Tensor:
        """The maximizing tag sequences themselves.

        Shape:
            ``w``: ``batch + (D,)``; returns long ``batch + (L,)``.
        """
        return self.to_value(self(w)).argmax(-1)

    def _solve(self, w: Tensor) -> Tensor:
        return self.from_tags(self._viterbi(upcast(w)))

    def _viterbi(self, w: Tensor) -> Tensor:
        rows, (length, k) = w.shape[0], (self.length, self.num_tags)
        unary = w[:, : self._num_unary].reshape(rows, length, k)
        trans = w[:, self._num_unary :].reshape(rows, length - 1, k, k)
        best = unary[:, 0]
        back = torch.zeros((rows, max(length - 1, 0), k), dtype=torch.long, device=w.device)
        for t in range(length - 1):
            score, arg = (best.unsqueeze(-1) + trans[:, t]).max(1)  # first max: lowest tag
            back[:, t] = arg
            best = score + unary[:, t + 1]
        tags = torch.empty((rows, length), dtype=torch.long, device=w.device)
        tags[:, -1] = best.argmax(-1)
        for t in range(length - 2, -1, -1):
            tags[:, t] = back[:, t].gather(1, tags[:, t + 1 : t + 2]).squeeze(1)
        return tags

    def from_tags(self, tags: Tensor) -> Tensor:
        """The bool indicators ``batch + (D,)`` of tag sequences ``batch + (L,)`` (long).

        Raises:
            ValueError: if the last dimension of ``tags`` is not ``length``.
        """
        if not isinstance(tags, Tensor):
            raise TypeError(f"tags must be a torch.Tensor, got {type(tags).__name__}")
        if tags.dim() < 1 or tags.shape[-1] != self.length:
            raise ValueError(f"tags must have shape (..., {self.length}), got {tuple(tags.shape)}")
        k = self.num_tags
        tags = tags.long()
        unary = torch.nn.functional.one_hot(tags, k).flatten(-2)
        pairs = tags[..., :-1] * k + tags[..., 1:]
        trans = torch.nn.functional.one_hot(pairs, k * k).flatten(-2)
        return torch.cat([unary, trans], -1).bool()

    def _enumerate(self) -> Tensor:
        k, length = self.num_tags, self.length
        index = torch.arange(self.num_structures).unsqueeze(-1)
        tags = index // k ** torch.arange(length - 1, -1, -1) % k
        return self.from_tags(tags)

    def to_value(self, z: Tensor) -> Tensor:
        """The one-hot tag matrices ``batch + (L, K)`` (the unary parts of ``z``)."""
        z = self._check_z(z)
        return z[..., : self._num_unary].reshape(*z.shape[:-1], self.length, self.num_tags)

    def from_value(self, value: Tensor) -> Tensor:
        """The indicators ``batch + (D,)`` of one-hot tag matrices ``batch + (L, K)``.

        The transition parts are the products of consecutive rows (exact for one-hot values).
        """
        value = self._check_value(value, (self.length, self.num_tags))
        unary = value.flatten(-2)
        trans = (value[..., :-1, :, None] * value[..., 1:, None, :]).flatten(-3)
        return torch.cat([unary, trans], -1)


__all__ = [
    "ArborescenceOracle",
    "KSubsetOracle",
    "PermutationOracle",
    "SequenceOracle",
    "SpanningTreeOracle",
    "StructureOracle",
]
