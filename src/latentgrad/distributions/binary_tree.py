"""Binary trees over a sequence: recursive argmin-splits of exponential noise."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from latentgrad._numerics import upcast
from latentgrad._validation import check_finite_scores, check_in_support, check_sample
from latentgrad.distributions._structured import StructuredDistribution
from latentgrad.structured.argmin_splits import ArgminSplits


class BinaryTree(StructuredDistribution):
    """Binary trees whose in-order traversal is the sequence ``0 .. n-1``, by argmin-splits.

    Draw ``E_v ~ Exponential(exp(scores_v))`` for each position; the root is the position of
    smallest ``E``, its left subtree is built the same way from the positions to its left and its
    right subtree from those to its right (the Cartesian tree of ``E``). Every subtree covers an
    interval of positions, its *span*, and

        ``log q(tree) = sum_v [scores_v - logsumexp_{u in span(v)} scores_u]``

    (the root of each span is its argmin). The execution trace is the pre-order traversal with
    the spans as candidate sets (:class:`~latentgrad.structured.argmin_splits.ArgminSplits`), in
    bijection with the tree, so :meth:`log_prob` equals :meth:`trace_log_prob`. There are
    ``Catalan(n)`` trees. This is the latent-tree construction of [1] (e.g. for latent parse
    trees or non-monotonic generation orders).

    Args:
        scores: log-rates of the positions, shape ``batch_shape + (n,)``, ``n >= 1``, finite
            (a position of a sequence cannot be left out, so ``-inf`` is rejected as well as NaN
            and ``+inf``).
        validate_args: whether :meth:`log_prob` checks that its value is the adjacency matrix
            of a binary tree with in-order ``0 .. n-1`` (``None``: torch's default); the
            parameters are always checked.

    Shape:
        ``batch_shape = scores.shape[:-1]``; a value is the adjacency matrix ``A`` of the tree,
        ``event_shape = (n, n)``, 0/1 in the dtype of ``scores``, ``A[p, c] = 1`` iff ``p`` is
        the parent of ``c`` (a left child if ``c < p``, a right child if ``c > p``). Noise and
        traces have ``D = T = n``.

    Example:
        >>> import torch
        >>> from latentgrad.distributions.binary_tree import BinaryTree
        >>> q = BinaryTree(torch.tensor([0.0, 2.0, 1.0, -1.0]))
        >>> q.mode()  # 1 is the root, 0 its left child, 2 its right child, 3 the child of 2
        tensor([[0., 0., 0., 0.],
                [1., 0., 1., 0.],
                [0., 0., 0., 1.],
                [0., 0., 0., 0.]])
        >>> z, noise, trace = q.sample_with_trace((2,))
        >>> torch.allclose(q.log_prob(z), q.trace_log_prob(trace))
        True
        >>> values, probs = q.support_probs()
        >>> q.support_size(), values.shape[0], round(float(probs.sum()), 6)
        (14, 14, 1.0)

    References:
        [1] Struminsky, Gadetsky, Rakitin, Karpushkin & Vetrov, "Leveraging recursive
            Gumbel-max trick for approximate inference in combinatorial spaces", NeurIPS 2021.
    """

    def __init__(self, scores: Tensor, validate_args: bool | None = None) -> None:
        self.scores = check_finite_scores(
            scores, "scores", 1, "every position of the sequence is in the tree"
        )
        n = self.scores.shape[-1]
        self._init_batch((n, n), validate_args)

    @property
    def algorithm(self) -> ArgminSplits:
        return ArgminSplits(self.scores.shape[-1])

    def item_scores(self) -> Tensor:
        return self.scores

    def _to_value(self, structure: Tensor) -> Tensor:
        return parents_to_adjacency(structure, self.scores.dtype)

    def support_size(self) -> int:
        """``Catalan(n) = (2n)! / (n! (n+1)!)``."""
        n = self.scores.shape[-1]
        return math.comb(2 * n, n) // (n + 1)

    def mode(self) -> Tensor:  # type: ignore[override]
        """Argmax-splits of the scores (argmin-splits of ``-scores``): the root is the position
        of largest score, and so on recursively; ties go to the lowest position.

        It is the tree at zero Gumbel noise, not necessarily the most probable tree.
        Shape: ``batch_shape + (n, n)``.
        """
        return super().mode()

    def _in_support(self, value: Tensor) -> Tensor:
        return _descendants(value)[1]

    def _support_text(self) -> str:
        n = self.scores.shape[-1]
        return (
            f"0/1 adjacency matrices of the binary trees with in-order 0, ..., {n - 1}: one "
            "root, one parent for every other node, at most one child on each side, every "
            "subtree an interval"
        )

    def log_prob(self, value: Tensor) -> Tensor:
        """Exact ``log q(tree) = sum_v [scores_v - logsumexp_{u in span(v)} scores_u]``.

        The spans come from the descendant relation (the transitive closure of ``A``, by
        ``ceil(log2 n)`` boolean squarings). A value that is not the adjacency matrix of a binary
        tree with in-order ``0 .. n-1`` (entries not 0/1, several roots, a cycle, a span that is
        not an interval, two children on one side) raises ``ValueError``; with
        ``validate_args=False`` it gets ``-inf``, with a zero gradient.

        Shape:
            ``value``: ``sample_shape + batch_shape + (n, n)``; returns
            ``sample_shape + batch_shape`` in the dtype of ``scores``.
        """
        sample_batch = check_sample(value, self.batch_shape, self.event_shape, self.scores)
        n = self.scores.shape[-1]
        theta = upcast(self.scores).expand(*sample_batch, n)
        desc, valid = _descendants(value)
        if self._validate_args:
            check_in_support(self, value, ok=valid)
        neg_inf = torch.full_like(theta, -torch.inf)
        span_lse = torch.logsumexp(
            torch.where(desc, theta.unsqueeze(-2), neg_inf.unsqueeze(-2)), -1
        )
        logp = (theta - span_lse).sum(-1)
        return torch.where(valid, logp, torch.full_like(logp, -torch.inf)).to(self.scores.dtype)


def parents_to_adjacency(parent: Tensor, dtype: torch.dtype) -> Tensor:
    """Adjacency ``A[..., p, c] = 1`` iff ``parent[..., c] == p`` (``-1``: no parent).

    Shape:
        ``parent``: ``(*, n)`` long; returns ``(*, n, n)`` in ``dtype``.
    """
    n = parent.shape[-1]
    # Column 0 of the one-hot of ``parent + 1`` stands for "no parent" and is dropped.
    child_rows = torch.nn.functional.one_hot(parent + 1, n + 1)[..., 1:]  # (*, c, p)
    return child_rows.transpose(-1, -2).to(dtype)


def _descendants(value: Tensor) -> tuple[Tensor, Tensor]:
    """Descendant-or-self relation ``desc[..., v, u]`` of an adjacency, and whether the value is
    a binary tree with in-order ``0 .. n-1``."""
    n = value.shape[-1]
    device = value.device
    binary = ((value == 0) | (value == 1)).flatten(-2).all(-1)
    edge = value == 1
    eye = torch.eye(n, dtype=torch.bool, device=device)
    reach = edge | eye
    for _ in range(max(0, math.ceil(math.log2(n)))):
        r = reach.to(torch.float32)
        reach = (r @ r) > 0
    idx = torch.arange(n, device=device)
    parents = edge.sum(-2)  # (..., c)
    one_root = (parents == 0).sum(-1) == 1
    tree = (
        binary
        & one_root
        & (parents <= 1).all(-1)
        & ~(edge & eye).any(-1).any(-1)
        # From the root every position is reached: connected, hence acyclic (n - 1 edges).
        & (reach & (parents == 0).unsqueeze(-1)).any(-2).all(-1)
    )
    # Each span is an interval, and each node has at most one child on each side.
    size = reach.sum(-1)
    lo = torch.where(reach, idx, n).amin(-1)
    hi = torch.where(reach, idx, -1).amax(-1)
    intervals = (hi - lo + 1 == size).all(-1)
    left_children = (edge & (idx < idx.unsqueeze(-1))).sum(-1)
    right_children = (edge & (idx > idx.unsqueeze(-1))).sum(-1)
    sides = ((left_children <= 1) & (right_children <= 1)).all(-1)
    return reach, tree & intervals & sides


__all__ = ["BinaryTree", "parents_to_adjacency"]
