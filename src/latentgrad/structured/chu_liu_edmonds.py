"""Chu-Liu-Edmonds on exponential noise: minimum-cost spanning arborescences.

The recursive, stochastic-invariant form of Chu-Liu-Edmonds (Struminsky et al. 2021): every
step picks the cheapest edge entering one *supernode* (a vertex, or a contracted cycle of
supernodes) among the edges coming from outside it, and the driver subtracts that step's
minimum from all of the step's candidates, so later steps compare *reduced* costs. A chosen
edge that closes a cycle of chosen edges contracts the cycle into a new supernode, which then
needs an in-edge of its own. When every supernode but the root's has one, the arborescence is
read off by expanding the contractions from the outermost one inwards.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from latentgrad import _native
from latentgrad._validation import check_index, check_int, check_tensor
from latentgrad.structured.core import RecursiveAlgorithm, State, Trace
from latentgrad.structured.core import run as _generic_run


def _jump_rounds(n: int) -> int:
    """Doubling rounds ``K`` with ``2**K >= n``: enough to walk any path of ``n`` nodes."""
    return max(1, (n - 1).bit_length())


def _image(jump: Tensor, marked: Tensor) -> Tensor:
    """Rows of ``{jump[x] : marked[x]}`` as a bool mask (``jump`` long, ``marked`` bool)."""
    hits = torch.zeros(marked.shape, dtype=torch.int32, device=marked.device)
    return hits.scatter_add_(1, jump, marked.to(torch.int32)) > 0


class ChuLiuEdmonds(RecursiveAlgorithm):
    """Chu-Liu-Edmonds as a recursive algorithm on additive edge costs (``reduced_costs``).

    Items are the directed edges ``u -> v`` of ``n`` vertices, flattened as ``u * n + v``
    (``D = n * n``). Self-loops and edges into ``root`` are never candidates, whatever the mask.

    Supernodes have ids ``0..n-1`` (the vertices) and ``n, n+1, ...`` (contractions, in the
    order they are made; at most ``n - 2``). Each step takes the lowest-id supernode other than
    the root's that has no chosen in-edge; its candidates are the present edges from a vertex
    outside it into a vertex inside it, and the driver takes the one of least residual cost.
    If the chosen edge closes a cycle of chosen edges among the supernodes, the cycle is
    contracted into a new supernode (detected batched by pointer jumping over the supernodes'
    parent pointers, ``O(log n)`` gathers). Every supernode but the root's gets exactly one step,
    so there are at most ``(n - 1) + (n - 2) = 2n - 3`` steps.

    The structure is the parent vector, long ``(n,)``: ``parent[v]`` is the tail of the edge
    into ``v``, and ``parent[root] = -1``. It is found by expanding the contractions, latest
    first: the edge chosen for a contraction replaces the in-edge of the member it enters,
    recursively. (Taking, for each vertex, the last chosen edge whose head is that vertex is
    not enough: an outer contraction may enter an inner one at another vertex, which voids the
    inner contraction's own in-edge.)

    Every vertex must be reachable from ``root`` through present edges; otherwise the
    algorithm stops at the first supernode with no candidate and the structure is not an
    arborescence (entries ``-1``, or a cycle).

    :meth:`run` is a faster equivalent of the generic driver: the first ``n - 1`` steps (one
    per vertex) do not interact, so they are taken at once, and only the contracted supernodes
    are processed one step at a time. It returns the same structure and trace.

    Args:
        n: number of vertices (``n >= 2``).
        root: the root vertex, in ``[0, n)``.

    Example:
        >>> import torch
        >>> from latentgrad.structured.chu_liu_edmonds import ChuLiuEdmonds
        >>> from latentgrad.structured import run
        >>> costs = torch.tensor([[[9.0, 4.0, 5.0],
        ...                        [9.0, 9.0, 1.0],
        ...                        [9.0, 1.0, 9.0]]]).reshape(1, 9)
        >>> alg = ChuLiuEdmonds(3, root=0)
        >>> parent, trace = run(alg, costs, torch.isfinite(costs))
        >>> parent  # 0 -> 1 -> 2
        tensor([[-1,  0,  1]])
        >>> trace.choices  # edge into 1, edge into 2, then into the contraction {1, 2}
        tensor([[7, 5, 1]])

    References:
        [1] Struminsky, Gadetsky, Rakitin, Karpushkin, Vetrov, "Leveraging Recursive
        Gumbel-Max Trick for Approximate Inference in Combinatorial Spaces", NeurIPS 2021.
        [2] Chu and Liu, "On the shortest arborescence of a directed graph", 1965.
        [3] Edmonds, "Optimum branchings", 1967.
    """

    reduced_costs = True

    def __init__(self, n: int, root: int = 0) -> None:
        self.n = check_int(n, "n", minimum=2)
        self.root = check_index(root, "root", n)
        self.num_items = n * n
        self.max_steps = 2 * n - 3
        self.num_supernodes = 2 * n - 2
        self.max_contractions = n - 2

    # -- the state machine -----------------------------------------------------------------

    def initial_state(self, mask: Tensor) -> State:
        rows, dev = mask.shape[0], mask.device
        n, s = self.n, self.num_supernodes
        alive = torch.zeros((rows, s), dtype=torch.bool, device=dev)
        alive[:, :n] = True
        return {
            "label": torch.arange(n, device=dev).expand(rows, n).clone(),
            "chosen": torch.full((rows, s), -1, dtype=torch.long, device=dev),
            "alive": alive,
            "next": torch.full((rows,), n, dtype=torch.long, device=dev),
            "history": torch.zeros((rows, self.max_contractions, n), dtype=torch.long, device=dev),
        }

    def _pending(self, state: State) -> tuple[Tensor, Tensor]:
        """The lowest-id supernode waiting for an in-edge (N,), and whether there is one (N,)."""
        waiting = state["alive"] & (state["chosen"] < 0)
        waiting[:, self.root] = False
        return waiting.to(torch.uint8).argmax(-1), waiting.any(-1)

    def candidates(self, state: State) -> Tensor:
        current, has = self._pending(state)
        inside = state["label"] == current.unsqueeze(-1)  # (N, n) vertices of the supernode
        inside = inside & has.unsqueeze(-1)
        cand = ~inside.unsqueeze(-1) & inside.unsqueeze(-2)  # [u, v]: u outside, v inside
        return cand.reshape(-1, self.num_items)

    def advance(self, state: State, choice: Tensor, active: Tensor) -> State:
        current, has = self._pending(state)
        active = active & has
        return self._choose(state, current, choice, active)

    def _parents(self, label: Tensor, chosen: Tensor, alive: Tensor) -> Tensor:
        """Parent pointer of each supernode: the supernode of its chosen edge's tail (or itself)."""
        rows = label.shape[0]
        own = torch.arange(self.num_supernodes, device=label.device).expand(rows, -1)
        has_edge = alive & (chosen >= 0)
        tail = torch.div(chosen.clamp_min(0), self.n, rounding_mode="floor")
        return torch.where(has_edge, label.gather(1, tail.clamp_max(self.n - 1)), own)

    def _choose(self, state: State, current: Tensor, choice: Tensor, active: Tensor) -> State:
        """Give supernode ``current`` the in-edge ``choice`` (active rows); contract a cycle."""
        n = self.n
        label, chosen, alive = state["label"], state["chosen"], state["alive"]
        rows = torch.arange(label.shape[0], device=label.device)
        # The forest of chosen edges before this step: ``current`` is one of its roots, and the
        # new edge closes a cycle iff ``current`` is an ancestor of its tail's supernode.
        parent = self._parents(label, chosen, alive)
        tail_node = label[rows, torch.div(choice, n, rounding_mode="floor")]
        on_path = torch.nn.functional.one_hot(tail_node, self.num_supernodes).bool()
        jump = parent
        for _ in range(_jump_rounds(n)):
            on_path = on_path | _image(jump, on_path)
            jump = jump.gather(1, jump)
        cycle = active & on_path[rows, current]
        chosen = chosen.clone()
        chosen[rows, current] = torch.where(active, choice, chosen[rows, current])
        if not bool(cycle.any()):
            return {**state, "chosen": chosen}
        members = on_path & cycle.unsqueeze(-1)
        new_id = state["next"]
        slot = (new_id - n).clamp(0, max(self.max_contractions - 1, 0))
        history = state["history"].clone()
        history[rows, slot] = torch.where(cycle.unsqueeze(-1), label, history[rows, slot])
        label = torch.where(members.gather(1, label), new_id.unsqueeze(-1), label)
        alive = alive & ~members
        new_slot = new_id.clamp_max(self.num_supernodes - 1)
        alive[rows, new_slot] = alive[rows, new_slot] | cycle
        return {
            "label": label,
            "chosen": chosen,
            "alive": alive,
            "next": new_id + cycle.long(),
            "history": history,
        }

    def structure(self, state: State) -> Tensor:
        """Parent vector ``(N, n)`` (``-1`` at the root), by expanding contractions outside-in."""
        n = self.n
        effective = state["chosen"].clone()
        history = state["history"]
        made = state["next"] - n
        rows = torch.arange(effective.shape[0], device=effective.device)
        # The in-edge of contraction C enters one member (the one containing its head) and
        # replaces that member's own in-edge; later contractions contain earlier ones.
        for c in reversed(range(int(made.max()) if made.numel() else 0)):
            edge = effective[:, n + c]
            do = (c < made) & (edge >= 0)
            head = edge.clamp_min(0) % n
            member = history[rows, c, head]
            effective[rows, member] = torch.where(do, edge, effective[rows, member])
        edge = effective[:, :n]
        tail = torch.div(edge, n, rounding_mode="floor")
        return torch.where(edge >= 0, tail, torch.full_like(tail, -1))

    # -- the fast equivalent of the generic driver -----------------------------------------

    def run(self, weights: Tensor, mask: Tensor) -> tuple[Tensor, Trace]:
        """Same structure and trace as :func:`latentgrad.structured.run`, faster.

        The steps of the ``n - 1`` single vertices come first (their ids are the lowest) and do
        not interact: vertex ``v`` takes the cheapest present edge into it and its residuals
        drop by that minimum. The cycles of that choice function are the first contractions,
        made in the order of their largest vertex (the step that closes them). The remaining
        steps, one per contraction, run the state machine.
        """
        n, d, dev = self.n, self.num_items, weights.device
        rows = weights.shape[0]
        vertex = torch.arange(n, device=dev)
        # cand[r, u, v]: edge u -> v is present and is a candidate of v's step.
        cand = mask.reshape(rows, n, n) & (vertex.unsqueeze(-1) != vertex)
        cand[:, :, self.root] = False
        stalls = ~cand.any(1)
        stalls[:, self.root] = False
        stalled = stalls.any(-1)
        if not bool(stalled.any()):
            return self._run_vertices_first(weights, mask)
        # Some vertex has no in-edge: the generic driver stops there; leave those rows to it.
        parent = torch.empty((rows, n), dtype=torch.long, device=dev)
        choices = torch.empty((rows, self.max_steps), dtype=torch.long, device=dev)
        cands = torch.empty((rows, self.max_steps, d), dtype=torch.bool, device=dev)
        for part, fast in ((stalled, False), (~stalled, True)):
            if bool(part.any()):
                w, m = weights[part], mask[part]
                p, tr = self._run_vertices_first(w, m) if fast else _generic_run(self, w, m)
                parent[part], choices[part], cands[part] = p, tr.choices, tr.candidates
        return parent, Trace(choices, cands)

    def _run_vertices_first(self, weights: Tensor, mask: Tensor) -> tuple[Tensor, Trace]:
        """:meth:`run` on rows where every vertex but the root has a candidate in-edge."""
        n, d, root, dev = self.n, self.num_items, self.root, weights.device
        rows = weights.shape[0]
        vertex = torch.arange(n, device=dev)
        cand = mask.reshape(rows, n, n) & (vertex.unsqueeze(-1) != vertex)
        cand[:, :, root] = False
        w = weights.reshape(rows, n, n)
        inf = torch.tensor(torch.inf, dtype=weights.dtype, device=dev)
        low, tail = torch.where(cand, w, inf).min(1)  # per head v, ties -> lowest tail
        residual = torch.where(cand, w - low.unsqueeze(1), w).reshape(rows, d)

        # Trace of the vertex steps: step t handles the t-th non-root vertex.
        heads = torch.cat([vertex[:root], vertex[root + 1 :]])
        choices = torch.zeros((rows, self.max_steps), dtype=torch.long, device=dev)
        choices[:, : n - 1] = tail[:, heads] * n + heads
        cands = torch.zeros((rows, self.max_steps, d), dtype=torch.bool, device=dev)
        # The step of head v has the candidates cand[r, u, v'] with v' == v.
        column = (heads.unsqueeze(-1) == vertex).unsqueeze(1)  # (n - 1, 1, n)
        cands[:, : n - 1] = (cand.unsqueeze(1) & column).reshape(rows, n - 1, d)

        # Cycles of the choice function v -> tail[v] (the root points to itself).
        func = tail.clone()
        func[:, root] = root
        jump, biggest = func, vertex.expand(rows, n)
        for _ in range(_jump_rounds(n)):
            biggest = torch.maximum(biggest, biggest.gather(1, jump))
            jump = jump.gather(1, jump)
        on_cycle = _image(jump, torch.ones_like(cand[:, 0]))
        on_cycle[:, root] = False
        closer = on_cycle & (biggest == vertex)  # the largest vertex of each cycle
        order = closer.long().cumsum(-1) - 1  # contraction index of each cycle, by its closer
        contraction = order.gather(1, biggest)
        label = torch.where(on_cycle, n + contraction, vertex)
        made = closer.sum(-1)

        s = self.num_supernodes
        chosen = torch.full((rows, s), -1, dtype=torch.long, device=dev)
        chosen[:, :n] = tail * n + vertex
        chosen[:, root] = -1
        ids = torch.arange(s, device=dev)
        alive = torch.cat([~on_cycle, ids[n:] < (n + made).unsqueeze(-1)], -1)
        state: State = {
            "label": label,
            "chosen": chosen,
            "alive": alive,
            "next": n + made,
            "history": vertex.expand(rows, self.max_contractions, n).clone(),
        }

        # One step per contraction, in id order, as in the generic driver. Rows that are done
        # leave the working set (``live`` maps it to the rows) once half of it is done.
        live = torch.arange(rows, device=dev)
        work, work_residual, work_mask = state, residual, mask
        compacted = False
        for t in range(n - 1, self.max_steps):
            current, has = self._pending(work)
            if not bool(has.any()):
                break
            if 2 * int(has.sum()) < live.shape[0]:
                state = self._write_back(state, work, live, compacted)
                compacted = True
                keep = has.nonzero().squeeze(-1)
                live, current, has = live[keep], current[keep], has[keep]
                work = {key: value[keep] for key, value in work.items()}
                work_residual, work_mask = work_residual[keep], work_mask[keep]
            inside = (work["label"] == current.unsqueeze(-1)) & has.unsqueeze(-1)
            step_cand = ~inside.unsqueeze(-1) & inside.unsqueeze(-2)
            step_cand = step_cand.reshape(-1, d) & work_mask
            active = step_cand.any(-1)
            masked = torch.where(step_cand, work_residual, inf)
            low_t, choice = masked.min(-1)
            choice = torch.where(active, choice, torch.zeros_like(choice))
            low_t = torch.where(active, low_t, torch.zeros_like(low_t))
            work_residual = torch.where(
                step_cand, work_residual - low_t.unsqueeze(-1), work_residual
            )
            work = self._choose(work, current, choice, active)
            choices[live, t] = choice
            cands[live, t] = step_cand
        state = self._write_back(state, work, live, compacted)
        return self.structure(state), Trace(choices, cands)

    @staticmethod
    def _write_back(state: State, work: State, live: Tensor, compacted: bool) -> State:
        """``state`` with rows ``live`` replaced by the working set ``work``."""
        if not compacted:
            return work
        out = {key: value.clone() for key, value in state.items()}
        for key, value in work.items():
            out[key][live] = value
        return out


def min_cost_arborescence(costs: Tensor, root: int = 0) -> Tensor:
    """Minimum-cost spanning arborescences rooted at ``root``: Chu-Liu-Edmonds, all cycles at once.

    The MAP oracle of SparseMAP over arborescences needs the optimum only, not the execution
    trace of :class:`ChuLiuEdmonds`, so every supernode without an in-edge picks its cheapest
    one in the same round and all cycles of the choice are contracted together. A round costs a
    fixed number of batched operations (the number of rounds is the nesting depth of the
    contractions, one when the cheapest in-edges already form an arborescence), and only the
    columns of the vertices whose supernode picks are read again. Supernodes are kept in vertex
    space (each vertex carries the id of the lowest vertex of its supernode), so no tensor
    changes shape. The arborescence is read off by expanding the contractions from the last
    round to the first: the edge entering a contracted cycle replaces the chosen edge of the
    member it enters, and the other members keep theirs.

    The reduced costs are those of :class:`ChuLiuEdmonds`, to the last bit, and ties go to the
    lowest edge ``u * n + v`` among a supernode's cheapest in-edges, as there, so the two return
    the same arborescence (the parent vector of :meth:`ChuLiuEdmonds.run`), ties included.
    The rounds run as a TorchScript function where TorchScript compiles it (the first call
    compiles it, once per process), which cuts the per-operation overhead that sets the time
    here; otherwise as plain PyTorch, with the same result. Float64 costs on the CPU go to the
    compiled kernel of :mod:`latentgrad._native` where numba is installed (the same rounds, row
    by row; the same parents).

    Args:
        costs: edge costs, ``(N, n * n)`` with edge ``u -> v`` at ``u * n + v``, float; ``+inf``
            marks an absent edge. Self-loops and edges into ``root`` are ignored. Every vertex
            must be reachable from ``root`` through present edges.
        root: the root vertex.

    Returns:
        The parent vector, long ``(N, n)``, with ``parent[:, root] = -1``.

    Raises:
        TypeError: if ``costs`` is not a floating-point tensor.
        ValueError: if ``costs`` is not ``(N, n * n)`` with ``n >= 2``, or ``root`` is not a
            vertex.

    Example:
        >>> import torch
        >>> costs = torch.tensor([[9.0, 4.0, 5.0, 9.0, 9.0, 1.0, 9.0, 1.0, 9.0]])
        >>> min_cost_arborescence(costs, root=0)  # 0 -> 1 -> 2
        tensor([[-1,  0,  1]])

    References:
        [1] Chu and Liu, "On the shortest arborescence of a directed graph", 1965.
        [2] Edmonds, "Optimum branchings", 1967.
    """
    costs = check_tensor(costs, "costs", min_dim=2)
    d = costs.shape[-1]
    n = math.isqrt(d)
    if costs.dim() != 2 or n * n != d or n < 2:
        raise ValueError(f"costs must have shape (N, n * n) with n >= 2, got {tuple(costs.shape)}")
    root = check_index(root, "root", n)
    if costs.dtype == torch.float64 and costs.device.type == "cpu" and _native.available():
        # the same rounds, compiled (same parents, ties included)
        return torch.from_numpy(_native.arborescence_rows(costs.detach().numpy(), root))
    # a TorchScript function cannot run on the meta device (shapes only): the plain rounds can
    kernel = _arborescence_rounds if costs.device.type == "meta" else _arborescence_kernel()
    return kernel(costs, root, n, _jump_rounds(n))


def _arborescence_rounds(costs: Tensor, root: int, n: int, rounds: int) -> Tensor:
    """The body of :func:`min_cost_arborescence` on checked arguments (``rounds``: doubling
    rounds of the cycle search, :func:`_jump_rounds`); written for TorchScript."""
    rows, d, dev = costs.shape[0], n * n, costs.device
    vertex = torch.arange(n, device=dev)
    inf = torch.full((1,), math.inf, dtype=costs.dtype, device=dev)
    absent = (vertex.unsqueeze(1) == vertex) | (vertex == root).unsqueeze(1)  # [v, u]
    # red[r * n + v, u]: the reduced cost of the edge u -> v (contiguous along the tails).
    red = torch.where(absent, inf, costs.reshape(rows, n, n).transpose(1, 2)).reshape(-1, n)
    label = vertex.expand(rows, n).contiguous()
    # edge[r, s]: the in-edge chosen by supernode s (its lowest vertex), -1 for none yet.
    edge = torch.full((rows, n), -1, dtype=torch.long, device=dev)
    choose = (vertex != root).expand(rows, n)  # supernodes that pick an in-edge this round
    # Entries (r, v) are handled flat, at r * n + v; a supernode's entry is that of its id.
    row_start = (torch.arange(rows, device=dev) * n).unsqueeze(1).expand(rows, n).reshape(-1)
    history: list[tuple[Tensor, Tensor]] = []
    while True:
        # The cheapest in-edge from outside its supernode of each vertex whose supernode picks
        # (lowest tail on ties): the only columns whose minimum changed since the last round.
        # (index_select, not advanced indexing: it is several times faster on these sizes.)
        flat = choose.gather(1, label).view(-1).nonzero().squeeze(1)
        base = row_start.index_select(0, flat)
        own = label.view(-1).index_select(0, flat)
        row = torch.div(flat, n, rounding_mode="floor")
        outside = label.index_select(0, row) != own.unsqueeze(1)
        column = torch.where(outside, red.index_select(0, flat), inf)
        low, tail = column.min(1)
        # The cheapest of each supernode (lowest edge u * n + v on ties).
        group = base + own
        best = torch.full((rows * n,), math.inf, dtype=red.dtype, device=dev)
        best = best.scatter_reduce_(0, group, low, "amin").index_select(0, group)
        key = torch.where(low == best, tail * n + (flat - base), d)
        pick = torch.full((rows * n,), d, dtype=torch.long, device=dev)
        pick = pick.scatter_reduce_(0, group, key, "amin").view(rows, n)
        edge = torch.where(choose, pick, edge)
        # A supernode's in-edges are then compared by their costs less its own: subtracted
        # entry by entry, as the step-by-step algorithm does, so that ties come out the same.
        red.index_copy_(0, flat, column - best.unsqueeze(1))
        # Cycles of the choice among the supernodes (pointer jumping), named by their lowest id.
        parent = torch.where(
            edge >= 0,
            label.gather(1, torch.div(edge, n, rounding_mode="floor").clamp_min(0)),
            vertex,
        )
        jumps = [parent]
        for _ in range(rounds):
            jumps.append(jumps[-1].gather(1, jumps[-1]))
        # After 2**rounds >= n steps every supernode sits on a cycle of the choice; the cycles
        # of length one are the root's and the ids that name no supernode.
        hits = torch.zeros_like(choose).scatter_(1, jumps[-1], True)
        on_cycle = hits & (parent != vertex)
        if not bool(on_cycle.any()):
            break
        lowest = torch.minimum(vertex, parent)
        for k in range(rounds):
            lowest = torch.minimum(lowest, lowest.gather(1, jumps[k]))
        name = torch.where(on_cycle, lowest, vertex)
        history.append((label, edge.gather(1, label)))
        label = name.gather(1, label)
        choose = on_cycle & (lowest == vertex)
        edge = torch.where(on_cycle, -1, edge)
    enter = edge.gather(1, label)  # per vertex: the in-edge of its outermost supernode
    for k in range(len(history) - 1, -1, -1):
        old_label, old_edge = history[k]
        head = (enter % n).clamp_min(0)
        keep = old_label.gather(1, head) == old_label
        enter = torch.where(keep | (enter < 0), enter, old_edge)
    return torch.where(enter >= 0, torch.div(enter, n, rounding_mode="floor"), -1)


#: :func:`_arborescence_rounds` compiled by TorchScript on first use (or itself, if that fails).
_KERNEL: list[Callable[[Tensor, int, int, int], Tensor]] = []


def _arborescence_kernel() -> Callable[[Tensor, int, int, int], Tensor]:
    """:func:`_arborescence_rounds`, compiled with ``torch.jit.script`` the first time.

    A round is a few dozen small tensor operations and a call runs one round per level of
    nested contractions (about 20 at n = 30 in SparseMAP's solver), so the time is the
    per-operation overhead of eager PyTorch, which the TorchScript interpreter cuts by about a
    third (the outputs are the same, bit for bit). Where TorchScript is missing or fails, the
    plain function runs.
    """
    if not _KERNEL:
        kernel: Callable[[Tensor, int, int, int], Tensor] = _arborescence_rounds
        try:
            with warnings.catch_warnings():
                # torch.jit is deprecated in recent releases, but still the cheapest interpreter.
                warnings.simplefilter("ignore")
                kernel = torch.jit.script(_arborescence_rounds)
        except Exception:  # any failure to compile leaves the eager version
            kernel = _arborescence_rounds
        _KERNEL.append(kernel)
    return _KERNEL[0]


__all__ = ["ChuLiuEdmonds", "min_cost_arborescence"]
