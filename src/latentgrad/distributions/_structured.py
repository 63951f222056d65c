"""The base class of structured families sampled by a recursive algorithm on exponential noise."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from torch.distributions import constraints

from latentgrad._numerics import safe_log, upcast
from latentgrad._validation import check_in_support, check_sample, resolve_validate_args
from latentgrad.distributions._base import DiscreteDistribution
from latentgrad.structured import core
from latentgrad.structured.core import RecursiveAlgorithm, Trace

MAX_ENUMERATION = 2**16
"""Largest support :meth:`StructuredDistribution.log_prob` and ``entropy`` enumerate."""


class StructuredDistribution(DiscreteDistribution):
    """A family whose sample is the output of a recursive algorithm on exponential noise.

    The noise has one coordinate per *item* (elements, edges, matrix entries) with rate
    ``exp(theta_item)``; items of score ``-inf`` are absent. Subclasses say how their
    ``scores`` map to item scores (:meth:`item_scores`), which algorithm runs
    (:attr:`algorithm`) and how its raw structure becomes a value (:meth:`_to_value`).

    Hooks beyond :class:`DiscreteDistribution`:
        * :meth:`sample_with_trace`, :meth:`trace_from_noise`: samples with their traces.
        * :meth:`trace_log_prob`: ``log p(T)`` (the T-REINFORCE score).
        * :meth:`noise_log_prob`: ``log p(E)`` (the E-REINFORCE score).
        * :meth:`conditional_noise`: ``E ~ p(E | T)``, reparameterizable (RELAX).
        * :meth:`support_probs`: exact structure probabilities by enumerating every trace
          (small sizes; what :class:`~latentgrad.Marginalize` uses).

    Declared capabilities: ``has_noise``, ``has_trace``, ``has_conditional_noise`` and
    ``has_enumerate_support`` for supports of at most ``max_support_size`` structures.
    ``arg_constraints`` says that the scores are real (``-inf`` marks an absent item). The
    :attr:`support` stays ``constraints.dependent``: which structures are possible depends on
    the instance (``k``, the root, the absent items), and ``torch.distributions.constraints``
    has no constraint for subsets, trees or matchings.
    """

    _param_names = ("scores",)
    _base_class = True  # a base of families, not a family
    has_rsample = False
    has_noise = True
    has_trace = True
    has_conditional_noise = True
    has_enumerate_support = True
    max_support_size = MAX_ENUMERATION
    support = constraints.dependent
    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {
        "scores": constraints.real_vector
    }

    scores: Tensor
    _score_event_dims: ClassVar[int] = 1

    # -- what subclasses provide -----------------------------------------------------------

    @property
    def algorithm(self) -> RecursiveAlgorithm:
        raise NotImplementedError

    def item_scores(self) -> Tensor:
        """Item scores ``theta``, ``batch_shape + (D,)``; ``-inf`` for absent items.

        Differentiable in :attr:`scores`.
        """
        raise NotImplementedError

    def _to_value(self, structure: Tensor) -> Tensor:
        """The value (in the family's documented form) of the algorithm's raw structures."""
        return structure

    # -- construction ----------------------------------------------------------------------

    def _init_batch(
        self, event_shape: torch.Size | tuple[int, ...], validate_args: bool | None = None
    ) -> None:
        """Set the shapes, and whether :meth:`log_prob` checks its values (``validate_args``,
        torch's default when ``None``; the parameters are always checked)."""
        batch = self.scores.shape[: self.scores.dim() - self._score_event_dims]
        DiscreteDistribution.__init__(self, batch, torch.Size(event_shape), validate_args=False)
        self._validate_args = resolve_validate_args(validate_args)

    def _in_support(self, value: Tensor) -> Tensor:
        """Whether each value is a structure of the family (present items or not), bool
        ``sample_shape + batch_shape``."""
        raise NotImplementedError

    def _support_text(self) -> str:
        """The support in words, for the error of :meth:`log_prob`."""
        raise NotImplementedError

    def _check_value(self, value: Tensor, ok: Tensor | None = None) -> torch.Size:
        """Check a value to score (type, device, shape; its support unless
        ``validate_args=False``) and return its ``sample_shape + batch_shape``."""
        sample_batch = check_sample(value, self.batch_shape, self.event_shape, self.scores)
        if self._validate_args:
            check_in_support(self, value, ok=ok)
        return sample_batch

    def _copy_extra_state(self, new: DiscreteDistribution) -> None:
        self._copy_settings(new)

    @property
    def num_items(self) -> int:
        return self.algorithm.num_items

    @property
    def noise_event_shape(self) -> torch.Size:
        return torch.Size((self.num_items,))

    # -- noise and traces ------------------------------------------------------------------

    def _costs(self, noise: Tensor) -> Tensor:
        """What the algorithm runs on, from the log-noise: the log-noise itself for algorithms
        that depend only on its order; families with additive costs override this."""
        return noise

    def _run(self, noise: Tensor) -> tuple[Tensor, Trace]:
        """Run the algorithm on log-noise ``(*) + batch + (D,)``; value and trace."""
        return self._run_costs(self._costs(noise))

    def _run_costs(self, weights: Tensor, theta: Tensor | None = None) -> tuple[Tensor, Trace]:
        """Run on costs ``weights``; ``theta`` (the detached item scores) if already computed."""
        if theta is None:
            theta = self.item_scores().detach()
        lead = weights.shape[: weights.dim() - 1 - len(self.batch_shape)]
        full = torch.Size(lead) + self.batch_shape + (self.num_items,)
        mask = torch.isfinite(theta).expand(full).reshape(-1, self.num_items)
        flat = weights.expand(full).reshape(-1, self.num_items)
        structure, trace = self.algorithm.run(flat, mask)
        value = self._to_value(structure)
        shape = torch.Size(lead) + self.batch_shape
        return value.reshape(*shape, *value.shape[1:]), trace.reshape(shape)

    def sample_noise(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """Log-noise ``log E``, ``sample_shape + batch_shape + (D,)`` (see
        :func:`latentgrad.structured.sample_noise`)."""
        return core.sample_noise(self.item_scores(), sample_shape)

    def from_noise(self, noise: Tensor) -> Tensor:
        return self._run(noise)[0]

    def trace_from_noise(self, noise: Tensor) -> tuple[Tensor, Trace]:
        """The value and the execution trace the algorithm takes on ``noise``."""
        return self._run(noise)

    def sample_with_trace(
        self, sample_shape: torch.Size | tuple[int, ...] = ()
    ) -> tuple[Tensor, Tensor, Trace]:
        """``(value, noise, trace)`` for ``sample_shape`` fresh samples."""
        with torch.no_grad():
            theta = self.item_scores()
            noise = core.sample_noise(theta, sample_shape)
            value, trace = self._run_costs(self._costs(noise), theta)
        return value, noise, trace

    def sample_with_noise(
        self, sample_shape: torch.Size | tuple[int, ...] = ()
    ) -> tuple[Tensor, Tensor]:
        value, noise, _ = self.sample_with_trace(sample_shape)
        return value, noise

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> Tensor:
        return self.sample_with_trace(torch.Size(sample_shape))[0]

    def trace_log_prob(self, trace: Trace, *, item_scores: Tensor | None = None) -> Tensor:
        """``log p(T)``, shape ``sample_shape + batch_shape``, differentiable in the scores.

        Args:
            trace: execution traces from :meth:`sample_with_trace`.
            item_scores: evaluate at these item scores instead of :meth:`item_scores` (e.g.
                one leaf copy per sample, for per-sample gradients as RELAX takes them),
                shape broadcastable to ``sample_shape + batch_shape + (D,)``.
        """
        theta = self.item_scores() if item_scores is None else item_scores
        return core.trace_log_prob(theta, trace)

    def noise_log_prob(self, noise: Tensor) -> Tensor:
        """Log-density of the log-noise, ``sample_shape + batch_shape``, differentiable.

        Its gradient is the E-REINFORCE score."""
        return core.noise_log_prob(self.item_scores(), noise)

    def conditional_noise(
        self,
        trace: Trace,
        step_noise: Tensor | None = None,
        item_noise: Tensor | None = None,
        *,
        item_scores: Tensor | None = None,
    ) -> Tensor:
        """Log-noise ``~ p(log E | T)``; see :func:`latentgrad.structured.conditional_noise`.

        ``item_scores`` replaces :meth:`item_scores` as in :meth:`trace_log_prob`.
        """
        theta = self.item_scores() if item_scores is None else item_scores
        return core.conditional_noise(theta, trace, step_noise, item_noise)

    def mode(self) -> Tensor:  # type: ignore[override]
        """The algorithm on zero noise (costs ``-theta``), shape ``batch_shape + event_shape``.

        For order-based algorithms this is the log-noise at Gumbel noise 0; for
        Chu-Liu-Edmonds it is the arborescence of largest total score.
        """
        theta = self.item_scores().detach()
        return self._run_costs(-upcast(theta), theta)[0]

    # -- support ---------------------------------------------------------------------------

    def support_probs(self) -> tuple[Tensor, Tensor]:
        """Every structure of nonzero probability and its probability, summed over its traces.

        Exponential in the size (every trace is enumerated); see :meth:`support_size`.
        """
        values, probs = core.structure_support(
            self.algorithm, self.item_scores(), canonical=self._to_value
        )
        return values, probs.to(self.scores.dtype)

    def enumerate_support(self, expand: bool = True) -> Tensor:
        """Every value of nonzero probability, ``(S,) + batch_shape + event_shape``."""
        return self.support_probs()[0]

    def support_size(self) -> int:
        """Number of structures when every item is present (an upper bound otherwise)."""
        raise TypeError(f"{type(self).__name__} does not report its support size")

    def _check_enumerable(self, what: str) -> None:
        size = self.support_size()
        if size > MAX_ENUMERATION:
            raise TypeError(
                f"{type(self).__name__}.{what} sums over {size} structures, more than "
                f"{MAX_ENUMERATION}; use trace_log_prob (or noise_log_prob) instead"
            )

    def log_prob(self, value: Tensor) -> Tensor:
        """``log q(value)`` by summing the probabilities of its traces (small sizes only).

        Families with a closed form override this. Shape: ``sample_shape + batch_shape``.
        ``-inf`` for a structure of probability 0 (one that uses an absent item); a value that is
        not a structure at all raises ``ValueError`` unless ``validate_args=False``.
        """
        self._check_enumerable("log_prob")
        sample_batch = self._check_value(value)
        values, probs = self.support_probs()
        n_event = len(self.event_shape)
        lead = len(sample_batch) - len(self.batch_shape)
        v = values.reshape(values.shape[:1] + (1,) * lead + values.shape[1:])
        same = (v == value.unsqueeze(0)).flatten(-n_event if n_event else v.dim()).all(-1)
        p = probs.reshape(probs.shape[:1] + (1,) * lead + probs.shape[1:])
        total = torch.where(same, upcast(p), torch.zeros_like(upcast(p))).sum(0)
        return safe_log(total).to(self.scores.dtype)

    def entropy(self) -> Tensor:
        """Shannon entropy of the structure, by enumeration (small sizes only)."""
        self._check_enumerable("entropy")
        _, probs = self.support_probs()
        p = upcast(probs)
        logp = safe_log(p)
        return -(torch.where(p > 0, p * logp, torch.zeros_like(p))).sum(0).to(self.scores.dtype)

    def __repr__(self) -> str:
        extra = self._repr_settings()
        return (
            f"{type(self).__name__}(batch_shape={tuple(self.batch_shape)}, "
            f"event_shape={tuple(self.event_shape)}{extra})"
        )

    def _repr_settings(self) -> str:
        return ""
