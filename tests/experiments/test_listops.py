"""Tests of the ListOps generator and the unsupervised-parsing experiment."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

import latentgrad.data.listops as listops_data
from latentgrad.data.listops import (
    ListOpsExample,
    ListOpsSettings,
    evaluate_parse,
    evaluate_tokens,
    expression_depth,
    generate_split,
    load_listops,
    parse_adjacency,
)
from latentgrad.data.sequences import length_batches, read_or_generate
from latentgrad.estimators.relax import MLPCritic
from latentgrad.experiments.listops import (
    EXPERIMENT,
    ListOpsConfig,
    ListOpsTrainable,
    PaddedCritic,
    TreeGNN,
    edge_counts,
    make_batch,
)
from latentgrad.lab import ESTIMATORS
from latentgrad.lab.catalog import all_experiments
from latentgrad.lab.config import InvalidConfigValue
from latentgrad.lab.registry import supported_estimators
from latentgrad.lab.runner import run

SUPPORTED = supported_estimators(EXPERIMENT)
SMALL = ListOpsSettings(min_length=4, max_length=12, max_depth=2, max_args=3)


# -- the generator -----------------------------------------------------------------------------


def reaches_root(parents: tuple[int, ...]) -> bool:
    for v in range(len(parents)):
        steps = 0
        while v != 0:
            v = parents[v]
            steps += 1
            if v < 0 or steps > len(parents):
                return False
    return True


@pytest.mark.parametrize(
    "settings", [ListOpsSettings(), SMALL, ListOpsSettings(10, 30, 3, 4, 0.4, seed=3)]
)
def test_gold_parses_evaluate_to_the_labels_within_the_bounds(settings: ListOpsSettings) -> None:
    examples = generate_split(settings, "train", 400)
    for example in examples:
        tokens, parents = example.tokens, example.parents
        assert settings.min_length <= len(tokens) <= settings.max_length
        assert 1 <= expression_depth(tokens) <= settings.max_depth
        assert example.label == evaluate_tokens(tokens) == evaluate_parse(tokens, parents)
        assert 0 <= example.label <= 9
        assert tokens[0] in listops_data.OPERATORS and parents[0] == -1
        assert reaches_root(parents)  # one head each, no cycle: an arborescence rooted at 0
        adjacency = parse_adjacency(parents)
        assert adjacency[:, 1:].sum(0).eq(1).all() and adjacency[:, 0].sum() == 0
        # an operator heads its arguments and its closing bracket; digits and ] head nothing
        heads = {p for p in parents if p >= 0}
        assert all(tokens[h] in listops_data.OPERATORS for h in heads)
    depths = {expression_depth(e.tokens) for e in examples}
    assert max(depths) == settings.max_depth  # the bound is reached, not only respected


def test_the_operators() -> None:
    assert evaluate_tokens("[MIN 3 [MED 3 5 4 ] 2 ]".split()) == 2
    assert evaluate_tokens("[MED 1 2 3 9 ]".split()) == 2  # floor of (2 + 3) / 2
    assert evaluate_tokens("[MED 9 8 ]".split()) == 8
    assert evaluate_tokens("[MAX 0 [MIN 9 7 ] ]".split()) == 7
    with pytest.raises(ValueError, match="complete"):
        evaluate_tokens("[MAX 1 2".split())
    with pytest.raises(ValueError, match="unknown token"):
        evaluate_tokens("[SM 1 2 ]".split())
    with pytest.raises(ValueError, match="one entry per token"):
        evaluate_parse(["[MAX", "1", "]"], [0, 0, 0])


def test_a_wrong_parse_gives_another_value() -> None:
    tokens = "[MAX 2 [MIN 4 7 ] 0 ]".split()
    gold = [-1, 0, 0, 2, 2, 2, 0, 0]
    flat = [-1, 0, 0, 0, 0, 2, 0, 0]  # 4 and 7 taken by MAX: MAX(2, MIN(), ...) is ill-formed
    assert evaluate_parse(tokens, gold) == 4
    with pytest.raises(ValueError, match="heads no argument"):
        evaluate_parse(tokens, flat)


def test_same_seed_same_files_and_files_are_read_back(tmp_path: Path, monkeypatch) -> None:
    sizes = (20, 5, 5)
    a = load_listops(tmp_path / "a", SMALL, sizes)
    b = load_listops(tmp_path / "b", SMALL, sizes)
    folder = Path("listops") / SMALL.tag()
    for split, size in zip(("train", "valid", "test"), sizes, strict=True):
        name = folder / f"{split}-{size}.tsv"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    other = load_listops(tmp_path / "c", ListOpsSettings(4, 12, 2, 3, seed=1), sizes)
    assert other.train != a.train
    assert a.train != a.test  # each split has its own stream

    def refuse(*args: object) -> None:
        raise AssertionError("the files exist: nothing is generated")

    monkeypatch.setattr(listops_data, "generate_split", refuse)
    again = load_listops(tmp_path / "a", SMALL, sizes)
    assert again == a == b


def test_the_data_dir_comes_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LATENTGRAD_DATA", str(tmp_path))
    load_listops(None, SMALL, (3, 2, 2))
    assert (tmp_path / "listops" / SMALL.tag() / "train-3.tsv").exists()


def test_a_file_of_other_settings_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.tsv"
    read_or_generate(path, {"seed": 0}, lambda: ["a"])
    with pytest.raises(ValueError, match="not generated with these settings"):
        read_or_generate(path, {"seed": 1}, lambda: ["a"])
    example = ListOpsExample(("[MAX", "1", "2", "]"), 2, (-1, 0, 0, 0))
    assert ListOpsExample.from_line(example.to_line()) == example
    with pytest.raises(ValueError, match="malformed"):
        ListOpsExample.from_line("[MAX 1 ]\t1\t-1 0")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"min_length": 3}, "min_length"),
        ({"min_length": 12, "max_length": 10}, "max_length"),
        ({"max_depth": 0}, "max_depth"),
        ({"max_args": 1}, "max_args"),
        ({"branch_prob": 1.0}, "branch_prob"),
        ({"min_length": 40, "max_depth": 1}, "min_length"),
    ],
)
def test_bad_settings_name_the_argument(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        ListOpsSettings(**kwargs)  # type: ignore[arg-type]


def test_length_batches_hold_one_length_each() -> None:
    lengths = [random.Random(0).randint(4, 9) for _ in range(50)]
    torch.manual_seed(0)
    batches = length_batches(lengths, 4, shuffle=True)
    assert sorted(i for b in batches for i in b) == list(range(50))
    assert all(len(b) <= 4 and len({lengths[i] for i in b}) == 1 for b in batches)
    assert sum(map(len, length_batches(lengths, 4, shuffle=False, limit=7))) == 7
    with pytest.raises(ValueError, match="batch_size"):
        length_batches(lengths, 0, shuffle=False)


# -- the experiment ----------------------------------------------------------------------------


def tiny_config(tmp_path: Path, **overrides: object) -> ListOpsConfig:
    settings: dict[str, object] = {
        "data": str(tmp_path / "data"),
        "train_size": 24,
        "valid_size": 8,
        "test_size": 8,
        "min_length": 4,
        "max_length": 9,
        "max_depth": 2,
        "max_args": 3,
        "batch_size": 8,
        "embedding_dim": 8,
        "hidden_dim": 8,
        "gnn_rounds": 2,
    }
    settings.update(overrides)
    return ListOpsConfig(**settings)  # type: ignore[arg-type]


def make(config: ListOpsConfig) -> ListOpsTrainable:
    return ListOpsTrainable(config, ESTIMATORS[config.estimator].resolve(config.estimator))


def test_registration_and_supported_estimators() -> None:
    assert all_experiments()["listops"] is EXPERIMENT
    assert EXPERIMENT.primary_metric == "error"
    for name in ("e-reinforce+", "t-reinforce+", "relax", "sparsemap"):
        assert name in SUPPORTED
    config = ListOpsConfig()
    assert (config.min_length, config.max_length, config.max_depth) == (10, 50, 5)
    config.validate()


@pytest.mark.parametrize("name", SUPPORTED)
def test_every_estimator_trains_the_encoder_and_the_classifier(tmp_path: Path, name: str) -> None:
    torch.manual_seed(0)
    trainable = make(tiny_config(tmp_path, estimator=name))
    before = {k: v.detach().clone() for k, v in trainable.modules.state_dict().items()}
    batch = trainable.train_batches(1)[0]
    metrics = trainable.train_step(batch)
    assert all(math.isfinite(v) for v in metrics.values())
    after = trainable.modules.state_dict()
    for part in ("encoder.bilinear", "classifier.out.weight"):
        assert not torch.equal(before[part], after[part]), part
    result = trainable.evaluate("test")
    assert set(result) == {
        "accuracy",
        "error",
        "nll",
        "sampled_accuracy",
        "edge_precision",
        "edge_recall",
    }
    assert all(0 <= result[k] <= 1 for k in result if k != "nll")
    assert result["accuracy"] + result["error"] == pytest.approx(1.0)
    assert math.isfinite(result["nll"]) and result["nll"] > 0


def test_relax_critic_sees_padded_noise_and_is_trained(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trainable = make(tiny_config(tmp_path, estimator="relax"))
    critic = trainable.estimator.critic
    assert isinstance(critic, PaddedCritic) and critic.max_size == 9
    params = {id(p) for g in trainable.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in params for p in critic.parameters())
    lengths = set()
    for batch in trainable.train_batches(1):  # several lengths through one critic
        assert "critic_loss" in trainable.train_step(batch)
        lengths.add(batch.tokens.shape[1])
    assert len(lengths) > 1


def test_padded_critic_keeps_each_edge_in_place() -> None:
    torch.manual_seed(0)
    inner = MLPCritic(num_items=16)
    critic = PaddedCritic(inner, max_size=4)
    noise = torch.randn(2, 3, 3)
    padded = torch.zeros(2, 4, 4)
    padded[:, :3, :3] = noise
    torch.testing.assert_close(critic(noise.flatten(1)), inner(padded.flatten(1)))
    with pytest.raises(ValueError, match="n \\* n items"):
        critic(torch.randn(2, 25))
    line = PaddedCritic(MLPCritic(num_items=5), max_size=5, square=False)
    assert line(torch.randn(3, 2)).shape == (3,)


def test_edge_metrics_of_the_gold_parse_and_of_a_star(tmp_path: Path) -> None:
    examples = generate_split(SMALL, "valid", 50)
    n = len(examples[0].tokens)
    batch = make_batch([e for e in examples if len(e.tokens) == n])
    gold = torch.stack([parse_adjacency(p.tolist()) for p in batch.parents])
    hits, predicted, arg_hits, args = edge_counts(gold, batch)
    assert hits == predicted == batch.tokens.shape[0] * (n - 1) and arg_hits == args
    star = torch.zeros_like(gold)
    star[:, 0, 1:] = 1  # everything headed by the root: right exactly for its own dependents
    hits, predicted, arg_hits, args = edge_counts(star, batch)
    own = int((batch.parents == 0).sum())
    closing = int((batch.tokens == listops_data.VOCAB.index("]")).sum())
    assert hits == own and predicted == batch.tokens.shape[0] * (n - 1)
    assert arg_hits == own - batch.tokens.shape[0]  # the root's own ] is not an argument
    assert args == batch.tokens.shape[0] * (n - 1) - closing


def test_the_classifier_reads_messages_along_the_arcs() -> None:
    torch.manual_seed(0)
    gnn = TreeGNN(14, 4, 6, rounds=1, num_classes=10)
    tokens = torch.tensor([[11, 2, 9, 13]])
    none = torch.zeros(1, 4, 4)
    star = none.clone()
    star[0, 0, 1:] = 1
    only_leaf = none.clone()
    only_leaf[0, 2, 1] = 1  # an arc away from the root does not reach it in one round
    assert not torch.allclose(gnn(tokens, star), gnn(tokens, none))
    torch.testing.assert_close(gnn(tokens, only_leaf), gnn(tokens, none))


@pytest.mark.parametrize("name", ["t-reinforce+", "sparsemap"])
def test_extreme_arc_scores_give_finite_losses_and_gradients(tmp_path: Path, name: str) -> None:
    torch.manual_seed(0)
    trainable = make(tiny_config(tmp_path, estimator=name))
    batch = trainable.train_batches(1)[0]
    n = batch.tokens.shape[1]
    signs = torch.randint(2, (batch.tokens.shape[0], n, n)).float() * 2 - 1
    scores = (signs * 1e4).requires_grad_(True)
    out = trainable.estimator(trainable.latent(scores), trainable.loss_fn(batch))
    out.surrogate.mean().backward()
    assert torch.isfinite(out.value).all() and torch.isfinite(scores.grad).all()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dataset", "digits"),
        ("train_size", 0),
        ("min_length", 3),
        ("max_length", 3),
        ("max_args", 1),
        ("branch_prob", 1.5),
        ("gnn_rounds", 0),
        ("init_std", -1.0),
        ("min_length", 60),
    ],
)
def test_validate_names_the_field(tmp_path: Path, field: str, value: object) -> None:
    overrides = {field: value}
    if field == "min_length" and value == 60:
        overrides["max_length"] = 70  # longer than any expression of depth 2 with 3 arguments
    with pytest.raises(InvalidConfigValue, match=field):
        tiny_config(tmp_path, **overrides).validate()


def test_a_run_writes_results(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, estimator="t-reinforce+", epochs=1, max_steps_per_epoch=2)
    results = run(EXPERIMENT, config, tmp_path / "run", progress=False, plots=False)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["test"] == results["test"] and results["primary_metric"] == "error"
    assert results["total_steps"] == 2
    assert (tmp_path / "data" / "listops").is_dir()
