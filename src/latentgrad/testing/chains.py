"""Small stochastic networks with exact gradients by enumeration, to test chain estimators.

A :class:`ChainProblem` is a chain of discrete layers ``z_1 -> z_2 -> ... -> z_L``: the first
layer has fixed logits, each later layer's logits are an affine function ``W vec(z_l) + b`` of
the layer below, and a loss ``f(z_1, ..., z_L; t)`` couples the layers (so the upper layers'
estimates matter to the lower ones') and has a parameter ``t`` of its own. Every parameter
lives in one flat vector (:attr:`ChainProblem.param`), so
:func:`~latentgrad.testing.replicated_gradients` can replicate it and
:meth:`ChainProblem.exact_gradient` gives the gradient of ``E[f]`` it must match on average.

:func:`chain_problems` lists the problems the suite uses. On one layer,
:func:`single_layer_gradients` tests an estimator on any family example with
:func:`quadratic_loss`, its parameter ``t`` packed after the logits
(:func:`unpack_logits_and_t`).

Example:
    >>> import torch, latentgrad as lg
    >>> from latentgrad.testing import assert_unbiased, chain_problems, replicated_gradients
    >>> (sbn,) = chain_problems(names=["sbn"])
    >>> sbn.layer_shapes, sbn.param.shape
    (((3,), (3,)), torch.Size([16]))
    >>> def surrogate(rep):
    ...     p = sbn.split(rep)
    ...     return lg.LocalReparam().chain(sbn.first(p), sbn.conditionals(p), sbn.loss_fn(p))
    >>> _ = torch.manual_seed(0)
    >>> grads = replicated_gradients(lambda rep: surrogate(rep).surrogate, sbn.param, 2000)
    >>> assert_unbiased(grads, sbn.exact_gradient()).passed
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution

from latentgrad.distributions import Bernoulli, Categorical
from latentgrad.estimators import Estimate, LossFn
from latentgrad.estimators.chain import ChainLossFn, Conditional
from latentgrad.testing.exact import exact_gradient, replicated_gradients
from latentgrad.testing.examples import FamilyExample

F64 = torch.float64

ChainLoss = Callable[[Sequence[Tensor], Tensor], Tensor]
"""``f(zs, t)``: the layers' values ``zs`` (any common leading dims) and the parameter ``t``
(broadcast against them) to the loss per configuration."""


def quadratic_loss(event_ndim: int, numel: int) -> Callable[[Tensor, Tensor], Tensor]:
    """A one-layer loss that couples the units (so local changes interact), with a parameter.

    ``f(z, t) = (<vec z, c> - t)^2 + t <vec z, d> + 3`` with ``c = linspace(-1, 2)`` and
    ``d = linspace(0.5, -0.5)`` of length ``numel``, in float64.

    Args:
        event_ndim: the number of event dims of ``z`` (flattened together into ``vec z``).
        numel: the number of elements of one event.

    Returns:
        ``loss(z, t)``, of shape ``z``'s leading dims broadcast with ``t``'s.

    Example:
        >>> import torch
        >>> loss = quadratic_loss(1, 3)
        >>> loss(torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64), torch.tensor(0.5))
        tensor(3.2500, dtype=torch.float64)
    """
    c = torch.linspace(-1.0, 2.0, numel, dtype=F64)
    d = torch.linspace(0.5, -0.5, numel, dtype=F64)

    def loss(z: Tensor, t: Tensor) -> Tensor:
        flat = z.flatten(start_dim=z.dim() - event_ndim) if event_ndim > 1 else z
        return ((flat * c).sum(-1) - t) ** 2 + t * (flat * d).sum(-1) + 3.0

    return loss


def unpack_logits_and_t(rep: Tensor, shape: torch.Size) -> tuple[Tensor, Tensor]:
    """Split flat vectors ``(logits..., t)`` into logits of ``shape`` and the loss's ``t``.

    The inverse of ``torch.cat([logits.flatten(), t.reshape(1)])``, with any leading
    (replicate) dims of ``rep`` kept.

    Args:
        rep: packed parameters.
        shape: the logits' shape.

    Returns:
        ``(logits, t)``.

    Shape:
        ``rep``: ``(*R, shape.numel() + 1)``; ``logits``: ``(*R, *shape)``; ``t``: ``R``.

    Example:
        >>> import torch
        >>> logits, t = unpack_logits_and_t(torch.arange(7.0).expand(2, 7), torch.Size([2, 3]))
        >>> logits.shape, t
        (torch.Size([2, 2, 3]), tensor([6., 6.]))
    """
    n = shape.numel()
    return rep[..., :n].reshape((*rep.shape[:-1], *shape)), rep[..., n]


def single_layer_gradients(
    example: FamilyExample,
    estimator: Callable[[Distribution, LossFn], Estimate],
    num_replicates: int,
    t: float = 0.7,
) -> tuple[Tensor, Tensor]:
    """Replicated estimates and the exact gradient of ``E[quadratic_loss(z, t)]`` on one layer.

    The gradient is w.r.t. the example's parameters and ``t``, packed as
    ``(logits.flatten(), t)`` (see :func:`unpack_logits_and_t`); the loss is
    :func:`quadratic_loss` for the example's event shape.

    Args:
        example: the family and its (batched) parameters.
        estimator: ``estimator(dist, loss_fn) -> Estimate``.
        num_replicates: the number ``R`` of independent estimates.
        t: the loss's parameter.

    Returns:
        ``(grads, exact)`` of shapes ``(R, P)`` and ``(P,)``, ``P = params.numel() + 1``.

    Example:
        >>> import torch, latentgrad as lg
        >>> from latentgrad.testing.examples import family_examples
        >>> (bernoulli,) = family_examples(names=["bernoulli"])
        >>> grads, exact = single_layer_gradients(bernoulli, lg.Marginalize(), 3)
        >>> torch.allclose(grads, exact.expand_as(grads))
        True
    """
    make, logits = example.make, example.params
    q = example.dist()
    batch_dims = len(q.batch_shape)
    loss = quadratic_loss(len(q.event_shape), q.event_shape.numel())
    t_tensor = torch.tensor(t, dtype=F64)
    phi = logits.clone().requires_grad_(True)
    theta = t_tensor.clone().requires_grad_(True)
    expected = exact_gradient(lambda: make(phi), lambda z: loss(z, theta), [phi, theta])
    expected_flat = torch.cat([expected[0].flatten(), expected[1].reshape(1)])

    def surrogate(rep: Tensor) -> Tensor:
        rep_logits, rep_t = unpack_logits_and_t(rep, logits.shape)
        out = estimator(make(rep_logits), lambda z: loss(z, rep_t.reshape(-1, *[1] * batch_dims)))
        return out.surrogate.reshape(rep.shape[0], -1).sum(1)

    param = torch.cat([logits.flatten(), t_tensor.reshape(1)])
    return replicated_gradients(surrogate, param, num_replicates), expected_flat


@dataclass(frozen=True)
class ChainParams:
    """The parameters of a :class:`ChainProblem` split from a (replicated) flat vector.

    Attributes:
        first: the first layer's logits, shape ``(*R, *layer_shapes[0])``.
        weights: ``(W, b)`` of each conditional ``l -> l + 1``: ``W`` of shape
            ``(*R, n_{l+1}, n_l)`` and ``b`` of shape ``(*R, n_{l+1})``, with ``n_l`` the
            number of logits of layer ``l``.
        t: the loss's parameter, shape ``R``.
    """

    first: Tensor
    weights: tuple[tuple[Tensor, Tensor], ...]
    t: Tensor


@dataclass(frozen=True)
class ChainProblem:
    """A chain of Bernoulli or categorical layers with affine conditionals and a coupling loss.

    The flat parameter vector packs, in this order, the first layer's logits, then ``W`` (row
    major) and ``b`` of each conditional, then the loss's ``t``.

    Attributes:
        name: identifier (a pytest id), e.g. ``"sbn"``.
        family: every layer's family: ``"bernoulli"`` (layer shape ``(D,)``: ``D`` bits) or
            ``"categorical"`` (layer shape ``(U, K)``: ``U`` one-hot units of ``K`` classes,
            ``Categorical(...).to_event(1)``).
        layer_shapes: the event shape of each layer, first layer first.
        loss: ``f(zs, t)``, see :data:`ChainLoss`.
        param: the parameter vector the tests use, float64.

    Raises:
        ValueError: ``param`` is not a vector of the size the layer shapes need.
    """

    name: str
    family: Literal["bernoulli", "categorical"]
    layer_shapes: tuple[tuple[int, ...], ...]
    loss: ChainLoss
    param: Tensor

    def __post_init__(self) -> None:
        if self.param.shape != (self.num_params,):
            raise ValueError(
                f"param of chain problem {self.name!r} must have shape ({self.num_params},), "
                f"got {tuple(self.param.shape)}"
            )

    @property
    def units(self) -> tuple[int, ...]:
        """The number of units of each layer (bits, or categorical units)."""
        return tuple(shape[0] for shape in self.layer_shapes)

    @property
    def num_variants(self) -> tuple[int, ...]:
        """The local variants of each layer's sample: one per bit, ``K - 1`` per categorical
        unit."""
        if self.family == "bernoulli":
            return self.units
        return tuple(u * (k - 1) for u, k in self.layer_shapes)

    @property
    def first_size(self) -> int:
        """The number of first-layer logits (they come first in :attr:`param`)."""
        return math.prod(self.layer_shapes[0])

    @property
    def num_params(self) -> int:
        """The size of the flat parameter vector."""
        return sum(self._sizes())

    def _sizes(self) -> list[int]:
        sizes = [self.first_size]
        logits = [math.prod(shape) for shape in self.layer_shapes]
        for below, above in pairwise(logits):
            sizes += [above * below, above]
        return [*sizes, 1]

    def split(self, param: Tensor) -> ChainParams:
        """The per-layer parameters of flat vectors ``param`` of shape ``(*R, num_params)``
        (views, leading dims kept)."""
        lead = param.shape[:-1]
        first, *rest, t = param.split(self._sizes(), -1)
        logits = [math.prod(shape) for shape in self.layer_shapes]
        weights = tuple(
            (w.reshape((*lead, above, below)), b)
            for w, b, (below, above) in zip(rest[::2], rest[1::2], pairwise(logits), strict=True)
        )
        return ChainParams(first.reshape((*lead, *self.layer_shapes[0])), weights, t.squeeze(-1))

    def layer(self, logits: Tensor) -> Distribution:
        """The distribution of one layer with these logits."""
        if self.family == "bernoulli":
            return Bernoulli(logits=logits)
        return Categorical(logits=logits).to_event(1)

    def first(self, params: ChainParams) -> Distribution:
        """The first layer's distribution ``q(z_1)``."""
        return self.layer(params.first)

    def conditionals(self, params: ChainParams) -> list[Conditional]:
        """``z_l -> q(z_{l+1} | z_l)`` for each layer above the first."""
        return [
            self._conditional(w, b, shape)
            for (w, b), shape in zip(params.weights, self.layer_shapes[1:], strict=True)
        ]

    def _conditional(self, w: Tensor, b: Tensor, shape: tuple[int, ...]) -> Conditional:
        return lambda z: self.layer(self._logits(w, b, z, shape))

    def loss_fn(self, params: ChainParams) -> ChainLossFn:
        """The loss as a chain estimator takes it: ``zs -> f(zs, t)``."""
        return lambda zs: self.loss(zs, params.t)

    def exact_gradient(self, param: Tensor | None = None) -> Tensor:
        """The gradient of ``E[f]`` w.r.t. the flat ``param`` (default :attr:`param`), summed over
        every configuration of the layers.

        The layers' log-probabilities are written out here (not taken from the families), so
        the oracle does not share code with what it tests.
        """
        p = (self.param if param is None else param).clone().requires_grad_(True)
        params = self.split(p)
        zs = _product([self._support(shape) for shape in self.layer_shapes])
        log_joint = self._log_prob(zs[0], params.first)
        layers = zip(pairwise(zs), params.weights, self.layer_shapes[1:], strict=True)
        for (z_below, z), (w, b), shape in layers:
            log_joint = log_joint + self._log_prob(z, self._logits(w, b, z_below, shape))
        (grad,) = torch.autograd.grad((log_joint.exp() * self.loss(zs, params.t)).sum(), p)
        return grad

    def _logits(self, w: Tensor, b: Tensor, z: Tensor, shape: tuple[int, ...]) -> Tensor:
        """``W vec(z) + b`` in the layer above's ``shape``, ``W``'s leading dims broadcast with
        ``z``'s."""
        if self.family == "bernoulli":
            return (w @ z.unsqueeze(-1)).squeeze(-1) + b
        return (w @ z.flatten(-2).unsqueeze(-1)).squeeze(-1).add(b).unflatten(-1, shape)

    def _support(self, shape: tuple[int, ...]) -> Tensor:
        if self.family == "bernoulli":
            return _bits(shape[0])
        return _one_hot_units(*shape)

    def _log_prob(self, z: Tensor, logits: Tensor) -> Tensor:
        if self.family == "bernoulli":
            return (z * F.logsigmoid(logits) + (1 - z) * F.logsigmoid(-logits)).sum(-1)
        return (z * torch.log_softmax(logits, -1)).sum((-1, -2))


