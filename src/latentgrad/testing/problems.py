"""Small estimation problems with exact gradients, and the harness that tests estimators on them.

A :class:`GradientProblem` is a latent family with fixed scores ``phi`` and a loss with its own
parameters ``theta``. :func:`replicated_and_exact` draws thousands of independent gradient
estimates w.r.t. ``(phi, theta)`` in a few batched backward passes and computes the exact
gradient by enumeration, ready for :func:`~latentgrad.testing.assert_unbiased`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution

from latentgrad.distributions import Bernoulli, Categorical
from latentgrad.estimators import Estimate, LossFn
from latentgrad.testing.exact import exact_gradient, replicated_gradients


@dataclass
class GradientProblem:
    """A distribution and a loss built from (replicated) copies of their parameters.

    Attributes:
        name: short identifier (used as a pytest id).
        logits: the distribution's parameters ``phi``.
        theta: the loss's parameters.
        make_dist: ``logits`` with any leading replicate dims -> distribution.
        make_loss: ``theta`` with a leading replicate dim of size ``R`` (or none) -> ``loss_fn``,
            which must broadcast ``theta``'s replicate dim against the samples' replicate dim.
        context: optional per-example features passed to estimators (input-dependent
            baselines), shape ``logits``' batch shape + ``(F,)``.
    """

    name: str
    logits: Tensor
    theta: Tensor
    make_dist: Callable[[Tensor], Distribution]
    make_loss: Callable[[Tensor], LossFn]
    context: Tensor | None = None


EstimatorLike = Callable[..., Estimate]


def exact_problem_gradient(problem: GradientProblem) -> Tensor:
    """The exact gradient of ``sum E_q[loss]`` w.r.t. ``(phi, theta)``, flattened and packed."""
    logits = problem.logits.clone().requires_grad_(True)
    theta = problem.theta.clone().requires_grad_(True)
    grads = exact_gradient(
        lambda: problem.make_dist(logits), problem.make_loss(theta), [logits, theta]
    )
    return torch.cat([g.flatten() for g in grads])


def run_replicated(problem: GradientProblem, estimator: EstimatorLike, packed: Tensor) -> Estimate:
    """Call ``estimator`` on replicated parameters ``packed`` of shape ``(R, |phi| + |theta|)``."""
    r = packed.shape[0]
    n_logits = problem.logits.numel()
    logits = packed[:, :n_logits].reshape(r, *problem.logits.shape)
    theta = packed[:, n_logits:].reshape(r, *problem.theta.shape)
    kwargs = {}
    if problem.context is not None:
        kwargs["context"] = problem.context.expand((r, *problem.context.shape))
    return estimator(problem.make_dist(logits), problem.make_loss(theta), **kwargs)


def packed_parameters(problem: GradientProblem) -> Tensor:
    """``(phi, theta)`` flattened into one vector."""
    return torch.cat([problem.logits.flatten(), problem.theta.flatten()])


def replicated_and_exact(
    problem: GradientProblem,
    estimator: EstimatorLike,
    num_replicates: int,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Independent gradient estimates and the exact gradient, w.r.t. ``(phi, theta)`` packed.

    Args:
        problem: the problem.
        estimator: ``estimator(dist, loss_fn[, context=...]) -> Estimate``.
        num_replicates: number of independent estimates ``R``.
        chunk_size: replicates per backward pass (stateful estimators update between chunks).

    Returns:
        ``(grads, exact)`` with shapes ``(R, P)`` and ``(P,)``, ``P = |phi| + |theta|``.

    Example:
        >>> import torch, latentgrad as lg
        >>> from latentgrad.testing.problems import replicated_and_exact, small_problems
        >>> _ = torch.manual_seed(0)
        >>> grads, exact = replicated_and_exact(small_problems()[0], lg.Marginalize(), 10)
        >>> bool(torch.allclose(grads.mean(0), exact))
        True
    """

    def surrogate_fn(rep: Tensor) -> Tensor:
        out = run_replicated(problem, estimator, rep)
        return out.surrogate.reshape(rep.shape[0], -1).sum(1)

    grads = replicated_gradients(
        surrogate_fn, packed_parameters(problem), num_replicates, chunk_size
    )
    return grads, exact_problem_gradient(problem)


