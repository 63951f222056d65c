"""The structured toy optimization problems of Struminsky et al. (NeurIPS 2021).

No data and no network: the only parameter is the score tensor ``theta`` of one structured
family, started at zero (``init_std`` > 0: normal), and training minimizes ``E_{X ~ q_theta}[f(X)]`` with Adam (lr 0.01,
15,000 steps: 150 epochs of 100 steps), with the estimator's own samples (3 per step). The
problems (``problem``), each at ``dimension = n`` (paper: 10), with the optimum of ``f``:

================= ================ ========================================== ===============
problem           family           ``f(X)``                                   optimum
================= ================ ========================================== ===============
``arborescence``  ``Arborescence`` minus the largest out-degree (root 0)      ``-(n - 1)``
``binary-tree``   ``BinaryTree``   minus the height, in levels (nodes on the  ``-n``
                                   longest root-to-leaf path)
``matching``      ``Matching``     minus the number of diagonal pairs         ``-n``
``spanning-tree`` ``SpanningTree`` edges not touching vertex 0                ``0``
``k-subset``      ``KSubset``      minus the chosen items of even index       ``-min(k, ceil(n/2))``
================= ================ ========================================== ===============

(``k = subset_size``, 3 by default.) The optima are reached by the star out of the root, the
chain, the identity, the star at vertex 0 and any ``k`` even items. The height counts levels
so that the binary-tree optimum is the paper's ``-10`` at ``n = 10`` (its arborescence and
matching optima are ``-9`` and ``-10``); the paper has no k-subset problem: this one is the
k-subset row of the variance table in ``docs/structured.md``.

Estimators (``--estimator``): ``e-reinforce``, ``t-reinforce`` (no baseline),
``e-reinforce+``, ``t-reinforce+`` (leave-one-out), all with 3 samples, ``relax`` (its MLP
critic is trained by the same Adam, on the critic loss of :class:`~latentgrad.RELAX`; give
``--num-samples 3`` for the paper's budget: the registry default is 1) and ``exact``
(:class:`~latentgrad.Marginalize`, where the family enumerates its support: binary trees up to
``n = 10``, k-subsets; a run that cannot is refused before it starts). With
``--estimator sparsemap`` (the registry's SparseMAP latent) the latent is instead
:class:`~latentgrad.SparseMAP` over the same structures, with the same scores as part scores
(the projection of the scores onto the structures' marginal polytope, whose few structures
are summed exactly: a deterministic comparison, Correia et al. 2020), for the problems with a
MAP oracle (all but ``binary-tree``). From zero scores its gradient vanishes on arborescences
(the 9 structures of the projection of 0 at ``n = 10`` all have out-degree 8, so the objective
stays at -8); a small ``init_std`` avoids that.

Metrics: ``loss`` (train) is the mean ``f`` of the step's samples (the exact expectation for
``exact``). Each evaluation (every epoch) reports ``objective`` (``E_q[f]`` by ``eval_samples``
Monte Carlo samples; exact under SparseMAP), ``mode_objective`` (``f`` of the family's mode),
``grad_std`` (the standard deviation of one gradient estimate of the estimator, a vector: the
square root of the trace of its covariance, from ``grad_estimates`` independent estimates at
the current scores; 0 for the exact sums), ``grad_norm`` (the norm of their mean) and
``steps_to_optimum`` (the training steps done at the first evaluation whose ``objective`` was
within ``tolerance`` of the optimum; NaN until then). :func:`write_curves` (the experiment's
``artifacts`` hook) writes ``curves.csv`` and ``curves.png`` of a run; :func:`plot_curves`
draws several runs, one line per estimator.

References:
    [1] Struminsky, Gadetsky, Rakitin, Karpushkin & Vetrov, "Leveraging recursive Gumbel-max
        trick for approximate inference in combinatorial spaces", NeurIPS 2021.
    [2] Correia, Niculae, Aziz & Martins, "Efficient Marginalization of Discrete and
        Structured Latent Variables via Sparsity", NeurIPS 2020 (SparseMAP marginalization).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from latentgrad.distributions import (
    Arborescence,
    BinaryTree,
    KSubset,
    Matching,
    SpanningTree,
    SparseMAP,
)
from latentgrad.estimators import LatentDistribution, Marginalize
from latentgrad.lab.config import (
    is_positive_int,
    require,
    require_choice,
    require_nonnegative,
    require_positive_ints,
)
from latentgrad.lab.experiment import Experiment, ExperimentConfig, ResolvedEstimator
from latentgrad.lab.steps import estimator_step
from latentgrad.mappings.oracles import (
    ArborescenceOracle,
    KSubsetOracle,
    PermutationOracle,
    SpanningTreeOracle,
    StructureOracle,
)
from latentgrad.structured.kruskal import adjacency_to_edges

Problem = Literal["arborescence", "binary-tree", "matching", "spanning-tree", "k-subset"]
PROBLEMS: tuple[str, ...] = ("arborescence", "binary-tree", "matching", "spanning-tree", "k-subset")
#: The problems whose structures have a MAP oracle (what SparseMAP needs).
SPARSEMAP_PROBLEMS: tuple[str, ...] = ("arborescence", "matching", "spanning-tree", "k-subset")

#: Every estimator of a recursive Gumbel-max family, the exact sum where it is feasible, and
#: SparseMAP over the same structures (``sparsemap``: its latent family is ``"sparsemap"``).
ESTIMATORS = (
    "exact",
    "sparsemap",
    "e-reinforce",
    "t-reinforce",
    "e-reinforce+",
    "t-reinforce+",
    "relax",
)


# -- the objectives ---------------------------------------------------------------------------


def max_out_degree(adjacency: Tensor) -> Tensor:
    """The largest out-degree of a directed graph ``A[u, v] = 1`` for ``u -> v``.

    Shape: ``(*, n, n) -> (*)``.

    Example:
        >>> star = torch.zeros(4, 4)
        >>> star[0, 1:] = 1
        >>> max_out_degree(star)
        tensor(3.)
    """
    return adjacency.sum(-1).amax(-1)


def tree_height(adjacency: Tensor) -> Tensor:
    """The height of a rooted tree in levels: the number of nodes on its longest root-to-leaf
    path (a single node: 1; a chain of ``n`` nodes: ``n``).

    Args:
        adjacency: ``A[p, c] = 1`` iff ``p`` is the parent of ``c`` (a
            :class:`~latentgrad.BinaryTree` or :class:`~latentgrad.Arborescence` value).

    Shape: ``(*, n, n) -> (*)``.

    Example:
        >>> chain = torch.diag(torch.ones(4), 1)  # 0 -> 1 -> 2 -> 3 -> 4
        >>> tree_height(chain)
        tensor(5.)
    """
    n = adjacency.shape[-1]
    depth = torch.ones(adjacency.shape[:-1], dtype=adjacency.dtype, device=adjacency.device)
    for _ in range(n - 1):  # depth(c) = 1 + depth(parent(c)); the root has no parent
        depth = 1 + (adjacency * depth.unsqueeze(-1)).sum(-2)
    return depth.amax(-1)


def diagonal_matches(matching: Tensor) -> Tensor:
    """The number of rows matched to the column of the same index. Shape: ``(*, n, n) -> (*)``."""
    return matching.diagonal(dim1=-2, dim2=-1).sum(-1)


def edges_off_vertex_zero(adjacency: Tensor) -> Tensor:
    """The edges of an undirected graph (symmetric adjacency) that do not touch vertex 0.

    Shape: ``(*, n, n) -> (*)``.
    """
    return adjacency[..., 1:, 1:].sum((-1, -2)) / 2


def even_items(subset: Tensor) -> Tensor:
    """The chosen items of even index (0, 2, ...) of a 0/1 indicator. Shape: ``(*, n) -> (*)``."""
    return subset[..., ::2].sum(-1)


def objective(problem: str) -> Callable[[Tensor], Tensor]:
    """The loss ``f`` of ``problem``, structures ``(*) + event_shape`` to ``(*)``: minus the
    out-degree, minus the height, minus the diagonal pairs, the edges off vertex 0 or minus
    the even items.

    Example:
        >>> objective("matching")(torch.eye(3))
        tensor(-3.)
    """
    losses: dict[str, Callable[[Tensor], Tensor]] = {
        "arborescence": lambda a: -max_out_degree(a),
        "binary-tree": lambda a: -tree_height(a),
        "matching": lambda m: -diagonal_matches(m),
        "spanning-tree": edges_off_vertex_zero,
        "k-subset": lambda z: -even_items(z),
    }
    _check_problem(problem)
    return losses[problem]


def optimum(problem: str, dimension: int, subset_size: int = 3) -> float:
    """The smallest value of ``objective(problem)`` over the structures of size ``dimension``.

    Example:
        >>> optimum("binary-tree", 10), optimum("arborescence", 10), optimum("k-subset", 5, 4)
        (-10.0, -9.0, -3.0)
    """
    _check_problem(problem)
    n = dimension
    values = {
        "arborescence": -(n - 1),
        "binary-tree": -n,
        "matching": -n,
        "spanning-tree": 0,
        "k-subset": -min(subset_size, (n + 1) // 2),
    }
    return float(values[problem])


def _check_problem(problem: str) -> None:
    if problem not in PROBLEMS:
        raise ValueError(f"problem must be one of {', '.join(PROBLEMS)}, got {problem!r}")


def score_shape(problem: str, dimension: int) -> tuple[int, ...]:
    """The shape of the family's scores: ``(n, n)`` for graphs and matchings, ``(n,)`` else."""
    _check_problem(problem)
    if problem in ("binary-tree", "k-subset"):
        return (dimension,)
    return (dimension, dimension)


