"""MAP oracles: linear maximization over a set of structures, the only thing SparseMAP needs.

A structure is a 0/1 vector ``z`` in ``R^D`` (the indicator of its parts). An *oracle* for a set
``Z`` of structures maps scores ``w`` of shape ``batch + (D,)`` to the 0/1 indicators (same
dtype as ``w``) of a maximizer of ``<w, z>`` over ``Z``, row by row, batched in torch (Python
loops run only over the steps of an algorithm, never over rows or items), with deterministic
tie-breaking: the same scores always give the same structure. The algorithms themselves live in
:mod:`latentgrad.structured`, beside the samplers that use them.

=========================== ===================== ===========================================
oracle                      ``D``                 algorithm
=========================== ===================== ===========================================
:class:`FreeBits`           ``d``                 ``w > 0``
:class:`BudgetBits`         ``d``                 the ``budget`` largest positive scores
:class:`KSubsetOracle`      ``n``                 top-``k`` (stable sort)
:class:`PermutationOracle`  ``n * n``             shortest augmenting paths (Hungarian)
:class:`SpanningTreeOracle` ``n (n - 1) / 2``     Kruskal on ``-w``
:class:`ArborescenceOracle` ``n * n``             Chu-Liu-Edmonds on ``-w``
:class:`SequenceOracle`     ``L K + (L - 1) K^2`` Viterbi
=========================== ===================== ===========================================

Every oracle is a :class:`StructureOracle`: it has the attribute ``dim`` (``D``), the property
``num_structures``, ``enumerate()`` (all structures as an ``(S, D)`` 0/1 tensor, for small
sizes and brute-force checks) and ``to_value`` / ``from_value``, which convert between the flat
indicator and the structure's natural value (the value shape of the matching distribution
family, where there is one). :func:`~latentgrad.mappings.sparsemap` calls an oracle on the
gradient direction ``theta - mu`` once per iteration.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from latentgrad import _native
from latentgrad._numerics import upcast
from latentgrad._validation import check_index, check_int, check_k, check_tensor
from latentgrad.mappings._capped_simplex import capped_simplex_decomposition
from latentgrad.mappings._shared import support_slots
from latentgrad.structured.assignment import linear_assignment
from latentgrad.structured.bits import bit_vectors
from latentgrad.structured.chu_liu_edmonds import min_cost_arborescence
from latentgrad.structured.kruskal import (
    Kruskal,
    adjacency_to_edges,
    edges_to_adjacency,
    num_edges,
)
from latentgrad.structured.trees import all_spanning_trees, orient_trees
from latentgrad.structured.viterbi import viterbi

#: Default bound on the number of structures :meth:`StructureOracle.enumerate` builds.
MAX_STRUCTURES = 2**20


class StructureOracle:
    """Base class of the structure oracles: argument checks, batching and enumeration.

    Subclasses set :attr:`dim` and implement :meth:`_solve` (scores ``(N, D)``, any floating
    dtype, to a 0/1 or bool ``(N, D)`` tensor), :meth:`_enumerate` and :attr:`num_structures`;
    those whose natural value is not the flat indicator itself override :meth:`to_value` and
    :meth:`from_value`.

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
        w = self._check_scores(w, "w")
        flat = w.detach().reshape(-1, self.dim)
        if flat.shape[0] == 0:
            return torch.zeros(w.shape, dtype=w.dtype, device=w.device)
        z = self._solve(flat)
        return z.to(w.dtype).reshape(w.shape)

    def _check_scores(self, w: object, name: str) -> Tensor:
        """A floating-point tensor ``batch + (D,)``."""
        t = check_tensor(w, name, min_dim=1)
        if t.shape[-1] != self.dim:
            raise ValueError(
                f"{name} must have shape (..., D): {name} must have last dimension D={self.dim} "
                f"for {self!r}, got shape {tuple(t.shape)}"
            )
        return t

    def _solve(self, w: Tensor) -> Tensor:
        raise NotImplementedError

    def enumerate(
        self, *, max_structures: int = MAX_STRUCTURES, device: torch.device | str | None = None
    ) -> Tensor:
        """Every structure, as rows of a float32 0/1 tensor (for small sizes and tests).

        Args:
            max_structures: refuse to build more structures than this.
            device: where to return them (default: the CPU).

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
        return self._enumerate().to(device=device, dtype=torch.float32)

    def _enumerate(self) -> Tensor:
        raise NotImplementedError

    def to_value(self, z: Tensor) -> Tensor:
        """The natural value of indicators ``z`` (``batch + (D,)``): here the indicator itself;
        see the subclass."""
        return self._check_z(z)

    def from_value(self, value: Tensor) -> Tensor:
        """The indicators ``batch + (D,)`` of natural values (inverse of :meth:`to_value`)."""
        return self._check_value(value, (self.dim,))

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


# -- bit-vectors --------------------------------------------------------------------------------


class FreeBits(StructureOracle):
    """Oracle over all ``2**d`` bit-vectors: ``z_i = 1[w_i > 0]`` (ties at 0 give 0).

    Its convex hull is the unit cube ``[0, 1]^d``, so SparseMAP with this oracle is the clamp
    ``min(max(theta, 0), 1)``, written as a sparse combination of bit-vectors.

    Args:
        d: number of bits.

    The natural value is the bit-vector itself.

    Shape:
        ``w``: ``batch + (d,)``; output: ``batch + (d,)``, same dtype.

    Example:
        >>> import torch
        >>> FreeBits(3)(torch.tensor([[0.5, -1.0, 0.0]]))
        tensor([[1., 0., 0.]])
    """

    def __init__(self, d: int) -> None:
        self.dim = check_int(d, "d", minimum=1)

    @property
    def num_structures(self) -> int:
        return 2**self.dim

    def _solve(self, w: Tensor) -> Tensor:
        return w > 0

    def _native_spec(self) -> tuple[int, tuple[int, ...]]:
        """The compiled kernel of this oracle for the active set (see :mod:`latentgrad._native`):
        its kind and sizes (``d``, unused, the largest number of parts of a structure)."""
        return _native.FREE_BITS, (self.dim, self.dim, self.dim)

    def _enumerate(self) -> Tensor:
        return bit_vectors(self.dim)

    def sparse_projection(self, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """SparseMAP in closed form: the nested decomposition of ``clamp(theta, 0, 1)``.

        ``mu* = clamp(theta, 0, 1)`` is the mean of the threshold sets ``{i : mu*_i >= t}``
        for ``t`` uniform in ``(0, 1]``. With ``v_1 >= ... >= v_d`` the sorted values of
        ``mu*`` (``v_0 = 1``, ``v_{d+1} = 0``), the set of the ``k`` largest coordinates gets
        weight ``v_k - v_{k+1}``. The sets of positive weight are nested, hence affinely
        independent, and as few as any exact decomposition can have (one more than the number
        of distinct values of ``mu*`` strictly inside ``(0, 1)``). On a fixed support the
        weights are the unique solution of SparseMAP's KKT system, so differentiating these
        formulas gives the same gradient as the KKT system. :func:`~latentgrad.mappings.sparsemap`
        uses this instead of its iterative solver.

        Args:
            theta: scores, ``(N, d)``; weights and ``mu*`` are differentiable in them.

        Returns:
            ``(structures, weights, mu)``: ``(N, A, d)`` bool, largest set first; ``(N, A)``
            in ``theta``'s dtype (padding slots repeat the first set at weight 0); and
            ``mu* = clamp(theta, 0, 1)``, ``(N, d)``.
        """
        theta = check_tensor(theta, "w")  # named as the oracle's scores
        if theta.dim() != 2 or theta.shape[1] != self.dim:
            raise ValueError(f"w must have shape (N, {self.dim}), got {tuple(theta.shape)}")
        n, d = theta.shape
        mu = theta.clamp(0.0, 1.0)
        values, order = mu.sort(dim=1, descending=True, stable=True)
        ones, zeros = values.new_ones(n, 1), values.new_zeros(n, 1)
        # Weight of the k largest coordinates, for k = d, d - 1, ..., 0.
        weight = (torch.cat([ones, values], 1) - torch.cat([values, zeros], 1)).flip(1)
        slots, support = support_slots(weight.detach() > 0)
        weights = weight.gather(1, slots) * support
        k = d - slots
        rank = torch.empty_like(order).scatter_(
            1, order, torch.arange(d, device=order.device).expand(n, d)
        )
        structures = rank.unsqueeze(1) < k.unsqueeze(2)
        return structures, weights, mu

    def __repr__(self) -> str:
        return f"FreeBits(d={self.dim})"


class BudgetBits(StructureOracle):
    """Oracle over bit-vectors with at most ``budget`` ones.

    The maximizer keeps the ``budget`` largest scores among the positive ones. Ties are broken
    towards the lower index (a stable sort), and scores of exactly 0 give 0.

    Args:
        d: number of bits.
        budget: the largest number of ones, ``1 <= budget <= d``.

    The natural value is the bit-vector itself.

    Shape:
        ``w``: ``batch + (d,)``; output: ``batch + (d,)``, same dtype.

    Example:
        >>> import torch
        >>> BudgetBits(4, 2)(torch.tensor([[0.5, 2.0, 1.0, -1.0]]))
        tensor([[0., 1., 1., 0.]])
    """

    def __init__(self, d: int, budget: int) -> None:
        self.dim = check_int(d, "d", minimum=1)
        self.budget = check_k(budget, self.dim, "budget", of="d")

    @property
    def num_structures(self) -> int:
        return sum(math.comb(self.dim, k) for k in range(self.budget + 1))

    def _solve(self, w: Tensor) -> Tensor:
        if self.budget == self.dim:
            return w > 0
        # The budget largest, lowest index first on ties (as a stable sort orders them): all
        # above the budget-th largest value, then the first of those equal to it. (A selection,
        # several times faster than sorting the rows; topk's is 1.1-3x faster than kthvalue's.)
        kth = torch.topk(w, self.budget, dim=-1, sorted=False).values.amin(-1, keepdim=True)
        above = w > kth
        tied = w == kth
        room = self.budget - above.sum(-1, keepdim=True)
        top = above | (tied & (tied.cumsum(-1) <= room))
        return top & (w > 0)

    def _native_spec(self) -> tuple[int, tuple[int, ...]]:
        """The compiled kernel of this oracle for the active set (see :mod:`latentgrad._native`):
        its kind and sizes (``d``, the budget, the largest number of parts of a structure)."""
        return _native.BUDGET_BITS, (self.dim, self.budget, max(self.budget, 1))

    def _enumerate(self) -> Tensor:
        bits = bit_vectors(self.dim)
        return bits[bits.sum(-1) <= self.budget]

    def sparse_projection(self, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """SparseMAP in closed form: the projection onto the capped simplex, decomposed.

        The convex hull of the structures is ``{mu in [0, 1]^d : sum(mu) <= budget}``, so
        ``mu* = clamp(theta - tau, 0, 1)`` with ``tau >= 0`` found by a sort (exact, with the
        exact Jacobian), written as a mixture of affinely independent structures by systematic
        sampling, as few as the face of ``mu*`` allows (see
        :func:`~latentgrad.mappings._capped_simplex.capped_simplex_decomposition`).
        :func:`~latentgrad.mappings.sparsemap` uses this instead of its iterative solver.

        Args:
            theta: scores, ``(N, d)``; weights and ``mu*`` are differentiable in them.

        Returns:
            ``(structures, weights, mu)``: ``(N, A, d)`` bool; ``(N, A)`` in ``theta``'s dtype
            (padding slots repeat the first structure at weight 0); and ``mu*``, ``(N, d)``.
        """
        theta = check_tensor(theta, "w")  # named as the oracle's scores
        if theta.dim() != 2 or theta.shape[1] != self.dim:
            raise ValueError(f"w must have shape (N, {self.dim}), got {tuple(theta.shape)}")
        return capped_simplex_decomposition(theta, self.budget)

    def __repr__(self) -> str:
        return f"BudgetBits(d={self.dim}, budget={self.budget})"


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
        >>> from latentgrad.mappings.oracles import KSubsetOracle
        >>> KSubsetOracle(4, 2)(torch.tensor([[0.5, -1.0, 2.0, 0.5]]))
        tensor([[1., 0., 1., 0.]])
    """

    def __init__(self, n: int, k: int) -> None:
        self.n = check_int(n, "n", minimum=1)
        self.k = check_k(k, self.n, minimum=0)
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
        out = torch.zeros((self.num_structures, self.n), dtype=torch.bool, device="cpu")
        if self.k == 0:
            return out
        index = torch.combinations(torch.arange(self.n, device="cpu"), self.k).reshape(-1, self.k)
        return out.scatter_(-1, index, True)


