"""The unordered-set estimator: k samples without replacement (Kool, van Hoof & Welling)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from latentgrad._numerics import gumbel_noise, log1mexp, upcast
from latentgrad._validation import check_int, own_samples
from latentgrad.distributions import Bernoulli, Categorical, Independent
from latentgrad.distributions.categorical import one_hot_like
from latentgrad.estimators._base import (
    Estimate,
    Estimator,
    LatentDistribution,
    LossFn,
    evaluate_loss,
    score_term,
)
from latentgrad.estimators.marginalize import support_probs

#: The largest ``k``: the set probabilities are sums over the ``k!`` orderings of the set.
MAX_K = 6


class UnorderedSet(Estimator):
    """The unordered-set estimator with its built-in baseline, over ``k`` samples drawn without
    replacement.

    ``S`` is a set of ``k`` distinct values drawn without replacement from ``q`` (Gumbel-top-k:
    the ``k`` largest ``log q(z) + G_z``). Which of its elements was drawn first is unknown given
    the unordered set; conditioning the single-sample score function of the first draw on
    ``S`` (Rao-Blackwellization) gives the unordered-set estimator [1]

        sum_{s in S} P(first = s | S) [grad log q(s) (f(s) - b_s) + grad_theta f(s)],

    with ``P(first = s | S) = q(s) q^{D \\ s}(S \\ s) / q(S)`` (``q(S)`` the probability of the
    unordered set, ``q^{D \\ s}`` the distribution with ``s`` removed). The built-in baseline

        b_s = q(s) f(s) + (1 - q(s)) sum_{s' in S \\ s} P(second = s' | first = s, S) f(s')

    is, given that ``s`` was drawn first, an unbiased estimate of ``E_q[f]`` from the others
    (the unordered-set estimate of ``E_{q^{D \\ s}}[f]`` on ``S \\ s``), so it keeps the
    estimator unbiased; it needs ``k >= 2``. The honest ``value`` is
    ``sum_s P(first = s | S) f(s)``, unbiased for ``E_q[f]``.

    The conditional probabilities are computed exactly, in log space, as sums over the ``k!``
    orderings of ``S`` (each ordering's probability is ``prod_i q(s_i) / (1 - q(s_1) - ... -
    q(s_{i-1}))``), hence ``k <= 6`` (:data:`MAX_K`; the paper's numerical integral for large
    sets is not implemented).

    The set is Gumbel-top-k over the enumerated support (``support_probs()``) when it has at
    most ``max_support`` values; larger factorized latents (a :class:`~latentgrad.Bernoulli`,
    ``Categorical(...).to_event(n)``: :func:`is_factorized`) draw it unit by unit by stochastic
    beam search [2] (:func:`sample_without_replacement`, ``O(units * k * values)``), so the
    ``vae`` experiment's 10^20- and 2^200-value latents work; other families with more than
    ``max_support`` values are refused. When ``k`` is at least the number of values of nonzero
    probability the set holds them all and the estimate is exact; zero-probability values in
    the set never enter it (a NaN or infinite loss there does no harm).

    Args:
        k: the size of the sample without replacement, ``2 <= k <= 6`` (smaller when the
            support is).
        max_support: enumerate supports of at most this many values; beyond it, beam search
            for factorized latents and ``ValueError`` for the others.

    Returns:
        :class:`Estimate` with ``per_sample`` ``(1,) + batch_shape``, ``loss_evals``
        ``min(k, S)``, ``losses`` (``(min(k, S),) + batch_shape``, in the order drawn) and
        ``extras``: ``"first_probs"`` (``P(first = s | S)``) and ``"baseline"`` (``b_s``), both
        ``(min(k, S),) + batch_shape``.

    Shape:
        ``dist``: batch ``B``, event ``E``, support size ``S``; ``loss_fn``:
        ``(min(k, S),) + B + E -> (min(k, S),) + B``; ``value``, ``surrogate``: ``B``.

    Example:
        >>> import torch, latentgrad as lg
        >>> from latentgrad.estimators import UnorderedSet
        >>> logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]], requires_grad=True)
        >>> est = UnorderedSet(k=3)
        >>> out = est(lg.Categorical(logits=logits), lambda z: (z * torch.arange(5.0)).sum(-1))
        >>> out.loss_evals, float(out.extras["first_probs"].sum())
        (3, 1.0)
        >>> out.surrogate.sum().backward()
        >>> UnorderedSet(k=5)(lg.Categorical(logits=logits), lambda z: z[..., 1]).value  # exact: k = K
        tensor([0.2071])

    References:
        [1] Kool, van Hoof & Welling, "Estimating Gradients for Discrete Random Variables by
            Sampling without Replacement", ICLR 2020.
        [2] Kool, van Hoof & Welling, "Stochastic Beams and Where to Find Them: The Gumbel-Top-k
            Trick for Sampling Sequences Without Replacement", ICML 2019.
    """

    requires = ("has_enumerate_support",)

    def __init__(self, k: int = 4, max_support: int = 2**16) -> None:
        super().__init__()
        self.k = check_int(k, "k", minimum=2, maximum=MAX_K)
        self.max_support = check_int(max_support, "max_support", minimum=1)

    def extra_repr(self) -> str:
        return f"k={self.k}, max_support={self.max_support}"

    def _estimate(
        self, dist: LatentDistribution, loss_fn: LossFn, context: Tensor | None
    ) -> Estimate:
        batch_shape = dist.batch_shape
        if dist.support_size() > self.max_support and is_factorized(dist):
            # Too many joint values to list: draw the set unit by unit (stochastic beam search).
            z, scores = sample_without_replacement(dist, self.k)  # (k,) + B + E, (k,) + B
            k = z.shape[0]
            with own_samples():  # values of the family's own support
                chosen = upcast(dist.log_prob(z))  # (k,) + B, differentiable
            chosen = torch.where(scores > -math.inf, chosen, torch.full_like(chosen, -math.inf))
            log_outside = log1mexp(scores.logsumexp(0).clamp_max(0.0))  # log(1 - q(S))
            losses = evaluate_loss(loss_fn, z, (k,), batch_shape)
        else:
            values, probs = support_probs(dist, self.max_support)  # (S,) + B + E, (S,) + B
            with own_samples():  # the family's own support
                log_p = upcast(dist.log_prob(values))  # (S,) + B, differentiable
            # A ragged support is padded with copies of a value at probability 0 (KSubset with
            # absent items, ...): the copies must not be drawn as values of their own.
            log_p = torch.where(probs > 0, log_p, torch.full_like(log_p, -math.inf))
            k = min(self.k, values.shape[0])
            scores = log_p.detach()
            index = (scores + gumbel_noise(scores.shape, scores)).topk(k, dim=0).indices
            n_event = values.dim() - 1 - len(batch_shape)
            event_index = index.reshape(index.shape + (1,) * n_event)
            event_shape = values.shape[1 + len(batch_shape) :]
            z = values.gather(0, event_index.expand(index.shape + event_shape))
            losses = evaluate_loss(loss_fn, z, (k,), batch_shape)
            in_set = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
            in_set.scatter_(0, index, True)
            log_outside = scores.masked_fill(in_set, -math.inf).logsumexp(0)  # log(1 - q(S))
            chosen = log_p.gather(0, index)  # (k,) + B
        first, baseline = set_weights(chosen.detach(), log_outside, upcast(losses.detach()))
        present = first > 0
        safe_losses = torch.where(present, upcast(losses), torch.zeros_like(first))
        # Keep absent values' -inf log-probabilities out of the graph (their weight is 0).
        safe_log_p = torch.where(present, chosen, torch.zeros_like(chosen))
        signal = torch.where(present, first * (upcast(losses.detach()) - baseline), 0.0)
        value = (first * safe_losses).sum(0)
        surrogate = value + score_term(safe_log_p, signal).sum(0)
        return Estimate.from_terms(
            surrogate.unsqueeze(0).to(losses.dtype),
            losses=losses,
            loss_evals=k,
            value=value.to(losses.dtype),
            extras={"first_probs": first, "baseline": baseline},
        )


def _unit_family(dist: LatentDistribution) -> LatentDistribution:
    """The family under any ``to_event`` wrappers of ``dist``."""
    while isinstance(dist, Independent):
        dist = dist.base_dist
    return dist


def is_factorized(dist: LatentDistribution) -> bool:
    """Whether ``dist`` is a product of small categorical units that
    :func:`sample_without_replacement` can walk: a :class:`~latentgrad.Bernoulli` (one unit per
    bit), a :class:`~latentgrad.Categorical` (one unit) or ``to_event`` of either."""
    return isinstance(_unit_family(dist), (Bernoulli, Categorical))


def _unit_table(dist: LatentDistribution) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """Per-unit log-probabilities of a factorized ``dist`` and the map back to its values.

    Returns:
        ``(table, to_values)``: ``table`` of shape ``batch_shape + (U, C)`` (``U`` units of
        ``C`` values each, in :func:`~latentgrad._numerics.compute_dtype`, detached), and
        ``to_values`` taking value indices ``(N,) + batch_shape + (U,)`` to values
        ``(N,) + batch_shape + event_shape`` in the family's dtype.
    """
    base = _unit_family(dist)
    batch_shape, event_shape = dist.batch_shape, dist.event_shape
    if isinstance(base, Bernoulli):
        a = upcast(base.logits).detach()
        table = torch.stack([F.logsigmoid(-a), F.logsigmoid(a)], -1)
        dtype = base.logits.dtype

        def to_values(index: Tensor) -> Tensor:
            return index.to(dtype).reshape(index.shape[:1] + batch_shape + event_shape)

    elif isinstance(base, Categorical):
        table = torch.log_softmax(upcast(base.logits).detach(), -1)
        like = base.logits

        def to_values(index: Tensor) -> Tensor:
            values = one_hot_like(index, table.shape[-1], like)
            return values.reshape(index.shape[:1] + batch_shape + event_shape)

    else:
        raise TypeError(f"{type(base).__name__} is not a product of categorical units")
    return table.reshape((*batch_shape, -1, table.shape[-1])), to_values


def sample_without_replacement(dist: LatentDistribution, k: int) -> tuple[Tensor, Tensor]:
    """``k`` distinct values of a factorized ``dist``, drawn without replacement by stochastic
    beam search (Kool, van Hoof & Welling 2019), without listing the joint support.

    The set has the law of Gumbel-top-k over the joint support (the ``k`` largest
    ``log q(z) + G_z``), built one unit at a time: a beam of prefixes carries the perturbed
    log-probability of each prefix, the largest perturbed value among its completions; each
    prefix's children get Gumbel values conditioned on their maximum being their parent's, and
    the ``k`` largest children are kept. Cost ``O(U k C)`` for ``U`` units of ``C`` values.
    When fewer than ``k`` values have nonzero probability, the others are filled with distinct
    values of probability 0 (``log q = -inf``), drawn after every value of nonzero probability.

    Args:
        dist: a product of categorical units (:func:`is_factorized`).
        k: the number of values, at most the support size.

    Returns:
        ``(values, log_probs)``: shapes ``(k,) + batch_shape + event_shape`` (in order of
        decreasing perturbed log-probability) and ``(k,) + batch_shape`` (detached, in
        :func:`~latentgrad._numerics.compute_dtype`).

    Example:
        >>> import torch, latentgrad as lg
        >>> from latentgrad.estimators.unordered_set import sample_without_replacement
        >>> q = lg.Categorical(logits=torch.zeros(8, 20, 10)).to_event(1)
        >>> z, log_q = sample_without_replacement(q, 4)
        >>> z.shape, log_q.shape
        (torch.Size([4, 8, 20, 10]), torch.Size([4, 8]))
    """
    table, to_values = _unit_table(dist)  # B + (U, C)
    batch_shape = table.shape[:-2]
    units, num_values = table.shape[-2:]
    table = table.reshape(-1, units, num_values)  # (Bf, U, C)
    flat = table.shape[0]
    log_q = table.new_zeros(flat, 1)  # the beam's prefixes: log q, perturbed value, choices
    perturbed = table.new_zeros(flat, 1)
    choices = torch.zeros(flat, 1, 0, dtype=torch.long, device=table.device)
    noise = gumbel_noise((units, flat, k, num_values), table)  # one draw: fewer small ops
    for u in range(units):
        child_q = log_q.unsqueeze(-1) + table[:, u].unsqueeze(1)  # (Bf, beam, C)
        child = _conditioned_gumbel(child_q, perturbed, noise[u, :, : child_q.shape[1]])
        width = child.shape[1]
        top = child.reshape(flat, -1).topk(min(k, width * num_values), dim=1).indices
        parent, value = top // num_values, top % num_values
        log_q = child_q.reshape(flat, -1).gather(1, top)
        perturbed = child.reshape(flat, -1).gather(1, top)
        picked = choices.gather(1, parent.unsqueeze(-1).expand(-1, -1, u))
        choices = torch.cat([picked, value.unsqueeze(-1)], -1)
    index = choices.movedim(1, 0).reshape((choices.shape[1], *batch_shape, units))
    return to_values(index), log_q.movedim(1, 0).reshape((-1, *batch_shape))


def _conditioned_gumbel(log_q: Tensor, maximum: Tensor, noise: Tensor) -> Tensor:
    """Gumbel perturbations ``log_q + noise`` (``(Bf, beam, C)``, ``noise`` standard Gumbel)
    conditioned on their maximum over the last dim being ``maximum`` (``(Bf, beam)``); ``-inf``
    wherever ``log_q`` or ``maximum`` is."""
    g = log_q + noise
    top = g.amax(-1, keepdim=True)
    target = maximum.unsqueeze(-1)
    # -log(exp(-target) - exp(-top) + exp(-g)), computed stably (Kool et al. 2019, App. B). A
    # dead child (g = -inf) comes out -inf; a dead prefix (target = -inf) NaN, masked below.
    v = target - g + log1mexp(g - top)
    shifted = target - v.clamp_min(0.0) - torch.log1p(torch.exp(-v.abs()))
    alive = (log_q > -math.inf) & (target > -math.inf)
    return torch.where(alive, shifted, -math.inf)


def set_weights(log_p: Tensor, log_outside: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
    """``P(first = s | S)`` and the built-in baselines ``b_s`` of a set drawn without replacement.

    Values of probability 0 in the set (``log_p = -inf``; drawn only after every value of
    nonzero probability) are treated as absent: their ``P(first = s | S)`` is 0, and losses
    that enter with weight 0 are ignored.

    Args:
        log_p: ``log q(s)`` of the set's values, ``(k,) + B`` (detached).
        log_outside: ``log(1 - q(S))``, the log mass outside the set, ``B``.
        losses: ``f(s)``, ``(k,) + B`` (detached).

    Returns:
        ``(first, baseline)``, both ``(k,) + B``.

    Example:
        A set of two values out of three equiprobable ones: each is first with probability 1/2,
        and the baseline of each is ``(f(s) + 2 f(s')) / 3``.

        >>> import math, torch
        >>> from latentgrad.estimators.unordered_set import set_weights
        >>> log_p = torch.full((2,), math.log(1 / 3))
        >>> first, baseline = set_weights(log_p, torch.tensor(math.log(1 / 3)), torch.tensor([3.0, 6.0]))
        >>> first, baseline.round(decimals=4)
        (tensor([0.5000, 0.5000]), tensor([5., 4.]))
    """
    k = log_p.shape[0]
    lead = log_p.shape[1:]
    present = log_p > -math.inf
    if k == 1:  # the set is the whole support: q(s) = 1, b_s = f(s)
        return present.to(log_p.dtype), losses
    orders = torch.tensor(list(itertools.permutations(range(k))), device=log_p.device)
    ordered = log_p[orders]  # (k!, k) + B
    ordered_present = present[orders]
    # Mass left before drawing position i: q(outside S) + the set's values from i on.
    left = torch.logcumsumexp(ordered.flip(1), 1).flip(1)
    left = torch.logaddexp(left, log_outside.expand_as(left))
    drawn = ordered - torch.where(ordered_present, left, torch.zeros_like(left))
    # An absent value can only come after every present one (where nothing is left).
    absent = torch.where(left == -math.inf, 0.0, -math.inf).to(log_p.dtype)
    log_orders = torch.where(ordered_present, drawn, absent).sum(1)  # (k!,) + B
    # permutations() is lexicographic: blocks of (k - 1)! share the first value, and within
    # them blocks of (k - 2)! the second (the others in increasing order).
    rest_orders = math.factorial(k - 1)  # explicit sizes: B may be empty
    by_first = log_orders.reshape((k, rest_orders, *lead)).logsumexp(1)  # (k,) + B
    first = torch.softmax(by_first, 0)
    by_pair = log_orders.reshape((k, k - 1, rest_orders // (k - 1), *lead))
    by_second = by_pair.logsumexp(2)  # (k, k - 1) + B
    second = torch.exp(by_second - by_first.unsqueeze(1)).nan_to_num(0.0)
    others = _others(k, log_p.device)  # (k, k - 1): the values other than s, in order
    log_rest = torch.logaddexp(log_p[others].logsumexp(1), log_outside)  # log(1 - q(s))
    coef = torch.exp(log_rest).unsqueeze(1) * second  # (k, k - 1) + B
    other_losses = losses[others]
    rest = torch.where(coef > 0, coef * other_losses, torch.zeros_like(coef)).sum(1)
    own = torch.where(present, log_p.exp() * losses, torch.zeros_like(losses))
    return first, own + rest


def _others(k: int, device: torch.device) -> Tensor:
    """Row ``s``: the indices ``0..k-1`` without ``s``, in increasing order, shape ``(k, k-1)``."""
    index = torch.arange(k - 1, device=device).expand(k, k - 1)
    return index + (index >= torch.arange(k, device=device).unsqueeze(1)).long()


__all__ = [
    "MAX_K",
    "UnorderedSet",
    "is_factorized",
    "sample_without_replacement",
    "set_weights",
]
