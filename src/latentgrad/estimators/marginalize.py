"""Exact marginalization over the support, the support sum it shares with
:class:`~latentgrad.estimators.SumAndSample`, and packed losses that skip the values of
probability 0."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from latentgrad._validation import check_int
from latentgrad.estimators._base import (
    Estimate,
    Estimator,
    LatentDistribution,
    LossFn,
    check_support_size,
    evaluate_loss,
    mask_zero_prob,
)


def support_probs(dist: LatentDistribution, max_support: int) -> tuple[Tensor, Tensor]:
    """``dist.support_probs()`` after checking the support size against ``max_support``.

    Returns:
        ``(values, probs)``, shapes ``(S,) + batch_shape + event_shape`` and
        ``(S,) + batch_shape``.
    """
    check_support_size(dist, max_support)
    return dist.support_probs()


def support_sum(
    loss_fn: LossFn, values: Tensor, probs: Tensor, dist: LatentDistribution
) -> tuple[Tensor, Tensor]:
    """Evaluate ``loss_fn`` once on every row of ``values`` and sum ``probs * loss`` over the
    first ``probs.shape[0]`` rows, skipping exact zeros of ``probs``.

    Args:
        loss_fn: the loss.
        values: ``(N,) + batch_shape + event_shape``, the summed values first.
        probs: ``(M,) + batch_shape`` with ``M <= N``: the weights of the first ``M`` rows.
        dist: the distribution (for its batch shape).

    Returns:
        ``(sum, losses)`` of shapes ``batch_shape`` (differentiable in ``probs`` and the loss)
        and ``(N,) + batch_shape``.
    """
    losses = evaluate_loss(loss_fn, values, values.shape[:1], dist.batch_shape)
    return mask_zero_prob(probs, losses[: probs.shape[0]]), losses


class PackedSupport(NamedTuple):
    """The values of nonzero probability of a batch of supports, packed into one flat batch.

    Rows are ordered by batch element (row-major over ``batch_shape``), then by their slot in
    ``support_probs()``, so the rows of one element are contiguous.

    Attributes:
        values: ``(N,) + event_shape``, the values of nonzero probability.
        probs: ``(N,)``, their probabilities (differentiable as ``support_probs()`` gives them).
        element: ``(N,)`` long, the batch element of each row: its position in the flattened
            batch.
        slot: ``(N,)`` long, its position along the first dim of ``support_probs()``.
        batch_shape: the batch shape the rows come from.
    """

    values: Tensor
    probs: Tensor
    element: Tensor
    slot: Tensor
    batch_shape: torch.Size


def pack_support(values: Tensor, probs: Tensor, batch_shape: torch.Size) -> PackedSupport:
    """Keep only the rows of ``(values, probs)`` with ``probs > 0``, packed batch-major.

    Args:
        values: ``(A,) + batch_shape + event_shape``, as ``support_probs()`` returns them.
        probs: ``(A,) + batch_shape``.
        batch_shape: the distribution's batch shape.

    Returns:
        :class:`PackedSupport` with ``N = (probs > 0).sum()`` rows.

    Example:
        >>> import torch
        >>> values = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 1.0]]])
        >>> probs = torch.tensor([[1.0, 0.25], [0.0, 0.75]])  # (A = 2, B = 2)
        >>> packed = pack_support(values, probs, torch.Size([2]))
        >>> packed.element.tolist(), packed.slot.tolist(), packed.probs.tolist()
        ([0, 1, 1], [0, 0, 1], [1.0, 0.25, 0.75])
        >>> packed.values
        tensor([[1., 0.],
                [0., 1.],
                [1., 1.]])
    """
    num = probs.shape[0]
    rows = batch_shape.numel()
    event = values.shape[1 + len(batch_shape) :]
    p = probs.reshape(num, rows).T  # (B, A): batch-major rows
    index, slot = (p > 0).nonzero(as_tuple=True)
    flat = values.reshape(num, rows, *event)
    return PackedSupport(flat[slot, index], p[index, slot], index, slot, batch_shape)


PackedFn = Callable[[Tensor, Tensor], Tensor]
"""``fn(z, index)``: ``N`` values ``(N,) + event_shape`` and the batch element of each, ``(N,)``
long (a position in the flattened batch), to their losses ``(N,)``."""


class PackedLoss:
    """A loss that can also be evaluated on a ragged set of values, each tagged with its batch
    element: :class:`Marginalize` then evaluates it only where ``q(z) > 0``.

    An ordinary ``loss_fn(z)`` sees ``(S,) + batch_shape + event_shape`` and finds the context
    of each batch element (a decoder's target image, say) by broadcasting, so an exact sum over
    supports of different sizes must pad every element to the largest one. A ``PackedLoss``
    wraps ``fn(z, index)``, which scores ``N`` values ``(N,) + event_shape`` where
    ``index[n]`` is the batch element of row ``n`` (its position in the flattened batch) and
    returns ``(N,)`` losses. :class:`Marginalize` calls :meth:`packed` once on the values of
    nonzero probability of the whole batch; every other estimator calls the object as an
    ordinary ``loss_fn`` (:meth:`__call__` flattens the samples and calls ``fn``), so a
    ``PackedLoss`` works anywhere a ``loss_fn`` does, and a plain ``loss_fn`` keeps working with
    :class:`Marginalize` (padded).

    :meth:`from_rows` builds one from a loss of the values and the rows of batch-aligned
    tensors, the common case.

    Args:
        fn: ``fn(z, index) -> losses``, see above; it must treat rows independently.
        batch_shape: the batch shape of the distributions it serves.
        event_dim: the number of event dims of ``z`` (1 for vectors of bits).

    Shape:
        ``__call__``: ``z`` is ``sample_shape + batch_shape + event_shape``, the result
        ``sample_shape + batch_shape``. ``packed``: ``z`` is ``(N,) + event_shape``, ``index``
        ``(N,)``, the result ``(N,)``.

    Example:
        >>> import torch, latentgrad as lg
        >>> x = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])  # one target per element
        >>> loss = lg.estimators.PackedLoss.from_rows(lambda z, xs: (z - xs).square().sum(-1), x)
        >>> q = lg.SparseMAP(torch.tensor([[0.7, 0.5, 2.0], [-1.0, 0.3, 1.0]]),
        ...                  lg.mappings.oracles.FreeBits(3))
        >>> out = lg.Marginalize()(q, loss)  # the loss sees 4 rows, not 2 x 3 padded ones
        >>> out.value, out.extras["support_size"].tolist()
        (tensor([0.8000, 0.3000]), [3, 2])
    """

    def __init__(
        self,
        fn: PackedFn,
        batch_shape: torch.Size | tuple[int, ...],
        *,
        event_dim: int = 1,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if not isinstance(batch_shape, (tuple, torch.Size)) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in batch_shape
        ):
            raise TypeError(
                f"batch_shape must be a tuple of non-negative ints, got {batch_shape!r}"
            )
        self.fn = fn
        self.batch_shape = torch.Size(batch_shape)
        self.event_dim = check_int(event_dim, "event_dim", minimum=0)

    @classmethod
    def from_rows(
        cls, fn: Callable[..., Tensor], *context: Tensor, batch_dims: int = 1, event_dim: int = 1
    ) -> PackedLoss:
        """The packed loss ``fn(z, *rows)``, where ``rows`` are the rows of ``context`` that
        belong to each value.

        Args:
            fn: ``fn(z, *rows) -> losses``: ``z`` is ``(N,) + event_shape``, each of ``rows``
                is ``(N,) + c.shape[batch_dims:]`` for the context tensor ``c``; returns
                ``(N,)``.
            context: tensors whose first ``batch_dims`` dims are the batch shape (the same for
                all).
            batch_dims: how many leading dims of ``context`` are the batch.
            event_dim: the number of event dims of ``z``.

        Returns:
            :class:`PackedLoss` over ``batch_shape = context[0].shape[:batch_dims]``.
        """
        if not context:
            raise ValueError("context must hold at least one batch-aligned tensor")
        check_int(batch_dims, "batch_dims", minimum=1)
        for i, c in enumerate(context):
            if not isinstance(c, Tensor):
                raise TypeError(f"context[{i}] must be a torch.Tensor, got {type(c).__name__}")
        batch_shape = context[0].shape[:batch_dims]
        flat: list[Tensor] = []
        for i, c in enumerate(context):
            if c.shape[:batch_dims] != batch_shape:
                raise ValueError(
                    f"context[{i}] has batch shape {tuple(c.shape[:batch_dims])}; expected "
                    f"{tuple(batch_shape)} (that of context[0])"
                )
            flat.append(c.reshape(batch_shape.numel(), *c.shape[batch_dims:]))

        def rows_fn(z: Tensor, index: Tensor) -> Tensor:
            return fn(z, *(c[index] for c in flat))

        return cls(rows_fn, batch_shape, event_dim=event_dim)

    def packed(self, z: Tensor, index: Tensor) -> Tensor:
        """Losses of ``N`` values tagged with their batch elements: ``fn(z, index)``, checked
        to have shape ``(N,)``."""
        loss = self.fn(z, index)
        if not isinstance(loss, Tensor):
            raise TypeError(f"loss_fn.fn must return a torch.Tensor, got {type(loss).__name__}")
        if loss.shape != index.shape:
            raise ValueError(
                f"loss_fn.fn must return one loss per row, shape {tuple(index.shape)}, got "
                f"{tuple(loss.shape)}"
            )
        return loss

    def __call__(self, z: Tensor) -> Tensor:
        """The ordinary contract: ``sample_shape + batch_shape + event_shape`` to
        ``sample_shape + batch_shape``."""
        nb, ne = len(self.batch_shape), self.event_dim
        lead = z.dim() - nb - ne
        if lead < 0 or z.shape[lead : lead + nb] != self.batch_shape:
            raise ValueError(
                f"the loss expects values of shape sample_shape + batch_shape + event_shape "
                f"with batch_shape {tuple(self.batch_shape)} and {ne} event dim(s), got "
                f"{tuple(z.shape)}"
            )
        sample_shape = z.shape[:lead]
        rows = self.batch_shape.numel()
        index = torch.arange(rows, device=z.device).repeat(sample_shape.numel())
        flat = z.reshape(sample_shape.numel() * rows, *z.shape[z.dim() - ne :])
        return self.packed(flat, index).reshape(sample_shape + self.batch_shape)

    def __repr__(self) -> str:
        return f"PackedLoss(batch_shape={tuple(self.batch_shape)}, event_dim={self.event_dim})"


def packed_support_sum(
    loss_fn: PackedLoss, values: Tensor, probs: Tensor, dist: LatentDistribution
) -> tuple[Tensor, Tensor, int]:
    """``sum_z q(z) loss(z)`` with the loss evaluated once, on the rows of nonzero ``probs``
    only (:func:`pack_support`).

    Args:
        loss_fn: the packed loss (its ``batch_shape`` must be the distribution's).
        values: ``(A,) + batch_shape + event_shape``.
        probs: ``(A,) + batch_shape``.
        dist: the distribution.

    Returns:
        ``(sum, losses, rows)``: the sum, ``batch_shape`` (differentiable in ``probs`` and the
        loss); the losses back in the padded layout ``(A,) + batch_shape``, 0 at the skipped
        rows (detached); and ``N``, the rows evaluated.
    """
    batch = dist.batch_shape
    if loss_fn.batch_shape != batch:
        raise ValueError(
            f"loss_fn is a PackedLoss over batch_shape {tuple(loss_fn.batch_shape)}; the "
            f"distribution has batch_shape {tuple(batch)}"
        )
    if loss_fn.event_dim != len(dist.event_shape):
        raise ValueError(
            f"loss_fn is a PackedLoss with event_dim={loss_fn.event_dim}; the distribution "
            f"has event_shape {tuple(dist.event_shape)}"
        )
    packed = pack_support(values, probs, batch)
    losses = loss_fn.packed(packed.values, packed.element)
    if not losses.is_floating_point():
        raise TypeError(f"loss_fn must return a floating-point tensor, got {losses.dtype}")
    terms = packed.probs * losses
    total = terms.new_zeros(batch.numel()).index_add(0, packed.element, terms)
    full = losses.detach().new_zeros(batch.numel(), probs.shape[0])
    full[packed.element, packed.slot] = losses.detach()
    return total.reshape(batch), full.T.reshape(probs.shape), int(packed.element.shape[0])


class Marginalize(Estimator):
    """Exact expectation ``sum_{z: q(z) > 0} q(z) loss(z)`` and its exact gradient.

    The loss is evaluated once, batched, on every value the distribution returns from
    ``support_probs()``: all ``K`` categories for a softmax categorical, only the few values of
    nonzero probability for sparsemax (Correia et al. 2020), whose gradient is then exact and
    deterministic at the cost of the support size. Values of probability exactly 0 never enter
    the sum, so a NaN or infinite loss there does no harm.

    The distribution must declare ``has_enumerate_support``, and its support must be small
    enough (``max_support`` here, ``max_support_size`` of the family).

    **Padded or packed.** ``support_probs()`` pads every batch element to the largest support in
    the batch (SparseMAP, top-k sparsemax: rows of weight 0). An ordinary ``loss_fn(z)`` is
    evaluated on all ``(S,) + batch_shape`` of them. A :class:`PackedLoss` is evaluated once on
    the values of nonzero probability only, packed into one flat batch with the batch element
    of each row (:func:`pack_support`): the same sum and gradients at the cost of the mean
    support instead of the largest.

    Args:
        max_support: refuse (``ValueError``) distributions with more support points than this.

    Returns:
        :class:`Estimate` with ``loss_evals`` (loss evaluations per batch element: ``S``,
        padded; ``ceil(N / batch size)`` for the ``N`` packed rows), ``losses`` (at every
        support value, ``(S,) + batch_shape``; 0 at the rows a packed loss skipped) and
        ``extras``:
        ``"support_size"`` (values of nonzero probability per batch element, a tensor of
        shape ``batch_shape``) and ``"probs"`` (their probabilities, detached).

    Example:
        >>> import torch, latentgrad as lg
        >>> logits = torch.zeros(3, 4, requires_grad=True)
        >>> out = lg.Marginalize()(lg.Categorical(logits=logits), lambda z: z[..., 0])
        >>> out.value
        tensor([0.2500, 0.2500, 0.2500])

    References:
        [1] Correia, Niculae, Aziz & Martins, "Efficient Marginalization of Discrete and
            Structured Latent Variables via Sparsity", NeurIPS 2020.
    """

    requires = ("has_enumerate_support",)

    def __init__(self, max_support: int = 2**16) -> None:
        super().__init__()
        self.max_support = check_int(max_support, "max_support", minimum=1)

    def extra_repr(self) -> str:
        return f"max_support={self.max_support}"

    def _estimate(
        self, dist: LatentDistribution, loss_fn: LossFn, context: Tensor | None
    ) -> Estimate:
        values, probs = support_probs(dist, self.max_support)
        rows = dist.batch_shape.numel()
        if isinstance(loss_fn, PackedLoss) and rows > 0:
            total, losses, evaluated = packed_support_sum(loss_fn, values, probs, dist)
            loss_evals = max(1, math.ceil(evaluated / rows))
        else:
            total, losses = support_sum(loss_fn, values, probs, dist)
            loss_evals = values.shape[0]
        return Estimate.from_terms(
            total.unsqueeze(0),
            losses=losses,
            loss_evals=loss_evals,
            value=total,
            extras={"support_size": (probs > 0).sum(0), "probs": probs.detach()},
        )
