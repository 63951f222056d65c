"""Compiled CPU kernels, used when numba is installed (the optional ``fast`` extra).

Batched PyTorch pays a fixed overhead per tensor operation, which sets the time of solvers that
run many small iterations: SparseMAP's active set and the oracles it calls (Chu-Liu-Edmonds,
Viterbi) spend most of their time in that overhead at the sizes of structured latent variables.
Here the same algorithms run row by row as numba-compiled loops:

* :func:`arborescence_rows`: Chu-Liu-Edmonds as :func:`~latentgrad.structured.chu_liu_edmonds.
  min_cost_arborescence` runs it (all cycles of a round contracted at once, the same reduced
  costs and tie-breaking), so both return the same parent vectors, ties included;
* :func:`viterbi_rows`: :func:`~latentgrad.structured.viterbi.viterbi`, lowest tags on ties;
* :func:`active_set_rows`: the active set of :mod:`latentgrad.mappings._sparsemap` (same
  phases, tolerances and updates) for oracles that have a kernel here.

The kernels take and return numpy arrays on the CPU; the callers convert (without copies for
contiguous CPU tensors). The core never needs them: without numba, or with the environment
variable ``LATENTGRAD_NATIVE=0``, or inside :func:`disabled`, everything runs in PyTorch.
Compiled code is cached next to this file (numba's ``cache=True``), so a process compiles only
on the first use after an install or an edit (a few seconds).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
from collections.abc import Iterator
from typing import Any

try:  # the optional accelerator
    import numba
    import numpy as np
except ImportError:  # pragma: no cover - exercised by the core environment
    numba = None  # type: ignore[assignment]
    np = None  # type: ignore[assignment]

#: Oracle kinds with a compiled kernel (the ``kind`` argument of :func:`active_set_rows`).
ARBORESCENCE = 0
SEQUENCE = 1
FREE_BITS = 2
BUDGET_BITS = 3

_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("latentgrad_native", default=True)


def available() -> bool:
    """Whether the compiled kernels can run here and are switched on (numba importable,
    ``LATENTGRAD_NATIVE`` not ``0``, not inside :func:`disabled`)."""
    return numba is not None and os.environ.get("LATENTGRAD_NATIVE", "1") != "0" and _ENABLED.get()


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """A context in which the PyTorch implementations run even where numba is installed."""
    token = _ENABLED.set(False)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def _jit(fn: Any) -> Any:
    """``fn`` compiled on first call, cached on disk where numba finds a writable place (next to
    this file, else its user-wide cache), else compiled once per process."""
    if numba is None:
        return fn
    try:
        return numba.njit(cache=True, nogil=True)(fn)
    except RuntimeError:  # no cache locator (a read-only install without a user cache)
        return numba.njit(nogil=True)(fn)


# -- Chu-Liu-Edmonds ----------------------------------------------------------------------------


@_jit
def _arborescence(costs: Any, n: int, root: int, parent: Any) -> None:
    """One row of :func:`arborescence_rows`: costs ``(n * n,)`` (edge ``u -> v`` at
    ``u * n + v``), the parent vector written into ``parent`` ``(n,)``."""
    inf = math.inf
    d = n * n
    # red[v, u]: the reduced cost of the edge u -> v.
    red = np.empty((n, n))
    for v in range(n):
        for u in range(n):
            red[v, u] = inf if (u == v or v == root) else costs[u * n + v]
    label = np.arange(n)
    edge = np.full(n, -1)
    choose = np.ones(n, dtype=np.bool_)
    choose[root] = False
    hist_label = np.empty((n, n), dtype=np.int64)
    hist_edge = np.empty((n, n), dtype=np.int64)
    levels = 0
    low = np.empty(n)
    tail = np.empty(n, dtype=np.int64)
    column = np.empty(n)
    best = np.empty(n)
    pick = np.empty(n, dtype=np.int64)
    par = np.empty(n, dtype=np.int64)
    on_cycle = np.zeros(n, dtype=np.bool_)
    name = np.empty(n, dtype=np.int64)
    state = np.empty(n, dtype=np.int64)
    while True:
        best[:] = inf
        pick[:] = d
        for v in range(n):
            own = label[v]
            if not choose[own]:
                continue
            lo, arg = inf, 0
            for u in range(n):
                c = red[v, u] if label[u] != own else inf
                column[u] = c
                if c < lo:
                    lo, arg = c, u
            low[v], tail[v] = lo, arg
            if lo < best[own]:
                best[own] = lo
            for u in range(n):
                red[v, u] = column[u]
        for v in range(n):
            own = label[v]
            if not choose[own]:
                continue
            if low[v] == best[own]:
                key = tail[v] * n + v
                if key < pick[own]:
                    pick[own] = key
            for u in range(n):
                red[v, u] = red[v, u] - best[own]
        for s in range(n):
            if choose[s]:
                edge[s] = pick[s]
        for s in range(n):
            par[s] = label[edge[s] // n] if edge[s] >= 0 else s
        # The cycles of the choice (of length at least 2), named by their lowest member.
        state[:] = 0  # 0 unseen, 1 on the current path, 2 finished
        found = False
        for s in range(n):
            on_cycle[s] = False
            name[s] = s
        for s in range(n):
            x = s
            while state[x] == 0:
                state[x] = 1
                x = par[x]
            if state[x] == 1 and par[x] != x:
                lowest, y = x, par[x]
                while y != x:
                    lowest = min(lowest, y)
                    y = par[y]
                y = x
                while True:
                    on_cycle[y] = True
                    name[y] = lowest
                    y = par[y]
                    if y == x:
                        break
                found = True
            x = s
            while state[x] == 1:
                state[x] = 2
                x = par[x]
        if not found:
            break
        for v in range(n):
            hist_label[levels, v] = label[v]
            hist_edge[levels, v] = edge[label[v]]
        levels += 1
        for v in range(n):
            label[v] = name[label[v]]
        for s in range(n):
            choose[s] = on_cycle[s] and name[s] == s
            if on_cycle[s]:
                edge[s] = -1
    enter = np.empty(n, dtype=np.int64)
    for v in range(n):
        enter[v] = edge[label[v]]
    for k in range(levels - 1, -1, -1):
        for v in range(n):
            e = enter[v]
            if e >= 0 and hist_label[k, e % n] != hist_label[k, v]:
                enter[v] = hist_edge[k, v]
    for v in range(n):
        parent[v] = enter[v] // n if enter[v] >= 0 else -1


@_jit
def _arborescence_batch(costs: Any, n: int, root: int, out: Any) -> None:
    for r in range(costs.shape[0]):
        _arborescence(costs[r], n, root, out[r])


def arborescence_rows(costs: Any, root: int) -> Any:
    """Minimum-cost arborescences of the rows of ``costs`` ``(N, n * n)`` (float64 numpy), as
    parent vectors ``(N, n)`` (int64, ``-1`` at the root); checked arguments only."""
    n = math.isqrt(costs.shape[1])
    out = np.empty((costs.shape[0], n), dtype=np.int64)
    _arborescence_batch(np.ascontiguousarray(costs), n, root, out)
    return out


# -- Viterbi --------------------------------------------------------------------------------------


@_jit
def _viterbi(w: Any, length: int, k: int, tags: Any) -> None:
    """One row of :func:`viterbi_rows`: scores ``(L K + (L - 1) K^2,)`` laid out as in
    :class:`~latentgrad.mappings.oracles.SequenceOracle`, tags written into ``tags`` ``(L,)``."""
    best = np.empty(k)
    nxt = np.empty(k)
    back = np.empty((max(length - 1, 1), k), dtype=np.int64)
    for a in range(k):
        best[a] = w[a]
    base = length * k
    for t in range(length - 1):
        for b in range(k):
            top, arg = -math.inf, 0
            for a in range(k):
                s = best[a] + w[base + (t * k + a) * k + b]
                if s > top or a == 0:
                    top, arg = s, a
            back[t, b] = arg
            nxt[b] = top + w[(t + 1) * k + b]
        best[:] = nxt
    arg = 0
    for a in range(1, k):
        if best[a] > best[arg]:
            arg = a
    tags[length - 1] = arg
    for t in range(length - 2, -1, -1):
        arg = back[t, arg]
        tags[t] = arg


@_jit
def _viterbi_batch(w: Any, length: int, k: int, out: Any) -> None:
    for r in range(w.shape[0]):
        _viterbi(w[r], length, k, out[r])


def viterbi_rows(w: Any, length: int, num_tags: int) -> Any:
    """Best tag sequences ``(N, L)`` (int64) of the rows of ``w`` (float64 numpy, laid out as
    in :class:`~latentgrad.mappings.oracles.SequenceOracle`); checked arguments only."""
    out = np.empty((w.shape[0], length), dtype=np.int64)
    _viterbi_batch(np.ascontiguousarray(w), length, num_tags, out)
    return out


# -- the oracles of the active set ----------------------------------------------------------------


@_jit
def _oracle(kind: int, params: Any, g: Any, z: Any, work: Any) -> None:
    """The 0/1 structure maximizing ``<g, z>`` of oracle ``kind`` (``params``: its sizes, as
    the oracles' ``_native_spec`` give them), written into ``z`` ``(D,)``, as the PyTorch
    oracle picks it (the same ties); ``work``: an int64 scratch vector of length at least
    ``params[0]``."""
    z[:] = 0.0
    if kind == ARBORESCENCE:
        n, root = params[0], params[1]
        costs = np.empty(n * n)
        for i in range(n * n):
            costs[i] = -g[i]
        _arborescence(costs, n, root, work)
        for v in range(n):
            if work[v] >= 0:
                z[work[v] * n + v] = 1.0
    elif kind == FREE_BITS:
        for i in range(params[0]):
            if g[i] > 0.0:
                z[i] = 1.0
    elif kind == BUDGET_BITS:
        # the budget largest positive scores, lower index first on ties (a stable sort)
        d, budget = params[0], params[1]
        count = 0
        for i in range(d):
            if g[i] > 0.0:
                work[count] = i
                count += 1
        if count <= budget:
            for i in range(count):
                z[work[i]] = 1.0
        else:
            keys = np.empty(count)
            for i in range(count):
                keys[i] = -g[work[i]]
            order = np.argsort(keys, kind="mergesort")
            for i in range(budget):
                z[work[order[i]]] = 1.0
    else:
        length, k = params[0], params[1]
        _viterbi(g, length, k, work)
        for t in range(length):
            z[t * k + work[t]] = 1.0
        for t in range(length - 1):
            z[length * k + (t * k + work[t]) * k + work[t + 1]] = 1.0


# -- the active set -------------------------------------------------------------------------------


@_jit
def _kkt_inverse(gram: Any, mask: Any, ridge: float) -> tuple[Any, bool]:
    """The inverse of the bordered KKT matrix ``[[G, m], [m^T, 0]]`` (inactive slots: identity
    rows and columns); ``ok`` is False when a pivot is exactly 0.

    The active block and the border are inverted by Gauss-Jordan elimination with partial
    pivoting on their own (the inactive slots' identity needs no work), then placed back.
    """
    cap = mask.shape[0]
    act = np.empty(cap + 1, dtype=np.int64)
    m = 0
    for i in range(cap):
        if mask[i]:
            act[m] = i
            m += 1
    act[m] = cap  # the border
    size = m + 1
    a = np.zeros((size, 2 * size))
    for i in range(m):
        for j in range(m):
            a[i, j] = gram[act[i], act[j]]
        a[i, i] += ridge
        a[i, m] = 1.0
        a[m, i] = 1.0
    for i in range(size):
        a[i, size + i] = 1.0
    for c in range(size):
        piv, top = c, abs(a[c, c])
        for r in range(c + 1, size):
            if abs(a[r, c]) > top:
                piv, top = r, abs(a[r, c])
        if top == 0.0:
            return np.zeros((cap + 1, cap + 1)), False
        if piv != c:
            for j in range(c, 2 * size):
                a[c, j], a[piv, j] = a[piv, j], a[c, j]
        inv = 1.0 / a[c, c]
        for j in range(c, 2 * size):
            a[c, j] *= inv
        for r in range(size):
            if r != c:
                f = a[r, c]
                if f != 0.0:
                    for j in range(c, 2 * size):
                        a[r, j] -= f * a[c, j]
    out = np.zeros((cap + 1, cap + 1))
    for i in range(cap):
        if not mask[i]:
            out[i, i] = 1.0
    for i in range(size):
        for j in range(size):
            out[act[i], act[j]] = a[i, size + j]
    return out, True


@_jit
def _inverse(gram: Any, mask: Any, ridge: float) -> Any:
    kinv, ok = _kkt_inverse(gram, mask, 0.0)
    if not ok:
        kinv, ok = _kkt_inverse(gram, mask, ridge)
    return kinv


@_jit
def _bordered_product(b: Any, kinv: Any, cap: int) -> Any:
    """``b K^-1`` for a bordered vector ``b`` ``(cap + 1,)``."""
    out = np.zeros(cap + 1)
    for i in range(cap + 1):
        bi = b[i]
        if bi != 0.0:
            for j in range(cap + 1):
                out[j] += bi * kinv[i, j]
    return out


@_jit
def _mix(p: Any, parts: Any, counts: Any, d: int) -> Any:
    """``sum_a p_a z_a`` ``(D,)`` from the part lists of the slots."""
    mu = np.zeros(d)
    for a in range(p.shape[0]):
        if p[a] != 0.0:
            for i in range(counts[a]):
                mu[parts[a, i]] += p[a]
    return mu


@_jit
def _scale(theta: Any) -> float:
    """``1 + max|theta|``, the scale of the solver's tolerances."""
    scale = 0.0
    for i in range(theta.shape[0]):
        scale = max(scale, abs(theta[i]))
    return scale + 1.0


@_jit
def _store(z: Any, slot: int, parts: Any, counts: Any, dense: Any) -> None:
    """Write the 0/1 structure ``z`` ``(D,)`` into ``slot``: its part list (padded with ``D``),
    its count and its dense copy."""
    d = z.shape[0]
    dense[slot, :] = 0.0
    c = 0
    for i in range(d):
        if z[i] != 0.0:
            parts[slot, c] = i
            dense[slot, i] = 1.0
            c += 1
    parts[slot, c:] = d
    counts[slot] = c


@_jit
def _gram(parts: Any, counts: Any, dense: Any, k: int, pen: Any) -> Any:
    """The Gram matrix ``(k, k)`` of the first ``k`` slots over the penalized parts (``pen``:
    0/1 per part)."""
    gram = np.zeros((k, k))
    for a in range(k):
        for c in range(k):
            s = 0.0
            for i in range(counts[a]):
                s += dense[c, parts[a, i]] * pen[parts[a, i]]
            gram[a, c] = s
    return gram


@_jit
def _row(
    theta: Any, kind: int, params: Any, settings: Any, warm: Any, consts: Any, pen: Any
) -> tuple[Any, Any, Any, Any, int]:
    """The active set of :func:`latentgrad.mappings._sparsemap._active_set` on one row.

    Returns the slots' part lists ``(cap, width)`` and counts ``(cap,)``, weights, mask and the
    number of iterations."""
    grid_unit, drop, negative, dependent_tol, floor_unit, ridge = (
        consts[0],
        consts[1],
        consts[2],
        consts[3],
        consts[4],
        consts[5],
    )
    refresh_every = int(consts[6])
    max_iter, tol, max_active, identify_face = settings
    warm_parts, warm_counts, warm_p = warm
    d = theta.shape[0]
    width = int(params[2])  # parts per structure, at most
    work = np.empty(max(params[0], 1), dtype=np.int64)
    new_parts = np.empty(d, dtype=np.int64)
    z_new = np.empty(d)
    scale = _scale(theta)
    grid = scale * grid_unit
    floor = floor_unit * math.sqrt(d) * scale * scale
    loose = max(floor, tol)
    # The slots: part lists, dense 0/1 copies (for inner products), weights, mask, scores.
    n_warm = warm_p.shape[0]
    cap = min(max_active, max(n_warm, 8))
    parts = np.full((cap, width), d, dtype=np.int64)
    counts = np.zeros(cap, dtype=np.int64)
    dense = np.zeros((cap, d + 1))
    p = np.zeros(cap)
    mask = np.zeros(cap, dtype=np.bool_)
    score = np.zeros(cap)
    if n_warm == 0:
        _oracle(kind, params, theta, z_new, work)
        _store(z_new, 0, parts, counts, dense)
        p[0] = 1.0
    else:
        for a in range(n_warm):
            counts[a] = warm_counts[a]
            for i in range(warm_counts[a]):
                parts[a, i] = warm_parts[a, i]
                dense[a, warm_parts[a, i]] = 1.0
            p[a] = warm_p[a]
    for a in range(cap):
        mask[a] = p[a] > 0.0
        for i in range(counts[a]):
            score[a] += theta[parts[a, i]]
    gram = _gram(parts, counts, dense, cap, pen)
    penalized_all = pen.min() > 0.0
    kinv = _inverse(gram, mask, ridge)
    fine = False
    since_refresh = 0
    iterations = 0
    rhs = np.zeros(cap + 1)
    for _ in range(max_iter):
        if since_refresh >= refresh_every:
            kinv = _inverse(gram, mask, ridge)
            since_refresh = 0
        since_refresh += 1
        # The minimizer on the active set, then a feasible step towards it.
        rhs = np.zeros(cap + 1)
        for a in range(cap):
            rhs[a] = score[a] if mask[a] else 0.0
        rhs[cap] = 1.0
        sol = _bordered_product(rhs, kinv, cap)
        if fine:  # one round of iterative refinement
            pr = np.zeros(cap)
            for a in range(cap):
                pr[a] = sol[a] if mask[a] else 0.0
            mu = _mix(pr, parts, counts, d)
            res = np.zeros(cap + 1)
            total = 0.0
            for a in range(cap):
                total += pr[a]
                if mask[a]:
                    s = 0.0
                    for i in range(counts[a]):
                        s += theta[parts[a, i]] - mu[parts[a, i]] * pen[parts[a, i]]
                    res[a] = s - sol[cap]
            res[cap] = 1.0 - total
            corr = _bordered_product(res, kinv, cap)
            for j in range(cap + 1):
                sol[j] += corr[j]
        p_hat = sol[:cap]
        infeasible = False
        alpha, block = math.inf, 0
        for a in range(cap):
            if mask[a]:
                if p_hat[a] < -negative:
                    infeasible = True
                step = p_hat[a] - p[a]
                if step < 0.0:
                    ratio = p[a] / max(-step, 1e-300)
                    if ratio < alpha:
                        alpha, block = ratio, a
        alpha = min(alpha, 1.0)
        p_new = np.empty(cap)
        for a in range(cap):
            p_new[a] = p[a] + alpha * (p_hat[a] - p[a]) if infeasible else p_hat[a]
        new_mask = mask.copy()
        shrunk = False
        for a in range(cap):
            if mask[a] and ((infeasible and a == block) or p_new[a] <= drop):
                new_mask[a] = False
                shrunk = True
        total = 0.0
        for a in range(cap):
            p_new[a] = max(p_new[a], 0.0) if new_mask[a] else 0.0
            total += p_new[a]
        for a in range(cap):
            p_new[a] /= total
        # Where nothing left, the oracle's best structure in direction theta - mu.
        mu = _mix(p_new, parts, counts, d)
        g = theta - mu * pen  # the gradient of <theta, mu> - |P mu|^2 / 2
        add = False
        pivot = False
        done = False
        gap = 0.0
        schur = 0.0
        size = 0.0
        inner = np.zeros(cap)
        u = np.zeros(cap + 1)
        if not shrunk:
            if fine:
                _oracle(kind, params, g, z_new, work)
            else:
                _oracle(kind, params, np.rint(g / grid) * grid, z_new, work)
            new_count = 0
            for i in range(d):
                if z_new[i] != 0.0:
                    gap += g[i] * (1.0 - mu[i])
                    new_parts[new_count] = i
                    new_count += 1
                else:
                    gap -= g[i] * mu[i]
            small = gap <= (floor if fine else loose)
            if not small:
                size = 0.0
                for i in range(new_count):
                    size += pen[new_parts[i]]
                b = np.zeros(cap + 1)
                for a in range(cap):
                    s = 0.0
                    if new_mask[a]:
                        for i in range(new_count):
                            s += dense[a, new_parts[i]] * pen[new_parts[i]]
                    inner[a] = s
                    b[a] = s
                b[cap] = 1.0
                u = _bordered_product(b, kinv, cap)
                bu = 0.0
                for j in range(cap + 1):
                    bu += b[j] * u[j]
                schur = size - bu
                dependent = schur <= dependent_tol or (fine and gap <= drop * schur)
                if not penalized_all and schur <= dependent_tol:
                    # P z in the affine hull of the active set's P z_a (coefficients c = u):
                    # z still improves the objective if its score beats the combination's
                    improve = 0.0
                    for i in range(new_count):
                        improve += theta[new_parts[i]]
                    for a in range(cap):
                        if new_mask[a]:
                            improve -= u[a] * score[a]
                    pivot = improve > (floor if fine else loose)
                    dependent = not pivot
                add = not dependent and not pivot
                done = dependent
            else:
                done = True
            if identify_face and done and not fine:
                fine = True
                done = False
        count = 0
        for a in range(cap):
            if new_mask[a]:
                count += 1
        full = False
        if add and count >= cap:
            if cap < max_active:
                new_cap = min(max_active, cap + max(8, cap // 2))
                grow = new_cap - cap
                parts = np.concatenate((parts, np.full((grow, width), d, dtype=np.int64)))
                counts = np.concatenate((counts, np.zeros(grow, dtype=np.int64)))
                dense = np.concatenate((dense, np.zeros((grow, d + 1))))
                p_new = np.concatenate((p_new, np.zeros(grow)))
                new_mask = np.concatenate((new_mask, np.zeros(grow, dtype=np.bool_)))
                mask = np.concatenate((mask, np.zeros(grow, dtype=np.bool_)))
                score = np.concatenate((score, np.zeros(grow)))
                inner = np.concatenate((inner, np.zeros(grow)))
                g2 = np.zeros((new_cap, new_cap))
                g2[:cap, :cap] = gram
                gram = g2
                k2 = np.zeros((new_cap + 1, new_cap + 1))
                k2[:cap, :cap] = kinv[:cap, :cap]
                k2[:cap, new_cap] = kinv[:cap, cap]
                k2[new_cap, :cap] = kinv[cap, :cap]
                k2[new_cap, new_cap] = kinv[cap, cap]
                for a in range(cap, new_cap):
                    k2[a, a] = 1.0
                kinv = k2
                u2 = np.zeros(new_cap + 1)
                u2[:cap] = u[:cap]
                u2[new_cap] = u[cap]
                u = u2
                cap = new_cap
            else:
                full = True
                add = False
        # Rank-one updates of the inverse for a leaving slot j or an entering one.
        dropped, first_left, free_slot = 0, -1, -1
        for a in range(cap):
            if mask[a] and not new_mask[a]:
                dropped += 1
                if first_left < 0:
                    first_left = a
            if free_slot < 0 and not new_mask[a]:
                free_slot = a
        if pivot:
            # weight t moves onto z, t u_a off each active structure; the first to reach 0
            # leaves and z takes its slot (the inverse is computed again below)
            j, t = -1, math.inf
            for a in range(cap):
                if new_mask[a] and u[a] > negative:
                    ratio = p_new[a] / u[a]
                    if ratio < t:
                        j, t = a, ratio
            total = 0.0
            for a in range(cap):
                p_new[a] = max(p_new[a] - t * u[a], 0.0) if new_mask[a] else 0.0
            p_new[j] = t
            for a in range(cap):
                total += p_new[a]
            for a in range(cap):
                p_new[a] /= total
        if add:
            j = free_slot
            for a in range(cap + 1):
                u[a] -= 1.0 if a == j else 0.0
            for a in range(cap + 1):
                ua = u[a] / schur
                if ua != 0.0:
                    for c in range(cap + 1):
                        kinv[a, c] += ua * u[c]
            kinv[j, j] -= 1.0
            new_mask[j] = True
        if add or pivot:  # z takes slot j: its parts, score, and Gram row and column
            _store(z_new, j, parts, counts, dense)
            s = 0.0
            for i in range(new_count):
                s += theta[new_parts[i]]
            score[j] = s
            for a in range(cap):
                gram[j, a] = inner[a]
                gram[a, j] = inner[a]
            gram[j, j] = size
        elif dropped == 1:
            j = first_left
            col = kinv[j, :].copy()
            h = col[j]
            for a in range(cap + 1):
                for c in range(cap + 1):
                    kinv[a, c] -= col[a] * col[c] / h
            kinv[j, j] += 1.0
        p, mask = p_new, new_mask
        if dropped > 1 or pivot:
            kinv = _inverse(gram, mask, ridge)
            since_refresh = 0
        iterations += 1
        if done or full:
            break
    return parts, counts, p, mask, iterations


@_jit
def _slot_dot(x: Any, parts: Any, counts: Any, k: int) -> Any:
    """``<x, z_a>`` for the first ``k`` slots, ``(k,)``."""
    out = np.zeros(k)
    for a in range(k):
        s = 0.0
        for i in range(counts[a]):
            s += x[parts[a, i]]
        out[a] = s
    return out


@_jit
def _hull(y: Any, parts: Any, counts: Any, k: int, kinv: Any, d: int) -> tuple[Any, Any]:
    """Barycentric coordinates of the projection of ``y`` onto the affine hull of the first
    ``k`` slots, and ``y`` less that projection (``_hull_coordinates`` in PyTorch)."""
    b = np.zeros(k + 1)
    b[:k] = _slot_dot(y, parts, counts, k)
    b[k] = 1.0
    c = _bordered_product(b, kinv, k)[:k].copy()
    return c, y - _mix(c, parts, counts, d)


@_jit
def _complete(
    theta: Any,
    kind: int,
    params: Any,
    parts_in: Any,
    counts_in: Any,
    k: int,
    max_active: int,
    xs: Any,
    consts: Any,
) -> tuple[Any, Any, int]:
    """``_complete_face`` of :mod:`latentgrad.mappings._sparsemap` on one row: the support (the
    first ``k`` slots of ``parts_in``) completed by probes of the oracle along the directions
    ``xs`` ``(rounds, D)`` (the same for every row, as there). Returns the part lists, counts and
    size of the completed support."""
    ridge, floor_unit, probe, outside = consts[5], consts[4], consts[7], consts[8]
    d = theta.shape[0]
    width = parts_in.shape[1]
    rounds = xs.shape[0]
    parts = np.full((k + rounds, width), d, dtype=np.int64)
    counts = np.zeros(k + rounds, dtype=np.int64)
    parts[:k] = parts_in[:k]
    counts[:k] = counts_in[:k]
    scale = _scale(theta)
    near = 4.0 * floor_unit * math.sqrt(d) * scale * scale
    eps = probe * scale
    work = np.empty(max(params[0], 1), dtype=np.int64)
    z_plus = np.empty(d)
    z_minus = np.empty(d)
    dense = np.zeros((k + rounds, d + 1))
    for a in range(k):
        for i in range(counts[a]):
            dense[a, parts[a, i]] = 1.0
    for rd in range(rounds):
        if k >= max_active:
            break
        ones = np.ones(d)
        kinv = _inverse(_gram(parts, counts, dense, k, ones), np.ones(k, dtype=np.bool_), ridge)
        # the minimizer on the support, refined once
        rhs = np.zeros(k + 1)
        rhs[:k] = _slot_dot(theta, parts, counts, k)
        rhs[k] = 1.0
        sol = _bordered_product(rhs, kinv, k)
        p = sol[:k].copy()
        mu = _mix(p, parts, counts, d)
        res = np.zeros(k + 1)
        res[:k] = _slot_dot(theta - mu, parts, counts, k) - sol[k]
        res[k] = 1.0 - p.sum()
        sol = sol + _bordered_product(res, kinv, k)
        p = sol[:k].copy()
        mu = _mix(p, parts, counts, d)
        g = theta - mu
        # r: the probe direction less its projection onto the directions of the hull
        x = xs[rd]
        bx = np.zeros(k + 1)
        bx[:k] = _slot_dot(x, parts, counts, k)
        coef = _bordered_product(bx, kinv, k)[:k].copy()
        r = x - _mix(coef, parts, counts, d)
        r = r / max(math.sqrt((r * r).sum()), 1e-300)
        _oracle(kind, params, g + eps * r, z_plus, work)
        _oracle(kind, params, g - eps * r, z_minus, work)
        c_plus, r_plus = _hull(z_plus, parts, counts, k, kinv, d)
        c_minus, r_minus = _hull(z_minus, parts, counts, k, kinv, d)
        d_plus, d_minus = (r_plus * r_plus).sum(), (r_minus * r_minus).sum()
        gamma = -(r_plus * r_minus).sum() / max(d_minus, 1e-300)
        off = r_plus + gamma * r_minus
        ok = (
            d_plus > outside
            and d_minus > outside
            and gamma > 0
            and (off * off).sum() <= 1e-10 * d_plus
            and (g * (z_plus - mu)).sum() >= -near
            and (g * (z_minus - mu)).sum() >= -near
        )
        if not ok:
            break
        # Weight moves onto z_plus and z_minus along their dependency on the hull; the first
        # support structure whose weight reaches 0 leaves (z_plus takes its slot).
        leave, best = 0, math.inf
        for a in range(k):
            c_bar = (c_plus[a] + gamma * c_minus[a]) / (1.0 + gamma)
            if c_bar > 0:
                ratio = max(p[a], 0.0) / c_bar
                if ratio < best:
                    leave, best = a, ratio
        _store(z_plus, leave, parts, counts, dense)
        _store(z_minus, k, parts, counts, dense)
        k += 1
    return parts, counts, k


@_jit
def _support_and_face(
    theta: Any, kind: int, params: Any, settings: Any, warm: Any, consts: Any, xs: Any, pen: Any
) -> tuple[Any, Any, int, int]:
    """:func:`_row`, then the structures of weight above ``_DROP`` in slot order, then (with
    ``identify_face``) :func:`_complete`. Returns part lists, counts, support size, iterations."""
    parts, counts, p, mask, iterations = _row(theta, kind, params, settings, warm, consts, pen)
    max_active, identify_face = settings[2], settings[3]
    drop = consts[1]
    k = 0
    for a in range(p.shape[0]):
        if mask[a] and p[a] > drop:
            parts[k] = parts[a]
            counts[k] = counts[a]
            k += 1
    if identify_face and k > 0 and pen.min() > 0.0:  # (the probes assume a full penalty)
        parts, counts, k = _complete(theta, kind, params, parts, counts, k, max_active, xs, consts)
    return parts, counts, k, iterations


def active_set_rows(
    theta: Any,
    kind: int,
    params: Any,
    settings: tuple[int, float, int, bool],
    consts: Any,
    xs: Any,
    pen: Any | None = None,
    warm: tuple[Any, Any, Any] | None = None,
) -> tuple[Any, Any, Any]:
    """:func:`_support_and_face` on every row of ``theta`` ``(N, D)`` (float64 numpy).

    ``settings``: ``(max_iter, tol, max_active, identify_face)``; ``consts``: the solver's
    tolerances, in the order of ``latentgrad.mappings._sparsemap._native_consts``; ``xs``: the
    probe directions of the face completion; ``pen``: 0/1 ``(D,)``, the parts in the quadratic
    term (None: all); ``warm``: part lists ``(N, A, width)``, counts ``(N, A)`` and weights
    ``(N, A)`` of initial active sets.

    Returns the supports' part lists ``(N, A, width)`` (padded with ``D``; a row's slots past
    its support repeat its first structure), the support sizes ``(N,)`` and the iterations
    ``(N,)``.
    """
    n, d = theta.shape
    max_iter, tol, max_active, identify_face = settings
    flat = (int(max_iter), float(tol), int(max_active), bool(identify_face))
    pen = np.ones(d) if pen is None else pen
    cold = (np.zeros((0, 1), dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0))
    rows = []
    for r in range(n):
        start = cold if warm is None else (warm[0][r], warm[1][r], warm[2][r])
        rows.append(_support_and_face(theta[r], kind, params, flat, start, consts, xs, pen))
    sizes = np.array([k for _, _, k, _ in rows], dtype=np.int64)
    iterations = np.array([it for _, _, _, it in rows], dtype=np.int64)
    width = max(parts.shape[1] for parts, _, _, _ in rows)
    out = np.full((n, max(int(sizes.max(initial=0)), 1), width), d, dtype=np.int64)
    for r, (parts, _, k, _) in enumerate(rows):
        out[r, :k, : parts.shape[1]] = parts[:k]
        out[r, k:] = out[r, 0]
    return out, sizes, iterations


__all__ = [
    "ARBORESCENCE",
    "SEQUENCE",
    "active_set_rows",
    "arborescence_rows",
    "available",
    "disabled",
    "viterbi_rows",
]