# -- permutations (linear assignment) -----------------------------------------------------------


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
        >>> from latentgrad.mappings.oracles import PermutationOracle
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
        perm = linear_assignment(cost)
        return self._from_perm(perm)

    def _from_perm(self, perm: Tensor) -> Tensor:
        n = self.n
        z = torch.zeros((perm.shape[0], self.dim), dtype=torch.bool, device=perm.device)
        flat = torch.arange(n, device=perm.device) * n + perm
        return z.scatter_(1, flat, True)

    def _enumerate(self) -> Tensor:
        perms = torch.tensor(
            list(itertools.permutations(range(self.n))), dtype=torch.long, device="cpu"
        )
        return self._from_perm(perms.reshape(-1, self.n))


# -- undirected spanning trees and arborescences ------------------------------------------------


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
        >>> from latentgrad.mappings.oracles import SpanningTreeOracle
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
        return all_spanning_trees(self.n, device="cpu")

    def to_value(self, z: Tensor) -> Tensor:
        """The symmetric adjacency matrices, ``batch + (n, n)``."""
        return edges_to_adjacency(self._check_z(z))

    def from_value(self, value: Tensor) -> Tensor:
        """The edge indicators ``batch + (D,)`` of (upper triangles of) adjacency matrices."""
        return adjacency_to_edges(self._check_value(value, (self.n, self.n)))


