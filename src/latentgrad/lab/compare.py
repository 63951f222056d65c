"""Bias, variance and cost of every estimator on small problems with exact gradients.

Built on :mod:`latentgrad.testing.problems`. Each problem is a latent ``z ~ q_phi`` (a categorical, a bit-vector, or a few categoricals) and a
small tanh network ``f_theta(z)`` regressed on a target; its exact gradient w.r.t. ``(phi, theta)``
comes from enumerating the support. Every estimator is run many times independently (the
replicates are extra batch elements, so one backward pass gives them all) and compared with it.

A multi-sample estimator (:class:`~latentgrad.VIMCO`) estimates the gradient of its own
objective, the ``K``-sample bound ``E[-log (1/K) sum_k exp(-f(z_k))]``, not of ``E[f(z)]``: its
bias is measured against the exact gradient of that bound
(:func:`~latentgrad.testing.exact_multisample_gradient`) where the support's ``K``-tuples can be
enumerated (at most :data:`MAX_BOUND_TUPLES`), and is not available (``None``, printed ``n/a``)
elsewhere.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from latentgrad.distributions import Bernoulli, Categorical
from latentgrad.estimators import VIMCO, Estimate, Estimator, LatentDistribution
from latentgrad.lab.registry import EstimatorEntry
from latentgrad.testing import brute_force_support, check_unbiased, exact_multisample_gradient
from latentgrad.testing.problems import (
    GradientProblem,
    packed_parameters,
    replicated_and_exact,
    run_replicated,
)

HIDDEN = 8
SHAPES = {"categorical": (10,), "bernoulli": (8,), "factorized": (3, 4)}

MAX_BOUND_TUPLES = 2**20
"""The most ``K``-tuples of the support enumerated for a multi-sample estimator's exact
gradient (the categorical problem's 10 values give 10^5 tuples at VIMCO's K = 5; the others'
64 and 256 values are too many)."""

EXPECTATION = "E[loss]"


def _network_loss(event_shape: tuple[int, ...], target: Tensor):
    """``theta -> loss_fn``: ``(tanh(W z + b) . v - target)^2`` with ``theta = (W, b, v)``."""
    e, h = math.prod(event_shape), HIDDEN

    def make_loss(theta: Tensor) -> Callable[[Tensor], Tensor]:
        lead = theta.shape[:-1]  # replicate dim (or none)
        w = theta[..., : h * e].reshape((*lead, 1, h, e))
        b = theta[..., h * e : h * e + h].reshape((*lead, 1, h))
        v = theta[..., h * e + h :].reshape((*lead, 1, h))

        def loss_fn(z: Tensor) -> Tensor:
            flat = z.reshape((*z.shape[: z.dim() - len(event_shape)], e, 1))
            hidden = torch.tanh((w @ flat).squeeze(-1) + b)
            return ((hidden * v).sum(-1) - target) ** 2

        return loss_fn

    return make_loss


def make_problem(
    family: str, batch: int = 4, seed: int = 0, dtype: torch.dtype = torch.float64
) -> GradientProblem:
    """A problem of the given family with random scores, tanh network, target and context.

    ``categorical``: K = 10; ``bernoulli``: D = 8 bits; ``factorized``: 3 categoricals of 4
    classes as one latent (``to_event(1)``). ``batch`` examples, 5 context features each.
    """
    if family not in SHAPES:
        raise ValueError(f"family must be one of {sorted(SHAPES)}, got {family!r}")
    g = torch.Generator().manual_seed(seed)
    shape = SHAPES[family]
    logits = torch.randn((batch, *shape), generator=g, dtype=dtype)
    theta = torch.randn(HIDDEN * math.prod(shape) + 2 * HIDDEN, generator=g, dtype=dtype)
    target = 2 * torch.randn(batch, generator=g, dtype=dtype)
    context = torch.randn(batch, 5, generator=g, dtype=dtype)
    makers: dict[str, Callable[[Tensor], LatentDistribution]] = {
        "categorical": lambda x: Categorical(logits=x),
        "bernoulli": lambda x: Bernoulli(logits=x),
        "factorized": lambda x: Categorical(logits=x).to_event(1),
    }
    make_dist = makers[family]
    return GradientProblem(family, logits, theta, make_dist, _network_loss(shape, target), context)


@dataclass
class Row:
    """One estimator's figures on one problem.

    Attributes:
        objective: what the bias is measured against: ``"E[loss]"`` (the gradient of
            ``E_q[f(z)]``), or ``"K-sample bound"`` for a multi-sample estimator (VIMCO).
        relative_bias: ``|mean - exact| / |exact|``; ``None`` when the exact gradient of the
            objective cannot be enumerated (as ``max_bias_z`` and ``biased``).
    """

    problem: str
    estimator: str
    relative_bias: float | None
    max_bias_z: float | None
    biased: bool | None
    mean_variance: float
    loss_evals: int
    ms_per_step: float
    objective: str = EXPECTATION

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def run_once(
    estimator: Estimator, problem: GradientProblem, requires_grad: bool = True
) -> Estimate:
    """One estimator call on the problem's own parameters (a replicate dim of size 1)."""
    packed = packed_parameters(problem).unsqueeze(0).requires_grad_(requires_grad)
    return run_replicated(problem, estimator, packed)


