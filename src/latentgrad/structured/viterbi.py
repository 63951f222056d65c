"""Viterbi decoding: the best tag sequence of a linear chain, batched over rows."""

from __future__ import annotations

import torch
from torch import Tensor


def viterbi(unary: Tensor, transition: Tensor) -> Tensor:
    """The tag sequences maximizing ``sum_t unary[t, y_t] + sum_t transition[t, y_t, y_{t+1}]``.

    Dynamic programming over positions (the loop runs over the ``L`` positions, never over
    rows). Ties go to lower tags: the first maximum of each step, then of the last position.

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
    rows, length, k = unary.shape
    best = unary[:, 0]
    back = torch.zeros((rows, max(length - 1, 0), k), dtype=torch.long, device=unary.device)
    for t in range(length - 1):
        score, arg = (best.unsqueeze(-1) + transition[:, t]).max(1)  # first max: lowest tag
        back[:, t] = arg
        best = score + unary[:, t + 1]
    tags = torch.empty((rows, length), dtype=torch.long, device=unary.device)
    tags[:, -1] = best.argmax(-1)
    for t in range(length - 2, -1, -1):
        tags[:, t] = back[:, t].gather(1, tags[:, t + 1 : t + 2]).squeeze(1)
    return tags


__all__ = ["viterbi"]
