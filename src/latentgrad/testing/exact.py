"""Exact expectations and gradients by enumeration: the reference every estimator is tested on."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution

from latentgrad.estimators._base import LossFn
from latentgrad.estimators.marginalize import Marginalize


def exact_expectation(dist: Distribution, loss_fn: LossFn, max_support: int = 2**20) -> Tensor:
    """``E_q[loss(z)]`` summed over the whole support, shape ``batch_shape`` (differentiable)."""
    return Marginalize(max_support=max_support)(dist, loss_fn).surrogate


def exact_gradient(
    dist_fn: Callable[[], Distribution],
    loss_fn: LossFn,
    params: Sequence[Tensor],
    max_support: int = 2**20,
) -> tuple[Tensor, ...]:
    """Gradient of ``sum(E_q[loss(z)])`` w.r.t. ``params``, by enumeration.

    Args:
        dist_fn: builds the distribution from ``params`` (called once, with grad enabled).
        loss_fn: the loss, as for an estimator.
        params: tensors requiring grad.

    Returns:
        one gradient per parameter (zeros where a parameter is unused).
    """
    with torch.enable_grad():
        total = exact_expectation(dist_fn(), loss_fn, max_support).sum()
        grads = torch.autograd.grad(total, list(params), allow_unused=True)
    return tuple(
        torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)
    )


def replicated_gradients(
    surrogate_fn: Callable[[Tensor], Tensor],
    param: Tensor,
    num_replicates: int,
    chunk_size: int | None = None,
) -> Tensor:
    """Independent gradient estimates, one per replicate, in a few batched backward passes.

    ``surrogate_fn`` receives a leaf ``rep`` of shape ``(R,) + param.shape`` holding copies of
    ``param`` and must return a tensor with leading dim ``R`` whose entry ``r`` depends only on
    ``rep[r]`` (build the distribution and the loss from ``rep``, so the replicates are just more
    batch elements). The gradient of the sum w.r.t. ``rep`` then holds ``R`` independent
    estimates of the gradient w.r.t. ``param``.

    Returns:
        shape ``(num_replicates,) + param.shape``.
    """
    chunk = num_replicates if chunk_size is None else chunk_size
    out = []
    done = 0
    while done < num_replicates:
        r = min(chunk, num_replicates - done)
        rep = param.detach().unsqueeze(0).expand((r, *param.shape)).clone().requires_grad_(True)
        with torch.enable_grad():
            surrogate = surrogate_fn(rep)
            if surrogate.shape[:1] != (r,):
                raise ValueError(
                    f"surrogate_fn must return a tensor with leading dim {r}, "
                    f"got shape {tuple(surrogate.shape)}"
                )
            (grad,) = torch.autograd.grad(surrogate.sum(), rep, allow_unused=True)
        out.append(torch.zeros_like(rep) if grad is None else grad)
        done += r
    return torch.cat(out, 0)
