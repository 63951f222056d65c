"""Bias, variance and cost of every estimator on small problems with exact gradients.

Each problem is a latent ``z ~ q_phi`` (a categorical, a bit-vector, or a few categoricals) and a
small tanh network ``f_theta(z)`` regressed on a target; its exact gradient w.r.t. ``(phi, theta)``
comes from enumerating the support. Every estimator is run many times independently (the
replicates are extra batch elements, so one backward pass gives them all) and compared with it.
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
from latentgrad.estimators._base import Estimator, LatentDistribution
from latentgrad.experiments.registry import EstimatorEntry
from latentgrad.testing import check_unbiased, exact_gradient, replicated_gradients

HIDDEN = 8


@dataclass(frozen=True)
class Problem:
    """A latent family with fixed scores, a tanh-network loss and NVIL context features.

    Attributes:
        name: short identifier.
        family: ``"categorical"``, ``"bernoulli"`` or ``"factorized"``.
        logits: the scores ``phi``, shape ``(B,) + score_shape``.
        theta: the loss network's parameters, flattened.
        target: regression target per example, shape ``(B,)``.
        context: per-example features for input-dependent baselines, shape ``(B, C)``.
    """

    name: str
    family: str
    logits: Tensor
    theta: Tensor
    target: Tensor
    context: Tensor

    @property
    def event_size(self) -> int:
        return self.logits[0].numel()

    def dist(self, logits: Tensor) -> LatentDistribution:
        """The latent distribution for scores with any leading batch dims."""
        if self.family == "categorical":
            return Categorical(logits=logits)
        if self.family == "bernoulli":
            return Bernoulli(logits=logits)
        return Categorical(logits=logits).to_event(1)

    def loss(self, z: Tensor, theta: Tensor) -> Tensor:
        """``(tanh(W z + b) . v - target)^2`` with ``theta`` batched like the replicates.

        Shape:
            ``z``: ``(*S, R, B) + event_shape``; ``theta``: ``(R, P)``; returns ``(*S, R, B)``.
        """
        e, h = self.event_size, HIDDEN
        r = theta.shape[0]
        w = theta[:, : h * e].reshape(r, h, e)
        b = theta[:, h * e : h * e + h].reshape(r, 1, h)
        v = theta[:, h * e + h :].reshape(r, 1, h)
        flat = z.reshape((*z.shape[: z.dim() - len(self.logits.shape[1:])], e))
        hidden = torch.tanh(torch.einsum("...rbe,rhe->...rbh", flat, w) + b)
        return ((hidden * v).sum(-1) - self.target) ** 2


def make_problem(family: str, batch: int = 4, seed: int = 0, dtype=torch.float64) -> Problem:
    """A small problem of the given family with random scores, network and target."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"categorical": (10,), "bernoulli": (8,), "factorized": (3, 4)}
    if family not in shapes:
        raise ValueError(f"family must be one of {sorted(shapes)}, got {family!r}")
    logits = torch.randn((batch, *shapes[family]), generator=g, dtype=dtype)
    e = math.prod(shapes[family])
    theta = torch.randn(HIDDEN * e + 2 * HIDDEN, generator=g, dtype=dtype)
    target = 2 * torch.randn(batch, generator=g, dtype=dtype)
    context = torch.randn(batch, 5, generator=g, dtype=dtype)
    return Problem(family, family, logits, theta, target, context)


def exact_problem_gradient(problem: Problem) -> Tensor:
    """Exact gradient of ``sum_b E_q[loss]`` w.r.t. ``(phi, theta)``, flattened."""
    logits = problem.logits.clone().requires_grad_(True)
    theta = problem.theta.clone().requires_grad_(True)
    g_phi, g_theta = exact_gradient(
        lambda: problem.dist(logits.unsqueeze(0)),
        lambda z: problem.loss(z, theta.unsqueeze(0)),
        [logits, theta],
    )
    return torch.cat([g_phi.reshape(-1), g_theta])


@dataclass
class Row:
    """One estimator's figures on one problem."""

    problem: str
    estimator: str
    relative_bias: float
    max_bias_z: float
    biased: bool
    mean_variance: float
    loss_evals: int
    ms_per_step: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _split(problem: Problem, flat: Tensor) -> tuple[Tensor, Tensor]:
    n_phi = problem.logits.numel()
    r = flat.shape[0]
    return flat[:, :n_phi].reshape((r, *problem.logits.shape)), flat[:, n_phi:]


def run_estimator(estimator: Estimator, problem: Problem, flat: Tensor):
    logits, theta = _split(problem, flat)
    context = problem.context.expand((flat.shape[0], *problem.context.shape))
    return estimator(problem.dist(logits), lambda z: problem.loss(z, theta), context=context)


