"""The base class every latentgrad family derives from, and the hooks estimators call.

A family is a :class:`torch.distributions.Distribution` (shapes ``sample_shape + batch_shape +
event_shape``) that also says how it is sampled from noise, what its support is, how it is
relaxed and how its units can be changed one at a time. Estimators only talk to these hooks, so a
new family that implements them works with every estimator at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor
from torch.distributions import Distribution

from latentgrad._validation import own_samples


class LocalVariants(NamedTuple):
    """Samples with one unit changed, for local marginalization (:class:`LocalReparam`).

    For a sample ``z`` made of independent units ``z_1..z_U`` with ``C_i`` values each, the
    variants are every ``z`` with exactly one unit ``i`` set to another value ``c != z_i``.

    Attributes:
        values: the variants, shape ``(V,) + z.shape`` with ``V = sum_i (C_i - 1)``.
        probs: ``q_i(c)`` of the changed unit at its new value, shape
            ``(V,) + sample_shape + batch_shape``; differentiable in the parameters.
        base_probs: ``sum_i q_i(z_i)``, shape ``sample_shape + batch_shape``; differentiable.
    """

    values: Tensor
    probs: Tensor
    base_probs: Tensor


class DiscreteDistribution(Distribution):
    """Base class of latentgrad's discrete families.

    Subclasses declare ``_param_names`` (the tensors that define them, each with the batch shape
    as leading dimensions) so that :meth:`expand` needs no per-class code, implement the hooks
    below that apply to them, and **declare** which ones they implement with the class-level
    capability flags (all ``False`` here), as ``torch.distributions`` declares
    ``has_rsample``. Estimators check the flags with
    :func:`~latentgrad.distributions.capabilities.require` before calling a hook; a hook a
    family does not provide raises ``TypeError`` naming it.

    Capability flags and the hooks they declare:
        * ``has_noise``: :meth:`sample_noise` / :meth:`from_noise` / :meth:`sample_with_noise`,
          the sample as a deterministic function of noise (common random numbers, relaxations).
        * ``has_relaxation``: :meth:`relaxed_from_noise`, a continuous relaxation of
          :meth:`from_noise` at temperature ``tau`` (Gumbel-Softmax / Concrete).
        * ``has_local_variants``: :meth:`local_variants` and :attr:`unit_shape` (local
          marginalization).
        * ``has_trace``: ``sample_with_trace`` / ``trace_log_prob`` / ``noise_log_prob`` and
          ``has_conditional_noise``: ``conditional_noise`` / ``item_scores`` (families sampled
          by a recursive algorithm, :class:`~latentgrad.distributions.StructuredDistribution`).
        * ``has_mean_field``: :attr:`mean` is ``E_q[z]`` with the event shape (MuProp).
        * ``has_logits``: ``logits`` and ``with_logits(logits)``.
        * ``has_enumerate_support``: :meth:`enumerate_support` / :meth:`support_probs` for
          instances with :meth:`support_size` at most ``max_support_size``
          (:meth:`can_enumerate_support`).

    Every family also has :meth:`log_prob`, :meth:`sample` and :meth:`mode` (the most likely
    value).
    """

    _param_names: tuple[str, ...] = ()
    _base_class: ClassVar[bool] = True  # not a family itself (see capabilities.families_with)

    has_noise: ClassVar[bool] = False
    has_relaxation: ClassVar[bool] = False
    has_local_variants: ClassVar[bool] = False
    has_trace: ClassVar[bool] = False
    has_conditional_noise: ClassVar[bool] = False
    has_mean_field: ClassVar[bool] = False
    has_logits: ClassVar[bool] = False
    has_enumerate_support = False
    max_support_size: ClassVar[int] = 0
    """The largest :meth:`support_size` whose support this family enumerates."""

    # -- construction ---------------------------------------------------------------------------

    def expand(self, batch_shape: Any, _instance: Any = None) -> DiscreteDistribution:
        batch_shape = torch.Size(batch_shape)
        n = len(self.batch_shape)
        return self._map_params(
            lambda p: p.expand(batch_shape + p.shape[n:]), batch_shape, _instance
        )

    def _map_params(
        self,
        fn: Callable[[Tensor], Tensor],
        batch_shape: torch.Size,
        _instance: Any = None,
    ) -> DiscreteDistribution:
        """The same family with ``fn`` applied to every parameter tensor (a view, typically).

        ``fn`` must map the batch part of each parameter to ``batch_shape`` and keep the rest;
        :meth:`expand` and batch indexing (e.g. the first row) are written with it.
        """
        new = self._get_checked_instance(type(self), _instance)
        for name in self._param_names:
            setattr(new, name, fn(getattr(self, name)))
        self._copy_extra_state(new)
        Distribution.__init__(new, batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def batch_row(self, index: int) -> DiscreteDistribution:
        """The distribution of element ``index`` of the leading batch dim (parameter views).

        Shape:
            ``batch_shape[1:]``.

        Example:
            >>> import torch, latentgrad as lg
            >>> q = lg.Categorical(logits=torch.zeros(4, 2, 3))
            >>> q.batch_row(0).batch_shape
            torch.Size([2])
        """
        if not self.batch_shape:
            raise ValueError(f"{type(self).__name__} has no batch dim to index")
        if not self._param_names:
            raise TypeError(f"{type(self).__name__} declares no _param_names to index")
        return self._map_params(lambda p: p[index], self.batch_shape[1:])

    def _copy_extra_state(self, new: DiscreteDistribution) -> None:
        """Copy non-tensor settings (e.g. ``k``) to an expanded instance."""

    def _copy_settings(self, new: DiscreteDistribution) -> None:
        """Copy every instance attribute except the parameters (and what ``new`` already has)."""
        for key, value in self.__dict__.items():
            if key not in self._param_names and key not in new.__dict__:
                setattr(new, key, value)

    def to_event(self, reinterpreted_batch_ndims: int = 1) -> Independent:
        """Treat the last ``reinterpreted_batch_ndims`` batch dims as independent units of one value.

        A VAE with ``N`` categorical latents of ``K`` classes each has logits ``(B, N, K)``; its
        loss is one number per example, so the latent is ``Categorical(logits).to_event(1)``
        with batch shape ``(B,)`` and event shape ``(N, K)``.
        """
        return Independent(self, reinterpreted_batch_ndims)

    # -- noise ----------------------------------------------------------------------------------

    @property
    def noise_event_shape(self) -> torch.Size:
        """Shape of the noise per batch element (the event shape unless a family says otherwise)."""
        return self.event_shape

    def sample_noise(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """Draw the noise that :meth:`from_noise` turns into samples.

        Shape:
            ``sample_shape + batch_shape + noise_event_shape``.
        """
        raise TypeError(f"{type(self).__name__} does not provide sample_noise")

    def from_noise(self, noise: Tensor) -> Tensor:
        """The sample determined by ``noise``; any leading dims of ``noise`` broadcast.

        Shape:
            ``noise``: ``(*, ) + batch_shape + noise_event_shape`` (the batch part may be
            broadcastable), returns ``(*, ) + batch_shape + event_shape``.
        """
        raise TypeError(f"{type(self).__name__} does not provide from_noise")

    def sample_with_noise(
        self, sample_shape: torch.Size | tuple[int, ...] = ()
    ) -> tuple[Tensor, Tensor]:
        """A sample and the noise that produced it: ``(from_noise(noise), noise)``."""
        noise = self.sample_noise(sample_shape)
        return self.from_noise(noise), noise

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> Tensor:
        with torch.no_grad():
            return self.from_noise(self.sample_noise(torch.Size(sample_shape)))

    def relaxed_from_noise(self, noise: Tensor, tau: float) -> Tensor:
        """A continuous relaxation of :meth:`from_noise` at temperature ``tau`` (reparameterized)."""
        raise TypeError(f"{type(self).__name__} has no continuous relaxation")

    def rsample_relaxed(
        self, tau: float, sample_shape: torch.Size | tuple[int, ...] = ()
    ) -> Tensor:
        """A relaxed (Gumbel-Softmax / Concrete) sample, differentiable in the parameters."""
        return self.relaxed_from_noise(self.sample_noise(sample_shape), tau)

    # -- support --------------------------------------------------------------------------------

    def support_probs(self) -> tuple[Tensor, Tensor]:
        """The values with nonzero probability and their probabilities.

        Dense families return their whole support; sparse ones (sparsemax) only the values whose
        probability is nonzero in some batch element, padded with zero-probability values so that
        every batch element has the same count ``S``.

        Returns:
            ``(values, probs)`` with shapes ``(S,) + batch_shape + event_shape`` and
            ``(S,) + batch_shape``; ``probs`` is differentiable and sums to 1 over ``S``.
        """
        values = self.enumerate_support(expand=True)
        with own_samples():  # the family's own support: in it by construction
            return values, self.log_prob(values).exp()

    def support_size(self) -> int:
        """Number of values :meth:`support_probs` returns (without building them)."""
        raise TypeError(f"{type(self).__name__} does not report its support size")

    def can_enumerate_support(self) -> bool:
        """Whether this instance's support can be listed: ``has_enumerate_support`` and
        ``support_size() <= max_support_size``."""
        return self.has_enumerate_support and self.support_size() <= self.max_support_size

    def local_variants(self, z: Tensor) -> LocalVariants:
        """The sample ``z`` with one unit changed at a time (see :class:`LocalVariants`)."""
        raise TypeError(f"{type(self).__name__} has no independent units to marginalize locally")

    @property
    def unit_shape(self) -> torch.Size:
        """Shape of the grid of independent units within one event (``()`` for a single unit)."""
        raise TypeError(f"{type(self).__name__} has no independent units")

    def mode(self) -> Tensor:  # type: ignore[override]
        """The most likely value (ties broken towards the lowest index)."""
        raise TypeError(f"{type(self).__name__} does not provide mode()")

    # -- helpers for subclasses -----------------------------------------------------------------

    def _sample_batch_shape(self, z: Tensor) -> torch.Size:
        """``sample_shape + batch_shape`` of a value ``z``, checking its event shape."""
        n_event = len(self.event_shape)
        if z.dim() < n_event or z.shape[z.dim() - n_event :] != self.event_shape:
            raise ValueError(
                f"value must end with the event shape {tuple(self.event_shape)}, "
                f"got shape {tuple(z.shape)}"
            )
        return z.shape[: z.dim() - n_event]


class Independent(torch.distributions.Independent):
    """Reinterpret batch dims of a latentgrad family as independent units of one event.

    Keeps every estimator hook of the base family: noise, relaxations and
    :meth:`local_variants` work unit by unit; :meth:`support_probs` enumerates the product of the
    units' supports (only sensible when it is small).

    Args:
        base_distribution: a :class:`DiscreteDistribution`.
        reinterpreted_batch_ndims: how many trailing batch dims become event dims.

    Example:
        >>> import torch, latentgrad as lg
        >>> q = lg.Categorical(logits=torch.zeros(8, 20, 10)).to_event(1)
        >>> q.batch_shape, q.event_shape
        (torch.Size([8]), torch.Size([20, 10]))
    """

    base_dist: Any
    _max_product_support: ClassVar[int] = 2**20

    # -- capabilities: those of the base family ------------------------------------------------

    @property
    def has_noise(self) -> bool:
        return bool(self.base_dist.has_noise)

    @property
    def has_relaxation(self) -> bool:
        return bool(self.base_dist.has_relaxation)

    @property
    def has_local_variants(self) -> bool:
        return bool(self.base_dist.has_local_variants)

    @property
    def has_trace(self) -> bool:
        return bool(self.base_dist.has_trace)

    @property
    def has_conditional_noise(self) -> bool:
        """Always ``False``: RELAX's critic sees the noise of one structure, and the units of an
        :class:`Independent` are several structures (use the family itself)."""
        return False

    @property
    def has_mean_field(self) -> bool:
        return bool(self.base_dist.has_mean_field)

    @property
    def has_logits(self) -> bool:
        return bool(self.base_dist.has_logits)

    @property
    def has_enumerate_support(self) -> bool:  # type: ignore[override]
        return bool(self.base_dist.has_enumerate_support)

    @property
    def max_support_size(self) -> int:
        """The largest product of the units' supports that :meth:`support_probs` builds."""
        return self._max_product_support

    def can_enumerate_support(self) -> bool:
        """Whether the base family enumerates its support and the product is small enough."""
        return bool(self.base_dist.can_enumerate_support()) and (
            self.support_size() <= self._max_product_support
        )

    def __init__(
        self,
        base_distribution: DiscreteDistribution | Independent,
        reinterpreted_batch_ndims: int,
        validate_args: bool | None = None,
    ) -> None:
        if not isinstance(base_distribution, (DiscreteDistribution, Independent)):
            raise TypeError(
                "base_distribution must be a latentgrad distribution, got "
                f"{type(base_distribution).__name__}"
            )
        if isinstance(reinterpreted_batch_ndims, bool) or not isinstance(
            reinterpreted_batch_ndims, int
        ):
            raise TypeError("reinterpreted_batch_ndims must be an int")
        if not 0 <= reinterpreted_batch_ndims <= len(base_distribution.batch_shape):
            raise ValueError(
                f"reinterpreted_batch_ndims must be in [0, {len(base_distribution.batch_shape)}], "
                f"got {reinterpreted_batch_ndims}"
            )
        super().__init__(base_distribution, reinterpreted_batch_ndims, validate_args)

    def to_event(self, reinterpreted_batch_ndims: int = 1) -> Independent:
        return Independent(self, reinterpreted_batch_ndims)

    def expand(self, batch_shape: Any, _instance: Any = None) -> Independent:
        """The same units with the batch broadcast to ``batch_shape`` (a view of the parameters).

        Example:
            >>> import torch, latentgrad as lg
            >>> q = lg.Categorical(logits=torch.zeros(1, 3, 4)).to_event(1)
            >>> q.expand((5,)).batch_shape, q.expand((5,)).event_shape
            (torch.Size([5]), torch.Size([3, 4]))
        """
        base = self.base_dist
        units = base.batch_shape[len(base.batch_shape) - self._n :]
        expanded = base.expand(torch.Size(batch_shape) + units)
        new = Independent.__new__(type(self)) if _instance is None else _instance
        Independent.__init__(new, expanded, self._n, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def batch_row(self, index: int) -> Independent:
        """The distribution of element ``index`` of the leading batch dim, reinterpreted the
        same way (see :meth:`DiscreteDistribution.batch_row`)."""
        if not self.batch_shape:
            raise ValueError("Independent has no batch dim to index")
        return Independent(self.base_dist.batch_row(index), self._n)

    @property
    def _n(self) -> int:
        return self.reinterpreted_batch_ndims

    @property
    def noise_event_shape(self) -> torch.Size:
        base = self.base_dist
        return base.batch_shape[len(base.batch_shape) - self._n :] + base.noise_event_shape

    def sample_noise(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        return self.base_dist.sample_noise(sample_shape)

    def from_noise(self, noise: Tensor) -> Tensor:
        return self.base_dist.from_noise(noise)

    def sample_with_noise(
        self, sample_shape: torch.Size | tuple[int, ...] = ()
    ) -> tuple[Tensor, Tensor]:
        return self.base_dist.sample_with_noise(sample_shape)

    def relaxed_from_noise(self, noise: Tensor, tau: float) -> Tensor:
        return self.base_dist.relaxed_from_noise(noise, tau)

    def rsample_relaxed(
        self, tau: float, sample_shape: torch.Size | tuple[int, ...] = ()
    ) -> Tensor:
        return self.base_dist.rsample_relaxed(tau, sample_shape)

    @property
    def mean(self) -> Tensor:
        return self.base_dist.mean

    def mode(self) -> Tensor:  # type: ignore[override]
        return self.base_dist.mode()

    def with_logits(self, logits: Tensor) -> Independent:
        """The base family at other ``logits`` (same shape), reinterpreted the same way."""
        return Independent(self.base_dist.with_logits(logits), self._n)

    # Structured families (execution traces): scores of independent units add up.

    def _traced_base(self, hook: str) -> Any:
        """The base family, which must declare ``has_trace`` to provide ``hook``."""
        if not self.has_trace:
            raise TypeError(
                f"{type(self.base_dist).__name__} does not provide {hook} (has_trace is False)"
            )
        return self.base_dist

    def _sum_units(self, x: Tensor) -> Tensor:
        return x.sum(tuple(range(-self._n, 0))) if self._n else x

    # torch's Independent sums by reshaping to (..., -1), which fails on empty batches.

    def log_prob(self, value: Tensor) -> Tensor:
        return self._sum_units(self.base_dist.log_prob(value))

    def entropy(self) -> Tensor:
        return self._sum_units(self.base_dist.entropy())

    def sample_with_trace(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Any:
        return self._traced_base("sample_with_trace").sample_with_trace(sample_shape)

    def trace_log_prob(self, trace: Any) -> Tensor:
        return self._sum_units(self._traced_base("trace_log_prob").trace_log_prob(trace))

    def noise_log_prob(self, noise: Tensor) -> Tensor:
        return self._sum_units(self._traced_base("noise_log_prob").noise_log_prob(noise))

    @property
    def logits(self) -> Tensor:
        return self.base_dist.logits

    @property
    def probs(self) -> Tensor:
        return self.base_dist.probs

    def support_size(self) -> int:
        units = math.prod(self.base_dist.batch_shape[len(self.base_dist.batch_shape) - self._n :])
        return self.base_dist.support_size() ** units

    def enumerate_support(self, expand: bool = True) -> Tensor:
        values, _ = self._product_support()
        if not expand:
            raise ValueError("Independent.enumerate_support needs expand=True")
        return values

    def support_probs(self) -> tuple[Tensor, Tensor]:
        return self._product_support()

    def _product_support(self) -> tuple[Tensor, Tensor]:
        """Cartesian product of the units' supports, values and probabilities."""
        base = self.base_dist
        n_unit_dims = self._n
        unit_shape = base.batch_shape[len(base.batch_shape) - n_unit_dims :]
        batch_shape = self.batch_shape
        values, probs = base.support_probs()  # (C,) + batch + units + base_event, (C,) + ...
        num_values = values.shape[0]
        units = math.prod(unit_shape)
        total = num_values**units
        if total > self._max_product_support:
            raise ValueError(
                f"the support has {num_values}^{units} = {total} values, too many to enumerate"
            )
        base_event = base.event_shape
        # Units first: (C, units, *batch, *event) and (C, units, *batch).
        v = values.reshape((num_values, *batch_shape, units, *base_event)).movedim(
            1 + len(batch_shape), 1
        )
        p = probs.reshape((num_values, *batch_shape, units)).movedim(-1, 1)
        # Index of each unit's value in every joint configuration, shape (total, units).
        grids = torch.meshgrid(
            *[torch.arange(num_values, device=values.device)] * units, indexing="ij"
        )
        combo = torch.stack([g.reshape(-1) for g in grids], dim=-1)
        unit_index = torch.arange(units, device=values.device)
        joint_values = v[combo, unit_index].movedim(1, 1 + len(batch_shape))
        joint_values = joint_values.reshape((total, *batch_shape, *unit_shape, *base_event))
        joint_probs = p[combo, unit_index].prod(1)
        return joint_values, joint_probs

    @property
    def unit_shape(self) -> torch.Size:
        base = self.base_dist
        return base.batch_shape[len(base.batch_shape) - self._n :] + base.unit_shape

    def local_variants(self, z: Tensor) -> LocalVariants:
        """Variants changing one unit of one reinterpreted batch position at a time."""
        base = self.base_dist
        n = self._n
        inner = base.local_variants(z)  # every position's unit changed at once
        n_base_event = len(base.event_shape)
        sample_batch = z.shape[: z.dim() - n_base_event - n]
        pos_shape = z.shape[len(sample_batch) : z.dim() - n_base_event]
        positions = math.prod(pos_shape)
        v_base = inner.values.shape[0]
        flat_event = (positions, *base.event_shape)
        zf = z.reshape((*sample_batch, *flat_event))
        vf = inner.values.reshape((v_base, *sample_batch, *flat_event))
        # out[p, v] = z with position p taken from variant v.
        eye = torch.eye(positions, dtype=torch.bool, device=z.device)
        eye = eye.reshape((positions, 1) + (1,) * len(sample_batch) + (positions,))
        eye = eye.reshape(eye.shape + (1,) * n_base_event)
        values = torch.where(eye, vf.unsqueeze(0), zf)
        values = values.reshape((positions * v_base, *z.shape))
        pf = inner.probs.reshape((v_base, *sample_batch, positions))
        probs = pf.movedim(-1, 0).reshape((positions * v_base, *sample_batch))
        base_probs = inner.base_probs.reshape((*sample_batch, positions)).sum(-1)
        return LocalVariants(values, probs, base_probs)