def warm_up(estimator: Estimator, problem: GradientProblem, steps: int) -> None:
    """Train an estimator's own parameters (learned baselines) before measuring it."""
    if not isinstance(estimator, nn.Module):
        return
    params = [p for p in estimator.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-2) if params else None
    packed = packed_parameters(problem).unsqueeze(0).expand(64, -1)
    for _ in range(steps):
        out = run_replicated(problem, estimator, packed)
        if optimizer is not None:
            optimizer.zero_grad()
            out.surrogate.sum().backward()
            optimizer.step()


def time_step(estimator: Estimator, problem: GradientProblem, repeats: int = 30) -> float:
    """Median milliseconds of one forward+backward step on the problem's batch."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_once(estimator, problem).surrogate.sum().backward()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def evaluate(
    name: str,
    estimator: Estimator,
    problem: GradientProblem,
    replicates: int,
    alpha: float = 1e-5,
    warmup: int = 200,
) -> Row:
    """Bias (relative norm and max z-score), mean per-coordinate variance and cost.

    The bias is against the exact gradient of the estimator's objective: ``E[loss]``, or the
    ``K``-sample bound for VIMCO (``None`` where its ``K``-tuples are too many to enumerate).
    """
    warm_up(estimator, problem, warmup)
    evals = run_once(estimator, problem, requires_grad=False).loss_evals
    grads, exact = replicated_and_exact(problem, estimator, replicates, chunk_size=1000)
    objective = EXPECTATION
    target: Tensor | None = exact
    if isinstance(estimator, VIMCO):
        objective = f"{estimator.num_samples}-sample bound"
        target = exact_bound_gradient(problem, estimator.num_samples)
    row = Row(
        problem=problem.name,
        estimator=name,
        relative_bias=None,
        max_bias_z=None,
        biased=None,
        mean_variance=float(grads.var(0).mean()),
        loss_evals=evals,
        ms_per_step=time_step(estimator, problem),
        objective=objective,
    )
    if target is not None:
        check = check_unbiased(grads, target, alpha=alpha)
        row.relative_bias = float((grads.mean(0) - target).norm() / target.norm())
        row.max_bias_z = check.max_abs_z
        row.biased = not check.passed
    return row


def exact_bound_gradient(
    problem: GradientProblem, num_samples: int, max_tuples: int = MAX_BOUND_TUPLES
) -> Tensor | None:
    """The exact gradient of the ``K``-sample bound ``sum E[-log (1/K) sum_k exp(-f(z_k))]``
    w.r.t. ``(phi, theta)``, packed as :func:`~latentgrad.testing.problems.packed_parameters`;
    ``None`` when the support has more than ``max_tuples`` ``K``-tuples.

    Example:
        With ``K = 1`` the bound is ``E[loss]``; 8 bits have too many 5-tuples:

        >>> from latentgrad.testing.problems import exact_problem_gradient
        >>> problem = make_problem("categorical")
        >>> bool(torch.allclose(exact_bound_gradient(problem, 1), exact_problem_gradient(problem)))
        True
        >>> exact_bound_gradient(make_problem("bernoulli"), num_samples=5) is None  # 256^5
        True
    """
    size = brute_force_support(problem.make_dist(problem.logits))[0].shape[0]
    if size**num_samples > max_tuples:
        return None
    logits = problem.logits.clone().requires_grad_(True)
    theta = problem.theta.clone().requires_grad_(True)
    grads = exact_multisample_gradient(
        lambda: problem.make_dist(logits),
        problem.make_loss(theta),
        [logits, theta],
        num_samples,
        max_tuples,
    )
    return torch.cat([g.flatten() for g in grads])


def compare(
    estimators: dict[str, EstimatorEntry],
    families: Sequence[str] = ("categorical", "bernoulli", "factorized"),
    replicates: int = 4000,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[Row]:
    """Run every estimator on every problem.

    Args:
        estimators: name -> registry entry (entries asking for another latent family than
            the problems' softmax ones, or for a capability the problem's family lacks, are
            left out).
        families: which problems to run.
        replicates: independent gradient estimates per estimator.
        seed: seeds the problems and the sampling.
        progress: called with a short message before each estimator runs.
    """
    rows: list[Row] = []
    for family in families:
        problem = make_problem(family, seed=seed)
        for name, entry in estimators.items():
            if entry.latent != "softmax":
                continue  # another family than the problem's: no common exact gradient
            if not entry.applies_to(problem.make_dist(problem.logits)):
                continue  # needs what the family lacks (RELAX: an execution trace)
            torch.manual_seed(seed)
            estimator = build_for(entry, problem)
            if progress is not None:
                progress(f"{family}: {name}")
            rows.append(evaluate(name, estimator, problem, replicates))
    return rows


def build_for(entry: EstimatorEntry, problem: GradientProblem) -> Estimator:
    """A fresh estimator from a registry entry, in the problem's dtype."""
    estimator = entry.build()
    if isinstance(estimator, nn.Module):
        estimator.to(problem.logits.dtype)
    return estimator


