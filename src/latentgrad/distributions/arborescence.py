"""Spanning arborescences sampled by Chu-Liu-Edmonds on exponential edge noise."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from torch.distributions import constraints

from latentgrad._validation import check_index, check_structure_scores, is_meta
from latentgrad.distributions._structured import StructuredDistribution
from latentgrad.structured.chu_liu_edmonds import ChuLiuEdmonds

MAX_ENUMERATED_VERTICES = 6
"""Largest ``n`` for which :meth:`Arborescence.log_prob` and ``entropy`` enumerate traces."""


def _unreachable_rows(present: Tensor, root: int) -> Tensor:
    """Which rows of ``present`` (N, n, n) leave some vertex unreachable from ``root``.

    Transitive closure by repeated squaring of the adjacency (with self-loops): ``O(log n)``
    batched matrix products.
    """
    n = present.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=present.device)
    reach = (present | eye).to(torch.float32)
    hops = 1
    while hops < n - 1:
        reach = (reach @ reach).clamp_max_(1.0)
        hops *= 2
    return ~(reach[:, root] > 0).all(-1)


class Arborescence(StructuredDistribution):
    """Spanning arborescences rooted at ``root``: Chu-Liu-Edmonds on exponential edge noise.

    Every edge ``u -> v`` gets noise ``E_uv ~ Exponential(exp(scores[..., u, v]))``, and the
    sample is the spanning arborescence (a directed spanning tree with every edge pointing away
    from ``root``) of least total noise ``sum E_uv``, found by the recursive form of
    Chu-Liu-Edmonds (:class:`~latentgrad.structured.chu_liu_edmonds.ChuLiuEdmonds`). Its
    execution trace gives :meth:`trace_log_prob`, :meth:`conditional_noise` and, for small
    ``n``, exact probabilities by enumeration ([1]): :meth:`log_prob` and :meth:`entropy`
    enumerate every trace, for ``n <= 6`` only (``n = 6`` takes seconds).

    .. note::
        The law is **not** that of the maximum arborescence of ``scores + Gumbel`` (the
        "perturb-and-MAP" arborescence): Chu-Liu-Edmonds on ``E`` minimises the *sum* of
        exponentials, which is not monotone in the sum of Gumbels ``-log E``; the two laws
        differ already at 3 vertices. Neither is the Gibbs law ``prod exp(score)`` of the
        arborescence.

    The noise is kept in log space (``log E``, see
    :func:`latentgrad.structured.sample_noise`); the algorithm adds costs, so it runs on
    ``E / min(E) = exp(log E - min log E)`` in float64 per batch element (the scale does not
    change the arborescence). When the present scores of one batch element spread over more
    than about 700 (the float64 exponent range), the largest costs overflow and are clamped to
    the largest finite float64: results stay finite and valid arborescences, but the law is
    approximate there. :meth:`mode` runs on ``-scores`` directly and has no such limit.

    Args:
        scores: edge scores, ``batch_shape + (n, n)`` with ``n >= 2``; ``scores[..., u, v]`` is
            the score of the edge from the head ``u`` to the dependent ``v``. The diagonal and
            the column ``root`` are ignored (those edges are absent); ``-inf`` marks an absent
            edge. NaN and ``+inf`` are rejected, and every vertex must be reachable from
            ``root`` through present edges in every batch element.
        root: the root vertex, an int in ``[0, n)``.
        validate_args: whether :meth:`log_prob` checks that its value is the adjacency matrix
            of an arborescence rooted at ``root`` (``None``: torch's default, on unless
            ``Distribution.set_default_validate_args(False)``); the parameters are always
            checked.

    Shape:
        ``batch_shape = scores.shape[:-2]``, ``event_shape = (n, n)``; a value is the adjacency
        matrix in the dtype of ``scores``: ``A[..., u, v] = 1`` iff ``u -> v`` is in the
        arborescence (so every column but ``root``'s sums to 1). The noise has ``n * n``
        coordinates, the edge ``u -> v`` at ``u * n + v``.

    Example:
        >>> import torch
        >>> from latentgrad.distributions.arborescence import Arborescence
        >>> scores = torch.tensor([[0.0, 5.0, 0.0],
        ...                        [0.0, 0.0, 5.0],
        ...                        [0.0, 0.0, 0.0]])
        >>> q = Arborescence(scores, root=0)
        >>> q.mode()  # 0 -> 1 -> 2, total score 10
        tensor([[0., 1., 0.],
                [0., 0., 1.],
                [0., 0., 0.]])
        >>> q.support_size()
        3
        >>> z = q.sample((4,))
        >>> z.shape, bool((z.sum(-2)[:, 1:] == 1).all())
        (torch.Size([4, 3, 3]), True)
        >>> values, probs = q.support_probs()
        >>> round(float(probs.sum()), 6)
        1.0

    References:
        [1] Struminsky, Gadetsky, Rakitin, Karpushkin, Vetrov, "Leveraging Recursive
        Gumbel-Max Trick for Approximate Inference in Combinatorial Spaces", NeurIPS 2021.
        [2] Chu and Liu, "On the shortest arborescence of a directed graph", Scientia Sinica,
        1965.
        [3] Edmonds, "Optimum branchings", J. Res. Nat. Bur. Standards, 1967.
    """

    _score_event_dims: ClassVar[int] = 2
    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {
        "scores": constraints.independent(constraints.real, 2)
    }
    # Every Chu-Liu-Edmonds trace is enumerated: up to MAX_ENUMERATED_VERTICES vertices.
    max_support_size = MAX_ENUMERATED_VERTICES ** (MAX_ENUMERATED_VERTICES - 2)

    def __init__(self, scores: Tensor, root: int = 0, validate_args: bool | None = None) -> None:
        scores = check_structure_scores(scores, "scores", 2)
        n = scores.shape[-1]
        if scores.shape[-2] != n:
            raise ValueError(
                f"scores must be square in its last two dims, got shape {tuple(scores.shape)}"
            )
        if n < 2:
            raise ValueError(f"scores must have n >= 2 vertices, got shape {tuple(scores.shape)}")
        self.scores = scores
        self.root = root = check_index(root, "root", n)
        self._algorithm = ChuLiuEdmonds(n, root)
        absent = torch.eye(n, dtype=torch.bool, device=scores.device)
        absent[:, root] = True
        self._absent = absent
        present = torch.isfinite(scores.detach()) & ~absent
        bad = None if is_meta(scores) else _unreachable_rows(present.reshape(-1, n, n), root)
        if bad is not None and bool(bad.any()):
            index = tuple(torch.unravel_index(bad.nonzero()[0, 0], scores.shape[:-2]))
            where = f" (batch index {tuple(int(i) for i in index)})" if index else ""
            raise ValueError(
                f"scores leaves some vertex unreachable from root={root} through edges of "
                f"finite score{where}"
            )
        self._init_batch((n, n), validate_args)

    @property
    def num_vertices(self) -> int:
        """``n``, the number of vertices."""
        return self.scores.shape[-1]

    @property
    def algorithm(self) -> ChuLiuEdmonds:
        return self._algorithm

    def item_scores(self) -> Tensor:
        """Edge scores flattened to ``batch_shape + (n * n,)``, ``-inf`` on the diagonal, on the
        column ``root`` and on absent edges. Differentiable in :attr:`scores`."""
        theta = self.scores.masked_fill(self._absent, -torch.inf)
        return theta.reshape(*self.batch_shape, self.num_items)

    def _costs(self, noise: Tensor) -> Tensor:
        """Linear costs ``exp(log E - min log E)`` in float64 (absent edges ``+inf``)."""
        x = noise.to(torch.float64)
        low = x.amin(-1, keepdim=True)
        costs = (x - low).exp().clamp_max_(torch.finfo(torch.float64).max)
        return torch.where(torch.isfinite(x), costs, torch.inf)

    def _to_value(self, structure: Tensor) -> Tensor:
        """Adjacency ``(M, n, n)`` from parent vectors ``(M, n)`` (``-1`` at the root)."""
        n = structure.shape[-1]
        tails = torch.arange(n, device=structure.device).unsqueeze(-1)
        adjacency = structure.unsqueeze(-2) == tails  # [u, v]: parent[v] == u
        return adjacency.to(self.scores.dtype)

    def support_size(self) -> int:
        """``n ** (n - 2)``: rooted spanning arborescences of the complete digraph (Cayley's
        formula); an upper bound when edges are absent."""
        n = self.num_vertices
        return n ** (n - 2)

    def _check_enumerable(self, what: str) -> None:
        # Structures have several traces each: the complete digraph on 6 vertices has 1296
        # arborescences but about 385k traces, on 7 vertices more than enumerate_traces builds.
        if self.num_vertices > MAX_ENUMERATED_VERTICES:
            raise TypeError(
                f"Arborescence.{what} enumerates every Chu-Liu-Edmonds trace, too many for "
                f"n={self.num_vertices} > {MAX_ENUMERATED_VERTICES} vertices; use "
                "trace_log_prob (or noise_log_prob) instead"
            )
        super()._check_enumerable(what)

    def _repr_settings(self) -> str:
        return f", root={self.root}"

    def _in_support(self, value: Tensor) -> Tensor:
        n = self.num_vertices
        lead = value.shape[:-2]
        adj = value.reshape(-1, n, n)
        ones = adj == 1
        parents = ones.sum(-2)  # (M, n): the parents of each vertex
        not_root = torch.arange(n, device=value.device) != self.root
        well_formed = (
            ((adj == 0) | ones).flatten(1).all(-1)
            & ~ones.diagonal(dim1=-2, dim2=-1).any(-1)
            & (parents == not_root.long()).all(-1)
        )
        # One parent each and every vertex reached from the root: no cycle.
        ok = well_formed & ~_unreachable_rows(ones, self.root)
        return ok.reshape(lead)

    def _support_text(self) -> str:
        return (
            f"0/1 adjacency matrices of the arborescences of {self.num_vertices} vertices rooted "
            f"at root = {self.root}: one parent for every vertex but the root, none for the "
            "root, every vertex reached from the root"
        )


__all__ = ["Arborescence"]
