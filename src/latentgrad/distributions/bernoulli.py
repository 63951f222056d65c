"""Factorized Bernoulli distribution over bit-vectors."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import constraints

from latentgrad._numerics import logistic_noise, upcast, xlogx_safe
from latentgrad._validation import (
    check_bernoulli_logits,
    check_in_support,
    check_positive,
    check_sample,
    check_tensor,
    is_meta,
    resolve_validate_args,
)
from latentgrad.distributions._base import DiscreteDistribution, LocalVariants
from latentgrad.structured.bits import MAX_BITS, bit_vectors

#: Largest bit-vector length whose 2**D support :meth:`Bernoulli.enumerate_support` will build.
MAX_ENUMERATE_BITS = MAX_BITS


class Bernoulli(DiscreteDistribution):
    """Independent bits ``z_d ~ Bernoulli(sigmoid(logits_d))`` forming one bit-vector value.

    Unlike :class:`torch.distributions.Bernoulli`, the event is the whole vector (the last dim of
    ``logits``), so a model with ``D`` binary latents has one value per example and its loss
    is one number per example. Sampling follows Tokui & Sato: ``z_d = 1[U_d < sigmoid(a_d)]``,
    written as ``z_d = 1[L_d < a_d]`` with logistic noise ``L = logit(U)``; the binary Concrete
    relaxation ``sigmoid((a - L) / tau)`` uses the same noise. Logits of ``±inf`` are allowed
    (deterministic bits).

    Args:
        logits: log-odds ``a``, shape ``batch_shape + (D,)``.
        probs: probabilities instead of logits (not both).
        validate_args: whether :meth:`log_prob` checks that its value is a 0/1 vector
            (``None``: torch's default, on unless
            ``Distribution.set_default_validate_args(False)``); the parameter checks always
            run.

    Shape:
        ``batch_shape = logits.shape[:-1]``, ``event_shape = (D,)``.

    Example:
        >>> import torch, latentgrad as lg
        >>> q = lg.Bernoulli(logits=torch.tensor([[-torch.inf, 0.0, torch.inf]]))
        >>> z = q.sample((4,))
        >>> bool((z[..., 0] == 0).all() and (z[..., 2] == 1).all())
        True

    References:
        [1] Tokui & Sato, "Evaluating the Variance of Likelihood-Ratio Gradient Estimators",
            ICML 2017.
        [2] Maddison, Mnih & Teh, "The Concrete Distribution", ICLR 2017.
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {
        "logits": constraints.real_vector
    }
    support = constraints.independent(constraints.boolean, 1)
    has_rsample = False
    has_noise = True
    has_relaxation = True
    has_local_variants = True
    has_mean_field = True
    has_logits = True
    has_enumerate_support = True
    max_support_size = 2**MAX_ENUMERATE_BITS
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
            if not is_meta(probs) and not bool(((probs >= 0) & (probs <= 1)).all()):
                raise ValueError("probs must be in [0, 1] (and not NaN)")
            logits = torch.logit(probs)
        self.logits = check_bernoulli_logits(logits, "logits")
        super().__init__(self.logits.shape[:-1], self.logits.shape[-1:], validate_args=False)
        self._validate_args = resolve_validate_args(validate_args)

    @property
    def num_bits(self) -> int:
        return self.logits.shape[-1]

    @property
    def probs(self) -> Tensor:
        """``sigmoid(logits)``, shape ``batch_shape + (D,)``."""
        return torch.sigmoid(self.logits)

    @property
    def mean(self) -> Tensor:
        return self.probs

    @property
    def variance(self) -> Tensor:
        return torch.sigmoid(self.logits) * torch.sigmoid(-self.logits)

    def _bit_log_probs(self, value: Tensor) -> Tensor:
        a = upcast(self.logits)
        return torch.where(value > 0.5, F.logsigmoid(a), F.logsigmoid(-a))

    def _in_support(self, value: Tensor) -> Tensor:
        return ((value == 0) | (value == 1)).all(-1)

    def _support_text(self) -> str:
        return f"0/1 vectors of length {self.num_bits}"

    def log_prob(self, value: Tensor) -> Tensor:
        """Log-probability of bit-vectors, shape ``sample_shape + batch_shape``.

        A value with an entry other than 0 or 1 raises ``ValueError`` unless the distribution
        was built with ``validate_args=False``.
        """
        check_sample(value, self.batch_shape, self.event_shape, self.logits)
        if self._validate_args:
            check_in_support(self, value)
        return self._bit_log_probs(value).sum(-1).to(self.logits.dtype)

    def entropy(self) -> Tensor:
        a = upcast(self.logits)
        h = xlogx_safe(torch.sigmoid(a), F.logsigmoid(a))
        h = h + xlogx_safe(torch.sigmoid(-a), F.logsigmoid(-a))
        return -h.sum(-1).to(self.logits.dtype)

    def support_size(self) -> int:
        return 2**self.num_bits

    def enumerate_support(self, expand: bool = True) -> Tensor:
        d = self.num_bits
        values = bit_vectors(d, self.logits.device).to(self.logits.dtype)  # raises for d > 20
        values = values.reshape((2**d,) + (1,) * len(self.batch_shape) + (d,))
        if expand:
            values = values.expand((2**d, *self.batch_shape, d))
        return values

    def sample_noise(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """Standard logistic noise, shape ``sample_shape + batch_shape + (D,)``."""
        return logistic_noise(torch.Size(sample_shape) + self.logits.shape, self.logits)

    def from_noise(self, noise: Tensor) -> Tensor:
        return (noise < upcast(self.logits)).to(self.logits.dtype)

    def relaxed_from_noise(self, noise: Tensor, tau: float) -> Tensor:
        """Binary Concrete sample ``sigmoid((logits - L) / tau)``, shape ``noise.shape``."""
        tau = check_positive(tau, "tau")
        return torch.sigmoid((upcast(self.logits) - noise) / tau).to(self.logits.dtype)

    def mode(self) -> Tensor:  # type: ignore[override]
        return (self.logits > 0).to(self.logits.dtype)

    @property
    def unit_shape(self) -> torch.Size:
        return self.event_shape

    def local_variants(self, z: Tensor) -> LocalVariants:
        """``z`` with bit ``d`` flipped, for each ``d``; ``V = D`` variants."""
        d = self.num_bits
        self._sample_batch_shape(z)
        eye = torch.eye(d, dtype=torch.bool, device=z.device)
        eye = eye.reshape((d,) + (1,) * (z.dim() - 1) + (d,))
        values = torch.where(eye, 1 - z, z)
        a = self.logits
        on = z > 0.5
        kept = torch.where(on, torch.sigmoid(a), torch.sigmoid(-a))
        flipped = torch.where(on, torch.sigmoid(-a), torch.sigmoid(a))
        return LocalVariants(values, flipped.movedim(-1, 0), kept.sum(-1))

    def with_logits(self, logits: Tensor) -> Bernoulli:
        """The same family with other logits (e.g. ``slope * logits`` for slope annealing)."""
        return Bernoulli(logits=logits, validate_args=self._validate_args)
