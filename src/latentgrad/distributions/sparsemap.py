"""Sparse distributions over structures: SparseMAP and top-k sparsemax (exact marginalization)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor
from torch.distributions import constraints

from latentgrad._numerics import safe_log, upcast, xlogx_safe
from latentgrad._validation import (
    check_finite_scores,
    check_in_support,
    check_int,
    check_nonnegative,
    check_optional_int,
    check_part_mask,
    check_sample,
    is_meta,
    resolve_validate_args,
)
from latentgrad.distributions._base import DiscreteDistribution
from latentgrad.mappings import SparseMAPResult, TopKResult, sparsemap, topk_sparsemax


class _SparseStructures(DiscreteDistribution):
    """A distribution given by a few structures and their weights (most structures have 0).

    Subclasses compute ``(structures (*, A, D), weights (*, A))`` from ``scores`` once
    (:meth:`_solve`, cached); values are the structures in the form ``to_value`` gives (the flat
    0/1 indicator by default). :meth:`support_probs` returns exactly those structures, so
    :class:`~latentgrad.Marginalize` sums the loss over the support: a deterministic, exact
    expectation whose gradient flows into ``scores`` through the weights.
    """

    _param_names = ("scores",)
    has_rsample = False
    has_enumerate_support = True
    max_support_size = 2**63 - 1  # no bound of its own: the support is the solver's structures
    # The possible structures depend on the oracle, which no torch constraint describes.
    support = constraints.dependent
    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {
        "scores": constraints.real_vector
    }
    scores: Tensor
    _to_value_fn: Callable[[Tensor], Tensor] | None = None

    def _setup(
        self,
        scores: object,
        event_shape: torch.Size | None = None,
        validate_args: bool | None = None,
    ) -> None:
        t = check_finite_scores(scores, "scores")
        self.scores = t
        self._cache: tuple[Tensor, Tensor] | None = None
        if event_shape is None:
            event_shape = torch.Size((t.shape[-1],))
        DiscreteDistribution.__init__(self, t.shape[:-1], event_shape, validate_args=False)
        self._validate_args = resolve_validate_args(validate_args)

    def _in_support(self, value: Tensor) -> Tensor:
        """0/1 values (subclasses narrow this to their structures)."""
        return ((value == 0) | (value == 1)).flatten(value.dim() - len(self.event_shape)).all(-1)

    def _support_text(self) -> str:
        return f"0/1 values of shape {tuple(self.event_shape)}"

    def _copy_extra_state(self, new: DiscreteDistribution) -> None:
        self._copy_settings(new)
        new._cache = None  # type: ignore[attr-defined]
        new._result = None  # type: ignore[attr-defined]

    def _compute(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _solve(self) -> tuple[Tensor, Tensor]:
        if self._cache is None:
            self._cache = self._compute()
        return self._cache

    def _value(self, flat: Tensor) -> Tensor:
        """Values ``(*, event_shape)`` of flat structures ``(*, D)``."""
        if self._to_value_fn is None:
            return flat.to(self.scores.dtype)
        lead = flat.shape[:-1]
        out = self._to_value_fn(flat.reshape(-1, flat.shape[-1]))
        return out.reshape(*lead, *out.shape[1:]).to(self.scores.dtype)

    # -- what estimators use ---------------------------------------------------------------

    def support_probs(self) -> tuple[Tensor, Tensor]:
        """The structures of the support and their weights, ``(A,) + batch_shape + event_shape``
        and ``(A,) + batch_shape`` (rows with fewer structures are padded with weight 0)."""
        structures, weights = self._solve()
        values = self._value(structures.movedim(-2, 0))
        return values, weights.movedim(-1, 0).to(self.scores.dtype)

    def support_size(self) -> int:
        """``A``: the number of structures :meth:`support_probs` returns (solves the problem)."""
        return int(self._solve()[1].shape[-1])

    def enumerate_support(self, expand: bool = True) -> Tensor:
        return self.support_probs()[0]

    @property
    def probs(self) -> Tensor:
        """The weights of the support structures, ``batch_shape + (A,)``."""
        return self._solve()[1]

    def _match(self, value: Tensor) -> Tensor:
        """``(A,) + sample_batch`` mask of the support structures equal to ``value``."""
        sample_batch = check_sample(value, self.batch_shape, self.event_shape, self.scores)
        if self._validate_args:
            check_in_support(self, value)
        values, _ = self.support_probs()
        lead = len(sample_batch) - len(self.batch_shape)
        v = values.reshape(values.shape[:1] + (1,) * lead + values.shape[1:])
        n_event = len(self.event_shape)
        return (v == value.unsqueeze(0)).flatten(v.dim() - n_event).all(-1)

    def log_prob(self, value: Tensor) -> Tensor:
        """``log`` of the weight of ``value`` (``-inf`` for a structure of weight 0), shape
        ``sample_shape + batch_shape``; differentiable with finite gradients. A value that is not
        a structure raises ``ValueError`` (unless ``validate_args=False``)."""
        same = self._match(value)
        _, probs = self.support_probs()
        lead = same.dim() - probs.dim()
        p = probs.reshape(probs.shape[:1] + (1,) * lead + probs.shape[1:])
        total = torch.where(same, upcast(p), torch.zeros_like(upcast(p))).sum(0)
        return safe_log(total).to(self.scores.dtype)

    def entropy(self) -> Tensor:
        """``-sum_z p_z log p_z`` over the support, shape ``batch_shape``."""
        p = upcast(self._solve()[1])
        return -xlogx_safe(p, safe_log(p)).sum(-1).to(self.scores.dtype)

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> Tensor:
        """Structures drawn in proportion to their weights, ``sample_shape + batch + event``."""
        with torch.no_grad():
            values, probs = self.support_probs()
            shape = torch.Size(sample_shape)
            flat = probs.reshape(probs.shape[0], -1).T  # (B, A)
            if flat.shape[0] == 0:  # an empty batch
                return values.new_zeros(shape + self.batch_shape + self.event_shape)
            # (The weights are >= 0 already; the clamp only guards the sampler against rounding.)
            weights = upcast(flat).clamp_min(0.0)
            idx = torch.multinomial(weights, max(shape.numel(), 1), replacement=True)
            idx = idx.T.reshape(shape + self.batch_shape)
            v = values.reshape(values.shape[0], -1, *self.event_shape)
            b = torch.arange(v.shape[1], device=v.device).expand_as(idx.reshape(-1, v.shape[1]))
            out = v[idx.reshape(-1, v.shape[1]), b]
            return out.reshape(*shape, *self.batch_shape, *self.event_shape)


class SparseMAP(_SparseStructures):
    """SparseMAP: the sparse distribution over structures whose mean is the projection of the
    scores onto the marginal polytope.

    ``mu* = argmin_{mu in conv(Z)} ||mu - scores||^2`` is a convex combination of a few
    structures; those structures with their weights are the distribution (Niculae et al. 2018).
    Used with :class:`~latentgrad.Marginalize`, ``E_p[loss] = sum_z p_z loss(z)`` is summed
    exactly over them (Correia et al. 2020): deterministic gradients, no sampling. Any set of
    structures with a MAP oracle works (:mod:`latentgrad.mappings.oracles`: free or budgeted
    bit-vectors, k-subsets, permutations, spanning trees, arborescences, sequences).

    Args:
        scores: part scores, ``batch_shape + (D,)``, finite.
        oracle: the structures' MAP oracle (``dim == D``); its ``to_value`` (when it has one)
            gives the values' form, otherwise values are the flat 0/1 indicators.
        max_iter, tol: passed to :func:`~latentgrad.mappings.sparsemap` (``max_iter=None``:
            its default, which grows with ``D``).
        strict: raise ``RuntimeError`` when some row does not converge (default). With
            ``strict=False`` check :attr:`result` (``converged``, ``gap``).
        method: ``"auto"`` uses the oracle's closed form where it has one (free bit-vectors:
            the nested decomposition of the clamp; budgeted ones: the capped-simplex
            projection, decomposed by systematic sampling), ``"active_set"`` always runs the
            iterative solver; see :func:`~latentgrad.mappings.sparsemap`.
        penalized: bool ``(D,)``, the parts in the quadratic term (default: all); e.g.
            ``oracle.unary_parts`` of a :class:`~latentgrad.mappings.oracles.SequenceOracle`
            for Niculae et al.'s SparseMAP over sequences, whose transitions enter linearly
            (see :func:`~latentgrad.mappings.sparsemap`).

    Shape:
        ``batch_shape = scores.shape[:-1]``; ``event_shape`` is that of ``oracle.to_value`` of
        one structure, ``(D,)`` without it.

    Example:
        >>> import torch, latentgrad as lg
        >>> from latentgrad.mappings.oracles import BudgetBits
        >>> scores = torch.tensor([[0.9, 0.6, -0.2, 0.1]], requires_grad=True)
        >>> q = lg.SparseMAP(scores, BudgetBits(4, budget=2))
        >>> values, probs = q.support_probs()
        >>> values.shape[0], round(probs.sum().item(), 6)  # mu* has 3 coordinates in (0, 1)
        (4, 1.0)
        >>> out = lg.Marginalize()(q, lambda z: (z * torch.arange(4.0)).sum(-1))
        >>> out.surrogate.sum().backward()  # exact gradient of sum_z p_z loss(z)

    References:
        [1] Niculae, Martins, Blondel & Cardie, "SparseMAP: Differentiable Sparse Structured
            Inference", ICML 2018.
        [2] Correia, Niculae, Aziz & Martins, "Efficient Marginalization of Discrete and
            Structured Latent Variables via Sparsity", NeurIPS 2020.
    """

    def __init__(
        self,
        scores: Tensor,
        oracle: Any,
        *,
        max_iter: int | None = None,
        tol: float = 1e-6,
        strict: bool = True,
        method: str = "auto",
        penalized: Tensor | None = None,
        validate_args: bool | None = None,
    ) -> None:
        if not callable(oracle):
            raise TypeError(f"oracle must be callable, got {type(oracle).__name__}")
        self.oracle = oracle
        self.max_iter = check_optional_int(max_iter, "max_iter", minimum=1)
        self.tol = check_nonnegative(tol, "tol")
        self.strict = strict
        if method not in ("auto", "active_set"):
            raise ValueError(f"method must be 'auto' or 'active_set', got {method!r}")
        self.method = method
        self.penalized = penalized
        self._to_value_fn = getattr(oracle, "to_value", None)
        scores = check_finite_scores(scores, "scores")
        dim = getattr(oracle, "dim", None)
        if isinstance(dim, int) and dim != scores.shape[-1]:
            raise ValueError(
                f"oracle has dim {dim} but scores has D = {scores.shape[-1]} parts (its last "
                f"dimension, shape {tuple(scores.shape)})"
            )
        if penalized is not None:
            check_part_mask(penalized, "penalized", scores.shape[-1])
        event = None
        if self._to_value_fn is not None:
            event = self._to_value_fn(torch.zeros(1, scores.shape[-1])).shape[1:]
        self._setup(scores, event, validate_args)
        self._result: SparseMAPResult | None = None

    def _compute(self) -> tuple[Tensor, Tensor]:
        self._result = sparsemap(
            self.scores,
            self.oracle,
            max_iter=self.max_iter,
            tol=self.tol,
            strict=self.strict,
            method=self.method,
            penalized=self.penalized,
        )
        return self._result.structures, self._result.weights

    @property
    def result(self) -> SparseMAPResult:
        """The solver's result (``structures``, ``weights``, ``mu``, ``gap``, ``converged``)."""
        self._solve()
        assert self._result is not None
        return self._result

    @property
    def mean(self) -> Tensor:
        """``mu*``, the marginals of the parts, ``batch_shape + (D,)``."""
        return self.result.mu

    def _in_support(self, value: Tensor) -> Tensor:
        binary = super()._in_support(value)
        from_value = getattr(self.oracle, "from_value", None)
        if from_value is None and self._to_value_fn is not None:
            return binary  # no way back to the parts: only the 0/1 check
        flat = value if from_value is None else from_value(value)
        flat = flat.reshape(-1, flat.shape[-1]).to(self.scores.dtype)
        # A 0/1 vector z is a structure iff it is the unique maximizer of <2 z - 1, z'>.
        scores = torch.where(binary.reshape(-1, 1), 2 * flat - 1, torch.zeros_like(flat))
        found = self.oracle(scores)
        return binary & (found == flat).all(-1).reshape(binary.shape)

    def _support_text(self) -> str:
        return (
            f"0/1 values of shape {tuple(self.event_shape)} that are structures of {self.oracle!r}"
        )

    def mode(self) -> Tensor:  # type: ignore[override]
        """The MAP structure ``argmax_z <scores, z>`` (the oracle on the scores)."""
        flat = self.scores.detach().reshape(-1, self.scores.shape[-1])
        z = self.oracle(flat).reshape(self.scores.shape)
        return self._value(z)


