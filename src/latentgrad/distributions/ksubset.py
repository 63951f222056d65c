"""k-subsets and permutations: top-k of exponential noise (Gumbel-top-k, Plackett-Luce)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from latentgrad._numerics import upcast
from latentgrad._validation import check_finite_scores, check_k, check_structure_scores, is_meta
from latentgrad.distributions._structured import StructuredDistribution
from latentgrad.structured import TopK, bit_vectors, subset_layers

MAX_SUBSET_DP = 16
"""Largest ``k`` for which :meth:`KSubset.log_prob` sums over the ``k!`` orders exactly."""


class KSubset(StructuredDistribution):
    """Subsets of ``k`` of ``n`` items, drawn without replacement in proportion to ``exp(scores)``.

    Sampling takes the ``k`` smallest of ``E_i ~ Exponential(exp(scores_i))`` (the Gumbel-top-k
    trick); the trace is the order in which they were taken (a Plackett-Luce prefix), so the
    subset's probability sums ``k!`` trace probabilities.

    Args:
        scores: log-weights, shape ``batch_shape + (n,)``; ``-inf`` excludes an item (at least
            ``k`` items per row must remain). NaN and ``+inf`` are rejected.
        k: subset size, ``1 <= k <= n``.
        validate_args: whether :meth:`log_prob` checks that its value is a 0/1 vector with
            ``k`` ones (``None``: torch's default, on unless
            ``Distribution.set_default_validate_args(False)``); the parameters are always
            checked.

    Shape:
        ``batch_shape = scores.shape[:-1]``; values are 0/1 indicator vectors,
        ``event_shape = (n,)``, in the dtype of ``scores``. Noise and traces have ``D = n``
        items and ``T = k`` steps.

    Example:
        >>> import torch, latentgrad as lg
        >>> q = lg.KSubset(torch.tensor([[2.0, 0.0, 1.0, -torch.inf]]), k=2)
        >>> z, noise, trace = q.sample_with_trace((3,))
        >>> z.shape, z.sum(-1).flatten()
        (torch.Size([3, 1, 4]), tensor([2., 2., 2.]))
        >>> q.mode()
        tensor([[1., 0., 1., 0.]])
        >>> values, probs = q.support_probs()  # the 3 subsets of the 3 present items
        >>> values.shape, round(probs.sum().item(), 6)
        (torch.Size([3, 1, 4]), 1.0)
        >>> torch.allclose(q.log_prob(values).exp(), probs)
        True

    References:
        [1] Vieira, "Gumbel-max trick and weighted reservoir sampling", 2014.
        [2] Kool, van Hoof & Welling, "Stochastic beams and where to find them", ICML 2019.
        [3] Struminsky, Gadetsky, Rakitin, Karpushkin & Vetrov, "Leveraging recursive
            Gumbel-max trick for approximate inference in combinatorial spaces", NeurIPS 2021.
    """

    def __init__(self, scores: Tensor, k: int, validate_args: bool | None = None) -> None:
        self.scores = check_structure_scores(scores, "scores", 1)
        n = self.scores.shape[-1]
        self.k = check_k(k, n, of="n (the last dim of scores)")
        if not is_meta(self.scores):
            present = torch.isfinite(self.scores).sum(-1)
            if bool((present < self.k).any()):
                raise ValueError(
                    f"scores must have at least k = {k} entries above -inf in every row"
                )
        self._init_batch((n,), validate_args)

    @property
    def algorithm(self) -> TopK:
        return TopK(self.scores.shape[-1], self.k)

    def item_scores(self) -> Tensor:
        return self.scores

    def _to_value(self, structure: Tensor) -> Tensor:
        n = self.scores.shape[-1]
        out = torch.zeros(
            (*structure.shape[:-1], n), dtype=self.scores.dtype, device=structure.device
        )
        return out.scatter_(-1, structure, 1)

    def _repr_settings(self) -> str:
        return f", k={self.k}"

    def support_size(self) -> int:
        return math.comb(self.scores.shape[-1], self.k)

    def can_enumerate_support(self) -> bool:
        """Whether :meth:`support_probs` can run: it walks the ordered top-k traces,
        ``n! / (n - k)!`` of them (not the ``C(n, k)`` sets), so that count is what is bounded."""
        return math.perm(self.scores.shape[-1], self.k) <= self.max_support_size

    def _in_support(self, value: Tensor) -> Tensor:
        return ((value == 0) | (value == 1)).all(-1) & (value.sum(-1) == self.k)

    def _support_text(self) -> str:
        n = self.scores.shape[-1]
        return f"0/1 vectors of length {n} with exactly k = {self.k} ones"

    def log_prob(self, value: Tensor) -> Tensor:
        """Exact ``log q(S)``: a sum over the ``k!`` orders of ``S`` by dynamic programming over
        its ``2^k`` sub-subsets (``k <= 16``), in log space.

        Shape:
            ``value``: ``sample_shape + batch_shape + (n,)`` indicators; returns
            ``sample_shape + batch_shape``.

        ``-inf`` for a subset with an absent item; a value that is not a 0/1 vector with ``k``
        ones raises ``ValueError`` (unless ``validate_args=False``).
        """
        if self.k > MAX_SUBSET_DP:
            return super().log_prob(value)
        sample_batch = self._check_value(value)
        theta = upcast(self.scores).expand(*sample_batch, self.scores.shape[-1])
        index = value.topk(self.k, dim=-1).indices
        return _subset_log_prob(theta, index).to(self.scores.dtype)


def _subset_log_prob(theta: Tensor, index: Tensor) -> Tensor:
    """``log P(top-k set = index)``: ``f(A) = sum_{i in A} f(A - i) lambda_i / rest(A - i)``.

    ``rest(B)`` is the total rate of the items not in ``B``; ``f`` over the subsets ``A`` of the
    chosen set is filled layer by layer (by size), batched over rows.
    """
    k = index.shape[-1]
    a = theta.gather(-1, index)  # (..., k)
    chosen = torch.zeros_like(theta, dtype=torch.bool).scatter_(-1, index, True)
    outside = torch.logsumexp(torch.where(chosen, -torch.inf, theta), -1, keepdim=True)
    bits = bit_vectors(k, theta.device)  # (2^k, k)
    rest_in = torch.where(bits, -torch.inf, a.unsqueeze(-2))  # items of the set not yet taken
    rest = torch.logaddexp(torch.logsumexp(rest_in, -1), outside)  # (..., 2^k)
    f = torch.full(rest.shape, -torch.inf, dtype=theta.dtype, device=theta.device)
    f[..., 0] = 0
    for layer in subset_layers(k, theta.device):
        prev = layer.smaller  # (L, size): the subset without each of its items
        terms = f[..., prev] + a[..., layer.items] - rest[..., prev]  # (..., L, size)
        f[..., layer.subsets] = torch.logsumexp(terms, -1)
    return f[..., -1]


class PlackettLuce(StructuredDistribution):
    """Random permutations: items ranked by sampling without replacement ~ ``exp(scores)``.

    ``q(o) = prod_r exp(s_{o_r}) / sum_{j not in o_<r} exp(s_j)``. The sample is the order of
    ``E_i ~ Exponential(exp(scores_i))`` (equivalently, ``argsort(scores + Gumbel)`` descending);
    the trace is the permutation itself, so :meth:`log_prob` equals :meth:`trace_log_prob`.

    Args:
        scores: log-weights, shape ``batch_shape + (n,)``, finite.
        validate_args: whether :meth:`log_prob` checks that its value is a permutation of
            ``0 .. n-1`` (``None``: torch's default); the parameters are always checked.

    Shape:
        ``batch_shape = scores.shape[:-1]``; a value is the ordering, long ``(n,)``: ``o[r]``
        is the item at rank ``r`` (first = most likely). Noise and traces have ``D = T = n``.

    Example:
        >>> import torch, latentgrad as lg
        >>> q = lg.PlackettLuce(torch.tensor([3.0, 1.0, 2.0]))
        >>> q.mode()
        tensor([0, 2, 1])
        >>> o, noise, trace = q.sample_with_trace((2,))
        >>> torch.allclose(q.log_prob(o), q.trace_log_prob(trace))
        True

    References:
        [1] Plackett, "The analysis of permutations", Applied Statistics 1975.
        [2] Luce, "Individual choice behavior", 1959.
        [3] Struminsky et al., "Leveraging recursive Gumbel-max trick for approximate inference
            in combinatorial spaces", NeurIPS 2021.
    """

    def __init__(self, scores: Tensor, validate_args: bool | None = None) -> None:
        self.scores = check_finite_scores(
            scores, "scores", 1, "every item is ranked; use KSubset to choose among some items"
        )
        self._init_batch((self.scores.shape[-1],), validate_args)

    @property
    def algorithm(self) -> TopK:
        n = self.scores.shape[-1]
        return TopK(n, n)

    def item_scores(self) -> Tensor:
        return self.scores

    def support_size(self) -> int:
        return math.factorial(self.scores.shape[-1])

    def _in_support(self, value: Tensor) -> Tensor:
        n = self.scores.shape[-1]
        ranks = torch.arange(n, device=value.device)
        return (torch.sort(value, -1).values == ranks).all(-1)

    def _support_text(self) -> str:
        n = self.scores.shape[-1]
        return f"orderings of the {n} items: permutations of 0, ..., {n - 1}"

    def log_prob(self, value: Tensor) -> Tensor:
        """``sum_r [s_{o_r} - logsumexp_{j >= r} s_{o_j}]``; shape ``sample_shape + batch_shape``.

        A value that is not a permutation of ``0 .. n-1`` raises ``ValueError`` (unless
        ``validate_args=False``).
        """
        sample_batch = self._check_value(value)
        theta = upcast(self.scores).expand(*sample_batch, self.scores.shape[-1])
        ranked = theta.gather(-1, value.long())
        tail = torch.logcumsumexp(ranked.flip(-1), -1).flip(-1)
        return (ranked - tail).sum(-1).to(self.scores.dtype)