def warm_up(estimator: Estimator, problem: Problem, steps: int) -> None:
    """Train an estimator's own parameters (learned baselines) before measuring it."""
    if not isinstance(estimator, nn.Module):
        return
    params = [p for p in estimator.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-2) if params else None
    flat = torch.cat([problem.logits.reshape(-1), problem.theta]).unsqueeze(0)
    for _ in range(steps):
        out = run_estimator(estimator, problem, flat.expand(64, -1))
        if optimizer is not None:
            optimizer.zero_grad()
            out.surrogate.sum().backward()
            optimizer.step()


def gradient_samples(
    estimator: Estimator, problem: Problem, replicates: int, chunk: int = 1000
) -> tuple[Tensor, int]:
    """Independent gradient estimates ``(replicates, P)`` and the loss evaluations per step."""
    evals: list[int] = []

    def surrogate(rep: Tensor) -> Tensor:
        out = run_estimator(estimator, problem, rep)
        evals.append(int(out.extras["loss_evals"]))
        return out.surrogate

    param = torch.cat([problem.logits.reshape(-1), problem.theta])
    grads = replicated_gradients(surrogate, param, replicates, chunk_size=chunk)
    return grads, evals[0]


def time_step(estimator: Estimator, problem: Problem, repeats: int = 30) -> float:
    """Median milliseconds of one forward+backward step on the problem's batch."""
    flat = torch.cat([problem.logits.reshape(-1), problem.theta]).unsqueeze(0)
    times = []
    for _ in range(repeats):
        rep = flat.clone().requires_grad_(True)
        start = time.perf_counter()
        run_estimator(estimator, problem, rep).surrogate.sum().backward()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def evaluate(
    name: str,
    estimator: Estimator,
    problem: Problem,
    exact: Tensor,
    replicates: int,
    alpha: float = 1e-5,
    warmup: int = 200,
) -> Row:
    """Bias (relative norm and max z-score), mean per-coordinate variance and cost."""
    warm_up(estimator, problem, warmup)
    grads, evals = gradient_samples(estimator, problem, replicates)
    mean = grads.mean(0)
    check = check_unbiased(grads, exact, alpha=alpha)
    return Row(
        problem=problem.name,
        estimator=name,
        relative_bias=float((mean - exact).norm() / exact.norm()),
        max_bias_z=check.max_abs_z,
        biased=not check.passed,
        mean_variance=float(grads.var(0).mean()),
        loss_evals=evals,
        ms_per_step=time_step(estimator, problem),
    )


def compare(
    estimators: dict[str, EstimatorEntry],
    families: Sequence[str] = ("categorical", "bernoulli", "factorized"),
    replicates: int = 4000,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[Row]:
    """Run every estimator on every problem; estimators that do not apply are skipped.

    Args:
        estimators: name -> registry entry (its constructor takes the context width, so learned
            baselines can size their networks).
        families: which problems to run.
        replicates: independent gradient estimates per estimator.
        seed: seeds the problems and the sampling.
        progress: called with a short message before each estimator runs.
    """
    rows: list[Row] = []
    for family in families:
        problem = make_problem(family, seed=seed)
        exact = exact_problem_gradient(problem)
        for name, entry in estimators.items():
            torch.manual_seed(seed)
            estimator = build_for(entry, problem)
            if progress is not None:
                progress(f"{family}: {name}")
            try:
                rows.append(evaluate(name, estimator, problem, exact, replicates))
            except TypeError:
                continue  # a hook this family does not provide
    return rows


def build_for(entry: EstimatorEntry, problem: Problem) -> Estimator:
    """A fresh estimator from a registry entry, in the problem's dtype."""
    estimator = entry.build(problem.context.shape[-1])
    if isinstance(estimator, nn.Module):
        estimator.to(problem.logits.dtype)
    return estimator


def format_table(rows: Sequence[Row]) -> str:
    """A fixed-width table of the rows, grouped by problem."""
    header = (
        f"{'problem':<12} {'estimator':<16} {'rel. bias':>9} {'max |z|':>8} {'biased':>6} "
        f"{'grad var':>10} {'evals':>5} {'ms/step':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.problem:<12} {r.estimator:<16} {r.relative_bias:>9.4f} {r.max_bias_z:>8.2f} "
            f"{'yes' if r.biased else 'no':>6} {r.mean_variance:>10.3g} {r.loss_evals:>5d} "
            f"{r.ms_per_step:>8.2f}"
        )
    return "\n".join(lines)
