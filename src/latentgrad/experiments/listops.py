"""Unsupervised parsing of simplified ListOps with a latent arborescence (Struminsky et al. 2021).

The data are MIN / MAX / MED expressions over digits with their values
(:mod:`latentgrad.data.listops`: generated, seeded, written to the data directory on first use).
The model never sees a parse:

* an *encoder* (token embeddings and a bidirectional LSTM) gives arc scores
  ``s[u, v] = a_u^T W b_v`` (``a``, ``b`` two linear maps of the LSTM states, ``W`` bilinear,
  drawn ``N(0, init_std^2 / hidden)``) over the tokens of an expression;
* a latent arborescence over the tokens rooted at token 0 (the outermost operator) is sampled
  from :class:`~latentgrad.Arborescence` (recursive Gumbel-max: Chu-Liu-Edmonds on exponential
  noise) with those scores, or, for ``--estimator sparsemap``, SparseMAP over the
  arborescences with the same scores as edge scores, its few structures summed exactly;
* a *classifier*, a graph neural network, embeds the tokens and passes ``gnn_rounds`` rounds of
  messages along the arcs, from dependents to heads (``h_v <- MLP([x_v, sum_{v -> c} h_c])``,
  one MLP shared by the rounds, so that round ``r`` can evaluate the subexpressions of height
  ``r``), and predicts the value (10 classes) from the state of token 0.

The loss is the classifier's cross-entropy, ``E_q[CE(y, GNN(x, X))]``; the encoder learns from
the estimator, the classifier from the pathwise gradient. Both are trained by Adam. Batches hold
expressions of one length (:func:`~latentgrad.data.sequences.length_batches`), since a batch of
arborescences has one size. RELAX's critic sees the log-noise of the ``n x n`` edges padded with
zeros to ``max_length x max_length`` (:class:`PaddedCritic`; zero is also what RELAX gives it
for absent edges), so one critic serves every length.

Estimators: ``e-reinforce+``, ``t-reinforce+`` (3 samples, leave-one-out), ``relax`` (1
sample by default, ``--num-samples 3`` for the same budget), ``sparsemap`` (exact sum over the
SparseMAP structures; from all-zero scores its gradient is zero on arborescences, which the
random encoder avoids: ``init_std > 0``), and the plain ``e-reinforce``, ``t-reinforce``.

Metrics (valid and test): the classifier on the MAP arborescence under the scores (the one of
largest total score, :meth:`Arborescence.mode`): ``accuracy``, ``error = 1 - accuracy`` (the
primary metric) and ``nll`` (its cross-entropy), and the MAP arborescence against the gold
parse: ``edge_precision``, the fraction of its ``n - 1`` arcs that are gold arcs (an operator to
one of its arguments or to its closing bracket), and ``edge_recall``, the fraction of the gold
*argument* arcs (the syntax: closing brackets left out) that it has. ``sampled_accuracy`` is
the classifier on one sample of the latent (the expectation under SparseMAP).

Budget: the defaults follow the shape of Struminsky et al.'s setup (100,000 training
expressions of 10 to 50 tokens, depth at most 5; hidden sizes, learning rate and epochs are
ours). CPU cost grows fast with the length: T-REINFORCE's trace log-probability and SparseMAP's
active set at 50 tokens take seconds per batch; use smaller ``max_length`` for quick runs.

References:
    [1] Struminsky, Gadetsky, Rakitin, Karpushkin & Vetrov, "Leveraging recursive Gumbel-max
        trick for approximate inference in combinatorial spaces", NeurIPS 2021.
    [2] Paulus, Choi, Tarlow, Krause & Maddison, "Gradient Estimation with Stochastic Softmax
        Tricks", NeurIPS 2020 (the ListOps setup).
    [3] Correia, Niculae, Aziz & Martins, "Efficient Marginalization of Discrete and
        Structured Latent Variables via Sparsity", NeurIPS 2020 (SparseMAP).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from latentgrad.data.listops import (
    CLOSE,
    VOCAB,
    ListOpsExample,
    ListOpsSettings,
    ListOpsSplits,
    encode,
    load_listops,
)
from latentgrad.distributions import Arborescence
from latentgrad.estimators import RELAX, LatentDistribution
from latentgrad.experiments.rgm_toy import make_sparsemap
from latentgrad.lab.config import (
    is_positive_int,
    require,
    require_nonnegative,
    require_positive_ints,
)
from latentgrad.lab.experiment import Experiment, ExperimentConfig, ResolvedEstimator
from latentgrad.lab.steps import batches_by_length, estimator_step

ESTIMATORS = ("e-reinforce+", "t-reinforce+", "relax", "sparsemap", "e-reinforce", "t-reinforce")
NUM_CLASSES = 10


@dataclass
class ListOpsConfig(ExperimentConfig):
    """Settings of the ListOps parsing experiment (module docstring).

    ``eval_samples`` is unused (the evaluation reads the MAP structure); ``dataset`` must be
    ``listops``; ``data`` is where the generated splits are written.

    Attributes:
        train_size: training expressions.
        valid_size: validation expressions.
        test_size: test expressions.
        min_length: fewest tokens of an expression.
        max_length: most tokens of an expression.
        max_depth: most nested operators.
        max_args: most arguments of an operator.
        branch_prob: probability that an argument is itself an expression.
        data_seed: seeds the generator of the expressions.
        embedding_dim: token embedding width (encoder and classifier).
        hidden_dim: LSTM width per direction, arc-score width and the classifier's width.
        gnn_rounds: message-passing rounds of the classifier (the gold parse needs
            max_depth).
        init_std: scale of the bilinear arc-score weights at initialization (0: all scores 0
            at the start, where SparseMAP has no gradient).
    """

    estimator: str = "t-reinforce+"
    epochs: int = 20
    batch_size: int = 100
    lr: float = 1e-3
    dataset: str = "listops"
    train_size: int = 100_000
    valid_size: int = 10_000
    test_size: int = 10_000
    min_length: int = 10
    max_length: int = 50
    max_depth: int = 5
    max_args: int = 5
    branch_prob: float = 0.25
    data_seed: int = 0
    embedding_dim: int = 64
    hidden_dim: int = 64
    gnn_rounds: int = 5
    init_std: float = 1.0

    def validate(self) -> None:
        """Check the shared settings, then these (see :meth:`ExperimentConfig.validate`).

        Example:
            >>> ListOpsConfig(gnn_rounds=0).validate()
            Traceback (most recent call last):
            ...
            latentgrad.lab.config.InvalidConfigValue: gnn_rounds must be a positive int, got 0
        """
        super().validate()
        require(self.dataset == "listops", "dataset", "listops", self.dataset)
        require_positive_ints(
            self,
            "train_size",
            "valid_size",
            "test_size",
            "embedding_dim",
            "hidden_dim",
            "gnn_rounds",
            "max_depth",
        )
        low = self.min_length
        require(is_positive_int(low) and low >= 4, "min_length", "an int >= 4", low)
        high = self.max_length
        require(
            is_positive_int(high) and high >= low, "max_length", f"an int >= min_length={low}", high
        )
        args = self.max_args
        require(is_positive_int(args) and args >= 2, "max_args", "an int >= 2", args)
        p = self.branch_prob
        ok = isinstance(p, (int, float)) and not isinstance(p, bool) and 0 <= p < 1
        require(ok, "branch_prob", "a number in [0, 1)", p)
        require(isinstance(self.data_seed, int), "data_seed", "an int", self.data_seed)
        require_nonnegative(self, "init_std")
        try:
            self.settings()
        except ValueError as err:
            require(False, "min_length", f"reachable ({err})", low)

    def settings(self) -> ListOpsSettings:
        """The generator settings of the data."""
        return ListOpsSettings(
            self.min_length,
            self.max_length,
            self.max_depth,
            self.max_args,
            float(self.branch_prob),
            self.data_seed,
        )


class ArcScorer(nn.Module):
    """Arc scores over the tokens of expressions of one length: a BiLSTM and a bilinear form.

    Args:
        vocab_size: token ids.
        embedding_dim: embedding width.
        hidden_dim: LSTM width per direction and width of the head/dependent features.
        init_std: the bilinear weights start at ``N(0, init_std^2 / hidden_dim)``.

    Shape:
        tokens ``(B, n)`` (long) to scores ``(B, n, n)``, ``scores[b, u, v]`` the arc ``u -> v``.

    Example:
        >>> scorer = ArcScorer(14, 8, 6, init_std=1.0)
        >>> scorer(torch.randint(14, (3, 5))).shape
        torch.Size([3, 5, 5])
    """

    def __init__(
        self, vocab_size: int, embedding_dim: int, hidden_dim: int, init_std: float
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_dim, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden_dim, hidden_dim)
        self.dependent = nn.Linear(2 * hidden_dim, hidden_dim)
        self.bilinear = nn.Parameter(
            torch.randn(hidden_dim, hidden_dim) * init_std / math.sqrt(hidden_dim)
        )

    def forward(self, tokens: Tensor) -> Tensor:
        states, _ = self.lstm(self.embedding(tokens))
        heads = torch.tanh(self.head(states))
        dependents = torch.tanh(self.dependent(states))
        return heads @ self.bilinear @ dependents.transpose(-1, -2)


class TreeGNN(nn.Module):
    """Message passing along the arcs of a structure, from dependents to heads; the state of
    token 0 gives class logits.

    ``h^0_v = MLP([x_v, 0])`` and ``h^{r+1}_v = MLP([x_v, sum_c A[v, c] h^r_c])`` with ``x_v``
    the token's embedding; the logits are a linear map of ``h^R_0``. ``A`` may be any real
    matrix (a sample, or a structure of a sparse support).

    Args:
        vocab_size: token ids.
        embedding_dim: embedding width.
        hidden_dim: state width.
        rounds: ``R``.
        num_classes: outputs.

    Shape:
        tokens ``(B, n)``, adjacency ``S + (B, n, n)`` to logits ``S + (B, num_classes)``.

    Example:
        >>> gnn = TreeGNN(14, 8, 6, rounds=2, num_classes=10)
        >>> gnn(torch.randint(14, (3, 5)), torch.rand(2, 3, 5, 5)).shape
        torch.Size([2, 3, 10])
    """

    def __init__(
        self, vocab_size: int, embedding_dim: int, hidden_dim: int, rounds: int, num_classes: int
    ) -> None:
        super().__init__()
        self.rounds = rounds
        self.hidden_dim = hidden_dim
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.update = nn.Sequential(
            nn.Linear(embedding_dim + hidden_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.Tanh(),
        )
        self.out = nn.Linear(hidden_dim, num_classes)

    def forward(self, tokens: Tensor, adjacency: Tensor) -> Tensor:
        embedded = self.embedding(tokens)
        x = embedded.expand(*adjacency.shape[:-1], embedded.shape[-1])
        adjacency = adjacency.to(x.dtype)
        messages = x.new_zeros(*adjacency.shape[:-1], self.hidden_dim)
        for _ in range(self.rounds + 1):
            h = self.update(torch.cat([x, messages], -1))
            messages = adjacency @ h
        return self.out(h[..., 0, :])


class PaddedCritic(nn.Module):
    """A RELAX critic for structures of any size up to ``max_size``: the log-noise of a
    structure of ``n`` vertices (``n * n`` edges, or ``n`` items with ``square=False``) is
    padded with zeros to ``max_size`` (``max_size^2``) before ``critic`` sees it, keeping each
    item at the same place (the edge ``u -> v`` at ``u * max_size + v``).

    Args:
        critic: the critic of fixed input width (e.g. :class:`~latentgrad.estimators.relax.MLPCritic`).
        max_size: the largest ``n``.
        square: items are the ``n * n`` edges (else ``n`` positions).

    Example:
        >>> from latentgrad.estimators.relax import MLPCritic
        >>> critic = PaddedCritic(MLPCritic(num_items=16), max_size=4)
        >>> critic(torch.randn(2, 9)).shape  # n = 3
        torch.Size([2])
    """

    def __init__(self, critic: nn.Module, max_size: int, square: bool = True) -> None:
        super().__init__()
        self.critic = critic
        self.max_size = max_size
        self.square = square

    @property
    def width(self) -> int:
        """The critic's input width."""
        return self.max_size**2 if self.square else self.max_size

    def forward(self, noise: Tensor) -> Tensor:
        d = noise.shape[-1]
        if self.square:
            n = math.isqrt(d)
            if n * n != d or n > self.max_size:
                raise ValueError(
                    f"noise must have n * n items with n <= {self.max_size}, got {d} items"
                )
            grid = noise.reshape(*noise.shape[:-1], n, n)
            pad = self.max_size - n
            padded = F.pad(grid, (0, pad, 0, pad)).flatten(-2)
        else:
            if d > self.max_size:
                raise ValueError(f"noise must have at most {self.max_size} items, got {d}")
            padded = F.pad(noise, (0, self.max_size - d))
        out: Tensor = self.critic(padded)
        return out


