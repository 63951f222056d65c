"""Antithetic estimators for bits: DisARM (a coupled pair) and ARMS (``n`` samples through a
Dirichlet copula), for Bernoulli latents and, through the stick-breaking bits of a softmax, for
categorical ones.

Both estimators see the latent as independent bits ``beta_k ~ Bernoulli(sigmoid(alpha_k))``:

* a :class:`~latentgrad.distributions.bernoulli.Bernoulli` is its own bits (``alpha`` = its
  logits);
* a :class:`~latentgrad.distributions.categorical.Categorical` with ``K`` classes is the first
  success of ``K - 1`` stick-breaking bits, ``alpha_k = log pi_k - log sum_{j > k} pi_j``
  (category ``K`` when no bit succeeds), an exact reparameterization of the categorical as a
  function of independent bits (Dong, Mnih & Tucker 2021). A bit that no sample of the group
  reaches (each sample stopped at an earlier success) changes no loss, and its term has
  conditional mean zero, so it is dropped (a Rao-Blackwellization).

The gradient w.r.t. ``alpha`` is estimated per bit and carried to the logits by autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor

from latentgrad._numerics import exponential_noise, logistic_noise, safe_log, upcast
from latentgrad._validation import check_int
from latentgrad.distributions import Bernoulli, Capability, Categorical
from latentgrad.distributions.categorical import one_hot_like
from latentgrad.estimators._base import (
    Estimate,
    Estimator,
    LatentDistribution,
    LossFn,
    evaluate_loss,
    latent_family,
    zero_forward,
)


class StickBits:
    """The latent as independent bits: their logits ``alpha`` and the map from bits to values.

    Args:
        family: the :class:`Categorical` or :class:`Bernoulli` (its logits have the batch shape
            of the latent, then unit dims, then the last dim: classes or bits).
        logits: the logits to use (the family's, or a copy with leading sample dims).

    Shape:
        ``alpha``: ``logits.shape`` for bits, ``logits.shape[:-1] + (K - 1,)`` for a categorical.
    """

    def __init__(self, family: Bernoulli | Categorical, logits: Tensor) -> None:
        self.categorical = isinstance(family, Categorical)
        self.like = family.logits
        a = upcast(logits)
        if not self.categorical:
            self.alpha = a
            return
        # alpha_k = log pi_k - log sum_{j>k} pi_j, with the largest logit subtracted first so
        # that logits of +-1e4 stay finite; exp(-inf) = 0 keeps impossible classes out.
        shift = a.detach().amax(-1, keepdim=True)
        e = (a - shift).exp()
        tail = e.flip(-1).cumsum(-1).flip(-1)[..., 1:]  # sum_{j>k} exp(a_j - shift)
        self.alpha = (a[..., :-1] - shift) - safe_log(tail)

    def bits_to_values(self, bits: Tensor) -> Tensor:
        """Values from bits (``(*, n_bits)`` -> the event), in the family's dtype."""
        if not self.categorical:
            return bits.to(self.like.dtype)
        stop = bits.new_ones((*bits.shape[:-1], 1))
        index = torch.cat([bits, stop], -1).argmax(-1)  # the first success
        return one_hot_like(index, bits.shape[-1] + 1, self.like)

    def reached(self, bits: Tensor) -> Tensor:
        """Whether each bit is read when building the value (all of them for a Bernoulli)."""
        if not self.categorical:
            return torch.ones_like(bits, dtype=torch.bool)
        before = torch.cumsum(bits, -1) - bits  # successes before bit k
        return before == 0

    def sample_alpha(self) -> Tensor:
        """``alpha`` for thresholding, with the NaN of ``-inf - (-inf)`` (a bit no sample
        reaches) turned into ``-inf``."""
        a = self.alpha.detach()
        return torch.where(torch.isnan(a), torch.full_like(a, -torch.inf), a)

    def inject(self, weights: Tensor) -> Tensor:
        """A term with value 0 whose gradient is ``sum_k weights_k d alpha_k``, summed over the
        unit and bit dims to the batch shape; non-finite ``alpha`` carry no gradient.

        Shape:
            ``weights``: ``(S,) + alpha.shape``; returns ``(S,) + batch_shape``.
        """
        finite = torch.isfinite(self.alpha.detach())
        alpha = torch.where(finite, self.alpha, torch.zeros_like(self.alpha))
        weights = torch.where(finite, weights.detach(), torch.zeros_like(weights))
        return zero_forward(alpha * weights)


def _sum_to_batch(x: Tensor, batch_dims: int) -> Tensor:
    """Sum every dim after the sample dim and the ``batch_dims`` batch dims."""
    dims = tuple(range(1 + batch_dims, x.dim()))
    return x.sum(dims) if dims else x


def arms_correction(alpha: Tensor, n: int) -> Tensor:
    """ARMS's debiasing factor ``p (1 - p) / (p (1 - p) - Cov(b_i, b_j))`` per bit.

    For ``n`` samples ``b_i = 1[u_i < p]`` with ``u`` from the Dirichlet copula (``u_i = 1 -
    (1 - d_i)^(n-1)``, ``d ~ Dirichlet(1, ..., 1)``), ``P(b_i = 0, b_j = 0) = (1 - 2t)_+^(n-1)``
    with ``t = 1 - (1 - p)^(1/(n-1))``, so the denominator is ``(1 - p) - (1 - 2t)_+^(n-1)``,
    computed without cancellation. ``n = 2`` gives ``max(p, 1 - p)`` (DisARM's
    ``sigmoid(|alpha|)``). Deterministic bits (``p`` of 0 or 1) get 1.

    Args:
        alpha: the bits' logits (any shape; ``+-inf`` allowed).
        n: the number of coupled samples, at least 2.

    Example:
        >>> import torch
        >>> from latentgrad.estimators.disarm import arms_correction
        >>> alpha = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64)
        >>> torch.allclose(arms_correction(alpha, 2), torch.sigmoid(alpha.abs()))
        True
    """
    a = upcast(alpha.detach())
    log_p = torch.nn.functional.logsigmoid(a)
    log_q = torch.nn.functional.logsigmoid(-a)
    t = -torch.expm1(log_q / (n - 1))
    overlap = 1 - 2 * t
    positive = overlap > 0
    # log P(b_i = 0, b_j = 0) = (n - 1) log(1 - 2t) where 1 - 2t > 0.
    log_both = (n - 1) * torch.log1p(-2 * torch.where(positive, t, torch.zeros_like(t)))
    gap = torch.where(positive, log_q - log_both, torch.zeros_like(t)).clamp_min(0)
    log_denominator = torch.where(positive, log_both + torch.log(torch.expm1(gap)), log_q)
    factor = torch.exp(log_p + log_q - log_denominator)
    ok = torch.isfinite(factor) & (log_p > -torch.inf) & (log_q > -torch.inf)
    return torch.where(ok, factor, torch.ones_like(factor))


def dirichlet_copula_uniforms(n: int, shape: torch.Size | tuple[int, ...], like: Tensor) -> Tensor:
    """``n`` uniforms per coordinate, coupled through the Dirichlet copula (Dimitriev & Zhou).

    ``d = E / sum(E)`` over the ``n`` draws (``E`` standard exponentials, so ``d ~
    Dirichlet(1, ..., 1)``) and ``u_i = 1 - (1 - d_i)^(n-1)``: each ``u_i`` is uniform on
    ``(0, 1)`` and the ``u_i`` are negatively dependent; ``n = 2`` gives ``(u, 1 - u)``.

    Shape:
        ``(n,) + shape``, in :func:`~latentgrad._numerics.compute_dtype` of ``like``.

    Example:
        >>> import torch
        >>> from latentgrad.estimators.disarm import dirichlet_copula_uniforms
        >>> u = dirichlet_copula_uniforms(2, (3,), torch.zeros(()))
        >>> u.shape, torch.allclose(u[0] + u[1], torch.ones(3))
        (torch.Size([2, 3]), True)
    """
    n = check_int(n, "n", minimum=2)
    e = exponential_noise((n, *shape), like)
    d = e / e.sum(0, keepdim=True)
    return -torch.expm1((n - 1) * torch.log1p(-d))


class DisARM(Estimator):
    """DisARM: ARM with the augmentation integrated out, one antithetic pair of bits per draw.

    For bits with logits ``alpha`` and logistic noise ``L``, the pair is ``b = 1[L < alpha]``
    and ``b~ = 1[-L < alpha]`` (uniforms ``u`` and ``1 - u``); each is marginally
    ``Bernoulli(sigmoid(alpha))``. The gradient estimate w.r.t. each ``alpha_k`` is::

        g_k = 1/2 (f(b) - f(b~)) (b_k - b~_k) sigmoid(|alpha_k|)

    unbiased for any loss. A categorical latent uses its stick-breaking bits (see
    :mod:`latentgrad.estimators.disarm`): this is the "DisARM with a stick-breaking
    reparameterization" of Dong, Mnih & Tucker (2021), with the categories in their given order
    and the bits that neither sample of a pair reaches dropped. The gradient reaches the logits
    (and everything upstream) through ``alpha``; parameters inside ``loss_fn`` get the pathwise
    gradient of the mean loss of the ``2P`` samples.

    Logits of ``+-inf`` (deterministic bits, impossible categories) give no gradient and finite
    values; half-precision logits are handled in float32.

    Args:
        num_pairs: antithetic pairs ``P`` per batch element (independent of each other).

    Returns:
        :class:`~latentgrad.estimators.Estimate` with ``value`` the mean of the ``2P`` losses,
        ``loss_evals`` (``2P``), ``losses`` (``(2P,) + B``: the ``b`` of every pair, then the
        ``b~``) and no extras. ``context`` is unused.

    Shape:
        ``dist``: batch ``B``; ``loss_fn``: ``(2P,) + B + event -> (2P,) + B``; ``value``,
        ``surrogate``: ``B``; ``per_sample``: ``(P,) + B`` (one term per pair).

    Example:
        >>> import torch, latentgrad as lg
        >>> from latentgrad.estimators.disarm import DisARM
        >>> logits = torch.zeros(4, 6, requires_grad=True)
        >>> out = DisARM()(lg.Bernoulli(logits=logits), lambda z: (z - 0.3).pow(2).sum(-1))
        >>> out.surrogate.sum().backward()
        >>> out.loss_evals, out.per_sample.shape, logits.grad.shape
        (2, torch.Size([1, 4]), torch.Size([4, 6]))

    References:
        [1] Dong, Mnih & Tucker, "DisARM: An Antithetic Gradient Estimator for Binary Latent
            Variables", NeurIPS 2020.
        [2] Dong, Mnih & Tucker, "Coupled Gradient Estimators for Discrete Latent Variables",
            NeurIPS 2021.
        [3] Yin & Zhou, "ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary Networks",
            ICLR 2019.
    """

    requires: tuple[Capability, ...] = ("has_logits",)

    def __init__(self, num_pairs: int = 1) -> None:
        super().__init__()
        self.num_pairs = check_int(num_pairs, "num_pairs", minimum=1)

    def extra_repr(self) -> str:
        return f"num_pairs={self.num_pairs}"

    def _estimate(
        self, dist: LatentDistribution, loss_fn: LossFn, context: Tensor | None
    ) -> Estimate:
        family = latent_family(dist, type(self).__name__)
        bits = StickBits(family, family.logits)
        p = self.num_pairs
        alpha = bits.sample_alpha()
        noise = logistic_noise((p, *alpha.shape), alpha)
        b = (noise < alpha).to(alpha.dtype)
        b_anti = (-noise < alpha).to(alpha.dtype)
        values = bits.bits_to_values(torch.cat([b, b_anti]))
        losses = evaluate_loss(loss_fn, values, (2 * p,), dist.batch_shape)
        f, f_anti = losses[:p], losses[p:]
        diff = (f - f_anti).detach().to(alpha.dtype)
        diff = diff.reshape(diff.shape + (1,) * (alpha.dim() - len(dist.batch_shape)))
        used = bits.reached(b) | bits.reached(b_anti)
        weights = 0.5 * diff * (b - b_anti) * torch.sigmoid(alpha.abs())
        weights = torch.where(used, weights, torch.zeros_like(weights))
        terms = _sum_to_batch(bits.inject(weights), len(dist.batch_shape))
        per_sample = 0.5 * (f + f_anti) + terms.to(losses.dtype)
        return Estimate.from_terms(per_sample, losses=losses, loss_evals=2 * p)


class ARMS(Estimator):
    """ARMS: ``n`` antithetic samples of bits through a Dirichlet copula, a leave-one-out
    signal and a debiasing factor.

    The ``n`` samples ``b_i = 1[u_i < sigmoid(alpha)]`` use uniforms from
    :func:`dirichlet_copula_uniforms` (independent across bits), so each is marginally
    ``Bernoulli(sigmoid(alpha))`` while the samples are negatively correlated. The
    leave-one-out estimate is biased under this dependence; dividing by ``1 - rho`` (``rho``
    the correlation of two samples' bits, in closed form: :func:`arms_correction`) removes the
    bias exactly::

        g_k = c_k / n sum_i (f(b_i) - mean_{j != i} f(b_j)) (b_{i,k} - sigmoid(alpha_k))

    With ``n = 2`` this is :class:`DisARM`. Dimitriev & Zhou define ARMS for bits; a
    categorical latent uses its stick-breaking bits (as :class:`DisARM` does; our extension),
    and bits that no sample reaches are dropped.

    Args:
        num_samples: ``n`` coupled samples per batch element, at least 2.

    Returns:
        :class:`~latentgrad.estimators.Estimate` with ``value`` the mean of the ``n`` losses,
        ``loss_evals`` (``n``), ``losses`` and no extras. ``context`` is unused.

    Shape:
        ``dist``: batch ``B``; ``loss_fn``: ``(n,) + B + event -> (n,) + B``; ``value``,
        ``surrogate``: ``B``; ``per_sample``: ``(n,) + B`` (each term alone is unbiased).

    Example:
        >>> import torch, latentgrad as lg
        >>> from latentgrad.estimators.disarm import ARMS
        >>> logits = torch.zeros(4, 3, 5, requires_grad=True)
        >>> q = lg.Categorical(logits=logits).to_event(1)
        >>> out = ARMS(num_samples=4)(q, lambda z: z[..., 0].sum(-1))
        >>> out.surrogate.sum().backward()
        >>> out.loss_evals, out.per_sample.shape, logits.grad.shape
        (4, torch.Size([4, 4]), torch.Size([4, 3, 5]))

    References:
        [1] Dimitriev & Zhou, "ARMS: Antithetic-REINFORCE-Multi-Sample Gradient for Binary
            Variables", ICML 2021.
        [2] Kool, van Hoof & Welling, "Buy 4 REINFORCE Samples, Get a Baseline for Free!",
            ICLR Workshop 2019.
    """

    requires: tuple[Capability, ...] = ("has_logits",)

    def __init__(self, num_samples: int = 4) -> None:
        super().__init__()
        self.num_samples = check_int(num_samples, "num_samples", minimum=2)

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}"

    def _estimate(
        self, dist: LatentDistribution, loss_fn: LossFn, context: Tensor | None
    ) -> Estimate:
        family = latent_family(dist, type(self).__name__)
        bits = StickBits(family, family.logits)
        n = self.num_samples
        alpha = bits.sample_alpha()
        u = dirichlet_copula_uniforms(n, alpha.shape, alpha)
        # u < sigmoid(alpha) as log(u) < logsigmoid(alpha); alpha = +inf: always on.
        on = (torch.log(u) < torch.nn.functional.logsigmoid(alpha)) | (alpha == torch.inf)
        b = on.to(alpha.dtype)
        losses = evaluate_loss(loss_fn, bits.bits_to_values(b), (n,), dist.batch_shape)
        f = losses.detach().to(alpha.dtype)
        signal = f - (f.sum(0, keepdim=True) - f) / (n - 1)  # f_i - mean_{j != i} f_j
        signal = signal.reshape(signal.shape + (1,) * (alpha.dim() - len(dist.batch_shape)))
        used = bits.reached(b).any(0, keepdim=True)
        weights = arms_correction(alpha, n) * signal * (b - torch.sigmoid(alpha))
        weights = torch.where(used, weights, torch.zeros_like(weights))
        terms = _sum_to_batch(bits.inject(weights), len(dist.batch_shape))
        per_sample = losses + terms.to(losses.dtype)
        return Estimate.from_terms(per_sample, losses=losses, loss_evals=n)


__all__ = ["ARMS", "DisARM", "StickBits", "arms_correction", "dirichlet_copula_uniforms"]
