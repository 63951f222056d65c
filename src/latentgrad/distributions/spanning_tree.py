"""Random spanning trees of an undirected graph: Kruskal's algorithm on exponential noise."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor
from torch.distributions import constraints

from latentgrad._numerics import upcast
from latentgrad._validation import (
    check_in_support,
    check_sample,
    check_tensor,
    is_meta,
    own_samples,
)
from latentgrad.distributions._structured import StructuredDistribution
from latentgrad.structured import Kruskal, SubsetLayer, all_spanning_trees, subset_layers
from latentgrad.structured.kruskal import (
    adjacency_to_edges,
    edge_id_matrix,
    edge_index,
    edges_to_adjacency,
)

MAX_DP_VERTICES = 16
"""Largest ``n`` for which :meth:`SpanningTree.log_prob` runs its ``2^(n-1)``-state DP."""

_DP_BUDGET = 2**22
"""Elements of the largest ``(rows, subsets, D)`` tensor the DP builds at once."""


def connected(adjacency: Tensor) -> Tensor:
    """Whether each graph is connected, by boolean matrix squaring (``ceil(log2 n)`` rounds).

    Args:
        adjacency: bool ``(..., n, n)``, symmetric (reachability from vertex 0 is checked).

    Returns:
        bool ``(...)``.
    """
    n = adjacency.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=adjacency.device)
    reach = (adjacency | eye).float()
    for _ in range(max(1, math.ceil(math.log2(max(n - 1, 1))))):
        reach = ((reach @ reach) > 0).float()
    return (reach[..., 0, :] > 0).all(-1)


class SpanningTree(StructuredDistribution):
    """Random spanning tree of a graph: Kruskal's algorithm on exponential edge noise.

    Edge ``{u, v}`` gets noise ``E_uv ~ Exponential(exp(theta_uv))`` and the sample is the
    spanning tree Kruskal's algorithm builds on it (smallest noise first, skipping edges that
    would close a cycle), which is the maximum spanning tree of ``theta + Gumbel``. The execution
    trace (the edges in the order Kruskal took them, and the candidate edges at each step) has
    ``log p(T) = sum_t [theta_{k_t} - logsumexp_{S_t} theta]`` (:meth:`trace_log_prob`), the
    T-REINFORCE score of [1]; :meth:`log_prob` sums it over the ``(n-1)!`` orders of a tree's
    edges exactly, by a dynamic program over the ``2^(n-1)`` subsets of those edges.

    Edges are numbered as in :func:`latentgrad.structured.kruskal.edge_index` (the upper
    triangle, row-major); the noise and :meth:`item_scores` are ``(..., D)``,
    ``D = n (n - 1) / 2``.

    Args:
        scores: edge scores ``theta``, shape ``batch_shape + (n, n)`` with ``n >= 2``. The score
            of edge ``{u, v}`` is ``scores[..., u, v]`` with ``u < v`` (the upper triangle); the
            diagonal and the lower triangle are ignored. ``-inf`` marks an absent edge; the
            present edges of every batch element must connect all ``n`` vertices. NaN and
            ``+inf`` are rejected in every entry (below the diagonal too).
            float16/bfloat16 scores are computed in float32.
        validate_args: whether :meth:`log_prob` checks that its value is the adjacency matrix
            of a spanning tree (``None``: torch's default, on unless
            ``Distribution.set_default_validate_args(False)``); the parameters are always
            checked.

    Shape:
        ``batch_shape = scores.shape[:-2]``, ``event_shape = (n, n)``: a value is the symmetric
        0/1 adjacency matrix of the tree, in the dtype of ``scores``.

    Example:
        >>> import torch
        >>> from latentgrad.distributions.spanning_tree import SpanningTree
        >>> _ = torch.manual_seed(0)
        >>> scores = torch.tensor([[0.0, 2.0, -torch.inf],
        ...                        [0.0, 0.0, 1.0],
        ...                        [0.0, 0.0, 0.0]])  # edge {0, 2} is absent
        >>> q = SpanningTree(scores)
        >>> q.mode()  # the maximum spanning tree: here the only one
        tensor([[0., 1., 0.],
                [1., 0., 1.],
                [0., 1., 0.]])
        >>> trees, noise, trace = q.sample_with_trace((4,))
        >>> trees.shape, noise.shape, trace.choices.shape
        (torch.Size([4, 3, 3]), torch.Size([4, 3]), torch.Size([4, 2]))
        >>> q.trace_log_prob(trace).shape  # differentiable in scores
        torch.Size([4])
        >>> q = SpanningTree(torch.zeros(4, 4))  # equal scores: not uniform over the 16 trees
        >>> q.mode()[0]  # ties go to the lower edge numbers: the star at vertex 0
        tensor([0., 1., 1., 1.])
        >>> q.support_size(), round(q.log_prob(q.mode()).exp().item(), 4)  # a star: 1/15
        (16, 0.0667)

    References:
        [1] Struminsky, Gadetsky, Rakitin, Karpushkin and Vetrov, "Leveraging Recursive
        Gumbel-Max Trick for Approximate Inference in Combinatorial Spaces", NeurIPS 2021.
        [2] Kruskal, "On the shortest spanning subtree of a graph and the traveling salesman
        problem", Proceedings of the AMS, 1956.
    """

    _score_event_dims = 2
    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {
        "scores": constraints.independent(constraints.real, 2)
    }

    def __init__(self, scores: Tensor, validate_args: bool | None = None) -> None:
        scores = check_tensor(scores, "scores", min_dim=2)
        n = scores.shape[-1]
        if scores.shape[-2] != n:
            raise ValueError(f"scores must be square, (..., n, n), got shape {tuple(scores.shape)}")
        if n < 2:
            raise ValueError(f"scores must have n >= 2 vertices, got shape {tuple(scores.shape)}")
        if not is_meta(scores):
            # NaN or +inf anywhere is an upstream bug, even in the ignored lower triangle.
            if bool(torch.isnan(scores).any()):
                raise ValueError("scores contains NaN (it is rejected in every entry)")
            if bool(torch.isposinf(scores).any()):
                raise ValueError("scores contains +inf (it is rejected in every entry)")
            _check_edges(adjacency_to_edges(scores), n, "scores")
        self.scores = scores
        self._algorithm = Kruskal(n)
        self._init_batch((n, n), validate_args)

    @property
    def algorithm(self) -> Kruskal:
        return self._algorithm

    @property
    def num_vertices(self) -> int:
        """``n``."""
        return self._algorithm.n

    def item_scores(self) -> Tensor:
        """Edge scores ``batch_shape + (D,)`` (the upper triangle) in the compute dtype."""
        return upcast(adjacency_to_edges(self.scores))

    def _to_value(self, structure: Tensor) -> Tensor:
        return edges_to_adjacency(structure.to(self.scores.dtype))

    def _repr_settings(self) -> str:
        return f", n={self.num_vertices}"

    def support_size(self) -> int:
        """``n^(n-2)`` (Cayley's formula): exact for the complete graph, else an upper bound."""
        n = self.num_vertices
        return n ** (n - 2)

    # -- exact probabilities -----------------------------------------------------------------

    def log_prob(self, value: Tensor) -> Tensor:
        """Exact ``log q(value)``: the trace probabilities summed over every edge order.

        Kruskal's candidate set depends only on the *set* of edges taken so far, so the sum over
        the ``(n-1)!`` orders of a tree's edges is a dynamic program over the ``2^(n-1)``
        subsets of its edges (for ``n <= 16``; larger ``n`` falls back to enumeration, which
        raises ``TypeError``). ``-inf`` for a spanning tree that uses an absent edge; gradients
        are finite. A value that is not the adjacency matrix of a spanning tree (symmetric, 0/1,
        zero diagonal, ``n - 1`` edges, connected) raises ``ValueError`` unless
        ``validate_args=False`` (then it gets ``-inf``).

        Shape:
            ``value``: ``sample_shape + batch_shape + (n, n)``; returns
            ``sample_shape + batch_shape`` in the dtype of ``scores``.
        """
        n = self.num_vertices
        if n > MAX_DP_VERTICES:
            return super().log_prob(value)
        sample_batch = check_sample(value, self.batch_shape, self.event_shape, self.scores)
        d = self.num_items
        theta = self.item_scores().expand(*sample_batch, d).reshape(-1, d)
        edges, spanning = _spanning_trees(value.expand(*sample_batch, n, n).reshape(-1, n, n))
        if self._validate_args:
            check_in_support(self, value, ok=spanning.reshape(sample_batch))
        present = torch.isfinite(theta)
        tree = spanning & ~(edges & ~present).any(-1)
        logp = _tree_log_prob(theta, edges, tree, n)
        logp = torch.where(tree, logp, torch.full_like(logp, -torch.inf))
        return logp.reshape(sample_batch).to(self.scores.dtype)

    def support_probs(self) -> tuple[Tensor, Tensor]:
        """Every spanning tree of nonzero probability (in some batch element) and its probability.

        Trees come from decoding all ``n^(n-2)`` Prüfer sequences, probabilities from
        :meth:`log_prob`; trees using an absent edge of every batch element are left out, and
        the others have probability 0 where they use an absent edge.

        Raises:
            TypeError: if ``n^(n-2)`` exceeds ``MAX_ENUMERATION``.

        Shape:
            ``(S,) + batch_shape + (n, n)`` and ``(S,) + batch_shape``.
        """
        self._check_enumerable("support_probs")
        n = self.num_vertices
        edges = all_spanning_trees(n, self.scores.device)  # (S, D) bool
        present = torch.isfinite(self.item_scores().detach()).reshape(-1, self.num_items)
        uses_absent = (edges.unsqueeze(1) & ~present.unsqueeze(0)).any(-1)  # (S, B)
        if uses_absent.shape[1]:  # an empty batch keeps every tree
            edges = edges[(~uses_absent).any(-1)]
        s = edges.shape[0]
        values = edges_to_adjacency(edges.to(self.scores.dtype))
        values = values.reshape(s, *(1,) * len(self.batch_shape), n, n)
        values = values.expand(s, *self.batch_shape, n, n)
        with own_samples():
            probs = self.log_prob(values).exp()
        return values, probs

    def _in_support(self, value: Tensor) -> Tensor:
        n = self.num_vertices
        lead = value.shape[:-2]
        return _spanning_trees(value.reshape(-1, n, n))[1].reshape(lead)

    def _support_text(self) -> str:
        n = self.num_vertices
        return (
            f"symmetric 0/1 adjacency matrices of the spanning trees of {n} vertices: zero "
            f"diagonal, {n - 1} edges, connected"
        )


# -- helpers ---------------------------------------------------------------------------------


def _spanning_trees(adj: Tensor) -> tuple[Tensor, Tensor]:
    """The edges (bool ``(M, D)``) of adjacency matrices ``(M, n, n)`` and whether each is a
    spanning tree: 0/1, symmetric, zero diagonal, ``n - 1`` edges, connected."""
    n = adj.shape[-1]
    edges = adjacency_to_edges(adj) != 0
    well_formed = (
        ((adj == 0) | (adj == 1)).flatten(1).all(-1)
        & (adj == adj.mT).flatten(1).all(-1)
        & (adj.diagonal(dim1=-2, dim2=-1) == 0).all(-1)
    )
    tree = well_formed & (edges.sum(-1) == n - 1) & connected(edges_to_adjacency(edges))
    return edges, tree


def _check_edges(edges: Tensor, n: int, name: str) -> None:
    """No NaN or ``+inf`` above the diagonal, and every batch element connected."""
    finite = torch.isfinite(edges)
    if bool(finite.all()):
        return
    if bool(torch.isnan(edges).any()):
        raise ValueError(f"{name} contains NaN (above the diagonal)")
    if bool(torch.isposinf(edges).any()):
        raise ValueError(f"{name} contains +inf (above the diagonal)")
    ok = connected(edges_to_adjacency(finite))
    if not bool(ok.all()):
        bad = torch.nonzero(~ok)[0].tolist()
        where = f" at batch index {tuple(bad)}" if bad else ""
        raise ValueError(
            f"{name} has no spanning tree{where}: its present (finite) edges do not connect "
            f"all {n} vertices"
        )


def _tree_log_prob(theta: Tensor, edges: Tensor, tree: Tensor, n: int) -> Tensor:
    """``log sum_orders prod_t exp(theta_{k_t}) / sum_{S_t} exp(theta)`` for each row's tree.

    Rows where ``tree`` is False get a dummy tree (the path ``0-1-...-n-1``) and zero scores,
    so their result is finite (the caller masks it) and their gradients are zero.

    Shape:
        ``theta``: (M, D), ``edges``: bool (M, D), ``tree``: bool (M,); returns (M,).
    """
    m = n - 1
    rows, d = theta.shape
    device = theta.device
    ids = edge_id_matrix(n, device)
    path = torch.zeros(d, dtype=torch.bool, device=device)
    path[ids[torch.arange(m, device=device), torch.arange(1, n, device=device)]] = True
    edges = torch.where(tree.unsqueeze(-1), edges, path)
    theta = torch.where(tree.unsqueeze(-1), theta, torch.zeros_like(theta))
    # The m tree edges of each row, by edge number.
    numbered = torch.where(edges, torch.arange(d, device=device), d)
    tree_edges = torch.sort(numbered, -1).values[:, :m]  # (M, m)
    # Which tree edges lie on the tree path between the endpoints of each edge: edge i is on it
    # iff removing it disconnects them.
    u, v = edge_index(n, device)
    adj = edges_to_adjacency(edges)  # (M, n, n) bool
    one = edges_to_adjacency(torch.nn.functional.one_hot(tree_edges, d).bool())  # (M, m, n, n)
    forests = adj.unsqueeze(1) & ~one
    eye = torch.eye(n, dtype=torch.bool, device=device)
    reach = (forests | eye).float()
    for _ in range(max(1, math.ceil(math.log2(max(n - 1, 1))))):
        reach = ((reach @ reach) > 0).float()
    on_path = reach[..., u, v] == 0  # (M, m, D)
    weights = 1 << torch.arange(m, device=device)
    path_bits = (on_path.long() * weights.unsqueeze(-1)).sum(1)  # (M, D)
    present = torch.isfinite(theta)
    theta_tree = theta.gather(1, tree_edges)  # (M, m)
    layers = subset_layers(m, torch.device(device))
    chunk = max(1, _DP_BUDGET // (2**m * d))
    out = [
        _subset_dp(theta[i : i + chunk], present[i : i + chunk], path_bits[i : i + chunk],
                   theta_tree[i : i + chunk], layers)
        for i in range(0, rows, chunk)
    ]  # fmt: skip
    return torch.cat(out) if out else theta.new_zeros((0,))


def _subset_dp(
    theta: Tensor,
    present: Tensor,
    path_bits: Tensor,
    theta_tree: Tensor,
    layers: tuple[SubsetLayer, ...],
) -> Tensor:
    """The DP over subsets ``A`` of tree edges: ``f(A) = logsumexp_{i in A} [f(A - i) +
    theta_i - Z(A - i)]`` with ``Z(B)`` the logsumexp of the scores of the edges whose tree path
    leaves ``B`` (the candidates once ``B`` is taken); returns ``f(all)``, shape (rows,)."""
    neg_inf = torch.full_like(theta, -torch.inf).unsqueeze(1)

    def log_z(subsets: Tensor) -> Tensor:  # (rows, C)
        outside = (path_bits.unsqueeze(1) & ~subsets.view(1, -1, 1)) != 0
        cand = outside & present.unsqueeze(1)
        return torch.logsumexp(torch.where(cand, theta.unsqueeze(1), neg_inf), -1)

    empty = torch.zeros(1, dtype=torch.long, device=theta.device)
    h = -log_z(empty)  # f(empty) = 0
    f = h
    for k, layer in enumerate(layers, start=1):
        terms = h[:, layer.position] + theta_tree[:, layer.items]  # (rows, C_k, k)
        f = torch.logsumexp(terms, -1)
        if k < len(layers):
            h = f - log_z(layer.subsets)
    return f[:, 0]


__all__ = ["MAX_DP_VERTICES", "SpanningTree", "all_spanning_trees", "connected"]
