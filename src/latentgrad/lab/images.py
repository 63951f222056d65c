"""Building blocks the image experiments share: MLPs, optimizers, binarized batches and eval sets."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}
OPTIMIZERS = ("adam", "sgd", "rmsprop")
SPLITS = ("train", "valid", "test")

#: Seed of the fixed evaluation subset and of the one-off binarization of non-binary eval splits,
#: the same for every run so that runs are compared on the same examples.
EVAL_DATA_SEED = 1234


class DataSplitsLike(Protocol):
    """What the experiments need from ``latentgrad.data.load_dataset``: ``(N, D)`` splits in [0, 1]."""

    @property
    def train(self) -> Tensor: ...
    @property
    def valid(self) -> Tensor: ...
    @property
    def test(self) -> Tensor: ...
    @property
    def binary(self) -> bool: ...


def mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    """Linear layers ``sizes[0] -> ... -> sizes[-1]`` with ``activation`` between them.

    Example:
        >>> mlp([4, 3, 2], "tanh")
        Sequential(
          (0): Linear(in_features=4, out_features=3, bias=True)
          (1): Tanh()
          (2): Linear(in_features=3, out_features=2, bias=True)
        )
    """
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        if i > 0:
            layers.append(ACTIVATIONS[activation]())
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
    return nn.Sequential(*layers)


def make_optimizer(
    name: str, params: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """``"adam"``, ``"sgd"`` (momentum 0.9, as in Jang et al.) or ``"rmsprop"`` (Tokui & Sato).

    Example:
        >>> type(make_optimizer("sgd", nn.Linear(2, 1).parameters(), 0.1)).__name__
        'SGD'
    """
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


class BinaryImages:
    """Training batches and fixed evaluation sets of binary images.

    Non-binary splits are binarized dynamically: a fresh Bernoulli draw per training batch
    (torch's global RNG), one fixed draw (seed :data:`EVAL_DATA_SEED`) for evaluation.

    Args:
        data: splits of shape ``(N, D)`` with values in [0, 1].
        batch_size: training batch size.
        max_steps_per_epoch: cap on the batches of an epoch (``None``: the whole split).
        max_eval_examples: cap on the evaluated examples, a fixed random subset (``None``: all).

    Example:
        >>> from latentgrad.data import load_dataset
        >>> images = BinaryImages(load_dataset("digits"), 100, 3, 50)
        >>> batches = list(images.train_batches())
        >>> len(batches), tuple(batches[0].shape)
        (3, (100, 64))
        >>> images.eval_data("test").shape
        torch.Size([50, 64])
    """

    def __init__(
        self,
        data: DataSplitsLike,
        batch_size: int,
        max_steps_per_epoch: int | None = None,
        max_eval_examples: int | None = None,
    ) -> None:
        self.data = data
        self.batch_size = batch_size
        self.max_steps_per_epoch = max_steps_per_epoch
        self.max_eval_examples = max_eval_examples
        self._eval_cache: dict[str, Tensor] = {}

    @property
    def dim(self) -> int:
        """Pixels ``D`` per image."""
        return int(self.data.train.shape[-1])

    def binarize(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``x`` itself for binary data, else a Bernoulli draw of it."""
        if self.data.binary:
            return x
        from latentgrad.data import dynamic_binarize

        return dynamic_binarize(x, generator=generator)

    def train_batches(self) -> Iterator[Tensor]:
        """Shuffled minibatches of the training split (``torch.randperm``, global RNG), not yet
        binarized (call :meth:`binarize` on each)."""
        train = self.data.train
        size = self.batch_size
        order = torch.randperm(train.shape[0])
        steps = math.ceil(train.shape[0] / size)
        if self.max_steps_per_epoch is not None:
            steps = min(steps, self.max_steps_per_epoch)
        for i in range(steps):
            yield train[order[i * size : (i + 1) * size]]

    def eval_data(self, split: str) -> Tensor:
        """The fixed, binarized evaluation examples of ``split``, at most ``max_eval_examples``."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if split not in self._eval_cache:
            x = getattr(self.data, split)
            generator = torch.Generator().manual_seed(EVAL_DATA_SEED)
            limit = self.max_eval_examples
            if limit is not None and limit < x.shape[0]:
                # A random subset: the binarized MNIST test rows are sorted by digit class.
                x = x[torch.randperm(x.shape[0], generator=generator)[:limit]]
            self._eval_cache[split] = self.binarize(x, generator)
        return self._eval_cache[split]


def chunk_sizes(num_samples: int, chunk: int) -> tuple[int, int]:
    """``(examples, samples)`` per pass so that ``examples * samples <= chunk`` (at least 1 each).

    Example:
        >>> chunk_sizes(1000, 4096), chunk_sizes(10, 4096)
        ((4, 1000), (409, 10))
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    examples = max(1, chunk // num_samples)
    samples = min(num_samples, max(1, chunk // examples))
    return examples, samples
