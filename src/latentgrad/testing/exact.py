"""Exact expectations and gradients by brute-force enumeration: the reference for estimators."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution

from latentgrad.estimators import LossFn
from latentgrad.testing.brute_force import brute_force_support


def exact_expectation(dist: Distribution, loss_fn: LossFn, max_support: int = 2**20) -> Tensor:
    """``E_q[loss(z)]`` by brute-force enumeration, shape ``batch_shape`` (differentiable).

    The values and their probabilities come from
    :func:`~latentgrad.testing.brute_force_support`, which shares no code with the family's
    sampler, ``log_prob`` or ``support_probs`` (nor with :class:`~latentgrad.Marginalize`), so
    it is an independent reference for every estimator. The loss is evaluated once on all
    values, ``(S,) + batch_shape + event_shape``; values of probability exactly 0 do not enter
    the sum (a NaN or infinite loss there is ignored).

    Args:
        dist: a family with a registered brute-force enumerator.
        loss_fn: ``z -> loss`` as for an estimator.
        max_support: refuse (``ValueError``) supports with more values than this.

    Returns:
        the expectation in the loss's dtype, shape ``batch_shape``, differentiable in the
        distribution's and the loss's parameters.

    Example:
        >>> import torch, latentgrad as lg
        >>> from latentgrad.testing import exact_expectation
        >>> q = lg.Bernoulli(logits=torch.zeros(2, dtype=torch.float64))
        >>> exact_expectation(q, lambda z: z.sum(-1))
        tensor(1., dtype=torch.float64)
    """
    if isinstance(max_support, bool) or not isinstance(max_support, int) or max_support < 1:
        raise ValueError(f"max_support must be a positive int, got {max_support!r}")
    values, probs = brute_force_support(dist)
    if values.shape[0] > max_support:
        raise ValueError(
            f"the support has {values.shape[0]} values, more than max_support={max_support}"
        )
    losses = _support_losses(loss_fn, values, probs)
    positive = probs > 0
    safe = torch.where(positive, losses.to(torch.float64), torch.zeros_like(probs))
    return (probs * safe).sum(0).to(losses.dtype)


def exact_gradient(
    dist_fn: Callable[[], Distribution],
    loss_fn: LossFn,
    params: Sequence[Tensor],
    max_support: int = 2**20,
) -> tuple[Tensor, ...]:
    """Gradient of ``sum(E_q[loss(z)])`` w.r.t. ``params``, by brute-force enumeration
    (:func:`exact_expectation`).

    Args:
        dist_fn: builds the distribution from ``params`` (called once, with grad enabled).
        loss_fn: the loss, as for an estimator.
        params: tensors requiring grad.
        max_support: as for :func:`exact_expectation`.

    Returns:
        one gradient per parameter (zeros where a parameter is unused).

    Example:
        >>> import torch, latentgrad as lg
        >>> from latentgrad.testing import exact_gradient
        >>> logits = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        >>> exact_gradient(lambda: lg.Categorical(logits=logits), lambda z: z[..., 0], [logits])
        (tensor([ 0.2222, -0.1111, -0.1111], dtype=torch.float64),)
    """
    with torch.enable_grad():
        total = exact_expectation(dist_fn(), loss_fn, max_support).sum()
        grads = torch.autograd.grad(total, list(params), allow_unused=True)
    return tuple(
        torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)
    )


def exact_multisample_bound(
    dist: Distribution, loss_fn: LossFn, num_samples: int, max_tuples: int = 2**20
) -> Tensor:
    """``E[-log (1/K) sum_k exp(-loss(z_k))]`` over ``K`` i.i.d. samples ``z_k ~ q``, by
    enumerating every ``K``-tuple of the support (the objective of
    :class:`~latentgrad.VIMCO`; its negative is the IWAE bound when ``loss`` is the negative
    log importance weight).

    The loss is evaluated once on the support (from
    :func:`~latentgrad.testing.brute_force_support`); a tuple's bound is a function of its
    values' losses, its probability the product of theirs. Tuples with a value of probability
    exactly 0 do not enter the sum (a NaN or infinite loss there is ignored).

    Args:
        dist: a family with a registered brute-force enumerator.
        loss_fn: ``z -> loss`` as for an estimator.
        num_samples: ``K >= 1`` (``K = 1`` gives :func:`exact_expectation`).
        max_tuples: refuse (``ValueError``) when ``S^K`` tuples are more than this, ``S`` the
            support size.

    Returns:
        the expected bound in the loss's dtype, shape ``batch_shape``, differentiable in the
        distribution's and the loss's parameters.

    Shape:
        the sum runs over ``S^K`` tuples; memory ``S^K * K * batch_shape`` numbers.

    Example:
        >>> import math, torch, latentgrad as lg
        >>> from latentgrad.testing import exact_multisample_bound
        >>> q = lg.Bernoulli(logits=torch.zeros(1, dtype=torch.float64))
        >>> bound = exact_multisample_bound(q, lambda z: 3 * z.sum(-1), num_samples=2)
        >>> expected = 0.25 * 3.0 - 0.5 * math.log((1 + math.exp(-3)) / 2)
        >>> bool(torch.isclose(bound, torch.tensor(expected, dtype=torch.float64)))
        True
    """
    k = _positive_int(num_samples, "num_samples")
    limit = _positive_int(max_tuples, "max_tuples")
    values, probs = brute_force_support(dist)
    size = values.shape[0]
    if size**k > limit:
        raise ValueError(
            f"the support has {size} values and {size}^{k} = {size**k} {k}-tuples, more than "
            f"max_tuples={limit}"
        )
    losses = _support_losses(loss_fn, values, probs)
    positive = probs > 0
    neg_log_w = torch.where(positive, losses.to(torch.float64), torch.zeros_like(probs))
    # Row t of `tuples` holds the base-S digits of t: every K-tuple of support indices once.
    index = torch.arange(size**k, device=probs.device).unsqueeze(1)
    place = size ** torch.arange(k, device=probs.device)
    tuples = torch.div(index, place, rounding_mode="floor") % size  # (S^K, K)
    weight = probs[tuples].prod(1)  # (S^K,) + B
    bound = math.log(k) - torch.logsumexp(-neg_log_w[tuples], 1)
    terms = torch.where(weight > 0, weight * bound, torch.zeros_like(weight))
    return terms.sum(0).to(losses.dtype)


def exact_multisample_gradient(
    dist_fn: Callable[[], Distribution],
    loss_fn: LossFn,
    params: Sequence[Tensor],
    num_samples: int,
    max_tuples: int = 2**20,
) -> tuple[Tensor, ...]:
    """Gradient of ``sum`` :func:`exact_multisample_bound` w.r.t. ``params`` (what VIMCO
    estimates without bias), by enumeration.

    Args:
        dist_fn: builds the distribution from ``params`` (called once, with grad enabled).
        loss_fn: the loss, as for an estimator.
        params: tensors requiring grad.
        num_samples: ``K``.
        max_tuples: as for :func:`exact_multisample_bound`.

    Returns:
        one gradient per parameter (zeros where a parameter is unused).

    Example:
        >>> import torch, latentgrad as lg
        >>> from latentgrad.testing import exact_gradient, exact_multisample_gradient
        >>> logits = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        >>> q, f = (lambda: lg.Categorical(logits=logits)), (lambda z: z[..., 0])
        >>> one = exact_multisample_gradient(q, f, [logits], num_samples=1)
        >>> torch.allclose(one[0], exact_gradient(q, f, [logits])[0])
        True
    """
    with torch.enable_grad():
        total = exact_multisample_bound(dist_fn(), loss_fn, num_samples, max_tuples).sum()
        grads = torch.autograd.grad(total, list(params), allow_unused=True)
    return tuple(
        torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)
    )


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _support_losses(loss_fn: LossFn, values: Tensor, probs: Tensor) -> Tensor:
    """``loss_fn(values)``, checked to have the shape of ``probs``, ``(S,) + batch_shape``."""
    losses = loss_fn(values)
    if not isinstance(losses, Tensor) or losses.shape != probs.shape:
        got = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
        raise ValueError(
            f"loss_fn must return shape (S,) + batch_shape = {tuple(probs.shape)}, got {got}"
        )
    return losses


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
