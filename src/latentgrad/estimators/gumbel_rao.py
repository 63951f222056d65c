"""Gumbel-Rao: straight-through Gumbel-Softmax Rao-Blackwellized over the Gumbel noise given the
sample (Paulus, Maddison & Krause, 2021), and the conditional noise samplers it needs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from latentgrad._numerics import compute_dtype, gumbel_noise
from latentgrad._validation import check_int
from latentgrad.estimators._straight_through import (
    SurrogateStraightThrough,
    sigmoid_jacobian_term,
    softmax_jacobian_term,
    softmax_last,
)
from latentgrad.schedules import Schedule


def _uniform(shape: torch.Size, like: Tensor) -> Tensor:
    """Uniforms in ``[tiny, 1)`` in ``like``'s dtype and device."""
    u = torch.rand(shape, dtype=like.dtype, device=like.device)
    return u.clamp_min_(torch.finfo(like.dtype).tiny)


def conditional_gumbel(
    scores: Tensor, index: Tensor, sample_shape: torch.Size | tuple[int, ...] = ()
) -> Tensor:
    """Perturbed scores ``x = scores + G`` (``G`` standard Gumbel) given ``argmax x = index``.

    Top-down sampling: the maximum is ``Gumbel(logsumexp(scores))`` and sits at ``index``
    (for Gumbel-max it is independent of where it is); every other ``x_j`` is a
    ``Gumbel(scores_j)`` truncated below the maximum, ``x_j = -log(exp(-max) + E_j
    exp(-scores_j))`` with ``E_j`` standard exponential. Averaged over ``index ~
    softmax(scores)`` the draws are unconditional: ``x - scores`` is i.i.d. standard Gumbel.
    ``argmax x == index`` always (the others are kept strictly below the maximum), and
    ``-inf`` scores give ``-inf``. Computed in the compute dtype (float32 for half precision);
    no gradient flows (the result is detached).

    Args:
        scores: logits, ``batch_shape + (K,)`` (``-inf`` allowed where never chosen).
        index: the conditioning category, ``lead + batch_shape`` (integer, any leading dims).
        sample_shape: independent draws per conditioning value.

    Returns:
        ``x``, shape ``sample_shape + lead + batch_shape + (K,)``.

    Example:
        >>> import torch
        >>> from latentgrad.estimators.gumbel_rao import conditional_gumbel
        >>> x = conditional_gumbel(torch.tensor([2.0, 0.0, -1.0]), torch.tensor(2), (1000,))
        >>> x.shape, bool((x.argmax(-1) == 2).all())
        (torch.Size([1000, 3]), True)
    """
    dtype = compute_dtype(scores.dtype)
    theta = scores.detach().to(dtype)
    k = theta.shape[-1]
    shape = torch.Size(sample_shape) + torch.broadcast_shapes(index.shape, theta.shape[:-1])
    chosen = F.one_hot(index, k).bool().expand((*shape, k))
    log_z = torch.logsumexp(theta, dim=-1, keepdim=True)
    top = log_z + gumbel_noise((*shape, 1), theta)
    # log E for E = -log U standard exponential (U in [tiny, 1), so E > 0): two logarithms of a
    # uniform are several times faster than exponential_() on CPU.
    log_e = _uniform(torch.Size((*shape, k)), theta).log_().neg_().log_()
    # -log(exp(-top) + E exp(-theta)) = top - softplus(log E + top - theta); one pass, and
    # -inf scores give softplus(inf) = inf.
    others = top - F.softplus(log_e + top - theta)
    # Rounding may put a much likelier category exactly at the maximum; keep it below.
    others = torch.minimum(others, torch.nextafter(top, torch.full_like(top, -torch.inf)))
    return torch.where(chosen, top, others)


def conditional_logistic(
    logits: Tensor, z: Tensor, sample_shape: torch.Size | tuple[int, ...] = ()
) -> Tensor:
    """Logistic noise ``L`` given the bits ``z = 1[L < logits]`` (the Bernoulli sampler's rule).

    ``L`` is a standard logistic truncated to ``(-inf, a)`` where ``z = 1`` and to
    ``(a, inf)`` where ``z = 0`` (inverse CDF: ``L = logit(V sigmoid(a))``, or its mirror,
    ``V`` uniform), with ``1[L < a] == z`` always. Averaged over ``z ~ Bernoulli(sigmoid(a))``
    it is an unconditional standard logistic. Detached, in the compute dtype.

    Args:
        logits: ``a``, ``batch_shape + (D,)`` (``±inf`` allowed).
        z: the bits, ``lead + batch_shape + (D,)``, 0/1 values.
        sample_shape: independent draws per conditioning value.

    Returns:
        ``L``, shape ``sample_shape + lead + batch_shape + (D,)``.

    Example:
        >>> import torch
        >>> from latentgrad.estimators.gumbel_rao import conditional_logistic
        >>> a, z = torch.tensor([0.5, -1.0]), torch.tensor([0.0, 1.0])
        >>> noise = conditional_logistic(a, z, (1000,))
        >>> bool(((noise < a).float() == z).all())
        True
    """
    dtype = compute_dtype(logits.dtype)
    a = logits.detach().to(dtype)
    sign = 2 * z.detach().to(dtype) - 1  # +1 where z = 1
    bound = sign * a  # the truncation point, in the frame where the kept side is below it
    shape = torch.Size(sample_shape) + torch.broadcast_shapes(bound.shape)
    log_u = _uniform(shape, a).log() + F.logsigmoid(bound)
    below = log_u - torch.log1p(-log_u.exp())  # logit(V sigmoid(bound)) < bound
    below = torch.minimum(below, torch.nextafter(bound, torch.full_like(bound, -torch.inf)))
    return sign * below


