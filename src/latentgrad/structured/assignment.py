"""The linear assignment problem (minimum-cost perfect matching), batched: the Hungarian method."""

from __future__ import annotations

import torch
from torch import Tensor


def linear_assignment(cost: Tensor) -> Tensor:
    """Minimum-cost perfect matching of each ``(n, n)`` cost matrix: ``perm[r, i] = j``.

    Shortest augmenting paths with dual potentials (the O(n^3) Hungarian method): row ``i`` is
    added in phase ``i``; a Dijkstra-like search over columns, on reduced costs
    ``cost[i, j] - u[i] - v[j] >= 0``, grows a tree of tight edges from row ``i`` until it
    reaches a free column, updating the potentials by each step's minimum slack; then the path
    is flipped. Phases are shared by the whole batch; the search and the flip take a different
    number of steps per row, and rows that have finished wait (masked) for the others.

    Index 0 of the column arrays is a virtual column that holds the row being added; rows are
    numbered from 1 in ``u`` and ``owner`` (0 = no row).

    Args:
        cost: finite costs, ``(N, n, n)`` (float64 keeps integer-valued costs exact).

    Returns:
        The assignments ``perm``, long ``(N, n)``: row ``i`` goes to column ``perm[:, i]``.

    Example:
        >>> linear_assignment(torch.tensor([[[4.0, 1.0], [2.0, 0.0]]]))
        tensor([[1, 0]])

    References:
        [1] Kuhn, "The Hungarian method for the assignment problem", 1955.
        [2] Jonker and Volgenant, "A shortest augmenting path algorithm for dense and sparse
            linear assignment problems", Computing, 1987.
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


__all__ = ["linear_assignment"]
