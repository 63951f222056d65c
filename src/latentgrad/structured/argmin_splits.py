"""Argmin-splits on exponential noise: binary trees over a sequence (Cartesian trees).

The root is the position of smallest noise; the positions to its left and to its right are split
the same way, recursively. The result is the Cartesian tree of the noise: a binary tree whose
in-order traversal is the sequence ``0 .. n-1``, so every subtree covers an interval (its *span*).
"""

from __future__ import annotations

import torch
from torch import Tensor

from latentgrad._validation import check_int
from latentgrad.structured.core import RecursiveAlgorithm, State, Trace


class ArgminSplits(RecursiveAlgorithm):
    """Recursive argmin-splits of a sequence of ``n`` positions into a binary tree.

    Items are the positions ``0 .. n-1`` (``D = n``). Each step takes the *leftmost* maximal
    segment of positions not taken yet (``S_t``), takes its argmin as the root of that segment
    and splits the segment around it; the root's parent is whichever of the two positions bounding
    the segment was taken last (none for the first step). Taking the leftmost segment first makes
    the steps a pre-order traversal of the tree (node, left subtree, right subtree), so the trace
    and the tree are in bijection and ``S_t`` is the span of the ``t``-th node. ``T = n``; only
    the order of the weights matters (ties go to the lowest position).

    The structure is the parent vector, long ``(n,)``: ``parent[c]`` is the parent position of
    ``c`` (``c < parent[c]``: a left child, ``c > parent[c]``: a right child), ``-1`` at the root.

    Absent positions (``mask`` ``False``) are dropped from the sequence: the tree is built on the
    present positions in their order and an absent position's parent entry is ``-1`` too.
    :class:`~latentgrad.distributions.binary_tree.BinaryTree` has every position present.

    Args:
        n: the length of the sequence, ``n >= 1``.

    Example:
        >>> import torch
        >>> from latentgrad.structured.argmin_splits import ArgminSplits
        >>> from latentgrad.structured import run
        >>> parent, trace = run(ArgminSplits(4), torch.tensor([[0.5, 0.1, 0.7, 0.3]]),
        ...                     torch.ones(1, 4, dtype=torch.bool))
        >>> parent  # 1 is the root; 0 its left child, 3 its right child, 2 the left child of 3
        tensor([[ 1, -1,  3,  1]])
        >>> trace.choices  # pre-order
        tensor([[1, 0, 3, 2]])
        >>> trace.candidates[0].int()  # the span of each node
        tensor([[1, 1, 1, 1],
                [1, 0, 0, 0],
                [0, 0, 1, 1],
                [0, 0, 1, 0]], dtype=torch.int32)

    References:
        [1] Struminsky, Gadetsky, Rakitin, Karpushkin & Vetrov, "Leveraging recursive
            Gumbel-max trick for approximate inference in combinatorial spaces", NeurIPS 2021.
    """

    def __init__(self, n: int) -> None:
        self.n = check_int(n, "n", minimum=1)
        self.num_items = n
        self.max_steps = n

    def initial_state(self, mask: Tensor) -> State:
        rows = mask.shape[0]
        device = mask.device
        minus_one = torch.full((rows, self.n), -1, dtype=torch.long, device=device)
        return {
            "present": mask.clone(),
            "taken": torch.zeros_like(mask),
            "when": minus_one,  # the step at which each position was taken
            "parent": minus_one.clone(),
            "step": torch.zeros((rows,), dtype=torch.long, device=device),
        }

    def candidates(self, state: State) -> Tensor:
        taken = state["taken"]
        free = ~taken & state["present"]
        idx = torch.arange(self.n, device=taken.device)
        first = free.to(torch.int8).argmax(-1, keepdim=True)  # first free position
        # Positions after `first` with no taken position in between; absent ones are skipped.
        before = torch.cumsum(taken.long(), -1)
        same = before == before.gather(-1, first)
        return free & (idx >= first) & same & free.any(-1, keepdim=True)

    def advance(self, state: State, choice: Tensor, active: Tensor) -> State:
        taken, when = state["taken"], state["when"]
        idx = torch.arange(self.n, device=taken.device)
        c = choice.unsqueeze(-1)
        # The nearest taken positions either side of the choice bound its segment.
        left = torch.where(taken & (idx < c), idx, -1).amax(-1)
        right = torch.where(taken & (idx > c), idx, -1)
        right = torch.where(right >= 0, right, self.n).amin(-1)
        right = torch.where(right < self.n, right, -1)
        when_left = torch.where(
            left >= 0, when.gather(-1, left.clamp_min(0).unsqueeze(-1))[:, 0], -1
        )
        when_right = torch.where(
            right >= 0, when.gather(-1, right.clamp_min(0).unsqueeze(-1))[:, 0], -1
        )
        # The bound taken last is the deeper ancestor: the parent.
        parent_of_choice = torch.where(when_left > when_right, left, right)
        hit = (idx == c) & active.unsqueeze(-1)
        step = state["step"]
        return {
            "present": state["present"],
            "taken": taken | hit,
            "when": torch.where(hit, step.unsqueeze(-1), when),
            "parent": torch.where(hit, parent_of_choice.unsqueeze(-1), state["parent"]),
            "step": step + active.long(),
        }

    def structure(self, state: State) -> Tensor:
        return state["parent"]

    def run(self, weights: Tensor, mask: Tensor) -> tuple[Tensor, Trace]:
        """The Cartesian tree from nearest-smaller neighbours, without stepping.

        With the order ``u < v`` iff ``(w_u, u) < (w_v, v)`` (ties to the lowest position), the
        span of ``v`` runs between its nearest smaller present neighbours; its parent is the
        larger of the two; its pre-order rank is the number of present positions left of its
        span plus its ancestors right of it. ``O(n^2)`` memory per row.
        """
        rows, n = weights.shape
        device = weights.device
        idx = torch.arange(n, device=device)
        wu = weights.unsqueeze(-1)  # (N, u, 1)
        wv = weights.unsqueeze(-2)  # (N, 1, v)
        u_first = (idx.unsqueeze(-1) < idx).unsqueeze(0)  # u < v
        u_after = (idx.unsqueeze(-1) > idx).unsqueeze(0)  # u > v
        smaller = mask.unsqueeze(-1) & ((wu < wv) | ((wu == wv) & u_first))  # (N, u, v)
        # Nearest smaller neighbours by max-reductions of masked positions, in a small integer
        # dtype (reductions of int64, and torch.where, are much slower on CPU).
        small = torch.int16 if n < 2**15 - 1 else torch.int32
        prev = (smaller & u_first) * (idx + 1).to(small).view(1, n, 1)
        prev = prev.amax(-2).long() - 1  # (N, v); -1: none
        nxt = (smaller & u_after) * (n - idx).to(small).view(1, n, 1)
        nxt = n - nxt.amax(-2).long()  # n: none
        lo, hi = prev + 1, nxt - 1
        # Parent: the larger of the two nearest smaller neighbours (the deeper ancestor).
        has_prev, has_next = prev >= 0, nxt < n
        prev_c, next_c = prev.clamp_min(0), nxt.clamp_max(n - 1)
        prev_below_next = smaller.flatten(-2).gather(-1, prev_c * n + next_c)
        parent = torch.where(has_prev & has_next, torch.where(prev_below_next, nxt, prev), -1)
        parent = torch.where(has_prev & ~has_next, prev, parent)
        parent = torch.where(~has_prev & has_next, nxt, parent)
        parent = torch.where(mask, parent, -1)
        # Pre-order rank: present positions left of the span, plus ancestors right of v.
        count_before = torch.cumsum(mask.long(), -1) - mask.long()
        left_of_span = count_before.gather(-1, lo)
        ancestors_right = (mask.unsqueeze(-1) & u_after & (lo.unsqueeze(-1) <= idx)).long().sum(-2)
        rank = torch.where(mask, left_of_span + ancestors_right, n)  # absent -> a dropped row
        span = (lo.unsqueeze(-1) <= idx) & (idx <= hi.unsqueeze(-1)) & mask.unsqueeze(-2)
        choices = torch.zeros((rows, n + 1), dtype=torch.long, device=device)
        choices.scatter_(-1, rank, idx.expand(rows, n))
        cands = torch.zeros((rows, n + 1, n), dtype=torch.bool, device=device)
        cands.scatter_(-2, rank.unsqueeze(-1).expand(rows, n, n), span & mask.unsqueeze(-1))
        return parent, Trace(choices[:, :n], cands[:, :n])


__all__ = ["ArgminSplits"]