class ArborescenceOracle(_SquareValues):
    """Spanning arborescences of the complete digraph on ``n`` vertices, rooted at ``root``.

    ``D = n * n``: the edge ``u -> v`` is part ``u * n + v``. Self-loops and edges into the
    root are in no arborescence: their indicator is always 0 (their scores are ignored). The
    maximizer is the minimum-cost arborescence under costs ``-w``, found by
    :func:`~latentgrad.structured.chu_liu_edmonds.min_cost_arborescence` (Chu-Liu-Edmonds
    contracting all cycles of a round at once, batched) in float64 (exact on integer-valued
    scores; ties go to the lowest edge number, as in
    :class:`~latentgrad.structured.chu_liu_edmonds.ChuLiuEdmonds`).

    The natural value is the adjacency matrix ``(n, n)`` (``A[u, v] = 1`` iff ``u -> v``), as
    for :class:`~latentgrad.distributions.arborescence`.

    Args:
        n: number of vertices (``n >= 2``).
        root: the root vertex, in ``[0, n)``.

    Example:
        >>> import torch
        >>> from latentgrad.mappings.oracles import ArborescenceOracle
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

    def __repr__(self) -> str:
        return f"ArborescenceOracle(n={self.n}, root={self.root})"

    @property
    def num_structures(self) -> int:
        return self.n ** (self.n - 2)

    def _solve(self, w: Tensor) -> Tensor:
        parent = min_cost_arborescence(-w.to(torch.float64), self.root)
        return self._from_parent(parent)

    def _native_spec(self) -> tuple[int, tuple[int, ...]]:
        """The compiled kernel of this oracle for the active set (see :mod:`latentgrad._native`):
        its kind and sizes (``n``, the root, the number of parts of a structure)."""
        return _native.ARBORESCENCE, (self.n, self.root, self.n - 1)

    def _from_parent(self, parent: Tensor) -> Tensor:
        n = self.n
        head = torch.arange(n, device=parent.device)
        slot = torch.where(parent >= 0, parent * n + head, self.dim)  # dim: a spare column
        z = torch.zeros((parent.shape[0], self.dim + 1), dtype=torch.bool, device=parent.device)
        return z.scatter_(1, slot, True)[:, : self.dim]

    def _enumerate(self) -> Tensor:
        return self._from_parent(orient_trees(all_spanning_trees(self.n, device="cpu"), self.root))


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
        >>> from latentgrad.mappings.oracles import SequenceOracle
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

    @property
    def unary_parts(self) -> Tensor:
        """Bool ``(D,)``: the unary parts (the first ``L K``), the penalized ones in Niculae et
        al.'s SparseMAP over sequences (``sparsemap(..., penalized=oracle.unary_parts)``)."""
        mask = torch.zeros(self.dim, dtype=torch.bool, device="cpu")
        mask[: self._num_unary] = True
        return mask

    def decode(self, w: Tensor) -> Tensor:
        """The maximizing tag sequences themselves.

        Shape:
            ``w``: ``batch + (D,)``; returns long ``batch + (L,)``.
        """
        return self.to_value(self(w)).argmax(-1)

    def _solve(self, w: Tensor) -> Tensor:
        w = upcast(w)
        rows, length, k = w.shape[0], self.length, self.num_tags
        unary = w[:, : self._num_unary].reshape(rows, length, k)
        transition = w[:, self._num_unary :].reshape(rows, length - 1, k, k)
        return self.from_tags(viterbi(unary, transition))

    def _native_spec(self) -> tuple[int, tuple[int, ...]]:
        """The compiled kernel of this oracle for the active set (see :mod:`latentgrad._native`):
        its kind and sizes (``L``, ``K``, the number of parts of a structure)."""
        return _native.SEQUENCE, (self.length, self.num_tags, 2 * self.length - 1)

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
        index = torch.arange(self.num_structures, device="cpu").unsqueeze(-1)
        tags = index // k ** torch.arange(length - 1, -1, -1, device="cpu") % k
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
    "BudgetBits",
    "FreeBits",
    "KSubsetOracle",
    "PermutationOracle",
    "SequenceOracle",
    "SpanningTreeOracle",
    "StructureOracle",
]