class GumbelRao(SurrogateStraightThrough):
    """Gumbel-Rao (GR-MC): straight-through Gumbel-Softmax with its backward averaged over the
    Gumbel noise given the sample.

    Straight-through Gumbel-Softmax forwards ``z = one_hot(argmax(theta + G))`` and
    backpropagates through ``softmax((theta + G) / tau)`` with ``G`` fixed: its gradient is
    ``J(y) g / tau``, ``y = softmax((theta + G) / tau)``, ``J(y) = diag(y) - y y^T``,
    ``g = d loss / d z``. Since ``z`` and ``g`` depend on ``G`` only through ``z``, the
    conditional expectation over ``G`` given ``z`` is another estimator with the same mean and
    no more variance (Rao-Blackwellization). Gumbel-Rao estimates it with ``K`` draws of
    ``G | z`` (:func:`conditional_gumbel`)::

        grad_theta = (1 / K) sum_k J(y_k) g / tau,   y_k = softmax((theta + G_k) / tau),
        G_k ~ p(G | argmax(theta + G) = z)

    The loss is evaluated once per sample, as for straight-through Gumbel-Softmax; the ``K``
    draws only cost softmaxes in the backward pass. Bits use logistic noise given the bit
    (:func:`conditional_logistic`) and the binary Concrete ``sigmoid((a - L) / tau)``.

    ``tau`` may be a :class:`~latentgrad.schedules.Schedule` (advanced by :meth:`step`), as
    for :class:`~latentgrad.estimators.GumbelSoftmax`. The distribution must be a
    :class:`~latentgrad.distributions.Categorical` or
    :class:`~latentgrad.distributions.Bernoulli`, or independent units of them.

    Args:
        tau: temperature, a positive float or a schedule.
        num_draws: ``K``, conditional noise draws averaged in the backward pass (no loss
            evaluations).
        num_samples: discrete samples ``S`` per batch element (loss evaluations).

    Returns:
        :class:`~latentgrad.estimators.Estimate` whose ``value`` is the mean loss of the
        samples (honest), with ``loss_evals`` (``S``), ``losses`` and ``extras``: ``"tau"``
        and ``"num_draws"``.

    Shape:
        ``value``, ``surrogate``: ``batch_shape``; ``per_sample``: ``(S,) + batch_shape``.

    Example:
        >>> import torch, latentgrad as lg
        >>> from latentgrad.estimators import GumbelRao
        >>> logits = torch.zeros(8, 20, 10, requires_grad=True)
        >>> q = lg.Categorical(logits=logits).to_event(1)
        >>> out = GumbelRao(tau=0.5, num_draws=10)(q, lambda z: z[..., 0].sum(-1))
        >>> out.surrogate.mean().backward()
        >>> out.value.shape, logits.grad.shape, out.loss_evals
        (torch.Size([8]), torch.Size([8, 20, 10]), 1)

    References:
        [1] Paulus, Maddison & Krause, "Rao-Blackwellizing the Straight-Through Gumbel-Softmax
            Gradient Estimator", ICLR 2021.
        [2] Jang, Gu & Poole, "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017.
    """

    def __init__(
        self, tau: float | Schedule = 1.0, num_draws: int = 10, num_samples: int = 1
    ) -> None:
        super().__init__(tau, num_samples)
        self.num_draws = check_int(num_draws, "num_draws", minimum=1)

    def extra_repr(self) -> str:
        return f"num_draws={self.num_draws}, num_samples={self.num_samples}"

    def _extras(self, tau: float) -> dict[str, object]:
        return {"tau": tau, "num_draws": self.num_draws}

    def _categorical_term(self, theta: Tensor, z: Tensor, tau: float) -> Tensor:
        x = conditional_gumbel(theta, z.argmax(-1), (self.num_draws,))
        y = softmax_last(x / tau)
        return softmax_jacobian_term(y, theta).mean(0) / tau

    def _bernoulli_term(self, a: Tensor, z: Tensor, tau: float) -> Tensor:
        noise = conditional_logistic(a, z, (self.num_draws,))
        y = torch.sigmoid((a.detach() - noise) / tau)
        return sigmoid_jacobian_term(y, a).mean(0) / tau
