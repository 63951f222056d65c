"""Recursive algorithms on exponential noise: the generic driver and the trace calculus.

Every structured family is a recursive algorithm that repeatedly takes an argmin over a set of
candidate *items* (elements, edges, matrix entries). Run on independent exponential noise
``E_i ~ Exponential(lambda_i)``, ``lambda_i = exp(theta_i)``, the argmin over a candidate set ``S``
is ``i`` with probability ``lambda_i / sum_S lambda``; after it, the residuals ``E_j - min`` of the
candidates are again independent exponentials (memorylessness). That *stochastic invariant* gives
three things for any such algorithm (Struminsky et al. 2021):

* the trace log-probability ``log p(T) = sum_t [theta_{k_t} - logsumexp_{j in S_t} theta_j]``
  (:func:`trace_log_prob`);
* the conditional noise ``E ~ p(E | T)``: with ``M_t ~ Exponential(sum_{S_t} lambda)``,
  ``E_i = sum_{t: i in S_t} M_t`` plus, for an item never chosen, a fresh
  ``Exponential(lambda_i)`` (:func:`conditional_noise`);
* exact enumeration of all traces for small sizes (:func:`enumerate_traces`).

An algorithm is a batched state machine (:class:`RecursiveAlgorithm`): it says which items are
candidates in the current state and how a choice changes the state; :func:`run` drives it on
noise, one algorithm step at a time for the whole batch (never a loop over examples).

Items with score ``-inf`` are absent (never candidates).

**Noise is kept in log space**: the noise tensor holds ``log E = log(Exp(1)) - theta``
(``= -(theta + Gumbel)``; ``+inf`` for absent items). Algorithms that depend only on the order
of the noise (top-k, Kruskal, argmin-splits, elimination) run on it directly, so scores of
``+-1e4`` lose nothing; algorithms that add noise values (Chu-Liu-Edmonds) exponentiate it
themselves.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from latentgrad._numerics import exponential_noise, upcast

State = dict[str, Tensor]
"""An algorithm's state: tensors with one leading row dimension (one row per example)."""


@dataclass(frozen=True)
class Trace:
    """The execution trace of a recursive algorithm: which item it chose among which candidates.

    Steps after the algorithm has finished for an example have no candidates (all ``False``) and
    choice 0; :attr:`valid` tells them apart.

    Attributes:
        choices: the item chosen at each step, long, shape ``batch + (T,)``.
        candidates: the candidate set ``S_t`` of each step, bool, shape ``batch + (T, D)``.
    """

    choices: Tensor
    candidates: Tensor

    @property
    def valid(self) -> Tensor:
        """Whether step ``t`` happened, bool, shape ``batch + (T,)``."""
        return self.candidates.any(-1)

    @property
    def chosen(self) -> Tensor:
        """Items chosen at some step, bool, shape ``batch + (D,)``."""
        d = self.candidates.shape[-1]
        hits = torch.nn.functional.one_hot(self.choices, d).bool() & self.valid.unsqueeze(-1)
        return hits.any(-2)

    def reshape(self, batch: tuple[int, ...] | torch.Size) -> Trace:
        """The same trace with its batch dims reshaped to ``batch``."""
        t, d = self.candidates.shape[-2:]
        return Trace(self.choices.reshape(*batch, t), self.candidates.reshape(*batch, t, d))

    @property
    def batch_shape(self) -> torch.Size:
        return self.choices.shape[:-1]

    def __getitem__(self, index: object) -> Trace:
        """Index the batch dims of both tensors (``trace[0]``, ``trace[idx]``)."""
        return Trace(self.choices[index], self.candidates[index])  # type: ignore[index]


class RecursiveAlgorithm(abc.ABC):
    """A recursive algorithm written as a batched state machine over ``num_items`` items.

    Subclasses implement :meth:`initial_state`, :meth:`candidates`, :meth:`advance` and
    :meth:`structure`; the state is a dict of tensors whose first dim indexes rows (examples).
    :meth:`candidates` may ignore absent items: the driver intersects it with the item mask.

    A subclass may override :meth:`run` with a faster way to compute the same structure and
    trace (e.g. a sort); the generic driver :func:`run` stays the reference it is tested against.

    Attributes:
        num_items: ``D``, the number of items (noise coordinates).
        max_steps: ``T``, an upper bound on the number of steps; traces are padded to it.
    """

    num_items: int
    max_steps: int
    reduced_costs: bool = False
    """Whether the weights are additive costs whose minimum the driver subtracts from the
    candidates after each step (Chu-Liu-Edmonds); otherwise only their order matters."""

    @abc.abstractmethod
    def initial_state(self, mask: Tensor) -> State:
        """The state before the first step, for rows whose present items are ``mask`` (N, D)."""

    @abc.abstractmethod
    def candidates(self, state: State) -> Tensor:
        """The candidate items of each row, bool ``(N, D)``; all ``False`` when a row is done."""

    @abc.abstractmethod
    def advance(self, state: State, choice: Tensor, active: Tensor) -> State:
        """The state after choosing item ``choice`` (N,) in the rows where ``active`` (N,)."""

    @abc.abstractmethod
    def structure(self, state: State) -> Tensor:
        """The structure of each row from the final state, shape ``(N,) + event_shape``."""

    def run(self, weights: Tensor, mask: Tensor) -> tuple[Tensor, Trace]:
        """Run on ``weights`` (N, D) (noise, or ``-theta`` for the MAP); see :func:`run`."""
        return run(self, weights, mask)


