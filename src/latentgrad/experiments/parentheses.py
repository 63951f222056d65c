"""Non-monotonic generation of balanced parentheses with a latent binary tree (Struminsky et al.
2021).

The data are uniformly random balanced parentheses sequences (:mod:`latentgrad.data.parentheses`:
generated, seeded, written to the data directory on first use). A sequence ``x`` of ``n``
characters is generated *non-monotonically* (Welleck et al. 2019): a binary tree ``t`` whose
in-order traversal is the positions ``0 .. n-1`` orders the generation. The decoder visits the
tree's slots in level order (breadth first), starting with the root's; at a filled slot it emits
the character of that node and opens its left and right child slots, at an empty slot it emits
``END``. The ``2n + 1`` productions determine both ``t`` and ``x`` (read off in order), so

    ``log p(x, t) = sum_i log p(y_i | y_<i)``

with ``y`` the productions; an LSTM reads, at each step, the previous production, the side of
the current slot (root, left, right) and the character of its parent, and predicts the
production. Training maximizes the evidence lower bound with an amortized posterior over trees,

    ``ELBO(x) = E_{t ~ q(t | x)} [log p(x, t) - log q(t | x)]  <=  log p(x),``

where ``q(t | x)`` is a :class:`~latentgrad.BinaryTree` (recursive argmin-splits of exponential
noise) whose position scores come from a bidirectional LSTM over ``x`` (a linear read-out,
weights ``N(0, init_std^2 / (2 hidden))``). The loss of a tree is ``log q(t | x) - log p(x, t)``:
the decoder learns by its pathwise gradient, the encoder by the estimator. Batches hold sequences
of one length (one tree size per batch); RELAX's critic sees the log-noise padded with zeros to
``max_length`` items (:class:`~latentgrad.experiments.listops.PaddedCritic`).

Estimators: ``e-reinforce``, ``t-reinforce``, ``e-reinforce+``, ``t-reinforce+`` (3 samples),
``relax`` (a learned critic) and ``exact`` (the sum over all ``Catalan(n)`` trees, every tree
of every sequence of a batch decoded at once: at most :data:`MAX_EXACT_ROWS` a step, so
``max_length <= 6`` at batch 64 and 10 at batch 1). SparseMAP does not apply: binary trees
have no MAP oracle here.

Metrics (valid and test): ``nll``, the importance-weighted bound on ``-log p(x)`` with
``eval_samples`` trees from ``q`` (Burda et al. 2016; an upper bound on the negative
log-likelihood, the primary metric), ``elbo`` (its one-sample version, a lower bound on
``log p(x)``), both in nats per sequence; and ``valid_fraction``, the fraction of
``num_generated`` sequences sampled from the decoder (ancestrally, at most ``2 max_length + 1``
productions; one that is not finished by then counts as invalid) that are balanced and not
empty, with their ``generated_length``.

What is ours (the paper's appendix was not available to us): the data sizes and lengths
(10,000 / 1,000 / 1,000 sequences of 2 to 20 characters), the level-order decoder with its
inputs, the network sizes, learning rate and epochs, and the metrics above.

References:
    [1] Struminsky, Gadetsky, Rakitin, Karpushkin & Vetrov, "Leveraging recursive Gumbel-max
        trick for approximate inference in combinatorial spaces", NeurIPS 2021.
    [2] Welleck, Brantley, Daumé III & Cho, "Non-Monotonic Sequential Text Generation",
        ICML 2019.
    [3] Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from latentgrad.data.parentheses import (
    CHARACTERS,
    ParenthesesSettings,
    ParenthesesSplits,
    encode,
    is_balanced,
    load_parentheses,
)
from latentgrad.distributions import BinaryTree
from latentgrad.estimators import Marginalize
from latentgrad.experiments.listops import pad_relax_critic
from latentgrad.lab.config import (
    is_positive_int,
    require,
    require_nonnegative,
    require_positive_ints,
)
from latentgrad.lab.experiment import Experiment, ExperimentConfig, ResolvedEstimator
from latentgrad.lab.steps import batches_by_length, estimator_step

ESTIMATORS = ("exact", "e-reinforce", "t-reinforce", "e-reinforce+", "t-reinforce+", "relax")
#: Productions: the two characters (their ids), then the empty slot.
END = 2
#: Decoder inputs: the previous production, or BOS at the first step.
BOS = 3
#: Slot sides: the root's slot, a left child's, a right child's.
ROOT, LEFT, RIGHT = 0, 1, 2
#: The parent character of the root's slot.
NO_PARENT = 2
#: Largest sequence the exact sum over trees is offered for (Catalan(10) = 16,796 trees).
MAX_EXACT_LENGTH = 10

#: Most decoded sequences in one exact step, ``Catalan(max_length) * batch_size``: every tree of
#: every sequence of the batch is decoded at once, about 85 kB of activations each, so a step
#: stays near 1.4 GB (as many as the trees of one sequence of :data:`MAX_EXACT_LENGTH`).
MAX_EXACT_ROWS = 16796


@dataclass
class ParenthesesConfig(ExperimentConfig):
    """Settings of the parentheses experiment (module docstring).

    ``dataset`` must be ``parentheses``; ``eval_samples`` are the importance samples of the
    ``nll`` bound; ``data`` is where the generated splits are written.

    Attributes:
        train_size: training sequences.
        valid_size: validation sequences.
        test_size: test sequences.
        min_length: shortest sequence (even).
        max_length: longest sequence (even).
        data_seed: seeds the generator of the sequences.
        embedding_dim: embedding width (encoder and decoder).
        hidden_dim: LSTM width (per direction in the encoder).
        init_std: scale of the encoder's score read-out at initialization (0: all scores 0).
        num_generated: sequences sampled from the decoder per evaluation (valid_fraction).
    """

    estimator: str = "t-reinforce+"
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    dataset: str = "parentheses"
    eval_samples: int = 100
    train_size: int = 10_000
    valid_size: int = 1_000
    test_size: int = 1_000
    min_length: int = 2
    max_length: int = 20
    data_seed: int = 0
    embedding_dim: int = 32
    hidden_dim: int = 64
    init_std: float = 1.0
    num_generated: int = 1000

    def validate(self) -> None:
        """Check the shared settings, then these (see :meth:`ExperimentConfig.validate`).

        Example:
            >>> ParenthesesConfig(max_length=7).validate()
            Traceback (most recent call last):
            ...
            latentgrad.lab.config.InvalidConfigValue: max_length must be an even int >= min_length=2, got 7
        """
        super().validate()
        require(self.dataset == "parentheses", "dataset", "parentheses", self.dataset)
        require_positive_ints(
            self,
            "train_size",
            "valid_size",
            "test_size",
            "embedding_dim",
            "hidden_dim",
            "num_generated",
        )
        low, high = self.min_length, self.max_length
        require(
            is_positive_int(low) and low >= 2 and low % 2 == 0,
            "min_length",
            "an even int >= 2",
            low,
        )
        ok = is_positive_int(high) and high >= low and high % 2 == 0
        require(ok, "max_length", f"an even int >= min_length={low}", high)
        require(isinstance(self.data_seed, int), "data_seed", "an int", self.data_seed)
        require_nonnegative(self, "init_std")

    def settings(self) -> ParenthesesSettings:
        """The generator settings of the data."""
        return ParenthesesSettings(self.min_length, self.max_length, self.data_seed)


class PositionScorer(nn.Module):
    """Position scores of a sequence: embeddings, a BiLSTM and a linear read-out.

    Shape:
        ids ``(B, n)`` to scores ``(B, n)``.

    Example:
        >>> PositionScorer(2, 4, 5, init_std=1.0)(torch.randint(2, (3, 6))).shape
        torch.Size([3, 6])
    """

    def __init__(
        self, vocab_size: int, embedding_dim: int, hidden_dim: int, init_std: float
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_dim, batch_first=True, bidirectional=True)
        self.readout = nn.Linear(2 * hidden_dim, 1)
        with torch.no_grad():
            self.readout.weight.normal_(0.0, init_std / math.sqrt(2 * hidden_dim))
            self.readout.bias.zero_()

    def forward(self, ids: Tensor) -> Tensor:
        states, _ = self.lstm(self.embedding(ids))
        return self.readout(states).squeeze(-1)


def tree_children(adjacency: Tensor) -> tuple[list[int], list[list[int]], list[list[int]]]:
    """Roots and children of binary trees ``(M, n, n)`` (``A[p, c] = 1``: ``c`` a child of
    ``p``, on the left when ``c < p``): ``(root, left, right)``, ``-1`` for no child.

    Example:
        >>> a = torch.zeros(1, 3, 3); a[0, 1, 0] = a[0, 1, 2] = 1
        >>> tree_children(a)
        ([1], [[-1, 0, -1]], [[-1, 2, -1]])
    """
    m, n, _ = adjacency.shape
    has_parent = adjacency.sum(-2) > 0
    parent = adjacency.argmax(-2)
    roots = (~has_parent).to(torch.long).argmax(-1).tolist()
    parents, present = parent.tolist(), has_parent.tolist()
    left = [[-1] * n for _ in range(m)]
    right = [[-1] * n for _ in range(m)]
    for k in range(m):
        for c in range(n):
            if present[k][c]:
                p = parents[k][c]
                (left if c < p else right)[k][p] = c
    return roots, left, right


def level_order(
    chars: Sequence[int], root: int, left: Sequence[int], right: Sequence[int]
) -> tuple[list[int], list[int], list[int]]:
    """The productions of a tree in level order, and the decoder's inputs at each of them.

    Returns:
        ``(productions, sides, parent_chars)``, each of length ``2n + 1``: the character of the
        node at each slot or :data:`END`, the slot's side and its parent's character.

    Example:
        >>> level_order([0, 1], root=0, left=[-1, -1], right=[1, -1])  # "()" as 0 -> 1
        ([0, 2, 1, 2, 2], [0, 1, 2, 1, 2], [2, 0, 0, 1, 1])
    """
    productions, sides, parent_chars = [], [], []
    queue = [(root, ROOT, NO_PARENT)]
    head = 0
    while head < len(queue):
        node, side, parent_char = queue[head]
        head += 1
        sides.append(side)
        parent_chars.append(parent_char)
        if node < 0:
            productions.append(END)
            continue
        char = chars[node]
        productions.append(char)
        queue.append((left[node], LEFT, char))
        queue.append((right[node], RIGHT, char))
    return productions, sides, parent_chars


class LevelOrderDecoder(nn.Module):
    """``p(x, t)``: an LSTM over the level-order productions (module docstring).

    Shape:
        :meth:`log_joint`: ids ``(B, n)`` and trees ``S + (B, n, n)`` to ``S + (B,)``.

    Example:
        >>> dec = LevelOrderDecoder(4, 8)
        >>> chain = torch.diag(torch.ones(3), 1).expand(2, 4, 4)  # 0 -> 1 -> 2 -> 3, right children
        >>> dec.log_joint(torch.tensor([[0, 1, 0, 1], [0, 0, 1, 1]]), chain).shape
        torch.Size([2])
    """

    def __init__(self, embedding_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.production = nn.Embedding(4, embedding_dim)  # "(", ")", END, BOS
        self.side = nn.Embedding(3, embedding_dim)
        self.parent = nn.Embedding(3, embedding_dim)  # "(", ")", none
        self.lstm = nn.LSTM(embedding_dim, hidden_dim, batch_first=True)
        self.out = nn.Linear(hidden_dim, 3)

    def _inputs(self, previous: Tensor, sides: Tensor, parents: Tensor) -> Tensor:
        return self.production(previous) + self.side(sides) + self.parent(parents)

    def log_joint(self, ids: Tensor, trees: Tensor) -> Tensor:
        """``log p(x, t)`` for sequences ``ids`` and binary trees over their positions."""
        lead = trees.shape[:-2]
        n = ids.shape[-1]
        flat = trees.detach().reshape(-1, n, n)
        chars = ids.expand(*lead, n).reshape(-1, n).tolist()
        roots, left, right = tree_children(flat)
        rows = [level_order(chars[k], roots[k], left[k], right[k]) for k in range(flat.shape[0])]
        productions = torch.tensor([r[0] for r in rows], dtype=torch.long, device=ids.device)
        sides = torch.tensor([r[1] for r in rows], dtype=torch.long, device=ids.device)
        parents = torch.tensor([r[2] for r in rows], dtype=torch.long, device=ids.device)
        previous = F.pad(productions[:, :-1], (1, 0), value=BOS)
        states, _ = self.lstm(self._inputs(previous, sides, parents))
        log_p = self.out(states).log_softmax(-1)
        picked = log_p.gather(-1, productions.unsqueeze(-1)).squeeze(-1).sum(-1)
        return picked.reshape(lead)

    @torch.no_grad()
    def generate(self, count: int, max_productions: int) -> list[str | None]:
        """``count`` sequences sampled ancestrally (torch's global RNG); ``None`` for one not
        finished within ``max_productions`` productions."""
        queues: list[list[tuple[int, int, int]]] = [[(-1, ROOT, NO_PARENT)] for _ in range(count)]
        nodes: list[list[list[int]]] = [[] for _ in range(count)]  # [char, left, right] each
        roots = [-1] * count
        previous = torch.full((count,), BOS, dtype=torch.long)
        state: tuple[Tensor, Tensor] | None = None
        heads = [0] * count
        for _ in range(max_productions):
            active = [k for k in range(count) if heads[k] < len(queues[k])]
            if not active:
                break
            slots = [
                queues[k][heads[k]] if heads[k] < len(queues[k]) else (-1, ROOT, NO_PARENT)
                for k in range(count)
            ]
            sides = torch.tensor([s[1] for s in slots], dtype=torch.long)
            parents = torch.tensor([s[2] for s in slots], dtype=torch.long)
            out, state = self.lstm(self._inputs(previous, sides, parents).unsqueeze(1), state)
            drawn = torch.distributions.Categorical(logits=self.out(out[:, 0])).sample().tolist()
            for k in active:
                parent, side, _ = slots[k]
                heads[k] += 1
                production = drawn[k]
                if production == END:
                    continue
                here = len(nodes[k])
                nodes[k].append([production, -1, -1])
                if side == ROOT:
                    roots[k] = here
                else:
                    nodes[k][parent][1 if side == LEFT else 2] = here
                queues[k].append((here, LEFT, production))
                queues[k].append((here, RIGHT, production))
            previous = torch.tensor(drawn, dtype=torch.long)
        return [
            _in_order(nodes[k], roots[k]) if heads[k] >= len(queues[k]) else None
            for k in range(count)
        ]


def _in_order(nodes: list[list[int]], root: int) -> str:
    out: list[str] = []
    stack: list[int] = []
    node = root
    while stack or node >= 0:
        while node >= 0:
            stack.append(node)
            node = nodes[node][1]
        node = stack.pop()
        out.append(CHARACTERS[nodes[node][0]])
        node = nodes[node][2]
    return "".join(out)


class ParenthesesTrainable:
    """Encoder ``q(t | x)``, decoder ``p(x, t)``, estimator and Adam over the splits.

    Args:
        config: the settings.
        chosen: the estimator the runner resolved.
        data: the splits (default: :func:`~latentgrad.data.parentheses.load_parentheses` of
            the config).

    Raises:
        ValueError: for a latent family other than the binary trees', or the exact sum over
            sequences longer than :data:`MAX_EXACT_LENGTH` or over more than
            :data:`MAX_EXACT_ROWS` trees per batch.
    """

    def __init__(
        self,
        config: ParenthesesConfig,
        chosen: ResolvedEstimator,
        data: ParenthesesSplits | None = None,
    ) -> None:
        config.validate()
        if chosen.latent != "softmax":
            raise ValueError(f"parentheses has no latent family {chosen.latent!r}")
        if isinstance(chosen.estimator, Marginalize):
            if config.max_length > MAX_EXACT_LENGTH:
                raise ValueError(
                    f"the exact estimator sums over Catalan(n) trees: max_length must be at "
                    f"most {MAX_EXACT_LENGTH}, got {config.max_length}"
                )
            n = config.max_length
            rows = math.comb(2 * n, n) // (n + 1) * config.batch_size
            if rows > MAX_EXACT_ROWS:
                raise ValueError(
                    f"the exact estimator decodes every tree of every sequence of a batch at "
                    f"once: Catalan(max_length) * batch_size = {rows} sequences, more than "
                    f"{MAX_EXACT_ROWS}; lower max_length or batch_size (max_length 6 at "
                    "batch_size 64)"
                )
        self.config = config
        self.estimator = chosen.estimator
        sizes = (config.train_size, config.valid_size, config.test_size)
        self.data = (
            load_parentheses(config.data, config.settings(), sizes) if data is None else data
        )
        self.encoder = PositionScorer(2, config.embedding_dim, config.hidden_dim, config.init_std)
        self.decoder = LevelOrderDecoder(config.embedding_dim, config.hidden_dim)
        longest = max(len(s) for name in ("train", "valid", "test") for s in self.data.split(name))
        pad_relax_critic(self.estimator, max(longest, config.max_length), square=False)
        self.modules = nn.ModuleDict(
            {"encoder": self.encoder, "decoder": self.decoder, "estimator": self.estimator}
        )
        self.optimizer: torch.optim.Optimizer = torch.optim.Adam(
            self.modules.parameters(), lr=config.lr
        )

    def loss_fn(self, ids: Tensor, q: BinaryTree) -> Callable[[Tensor], Tensor]:
        """``loss(t) = log q(t | x) - log p(x, t)`` for trees ``S + (B, n, n)``."""

        def loss(trees: Tensor) -> Tensor:
            return q.log_prob(trees) - self.decoder.log_joint(ids, trees)

        return loss

    def _batches(self, split: str, shuffle: bool, limit: int | None) -> Iterator[Tensor]:
        sequences = self.data.split(split)
        lengths = [len(s) for s in sequences]
        for chunk in batches_by_length(
            sequences, lengths, self.config.batch_size, shuffle=shuffle, limit=limit
        ):
            yield torch.stack([encode(s) for s in chunk])

    def train_batches(self, epoch: int) -> list[Tensor]:
        """The training set in batches of one length, shuffled (torch's global RNG)."""
        return list(self._batches("train", True, None))

    def train_step(self, batch: Tensor) -> Mapping[str, float]:
        """One Adam step on the negative ELBO; reports ``loss`` (its estimate, nats per
        sequence), ``loss_evals`` and, for RELAX, ``critic_loss``."""

        def problem() -> tuple[BinaryTree, Callable[[Tensor], Tensor]]:
            q = BinaryTree(self.encoder(batch))
            return q, self.loss_fn(batch, q)

        return estimator_step(self.modules, self.optimizer, self.estimator, problem)

    def evaluate(self, split: str) -> Mapping[str, float]:
        """``nll``, ``elbo``, ``valid_fraction`` and ``generated_length`` (module docstring)."""
        self.modules.eval()
        k = self.config.eval_samples
        nll = elbo = 0.0
        total = 0
        with torch.no_grad():
            for ids in self._batches(split, False, self.config.max_eval_examples):
                q = BinaryTree(self.encoder(ids))
                trees = q.sample((k,))
                log_w = -self.loss_fn(ids, q)(trees)  # (K, B)
                nll -= float((torch.logsumexp(log_w, 0) - math.log(k)).sum())
                elbo += float(log_w.mean(0).sum())
                total += ids.shape[0]
            generated = self.decoder.generate(
                self.config.num_generated, 2 * self.config.max_length + 1
            )
        valid = [s for s in generated if s is not None and is_balanced(s)]
        finished = [s for s in generated if s is not None]
        return {
            "nll": nll / total,
            "elbo": elbo / total,
            "valid_fraction": len(valid) / len(generated),
            "generated_length": sum(map(len, finished)) / max(len(finished), 1),
        }


def build(config: ParenthesesConfig, chosen: ResolvedEstimator) -> ParenthesesTrainable:
    """The trainable around ``chosen``'s estimator, with the data of ``config`` (generated in
    the data directory on first use)."""
    return ParenthesesTrainable(config, chosen)


EXPERIMENT = Experiment(
    name="parentheses",
    description=(
        "non-monotonic generation of balanced parentheses with a latent binary tree ordering "
        "the generation; ELBO / importance-weighted NLL and validity of samples (Struminsky "
        "et al. 2021)"
    ),
    config_class=ParenthesesConfig,
    build=build,
    primary_metric="nll",
    estimators=ESTIMATORS,
    latent_families=(BinaryTree,),
)
