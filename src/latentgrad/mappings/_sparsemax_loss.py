"""The sparsemax loss: the classification loss whose gradient is ``sparsemax(s) - onehot(y)``."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from latentgrad._numerics import upcast
from latentgrad._validation import check_scores, is_meta
from latentgrad.mappings._shared import apply_function, cast
from latentgrad.mappings._sparsemax import sparsemax_threshold


def _check_target(target: object, scores: Tensor) -> Tensor:
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.dtype != torch.long:
        raise TypeError(f"target must have dtype torch.long, got {target.dtype}")
    if target.shape != scores.shape[:-1]:
        raise ValueError(
            f"target must have shape scores.shape[:-1] = {tuple(scores.shape[:-1])}, "
            f"got {tuple(target.shape)}"
        )
    if is_meta(target) or not target.numel():
        return target
    if bool(((target < 0) | (target >= scores.shape[-1])).any()):
        raise ValueError(f"target must hold class indices in [0, {scores.shape[-1]})")
    return target


class SparsemaxLossFunction(torch.autograd.Function):
    """Autograd Function of the sparsemax loss along the last dimension (use :func:`sparsemax_loss`).

    Forward: ``L(s, y) = -s_y + 1/2 sum_{j in S} (s_j^2 - tau^2) + 1/2``, computed as
    ``tau - s_y + ||p||^2 / 2 + 1/2`` with ``p = sparsemax(s)`` (the two agree because
    ``s_j = p_j + tau`` on the support and ``sum(p) = 1``; the second form never multiplies a
    ``-inf`` score). Backward: ``dL/ds = p - onehot(y)``.

    Inputs: ``scores`` (float, classes last) and ``target`` (long). Returns ``(loss, p)``; ``p``
    is not differentiable.
    """

    @staticmethod
    def forward(scores: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        z, tau = sparsemax_threshold(upcast(scores))
        z_target = z.gather(-1, target.unsqueeze(-1))
        p = (z - tau).clamp_min_(0)
        loss = (tau - z_target).squeeze(-1) + p.square().sum(-1).add_(1).mul_(0.5)
        return cast(loss, scores.dtype), cast(p, scores.dtype)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        _, target = inputs
        _, p = output
        ctx.mark_non_differentiable(p)
        ctx.save_for_backward(p, target)

    @staticmethod
    def backward(ctx: Any, grad: Tensor, _grad_p: Tensor | None) -> tuple[Tensor | None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None
        p, target = ctx.saved_tensors
        g = upcast(grad).unsqueeze(-1)
        out = upcast(p) * g
        out.scatter_add_(-1, target.unsqueeze(-1), -g)
        return cast(out, p.dtype), None


def sparsemax_loss(scores: Tensor, target: Tensor) -> Tensor:
    """The sparsemax loss, the classification loss whose gradient is ``sparsemax(s) - onehot(y)``.

    ``L(s, y) = -s_y + 1/2 sum_{j in S(s)} (s_j^2 - tau(s)^2) + 1/2`` with ``S`` and ``tau`` the
    support and threshold of ``sparsemax(s)``. It is convex in ``s``, non-negative, and zero
    exactly when ``sparsemax(s)`` is the one-hot vector of ``y`` with a margin of 1: it plays the
    role cross-entropy plays for softmax. A target whose score is ``-inf`` gets an infinite loss
    (its gradient stays finite).

    Args:
        scores: class scores, classes along the last dimension (NaN and ``+inf`` rejected).
        target: class indices (``torch.long``) of shape ``scores.shape[:-1]``.

    Returns:
        The loss per example, shape ``scores.shape[:-1]``, in the dtype of ``scores``.

    Shape:
        ``scores``: ``(*, K)``, ``target``: ``(*)``, output: ``(*)``.

    Example:
        >>> import torch
        >>> sparsemax_loss(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0]))
        tensor([0.])
        >>> sparsemax_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([1]))
        tensor([0.2500])

    References:
        [1] Martins & Astudillo, "From Softmax to Sparsemax: A Sparse Model of Attention and
            Multi-Label Classification", ICML 2016.
    """
    scores = check_scores(scores, "scores")
    target = _check_target(target, scores)
    loss, _ = apply_function(SparsemaxLossFunction, scores, target)
    return loss


class SparsemaxLoss(nn.Module):
    """Module form of :func:`sparsemax_loss` with a reduction.

    Args:
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Shape:
        ``scores``: ``(*, K)``, ``target``: ``(*)``; output: scalar, or ``(*)`` for ``"none"``.

    Example:
        >>> import torch
        >>> SparsemaxLoss()(torch.tensor([[0.0, 0.0], [3.0, 0.0]]), torch.tensor([1, 0]))
        tensor(0.1250)

    References:
        [1] Martins & Astudillo, ICML 2016.
    """

    def __init__(self, reduction: Literal["mean", "sum", "none"] = "mean") -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.reduction = reduction

    def forward(self, scores: Tensor, target: Tensor) -> Tensor:
        loss = sparsemax_loss(scores, target)
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