def _select_rows(state: State, index: Tensor) -> State:
    return {key: value[index] for key, value in state.items()}


def run(alg: RecursiveAlgorithm, weights: Tensor, mask: Tensor) -> tuple[Tensor, Trace]:
    """Run ``alg`` on ``weights``: at each step take the argmin over the candidates.

    With ``alg.reduced_costs`` the weights are additive costs (linear noise ``E``): after a step
    the candidates' residual costs drop by their minimum, and the next argmin is over residuals
    (the reduced-cost rule of Chu-Liu-Edmonds). Otherwise only the order of the weights matters
    and they are typically the log-noise.

    Args:
        alg: the algorithm.
        weights: log-noise or costs (``-theta`` gives the MAP), shape (N, D).
        mask: present items, bool (N, D).

    Returns:
        ``(structure, trace)``: shapes ``(N,) + event_shape`` and a :class:`Trace` with batch
        ``(N,)``.
    """
    n, d = weights.shape
    residual = weights.clone()
    state = alg.initial_state(mask)
    choices = torch.zeros((n, alg.max_steps), dtype=torch.long, device=weights.device)
    cands = torch.zeros((n, alg.max_steps, d), dtype=torch.bool, device=weights.device)
    inf = torch.tensor(torch.inf, dtype=weights.dtype, device=weights.device)
    meta = weights.device.type == "meta"  # shapes only: run every step, no early exit
    for t in range(alg.max_steps):
        cand = alg.candidates(state) & mask
        active = cand.any(-1)
        if not meta and not bool(active.any()):
            break
        masked = torch.where(cand, residual, inf)
        low, choice = masked.min(-1)
        choice = torch.where(active, choice, torch.zeros_like(choice))
        low = torch.where(active, low, torch.zeros_like(low))
        if alg.reduced_costs:
            residual = torch.where(cand, residual - low.unsqueeze(-1), residual)
        state = alg.advance(state, choice, active)
        choices[:, t] = choice
        cands[:, t] = cand
    return alg.structure(state), Trace(choices, cands)