def make_family(problem: str, scores: Tensor, subset_size: int = 3) -> LatentDistribution:
    """The recursive Gumbel-max family of ``problem`` with ``scores`` (``batch + score_shape``).

    Example:
        >>> q = make_family("binary-tree", torch.zeros(2, 5))
        >>> type(q).__name__, q.batch_shape, q.event_shape
        ('BinaryTree', torch.Size([2]), torch.Size([5, 5]))
    """
    _check_problem(problem)
    if problem == "arborescence":
        return Arborescence(scores, root=0)
    if problem == "binary-tree":
        return BinaryTree(scores)
    if problem == "matching":
        return Matching(scores)
    if problem == "spanning-tree":
        return SpanningTree(scores)
    return KSubset(scores, k=subset_size)


def make_oracle(problem: str, dimension: int, subset_size: int = 3) -> StructureOracle:
    """The MAP oracle of ``problem``'s structures (``ValueError`` for ``binary-tree``)."""
    _check_problem(problem)
    n = dimension
    if problem == "arborescence":
        return ArborescenceOracle(n, root=0)
    if problem == "matching":
        return PermutationOracle(n)
    if problem == "spanning-tree":
        return SpanningTreeOracle(n)
    if problem == "k-subset":
        return KSubsetOracle(n, subset_size)
    raise ValueError(
        f"problem {problem!r} has no MAP oracle, so no SparseMAP latent; those that have one: "
        + ", ".join(SPARSEMAP_PROBLEMS)
    )


