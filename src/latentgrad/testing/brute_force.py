"""Brute-force laws of every family: the structures listed directly, their probabilities written out.

These oracles share no code with the samplers, the trace calculus of
:mod:`latentgrad.structured` or the families' ``log_prob``/``support_probs``: the structures are
listed with :mod:`itertools` (every k-subset, every permutation, every spanning tree of ``K_n`` by
testing each ``(n - 1)``-edge subset for cycles, every arborescence by testing each parent
assignment, every binary tree by recursion on the root, every perfect matching as a
permutation), and each probability is the law of the family's algorithm on independent
exponential noise ``E_i ~ Exponential(exp(theta_i))``, written out here in plain loops in
float64. The one fact used throughout is the race of exponentials: the smallest of independent
``E_i`` over a set ``S`` is item ``i`` with probability ``exp(theta_i) / sum_S exp(theta)``, and
the others' excesses over it are again independent ``Exponential(exp(theta))`` (memorylessness).

Slow by design (exponential in the size, Python loops): use them on small instances only.
Probabilities are differentiable in the parameters, so :func:`~latentgrad.testing.exact_gradient`
is built on them. Register an enumerator for a family of your own with
:func:`register_brute_force`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor
from torch.distributions import Distribution

F64 = torch.float64

BruteForce = Callable[[Any], tuple[Tensor, Tensor]]
"""``fn(dist) -> (values, probs)``: an enumerator registered with :func:`register_brute_force`."""

_REGISTRY: dict[type, BruteForce] = {}

_D = TypeVar("_D", bound=BruteForce)


def register_brute_force(cls: type) -> Callable[[_D], _D]:
    """Decorator registering ``fn(dist) -> (values, probs)`` as the brute-force law of ``cls``.

    :func:`brute_force_support` looks the enumerator up along the method resolution order, so a
    subclass without its own entry uses its parent's.

    Args:
        cls: the distribution class.

    Returns:
        a decorator that registers its function and returns it unchanged.

    Example:
        >>> import torch
        >>> from torch.distributions import Distribution
        >>> from latentgrad.testing import brute_force_support, register_brute_force
        >>> class Coin(Distribution):
        ...     arg_constraints = {}
        ...     def __init__(self, p):
        ...         self.p = p
        ...         super().__init__(p.shape, validate_args=False)
        >>> @register_brute_force(Coin)
        ... def _coin(dist):
        ...     values = torch.tensor([0.0, 1.0]).reshape(2, *[1] * dist.p.dim())
        ...     return values.expand(2, *dist.p.shape), torch.stack([1 - dist.p, dist.p])
        >>> brute_force_support(Coin(torch.tensor([0.25])))[1]
        tensor([[0.7500],
                [0.2500]])
    """
    if not isinstance(cls, type):
        raise TypeError(f"cls must be a class, got {type(cls).__name__}")

    def decorator(fn: _D) -> _D:
        if not callable(fn):
            raise TypeError(f"the registered enumerator must be callable, got {type(fn).__name__}")
        _REGISTRY[cls] = fn
        return fn

    return decorator


def brute_force_support(dist: Distribution) -> tuple[Tensor, Tensor]:
    """Every value of ``dist``'s family, listed directly, and its probability under ``dist``.

    The values are all the structures of the family at this size (also those of probability 0,
    e.g. subsets containing an item of score ``-inf``), in a fixed order that does not depend on
    the parameters; the probabilities are computed independently of the family's own code (see
    the module docstring and each family's enumerator). For
    :class:`~latentgrad.SparsemaxCategorical` and :class:`~latentgrad.TopKSparsemax` they are
    sparsemax by bisection (:func:`~latentgrad.testing.reference_entmax`); for
    :class:`~latentgrad.Categorical` and :class:`~latentgrad.Bernoulli` the closed forms
    (softmax, product of sigmoids), written out again here. ``SparseMAP`` has no enumerator:
    its decomposition into structures is not unique, so only its mean is defined independently.

    Args:
        dist: a latentgrad family (or a class registered with :func:`register_brute_force`).

    Returns:
        ``(values, probs)``: ``values`` of shape ``(S,) + batch_shape + event_shape`` in the
        family's value dtype, ``probs`` of shape ``(S,) + batch_shape`` in float64, summing to 1
        over ``S`` and differentiable in the parameters.

    Raises:
        TypeError: if no enumerator is registered for ``type(dist)``.

    Example:
        >>> import torch, latentgrad as lg
        >>> from latentgrad.testing import brute_force_support
        >>> values, probs = brute_force_support(lg.KSubset(torch.tensor([0.0, 0.0, 0.0]), k=2))
        >>> values
        tensor([[1., 1., 0.],
                [1., 0., 1.],
                [0., 1., 1.]])
        >>> probs
        tensor([0.3333, 0.3333, 0.3333], dtype=torch.float64)
    """
    if not isinstance(dist, Distribution):
        raise TypeError(f"dist must be a torch Distribution, got {type(dist).__name__}")
    for cls in type(dist).__mro__:
        fn = _REGISTRY.get(cls)
        if fn is not None:
            return fn(dist)
    raise TypeError(
        f"no brute-force enumerator is registered for {type(dist).__name__}; register one with "
        "latentgrad.testing.register_brute_force"
    )


def probabilities_of(values: Tensor, support: tuple[Tensor, Tensor]) -> Tensor:
    """The probability that ``support = (support_values, support_probs)`` gives each of ``values``.

    Sums the probabilities of every entry of the support equal to the value (0 when none is),
    per batch element; use it to compare a family's ``support_probs()`` with
    :func:`brute_force_support` whatever the order, padding or repetitions of either.

    Args:
        values: ``(S,) + batch_shape + event_shape``.
        support: ``(values', probs')`` of shapes ``(S',) + batch_shape + event_shape`` and
            ``(S',) + batch_shape``.

    Returns:
        shape ``(S,) + batch_shape``, in the dtype of ``probs'``.

    Example:
        >>> import torch
        >>> from latentgrad.testing import probabilities_of
        >>> support = (torch.tensor([[0, 1], [1, 0]]), torch.tensor([0.3, 0.7]))
        >>> probabilities_of(torch.tensor([[1, 0], [1, 1]]), support)
        tensor([0.7000, 0.0000])
    """
    other_values, other_probs = support
    if other_values.shape[0] != other_probs.shape[0]:
        raise ValueError(
            f"support values and probs must have the same first dim, got "
            f"{tuple(other_values.shape)} and {tuple(other_probs.shape)}"
        )
    event_dims = other_values.dim() - other_probs.dim()
    if event_dims < 0 or values.shape[1:] != other_values.shape[1:]:
        raise ValueError(
            f"values {tuple(values.shape)} and support values {tuple(other_values.shape)} must "
            "agree after their first dim"
        )
    same = values.unsqueeze(1) == other_values.unsqueeze(0)  # (S, S', batch, event)
    if event_dims:
        same = same.flatten(same.dim() - event_dims).all(-1)
    return torch.where(same, other_probs.unsqueeze(0), torch.zeros_like(other_probs)).sum(1)


# -- shared arithmetic: rows of scores, one race of exponentials at a time -----------------------


def _rows(theta: Tensor, event_dims: int) -> tuple[Tensor, torch.Size]:
    """``theta`` in float64 with its batch dims flattened into one leading dim, and the batch."""
    batch = theta.shape[: theta.dim() - event_dims]
    return theta.to(F64).reshape(-1, *theta.shape[len(batch) :]), batch


class _Race:
    """``P(item i wins the race among candidates S)``, per row, cached by candidate set.

    ``theta`` has shape ``(B, D)``; items of score ``-inf`` never win, and a race whose
    candidates are all absent gives 0 (that branch has probability 0 anyway).
    """

    def __init__(self, theta: Tensor) -> None:
        self.theta = theta
        self._log_totals: dict[tuple[int, ...], Tensor] = {}

    def log_total(self, candidates: Sequence[int]) -> Tensor:
        key = tuple(sorted(candidates))
        if key not in self._log_totals:
            t = self.theta[:, list(key)]
            alive = torch.isfinite(t).any(-1, keepdim=True)
            # rows with no present candidate: a finite stand-in keeps the gradient finite
            t = torch.where(alive, t, torch.zeros_like(t))
            total = torch.logsumexp(t, -1)
            self._log_totals[key] = torch.where(alive.squeeze(-1), total, torch.inf)
        return self._log_totals[key]

    def win(self, item: int, candidates: Sequence[int]) -> Tensor:
        """``exp(theta_item) / sum_{j in candidates} exp(theta_j)``, shape ``(B,)``."""
        total = self.log_total(candidates)
        finite = torch.isfinite(total)
        return torch.where(
            finite,
            (self.theta[:, item] - torch.where(finite, total, 0.0)).exp(),
            torch.zeros_like(total),
        )


def _sum_over_orders(
    race: _Race, items: Sequence[int], candidates: Callable[[tuple[int, ...]], list[int]]
) -> Tensor:
    """``sum over orders of items of prod_t P(item_t wins among candidates(taken before t))``.

    A depth-first walk over the orders, sharing each prefix's product among its extensions.
    """

    def walk(taken: tuple[int, ...], prob: Tensor) -> Tensor:
        if len(taken) == len(items):
            return prob
        pool = candidates(taken)
        total = torch.zeros_like(prob)
        for item in items:
            if item not in taken:
                total = total + walk((*taken, item), prob * race.win(item, pool))
        return total

    return walk((), torch.ones(race.theta.shape[0], dtype=F64, device=race.theta.device))


def _stack(values: list[Tensor], probs: list[Tensor], batch: torch.Size) -> tuple[Tensor, Tensor]:
    """Values ``(S,) + event`` expanded over ``batch``; probs ``(S, B)`` reshaped to batch."""
    v = torch.stack(values)
    event = v.shape[1:]
    v = v.reshape(v.shape[0], *[1] * len(batch), *event).expand(v.shape[0], *batch, *event)
    return v, torch.stack(probs).reshape(len(probs), *batch)


# -- unstructured families -------------------------------------------------------------------------


def _categorical(dist: Any) -> tuple[Tensor, Tensor]:
    """``softmax(logits)``: ``exp(l_c - log sum exp l)`` per category (one-hot values)."""
    logits, batch = _rows(dist.logits, 1)
    k = logits.shape[-1]
    race = _Race(logits)
    values = list(torch.eye(k, dtype=dist.logits.dtype, device=logits.device))
    probs = [race.win(c, range(k)) for c in range(k)]
    return _stack(values, probs, batch)


def _bernoulli(dist: Any) -> tuple[Tensor, Tensor]:
    """``prod_i sigmoid(l_i)^z_i sigmoid(-l_i)^(1 - z_i)`` over all ``2^D`` bit-vectors."""
    logits, batch = _rows(dist.logits, 1)
    d = logits.shape[-1]
    on, off = torch.sigmoid(logits), torch.sigmoid(-logits)
    values, probs = [], []
    for bits in itertools.product((0, 1), repeat=d):
        p = torch.ones(logits.shape[0], dtype=F64, device=logits.device)
        for i, b in enumerate(bits):
            p = p * (on[:, i] if b else off[:, i])
        values.append(torch.tensor(bits, dtype=dist.logits.dtype, device=logits.device))
        probs.append(p)
    return _stack(values, probs, batch)


def _sparsemax_rows(scores: Tensor) -> Tensor:
    """Sparsemax of rows ``(B, K)`` in float64: the support by bisection, then the threshold in
    closed form on that support (so the result is differentiable, with sparsemax's Jacobian)."""
    from latentgrad.testing.mappings import reference_entmax_threshold

    with torch.no_grad():
        tau = reference_entmax_threshold(scores, alpha=2.0)
        support = scores > tau
    kept = torch.where(support, scores, torch.zeros_like(scores))
    tau = (kept.sum(-1, keepdim=True) - 1) / support.sum(-1, keepdim=True)
    return torch.where(support, scores - tau, torch.zeros_like(scores))


def _sparsemax_categorical(dist: Any) -> tuple[Tensor, Tensor]:
    scores, batch = _rows(dist.scores, 1)
    k = scores.shape[-1]
    p = _sparsemax_rows(scores)
    values = list(torch.eye(k, dtype=dist.scores.dtype, device=scores.device))
    return _stack(values, list(p.T), batch)


def _topk_sparsemax(dist: Any) -> tuple[Tensor, Tensor]:
    """Sparsemax over the scores ``<scores, z>`` of EVERY bit-vector ``z`` (at most ``budget``
    ones with ``structures="budget"``): equal to the family where its :attr:`exact` is True."""
    scores, batch = _rows(dist.scores, 1)
    d = scores.shape[-1]
    limit = d if dist.structures == "free" else min(int(dist.budget), d)
    bits = [b for b in itertools.product((0, 1), repeat=d) if sum(b) <= limit]
    z = torch.tensor(bits, dtype=F64, device=scores.device)  # (S, D)
    p = _sparsemax_rows(scores @ z.T)  # (B, S)
    return _stack(list(z.to(dist.scores.dtype)), list(p.T), batch)


# -- structured families: structures listed, probabilities of the algorithm on the noise --------


def _ksubset(dist: Any) -> tuple[Tensor, Tensor]:
    """Top-k of ``scores + Gumbel`` = the ``k`` smallest ``E``: each order of the subset is a
    sequence of races among the items not taken yet."""
    theta, batch = _rows(dist.scores, 1)
    n = theta.shape[-1]
    race = _Race(theta)
    values, probs = [], []
    for subset in itertools.combinations(range(n), dist.k):
        prob = _sum_over_orders(race, subset, lambda taken: [j for j in range(n) if j not in taken])
        value = torch.zeros(n, dtype=dist.scores.dtype, device=theta.device)
        value[list(subset)] = 1
        values.append(value)
        probs.append(prob)
    return _stack(values, probs, batch)


def _plackett_luce(dist: Any) -> tuple[Tensor, Tensor]:
    """Orderings: ``prod_r exp(s_{o_r}) / sum_{j not ranked before r} exp(s_j)``."""
    theta, batch = _rows(dist.scores, 1)
    n = theta.shape[-1]
    race = _Race(theta)
    values, probs = [], []
    for order in itertools.permutations(range(n)):
        prob = torch.ones(theta.shape[0], dtype=F64, device=theta.device)
        for r, item in enumerate(order):
            prob = prob * race.win(item, order[r:])
        values.append(torch.tensor(order, dtype=torch.long, device=theta.device))
        probs.append(prob)
    return _stack(values, probs, batch)


def _find(parent: list[int], x: int) -> int:
    while parent[x] != x:
        x = parent[x]
    return x


def _is_forest(n: int, edges: Sequence[tuple[int, int]]) -> bool:
    """Whether ``edges`` close no cycle on ``n`` vertices (union-find, no path compression)."""
    parent = list(range(n))
    for u, v in edges:
        ru, rv = _find(parent, u), _find(parent, v)
        if ru == rv:
            return False
        parent[ru] = rv
    return True


def _spanning_tree(dist: Any) -> tuple[Tensor, Tensor]:
    """Every spanning tree of ``K_n`` (each ``(n-1)``-edge subset without a cycle); Kruskal on
    the order of ``E`` takes, at each step, the smallest ``E`` among the edges that join two of
    the current components, so an order of the tree's edges is a sequence of such races."""
    scores, batch = _rows(dist.scores, 2)
    n = scores.shape[-1]
    edges = list(itertools.combinations(range(n), 2))  # {u, v} with u < v: scores[u, v]
    theta = torch.stack([scores[:, u, v] for u, v in edges], -1)
    race = _Race(theta)

    pools: dict[frozenset[int], list[int]] = {}

    def joining(taken: tuple[int, ...]) -> list[int]:
        key = frozenset(taken)
        if key not in pools:
            pools[key] = [
                e
                for e in range(len(edges))
                if e not in key and _is_forest(n, [edges[t] for t in taken] + [edges[e]])
            ]
        return pools[key]

    values, probs = [], []
    for tree in itertools.combinations(range(len(edges)), n - 1):
        if not _is_forest(n, [edges[e] for e in tree]):
            continue
        value = torch.zeros(n, n, dtype=dist.scores.dtype, device=scores.device)
        for e in tree:
            u, v = edges[e]
            value[u, v] = value[v, u] = 1
        values.append(value)
        probs.append(_sum_over_orders(race, tree, joining))
    return _stack(values, probs, batch)


def _binary_trees(lo: int, hi: int) -> Iterator[list[tuple[int, int, int]]]:
    """Every binary tree with in-order ``lo .. hi - 1``, as ``(node, span_lo, span_hi)`` triples
    (``parent`` entries are recovered from the spans by the caller)."""
    if lo == hi:
        yield []
        return
    for root in range(lo, hi):
        for left in _binary_trees(lo, root):
            for right in _binary_trees(root + 1, hi):
                yield [(root, lo, hi), *left, *right]


def _binary_tree(dist: Any) -> tuple[Tensor, Tensor]:
    """Argmin-splits: the root of each span is its smallest ``E`` (prob ``exp(s_v) / sum_span``),
    and the two sides are independent (disjoint noise)."""
    theta, batch = _rows(dist.scores, 1)
    n = theta.shape[-1]
    race = _Race(theta)
    values, probs = [], []
    for nodes in _binary_trees(0, n):
        value = torch.zeros(n, n, dtype=dist.scores.dtype, device=theta.device)
        prob = torch.ones(theta.shape[0], dtype=F64, device=theta.device)
        for v, lo, hi in nodes:
            prob = prob * race.win(v, range(lo, hi))
            # v's parent: the root of the smallest enclosing span
            enclosing = [(h - lo2, u) for u, lo2, h in nodes if u != v and lo2 <= lo and hi <= h]
            if enclosing:
                value[min(enclosing)[1], v] = 1
        values.append(value)
        probs.append(prob)
    return _stack(values, probs, batch)


def _matching(dist: Any) -> tuple[Tensor, Tensor]:
    """Row/column elimination: the smallest ``E`` among the free rows x free columns is matched,
    then its row and column leave; every perfect matching (a permutation) is reached by each
    order of its ``n`` pairs."""
    scores, batch = _rows(dist.scores, 2)
    n = scores.shape[-1]
    race = _Race(scores.reshape(-1, n * n))

    def free_block(taken: tuple[int, ...]) -> list[int]:
        rows = {p // n for p in taken}
        cols = {p % n for p in taken}
        return [i * n + j for i in range(n) for j in range(n) if i not in rows and j not in cols]

    values, probs = [], []
    for sigma in itertools.permutations(range(n)):
        pairs = [i * n + sigma[i] for i in range(n)]
        value = torch.zeros(n, n, dtype=dist.scores.dtype, device=scores.device)
        value[list(range(n)), list(sigma)] = 1
        values.append(value)
        probs.append(_sum_over_orders(race, pairs, free_block))
    return _stack(values, probs, batch)


def _arborescences(n: int, root: int) -> Iterator[tuple[int, ...]]:
    """Every parent vector (``-1`` at ``root``) whose parent pointers all lead to ``root``."""
    others = [v for v in range(n) if v != root]
    for choice in itertools.product(range(n), repeat=n - 1):
        parent = [-1] * n
        for v, p in zip(others, choice, strict=True):
            parent[v] = p
        if any(parent[v] == v for v in others):
            continue
        ok = True
        for v in others:
            seen, x = 0, v
            while x != root and seen <= n:
                x, seen = parent[x], seen + 1
            ok = ok and x == root
        if ok:
            yield tuple(parent)


def _arborescence(dist: Any) -> tuple[Tensor, Tensor]:
    """The law of the arborescence of least total noise ``sum E_uv``, by Edmonds' recursion.

    Every vertex but the root takes its cheapest in-edge (a race among its in-edges); the costs
    reduced by each head's minimum are fresh exponentials of the same rates on the edges not
    taken (memorylessness), and reducing all in-edges of a vertex by a constant does not change
    which arborescence is cheapest. A cycle of taken edges is contracted into one node whose
    in-edges (from outside the cycle) keep their reduced costs, so it too runs a race among
    them, and so on until no cycle is left. Expanding, the edge that enters a contracted node
    replaces the in-edge of the member it enters. Summing the branches' probabilities gives
    the exact law (ties have probability 0). The value is the adjacency ``A[u, v] = 1`` for
    ``u -> v``.
    """
    scores, batch = _rows(dist.scores, 2)
    n, root = scores.shape[-1], int(dist.root)
    theta = scores.reshape(-1, n * n).clone()
    absent = [u * n + v for u in range(n) for v in range(n) if u == v or v == root]
    theta[:, absent] = -torch.inf
    race = _Race(theta)
    present = torch.isfinite(theta).any(0).tolist()
    found: dict[tuple[int, ...], Tensor] = {}

    def parents(
        members: dict[int, frozenset[int]],
        chosen: dict[int, int | None],
        cycles: dict[int, list[int]],
    ) -> tuple[int, ...]:
        enters: dict[int, int] = {}
        top = [m for m in members if not any(m in c for c in cycles.values())]
        stack = [(m, chosen[m]) for m in top]
        while stack:
            node, edge = stack.pop()
            if edge is not None:  # the root's node has no in-edge
                enters[node] = edge
            for member in cycles.get(node, []):
                inside = edge is not None and edge % n in members[member]
                stack.append((member, edge if inside else chosen[member]))
        return tuple(-1 if v == root else enters[v] // n for v in range(n))

    def step(
        members: dict[int, frozenset[int]],
        chosen: dict[int, int | None],
        cycles: dict[int, list[int]],
        prob: Tensor,
    ) -> None:
        live = [m for m in members if not any(m in c for c in cycles.values())]
        pending = [m for m in live if chosen[m] is None and root not in members[m]]
        if not pending:
            key = parents(members, chosen, cycles)
            found[key] = found[key] + prob if key in found else prob
            return
        node = pending[0]
        inside = members[node]
        pool = [u * n + v for v in inside for u in range(n) if u not in inside]
        for edge in pool:
            if not present[edge]:
                continue
            new_chosen = {**chosen, node: edge}
            p = prob * race.win(edge, pool)
            # follow the taken edges back from ``node`` through the live nodes
            owner = {v: m for m in live for v in members[m]}
            path, x = [node], owner[edge // n]
            while x != node and new_chosen.get(x) is not None and x not in path:
                path.append(x)
                x = owner[new_chosen[x] // n]  # type: ignore[operator]
            if x == node:
                new_id = max(members) + 1
                new_members = {**members, new_id: frozenset().union(*(members[m] for m in path))}
                step(new_members, {**new_chosen, new_id: None}, {**cycles, new_id: path}, p)
            else:
                step(members, new_chosen, cycles, p)

    start = {v: frozenset([v]) for v in range(n)}
    ones = torch.ones(theta.shape[0], dtype=F64, device=theta.device)
    step(start, dict.fromkeys(range(n)), {}, ones)
    values, probs = [], []
    for parent in _arborescences(n, root):
        value = torch.zeros(n, n, dtype=dist.scores.dtype, device=scores.device)
        for v, u in enumerate(parent):
            if u >= 0:
                value[u, v] = 1
        values.append(value)
        probs.append(found.get(parent, torch.zeros_like(ones)))
    return _stack(values, probs, batch)


def _independent(dist: Any) -> tuple[Tensor, Tensor]:
    """The product law of the units: every combination of the base family's values."""
    base = dist.base_dist
    units_dims = int(dist.reinterpreted_batch_ndims)
    values, probs = brute_force_support(base)  # (C,) + batch + units + event, (C,) + batch + units
    if units_dims == 0:
        return values, probs
    c = values.shape[0]
    unit_shape = base.batch_shape[len(base.batch_shape) - units_dims :]
    batch = dist.batch_shape
    units = math.prod(unit_shape)
    if c**units > 2**20:
        raise ValueError(f"the product support has {c}^{units} values, too many to enumerate")
    nb = len(batch)
    # units first: (C, units) + batch + event and (C, units) + batch
    v = values.reshape(c, *batch, units, *base.event_shape).movedim(1 + nb, 1)
    p = probs.reshape(c, *batch, units).movedim(1 + nb, 1)
    out_v, out_p = [], []
    for combo in itertools.product(range(c), repeat=units):
        out_v.append(torch.stack([v[ci, u] for u, ci in enumerate(combo)], nb))
        prob = torch.ones(batch, dtype=F64, device=p.device)
        for u, ci in enumerate(combo):
            prob = prob * p[ci, u]
        out_p.append(prob)
    joint = torch.stack(out_v).reshape(len(out_v), *batch, *unit_shape, *base.event_shape)
    return joint, torch.stack(out_p)


def _no_law(reason: str) -> BruteForce:
    def refuse(dist: Any) -> tuple[Tensor, Tensor]:
        raise TypeError(f"{type(dist).__name__} has no brute-force law: {reason}")

    return refuse


def _register_families() -> None:
    from latentgrad import distributions as d

    register_brute_force(d.Categorical)(_categorical)
    register_brute_force(d.Bernoulli)(_bernoulli)
    register_brute_force(d.SparsemaxCategorical)(_sparsemax_categorical)
    register_brute_force(d.TopKSparsemax)(_topk_sparsemax)
    register_brute_force(d.KSubset)(_ksubset)
    register_brute_force(d.PlackettLuce)(_plackett_luce)
    register_brute_force(d.SpanningTree)(_spanning_tree)
    register_brute_force(d.Arborescence)(_arborescence)
    register_brute_force(d.BinaryTree)(_binary_tree)
    register_brute_force(d.Matching)(_matching)
    register_brute_force(d.Independent)(_independent)
    register_brute_force(d.SparseMAP)(
        _no_law("its decomposition into structures is not unique (only its mean is)")
    )
    for cls in (d.RelaxedCategorical, d.RelaxedBernoulli):
        register_brute_force(cls)(_no_law("it is continuous"))


_register_families()

__all__ = ["BruteForce", "brute_force_support", "probabilities_of", "register_brute_force"]