class TopKSparsemax(_SparseStructures):
    """Top-k sparsemax over bit-vectors: sparsemax over the scores ``<scores, z>`` of the ``k``
    best structures, found exactly by a k-best algorithm.

    It equals sparsemax over ALL structures whenever its support is smaller than ``k``
    (:attr:`exact` says so per batch element); otherwise it is the sparsemax of the ``k`` best
    only (raise ``k``). With :class:`~latentgrad.Marginalize` the loss is evaluated on the ``k``
    structures, of which the zero-weight ones are skipped.

    Args:
        scores: item scores, ``batch_shape + (D,)``, finite.
        k: the number of structures kept.
        structures: ``"free"`` (all ``2^D`` bit-vectors) or ``"budget"`` (at most ``budget``
            ones).
        budget: the largest number of ones, with ``structures="budget"``.

    Shape:
        ``batch_shape = scores.shape[:-1]``, ``event_shape = (D,)`` (0/1 bit-vectors).

    Example:
        >>> import torch, latentgrad as lg
        >>> q = lg.TopKSparsemax(torch.tensor([[1.0, -0.2, 0.3]]), k=4)
        >>> q.exact
        tensor([True])
        >>> values, probs = q.support_probs()
        >>> values[:, 0], probs[:, 0]
        (tensor([[1., 0., 1.],
                [1., 1., 1.],
                [1., 0., 0.],
                [1., 1., 0.]]), tensor([0.5000, 0.3000, 0.2000, 0.0000]))

    References:
        [1] Correia, Niculae, Aziz & Martins, "Efficient Marginalization of Discrete and
            Structured Latent Variables via Sparsity", NeurIPS 2020.
    """

    def __init__(
        self,
        scores: Tensor,
        k: int,
        *,
        structures: Literal["free", "budget"] = "free",
        budget: int | None = None,
        validate_args: bool | None = None,
    ) -> None:
        self.k = check_int(k, "k", minimum=1)
        self.structures = structures
        self.budget = budget
        self._setup(scores, validate_args=validate_args)
        self._result: TopKResult | None = None
        if not is_meta(self.scores):
            self._compute()  # validates k, structures and budget now

    def _in_support(self, value: Tensor) -> Tensor:
        binary = super()._in_support(value)
        if self.structures == "budget" and self.budget is not None:
            return binary & (value.sum(-1) <= self.budget)
        return binary

    def _support_text(self) -> str:
        d = self.event_shape[0]
        if self.structures == "budget":
            return f"0/1 vectors of length {d} with at most budget = {self.budget} ones"
        return f"0/1 vectors of length {d}"

    def _compute(self) -> tuple[Tensor, Tensor]:
        self._result = topk_sparsemax(
            self.scores, self.k, structures=self.structures, budget=self.budget
        )
        self._cache = (self._result.structures, self._result.weights)
        return self._cache

    @property
    def exact(self) -> Tensor:
        """Whether the result is sparsemax over all structures, bool ``batch_shape``."""
        self._solve()
        assert self._result is not None
        return self._result.exact

    def mode(self) -> Tensor:  # type: ignore[override]
        """The best structure, ``batch_shape + (D,)``."""
        return self._value(self._solve()[0][..., 0, :])