def small_problems(
    dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> list[GradientProblem]:
    """Three small problems with nonlinear losses: a categorical, a bit-vector, three units.

    * ``categorical``: 2 examples, K = 4, loss nonlinear in ``z`` and in ``theta``.
    * ``bernoulli``: D = 3 bits, loss a small tanh network with weights ``theta``.
    * ``units``: ``Categorical(...).to_event(1)`` with 3 units of 3 classes.

    Args:
        dtype: the dtype of every tensor.
        device: where to put them (default: torch's default device). The numbers are the same
            on every device (seeded draws are made on the CPU).
    """
    device = _device(device)
    c = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, -1.0, 2.0]], dtype=dtype, device=device)

    def categorical_loss(theta: Tensor) -> LossFn:
        def loss_fn(z: Tensor) -> Tensor:
            s = (z * theta.unsqueeze(-2)).sum(-1)
            t = (z * c).sum(-1)
            return (s - 0.5) ** 2 + torch.sin(3 * t) + s * t

        return loss_fn

    g = torch.Generator().manual_seed(123)
    b1 = _randn(g, 4, dtype=dtype, device=device)
    w2 = _randn(g, 4, dtype=dtype, device=device)

    def bernoulli_loss(w1: Tensor) -> LossFn:
        def loss_fn(z: Tensor) -> Tensor:
            h = torch.tanh((z.unsqueeze(-1) * w1).sum(-2) + b1)
            return F.softplus(h @ w2 + 0.3) + 0.5 * (h**2).sum(-1)

        return loss_fn

    def units_loss(theta: Tensor) -> LossFn:
        def loss_fn(z: Tensor) -> Tensor:
            a = (z * theta).sum(-1)
            return (a.sum(-1) - 1) ** 2 + a[..., 0] * a[..., 1] + torch.sin(2 * a[..., 2])

        return loss_fn

    return [
        GradientProblem(
            "categorical",
            torch.tensor(
                [[0.3, -0.5, 1.0, 0.1], [-1.0, 0.4, 0.0, 0.7]], dtype=dtype, device=device
            ),
            torch.tensor([0.5, -1.0, 2.0, 0.3], dtype=dtype, device=device),
            lambda logits: Categorical(logits=logits),
            categorical_loss,
        ),
        GradientProblem(
            "bernoulli",
            torch.tensor([0.2, -0.7, 1.1], dtype=dtype, device=device),
            _randn(g, 3, 4, dtype=dtype, device=device),
            lambda logits: Bernoulli(logits=logits),
            bernoulli_loss,
        ),
        GradientProblem(
            "units",
            torch.tensor(
                [[0.5, -0.2, 0.0], [1.0, 0.3, -0.8], [-0.4, 0.9, 0.2]], dtype=dtype, device=device
            ),
            torch.tensor(
                [[1.0, -0.5, 0.3], [0.2, 0.8, -1.2], [-0.6, 0.4, 1.5]], dtype=dtype, device=device
            ),
            lambda logits: Categorical(logits=logits).to_event(1),
            units_loss,
        ),
    ]


