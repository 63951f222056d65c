"""Top-k sparsemax over structures: sparsemax restricted to the ``k`` highest-scoring structures.

A structure is a 0/1 vector ``z`` in ``{0, 1}^D`` scored by ``s_z = <theta, z>``. Sparsemax over
*all* structures, ``p = sparsemax((s_z)_z)``, is sparse but has exponentially many entries. Its
support is always a set of top-scoring structures, so Correia et al. [1] compute it from the
``k`` best structures only: if the sparsemax of the ``k`` best scores gives the ``k``-th one
weight 0, the threshold is above every remaining score and the result *is* sparsemax over all
structures; otherwise it is an approximation, flagged as such.

Two families of structures are provided, each with an exact, batched k-best algorithm:

* :func:`kbest_free_bits`: all ``2^D`` bit-vectors;
* :func:`kbest_budget_bits`: bit-vectors with at most ``budget`` ones.

Both are best-first enumerations of a tree over the structures in which every child scores at
most as much as its parent, so the ``k`` best are found in ``k`` pops of a frontier of at most
``k + 1`` nodes, without a heap: each pop is an ``argmax`` over the frontier of every row at
once. The Python loop runs over the ``k`` pops only, never over rows or items.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from latentgrad._numerics import upcast
from latentgrad._validation import check_finite_scores, check_int
from latentgrad.mappings._sparsemax import sparsemax

__all__ = ["TopKResult", "kbest_budget_bits", "kbest_free_bits", "topk_sparsemax"]


def _budget_count(dim: int, budget: int) -> int:
    """The number of bit-vectors of length ``dim`` with at most ``budget`` ones."""
    return sum(math.comb(dim, r) for r in range(min(budget, dim) + 1))


# -- the best-first engine ------------------------------------------------------------------------

#: A node of the enumeration tree, for each row: ``(key, mask, state)`` with ``key`` ``(M,)`` the
#: value to maximize, ``mask`` ``(M, D)`` bool the node's bit set, ``state`` ``(M, 2)`` long
#: bookkeeping used to generate its children.
_Node = tuple[Tensor, Tensor, Tensor]

#: Children of a batch of nodes: two nodes, an invalid child having key ``-inf``.
_Expand = Callable[[Tensor, Tensor, Tensor], tuple[_Node, _Node]]


def _best_first(root: _Node, k: int, expand: _Expand) -> tuple[Tensor, Tensor]:
    """The ``k`` largest-key nodes of a tree in which children never have larger keys.

    Every row holds a frontier of ``k + 1`` slots (key ``-inf`` = empty). Step ``t`` pops the
    largest key (the first slot among ties, so ties are broken deterministically and the same
    way for a row alone or in a batch), writes its first child into the popped slot and its
    second into slot ``t + 1``. Since children are no better than their parent, the popped keys
    come out in non-increasing order and are the ``k`` best nodes of the tree. A row whose tree
    has fewer than ``k`` nodes pops ``-inf`` keys (with meaningless masks) at the end.

    Shape:
        ``root``: ``(M,)``, ``(M, D)``, ``(M, 2)``; returns masks ``(M, k, D)`` and keys
        ``(M, k)``.
    """
    key0, mask0, state0 = root
    m, d = mask0.shape
    rows = torch.arange(m, device=mask0.device)
    key = key0.new_full((m, k + 1), -torch.inf)
    mask = mask0.new_zeros((m, k + 1, d))
    state = state0.new_zeros((m, k + 1, 2))
    key[:, 0], mask[:, 0], state[:, 0] = key0, mask0, state0
    out_key = key0.new_empty((m, k))
    out_mask = mask0.new_empty((m, k, d))
    for t in range(k):
        j = key.argmax(-1)
        node = (key[rows, j], mask[rows, j], state[rows, j])
        out_key[:, t], out_mask[:, t] = node[0], node[1]
        if t == k - 1:
            break
        (k1, m1, s1), (k2, m2, s2) = expand(*node)
        key[rows, j], mask[rows, j], state[rows, j] = k1, m1, s1
        key[:, t + 1], mask[:, t + 1], state[:, t + 1] = k2, m2, s2
    return out_mask, out_key


def _moved(mask: Tensor, src: Tensor | None, dst: Tensor, rows: Tensor) -> Tensor:
    """A copy of ``mask`` with bit ``src`` cleared (if given) and bit ``dst`` set, per row.

    Indices are clamped into range; callers discard the rows where they were not valid.
    """
    d = mask.shape[-1]
    out = mask.clone()
    if src is not None:
        out[rows, src.clamp(0, d - 1)] = False
    out[rows, dst.clamp(0, d - 1)] = True
    return out


def _smallest_subset_sums(costs: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` subsets of smallest total cost, for non-negative costs sorted increasingly.

    Tree: the root is the empty set; a subset whose largest index is ``m`` has the children
    "add ``m + 1``" and "replace ``m`` by ``m + 1``" (the empty set only the first, as
    "add 0"). Every subset has exactly one parent (remove its largest index ``m`` if ``m - 1``
    is in it, else move ``m`` back to ``m - 1``), and children cost at least as much as their
    parent because costs are non-negative and increasing.

    Shape:
        ``costs``: ``(M, D)``; returns subsets ``(M, k, D)`` bool, over the sorted positions,
        and their costs ``(M, k)``, increasing.
    """
    m, d = costs.shape
    rows = torch.arange(m, device=costs.device)
    padded = torch.cat([costs, costs.new_zeros((m, 1))], -1)  # index d is a harmless dummy

    def expand(key: Tensor, mask: Tensor, state: Tensor) -> tuple[_Node, _Node]:
        last = state[:, 0]  # largest index in the subset, -1 for the empty set
        nxt = last + 1
        c_next = padded.gather(-1, nxt.clamp(max=d).unsqueeze(-1)).squeeze(-1)
        c_last = padded.gather(-1, last.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        can_add = nxt < d
        can_replace = can_add & (last >= 0)
        new_state = torch.stack([nxt, nxt], -1)
        add = (
            torch.where(can_add, key - c_next, -torch.inf),
            _moved(mask, None, nxt, rows),
            new_state,
        )
        replace = (
            torch.where(can_replace, key - c_next + c_last, -torch.inf),
            _moved(mask, last, nxt, rows),
            new_state,
        )
        return add, replace

    root = (
        costs.new_zeros(m),
        torch.zeros((m, d), dtype=torch.bool, device=costs.device),
        torch.full((m, 2), -1, dtype=torch.long, device=costs.device),
    )
    subsets, neg_cost = _best_first(root, k, expand)
    return subsets, -neg_cost


def _largest_fixed_size_sums(values: Tensor, size: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` subsets of ``size[i]`` elements with the largest sums, values sorted decreasingly.

    Tree: elements ``0..r-1`` of a subset (ordered by position) start at positions ``0..r-1``
    (the root, the best subset) and are moved right one at a time, last element first: a node
    records the element ``c`` being moved and its position ``p``; its children move ``c`` one
    more step right (if that position is free) or start moving element ``c - 1`` from ``c - 1``
    to ``c``. Elements that never move form a prefix ``0..c-1`` (an unmoved element blocks
    those before it), so each subset is reached along exactly one path, and every move replaces
    a value by a later, no larger one. Rows with fewer than ``k`` subsets of their size end
    with ``-inf`` sums.

    Shape:
        ``values``: ``(M, D)``; ``size``: ``(M,)`` long in ``[0, D]``; returns subsets
        ``(M, k, D)`` bool over the sorted positions, and sums ``(M, k)``, non-increasing.
    """
    m, d = values.shape
    rows = torch.arange(m, device=values.device)
    padded = torch.cat([values, values.new_zeros((m, 1))], -1)  # index d is a harmless dummy
    positions = torch.arange(d, device=values.device)

    def at(index: Tensor) -> Tensor:
        return padded.gather(-1, index.clamp(0, d).unsqueeze(-1)).squeeze(-1)

    def occupied(mask: Tensor, index: Tensor) -> Tensor:
        return mask.gather(-1, index.clamp(0, d - 1).unsqueeze(-1)).squeeze(-1)

    def expand(key: Tensor, mask: Tensor, state: Tensor) -> tuple[_Node, _Node]:
        c, p = state[:, 0], state[:, 1]
        # Move element c from p to p + 1 (not at the root, where c == size).
        can_move = (c < size) & (p + 1 < d) & ~occupied(mask, p + 1)
        move = (
            torch.where(can_move, key + at(p + 1) - at(p), -torch.inf),
            _moved(mask, p, p + 1, rows),
            torch.stack([c, p + 1], -1),
        )
        # Start moving element c - 1 from position c - 1 to c.
        can_start = (c >= 1) & (c < d) & ~occupied(mask, c)
        start = (
            torch.where(can_start, key + at(c) - at(c - 1), -torch.inf),
            _moved(mask, c - 1, c, rows),
            torch.stack([c - 1, c], -1),
        )
        return move, start

    root_mask = positions < size.unsqueeze(-1)
    root_key = torch.where(root_mask, values, 0).sum(-1)
    root = (root_key, root_mask, torch.stack([size, torch.full_like(size, -1)], -1))
    return _best_first(root, k, expand)


def _unsort(mask_sorted: Tensor, perm: Tensor) -> Tensor:
    """Masks over sorted positions ``(M, k, D)`` back to the original item order."""
    out = torch.zeros_like(mask_sorted)
    return out.scatter_(-1, perm.unsqueeze(-2).expand_as(mask_sorted), mask_sorted)


def _scored(theta: Tensor, z_flat: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Structures in ``theta``'s dtype and batch shape, with their (differentiable) scores."""
    z = z_flat.to(theta.dtype).reshape((*theta.shape[:-1], k, theta.shape[-1]))
    scores = (z * theta.unsqueeze(-2)).sum(-1)
    return z, scores


# -- public API -----------------------------------------------------------------------------------


def kbest_free_bits(theta: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` bit-vectors ``z`` in ``{0, 1}^D`` with the largest scores ``<theta, z>``.

    The best vector is ``z_i = 1[theta_i > 0]``; any other one differs from it on a set ``F`` of
    flipped bits and scores ``sum(max(theta, 0)) - sum_{i in F} |theta_i|``. The ``k`` best are
    thus the ``k`` subsets of smallest ``|theta|``-sum, enumerated best-first over sorted
    ``|theta|`` (a subset with largest sorted index ``m`` has the two children "add ``m + 1``"
    and "replace ``m`` by ``m + 1``", each costing at least as much as its parent). Exact, in
    ``O(k (k + D))`` per row after one sort; batched over rows, the loop runs over the ``k``
    outputs.

    Ties are broken deterministically (the same way for a row alone or in a batch): bits with
    ``theta_i = 0`` are off in the best vector, equal ``|theta_i|`` are taken in index order.

    Args:
        theta: item scores, finite, items along the last dimension.
        k: the number of structures, ``1 <= k <= 2^D``.

    Returns:
        ``(structures, scores)``: the 0/1 vectors (dtype of ``theta``), best first, and their
        scores ``<theta, z>`` (differentiable in ``theta``), non-increasing up to rounding.

    Shape:
        ``theta``: ``(*, D)``; ``structures``: ``(*, k, D)``; ``scores``: ``(*, k)``.

    Raises:
        TypeError: if ``theta`` is not a floating-point tensor or ``k`` not an int.
        ValueError: if ``theta`` has NaN or infinite entries, or ``k`` is out of range.

    Example:
        >>> import torch
        >>> z, s = kbest_free_bits(torch.tensor([[2.0, -1.0, 0.5]]), 3)
        >>> z
        tensor([[[1., 0., 1.],
                 [1., 0., 0.],
                 [1., 1., 1.]]])
        >>> s
        tensor([[2.5000, 2.0000, 1.5000]])

    References:
        [1] Correia, Niculae, Aziz & Martins, "Efficient Marginalization of Discrete and
            Structured Latent Variables via Sparsity", NeurIPS 2020.
    """
    theta = check_finite_scores(theta, "theta")
    d = theta.shape[-1]
    k = check_int(k, "k", minimum=1, maximum=2**d, of=f"the number of bit-vectors of length {d}")
    with torch.no_grad():
        x = upcast(theta.detach()).reshape(-1, d)
        costs, perm = x.abs().sort(stable=True, dim=-1)
        flips, _ = _smallest_subset_sums(costs, k)
        z = (x > 0).unsqueeze(-2) ^ _unsort(flips, perm)
    return _scored(theta, z, k)


def kbest_budget_bits(theta: Tensor, k: int, budget: int) -> tuple[Tensor, Tensor]:
    """The ``k`` bit-vectors with at most ``budget`` ones with the largest scores ``<theta, z>``.

    Exact, by splitting on the number of ones ``r = 0..min(budget, D)``: for each ``r``, the
    ``k`` best vectors with exactly ``r`` ones are the ``k`` best ``r``-subsets of ``theta``
    sorted decreasingly, enumerated best-first (the root takes the ``r`` largest entries; a
    node moves its chosen elements to later, smaller entries one step at a time, last element
    first, so that every subset has a single parent scoring at least as much). The ``k`` best
    overall are the ``k`` best of the union of these lists (a stable sort). All sizes ``r`` run
    as one batch, so the work is ``O((budget + 1) k (k + D))`` per row in ``k`` batched steps.

    Ties are broken deterministically (the same way for a row alone or in a batch).

    Args:
        theta: item scores, finite, items along the last dimension.
        k: the number of structures, from 1 to the number of vectors with at most ``budget``
            ones, ``sum_{r <= budget} C(D, r)``.
        budget: the largest number of ones, ``>= 0`` (``budget >= D`` allows every vector).

    Returns:
        ``(structures, scores)``: the 0/1 vectors (dtype of ``theta``), best first, and their
        scores ``<theta, z>`` (differentiable in ``theta``), non-increasing up to rounding.

    Shape:
        ``theta``: ``(*, D)``; ``structures``: ``(*, k, D)``; ``scores``: ``(*, k)``.

    Raises:
        TypeError: if ``theta`` is not a floating-point tensor, or ``k`` or ``budget`` not an
            int.
        ValueError: if ``theta`` has NaN or infinite entries, ``budget < 0``, or ``k`` is out
            of range.

    Example:
        >>> import torch
        >>> z, s = kbest_budget_bits(torch.tensor([[2.0, 1.0, 0.5]]), 3, budget=1)
        >>> z
        tensor([[[1., 0., 0.],
                 [0., 1., 0.],
                 [0., 0., 1.]]])
        >>> s
        tensor([[2.0000, 1.0000, 0.5000]])

    References:
        [1] Correia, Niculae, Aziz & Martins, "Efficient Marginalization of Discrete and
            Structured Latent Variables via Sparsity", NeurIPS 2020.
    """
    theta = check_finite_scores(theta, "theta")
    budget = check_int(budget, "budget", minimum=0)
    d = theta.shape[-1]
    total = _budget_count(d, budget)
    of = f"the number of bit-vectors of length {d} with <= {budget} ones"
    k = check_int(k, "k", minimum=1, maximum=total, of=of)
    with torch.no_grad():
        x = upcast(theta.detach()).reshape(-1, d)
        n = x.shape[0]
        sizes = min(budget, d) + 1
        values, perm = x.sort(stable=True, dim=-1, descending=True)
        size = torch.arange(sizes, device=x.device).repeat(n)  # row-major: (row, r)
        subsets, sums = _largest_fixed_size_sums(values.repeat_interleave(sizes, 0), size, k)
        sums = sums.reshape(n, sizes * k)
        subsets = subsets.reshape(n, sizes * k, d)
        order = sums.sort(stable=True, dim=-1, descending=True).indices[:, :k]
        best = subsets.gather(1, order.unsqueeze(-1).expand(n, k, d))
        z = _unsort(best, perm)
    return _scored(theta, z, k)


class TopKResult(NamedTuple):
    """The result of :func:`topk_sparsemax`.

    Attributes:
        structures: the ``k`` best structures, ``(*, k, D)`` 0/1 in the dtype of ``theta``.
        weights: sparsemax of their scores, ``(*, k)``, differentiable in ``theta``; exactly 0
            for structures outside the support.
        exact: ``(*,)`` bool, True where ``weights`` is sparsemax over *all* structures (the
            missing ones having weight 0).
    """

    structures: Tensor
    weights: Tensor
    exact: Tensor


def topk_sparsemax(
    theta: Tensor,
    k: int,
    *,
    structures: Literal["free", "budget"] = "free",
    budget: int | None = None,
) -> TopKResult:
    """Top-k sparsemax: sparsemax over the scores of the ``k`` best structures.

    Sparsemax over all structures ``z`` with scores ``s_z = <theta, z>`` puts weight
    ``max(s_z - tau, 0)`` on each; its support consists of top-scoring structures. Top-k
    sparsemax [1] finds the ``k`` best structures exactly (:func:`kbest_free_bits` or
    :func:`kbest_budget_bits`) and applies :func:`~latentgrad.mappings.sparsemax` to their
    scores. When the support of that sparsemax is smaller than ``k`` (its ``k``-th weight is
    0), the threshold is at least the ``k``-th best score and hence every score left out, so the
    result equals sparsemax over all structures: ``exact`` is True. It is also True when ``k``
    is the number of structures. Otherwise (support of size ``k``) the result is only an
    approximation, and ``exact`` is False: increase ``k``.

    Then ``E_p[f(z)] = sum_j weights_j f(structures_j)`` is an exact, deterministic expectation
    whose gradient flows into ``theta`` through the weights (the Jacobian of sparsemax times
    the structures).

    Args:
        theta: item scores, finite, items along the last dimension.
        k: the number of structures kept.
        structures: ``"free"`` (all ``2^D`` bit-vectors) or ``"budget"`` (at most ``budget``
            ones).
        budget: the largest number of ones, required for (and only allowed with)
            ``structures="budget"``.

    Returns:
        A :class:`TopKResult` ``(structures, weights, exact)``.

    Shape:
        ``theta``: ``(*, D)``; ``structures``: ``(*, k, D)``; ``weights``: ``(*, k)``;
        ``exact``: ``(*)``.

    Raises:
        TypeError: if an argument has the wrong type.
        ValueError: if ``theta`` has NaN or infinite entries, ``k`` is out of range,
            ``structures`` is unknown, or ``budget`` is missing, negative or not allowed.

    Example:
        >>> import torch
        >>> res = topk_sparsemax(torch.tensor([[2.0, -1.0, 0.3]]), 4)
        >>> res.structures
        tensor([[[1., 0., 1.],
                 [1., 0., 0.],
                 [1., 1., 1.],
                 [1., 1., 0.]]])
        >>> res.weights
        tensor([[0.6500, 0.3500, 0.0000, 0.0000]])
        >>> res.exact
        tensor([True])

    References:
        [1] Correia, Niculae, Aziz & Martins, "Efficient Marginalization of Discrete and
            Structured Latent Variables via Sparsity", NeurIPS 2020.
        [2] Martins & Astudillo, "From Softmax to Sparsemax: A Sparse Model of Attention and
            Multi-Label Classification", ICML 2016.
    """
    if structures == "free":
        if budget is not None:
            raise ValueError("budget is only allowed with structures='budget'")
        z, scores = kbest_free_bits(theta, k)
        total = 2 ** z.shape[-1]
    elif structures == "budget":
        if budget is None:
            raise ValueError("budget is required with structures='budget'")
        z, scores = kbest_budget_bits(theta, k, budget)
        total = _budget_count(z.shape[-1], budget)
    else:
        raise ValueError(f"structures must be 'free' or 'budget', got {structures!r}")
    weights = sparsemax(scores, dim=-1)
    exact = weights[..., -1] == 0
    if k == total:
        exact = torch.ones_like(exact)
    return TopKResult(z, weights, exact)
