"""Closed-form KL divergences, registered with :func:`torch.distributions.kl_divergence`.

``Independent`` pairs (``.to_event(n)``) are handled by torch's own rule, which sums these.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor
from torch.distributions import register_kl

from latentgrad._numerics import upcast
from latentgrad.distributions.bernoulli import Bernoulli
from latentgrad.distributions.categorical import Categorical


def _xlogy_ratio(logp: Tensor, logq: Tensor) -> Tensor:
    """``p (log p - log q)`` elementwise, 0 where ``p == 0`` (even if ``q == 0``)."""
    positive = logp > -float("inf")
    safe_p = logp.exp()
    diff = logp - logq
    return safe_p * diff.where(positive, diff.new_zeros(()))


@register_kl(Categorical, Categorical)
def _kl_categorical(p: Categorical, q: Categorical) -> Tensor:
    """``sum_c p_c (log p_c - log q_c)``; ``inf`` where ``q_c = 0 < p_c``."""
    logp = upcast(p.logits).log_softmax(-1)
    logq = upcast(q.logits).log_softmax(-1)
    return _xlogy_ratio(logp, logq).sum(-1).to(p.logits.dtype)


@register_kl(Bernoulli, Bernoulli)
def _kl_bernoulli(p: Bernoulli, q: Bernoulli) -> Tensor:
    """Sum over bits of the two-point KL."""
    a, b = upcast(p.logits), upcast(q.logits)
    on = _xlogy_ratio(F.logsigmoid(a), F.logsigmoid(b))
    off = _xlogy_ratio(F.logsigmoid(-a), F.logsigmoid(-b))
    return (on + off).sum(-1).to(p.logits.dtype)
