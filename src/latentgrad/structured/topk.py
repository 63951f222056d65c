"""Top-k on exponential noise: k-subsets, and with k = n permutations (Plackett-Luce)."""

from __future__ import annotations

import torch
from torch import Tensor

from latentgrad.structured.core import RecursiveAlgorithm, State, Trace


class TopK(RecursiveAlgorithm):
    """Take the ``k`` smallest noise values one at a time: ``S_t`` = the items not yet taken.

    The structure is the ordering: the items taken, first to last, long ``(k,)``. Its law is
    Plackett-Luce (sampling without replacement in proportion to ``exp(theta)``).

    Args:
        n: number of items.
        k: number of steps (``1 <= k <= n``).

    Example:
        >>> import torch
        >>> from latentgrad.structured import TopK, run
        >>> order, trace = run(TopK(4, 2), torch.tensor([[0.3, 0.1, 0.7, 0.2]]),
        ...                    torch.ones(1, 4, dtype=torch.bool))
        >>> order
        tensor([[1, 3]])
        >>> trace.candidates[0].int()
        tensor([[1, 1, 1, 1],
                [1, 0, 1, 1]], dtype=torch.int32)
    """

    def __init__(self, n: int, k: int) -> None:
        if not 1 <= k <= n:
            raise ValueError(f"k must be in [1, n={n}], got {k}")
        self.n = n
        self.k = k
        self.num_items = n
        self.max_steps = k

    def initial_state(self, mask: Tensor) -> State:
        rows = mask.shape[0]
        return {
            "taken": torch.zeros_like(mask),
            "order": torch.zeros((rows, self.k), dtype=torch.long, device=mask.device),
            "step": torch.zeros((rows,), dtype=torch.long, device=mask.device),
        }

    def candidates(self, state: State) -> Tensor:
        more = (state["step"] < self.k).unsqueeze(-1)
        return ~state["taken"] & more

    def advance(self, state: State, choice: Tensor, active: Tensor) -> State:
        taken = state["taken"].clone()
        rows = torch.arange(taken.shape[0], device=taken.device)
        taken[rows, choice] |= active
        order = state["order"].clone()
        step = state["step"]
        slot = step.clamp_max(self.k - 1)
        order[rows, slot] = torch.where(active, choice, order[rows, slot])
        return {"taken": taken, "order": order, "step": step + active.long()}

    def structure(self, state: State) -> Tensor:
        return state["order"]

    def run(self, weights: Tensor, mask: Tensor) -> tuple[Tensor, Trace]:
        """A partial sort: ``topk`` of ``-weights``; the candidate sets follow from the ranks."""
        masked = torch.where(mask, weights, torch.full_like(weights, torch.inf))
        order = torch.topk(masked, self.k, dim=-1, largest=False, sorted=True).indices
        rank = torch.full(weights.shape, self.k, dtype=torch.long, device=weights.device)
        steps = torch.arange(self.k, device=weights.device)
        rank.scatter_(-1, order, steps.expand_as(order))
        cands = (rank.unsqueeze(-2) >= steps.unsqueeze(-1)) & mask.unsqueeze(-2)
        return order, Trace(order, cands)