def _bits(n: int) -> Tensor:
    """Every vector of ``n`` bits, ``(2**n, n)``."""
    codes = torch.arange(2**n).unsqueeze(-1)
    return ((codes >> torch.arange(n)) & 1).to(F64)


def _one_hot_units(units: int, classes: int) -> Tensor:
    """Every value of ``units`` one-hot units of ``classes`` classes,
    ``(classes**units, units, classes)``."""
    codes = torch.arange(classes**units).unsqueeze(-1)
    index = (codes // classes ** torch.arange(units)) % classes
    return F.one_hot(index, classes).to(F64)


def _product(supports: list[Tensor]) -> list[Tensor]:
    """Every joint configuration of the layers: ``zs[l]`` of shape ``(prod n_l,) + E_l``."""
    grids = torch.meshgrid(*[torch.arange(s.shape[0]) for s in supports], indexing="ij")
    return [s[g.reshape(-1)] for s, g in zip(supports, grids, strict=True)]


def _two_layer_loss(a1: Tensor, a2: Tensor, m: Tensor) -> ChainLoss:
    """``(<z1, a1> + <z2, a2> + z1' M z2 - t)^2 + t sum(z2)``."""

    def loss(zs: Sequence[Tensor], t: Tensor) -> Tensor:
        z1, z2 = zs
        inter = (z1.unsqueeze(-1) * m * z2.unsqueeze(-2)).sum((-1, -2))
        return ((z1 * a1).sum(-1) + (z2 * a2).sum(-1) + inter - t) ** 2 + t * z2.sum(-1)

    return loss


def _three_layer_loss(c: tuple[Tensor, Tensor, Tensor], m12: Tensor, m23: Tensor) -> ChainLoss:
    """``(sum_l <z_l, c_l> + z1' M12 z2 + z2' M23 z3 - t)^2 + t sum(z3) - sum(z1) z3[0]``."""

    def loss(zs: Sequence[Tensor], t: Tensor) -> Tensor:
        z1, z2, z3 = zs
        inter = (z1.unsqueeze(-1) * m12 * z2.unsqueeze(-2)).sum((-1, -2))
        inter = inter + (z2.unsqueeze(-1) * m23 * z3.unsqueeze(-2)).sum((-1, -2))
        linear = (z1 * c[0]).sum(-1) + (z2 * c[1]).sum(-1) + (z3 * c[2]).sum(-1)
        return (linear + inter - t) ** 2 + t * z3.sum(-1) - z1.sum(-1) * z3[..., 0]

    return loss


def _categorical_loss(g1: Tensor, g2: Tensor) -> ChainLoss:
    """``(a + c + same - t)^2 + t z2[0, 0] + a c`` with ``a = <z1, G1>``, ``c = <z2, G2>`` and
    ``same`` the number of units that agree with the layer below."""

    def loss(zs: Sequence[Tensor], t: Tensor) -> Tensor:
        z1, z2 = zs
        a = (z1 * g1).sum((-1, -2))
        c = (z2 * g2).sum((-1, -2))
        same = (z1 * z2).sum((-1, -2))
        return (a + c + same - t) ** 2 + t * z2[..., 0, 0] + a * c

    return loss


def _f64(values: object) -> Tensor:
    return torch.tensor(values, dtype=F64)


def _sbn() -> ChainProblem:
    return ChainProblem(
        "sbn",
        "bernoulli",
        ((3,), (3,)),
        _two_layer_loss(
            _f64([0.5, -1.0, 1.5]),
            _f64([1.0, 0.5, -2.0]),
            _f64([[0.5, -1.0, 0.0], [1.0, 0.0, 2.0], [-0.5, 0.5, 1.0]]),
        ),
        _f64(
            [
                *(0.4, -0.8, 1.1),  # phi1
                *(1.0, -2.0, 0.5, 0.3, 0.7, -1.2, -0.6, 1.5, 0.9),  # W
                *(0.2, -0.4, 0.1),  # b
                0.6,  # t
            ]
        ),
    )


def _sbn_narrow() -> ChainProblem:
    return ChainProblem(
        "sbn-3-2",
        "bernoulli",
        ((3,), (2,)),
        _two_layer_loss(
            _f64([0.5, -1.0, 1.5]),
            _f64([1.0, -2.0]),
            _f64([[0.5, -1.0], [1.0, 2.0], [-0.5, 1.0]]),
        ),
        _f64(
            [
                *(0.4, -0.8, 1.1),  # phi1
                *(1.0, -2.0, 0.5, 0.3, 0.7, -1.2),  # W
                *(0.2, -0.4),  # b
                0.6,  # t
            ]
        ),
    )


def _three_bernoulli() -> ChainProblem:
    return ChainProblem(
        "three-bernoulli",
        "bernoulli",
        ((2,), (3,), (2,)),
        _three_layer_loss(
            (_f64([1.0, -0.5]), _f64([0.5, 1.5, -1.0]), _f64([-1.0, 2.0])),
            _f64([[1.0, -0.5, 0.0], [0.5, 1.0, -1.0]]),
            _f64([[0.5, -1.0], [1.0, 0.5], [-0.5, 1.5]]),
        ),
        _f64(
            [
                *(0.3, -0.6),  # phi1
                *(1.0, -1.5, 0.5, 0.8, -0.7, 1.2, 0.2, -0.3, 0.4),  # W2, b2
                *(1.1, -0.9, 0.6, 0.4, -1.3, 0.7, -0.2, 0.5),  # W3, b3
                0.9,  # t
            ]
        ),
    )


def _two_categorical() -> ChainProblem:
    w = _f64(
        [
            [-3.5, -0.6, -1.6, 1.5, -1.3, -1.9],
            [-0.9, -1.3, -1.9, 2.3, 0.5, 3.0],
            [1.7, -1.8, 0.1, 0.5, 0.2, -0.9],
            [-1.9, -1.1, -1.9, -1.7, 1.7, 1.4],
            [1.2, 0.3, 0.2, -0.1, -0.5, 0.4],
            [-2.0, 0.4, 0.0, -0.3, -2.5, 1.4],
        ]
    )
    return ChainProblem(
        "two-categorical",
        "categorical",
        ((2, 3), (2, 3)),
        _categorical_loss(
            _f64([[1.0, -0.5, 0.0], [0.5, 1.5, -1.0]]), _f64([[-1.0, 2.0, 0.5], [0.0, -0.5, 1.0]])
        ),
        torch.cat(
            [
                _f64([0.4, -0.8, 0.2, 1.0, -0.3, 0.0]),  # logits of layer 1
                w.flatten(),
                _f64([0.2, -0.4, 0.1, 0.3, 0.0, -0.5]),  # b
                _f64([0.6]),  # t
            ]
        ),
    )


_CHAIN_PROBLEMS: dict[str, Callable[[], ChainProblem]] = {
    "sbn": _sbn,
    "sbn-3-2": _sbn_narrow,
    "three-bernoulli": _three_bernoulli,
    "two-categorical": _two_categorical,
}


def chain_problems(names: Sequence[str] | None = None) -> list[ChainProblem]:
    """The chain problems of the suite (fresh tensors on each call), or those named.

    * ``sbn``: a two-layer sigmoid belief net, 3 bits and 3 bits (``2^6`` configurations);
    * ``sbn-3-2``: the same with 3 bits and 2 bits;
    * ``three-bernoulli``: three Bernoulli layers of 2, 3 and 2 bits, the loss coupling
      neighbouring layers and the first with the last;
    * ``two-categorical``: two layers of 2 categorical units of 3 classes each.

    Args:
        names: the problems to return, in this order (``ValueError`` for an unknown name).
    """
    chosen = list(_CHAIN_PROBLEMS) if names is None else list(names)
    unknown = [n for n in chosen if n not in _CHAIN_PROBLEMS]
    if unknown:
        raise ValueError(
            f"unknown chain problem(s) {unknown}; the problems are {list(_CHAIN_PROBLEMS)}"
        )
    return [_CHAIN_PROBLEMS[n]() for n in chosen]
