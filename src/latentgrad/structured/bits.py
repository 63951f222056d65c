"""Bit-vectors and subsets as integers: the enumeration tables of the subset dynamic programs.

One convention everywhere: the subset (or bit-vector) numbered ``m`` holds item ``i`` exactly
when bit ``i`` of ``m`` is set (least significant bit first), so ``m ^ (1 << i)`` removes item
``i`` from it. The samplers' exact probabilities (dynamic programs over the subsets of a
structure's parts) and the bit-vector MAP oracles' enumerations use these tables.
"""

from __future__ import annotations

from functools import cache, lru_cache
from typing import NamedTuple

import torch
from torch import Tensor

from latentgrad._validation import check_int

#: Largest number of bits :func:`bit_vectors` enumerates (``2**20`` rows).
MAX_BITS = 20


@cache
def _bit_vectors_cpu(d: int) -> Tensor:
    codes = torch.arange(2**d, device="cpu").unsqueeze(-1)
    return (codes >> torch.arange(d, device="cpu")) & 1 == 1


def bit_vectors(d: int, device: torch.device | str | None = None) -> Tensor:
    """All ``2**d`` bit-vectors of length ``d``: row ``m`` holds the bits of ``m``, bit ``i`` in
    column ``i`` (least significant first). Built once per ``d`` (cached on the CPU).

    Args:
        d: the number of bits, ``0 <= d <=`` :data:`MAX_BITS`.
        device: where to return the table.

    Returns:
        bool ``(2**d, d)``; do not modify it in place (it may be the cached table).

    Raises:
        ValueError: if ``d`` is negative or above :data:`MAX_BITS`.

    Example:
        >>> bit_vectors(2).int()
        tensor([[0, 0],
                [1, 0],
                [0, 1],
                [1, 1]], dtype=torch.int32)
    """
    d = check_int(d, "d", minimum=0)
    if d > MAX_BITS:
        raise ValueError(f"enumerating 2**{d} bit-vectors is too much (d <= {MAX_BITS})")
    table = _bit_vectors_cpu(d)
    return table if device is None else table.to(device)


class SubsetLayer(NamedTuple):
    """The subsets of one size ``k`` of ``m`` items, for dynamic programs that grow subsets.

    Attributes:
        subsets: the ``k``-subsets as integers (see the module notes), increasing, long ``(C,)``.
        items: the items of each subset, increasing, long ``(C, k)``.
        smaller: each subset without ``items[c, j]``, as an integer, long ``(C, k)``.
        position: the position of ``smaller[c, j]`` in the previous layer's ``subsets``, long
            ``(C, k)``.
    """

    subsets: Tensor
    items: Tensor
    smaller: Tensor
    position: Tensor


@cache
def _subset_layers_cpu(m: int) -> tuple[SubsetLayer, ...]:
    bits = _bit_vectors_cpu(m)
    size = bits.sum(-1)
    position = torch.zeros(2**m, dtype=torch.long, device="cpu")
    for k in range(m + 1):
        of_size = torch.nonzero(size == k).squeeze(-1)
        position[of_size] = torch.arange(of_size.numel(), device="cpu")
    layers = []
    for k in range(1, m + 1):
        subsets = torch.nonzero(size == k).squeeze(-1)
        items = torch.nonzero(bits[subsets])[:, 1].reshape(-1, k)
        smaller = subsets.unsqueeze(-1) ^ (1 << items)
        layers.append(SubsetLayer(subsets, items, smaller, position[smaller]))
    return tuple(layers)


@lru_cache(maxsize=32)
def subset_layers(m: int, device: torch.device | None = None) -> tuple[SubsetLayer, ...]:
    """The subsets of ``m`` items by size, ``k = 1..m``: one :class:`SubsetLayer` each.

    A dynamic program over subsets fills layer ``k`` from layer ``k - 1``: the value of a subset
    combines the values of the subsets ``position`` points to, one per removed item. Cached per
    ``(m, device)``.

    Example:
        >>> layer = subset_layers(3)[1]  # the 2-subsets of 3 items
        >>> layer.subsets, layer.items.tolist(), layer.position.tolist()
        (tensor([3, 5, 6]), [[0, 1], [0, 2], [1, 2]], [[1, 0], [2, 0], [2, 1]])
    """
    layers = _subset_layers_cpu(check_int(m, "m", minimum=0))
    if device is None or torch.device(device) == torch.device("cpu"):
        return layers
    return tuple(SubsetLayer(*(t.to(device) for t in layer)) for layer in layers)


__all__ = ["MAX_BITS", "SubsetLayer", "bit_vectors", "subset_layers"]
