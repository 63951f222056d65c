"""One-hot categorical distribution (softmax of logits)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from torch.distributions import constraints

from latentgrad._numerics import gumbel_noise, safe_log, upcast, xlogx_safe
from latentgrad._validation import check_scores, check_tensor
from latentgrad.distributions._base import DiscreteDistribution, LocalVariants


def one_hot_like(index: Tensor, num_classes: int, like: Tensor) -> Tensor:
    """``one_hot(index)`` in ``like``'s dtype and device: exactly one 1 per row, even with ties."""
    out = torch.zeros((*index.shape, num_classes), dtype=like.dtype, device=like.device)
    return out.scatter_(-1, index.unsqueeze(-1), 1)


class Categorical(DiscreteDistribution):
    """Categorical distribution over one-hot vectors, ``q(z = e_c) = softmax(logits)_c``.

    Samples are one-hot vectors in the dtype of ``logits``, so they can be fed to a network as
    they are. ``-inf`` logits give categories of probability exactly 0. Sampling uses the
    Gumbel-max trick ``argmax(logits + G)``, so :meth:`from_noise` and :meth:`relaxed_from_noise`
    (Gumbel-Softmax) share the same noise.

    Args:
        logits: unnormalized log-probabilities, shape ``batch_shape + (K,)``; ``-inf`` allowed
            (but not for every category), NaN and ``+inf`` are rejected.
        probs: probabilities instead of logits (not both); need not be normalized.
        validate_args: kept for ``torch.distributions`` compatibility; argument checks always run.

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
    support = constraints.one_hot
    has_rsample = False
    _param_names = ("logits",)

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
            if torch.isnan(probs).any() or (probs < 0).any():
                raise ValueError("probs must be non-negative and not NaN")
            if (probs.sum(-1) <= 0).any():
                raise ValueError("probs must have a positive entry in every row")
            logits = safe_log(probs)
        self.logits = check_scores(logits, "logits")
        super().__init__(self.logits.shape[:-1], self.logits.shape[-1:], validate_args=False)

    @property
    def num_categories(self) -> int:
        return self.logits.shape[-1]

    @property
    def log_probs(self) -> Tensor:
        """Normalized log-probabilities, shape ``batch_shape + (K,)``."""
        return torch.log_softmax(upcast(self.logits), dim=-1).to(self.logits.dtype)

    @property
    def probs(self) -> Tensor:
        """Probabilities, shape ``batch_shape + (K,)``."""
        return torch.softmax(upcast(self.logits), dim=-1).to(self.logits.dtype)

    @property
    def mean(self) -> Tensor:
        return self.probs

    @property
    def variance(self) -> Tensor:
        p = self.probs
        return p * (1 - p)

    def log_prob(self, value: Tensor) -> Tensor:
        """Log-probability of one-hot values, shape ``sample_shape + batch_shape``."""
        sample_batch = self._sample_batch_shape(value)
        index = value.argmax(-1, keepdim=True)
        log_probs = self.log_probs.expand((*sample_batch, self.num_categories))
        return log_probs.gather(-1, index).squeeze(-1)

    def entropy(self) -> Tensor:
        logp = torch.log_softmax(upcast(self.logits), dim=-1)
        return -xlogx_safe(logp.exp(), logp).sum(-1).to(self.logits.dtype)

    def enumerate_support(self, expand: bool = True) -> Tensor:
        k = self.num_categories
        values = torch.eye(k, dtype=self.logits.dtype, device=self.logits.device)
        values = values.reshape((k,) + (1,) * len(self.batch_shape) + (k,))
        if expand:
            values = values.expand((k, *self.batch_shape, k))
        return values

    def support_probs(self) -> tuple[Tensor, Tensor]:
        return self.enumerate_support(expand=True), self.probs.movedim(-1, 0)

    def support_size(self) -> int:
        return self.num_categories

    def sample_noise(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """Standard Gumbel noise, shape ``sample_shape + batch_shape + (K,)``."""
        return gumbel_noise(torch.Size(sample_shape) + self.logits.shape, self.logits)

    def from_noise(self, noise: Tensor) -> Tensor:
        index = (upcast(self.logits) + noise).argmax(-1)
        return one_hot_like(index, self.num_categories, self.logits)

    def relaxed_from_noise(self, noise: Tensor, tau: float) -> Tensor:
        """Gumbel-Softmax sample ``softmax((logits + G) / tau)``, shape ``noise.shape``."""
        y = torch.softmax((upcast(self.logits) + noise) / tau, dim=-1)
        return y.to(self.logits.dtype)

    def mode(self) -> Tensor:  # type: ignore[override]
        return one_hot_like(self.logits.argmax(-1), self.num_categories, self.logits)

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
        values = one_hot_like(others, k, z)
        probs = self.probs.expand((*sample_batch, k))
        changed = probs.gather(-1, others.movedim(0, -1)).movedim(-1, 0)
        base = probs.gather(-1, index.unsqueeze(-1)).squeeze(-1)
        return LocalVariants(values, changed, base)

    def with_logits(self, logits: Tensor) -> Categorical:
        """The same family with other logits (e.g. ``slope * logits`` for slope annealing)."""
        return Categorical(logits=logits)