def sample_noise(theta: Tensor, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
    """Log-noise ``log E_i = log(Exp(1)) - theta_i`` (``E_i ~ Exponential(exp(theta_i))``).

    ``+inf`` for absent items; finite otherwise, whatever the scale of ``theta``.

    Shape:
        ``theta``: ``batch + (D,)``; returns ``sample_shape + batch + (D,)`` in
        :func:`compute_dtype` of ``theta``.
    """
    theta = upcast(theta.detach())
    # log E = log(-log U): two logarithms of a uniform are several times faster on CPU than
    # ``exponential_`` and its log. U is clamped to [tiny, 1) and torch.rand never returns 1,
    # so -log U > 0 and the result is finite.
    u = torch.rand(torch.Size(sample_shape) + theta.shape, dtype=theta.dtype, device=theta.device)
    log_e = u.clamp_min_(torch.finfo(theta.dtype).tiny).log_().neg_().log_()
    return torch.where(torch.isfinite(theta), log_e - theta, torch.inf)


def noise_log_prob(theta: Tensor, noise: Tensor) -> Tensor:
    """Log-density of the log-noise, ``sum_i [theta_i + n_i - exp(theta_i + n_i)]`` (present items).

    That is the density of ``E = exp(n)`` times the Jacobian ``E``, which does not depend on
    ``theta``; its gradient in ``theta`` is the E-REINFORCE score ``1 - exp(theta_i) E_i``.

    Shape:
        ``theta``: ``batch + (D,)``, ``noise``: ``sample + batch + (D,)``; returns
        ``sample + batch`` in :func:`compute_dtype`.
    """
    theta = upcast(theta)
    noise = upcast(noise)
    x = theta + noise
    present = torch.isfinite(theta) & torch.isfinite(noise)
    x = torch.where(present, x, torch.zeros_like(x))
    return torch.where(present, x - x.exp(), torch.zeros_like(x)).sum(-1)


def trace_log_prob(theta: Tensor, trace: Trace) -> Tensor:
    """``log p(T) = sum_t [theta_{k_t} - logsumexp_{j in S_t} theta_j]`` over the valid steps.

    Finite with finite gradients for any valid trace (steps that did not happen add 0).

    Shape:
        ``theta``: ``batch + (D,)`` (broadcastable to the trace's batch), ``trace`` batch
        ``sample + batch``; returns ``sample + batch`` in :func:`compute_dtype`.
    """
    theta = upcast(theta)
    batch = trace.choices.shape[:-1]
    t, d = trace.candidates.shape[-2:]
    th = theta.unsqueeze(-2).expand(*batch, t, d)
    valid = trace.valid
    # Steps that did not happen score every item, so no row of the logsumexp is all -inf.
    cand = trace.candidates | ~valid.unsqueeze(-1)
    finite = torch.isfinite(th)
    cand = cand & finite
    masked = torch.where(cand, th, torch.full_like(th, -torch.inf))
    lse = torch.logsumexp(masked, -1)
    picked = th.gather(-1, trace.choices.unsqueeze(-1)).squeeze(-1)
    picked = torch.where(valid, picked, torch.zeros_like(picked))
    lse = torch.where(valid, lse, torch.zeros_like(lse))
    return (picked - lse).sum(-1)


def conditional_noise(
    theta: Tensor,
    trace: Trace,
    step_noise: Tensor | None = None,
    item_noise: Tensor | None = None,
) -> Tensor:
    """Sample log-noise ``log E ~ p(log E | T)``: noise on which the algorithm takes trace ``T``.

    ``M_t = step_noise_t / sum_{S_t} exp(theta)``; ``E_i = sum_{t: i in S_t} M_t`` plus
    ``item_noise_i / exp(theta_i)`` for items never chosen; computed in log space
    (``+inf`` for absent items). With ``step_noise`` and ``item_noise`` given (standard
    exponentials, e.g. ``-log U`` of uniforms shared between calls) the result is a
    differentiable function of ``theta``: the conditional reparameterization RELAX needs.

    Args:
        theta: item scores, ``batch + (D,)``.
        trace: a trace with batch ``sample + batch``.
        step_noise: standard exponentials, ``sample + batch + (T,)``; drawn when ``None``.
        item_noise: standard exponentials, ``sample + batch + (D,)``; drawn when ``None``.

    Returns:
        The log-noise, ``sample + batch + (D,)`` in :func:`compute_dtype`.
    """
    theta = upcast(theta)
    batch = trace.choices.shape[:-1]
    t, d = trace.candidates.shape[-2:]
    th = theta.expand(*batch, d)
    if step_noise is None:
        step_noise = exponential_noise((*batch, t), th)
    if item_noise is None:
        item_noise = exponential_noise((*batch, d), th)
    present = torch.isfinite(th)
    valid = trace.valid
    cand = trace.candidates & present.unsqueeze(-2) | ~valid.unsqueeze(-1)
    neg_inf = torch.full_like(th, -torch.inf)
    lse = torch.logsumexp(torch.where(cand, th.unsqueeze(-2), neg_inf.unsqueeze(-2)), -1)
    log_m = upcast(step_noise).log() - lse  # (..., T)
    in_step = trace.candidates & valid.unsqueeze(-1) & present.unsqueeze(-2)
    parts = torch.where(in_step, log_m.unsqueeze(-1), neg_inf.unsqueeze(-2))  # (..., T, D)
    safe_th = torch.where(present, th, torch.zeros_like(th))
    fresh = upcast(item_noise).log() - safe_th
    fresh = torch.where(trace.chosen | ~present, neg_inf, fresh)
    everything = torch.cat([parts, fresh.unsqueeze(-2)], -2)
    # Absent items have no term at all; give them a dummy 0 so the logsumexp has a finite grad.
    everything = torch.where(present.unsqueeze(-2), everything, torch.zeros_like(everything))
    out = torch.logsumexp(everything, -2)
    return torch.where(present, out, torch.full_like(out, torch.inf))


class Enumeration(NamedTuple):
    """Every trace of an algorithm (for small sizes), as rows.

    Attributes:
        structures: the structure of each trace, ``(R,) + event_shape``.
        trace: the traces, batch ``(R,)``.
        row: the input row each trace belongs to, long ``(R,)``.
    """

    structures: Tensor
    trace: Trace
    row: Tensor


def enumerate_traces(
    alg: RecursiveAlgorithm, mask: Tensor, *, max_traces: int = 2**20
) -> Enumeration:
    """Every possible trace of ``alg`` for each row of ``mask`` (N, D), by branching on all
    candidates at every step. Exponential in the size: for tests and small supports only.

    Raises:
        ValueError: if more than ``max_traces`` traces would be built.
    """
    n, d = mask.shape
    rows = torch.arange(n, device=mask.device)
    state = alg.initial_state(mask)
    choices = torch.zeros((n, 0), dtype=torch.long, device=mask.device)
    cands = torch.zeros((n, 0, d), dtype=torch.bool, device=mask.device)
    for _ in range(alg.max_steps):
        cand = alg.candidates(state) & mask[rows]
        active = cand.any(-1)
        if not bool(active.any()):
            break
        counts = torch.where(active, cand.sum(-1), torch.ones_like(active, dtype=torch.long))
        total = int(counts.sum())
        if total > max_traces:
            raise ValueError(f"more than max_traces={max_traces} traces; the size is too large")
        parent = torch.repeat_interleave(torch.arange(len(rows), device=mask.device), counts)
        # The j-th child of a row takes its j-th candidate (inactive rows keep choice 0).
        order = torch.argsort((~cand).to(torch.int8), dim=-1, stable=True)
        offset = torch.arange(total, device=mask.device) - torch.repeat_interleave(
            torch.cumsum(counts, 0) - counts, counts
        )
        choice = order[parent, offset]
        child_active = active[parent]
        choice = torch.where(child_active, choice, torch.zeros_like(choice))
        state = alg.advance(_select_rows(state, parent), choice, child_active)
        choices = torch.cat([choices[parent], choice.unsqueeze(-1)], -1)
        cands = torch.cat([cands[parent], cand[parent].unsqueeze(-2)], -2)
        rows = rows[parent]
    pad = alg.max_steps - choices.shape[-1]
    choices = torch.nn.functional.pad(choices, (0, pad))
    cands = torch.nn.functional.pad(cands, (0, 0, 0, pad))
    return Enumeration(alg.structure(state), Trace(choices, cands), rows)


def structure_support(
    alg: RecursiveAlgorithm,
    theta: Tensor,
    *,
    canonical: Callable[[Tensor], Tensor] | None = None,
    max_traces: int = 2**20,
) -> tuple[Tensor, Tensor]:
    """Every structure of nonzero probability and its exact probability, summed over traces.

    Batched like :meth:`DiscreteDistribution.support_probs`: structures are padded per batch
    element (with probability 0) to a common count ``S``. ``canonical`` maps the algorithm's
    raw structures ``(R,) + raw_shape`` to the values that identify a structure (e.g. the set of
    a top-k ordering); traces with equal values are summed.

    Shape:
        ``theta``: ``batch + (D,)``; returns values ``(S,) + batch + event_shape`` and
        differentiable probabilities ``(S,) + batch``.
    """
    batch = theta.shape[:-1]
    d = theta.shape[-1]
    if batch.numel() == 0:
        # An empty batch: the structures of one row with every item present, no probabilities.
        one = torch.zeros((1, d), dtype=theta.dtype, device=theta.device)
        values, probs = structure_support(alg, one, canonical=canonical, max_traces=max_traces)
        empty = 0 * upcast(theta).sum()  # keeps the result on the graph of theta
        s = values.shape[0]
        return (
            values[:, :0].reshape(s, *batch, *values.shape[2:]),
            (probs[:, :0] + empty).reshape(s, *batch),
        )
    flat = upcast(theta).reshape(-1, d)
    n = flat.shape[0]
    mask = torch.isfinite(flat)
    shared = bool((mask == mask[:1]).all())
    enum = enumerate_traces(alg, mask[:1] if shared else mask, max_traces=max_traces)
    if shared:
        r = enum.row.shape[0]
        row = torch.arange(n, device=theta.device).repeat_interleave(r)
        index = torch.arange(r, device=theta.device).repeat(n)
        enum = Enumeration(enum.structures[index], enum.trace[index], row)
    logp = trace_log_prob(flat[enum.row], enum.trace)
    structures = enum.structures if canonical is None else canonical(enum.structures)
    event = structures.shape[1:]
    keys = structures.reshape(structures.shape[0], -1)
    keyed = torch.cat([enum.row.unsqueeze(-1), keys.to(torch.long)], -1)
    unique, inverse = torch.unique(keyed, dim=0, return_inverse=True)
    probs = torch.zeros(unique.shape[0], dtype=logp.dtype, device=theta.device)
    probs = probs.index_add(0, inverse, logp.exp())
    # Slot of each unique structure within its row.
    urow = unique[:, 0]
    counts = torch.bincount(urow, minlength=n)
    s = int(counts.max())
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(unique.shape[0], device=theta.device) - start[urow]
    values = unique[:, 1:].reshape(-1, *event).to(structures.dtype)
    # Padding repeats each row's first structure with probability 0.
    first = values[start]
    out_values = first.unsqueeze(0).expand(s, *first.shape).clone()
    out_values[slot, urow] = values
    out_probs = torch.zeros((s, n), dtype=logp.dtype, device=theta.device)
    out_probs = out_probs.index_put((slot, urow), probs)
    return (
        out_values.reshape(s, *batch, *event),
        out_probs.reshape(s, *batch),
    )