def structured_problems(
    dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> list[GradientProblem]:
    """Small structured problems (2 examples each) with a nonlinear loss of the whole value.

    The loss is ``(s - 0.5)^2 + sin(2 s) + 0.3 s t`` with ``s = <z, theta>`` and ``t = <z, c>``
    over the flattened value ``z`` (orderings are used as numbers), so its gradient w.r.t. both
    the scores and ``theta`` is nonzero. Families: ``KSubset`` (n = 4, k = 2, one item absent
    in one example), ``PlackettLuce`` (n = 3), ``SpanningTree`` and ``Arborescence`` (4
    vertices, one edge absent in one example), ``BinaryTree`` (n = 4), ``Matching`` (n = 3).

    Args:
        dtype: the dtype of every tensor.
        device: where to put them (default: torch's default device), as in
            :func:`small_problems`.
    """
    device = _device(device)
    from latentgrad.distributions.arborescence import Arborescence
    from latentgrad.distributions.binary_tree import BinaryTree
    from latentgrad.distributions.ksubset import KSubset, PlackettLuce
    from latentgrad.distributions.matching import Matching
    from latentgrad.distributions.spanning_tree import SpanningTree

    g = torch.Generator().manual_seed(7)

    def problem(
        name: str,
        scores: Tensor,
        make: Callable[[Tensor], Distribution],
        event_shape: tuple[int, ...],
    ) -> GradientProblem:
        size = math.prod(event_shape)
        c = _randn(g, size, dtype=dtype, device=device)
        theta = _randn(g, size, dtype=dtype, device=device)

        def make_loss(theta: Tensor) -> LossFn:
            def loss_fn(z: Tensor) -> Tensor:
                flat = z.to(dtype).reshape(*z.shape[: z.dim() - len(event_shape)], size)
                return _structured_loss(flat, theta, c)

            return loss_fn

        return GradientProblem(name, scores, theta, make, make_loss)

    ks = torch.tensor(
        [[0.5, -0.3, 1.0, 0.0], [0.2, -torch.inf, -0.6, 0.9]], dtype=dtype, device=device
    )
    pl = torch.tensor([[0.3, -0.8, 1.2], [0.0, 0.5, -0.4]], dtype=dtype, device=device)
    graph = _randn(g, 2, 4, 4, dtype=dtype, device=device)
    graph[1, 0, 2] = -torch.inf  # an absent edge in the second example
    return [
        problem("ksubset", ks, lambda s: KSubset(s, k=2), (4,)),
        problem("plackett-luce", pl, PlackettLuce, (3,)),
        problem("spanning-tree", graph, SpanningTree, (4, 4)),
        problem("arborescence", graph, Arborescence, (4, 4)),
        problem("binary-tree", _randn(g, 2, 4, dtype=dtype, device=device), BinaryTree, (4, 4)),
        problem("matching", _randn(g, 2, 3, 3, dtype=dtype, device=device), Matching, (3, 3)),
    ]


def _device(device: torch.device | str | None) -> torch.device:
    """``device``, or torch's default device (``torch.set_default_device``) when None."""
    return torch.empty(()).device if device is None else torch.device(device)


def _randn(g: torch.Generator, *shape: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Standard normals from the CPU generator ``g``, moved to ``device`` (the same numbers on
    every device)."""
    return torch.randn(shape, generator=g, dtype=dtype, device="cpu").to(device)


def _structured_loss(z: Tensor, theta: Tensor, c: Tensor) -> Tensor:
    s = (z * theta.unsqueeze(-2)).sum(-1)
    t = (z * c).sum(-1)
    return (s - 0.5) ** 2 + torch.sin(2 * s) + 0.3 * s * t


def toy_problems(
    dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> list[GradientProblem]:
    """The toy objectives of Struminsky et al. (2021), at sizes small enough to enumerate.

    One example each, random scores (fixed seed); the losses have no parameters (``theta`` is
    an unused placeholder):

    * ``spanning-tree n=5``: the number of edges not touching vertex 0;
    * ``arborescence n=5``: minus the largest out-degree;
    * ``binary-tree n=6``: minus the height;
    * ``matching n=4``: minus the number of diagonal matches;
    * ``ksubset n=8 k=3``: minus the number of chosen even items.

    Args:
        dtype: the dtype of every tensor.
        device: where to put them (default: torch's default device), as in
            :func:`small_problems`.
    """
    device = _device(device)
    from latentgrad.distributions.arborescence import Arborescence
    from latentgrad.distributions.binary_tree import BinaryTree
    from latentgrad.distributions.ksubset import KSubset
    from latentgrad.distributions.matching import Matching
    from latentgrad.distributions.spanning_tree import SpanningTree

    g = torch.Generator().manual_seed(11)
    unused = torch.zeros(1, dtype=dtype, device=device)

    def constant(loss: LossFn) -> Callable[[Tensor], LossFn]:
        return lambda theta: loss

    def off_zero(a: Tensor) -> Tensor:
        return a[..., 1:, 1:].sum((-1, -2)) / 2

    def max_out_degree(a: Tensor) -> Tensor:
        return -a.sum(-1).amax(-1)

    def height(a: Tensor) -> Tensor:
        n = a.shape[-1]
        reach = a
        for _ in range(n):
            reach = (a + reach @ a).clamp_max(1)
        return -reach.sum(-2).amax(-1)  # depth = number of ancestors

    def diagonal(m: Tensor) -> Tensor:
        return -m.diagonal(dim1=-2, dim2=-1).sum(-1)

    def even(z: Tensor) -> Tensor:
        return -z[..., ::2].sum(-1)

    def scores(*shape: int) -> Tensor:
        return _randn(g, 1, *shape, dtype=dtype, device=device)

    return [
        GradientProblem(
            "spanning-tree n=5", scores(5, 5), unused, SpanningTree, constant(off_zero)
        ),
        GradientProblem(
            "arborescence n=5", scores(5, 5), unused, Arborescence, constant(max_out_degree)
        ),
        GradientProblem("binary-tree n=6", scores(6), unused, BinaryTree, constant(height)),
        GradientProblem("matching n=4", scores(4, 4), unused, Matching, constant(diagonal)),
        GradientProblem(
            "ksubset n=8 k=3", scores(8), unused, lambda s: KSubset(s, k=3), constant(even)
        ),
    ]


def pathwise_only(estimator: EstimatorLike) -> EstimatorLike:
    """A deliberately biased ``estimator``: its surrogate keeps the losses only.

    Dropping the score terms leaves the pathwise gradient (zero for the distribution's
    scores), far from the exact gradient: a negative control showing that an unbiasedness test
    can fail.
    """

    def biased(dist: Distribution, loss_fn: LossFn, *, context: Tensor | None = None) -> Estimate:
        out = estimator(dist, loss_fn)
        if out.losses is None:
            raise ValueError("pathwise_only needs an estimator that reports its losses")
        out.surrogate = out.losses.mean(0) + 0 * out.surrogate
        return out

    return biased
