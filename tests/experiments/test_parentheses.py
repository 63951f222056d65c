"""Tests of the balanced-parentheses generator and the non-monotonic generation experiment."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path

import pytest
import torch

import latentgrad.data.parentheses as parentheses_data
from latentgrad.data.parentheses import (
    ParenthesesSettings,
    completions,
    generate_split,
    is_balanced,
    load_parentheses,
    random_balanced,
)
from latentgrad.distributions import BinaryTree
from latentgrad.experiments.parentheses import (
    END,
    EXPERIMENT,
    ParenthesesConfig,
    ParenthesesTrainable,
    _in_order,
    level_order,
    tree_children,
)
from latentgrad.lab import ESTIMATORS
from latentgrad.lab.catalog import all_experiments
from latentgrad.lab.config import InvalidConfigValue
from latentgrad.lab.registry import supported_estimators
from latentgrad.lab.runner import run

SUPPORTED = supported_estimators(EXPERIMENT)


# -- the generator -----------------------------------------------------------------------------


def test_sequences_are_balanced_and_within_the_bounds() -> None:
    settings = ParenthesesSettings(4, 12, seed=2)
    sequences = generate_split(settings, "train", 500)
    assert all(is_balanced(s) and 4 <= len(s) <= 12 for s in sequences)
    assert {len(s) for s in sequences} == {4, 6, 8, 10, 12}


def test_completions_count_catalan_numbers() -> None:
    catalan = [1, 1, 2, 5, 14, 42, 132]
    assert [completions(2 * m, 0) for m in range(7)] == catalan


def test_sequences_of_a_length_are_uniform() -> None:
    # The 14 balanced sequences of 4 pairs, 7000 draws: chi-square with 13 degrees of freedom;
    # its 1 - 1e-4 quantile is 42.0 (false-failure rate 1e-4), the seed is fixed.
    rng = random.Random(0)
    counts = Counter(random_balanced(rng, 4) for _ in range(7000))
    assert len(counts) == 14 and all(is_balanced(s) for s in counts)
    expected = 7000 / 14
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 42.0


def test_same_seed_same_files_and_files_are_read_back(tmp_path: Path, monkeypatch) -> None:
    settings, sizes = ParenthesesSettings(2, 10), (30, 5, 5)
    a = load_parentheses(tmp_path / "a", settings, sizes)
    load_parentheses(tmp_path / "b", settings, sizes)
    name = Path("parentheses") / settings.tag() / "train-30.txt"
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    other = load_parentheses(tmp_path / "c", ParenthesesSettings(2, 10, seed=1), sizes)
    assert other.train != a.train

    def refuse(*args: object) -> None:
        raise AssertionError("the files exist: nothing is generated")

    monkeypatch.setattr(parentheses_data, "generate_split", refuse)
    assert load_parentheses(tmp_path / "a", settings, sizes) == a


def test_a_file_with_an_unbalanced_line_is_refused(tmp_path: Path) -> None:
    settings = ParenthesesSettings(2, 4)
    load_parentheses(tmp_path, settings, (3, 2, 2))
    path = tmp_path / "parentheses" / settings.tag() / "valid-2.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "(()", *lines[2:]]) + "\n")
    with pytest.raises(ValueError, match="not balanced"):
        load_parentheses(tmp_path, settings, (3, 2, 2))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"min_length": 3}, "min_length"), ({"min_length": 6, "max_length": 4}, "max_length")],
)
def test_bad_settings_name_the_argument(kwargs: dict[str, int], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        ParenthesesSettings(**kwargs)


# -- the tree order ----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_level_order_productions_determine_tree_and_sequence(n: int) -> None:
    trees, _ = BinaryTree(torch.zeros(n)).support_probs()
    chars = [random.Random(n).randint(0, 1) for _ in range(n)]
    roots, left, right = tree_children(trees)
    seen = set()
    for k in range(trees.shape[0]):
        productions, sides, parents = level_order(chars, roots[k], left[k], right[k])
        assert len(productions) == len(sides) == len(parents) == 2 * n + 1
        assert productions.count(END) == n + 1
        seen.add(tuple(productions))
        nodes = [[chars[v], left[k][v], right[k][v]] for v in range(n)]
        assert _in_order(nodes, roots[k]) == "".join("()"[c] for c in chars)
    assert len(seen) == trees.shape[0]  # distinct trees, distinct productions


# -- the experiment ----------------------------------------------------------------------------


def tiny_config(tmp_path: Path, **overrides: object) -> ParenthesesConfig:
    settings: dict[str, object] = {
        "data": str(tmp_path / "data"),
        "train_size": 24,
        "valid_size": 8,
        "test_size": 8,
        "max_length": 8,
        "batch_size": 8,
        "embedding_dim": 8,
        "hidden_dim": 8,
        "eval_samples": 5,
        "num_generated": 20,
    }
    settings.update(overrides)
    return ParenthesesConfig(**settings)  # type: ignore[arg-type]


def make(config: ParenthesesConfig) -> ParenthesesTrainable:
    return ParenthesesTrainable(config, ESTIMATORS[config.estimator].resolve(config.estimator))


def test_registration_and_supported_estimators() -> None:
    assert all_experiments()["parentheses"] is EXPERIMENT
    assert EXPERIMENT.primary_metric == "nll"
    for name in ("e-reinforce+", "t-reinforce+", "relax", "exact"):
        assert name in SUPPORTED
    assert "sparsemap" not in SUPPORTED
    ParenthesesConfig().validate()


@pytest.mark.parametrize("name", SUPPORTED)
def test_every_estimator_trains_encoder_and_decoder(tmp_path: Path, name: str) -> None:
    torch.manual_seed(0)
    trainable = make(tiny_config(tmp_path, estimator=name))
    before = {k: v.detach().clone() for k, v in trainable.modules.state_dict().items()}
    metrics = trainable.train_step(trainable.train_batches(1)[0])
    assert all(math.isfinite(v) for v in metrics.values()) and metrics["loss"] > 0
    after = trainable.modules.state_dict()
    for part in ("encoder.readout.weight", "decoder.out.weight"):
        assert not torch.equal(before[part], after[part]), part
    result = trainable.evaluate("valid")
    assert set(result) == {"nll", "elbo", "valid_fraction", "generated_length"}
    assert 0 <= result["valid_fraction"] <= 1
    # log mean_k w_k >= mean_k log w_k for the same samples (Jensen): nll <= -elbo
    assert 0 < result["nll"] <= -result["elbo"] + 1e-9


def test_exact_is_refused_on_long_sequences(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_length must be at most 10"):
        make(tiny_config(tmp_path, estimator="exact", max_length=12))
    # Catalan(10) * 64 = 1,074,944 decoded sequences a step (it asked for 90 GB): refused.
    with pytest.raises(ValueError, match=r"Catalan\(max_length\) \* batch_size = 1074944"):
        make(tiny_config(tmp_path, estimator="exact", max_length=10, batch_size=64))


def test_a_decoder_that_always_ends_or_never_ends_makes_no_valid_sequence(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trainable = make(tiny_config(tmp_path))
    out = trainable.decoder.out
    with torch.no_grad():
        out.weight.zero_()
        out.bias.copy_(torch.tensor([-50.0, -50.0, 50.0]))  # always END: the empty sequence
    assert trainable.decoder.generate(5, 17) == [""] * 5
    assert trainable.evaluate("test")["valid_fraction"] == 0.0
    with torch.no_grad():
        out.bias.copy_(torch.tensor([50.0, -50.0, -50.0]))  # always "(": never finishes
    assert trainable.decoder.generate(5, 17) == [None] * 5


def test_a_decoder_that_writes_pairs_makes_valid_sequences(tmp_path: Path) -> None:
    # Root "(", its right child ")", every other slot END: "()" every time.
    torch.manual_seed(0)
    trainable = make(tiny_config(tmp_path))
    dec = trainable.decoder
    with torch.no_grad():
        for table in (dec.production, dec.side, dec.parent):
            table.weight.zero_()
        dec.side.weight[0, 0] = 1.0  # root slot
        dec.side.weight[2, 1] = 1.0  # a right slot ...
        dec.parent.weight[0, 1] = 1.0  # ... under "(" (sums to 2 on that input)
        for p in dec.lstm.parameters():
            p.zero_()
        # gates: input and output open, cell input = tanh(W x): unit 0 root, unit 1 right-of-(
        hidden = dec.lstm.hidden_size
        dec.lstm.bias_ih_l0[:hidden] = 50.0  # input gate
        dec.lstm.bias_ih_l0[3 * hidden :] = 50.0  # output gate
        dec.lstm.bias_ih_l0[hidden : 2 * hidden] = -50.0  # forget gate: no memory
        dec.lstm.weight_ih_l0[2 * hidden, 0] = 50.0
        dec.lstm.weight_ih_l0[2 * hidden + 1, 1] = 25.0
        dec.lstm.bias_ih_l0[2 * hidden + 1] = -40.0  # only when both inputs of unit 1 are on
        dec.out.weight.zero_()
        dec.out.weight[0, 0] = 200.0  # h = tanh(1) * 1 = 0.76 on unit 0 at the root
        dec.out.weight[1, 1] = 200.0
        dec.out.bias.copy_(torch.tensor([-50.0, -50.0, 50.0]))
    assert dec.generate(4, 17) == ["()"] * 4
    ids = torch.tensor([[0, 1]])
    chain = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])  # 0 -> 1, the order the decoder writes
    assert float(dec.log_joint(ids, chain).detach()) > -1e-3  # probability 1 for this tree
    assert trainable.evaluate("valid")["valid_fraction"] == 1.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dataset", "digits"),
        ("min_length", 3),
        ("max_length", 7),
        ("train_size", 0),
        ("num_generated", 0),
        ("init_std", math.nan),
    ],
)
def test_validate_names_the_field(tmp_path: Path, field: str, value: object) -> None:
    with pytest.raises(InvalidConfigValue, match=field):
        tiny_config(tmp_path, **{field: value}).validate()


def test_training_raises_the_elbo(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trainable = make(tiny_config(tmp_path, estimator="t-reinforce+", lr=0.02, max_length=6))
    start = trainable.evaluate("valid")["elbo"]
    for _ in range(4):
        for batch in trainable.train_batches(1):
            trainable.train_step(batch)
    assert trainable.evaluate("valid")["elbo"] > start + 1.0


def test_a_run_writes_results(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, estimator="relax", epochs=1, max_steps_per_epoch=2)
    results = run(EXPERIMENT, config, tmp_path / "run", progress=False, plots=False)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["test"] == results["test"] and results["primary_metric"] == "nll"
    assert results["total_steps"] == 2
    assert (tmp_path / "data" / "parentheses").is_dir()
