"""Viterbi decoding: the best tag sequence of a linear chain, batched over rows."""

from __future__ import annotations

import torch
from torch import Tensor

from latentgrad import _native


def viterbi(unary: Tensor, transition: Tensor) -> Tensor:
    """The tag sequences maximizing ``sum_t unary[t, y_t] + sum_t transition[t, y_t, y_{t+1}]``.

    Dynamic programming over positions (the loop runs over the ``L`` positions, never over
    rows). Ties go to lower tags: the first maximum of each step, then of the last position.
    Float64 scores on the CPU go to the compiled kernel of :mod:`latentgrad._native` where numba
    is installed (the same recursion row by row, the same tags).

    Args:
        unary: scores of tag ``a`` at position ``t``, ``(N, L, K)``.
        transition: scores of tags ``a`` at ``t`` and ``b`` at ``t + 1``, ``(N, L - 1, K, K)``.

    Returns:
        The tags, long ``(N, L)``.

    Example:
        >>> unary = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
        >>> transition = torch.tensor([[[[0.0, 0.0], [0.0, 3.0]]]])  # rewards 1 then 1
        >>> viterbi(unary, transition)
        tensor([[1, 1]])

    References:
        [1] Viterbi, "Error bounds for convolutional codes and an asymptotically optimum
            decoding algorithm", IEEE Trans. Information Theory, 1967.
    """
    if (
        unary.dim() == 3
        and unary.dtype == transition.dtype == torch.float64
        and unary.device.type == "cpu"
        and _native.available()
    ):
        # the same recursion and tie-breaking, compiled, row by row
        rows, length, k = unary.shape
        w = torch.cat([unary.reshape(rows, -1), transition.reshape(rows, -1)], 1)
        return torch.from_numpy(_native.viterbi_rows(w.detach().numpy(), length, k))
    # (Steps unbound once and per-step results kept in lists: the oracles call this in solver
    # loops, where the number of tensor operations, not their size, sets the time.)
    units, steps = unary.unbind(1), transition.unbind(1)
    best = units[0]
    back = []
    for step, unit in zip(steps, units[1:], strict=True):
        score, arg = (best.unsqueeze(-1) + step).max(1)  # first max: lowest tag
        back.append(arg)
        best = score + unit
    tag = best.argmax(-1, keepdim=True)
    tags = [tag]
    for arg in reversed(back):
        tag = arg.gather(1, tag)
        tags.append(tag)
    return torch.cat(tags[::-1], 1)


__all__ = ["viterbi"]