def make_sparsemap(problem: str, scores: Tensor, subset_size: int = 3) -> SparseMAP:
    """SparseMAP over ``problem``'s structures, with the family's scores as part scores.

    The parts are the family's items: the ``n * n`` entries for arborescences (the diagonal
    and column 0 are in no structure) and matchings, the upper triangle for spanning trees,
    the items for k-subsets. Values have the family's form.

    Example:
        >>> q = make_sparsemap("matching", torch.eye(3) * 2)
        >>> q.support_probs()[0].shape  # one structure, the identity
        torch.Size([1, 3, 3])
    """
    n = scores.shape[-1]
    oracle = make_oracle(problem, n, subset_size)
    if problem == "spanning-tree":
        parts = adjacency_to_edges(scores)
    elif problem in ("arborescence", "matching"):
        parts = scores.flatten(-2)
    else:
        parts = scores
    return SparseMAP(parts, oracle)


# -- the experiment ---------------------------------------------------------------------------


@dataclass
class RGMToyConfig(ExperimentConfig):
    """Settings of the structured toy problems; the defaults are the paper's (module docstring).

    The shared fields ``batch_size``, ``data``, ``dataset`` and ``max_eval_examples`` are unused
    (there is no data); ``lr`` is Adam's, ``eval_samples`` the Monte Carlo samples of the
    evaluated objective, and the run makes ``epochs * steps_per_epoch`` steps.

    Attributes:
        problem: arborescence (-max out-degree), binary-tree (-height), matching (-diagonal
            pairs), spanning-tree (edges off vertex 0) or k-subset (-even items).
        dimension: n, the nodes, rows or items of the structure (paper: 10).
        subset_size: k of the k-subset problem (at most dimension).
        steps_per_epoch: optimizer steps per epoch (an evaluation follows every eval_every
            epochs).
        grad_estimates: independent gradient estimates per evaluation for grad_std.
        tolerance: the objective is at its optimum when within this of it (steps_to_optimum).
        init_std: standard deviation of the normal initial scores (0: all zero, the paper's).
    """

    estimator: str = "t-reinforce+"
    epochs: int = 150
    lr: float = 0.01
    dataset: str = "none"
    eval_samples: int = 1000
    problem: Problem = "binary-tree"
    dimension: int = 10
    subset_size: int = 3
    steps_per_epoch: int = 100
    grad_estimates: int = 100
    tolerance: float = 0.1
    init_std: float = 0.0

    def validate(self) -> None:
        """Check the shared settings, then these (see :meth:`ExperimentConfig.validate`).

        Example:
            >>> RGMToyConfig(subset_size=11).validate()
            Traceback (most recent call last):
            ...
            latentgrad.lab.config.InvalidConfigValue: subset_size must be an int in [1, dimension=10], got 11
        """
        super().validate()
        require_choice(self, "problem", PROBLEMS)
        dim = self.dimension
        require(is_positive_int(dim) and dim >= 2, "dimension", "an int >= 2", dim)
        k = self.subset_size
        require(
            is_positive_int(k) and k <= dim, "subset_size", f"an int in [1, dimension={dim}]", k
        )
        require_positive_ints(self, "steps_per_epoch")
        est = self.grad_estimates
        require(is_positive_int(est) and est >= 2, "grad_estimates", "an int >= 2", est)
        require_nonnegative(self, "tolerance", "init_std")


