"""Row/column elimination on exponential noise: perfect bipartite matchings of an n x n grid.

Each step takes the smallest noise entry among the rows and columns still free, matches that row
to that column and removes both: the greedy matching of the noise matrix.
"""

from __future__ import annotations

import torch
from torch import Tensor

from latentgrad._validation import check_int
from latentgrad.structured.core import RecursiveAlgorithm, State, Trace
from latentgrad.structured.core import run as _generic_run

ROUNDS_MIN_N = 20
"""From this ``n`` on, :meth:`Elimination.run` uses :meth:`Elimination.run_rounds`; below it the
generic driver's ``n`` steps are cheaper on CPU."""


class Elimination(RecursiveAlgorithm):
    """Greedy row/column elimination on an ``n x n`` matrix: a perfect matching in ``n`` steps.

    Items are the entries ``(i, j)``, flattened as ``i * n + j`` (``D = n * n``). ``S_t`` is
    every entry whose row and column are both still free; the argmin ``(i, j)`` matches row ``i``
    to column ``j`` and removes both. ``T = n``; only the order of the weights matters (ties go to
    the lowest flat index).

    The structure is the assignment ``sigma``, long ``(n,)``: ``sigma[i]`` is the column of row
    ``i``. Absent entries (``mask`` ``False``) are never taken; if the free rows and columns have
    no present entry left, the row stops early and its unmatched rows get ``sigma = -1``.
    :class:`~latentgrad.distributions.matching.Matching` has every entry present.

    Args:
        n: the number of rows (and columns), ``n >= 1``.

    Example:
        >>> import torch
        >>> from latentgrad.structured.elimination import Elimination
        >>> from latentgrad.structured import run
        >>> w = torch.tensor([[0.5, 0.2, 0.9],
        ...                   [0.1, 0.3, 0.8],
        ...                   [0.4, 0.6, 0.7]]).reshape(1, 9)
        >>> sigma, trace = run(Elimination(3), w, torch.ones(1, 9, dtype=torch.bool))
        >>> sigma  # (1, 0) first, then (0, 1), then (2, 2)
        tensor([[1, 0, 2]])
        >>> trace.choices
        tensor([[3, 1, 8]])
        >>> trace.candidates[0, 1].reshape(3, 3).int()  # row 1 and column 0 are gone
        tensor([[0, 1, 1],
                [0, 0, 0],
                [0, 1, 1]], dtype=torch.int32)

    References:
        [1] Struminsky, Gadetsky, Rakitin, Karpushkin & Vetrov, "Leveraging recursive
            Gumbel-max trick for approximate inference in combinatorial spaces", NeurIPS 2021.
    """

    def __init__(self, n: int) -> None:
        self.n = check_int(n, "n", minimum=1)
        self.num_items = n * n
        self.max_steps = n

    def initial_state(self, mask: Tensor) -> State:
        rows = mask.shape[0]
        device = mask.device
        return {
            "free_rows": torch.ones((rows, self.n), dtype=torch.bool, device=device),
            "free_cols": torch.ones((rows, self.n), dtype=torch.bool, device=device),
            "sigma": torch.full((rows, self.n), -1, dtype=torch.long, device=device),
        }

    def candidates(self, state: State) -> Tensor:
        grid = state["free_rows"].unsqueeze(-1) & state["free_cols"].unsqueeze(-2)
        return grid.flatten(-2)

    def advance(self, state: State, choice: Tensor, active: Tensor) -> State:
        idx = torch.arange(self.n, device=choice.device)
        i = (choice // self.n).unsqueeze(-1)
        j = (choice % self.n).unsqueeze(-1)
        act = active.unsqueeze(-1)
        row_hit = (idx == i) & act
        return {
            "free_rows": state["free_rows"] & ~row_hit,
            "free_cols": state["free_cols"] & ~((idx == j) & act),
            "sigma": torch.where(row_hit, j, state["sigma"]),
        }

    def structure(self, state: State) -> Tensor:
        return state["sigma"]

    def run(self, weights: Tensor, mask: Tensor) -> tuple[Tensor, Trace]:
        """The generic driver for ``n < ROUNDS_MIN_N``, :meth:`run_rounds` from there on."""
        if self.n < ROUNDS_MIN_N:
            return _generic_run(self, weights, mask)
        return self.run_rounds(weights, mask)

    def run_rounds(self, weights: Tensor, mask: Tensor) -> tuple[Tensor, Trace]:
        """Greedy matching by rounds of locally dominant entries, then the trace by sorting.

        An entry that is the smallest (ties to the lowest index) of its free row and of its free
        column is taken by the greedy elimination, and no entry sharing its row or column is;
        every round matches all such entries at once (the global minimum always is one), so the
        number of rounds is at most ``n`` and typically much smaller. The greedy steps take the
        matched entries in increasing order of weight, which gives the trace. Same result as the
        generic driver (weights of present entries must be below ``+inf``).
        """
        rows = weights.shape[0]
        n = self.n
        device = weights.device
        inf = torch.tensor(torch.inf, dtype=weights.dtype, device=device)
        masked = torch.where(mask, weights, inf)  # (N, n * n), flat entries
        idx = torch.arange(n, device=device)
        sigma = torch.full((rows, n), -1, dtype=torch.long, device=device)  # row -> column
        inverse = torch.full((rows, n), -1, dtype=torch.long, device=device)  # column -> row
        # Broadcasting over small trailing dims is slow on CPU: expand rows/columns to flat
        # entries with repeat_interleave / repeat instead.
        for _ in range(n):
            free_entry = (sigma < 0).repeat_interleave(n, -1) & (inverse < 0).repeat(1, n)
            live_entry = mask & free_entry
            if not bool(live_entry.any()):
                break
            grid = masked.view(rows, n, n)
            best_col = grid.min(-1).indices  # (N, rows), ties to the lowest column
            best_row = grid.min(-2).indices  # (N, cols), ties to the lowest row
            live = live_entry.view(rows, n, n).any(-1)
            row_done = live & (best_row.gather(-1, best_col) == idx)
            col_done = row_done.gather(-1, best_row) & (best_col.gather(-1, best_row) == idx)
            sigma = torch.where(row_done, best_col, sigma)
            inverse = torch.where(col_done, best_row, inverse)
            gone = row_done.repeat_interleave(n, -1) | col_done.repeat(1, n)
            masked = masked.masked_fill(gone, inf)
        # Order of the steps: matched entries by weight (ties by flat index, i.e. by row).
        matched = sigma >= 0
        entry = idx * n + sigma.clamp_min(0)  # (N, rows)
        key = torch.where(matched, weights.gather(-1, entry), inf)
        order = torch.sort(key, dim=-1, stable=True).indices  # rows, first step first
        steps_done = matched.sum(-1, keepdim=True)
        valid = idx < steps_done  # (N, T)
        choices = torch.where(valid, entry.gather(-1, order), 0)
        rank = torch.where(matched, order.argsort(-1), n)  # unmatched rows stay free
        col_rank = torch.where(inverse >= 0, rank.gather(-1, inverse.clamp_min(0)), n)
        # Entry (i, j) is a candidate at the steps t <= last: both free, and t a real step.
        last = torch.minimum(rank.repeat_interleave(n, -1), col_rank.repeat(1, n))
        last = torch.minimum(last, steps_done - 1)
        last = torch.where(mask, last, -1)
        cands = last.unsqueeze(-2) >= idx.unsqueeze(-1)
        return sigma, Trace(choices, cands)


__all__ = ["ROUNDS_MIN_N", "Elimination"]
