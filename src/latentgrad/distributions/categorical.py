"""One-hot categorical distribution (softmax of logits)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from torch.distributions import constraints

from latentgrad._numerics import gumbel_noise, safe_log, upcast, xlogx_safe
from latentgrad._validation import (
    check_in_support,
    check_positive,
    check_sample,
    check_scores,
    check_tensor,
    is_meta,
    resolve_validate_args,
)
from latentgrad.distributions._base import DiscreteDistribution, LocalVariants


def one_hot_like(index: Tensor, num_classes: int, like: Tensor) -> Tensor:
    """``one_hot(index)`` in ``like``'s dtype and device: exactly one 1 per row, even with ties."""
    out = torch.zeros((*index.shape, num_classes), dtype=like.dtype, device=like.device)
    return out.scatter_(-1, index.unsqueeze(-1), 1)


class _OneHotFamily(DiscreteDistribution):
    """Shared machinery of categorical families over one-hot vectors.

    Subclasses provide the parameter tensor (``_source``: its dtype, device and shape are those
    of the values), ``probs`` and ``_log_probs_upcast()``; sampling is Gumbel-max on the
    log-probabilities, so :meth:`from_noise` and :meth:`relaxed_from_noise` share their noise.
    """

    support = constraints.one_hot
    has_rsample = False
    has_noise = True
    has_relaxation = True
    has_local_variants = True
    has_mean_field = True
    has_enumerate_support = True
    max_support_size = 2**63 - 1  # no bound of its own: the support is the K categories

    @property
    def _source(self) -> Tensor:
        raise NotImplementedError

    def _log_probs_upcast(self) -> Tensor:
        """Log-probabilities (``-inf`` for zeros) in :func:`compute_dtype`, with finite grads."""
        raise NotImplementedError

    @property
    def probs(self) -> Tensor:
        raise NotImplementedError

    @property
    def num_categories(self) -> int:
        return self._source.shape[-1]

    @property
    def log_probs(self) -> Tensor:
        """Normalized log-probabilities, shape ``batch_shape + (K,)``."""
        return self._log_probs_upcast().to(self._source.dtype)

    @property
    def mean(self) -> Tensor:
        return self.probs

    @property
    def variance(self) -> Tensor:
        p = self.probs
        return p * (1 - p)

    def _in_support(self, value: Tensor) -> Tensor:
        if value.dtype == torch.bool:
            return value.sum(-1) == 1
        # Entries >= 0 with largest 1 and sum 1: exactly one 1 and zeros (one pass for both).
        low, high = torch.aminmax(value, dim=-1)
        return (low >= 0) & (high == 1) & (value.sum(-1) == 1)

    def _support_text(self) -> str:
        return f"one-hot vectors of length {self.num_categories}"

    def log_prob(self, value: Tensor) -> Tensor:
        """Log-probability of one-hot values, shape ``sample_shape + batch_shape``.

        ``-inf`` for values of probability 0; the gradient is finite everywhere. A value that is
        not one-hot raises ``ValueError`` unless the distribution was built with
        ``validate_args=False`` (then the result is meaningless).
        """
        sample_batch = check_sample(value, self.batch_shape, self.event_shape, self._source)
        if self._validate_args:
            check_in_support(self, value)
        index = value.argmax(-1, keepdim=True)
        log_probs = self.log_probs.expand((*sample_batch, self.num_categories))
        return log_probs.gather(-1, index).squeeze(-1)

    def entropy(self) -> Tensor:
        """Shannon entropy ``-sum_c q_c log q_c`` (categories of probability 0 are skipped)."""
        logp = self._log_probs_upcast()
        return -xlogx_safe(upcast(self.probs), logp).sum(-1).to(self._source.dtype)

    def enumerate_support(self, expand: bool = True) -> Tensor:
        """All ``K`` one-hot values, shape ``(K,) + batch_shape + (K,)`` (or broadcastable)."""
        k = self.num_categories
        values = torch.eye(k, dtype=self._source.dtype, device=self._source.device)
        values = values.reshape((k,) + (1,) * len(self.batch_shape) + (k,))
        if expand:
            values = values.expand((k, *self.batch_shape, k))
        return values

    def sample_noise(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """Standard Gumbel noise, shape ``sample_shape + batch_shape + (K,)``."""
        return gumbel_noise(torch.Size(sample_shape) + self._source.shape, self._source)

    def _gumbel_scores(self) -> Tensor:
        """Scores whose argmax with added Gumbel noise is a sample (log-probabilities)."""
        return self._log_probs_upcast()

    def from_noise(self, noise: Tensor) -> Tensor:
        """``one_hot(argmax(scores + G))``: never a category of probability 0."""
        index = (self._gumbel_scores().detach() + noise).argmax(-1)
        return one_hot_like(index, self.num_categories, self._source)

    def relaxed_from_noise(self, noise: Tensor, tau: float) -> Tensor:
        """Gumbel-Softmax sample ``softmax((log q + G) / tau)``, shape ``noise.shape``.

        Categories of probability 0 get exactly 0; the gradient is finite.
        """
        tau = check_positive(tau, "tau")
        y = torch.softmax((self._gumbel_scores() + noise) / tau, dim=-1)
        return y.to(self._source.dtype)

    def mode(self) -> Tensor:  # type: ignore[override]
        """The most likely one-hot value (ties broken towards the lowest index)."""
        return one_hot_like(self._gumbel_scores().argmax(-1), self.num_categories, self._source)

    @property
    def unit_shape(self) -> torch.Size:
        return torch.Size()

    def local_variants(self, z: Tensor) -> LocalVariants:
        """The ``K - 1`` other one-hot values of each sample, with their probabilities."""
        k = self.num_categories
        sample_batch = self._sample_batch_shape(z)
        index = z.argmax(-1)
        others = torch.arange(k - 1, device=z.device).reshape((k - 1,) + (1,) * len(sample_batch))
        others = others + (others >= index).long()  # skip the sampled value
        probs = self.probs.expand((*sample_batch, k))
        changed = probs.gather(-1, others.movedim(0, -1)).movedim(-1, 0)
        base = probs.gather(-1, index.unsqueeze(-1)).squeeze(-1)
        return LocalVariants(one_hot_like(others, k, z), changed, base)


class Categorical(_OneHotFamily):
    """Categorical distribution over one-hot vectors, ``q(z = e_c) = softmax(logits)_c``.

    Samples are one-hot vectors in the dtype of ``logits``, so they can be fed to a network as
    they are. ``-inf`` logits give categories of probability exactly 0. Sampling uses the
    Gumbel-max trick ``argmax(logits + G)``, so :meth:`from_noise` and :meth:`relaxed_from_noise`
    (Gumbel-Softmax) share the same noise.

    Args:
        logits: unnormalized log-probabilities, shape ``batch_shape + (K,)``; ``-inf`` allowed
            (but not for every category), NaN and ``+inf`` are rejected.
        probs: probabilities instead of logits (not both); need not be normalized.
        validate_args: whether :meth:`log_prob` checks that its value is one-hot (``None``:
            torch's default, on unless ``Distribution.set_default_validate_args(False)``);
            the parameter checks always run.

    Shape:
        ``batch_shape = logits.shape[:-1]``, ``event_shape = (K,)``.

    Example:
        >>> import torch, latentgrad as lg
        >>> q = lg.Categorical(logits=torch.tensor([[0.0, 1.0, -torch.inf]]))
        >>> z = q.sample((5,))
        >>> z.shape, bool((z[..., 2] == 0).all())
        (torch.Size([5, 1, 3]), True)

    References:
        [1] Gumbel, "Statistical theory of extreme values", 1954 (the Gumbel-max trick).
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {
        "logits": constraints.real_vector
    }
    _param_names = ("logits",)
    has_logits = True

    def __init__(
        self,
        logits: Tensor | None = None,
        probs: Tensor | None = None,
        validate_args: bool | None = None,
    ) -> None:
        if (logits is None) == (probs is None):
            raise ValueError("pass exactly one of logits and probs")
        if probs is not None:
            probs = check_tensor(probs, "probs", min_dim=1)
            if not is_meta(probs):
                if bool(torch.isnan(probs).any()) or bool((probs < 0).any()):
                    raise ValueError("probs must be non-negative and not NaN")
                if bool((probs.sum(-1) <= 0).any()):
                    raise ValueError("probs must have a positive entry in every row")
            logits = safe_log(probs)
        self.logits = check_scores(logits, "logits")
        super().__init__(self.logits.shape[:-1], self.logits.shape[-1:], validate_args=False)
        self._validate_args = resolve_validate_args(validate_args)

    @property
    def _source(self) -> Tensor:
        return self.logits

    def _log_probs_upcast(self) -> Tensor:
        return torch.log_softmax(upcast(self.logits), dim=-1)

    def _gumbel_scores(self) -> Tensor:
        # argmax(logits + G) = argmax(log_softmax(logits) + G): skip the normalization.
        return upcast(self.logits)

    @property
    def probs(self) -> Tensor:
        """Probabilities, shape ``batch_shape + (K,)``."""
        return torch.softmax(upcast(self.logits), dim=-1).to(self.logits.dtype)

    def support_probs(self) -> tuple[Tensor, Tensor]:
        return self.enumerate_support(expand=True), self.probs.movedim(-1, 0)

    def support_size(self) -> int:
        return self.num_categories

    def with_logits(self, logits: Tensor) -> Categorical:
        """The same family with other logits (e.g. ``slope * logits`` for slope annealing)."""
        return Categorical(logits=logits, validate_args=self._validate_args)