class ToyScores(nn.Module):
    """The scores being optimized, with the step count and the step the optimum was reached.

    Both counters are buffers, so a checkpoint restores them with the scores.

    Args:
        shape: the family's score shape (:func:`score_shape`).
        init_std: the scores start at ``N(0, init_std^2)`` (torch's global RNG); 0: at 0.
    """

    steps: Tensor
    reached: Tensor

    def __init__(self, shape: tuple[int, ...], init_std: float = 0.0) -> None:
        super().__init__()
        self.scores = nn.Parameter(
            torch.randn(shape) * init_std if init_std else torch.zeros(shape)
        )
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("reached", torch.full((), -1, dtype=torch.long))


class RGMToyTrainable:
    """The scores of one toy problem, the estimator (a RELAX critic with them) and Adam.

    Args:
        config: the experiment settings.
        chosen: the estimator the runner resolved.

    Raises:
        InvalidConfigValue: (a ``ValueError``) for a setting out of range.
        ValueError: for the exact sum over a support the family cannot enumerate, or SparseMAP
            on a problem without a MAP oracle (``binary-tree``).
    """

    def __init__(self, config: RGMToyConfig, chosen: ResolvedEstimator) -> None:
        config.validate()
        self.config = config
        self.estimator = chosen.estimator
        self.loss_fn = objective(config.problem)
        self.optimum = optimum(config.problem, config.dimension, config.subset_size)
        self.model = ToyScores(score_shape(config.problem, config.dimension), config.init_std)
        self.exact = isinstance(self.estimator, Marginalize)
        self.sparsemap = chosen.latent == "sparsemap"
        if self.sparsemap and config.problem not in SPARSEMAP_PROBLEMS:
            raise ValueError(
                f"{chosen.name} needs a MAP oracle, which problem {config.problem!r} does not "
                "have; problems with one: " + ", ".join(SPARSEMAP_PROBLEMS)
            )
        if chosen.latent not in ("softmax", "sparsemap"):
            raise ValueError(f"rgm-toy has no latent family {chosen.latent!r}")
        if isinstance(self.estimator, Marginalize) and not self.sparsemap:
            dist = self.distribution()
            size = dist.support_size()
            if size > self.estimator.max_support or not dist.can_enumerate_support():
                raise ValueError(
                    f"the exact estimator cannot sum over the {size} {config.problem} structures "
                    f"of dimension {config.dimension} (max_support={self.estimator.max_support}, "
                    f"and {type(dist).__name__} enumerates at most {dist.max_support_size}); use "
                    "a smaller dimension or a sampling estimator"
                )
        self._materialize()
        self.modules = nn.ModuleDict({"model": self.model, "estimator": self.estimator})
        self.optimizer: torch.optim.Optimizer = torch.optim.Adam(
            self.modules.parameters(), lr=config.lr
        )

    def distribution(self, scores: Tensor | None = None) -> LatentDistribution:
        """The latent at ``scores`` (default: the trained ones), ``batch + score_shape``."""
        theta = self.model.scores if scores is None else scores
        if self.sparsemap:
            return make_sparsemap(self.config.problem, theta, self.config.subset_size)
        return make_family(self.config.problem, theta, self.config.subset_size)

    def _materialize(self) -> None:
        """Give lazily sized estimator parameters (RELAX's critic) their shapes before the
        optimizer sees them, with one estimate that is thrown away."""
        if any(nn.parameter.is_lazy(p) for p in self.estimator.parameters()):
            self.estimator(self.distribution(), self.loss_fn)

    def train_batches(self, epoch: int) -> range:
        """``steps_per_epoch`` steps (there is no data: a batch is the step's index)."""
        return range(self.config.steps_per_epoch)

    def train_step(self, batch: Any) -> Mapping[str, float]:
        """One Adam step on ``E_q[f]``; reports ``loss`` (the mean ``f`` of the step's samples),
        ``loss_evals`` and, for RELAX, ``critic_loss``."""
        metrics = estimator_step(
            self.modules,
            self.optimizer,
            self.estimator,
            lambda: (self.distribution(), self.loss_fn),
        )
        self.model.steps += 1
        return metrics

    def evaluate(self, split: str) -> Mapping[str, float]:
        """``objective``, ``mode_objective``, ``grad_std``, ``grad_norm`` and
        ``steps_to_optimum`` at the current scores (both splits alike: there is no data)."""
        with torch.no_grad():
            dist = self.distribution()
            value = self.expected_objective(dist)
            mode = float(self.loss_fn(dist.mode()))
        std, norm = self.gradient_spread()
        if int(self.model.reached) < 0 and abs(value - self.optimum) <= self.config.tolerance:
            self.model.reached.fill_(self.model.steps)
        reached = int(self.model.reached)
        return {
            "objective": value,
            "mode_objective": mode,
            "grad_std": std,
            "grad_norm": norm,
            "steps_to_optimum": float(reached) if reached >= 0 else math.nan,
        }

    def expected_objective(self, dist: LatentDistribution) -> float:
        """``E_q[f]``: exact under SparseMAP, else the mean of ``eval_samples`` samples."""
        if self.sparsemap:
            values, probs = dist.support_probs()
            return float((probs * self.loss_fn(values)).sum())
        return float(self.loss_fn(dist.sample((self.config.eval_samples,))).mean())

    def gradient_spread(self) -> tuple[float, float]:
        """``(std, norm)`` of the estimator's gradient w.r.t. the scores at their current value.

        ``std`` is the square root of the summed per-coordinate variance of one estimate,
        ``norm`` the norm of the mean, over ``grad_estimates`` independent estimates drawn in
        one batched call (the scores repeated along a batch dimension). The exact sum has
        ``std = 0`` and its gradient is computed once.
        """
        draws = 1 if self.exact else self.config.grad_estimates
        theta = self.model.scores.detach()
        leaf = theta.expand(draws, *theta.shape).clone().requires_grad_(True)
        with torch.enable_grad():
            out = self.estimator(self.distribution(leaf), self.loss_fn)
            (grads,) = torch.autograd.grad(out.surrogate.sum(), leaf)
        flat = grads.double().flatten(1)
        std = 0.0 if self.exact else float(flat.var(0).sum().sqrt())
        return std, float(flat.mean(0).norm())