def pad_relax_critic(estimator: nn.Module, max_size: int, square: bool) -> None:
    """Wrap a :class:`~latentgrad.RELAX` estimator's critic in a :class:`PaddedCritic` and give
    a lazily sized critic its input width (other estimators are left alone)."""
    if not isinstance(estimator, RELAX):
        return
    wrapped = PaddedCritic(estimator.critic, max_size, square)
    estimator.critic = wrapped
    if any(nn.parameter.is_lazy(p) for p in wrapped.parameters()):
        with torch.no_grad():
            wrapped.critic(torch.zeros(1, wrapped.width))


@dataclass(frozen=True)
class Batch:
    """Expressions of one length: token ids ``(B, n)``, labels ``(B,)`` and gold parents
    ``(B, n)`` (``-1`` at the root)."""

    tokens: Tensor
    labels: Tensor
    parents: Tensor


def make_batch(examples: Sequence[ListOpsExample]) -> Batch:
    """Stack expressions of one length.

    Raises:
        ValueError: if their lengths differ.
    """
    if len({len(e.tokens) for e in examples}) != 1:
        raise ValueError("a batch needs expressions of one length")
    return Batch(
        torch.stack([encode(e.tokens) for e in examples]),
        torch.tensor([e.label for e in examples], dtype=torch.long),
        torch.tensor([e.parents for e in examples], dtype=torch.long),
    )


