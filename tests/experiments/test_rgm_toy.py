"""Tests of the structured toy problems (Struminsky et al. 2021)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from latentgrad.distributions import BinaryTree
from latentgrad.experiments.rgm_toy import (
    EXPERIMENT,
    PROBLEMS,
    SPARSEMAP_PROBLEMS,
    RGMToyConfig,
    RGMToyTrainable,
    figures_from_records,
    make_family,
    make_oracle,
    objective,
    optimum,
    plot_curves,
    score_shape,
    tree_height,
)
from latentgrad.lab import ESTIMATORS
from latentgrad.lab.catalog import all_experiments
from latentgrad.lab.config import InvalidConfigValue
from latentgrad.lab.registry import supported_estimators
from latentgrad.lab.rundir import read_metrics
from latentgrad.lab.runner import run

SUPPORTED = supported_estimators(EXPERIMENT)


def tiny_config(**overrides: object) -> RGMToyConfig:
    settings: dict[str, object] = {
        "dimension": 4,
        "subset_size": 2,
        "eval_samples": 20,
        "grad_estimates": 4,
        "steps_per_epoch": 3,
    }
    settings.update(overrides)
    return RGMToyConfig(**settings)  # type: ignore[arg-type]


def make(config: RGMToyConfig) -> RGMToyTrainable:
    chosen = ESTIMATORS[config.estimator].resolve(config.estimator)
    return RGMToyTrainable(config, chosen)


def cases() -> list[tuple[str, str]]:
    return [
        (problem, name)
        for problem in PROBLEMS
        for name in SUPPORTED
        if name != "sparsemap" or problem in SPARSEMAP_PROBLEMS
    ]


@pytest.mark.parametrize(("problem", "name"), cases())
def test_every_estimator_runs_on_every_problem(problem: str, name: str) -> None:
    torch.manual_seed(0)
    trainable = make(tiny_config(problem=problem, estimator=name))
    for step in trainable.train_batches(1):
        metrics = trainable.train_step(step)
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["loss_evals"] >= 1
    result = trainable.evaluate("valid")
    assert set(result) == {
        "objective",
        "mode_objective",
        "grad_std",
        "grad_norm",
        "steps_to_optimum",
    }
    finite = {k: v for k, v in result.items() if k != "steps_to_optimum"}
    assert all(math.isfinite(v) for v in finite.values())
    best = optimum(problem, 4, 2)
    assert result["objective"] >= best - 1e-9 and result["mode_objective"] >= best
    assert (result["grad_std"] == 0) == (name in ("exact", "sparsemap"))
    assert int(trainable.model.steps) == 3


def test_relax_trains_its_critic_with_the_scores() -> None:
    torch.manual_seed(0)
    trainable = make(tiny_config(problem="spanning-tree", estimator="relax"))
    params = {id(p) for group in trainable.optimizer.param_groups for p in group["params"]}
    critic = list(trainable.estimator.parameters())
    assert critic and all(id(p) in params for p in critic)
    assert id(trainable.model.scores) in params
    before = [p.detach().clone() for p in critic]
    metrics = trainable.train_step(0)
    assert "critic_loss" in metrics
    assert any(not torch.equal(a, p) for a, p in zip(before, critic, strict=True))


def test_objectives_on_hand_made_structures() -> None:
    n = 5
    chain = torch.diag(torch.ones(n - 1), 1)  # 0 -> 1 -> ... -> 4
    assert float(tree_height(chain)) == n
    assert float(objective("binary-tree")(chain)) == -n
    balanced = torch.zeros(3, 3)
    balanced[1, 0] = balanced[1, 2] = 1  # root 1 with children 0 and 2
    assert float(tree_height(balanced)) == 2
    star = torch.zeros(n, n)
    star[0, 1:] = 1
    assert float(objective("arborescence")(star)) == -(n - 1)
    assert float(objective("arborescence")(chain)) == -1
    undirected_star = star + star.T
    assert float(objective("spanning-tree")(undirected_star)) == 0
    path = chain + chain.T
    assert float(objective("spanning-tree")(path)) == n - 2  # all but the edge {0, 1}
    assert float(objective("matching")(torch.eye(n))) == -n
    assert float(objective("matching")(torch.eye(n).roll(1, 0))) == 0
    assert float(objective("k-subset")(torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0]))) == -2
    batch = torch.stack([chain, balanced.new_zeros(n, n)])
    assert objective("binary-tree")(batch).shape == (2,)


def all_structures(problem: str, n: int, k: int) -> torch.Tensor:
    if problem == "binary-tree":
        values, _ = BinaryTree(torch.zeros(n)).support_probs()
        return values
    oracle = make_oracle(problem, n, k)
    return oracle.to_value(oracle.enumerate())


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize(("n", "k"), [(4, 2), (5, 3)])
def test_optimum_is_the_brute_force_minimum(problem: str, n: int, k: int) -> None:
    values = all_structures(problem, n, k)
    assert (
        values.shape[1:]
        == make_family(problem, torch.zeros(score_shape(problem, n)), k).event_shape
    )
    assert float(objective(problem)(values).min()) == optimum(problem, n, k)


def test_optima_at_the_paper_size() -> None:
    assert [optimum(p, 10) for p in PROBLEMS] == [-9.0, -10.0, -10.0, 0.0, -3.0]


def test_sparsemap_needs_an_oracle_and_exact_a_small_support() -> None:
    with pytest.raises(ValueError, match="MAP oracle"):
        make(tiny_config(problem="binary-tree", estimator="sparsemap"))
    with pytest.raises(ValueError, match="cannot sum"):
        make(tiny_config(problem="arborescence", dimension=10, estimator="exact"))


def test_steps_to_optimum_is_the_step_of_the_first_evaluation_there() -> None:
    torch.manual_seed(0)
    trainable = make(tiny_config(problem="k-subset", estimator="t-reinforce+", tolerance=0.0))
    trainable.train_step(0)
    assert math.isnan(trainable.evaluate("valid")["steps_to_optimum"])
    trainable.config.tolerance = 10.0  # every objective is within 10 of the optimum
    trainable.train_step(1)
    assert trainable.evaluate("valid")["steps_to_optimum"] == 2
    trainable.train_step(2)
    assert trainable.evaluate("test")["steps_to_optimum"] == 2
    state = trainable.modules.state_dict()
    assert int(state["model.steps"]) == 3 and int(state["model.reached"]) == 2


def test_t_reinforce_plus_improves_the_binary_tree() -> None:
    torch.manual_seed(0)
    trainable = make(
        tiny_config(
            problem="binary-tree",
            dimension=5,
            estimator="t-reinforce+",
            lr=0.05,
            eval_samples=400,
            steps_per_epoch=150,
        )
    )
    before = trainable.evaluate("valid")["objective"]
    for step in trainable.train_batches(1):
        trainable.train_step(step)
    after = trainable.evaluate("valid")["objective"]
    assert after < before - 0.5
    assert after < -4.0  # the optimum is -5


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("problem", "tree"),
        ("dimension", 1),
        ("subset_size", 0),
        ("subset_size", 5),
        ("steps_per_epoch", 0),
        ("grad_estimates", 1),
        ("tolerance", -0.1),
        ("init_std", math.nan),
    ],
)
def test_validate_names_the_field(field: str, value: object) -> None:
    with pytest.raises(InvalidConfigValue, match=field):
        tiny_config(**{field: value}).validate()


def test_paper_defaults_and_registration() -> None:
    config = RGMToyConfig()
    assert (config.dimension, config.lr, config.epochs * config.steps_per_epoch) == (
        10,
        0.01,
        15_000,
    )
    assert config.eval_samples == 1000 and config.estimator == "t-reinforce+"
    assert all_experiments()["rgm-toy"] is EXPERIMENT
    assert EXPERIMENT.primary_metric == "objective"
    for name in ("e-reinforce", "t-reinforce", "e-reinforce+", "t-reinforce+", "relax"):
        assert name in SUPPORTED
        assert ESTIMATORS[name].build().num_samples == (1 if name == "relax" else 3)
    assert "sparsemap" in SUPPORTED and "sf" not in SUPPORTED


def test_runner_writes_results_and_curves(tmp_path: Path) -> None:
    config = tiny_config(estimator="t-reinforce+", epochs=2)
    results = run(EXPERIMENT, config, tmp_path / "run", progress=False, plots=True)
    assert results["total_steps"] == 6 and "objective" in results["test"]
    folder = tmp_path / "run"
    with (folder / "curves.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [float(r["step"]) for r in rows] == [3.0, 6.0]
    assert (folder / "curves.png").read_bytes()[:4] == b"\x89PNG"
    meta = json.loads((folder / "config.json").read_text())
    assert meta["config"]["estimator_options"]["num_samples"] == 3


def test_plot_curves_draws_one_line_per_run(tmp_path: Path) -> None:
    torch.manual_seed(0)
    histories = {}
    for name in ("e-reinforce", "t-reinforce+"):
        run(
            EXPERIMENT,
            tiny_config(estimator=name, epochs=2),
            tmp_path / name,
            progress=False,
            plots=False,
        )
        histories[name] = read_metrics(tmp_path / name)
    path = plot_curves(histories, tmp_path / "all.png", optimum=-4.0, title="binary tree")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "e-reinforce" / "curves.png").exists()  # plots=False: csv only
    assert (tmp_path / "e-reinforce" / "curves.csv").exists()


def test_figures_from_records_one_per_problem(tmp_path: Path) -> None:
    torch.manual_seed(0)
    for name in ("e-reinforce", "t-reinforce+"):
        run(EXPERIMENT, tiny_config(estimator=name, epochs=2), tmp_path / "runs" / name,
            progress=False, plots=False)  # fmt: skip
    written = figures_from_records([tmp_path / "runs"], tmp_path / "figures", prefix="toy")
    problem = tiny_config().problem
    assert [p.name for p in written] == [f"toy-{problem}-n4.png"]
    assert written[0].read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(FileNotFoundError):
        figures_from_records([tmp_path / "figures"], tmp_path / "again")