def build(config: RGMToyConfig, chosen: ResolvedEstimator) -> RGMToyTrainable:
    """The trainable of ``config.problem`` around ``chosen``'s estimator (no data to load)."""
    return RGMToyTrainable(config, chosen)


# -- figures ----------------------------------------------------------------------------------

CURVE_FIELDS = ("step", "objective", "mode_objective", "grad_std", "grad_norm", "train_loss")


def curve_rows(history: Sequence[Mapping[str, Any]]) -> list[dict[str, float]]:
    """One row per evaluated epoch of a run's records: the step and :data:`CURVE_FIELDS`.

    Example:
        >>> rec = {"step": 100, "train": {"loss": -3.0},
        ...        "valid": {"objective": -4.0, "mode_objective": -5.0, "grad_std": 2.0,
        ...                  "grad_norm": 1.0}}
        >>> curve_rows([rec, {"step": 200, "train": {"loss": -4.0}}])
        [{'step': 100.0, 'objective': -4.0, 'mode_objective': -5.0, 'grad_std': 2.0, 'grad_norm': 1.0, 'train_loss': -3.0}]
    """
    rows = []
    for record in history:
        valid = record.get("valid")
        if not valid:
            continue
        row = {"step": float(record["step"])}
        for key in CURVE_FIELDS[1:-1]:
            row[key] = float(valid.get(key, math.nan))
        row["train_loss"] = float(record.get("train", {}).get("loss", math.nan))
        rows.append(row)
    return rows