def edge_counts(predicted: Tensor, batch: Batch) -> tuple[int, int, int, int]:
    """``(correct_predicted, predicted, correct_argument_arcs, argument_arcs)`` of MAP
    adjacencies ``(B, n, n)`` against the gold parses (module docstring)."""
    b, n = batch.tokens.shape
    gold = torch.zeros(b, n, n, dtype=torch.bool)
    child = torch.arange(1, n)
    rows = torch.arange(b).unsqueeze(1).expand(b, n - 1)
    gold[rows, batch.parents[:, 1:], child.expand(b, n - 1)] = True
    pred = predicted > 0.5
    hits = pred & gold
    argument = gold & (batch.tokens != VOCAB.index(CLOSE)).unsqueeze(1)
    return int(hits.sum()), int(pred.sum()), int((hits & argument).sum()), int(argument.sum())


class ListOpsTrainable:
    """Encoder, classifier, estimator and Adam over the ListOps splits.

    Args:
        config: the settings.
        chosen: the estimator the runner resolved.
        data: the splits (default: :func:`~latentgrad.data.listops.load_listops` of the
            config).

    Raises:
        ValueError: for a latent family other than the recursive Gumbel-max one or SparseMAP.
    """

    def __init__(
        self, config: ListOpsConfig, chosen: ResolvedEstimator, data: ListOpsSplits | None = None
    ) -> None:
        config.validate()
        if chosen.latent not in ("softmax", "sparsemap"):
            raise ValueError(f"listops has no latent family {chosen.latent!r}")
        self.config = config
        self.sparsemap = chosen.latent == "sparsemap"
        self.estimator = chosen.estimator
        sizes = (config.train_size, config.valid_size, config.test_size)
        self.data = load_listops(config.data, config.settings(), sizes) if data is None else data
        vocab = len(VOCAB)
        self.encoder = ArcScorer(vocab, config.embedding_dim, config.hidden_dim, config.init_std)
        self.classifier = TreeGNN(
            vocab, config.embedding_dim, config.hidden_dim, config.gnn_rounds, NUM_CLASSES
        )
        longest = max(
            len(e.tokens) for split in ("train", "valid", "test") for e in self.data.split(split)
        )
        pad_relax_critic(self.estimator, max(longest, config.max_length), square=True)
        self.modules = nn.ModuleDict(
            {"encoder": self.encoder, "classifier": self.classifier, "estimator": self.estimator}
        )
        self.optimizer: torch.optim.Optimizer = torch.optim.Adam(
            self.modules.parameters(), lr=config.lr
        )

    def latent(self, scores: Tensor) -> LatentDistribution:
        """The latent over arborescences rooted at token 0 with arc ``scores`` ``(B, n, n)``."""
        if self.sparsemap:
            return make_sparsemap("arborescence", scores)
        return Arborescence(scores, root=0)

    def loss_fn(self, batch: Batch) -> Callable[[Tensor], Tensor]:
        """``loss(A)``: the classifier's cross-entropy on structures ``S + (B, n, n)``."""

        def loss(adjacency: Tensor) -> Tensor:
            logits = self.classifier(batch.tokens, adjacency)
            labels = batch.labels.expand(logits.shape[:-1])
            return F.cross_entropy(
                logits.flatten(0, -2), labels.flatten(), reduction="none"
            ).reshape(labels.shape)

        return loss

    def _batches(self, split: str, shuffle: bool, limit: int | None) -> Iterator[Batch]:
        examples = self.data.split(split)
        lengths = [len(e.tokens) for e in examples]
        for chunk in batches_by_length(
            examples, lengths, self.config.batch_size, shuffle=shuffle, limit=limit
        ):
            yield make_batch(chunk)

    def train_batches(self, epoch: int) -> list[Batch]:
        """The training set in batches of one length, shuffled (torch's global RNG)."""
        return list(self._batches("train", True, None))

    def train_step(self, batch: Batch) -> Mapping[str, float]:
        """One Adam step on the expected cross-entropy; reports ``loss`` (the mean sampled or
        summed cross-entropy), ``loss_evals`` and, for RELAX, ``critic_loss``."""
        return estimator_step(
            self.modules,
            self.optimizer,
            self.estimator,
            lambda: (self.latent(self.encoder(batch.tokens)), self.loss_fn(batch)),
        )

    def evaluate(self, split: str) -> Mapping[str, float]:
        """``accuracy``, ``error``, ``nll``, ``sampled_accuracy``, ``edge_precision`` and
        ``edge_recall`` on ``split`` (at most ``max_eval_examples`` expressions)."""
        self.modules.eval()
        correct = total = 0
        nll = sampled = 0.0
        hits = predicted = arg_hits = arg_total = 0
        with torch.no_grad():
            for batch in self._batches(split, False, self.config.max_eval_examples):
                scores = self.encoder(batch.tokens)
                mode = Arborescence(scores, root=0).mode()
                logits = self.classifier(batch.tokens, mode)
                correct += int((logits.argmax(-1) == batch.labels).sum())
                nll += float(F.cross_entropy(logits, batch.labels, reduction="sum"))
                sampled += self._sampled_correct(scores, batch)
                total += len(batch.labels)
                counts = edge_counts(mode, batch)
                hits, predicted = hits + counts[0], predicted + counts[1]
                arg_hits, arg_total = arg_hits + counts[2], arg_total + counts[3]
        accuracy = correct / total
        return {
            "accuracy": accuracy,
            "error": 1.0 - accuracy,
            "nll": nll / total,
            "sampled_accuracy": sampled / total,
            "edge_precision": hits / predicted,
            "edge_recall": arg_hits / arg_total,
        }

    def _sampled_correct(self, scores: Tensor, batch: Batch) -> float:
        """Correct predictions on one sample of the latent (the expectation under SparseMAP)."""
        dist = self.latent(scores)
        if self.sparsemap:
            values, probs = dist.support_probs()
            logits = self.classifier(batch.tokens, values)
            right = (logits.argmax(-1) == batch.labels).to(probs.dtype)
            return float((probs * right).sum())
        logits = self.classifier(batch.tokens, dist.sample())
        return float((logits.argmax(-1) == batch.labels).sum())


def build(config: ListOpsConfig, chosen: ResolvedEstimator) -> ListOpsTrainable:
    """The trainable around ``chosen``'s estimator, with the data of ``config`` (generated in
    the data directory on first use)."""
    return ListOpsTrainable(config, chosen)


EXPERIMENT = Experiment(
    name="listops",
    description=(
        "unsupervised parsing of simplified ListOps (MIN/MAX/MED) with a latent arborescence: "
        "BiLSTM arc scores, GNN classifier; accuracy and edge precision/recall (Struminsky et "
        "al. 2021)"
    ),
    config_class=ListOpsConfig,
    build=build,
    primary_metric="error",
    estimators=ESTIMATORS,
    latent_families=(Arborescence,),
)
