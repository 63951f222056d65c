"""Emergent communication in a signaling game: Correia, Niculae, Aziz & Martins (2020).

A *sender* sees a target image ``x_t`` and sends one symbol ``m`` of a vocabulary of 256,
drawn from ``q(m | x_t)`` (a softmax categorical, or a sparsemax categorical for the
``sparsemax`` estimator). A *receiver* sees ``m`` and 16 candidate images (the target and 15
distractors, shuffled) and picks one with ``p(c | m, x_1..x_16) = softmax_c <e(m), g(x_c)>``:
``e`` embeds the symbol (a linear map of its one-hot vector, so relaxed messages work too) and
``g`` encodes an image (an MLP). Training minimizes

    E_{m ~ q(m | x_t)} [-log p(t | m, x_1..x_16)]  -  entropy_coef * H(q(. | x_t)),

the receiver's negative log-likelihood of the target under the sender's message, minus an
entropy bonus for the sender. The receiver's parameters get the pathwise gradient of the loss;
the sender's come from the run's estimator (the message is discrete). The test metric is
*communication success*: the fraction of games in which the receiver, given the sender's most
probable message, picks the target (``failure = 1 - success`` is the metric runs sort by).

Paper settings kept as defaults: 256 symbols, 16 candidates, batches of 64 games, 256-dim
embeddings, Adam with ``lr = 1e-3``, the receiver's negative log-likelihood as the loss,
communication success as the metric, and the entropy bonus of the authors' scripts as
per-estimator defaults (:func:`default_entropy_coef`). Choices that differ: the paper uses
ImageNet (VGG) features; here the images are the pixels of an image data set (the embedded
8x8 ``digits`` by default, which runs offline in seconds; ``fashion-mnist`` for paper-like
runs), used as grey levels in [0, 1] without binarization, so the sender and the receiver's
image encoder are MLPs (one hidden layer of 256 ReLU units) rather than the paper's networks
on features. The authors' scripts train for 500 epochs and use ``lr = 5e-3`` for
sparsemax; in their SFE and SFE+ scripts the receiver also samples its pick and both agents
learn by REINFORCE from the 0/1 success. Here every estimator trains the sender on the
receiver's loss and the receiver by its gradient, and the length of training is
``epochs x steps_per_epoch``. Training games are drawn afresh every step; validation and test
use a fixed set of ``eval_games`` games per split (1024, as in the authors' scripts).

References:
    [1] Correia, Niculae, Aziz & Martins, "Efficient Marginalization of Discrete and
        Structured Latent Variables via Sparsity", NeurIPS 2020.
    [2] Lazaridou, Peysakhovich & Baroni, "Multi-Agent Cooperation and the Emergence of
        (Natural) Language", ICLR 2017 (the game).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from latentgrad.distributions import Categorical, SparsemaxCategorical
from latentgrad.estimators import (
    NVIL,
    Estimator,
    GumbelSoftmax,
    IndependentSample,
    Marginalize,
    MovingAverage,
    ScoreFunction,
)
from latentgrad.lab.config import (
    is_positive_int,
    require,
    require_choice,
    require_nonnegative,
    require_positive_ints,
)
from latentgrad.lab.experiment import Experiment, ExperimentConfig, ResolvedEstimator
from latentgrad.lab.images import (
    ACTIVATIONS,
    EVAL_DATA_SEED,
    SPLITS,
    DataSplitsLike,
    check_split,
    has_relaxed_value,
    make_optimizer,
    mlp,
)
from latentgrad.schedules import Scheduled

#: The estimators that apply; each is checked with a single categorical of 256 values.
#: ``sf-ma`` (a running-mean baseline) is the paper's SFE row; ``sf`` has no baseline.
ESTIMATORS = ("exact", "sparsemax", "sf", "sf-ma", "sfe+", "nvil", "gs", "st-gs")

#: Games evaluated at once by :func:`evaluate_games` (memory: about ``EVAL_CHUNK * 16``
#: candidate images and ``vocab_size * EVAL_CHUNK * 16`` scores).
EVAL_CHUNK = 500


@dataclass
class SignalGameConfig(ExperimentConfig):
    """Settings of the signaling game (see the module docstring for what is the paper's).

    Attributes:
        vocab_size: symbols the sender can send (paper: 256).
        num_distractors: images shown besides the target (paper: 15, so 16 candidates); at
            most the size of a split minus one.
        sender_hidden: hidden layer widths of the sender ``image -> symbol logits``.
        receiver_hidden: hidden layer widths of the receiver's image encoder.
        embedding_dim: width of the receiver's symbol and image embeddings.
        activation: hidden units, ``"relu"`` or ``"tanh"``.
        entropy_coef: weight of the sender's entropy bonus; ``None``: the estimator's
            default (exact, sparsemax and nvil 0.1; sfe+ 0.05; sf, sf-ma, gs and st-gs 0.01).
        steps_per_epoch: training steps (batches of ``batch_size`` fresh games) per epoch;
            the game is not a pass over a data set.
        eval_games: games in the fixed validation and test sets (fewer with
            ``max_eval_examples``).

    ``eval_samples`` is unused: the evaluation sums over the symbols exactly.
    """

    epochs: int = 50
    batch_size: int = 64
    lr: float = 1e-3
    dataset: str = "digits"
    estimator: str = "sparsemax"
    vocab_size: int = 256
    num_distractors: int = 15
    sender_hidden: tuple[int, ...] = (256,)
    receiver_hidden: tuple[int, ...] = (256,)
    embedding_dim: int = 256
    activation: Literal["relu", "tanh"] = "relu"
    entropy_coef: float | None = None
    steps_per_epoch: int = 100
    eval_games: int = 1024

    def validate(self) -> None:
        """Check the shared settings, then the game's (see :meth:`ExperimentConfig.validate`).

        The number of distractors is checked against the data set's splits when the game is
        built.

        Raises:
            InvalidConfigValue: (a ``ValueError``) naming the first field out of range.

        Example:
            >>> SignalGameConfig(num_distractors=0).validate()
            Traceback (most recent call last):
            ...
            latentgrad.lab.config.InvalidConfigValue: num_distractors must be a positive int, got 0
        """
        super().validate()
        require_choice(self, "activation", ACTIVATIONS)
        vocab = self.vocab_size
        require(is_positive_int(vocab) and vocab >= 2, "vocab_size", "an int >= 2", vocab)
        require_positive_ints(
            self, "num_distractors", "embedding_dim", "steps_per_epoch", "eval_games"
        )
        for name in ("sender_hidden", "receiver_hidden"):
            widths = getattr(self, name)
            ok = isinstance(widths, tuple) and all(is_positive_int(w) for w in widths)
            require(ok, name, "a tuple of positive widths", widths)
        require_nonnegative(self, "entropy_coef", optional=True)


class Games(NamedTuple):
    """A batch of games: candidate images (by index into a split) and the target's position.

    Attributes:
        candidates: indices of the candidate images, shape ``(G, C)``; each row holds the
            target once and ``C - 1`` distinct other images, in random order.
        label: position of the target in each row, shape ``(G,)``.
    """

    candidates: Tensor
    label: Tensor

    @property
    def targets(self) -> Tensor:
        """Indices of the target images, shape ``(G,)``."""
        return self.candidates.gather(1, self.label.unsqueeze(1)).squeeze(1)


def draw_games(
    num_images: int,
    num_games: int,
    num_distractors: int,
    generator: torch.Generator | None = None,
) -> Games:
    """``num_games`` games over images ``0 .. num_images - 1``.

    Each game's target is uniform over the images (independently across games); its
    distractors are ``num_distractors`` distinct other images, uniform without replacement;
    the candidates are then shuffled. Draws from ``generator`` (torch's global RNG if
    ``None``), on the CPU.

    Raises:
        ValueError: if there are not ``num_distractors + 1`` images.

    Example:
        >>> games = draw_games(10, num_games=4, num_distractors=3)
        >>> games.candidates.shape, games.label.shape
        (torch.Size([4, 4]), torch.Size([4]))
        >>> bool((games.candidates == games.targets.unsqueeze(1)).sum(1).eq(1).all())
        True
    """
    if num_distractors + 1 > num_images:
        raise ValueError(
            f"a game needs num_distractors + 1 = {num_distractors + 1} images, got {num_images}"
        )
    targets = torch.randint(num_images, (num_games,), generator=generator)
    # A uniform subset of the other images: the smallest keys of i.i.d. uniforms, with the
    # indices at or past the target shifted by one so the target is never drawn.
    keys = torch.rand(num_games, num_images - 1, generator=generator)
    others = keys.topk(num_distractors, dim=1, largest=False).indices
    others = others + (others >= targets.unsqueeze(1)).long()
    ordered = torch.cat([targets.unsqueeze(1), others], dim=1)
    order = torch.rand(ordered.shape, generator=generator).argsort(dim=1)
    return Games(ordered.gather(1, order), (order == 0).long().argmax(dim=1))


class GameBatches:
    """The training batches of one epoch: ``steps`` batches of fresh games (global RNG).

    Each batch is drawn when the iterator reaches it; ``len`` is the number of batches.

    Example:
        >>> batches = GameBatches(num_images=20, batch_size=5, num_distractors=3, steps=2)
        >>> len(batches), [g.candidates.shape for g in batches]
        (2, [torch.Size([5, 4]), torch.Size([5, 4])])
    """

    def __init__(self, num_images: int, batch_size: int, num_distractors: int, steps: int) -> None:
        self.num_images = num_images
        self.batch_size = batch_size
        self.num_distractors = num_distractors
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[Games]:
        for _ in range(self.steps):
            yield draw_games(self.num_images, self.batch_size, self.num_distractors)


class Receiver(nn.Module):
    """Scores candidate images against a message: ``<e(m), g(x_c)>``, softmax over candidates.

    Args:
        input_dim: pixels ``D`` of an image.
        vocab_size: symbols ``V``.
        hidden: hidden widths of the image encoder ``g``.
        embedding_dim: width ``E`` of both embeddings.
        activation: hidden units of ``g``.

    Shape:
        messages: ``S + (B, V)`` (one-hot or relaxed); candidates: ``(B, C, D)``; encoded
        candidates: ``(B, C, E)``; scores: ``S + (B, C)``; losses: ``S + (B,)``.

    Example:
        >>> import torch
        >>> receiver = Receiver(6, 5, (8,), 4, "relu")
        >>> encoded = receiver.encode(torch.rand(3, 7, 6))
        >>> messages = torch.eye(5)[torch.randint(5, (2, 3))]
        >>> receiver.loss(messages, encoded, torch.zeros(3, dtype=torch.long)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        input_dim: int,
        vocab_size: int,
        hidden: Sequence[int],
        embedding_dim: int,
        activation: str,
    ) -> None:
        super().__init__()
        self.symbol = nn.Linear(vocab_size, embedding_dim, bias=False)
        self.image = mlp([input_dim, *hidden, embedding_dim], activation)

    def encode(self, candidates: Tensor) -> Tensor:
        """``g(x_c)`` for every candidate, ``(B, C, D) -> (B, C, E)``."""
        return self.image(candidates)

    def scores(self, messages: Tensor, encoded: Tensor) -> Tensor:
        """``<e(m), g(x_c)>``, ``S + (B, V)`` messages to ``S + (B, C)`` scores.

        The scores are linear in the message. Many messages per game (exact marginalization:
        all ``V``) are scored through the table of every symbol's scores, ``(B, V, C)``, a
        few by embedding each message; the cheaper order is chosen, the result is the same.
        """
        vocab = messages.shape[-1]
        games, candidates, width = encoded.shape
        rows = messages.numel() // vocab
        direct = rows * width * (vocab + candidates)
        via_table = games * vocab * candidates * (width + rows // max(games, 1))
        if via_table < direct:
            table = torch.einsum("ev,bce->bvc", self.symbol.weight, encoded)
            return torch.einsum("...bv,bvc->...bc", messages, table)
        return torch.einsum("...be,bce->...bc", self.symbol(messages), encoded)

    def loss(self, messages: Tensor, encoded: Tensor, label: Tensor) -> Tensor:
        """``-log p(label | m, candidates)``, shape ``S + (B,)``."""
        log_p = self.scores(messages, encoded).log_softmax(-1)
        index = label.expand(log_p.shape[:-1]).unsqueeze(-1)
        return -log_p.gather(-1, index).squeeze(-1)

    def all_message_scores(self, encoded: Tensor) -> Tensor:
        """The scores under every symbol, shape ``(V, B, C)`` (no ``(V, B, V)`` one-hot tensor)."""
        return torch.einsum("ev,bce->vbc", self.symbol.weight, encoded)


class SignalGame(nn.Module):
    """The sender ``x_t -> q(m | x_t)`` and the :class:`Receiver`.

    Args:
        input_dim: pixels ``D`` of an image.
        vocab_size: symbols ``V``.
        sender_hidden: hidden widths of the sender.
        receiver_hidden: hidden widths of the receiver's image encoder.
        embedding_dim: width of the receiver's embeddings.
        activation: hidden units.
        sparsemax: the sender's distribution is a :class:`SparsemaxCategorical` (else a
            softmax :class:`Categorical`).

    Example:
        >>> import torch
        >>> game = SignalGame(6, 5, (8,), (8,), 4, "relu")
        >>> candidates, label = torch.rand(3, 7, 6), torch.zeros(3, dtype=torch.long)
        >>> q = game.sender_distribution(candidates[:, 0])
        >>> game.loss_fn(candidates, label)(q.sample((2,))).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        input_dim: int,
        vocab_size: int,
        sender_hidden: Sequence[int],
        receiver_hidden: Sequence[int],
        embedding_dim: int,
        activation: str,
        sparsemax: bool = False,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.sparsemax = sparsemax
        self.sender = mlp([input_dim, *sender_hidden, vocab_size], activation)
        self.receiver = Receiver(input_dim, vocab_size, receiver_hidden, embedding_dim, activation)

    def sender_distribution(self, target: Tensor) -> Categorical | SparsemaxCategorical:
        """``q(m | x_t)`` with batch shape ``(B,)`` and one-hot events ``(V,)``."""
        scores = self.sender(target)
        if self.sparsemax:
            return SparsemaxCategorical(scores)
        return Categorical(logits=scores)

    def loss_fn(self, candidates: Tensor, label: Tensor) -> Callable[[Tensor], Tensor]:
        """``loss_fn(m) = -log p(label | m, candidates)`` for messages ``S + (B, V)``.

        The candidates are encoded once, here; each call scores all its messages at once.
        """
        encoded = self.receiver.encode(candidates)

        def loss_fn(messages: Tensor) -> Tensor:
            return self.receiver.loss(messages, encoded, label)

        return loss_fn


def default_entropy_coef(estimator: Estimator) -> float:
    """The entropy bonus of the paper's scripts for ``estimator``.

    Exact marginalization (softmax or sparsemax): 0.1; score function without a baseline or
    with a running mean: 0.01; with the independent-sample baseline (SFE+): 0.05; with NVIL:
    0.1; Gumbel-Softmax and its straight-through version: 0.01.

    Raises:
        ValueError: for another estimator (set ``entropy_coef`` explicitly).

    Example:
        >>> import latentgrad as lg
        >>> default_entropy_coef(lg.Marginalize()), default_entropy_coef(lg.GumbelSoftmax())
        (0.1, 0.01)
    """
    if isinstance(estimator, Marginalize):
        return 0.1
    if isinstance(estimator, GumbelSoftmax):
        return 0.01
    if type(estimator) is ScoreFunction:
        baseline = estimator.baseline
        if baseline is None or isinstance(baseline, MovingAverage):
            return 0.01
        if isinstance(baseline, IndependentSample):
            return 0.05
        if isinstance(baseline, NVIL):
            return 0.1
    raise ValueError(
        f"no default entropy_coef for {estimator!r}; set entropy_coef (--entropy-coef)"
    )


class GameMetrics(NamedTuple):
    """Evaluation of a set of games (means over the games).

    Attributes:
        success: the receiver, given the sender's most probable message, picks the target.
        expected_success: the probability of success under ``q`` (exact sum over symbols).
        nll: ``E_q[-log p(target | m, candidates)]``, summed exactly over the symbols of
            nonzero probability.
        entropy: ``H(q(. | x_t))`` in nats.
    """

    success: float
    expected_success: float
    nll: float
    entropy: float


@torch.no_grad()
def evaluate_games(
    game: SignalGame, images: Tensor, games: Games, chunk: int = EVAL_CHUNK
) -> GameMetrics:
    """Exact metrics of ``game`` on ``games`` over ``images``, ``chunk`` games at a time.

    Every symbol's loss comes from one score tensor ``(V, G, C)``; symbols of probability 0
    (sparsemax) do not enter the sums.

    Example:
        >>> import torch
        >>> game = SignalGame(6, 5, (8,), (8,), 4, "relu")
        >>> metrics = evaluate_games(game, torch.rand(20, 6), draw_games(20, 30, 3))
        >>> 0 <= metrics.success <= 1 and metrics.nll > 0
        True
    """
    totals = torch.zeros(4, dtype=torch.float64)
    for candidates, label in zip(
        games.candidates.split(chunk), games.label.split(chunk), strict=True
    ):
        candidates = candidates.to(images.device)
        label = label.to(images.device)
        pixels = images[candidates]
        q = game.sender_distribution(pixels[torch.arange(len(label)), label])
        probs = q.probs.T.double()  # (V, G)
        scores = game.receiver.all_message_scores(game.receiver.encode(pixels))
        log_p = scores.log_softmax(-1).double()
        losses = -log_p.gather(-1, label.expand(probs.shape).unsqueeze(-1)).squeeze(-1)
        hits = (scores.argmax(-1) == label).double()  # (V, G)
        best = probs.argmax(0, keepdim=True)  # ties: the lowest symbol, as q.mode()
        totals += torch.stack(
            [
                hits.gather(0, best).sum(),
                (probs * hits).sum(),
                torch.where(probs > 0, probs * losses, 0.0).sum(),
                q.entropy().double().sum(),
            ]
        ).cpu()
    return GameMetrics(*(totals / games.label.numel()).tolist())


class SignalGameTrainable:
    """The game, its estimator and optimizer, as the runner drives them.

    Args:
        config: the experiment settings.
        chosen: the estimator the runner resolved from ``config.estimator``, with the latent
            family it asks for (``"sparsemax"``: the sender's distribution is sparsemax).
        data: splits of shape ``(N, D)`` with values in [0, 1], used as they are.

    Raises:
        InvalidConfigValue: if a split has fewer than ``num_distractors + 1`` images.
        ValueError: if the estimator sums over fewer values than ``vocab_size``.

    Attributes:
        game: the :class:`SignalGame`.
        estimator: the gradient estimator of the sender (``chosen.estimator``).
        entropy_coef: the weight of the entropy bonus in use.
        modules: ``{"game", "estimator"}``.
        optimizer: Adam over the game's and the estimator's parameters (NVIL's network).
    """

    def __init__(
        self, config: SignalGameConfig, chosen: ResolvedEstimator, data: DataSplitsLike
    ) -> None:
        config.validate()
        self.config = config
        self.data = data
        for split in SPLITS:
            size = getattr(data, split).shape[0]
            require(
                config.num_distractors + 1 <= size,
                "num_distractors",
                f"at most {size - 1} (the {split} split has {size} images)",
                config.num_distractors,
            )
        self.estimator = chosen.estimator
        if isinstance(self.estimator, Marginalize) and (
            config.vocab_size > self.estimator.max_support
        ):
            raise ValueError(
                f"estimator {chosen.name!r} sums over vocab_size={config.vocab_size} symbols, "
                f"more than its max_support={self.estimator.max_support}"
            )
        self.entropy_coef = (
            default_entropy_coef(self.estimator)
            if config.entropy_coef is None
            else float(config.entropy_coef)
        )
        self.game = SignalGame(
            data.train.shape[-1],
            config.vocab_size,
            config.sender_hidden,
            config.receiver_hidden,
            config.embedding_dim,
            config.activation,
            sparsemax=chosen.latent == "sparsemax",
        )
        self.modules = nn.ModuleDict({"game": self.game, "estimator": self.estimator})
        self.optimizer = make_optimizer("adam", self.modules.parameters(), config.lr)
        self._eval_games: dict[str, Games] = {}

    def train_batches(self, epoch: int) -> GameBatches:
        """``steps_per_epoch`` batches of fresh training games (torch's global RNG)."""
        c = self.config
        return GameBatches(
            self.data.train.shape[0], c.batch_size, c.num_distractors, c.steps_per_epoch
        )

    def train_step(self, batch: Games) -> Mapping[str, float]:
        """One optimizer step on the receiver's loss minus the sender's entropy bonus.

        Reports ``loss`` (that objective, with the loss at the discrete messages), ``nll``
        (the receiver's loss alone), ``entropy`` (of the sender) and ``loss_evals``. A
        Gumbel-Softmax without ``honest_value`` evaluates the loss at relaxed messages only:
        then ``relaxed_loss`` is that objective and ``loss`` and ``nll`` are NaN.
        """
        x = self.data.train
        candidates = batch.candidates.to(x.device)
        label = batch.label.to(x.device)
        pixels = x[candidates]
        target = pixels[torch.arange(len(label), device=x.device), label]
        self.modules.train()
        self.optimizer.zero_grad(set_to_none=True)
        q = self.game.sender_distribution(target)
        out = self.estimator(q, self.game.loss_fn(pixels, label), context=target)
        entropy = q.entropy()
        (out.surrogate.mean() - self.entropy_coef * entropy.mean()).backward()
        self.optimizer.step()
        if isinstance(self.estimator, Scheduled):
            self.estimator.step()
        nll = float(out.value.mean())
        entropy_value = float(entropy.detach().mean())
        metrics = {
            "loss": nll - self.entropy_coef * entropy_value,
            "nll": nll,
            "entropy": entropy_value,
            "loss_evals": float(out.loss_evals),
        }
        if has_relaxed_value(self.estimator):
            metrics.update(loss=math.nan, nll=math.nan, relaxed_loss=metrics["loss"])
        return metrics

    def eval_games(self, split: str) -> Games:
        """The fixed games of ``split``: drawn once from seed ``EVAL_DATA_SEED``, the global
        RNG untouched; ``eval_games`` of them (at most ``max_eval_examples``)."""
        check_split(split)
        if split not in self._eval_games:
            count = self.config.eval_games
            if self.config.max_eval_examples is not None:
                count = min(count, self.config.max_eval_examples)
            generator = torch.Generator().manual_seed(EVAL_DATA_SEED)
            size = getattr(self.data, split).shape[0]
            self._eval_games[split] = draw_games(
                size, count, self.config.num_distractors, generator
            )
        return self._eval_games[split]

    def evaluate(self, split: str) -> Mapping[str, float]:
        """``failure`` (``1 - success``, the primary metric), ``success``,
        ``expected_success``, ``nll`` (exact) and ``entropy`` on the fixed games of ``split``."""
        self.modules.eval()
        metrics = evaluate_games(self.game, getattr(self.data, split), self.eval_games(split))
        return {"failure": 1.0 - metrics.success, **metrics._asdict()}


def build(config: SignalGameConfig, chosen: ResolvedEstimator) -> SignalGameTrainable:
    """Load ``config.dataset`` and build the game around ``chosen``'s estimator."""
    from latentgrad.data import load_dataset

    return SignalGameTrainable(config, chosen, load_dataset(config.dataset, data_dir=config.data))


EXPERIMENT = Experiment(
    name="signal-game",
    description=(
        "emergent communication: a sender names a target image with one of 256 symbols, a "
        "receiver picks it among 16 images (Correia et al. 2020); digits or Fashion-MNIST"
    ),
    config_class=SignalGameConfig,
    build=build,
    primary_metric="failure",
    estimators=ESTIMATORS,
)
