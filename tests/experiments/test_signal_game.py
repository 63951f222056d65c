"""Tests of the signaling game (Correia et al. 2020, emergent communication)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import latentgrad as lg
from latentgrad.experiments.signal_game import (
    ESTIMATORS as SUPPORTED,
)
from latentgrad.experiments.signal_game import (
    EXPERIMENT,
    Receiver,
    SignalGame,
    SignalGameConfig,
    SignalGameTrainable,
    default_entropy_coef,
    draw_games,
    evaluate_games,
)
from latentgrad.lab import ESTIMATORS, ResolvedEstimator
from latentgrad.lab.catalog import all_experiments
from latentgrad.lab.config import InvalidConfigValue
from latentgrad.lab.runner import run
from latentgrad.testing import ToySplits, toy_image_splits


def tiny_splits() -> ToySplits:
    return toy_image_splits((4, 4), prototypes=6, noise=0.1, sizes=(64, 32, 32))


def tiny_config(**overrides: object) -> SignalGameConfig:
    settings: dict[str, object] = {
        "vocab_size": 16,
        "num_distractors": 3,
        "sender_hidden": (8,),
        "receiver_hidden": (8,),
        "embedding_dim": 8,
        "batch_size": 8,
        "steps_per_epoch": 3,
        "eval_games": 20,
    }
    settings.update(overrides)
    return SignalGameConfig(**settings)  # type: ignore[arg-type]


def make(config: SignalGameConfig, data: ToySplits | None = None) -> SignalGameTrainable:
    chosen = ESTIMATORS[config.estimator].resolve(config.estimator)
    return SignalGameTrainable(config, chosen, tiny_splits() if data is None else data)


def rand_splits(n: int, dim: int) -> ToySplits:
    """Continuous random images: all distinct, so no two candidates tie."""
    g = torch.Generator().manual_seed(0)
    train, valid, test = (torch.rand(n, dim, generator=g) for _ in range(3))
    return ToySplits(train, valid, test, binary=False, image_shape=(dim,))


#: Loss evaluations per example of one step with 16 symbols (``None``: the sparsemax support).
LOSS_EVALS = {
    "exact": 16,
    "sparsemax": None,
    "sf": 1,
    "sf-ma": 1,
    "sfe+": 2,
    "nvil": 1,
    "gs": 2,
    "st-gs": 1,
}


@pytest.mark.parametrize("name", SUPPORTED)
def test_every_estimator_trains_and_evaluates(name: str) -> None:
    torch.manual_seed(0)
    trainable = make(tiny_config(estimator=name))
    for batch in trainable.train_batches(0):
        metrics = trainable.train_step(batch)
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["loss"] == pytest.approx(
        metrics["nll"] - trainable.entropy_coef * metrics["entropy"]
    )
    expected = LOSS_EVALS[name]
    if expected is None:
        assert 1 <= metrics["loss_evals"] <= 16
    else:
        assert metrics["loss_evals"] == expected
    for part in (trainable.game.sender, trainable.game.receiver):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads if g is not None), name
    for split in ("valid", "test"):
        result = trainable.evaluate(split)
        assert set(result) == {"failure", "success", "expected_success", "nll", "entropy"}
        assert all(math.isfinite(v) for v in result.values())
        assert 0 <= result["success"] <= 1 and result["failure"] == 1 - result["success"]


@pytest.mark.parametrize(("name", "sparse"), [("exact", False), ("sparsemax", True)])
def test_exact_estimators_sum_over_256_symbols(name: str, sparse: bool) -> None:
    torch.manual_seed(0)
    trainable = make(tiny_config(estimator=name, vocab_size=256))
    metrics = trainable.train_step(next(iter(trainable.train_batches(0))))
    if sparse:
        assert isinstance(
            trainable.game.sender_distribution(trainable.data.train[:2]), lg.SparsemaxCategorical
        )
        assert 1 <= metrics["loss_evals"] < 256
    else:
        assert metrics["loss_evals"] == 256


def test_marginalization_refuses_a_vocabulary_above_max_support() -> None:
    chosen = ResolvedEstimator("exact", lg.Marginalize(max_support=100))
    with pytest.raises(ValueError, match=r"vocab_size=256.*max_support=100"):
        SignalGameTrainable(tiny_config(vocab_size=256), chosen, tiny_splits())


def test_games_hold_the_target_once_among_distinct_distractors() -> None:
    torch.manual_seed(0)
    games = draw_games(20, num_games=500, num_distractors=5)
    candidates, targets = games.candidates, games.targets
    assert candidates.shape == (500, 6) and candidates.min() >= 0 and candidates.max() < 20
    assert ((candidates == targets.unsqueeze(1)).sum(1) == 1).all()
    assert all(len(set(row.tolist())) == 6 for row in candidates)
    assert set(games.label.tolist()) == set(range(6))  # the target's position is shuffled
    assert set(targets.tolist()) == set(range(20))


def test_games_need_enough_images() -> None:
    with pytest.raises(ValueError, match=r"needs num_distractors \+ 1 = 6 images, got 5"):
        draw_games(5, num_games=1, num_distractors=5)
    assert (
        draw_games(6, num_games=3, num_distractors=5)
        .candidates.sort(1)
        .values.eq(torch.arange(6))
        .all()
    )


def test_training_games_follow_the_global_rng() -> None:
    trainable = make(tiny_config(steps_per_epoch=4))
    batches = trainable.train_batches(0)
    assert len(batches) == 4
    torch.manual_seed(3)
    first = [g.candidates for g in batches]
    torch.manual_seed(3)
    again = [g.candidates for g in batches]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], first[1])


def test_eval_games_are_fixed_and_keep_the_global_rng() -> None:
    torch.manual_seed(0)
    trainable = make(tiny_config())
    state = torch.get_rng_state()
    first = trainable.evaluate("valid")
    assert torch.equal(torch.get_rng_state(), state)
    assert trainable.evaluate("valid") == first
    other = make(tiny_config(), tiny_splits())
    for split in ("valid", "test"):
        a, b = trainable.eval_games(split), other.eval_games(split)
        assert torch.equal(a.candidates, b.candidates) and torch.equal(a.label, b.label)
    assert trainable.eval_games("valid").label.shape == (20,)
    assert make(tiny_config(max_eval_examples=7)).eval_games("test").label.shape == (7,)
    with pytest.raises(ValueError, match="split must be one of"):
        trainable.eval_games("bogus")


@pytest.mark.parametrize("sparsemax", [False, True])
def test_exact_metrics_equal_a_brute_force_sum(sparsemax: bool) -> None:
    torch.manual_seed(0)
    vocab, images = 7, torch.rand(12, 5)
    game = SignalGame(5, vocab, (6,), (6,), 4, "tanh", sparsemax=sparsemax)
    with torch.no_grad():  # sharper sender scores: a sparse support for sparsemax
        game.sender[-1].weight.mul_(4.0)
    games = draw_games(12, num_games=9, num_distractors=3)
    metrics = evaluate_games(game, images, games, chunk=4)

    pixels = images[games.candidates]
    target = pixels[torch.arange(9), games.label]
    with torch.no_grad():
        probs = game.sender_distribution(target).probs
        loss_fn = game.loss_fn(pixels, games.label)
        nll = success = expected_success = 0.0
        for b in range(9):
            mode = int(probs[b].argmax())
            for m in range(vocab):
                message = torch.zeros(9, vocab)
                message[:, m] = 1
                loss = float(loss_fn(message)[b])
                scores = game.receiver.scores(message, game.receiver.encode(pixels))[b]
                hit = float(int(scores.argmax()) == int(games.label[b]))
                if probs[b, m] > 0:
                    nll += float(probs[b, m]) * loss
                expected_success += float(probs[b, m]) * hit
                success += hit if m == mode else 0.0
    if sparsemax:
        assert bool((probs == 0).any())
    assert metrics.nll == pytest.approx(nll / 9, rel=1e-5)
    assert metrics.success == pytest.approx(success / 9)
    assert metrics.expected_success == pytest.approx(expected_success / 9, rel=1e-5)


def test_the_right_symbol_mapping_succeeds_every_time() -> None:
    # One-hot images: sender m = image index, receiver embeds symbol and image alike.
    n = 20
    eye = torch.eye(n)
    data = ToySplits(eye, eye, eye, binary=True, image_shape=(n,))
    config = tiny_config(
        vocab_size=n,
        num_distractors=15,
        sender_hidden=(),
        receiver_hidden=(),
        embedding_dim=n,
        eval_games=200,
    )
    trainable = make(config, data)
    game = trainable.game
    with torch.no_grad():
        game.sender[0].weight.copy_(10 * eye)
        game.sender[0].bias.zero_()
        game.receiver.symbol.weight.copy_(10 * eye)
        game.receiver.image[0].weight.copy_(eye)
        game.receiver.image[0].bias.zero_()
    result = trainable.evaluate("test")
    assert result["success"] == 1.0 and result["failure"] == 0.0
    assert result["expected_success"] > 0.99 and result["nll"] < 0.01


def test_a_sender_that_says_nothing_succeeds_one_time_in_sixteen() -> None:
    # The message does not depend on the target, so the receiver's pick is a uniformly random
    # candidate: success 1/16 exactly in expectation. 2000 games: std 0.0054; the tolerance
    # 0.03 is 5.5 standard deviations (false failure rate about 4e-8).
    torch.manual_seed(0)
    config = tiny_config(num_distractors=15, eval_games=2000)
    trainable = make(config, rand_splits(100, 10))
    with torch.no_grad():
        trainable.game.sender[-1].weight.zero_()
        trainable.game.sender[-1].bias.zero_()
    result = trainable.evaluate("test")
    assert abs(result["success"] - 1 / 16) < 0.03
    assert abs(result["expected_success"] - 1 / 16) < 0.03
    assert result["entropy"] == pytest.approx(math.log(16), rel=1e-5)


@pytest.mark.parametrize(
    ("name", "coef"),
    [
        ("exact", 0.1),
        ("sparsemax", 0.1),
        ("sf", 0.01),
        ("sf-ma", 0.01),
        ("sfe+", 0.05),
        ("nvil", 0.1),
        ("gs", 0.01),
        ("st-gs", 0.01),
    ],
)
def test_entropy_coefficient_defaults_per_estimator(name: str, coef: float) -> None:
    assert set(SUPPORTED) == set(LOSS_EVALS)
    assert make(tiny_config(estimator=name)).entropy_coef == coef
    assert make(tiny_config(estimator=name, entropy_coef=0.3)).entropy_coef == 0.3
    assert make(tiny_config(estimator=name, entropy_coef=0)).entropy_coef == 0.0


def test_an_estimator_without_a_default_needs_an_explicit_coefficient() -> None:
    with pytest.raises(ValueError, match="no default entropy_coef"):
        default_entropy_coef(ESTIMATORS["sf-loo"].build())
    chosen = ResolvedEstimator("sf-loo", ESTIMATORS["sf-loo"].build())
    trainable = SignalGameTrainable(tiny_config(entropy_coef=0.02), chosen, tiny_splits())
    assert trainable.entropy_coef == 0.02


def test_the_entropy_bonus_raises_the_senders_entropy() -> None:
    def entropy_after(coef: float) -> float:
        torch.manual_seed(0)
        trainable = make(tiny_config(estimator="exact", entropy_coef=coef, lr=0.05))
        for batch in trainable.train_batches(0):
            trainable.train_step(batch)
        return trainable.evaluate("valid")["entropy"]

    assert entropy_after(10.0) > entropy_after(0.0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("vocab_size", 1),
        ("num_distractors", 0),
        ("embedding_dim", 0),
        ("steps_per_epoch", 0),
        ("eval_games", 0),
        ("sender_hidden", (8, 0)),
        ("receiver_hidden", (-1,)),
        ("entropy_coef", -0.1),
        ("entropy_coef", math.inf),
        ("activation", "gelu"),
    ],
)
def test_validate_names_the_field(field: str, value: object) -> None:
    with pytest.raises(InvalidConfigValue, match=field):
        tiny_config(**{field: value}).validate()


def test_too_many_distractors_for_a_split_names_the_field() -> None:
    with pytest.raises(InvalidConfigValue, match="num_distractors must be at most 31"):
        make(tiny_config(num_distractors=32))


def test_defaults_and_registration() -> None:
    config = SignalGameConfig()
    assert (config.vocab_size, config.num_distractors) == (256, 15)
    assert config.dataset == "digits" and config.estimator == "sparsemax"
    config.validate()
    assert all_experiments()["signal-game"] is EXPERIMENT
    assert EXPERIMENT.estimators == SUPPORTED
    assert EXPERIMENT.primary_metric == "failure"


def test_a_run_on_the_embedded_digits_writes_results(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    config = tiny_config(
        dataset="digits", estimator="sparsemax", epochs=1, steps_per_epoch=2, eval_games=30
    )
    results = run(EXPERIMENT, config, tmp_path / "run", progress=False, plots=False)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["test"] == results["test"]
    assert 0 <= results["test"]["success"] <= 1 and results["primary_metric"] == "failure"
    assert results["total_steps"] == 2


@pytest.mark.parametrize("samples", [(), (1,), (50,)])
def test_scores_are_the_same_whichever_order_computes_them(samples: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    receiver = Receiver(6, 5, (8,), 4, "relu")
    encoded = receiver.encode(torch.rand(3, 7, 6))
    messages = torch.rand(*samples, 3, 5).softmax(-1)  # relaxed messages
    expected = torch.einsum("...be,bce->...bc", receiver.symbol(messages), encoded)
    torch.testing.assert_close(receiver.scores(messages, encoded), expected)