def format_table(rows: Sequence[Row]) -> str:
    """A fixed-width table of the rows, grouped by problem.

    Rows whose bias is measured against another objective than ``E[loss]`` (VIMCO's
    ``K``-sample bound) are marked ``*`` and explained below the table; a bias that could not be
    computed is ``n/a``.
    """
    names = [r.estimator + ("*" if r.objective != EXPECTATION else "") for r in rows]
    width = max([16, *(len(n) for n in names)])
    header = (
        f"{'problem':<12} {'estimator':<{width}} {'rel. bias':>9} {'max |z|':>8} {'biased':>6} "
        f"{'grad var':>10} {'evals':>5} {'var*evals':>10} {'ms/step':>8}"
    )
    lines = [header, "-" * len(header)]
    notes: dict[str, str] = {}
    for r, name in zip(rows, names, strict=True):
        if r.objective != EXPECTATION:
            notes.setdefault(r.estimator, r.objective)
        if r.relative_bias is None or r.max_bias_z is None:
            bias = f"{'n/a':>9} {'n/a':>8} {'n/a':>6}"
        else:
            bias = f"{r.relative_bias:>9.4f} {r.max_bias_z:>8.2f} {'yes' if r.biased else 'no':>6}"
        lines.append(
            f"{r.problem:<12} {name:<{width}} {bias} {r.mean_variance:>10.3g} "
            f"{r.loss_evals:>5d} {r.mean_variance * r.loss_evals:>10.3g} {r.ms_per_step:>8.2f}"
        )
    for estimator, objective in notes.items():
        lines.append(
            f"* {estimator}: bias against the exact gradient of its own objective, the {objective}\n"
            f"  E[-log (1/K) sum_k exp(-loss(z_k))], not of E[loss]; n/a where the support has\n"
            f"  more than {MAX_BOUND_TUPLES:,} K-tuples to enumerate."
        )
    return "\n".join(lines)
