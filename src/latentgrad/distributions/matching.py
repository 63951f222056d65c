"""Perfect bipartite matchings (permutation matrices) by row/column elimination of exponential noise."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor
from torch.distributions import constraints

from latentgrad._numerics import upcast
from latentgrad._validation import check_finite_scores, check_in_support, check_sample
from latentgrad.distributions._structured import StructuredDistribution
from latentgrad.structured import Elimination, bit_vectors, subset_layers

MAX_MATCHING_DP = 16
"""Largest ``n`` for which :meth:`Matching.log_prob` sums over the ``n!`` step orders exactly."""

_DP_BUDGET = 2**24
"""Elements of the ``(rows, 2^n, n)`` table :meth:`Matching.log_prob` builds at once."""


class Matching(StructuredDistribution):
    """Perfect matchings of ``n`` rows to ``n`` columns by greedy elimination of exponential noise.

    Draw ``E_ij ~ Exponential(exp(scores_ij))`` for every entry; repeatedly take the smallest
    ``E_ij`` among the rows and columns still free, match row ``i`` to column ``j`` and remove
    both (:class:`~latentgrad.structured.elimination.Elimination`). A matching is reached by any
    of the ``n!`` orders of its pairs, so

        ``q(sigma) = sum_orders prod_t exp(scores_{k_t}) / sum_{free rows x free columns} exp(scores)``

    which :meth:`log_prob` sums exactly by dynamic programming over the ``2^n`` subsets of the
    pairs (``n <= 16``).

    This law is *not* that of the maximum-weight matching of ``scores + Gumbel`` (the
    Gumbel-max trick does not extend to matchings); it is the law of greedy elimination, whose
    trace probabilities (:meth:`trace_log_prob`) and conditional noise are exact [1].

    Args:
        scores: log-rates of the entries, shape ``batch_shape + (n, n)``, ``n >= 1``, finite
            (``-inf`` is rejected: elimination could reach free rows and columns with no entry
            left between them; NaN and ``+inf`` are rejected too).
        validate_args: whether :meth:`log_prob` checks that its value is a permutation matrix
            (``None``: torch's default); the parameters are always checked.

    Shape:
        ``batch_shape = scores.shape[:-2]``; a value is a permutation matrix,
        ``event_shape = (n, n)``, 0/1 in the dtype of ``scores``, ``M[i, j] = 1`` iff row ``i``
        is matched to column ``j``. Noise and traces have ``D = n * n`` items (entry ``(i, j)``
        is item ``i * n + j``) and ``T = n`` steps.

    Example:
        >>> import torch
        >>> from latentgrad.distributions.matching import Matching
        >>> q = Matching(torch.tensor([[3.0, 2.0, 0.0],
        ...                            [2.5, 0.0, 0.0],
        ...                            [0.0, 1.0, 0.0]]))
        >>> q.mode()  # greedy: (0, 0) first, then (2, 1), then (1, 2)
        tensor([[1., 0., 0.],
                [0., 0., 1.],
                [0., 1., 0.]])
        >>> values, probs = q.support_probs()
        >>> q.support_size(), values.shape[0], round(float(probs.sum()), 6)
        (6, 6, 1.0)
        >>> torch.allclose(q.log_prob(values).exp(), probs)
        True

    References:
        [1] Struminsky, Gadetsky, Rakitin, Karpushkin & Vetrov, "Leveraging recursive
            Gumbel-max trick for approximate inference in combinatorial spaces", NeurIPS 2021.
    """

    _score_event_dims = 2
    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {
        "scores": constraints.independent(constraints.real, 2)
    }

    def __init__(self, scores: Tensor, validate_args: bool | None = None) -> None:
        why = "elimination could be left with free rows and no entries"
        t = check_finite_scores(scores, "scores", 2, why)
        if t.shape[-1] != t.shape[-2]:
            raise ValueError(
                f"scores must be square in its last two dims, got shape {tuple(t.shape)}"
            )
        self.scores = t
        n = t.shape[-1]
        self._init_batch((n, n), validate_args)

    @property
    def algorithm(self) -> Elimination:
        return Elimination(self.scores.shape[-1])

    def item_scores(self) -> Tensor:
        return self.scores.flatten(-2)

    def _to_value(self, structure: Tensor) -> Tensor:
        n = self.scores.shape[-1]
        # Unmatched rows (sigma = -1; not reached with finite scores) get an all-zero row.
        one_hot = torch.nn.functional.one_hot(structure + 1, n + 1)[..., 1:]
        return one_hot.to(self.scores.dtype)

    def support_size(self) -> int:
        """``n!``."""
        return math.factorial(self.scores.shape[-1])

    def mode(self) -> Tensor:  # type: ignore[override]
        """Greedy elimination on the scores: the entry of largest score first, then the largest
        among the remaining rows and columns, and so on (ties to the lowest flat index).

        It is the matching at zero Gumbel noise; it is NOT the maximum-weight assignment (the
        Hungarian algorithm's answer) and not necessarily the most probable matching.
        Shape: ``batch_shape + (n, n)``.
        """
        return super().mode()

    def _in_support(self, value: Tensor) -> Tensor:
        binary = ((value == 0) | (value == 1)).flatten(-2).all(-1)
        ones = value == 1
        return binary & (ones.sum(-1) == 1).all(-1) & (ones.sum(-2) == 1).all(-1)

    def _support_text(self) -> str:
        n = self.scores.shape[-1]
        return f"{n} x {n} permutation matrices (one 1 in every row and every column)"

    def log_prob(self, value: Tensor) -> Tensor:
        """Exact ``log q(M)`` by dynamic programming over the subsets of the ``n`` pairs of ``M``.

        After the pairs of a subset ``S`` have been taken (in any order) the free rows and
        columns are those of the other pairs, so ``f(S) = sum_{k in S} f(S - k)
        exp(scores_k) / Z(S - k)`` with ``Z(S)`` the total rate of the free rows x free columns;
        ``log q(M) = log f(all pairs)``. ``O(2^n n)`` time and memory per row, in log space.
        A value that is not a permutation matrix raises ``ValueError`` (with
        ``validate_args=False`` it gets ``-inf``).

        Shape:
            ``value``: ``sample_shape + batch_shape + (n, n)``; returns
            ``sample_shape + batch_shape`` in the dtype of ``scores``.

        Raises:
            TypeError: if ``n > 16`` (use :meth:`trace_log_prob` instead).
        """
        n = self.scores.shape[-1]
        if n > MAX_MATCHING_DP:
            raise TypeError(
                f"Matching.log_prob sums over 2^n subsets, n = {n} > {MAX_MATCHING_DP}; use "
                "trace_log_prob (or noise_log_prob) instead"
            )
        sample_batch = check_sample(value, self.batch_shape, self.event_shape, self.scores)
        valid = self._in_support(value)
        if self._validate_args:
            check_in_support(self, value, ok=valid)
        ones = value == 1
        sigma = ones.to(torch.int8).argmax(-1)  # column of each row
        theta = upcast(self.scores).expand(*sample_batch, n, n)
        logp = _matching_log_prob(theta.reshape(-1, n, n), sigma.reshape(-1, n))
        logp = logp.reshape(sample_batch)
        return torch.where(valid, logp, torch.full_like(logp, -torch.inf)).to(self.scores.dtype)


def _matching_log_prob(theta: Tensor, sigma: Tensor) -> Tensor:
    """``log q(sigma)`` for rows ``theta`` (N, n, n) and assignments ``sigma`` (N, n) (any
    ``sigma`` that is a permutation; rows are processed in chunks that bound the memory)."""
    rows, n = sigma.shape
    # Columns permuted so that pair k is the diagonal entry (k, k): q[i, k] = theta[i, sigma_k].
    q = theta.gather(-1, sigma.unsqueeze(-2).expand(rows, n, n))
    chunk = max(1, _DP_BUDGET // (2**n * n))
    parts = [_matching_dp(q[start : start + chunk]) for start in range(0, rows, chunk)]
    return torch.cat(parts) if parts else q.new_zeros((0,))


def _matching_dp(q: Tensor) -> Tensor:
    rows, n, _ = q.shape
    device = q.device
    bits = bit_vectors(n, device)  # (2^n, n): member k of subset C
    # a[C, k] = logsumexp_{i in C} q[i, k], built by doubling the subsets one row at a time.
    a = torch.full((rows, 1, n), -torch.inf, dtype=q.dtype, device=device)
    for i in range(n):
        a = torch.cat([a, torch.logaddexp(a, q[:, i : i + 1, :])], -2)
    # log Z of the free block C x C (C = the pairs not taken yet); the empty block is never used.
    block = torch.where(bits, a, a.new_tensor(-torch.inf))
    block = torch.where(bits.any(-1, keepdim=True), block, torch.zeros_like(block))
    log_z = torch.logsumexp(block, -1)  # (rows, 2^n), indexed by the free set
    full = 2**n - 1
    diag = q.diagonal(dim1=-2, dim2=-1)  # (rows, n): the pairs' scores
    # h = log f(S) - log Z(free set of S), one layer of subsets S (by size) at a time.
    h = -log_z[:, full : full + 1]  # the empty S: f = 1, everything free
    for layer in subset_layers(n, device):
        f = torch.logsumexp(h[:, layer.position] + diag[:, layer.items], -1)  # (rows, layer)
        if layer.items.shape[-1] == n:
            return f[:, 0]
        h = f - log_z[:, full - layer.subsets]  # indexed by the free set
    raise AssertionError("unreachable")


__all__ = ["MAX_MATCHING_DP", "Matching"]