def plot_curves(
    series: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | Path,
    *,
    optimum: float | None = None,
    title: str = "",
) -> Path:
    """Objective and gradient standard deviation (log scale) against training steps, one line
    per run: the report-level figure of several estimators on one problem.

    Args:
        series: ``label -> the run's records`` (``metrics.jsonl``, e.g.
            :func:`latentgrad.lab.rundir.read_metrics`), e.g. one run per estimator.
        path: the PNG to write.
        optimum: drawn as a dashed line on the objective panel.
        title: the figure's title.

    Returns:
        ``path``.
    """
    from latentgrad.lab.plots import new_figure

    fig = new_figure((10.0, 4.0))
    left, right = fig.subplots(1, 2)
    for label, history in series.items():
        rows = curve_rows(history)
        if not rows:
            continue
        steps = [r["step"] for r in rows]
        (line,) = left.plot(steps, [r["objective"] for r in rows], label=label)
        stds = [(s, r["grad_std"]) for s, r in zip(steps, rows, strict=True) if r["grad_std"] > 0]
        if stds:
            xs, ys = zip(*stds, strict=True)
            right.plot(xs, ys, color=line.get_color(), label=label)
    if optimum is not None:
        left.axhline(optimum, color="black", linestyle="--", linewidth=1, label="optimum")
    left.set_ylabel("E[f] (evaluation)")
    right.set_ylabel("gradient std")
    if right.lines:
        right.set_yscale("log")
    for ax in (left, right):
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    if left.lines:
        left.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


