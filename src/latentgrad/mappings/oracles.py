"""MAP oracles: linear maximization over a set of structures, the only thing SparseMAP needs.

A structure is a 0/1 vector ``z`` in ``R^D`` (the indicator of its parts). An *oracle* for a set
``Z`` of structures is a callable ``oracle(w) -> z`` that maps scores ``w`` of shape ``(N, D)``
to 0/1 indicators of shape ``(N, D)`` (same dtype as ``w``) of a maximizer of ``<w, z>`` over
``Z``, row by row, batched over the ``N`` rows and with deterministic tie-breaking (the same
``w`` always gives the same ``z``). Oracle classes expose:

* ``dim``: the structure dimension ``D``;
* ``num_structures`` (where it is cheap to count): ``|Z|``;
* ``enumerate()`` (for small sizes): every structure as a ``(|Z|, D)`` 0/1 tensor, used by
  brute-force tests.

:func:`latentgrad.mappings._sparsemap.sparsemap` calls an oracle on the gradient direction
``theta - mu`` once per iteration.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from latentgrad.mappings._sparsemap import support_slots

#: Largest dimension for which ``enumerate()`` of the bit-vector oracles builds its structures.
_MAX_ENUMERATE_BITS = 20


def _check_dim_arg(d: object, name: str = "d") -> int:
    if isinstance(d, bool) or not isinstance(d, int):
        raise TypeError(f"{name} must be an int, got {type(d).__name__}")
    if d < 1:
        raise ValueError(f"{name} must be >= 1, got {d}")
    return d


def _check_scores(w: object, dim: int) -> Tensor:
    if not isinstance(w, Tensor):
        raise TypeError(f"w must be a torch.Tensor, got {type(w).__name__}")
    if not w.is_floating_point():
        raise TypeError(f"w must have a floating-point dtype, got {w.dtype}")
    if w.dim() != 2 or w.shape[1] != dim:
        raise ValueError(f"w must have shape (N, {dim}), got {tuple(w.shape)}")
    return w


def _all_bit_vectors(d: int, device: torch.device | None = None) -> Tensor:
    """All ``2**d`` bit-vectors as a ``(2**d, d)`` long tensor, most significant bit first."""
    if d > _MAX_ENUMERATE_BITS:
        raise ValueError(
            f"enumerating 2**{d} bit-vectors is too much (at most 2**{_MAX_ENUMERATE_BITS})"
        )
    codes = torch.arange(2**d, device=device).unsqueeze(-1)
    shifts = torch.arange(d - 1, -1, -1, device=device)
    return (codes >> shifts) & 1


class FreeBits:
    """Oracle over all ``2**d`` bit-vectors: ``z_i = 1[w_i > 0]`` (ties at 0 give 0).

    Its convex hull is the unit cube ``[0, 1]^d``, so SparseMAP with this oracle is the clamp
    ``min(max(theta, 0), 1)``, written as a sparse combination of bit-vectors.

    Args:
        d: number of bits.

    Shape:
        ``w``: ``(N, d)``; output: ``(N, d)``, same dtype.

    Example:
        >>> import torch
        >>> FreeBits(3)(torch.tensor([[0.5, -1.0, 0.0]]))
        tensor([[1., 0., 0.]])
    """

    def __init__(self, d: int) -> None:
        self.dim = _check_dim_arg(d)

    @property
    def num_structures(self) -> int:
        return 2**self.dim

    def __call__(self, w: Tensor) -> Tensor:
        w = _check_scores(w, self.dim)
        return (w > 0).to(w.dtype)

    def enumerate(self) -> Tensor:
        """All ``2**d`` bit-vectors, shape ``(2**d, d)``, float32."""
        return _all_bit_vectors(self.dim).float()

    def sparse_projection(self, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """SparseMAP in closed form: the nested decomposition of ``clamp(theta, 0, 1)``.

        ``mu* = clamp(theta, 0, 1)`` is the mean of the threshold sets ``{i : mu*_i >= t}``
        for ``t`` uniform in ``(0, 1]``. With ``v_1 >= ... >= v_d`` the sorted values of
        ``mu*`` (``v_0 = 1``, ``v_{d+1} = 0``), the set of the ``k`` largest coordinates gets
        weight ``v_k - v_{k+1}``. The sets of positive weight are nested, hence affinely
        independent, and as few as any exact decomposition can have (one more than the number
        of distinct values of ``mu*`` strictly inside ``(0, 1)``). On a fixed support the
        weights are the unique solution of SparseMAP's KKT system, so differentiating these
        formulas gives the same gradient as the KKT system. :func:`~latentgrad.mappings.sparsemap`
        uses this instead of its iterative solver.

        Args:
            theta: scores, ``(N, d)``; weights and ``mu*`` are differentiable in them.

        Returns:
            ``(structures, weights, mu)``: ``(N, A, d)`` bool, largest set first; ``(N, A)``
            in ``theta``'s dtype (padding slots repeat the first set at weight 0); and
            ``mu* = clamp(theta, 0, 1)``, ``(N, d)``.
        """
        theta = _check_scores(theta, self.dim)
        n, d = theta.shape
        mu = theta.clamp(0.0, 1.0)
        values, order = mu.sort(dim=1, descending=True, stable=True)
        ones, zeros = values.new_ones(n, 1), values.new_zeros(n, 1)
        # Weight of the k largest coordinates, for k = d, d - 1, ..., 0.
        weight = (torch.cat([ones, values], 1) - torch.cat([values, zeros], 1)).flip(1)
        slots, support = support_slots(weight.detach() > 0)
        weights = weight.gather(1, slots) * support
        k = d - slots
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(d).expand(n, d))
        structures = rank.unsqueeze(1) < k.unsqueeze(2)
        return structures, weights, mu

    def __repr__(self) -> str:
        return f"FreeBits(d={self.dim})"


class BudgetBits:
    """Oracle over bit-vectors with at most ``budget`` ones.

    The maximizer keeps the ``budget`` largest scores among the positive ones. Ties are broken
    towards the lower index (a stable sort), and scores of exactly 0 give 0.

    Args:
        d: number of bits.
        budget: the largest number of ones, ``1 <= budget <= d``.

    Shape:
        ``w``: ``(N, d)``; output: ``(N, d)``, same dtype.

    Example:
        >>> import torch
        >>> BudgetBits(4, 2)(torch.tensor([[0.5, 2.0, 1.0, -1.0]]))
        tensor([[0., 1., 1., 0.]])
    """

    def __init__(self, d: int, budget: int) -> None:
        self.dim = _check_dim_arg(d)
        budget = _check_dim_arg(budget, "budget")
        if budget > self.dim:
            raise ValueError(f"budget must be <= d = {self.dim}, got {budget}")
        self.budget = budget

    @property
    def num_structures(self) -> int:
        return sum(math.comb(self.dim, k) for k in range(self.budget + 1))

    def __call__(self, w: Tensor) -> Tensor:
        w = _check_scores(w, self.dim)
        if self.budget == self.dim:
            return (w > 0).to(w.dtype)
        order = torch.sort(w, dim=-1, descending=True, stable=True).indices[:, : self.budget]
        top = torch.zeros_like(w).scatter_(-1, order, 1.0)
        return top * (w > 0).to(w.dtype)

    def enumerate(self) -> Tensor:
        """All bit-vectors with at most ``budget`` ones, shape ``(num_structures, d)``, float32."""
        bits = _all_bit_vectors(self.dim)
        return bits[bits.sum(-1) <= self.budget].float()

    def __repr__(self) -> str:
        return f"BudgetBits(d={self.dim}, budget={self.budget})"


# The structure oracles live in their own module; they are part of this public one.
from latentgrad.mappings._structure_oracles import (  # noqa: E402
    ArborescenceOracle,
    KSubsetOracle,
    PermutationOracle,
    SequenceOracle,
    SpanningTreeOracle,
    StructureOracle,
)

__all__ = [
    "ArborescenceOracle",
    "BudgetBits",
    "FreeBits",
    "KSubsetOracle",
    "PermutationOracle",
    "SequenceOracle",
    "SpanningTreeOracle",
    "StructureOracle",
]
