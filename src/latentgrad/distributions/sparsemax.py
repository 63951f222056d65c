"""Categorical distribution with sparsemax probabilities: most categories have probability 0."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from torch.distributions import constraints

from latentgrad._numerics import safe_log, upcast
from latentgrad._validation import check_optional_int, check_scores, resolve_validate_args
from latentgrad.distributions._base import DiscreteDistribution
from latentgrad.distributions.categorical import _OneHotFamily, one_hot_like
from latentgrad.mappings import sparsemax


class SparsemaxCategorical(_OneHotFamily):
    """Categorical distribution over one-hot vectors with ``q(z = e_c) = sparsemax(scores)_c``.

    Sparsemax gives exact zeros, so the support is usually a handful of categories. That makes
    exact marginalization cheap: :meth:`support_probs` returns only the values of nonzero
    probability and :class:`~latentgrad.estimators.marginalize.Marginalize` evaluates the loss
    on those alone, giving the exact, deterministic gradient at the cost of the support size
    (Correia et al. 2020). Sampling uses the Gumbel-max trick on ``log q``, so
    :meth:`from_noise` and :meth:`relaxed_from_noise` share the same noise; categories of
    probability 0 are never sampled and get exactly 0 in relaxed samples.

    Conventions follow :class:`~latentgrad.distributions.categorical.Categorical`: one-hot
    events of shape ``(K,)`` in the dtype of ``scores``, any batch shape, ``-inf`` scores allowed.
    The probabilities are computed once and cached with their autograd graph (as
    ``torch.distributions`` caches ``probs``), so build a new instance for each backward pass.

    Args:
        scores: unnormalized scores, shape ``batch_shape + (K,)``; NaN and ``+inf`` are rejected,
            and so is a row that is ``-inf`` everywhere.
        k: partial sorting hint passed to :func:`~latentgrad.mappings.sparsemax`.
        validate_args: whether :meth:`log_prob` checks that its value is one-hot (``None``:
            torch's default); the parameter checks always run.

    Shape:
        ``batch_shape = scores.shape[:-1]``, ``event_shape = (K,)``.

    Example:
        >>> import torch
        >>> q = SparsemaxCategorical(torch.tensor([[2.0, 1.5, -1.0, 0.0]]))
        >>> q.probs
        tensor([[0.7500, 0.2500, 0.0000, 0.0000]])
        >>> values, probs = q.support_probs()
        >>> values.shape, probs.squeeze(-1)
        (torch.Size([2, 1, 4]), tensor([0.7500, 0.2500]))

    References:
        [1] Martins & Astudillo, "From Softmax to Sparsemax: A Sparse Model of Attention and
            Multi-Label Classification", ICML 2016.
        [2] Correia, Niculae, Aziz & Martins, "Efficient Marginalization of Discrete and
            Structured Latent Variables via Sparsity", NeurIPS 2020.
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {
        "scores": constraints.real_vector
    }
    _param_names = ("scores",)

    def __init__(
        self, scores: Tensor, k: int | None = None, validate_args: bool | None = None
    ) -> None:
        self.scores = check_scores(scores, "scores")
        self.k = check_optional_int(k, "k", minimum=1)
        super().__init__(self.scores.shape[:-1], self.scores.shape[-1:], validate_args=False)
        self._validate_args = resolve_validate_args(validate_args)

    def _copy_extra_state(self, new: DiscreteDistribution) -> None:
        new.k = self.k  # type: ignore[attr-defined]

    @property
    def probs(self) -> Tensor:
        """``sparsemax(scores)``, shape ``batch_shape + (K,)``; differentiable, mostly zeros.

        Computed once per instance (every hook needs it, and each computation sorts), with grad
        enabled so that a first use under ``no_grad`` (sampling) does not cache a detached value.
        """
        cached: Tensor | None = self.__dict__.get("_probs")
        if cached is None:
            with torch.enable_grad():
                cached = sparsemax(self.scores, -1, self.k)
            self.__dict__["_probs"] = cached
        return cached

    @property
    def _source(self) -> Tensor:
        return self.scores

    def _log_probs_upcast(self) -> Tensor:
        return safe_log(upcast(self.probs))

    @property
    def logits(self) -> Tensor:
        """Normalized log-probabilities, as ``torch.distributions.Categorical.logits``."""
        return self.log_probs

    def support_size(self) -> int:
        """The largest number of nonzero probabilities over the batch (at least 1)."""
        cached: int | None = self.__dict__.get("_support_size")
        if cached is None:
            counts = (self.probs > 0).sum(-1)
            cached = int(counts.max()) if counts.numel() else 1
            self.__dict__["_support_size"] = cached
        return cached

    def support_probs(self) -> tuple[Tensor, Tensor]:
        """The values of nonzero probability and their probabilities.

        Every batch element gets the ``S = support_size()`` categories of highest probability:
        all of its support, padded with categories of probability 0 where its support is
        smaller than the largest one in the batch.

        Returns:
            ``(values, probs)`` of shapes ``(S,) + batch_shape + (K,)`` (one-hot) and
            ``(S,) + batch_shape``; ``probs`` is differentiable through sparsemax.
        """
        p = self.probs
        size = self.support_size()
        index = p.detach().topk(size, dim=-1).indices
        probs = p.gather(-1, index).movedim(-1, 0)
        values = one_hot_like(index.movedim(-1, 0), self.num_categories, self.scores)
        return values, probs