def write_curves(run_dir: Path, figures: bool = True) -> list[Path]:
    """``curves.csv`` (and ``curves.png`` with ``figures``) of a finished run: the evaluated
    objective and gradient spread against steps (the experiment's ``artifacts`` hook)."""
    from latentgrad.lab.rundir import read_metrics

    rows = curve_rows(read_metrics(run_dir))
    if not rows:
        return []
    path = run_dir / "curves.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(CURVE_FIELDS))
        writer.writeheader()
        writer.writerows(rows)
    written = [path]
    if figures:
        cfg = json.loads((run_dir / "config.json").read_text())["config"]
        best = optimum(cfg["problem"], cfg["dimension"], cfg["subset_size"])
        label = cfg["estimator"]
        title = f"rgm-toy {cfg['problem']}, n = {cfg['dimension']}, seed {cfg['seed']}"
        history = read_metrics(run_dir)
        written.append(
            plot_curves({label: history}, run_dir / "curves.png", optimum=best, title=title)
        )
    return written


def figures_from_records(
    sources: Sequence[str | Path], out_dir: str | Path, prefix: str = "rgm-toy"
) -> list[Path]:
    """One figure per problem (and dimension) of the ``rgm-toy`` runs or results records in
    ``sources``: :func:`plot_curves` with one line per estimator (and its non-default options),
    written to ``out_dir/<prefix>-<problem>.png``. The docs' figures are made this way from
    ``results/rgm-toy``.

    Raises:
        FileNotFoundError: if ``sources`` hold no ``rgm-toy`` run.
    """
    from latentgrad.lab.runs import collect_runs

    groups: dict[tuple[str, int, int], dict[str, Sequence[Mapping[str, Any]]]] = {}
    for info in collect_runs(sources):
        if info.experiment != "rgm-toy" or not info.finished:
            continue
        cfg = info.config
        options = cfg.get("estimator_options") or {}
        label = cfg["estimator"]
        if cfg["estimator"] == "relax":
            label += f" ({options.get('num_samples', 1)} samples)"
        key = (cfg["problem"], cfg["dimension"], cfg.get("subset_size", 3))
        groups.setdefault(key, {})[label] = info.history
    if not groups:
        raise FileNotFoundError(f"no finished rgm-toy run in {', '.join(map(str, sources))}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for (problem, n, k), series in sorted(groups.items()):
        name = f"{prefix}-{problem}.png" if n == 10 else f"{prefix}-{problem}-n{n}.png"
        best = optimum(problem, n, k)
        title = f"rgm-toy {problem}, n = {n}"
        written.append(
            plot_curves(dict(sorted(series.items())), out / name, optimum=best, title=title)
        )
    return written


EXPERIMENT = Experiment(
    name="rgm-toy",
    description=(
        "optimize E[f(X)] over the scores of a structured family (arborescence, binary tree, "
        "matching, spanning tree, k-subset), n = 10, with E-/T-REINFORCE(+), RELAX or "
        "SparseMAP (Struminsky et al. 2021, toy problems)"
    ),
    config_class=RGMToyConfig,
    build=build,
    primary_metric="objective",
    estimators=ESTIMATORS,
    latent_families=(Arborescence, BinaryTree, Matching, SpanningTree, KSubset),
    artifacts=write_curves,
)
