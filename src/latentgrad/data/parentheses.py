"""Balanced parentheses sequences (Dyck words), uniformly random, seeded.

A sequence of ``2 m`` characters ``(`` and ``)`` is balanced when every prefix has at least as
many ``(`` as ``)`` and the whole has as many of each. Each example draws its number of pairs
``m`` uniformly from ``[min_length / 2, max_length / 2]`` and then a sequence uniformly among
the ``Catalan(m)`` balanced ones (each character chosen with probability proportional to the
number of balanced completions it leaves, counted exactly). Splits are drawn from their own
seeded streams, written to ``<data dir>/parentheses/<settings>/<split>-<size>.txt`` (one
sequence a line) on first use and read back afterwards (:func:`load_parentheses`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from latentgrad.data.files import resolve_data_dir
from latentgrad.data.sequences import Splits, check_split, check_split_size, load_split_files

__all__ = [
    "CHARACTERS",
    "ParenthesesSettings",
    "ParenthesesSplits",
    "completions",
    "encode",
    "generate_split",
    "is_balanced",
    "load_parentheses",
    "random_balanced",
]

#: Character ids: ``(`` is 0, ``)`` is 1.
CHARACTERS: tuple[str, str] = ("(", ")")


@dataclass(frozen=True)
class ParenthesesSettings:
    """How sequences are drawn.

    Attributes:
        min_length: shortest sequence, even, >= 2.
        max_length: longest sequence, even, >= min_length.
        seed: seeds the generator (each split draws from its own stream).
    """

    min_length: int = 2
    max_length: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("min_length", "max_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 2 or value % 2:
                raise ValueError(f"{name} must be an even int >= 2, got {value!r}")
        if self.max_length < self.min_length:
            raise ValueError(
                f"max_length must be >= min_length={self.min_length}, got {self.max_length}"
            )
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise TypeError(f"seed must be an int, got {type(self.seed).__name__}")

    def tag(self) -> str:
        """The settings as a folder name, e.g. ``len2-20_seed0``."""
        return f"len{self.min_length}-{self.max_length}_seed{self.seed}"


@cache
def completions(remaining: int, height: int) -> int:
    """Ways to finish a balanced sequence with ``remaining`` characters from ``height`` open
    parentheses (never going below 0).

    Example:
        >>> completions(6, 0), completions(3, 1)  # Catalan(3); "(()", "()(" ... to height 0
        (5, 2)
    """
    if height < 0 or height > remaining:
        return 0
    if remaining == 0:
        return 1
    return completions(remaining - 1, height + 1) + completions(remaining - 1, height - 1)


def random_balanced(rng: random.Random, pairs: int) -> str:
    """A balanced sequence of ``pairs`` pairs, uniform among the ``Catalan(pairs)`` of them.

    Example:
        >>> is_balanced(random_balanced(random.Random(0), 5))
        True
    """
    out = []
    height = 0
    for step in range(2 * pairs):
        remaining = 2 * pairs - step - 1
        up = completions(remaining, height + 1)
        down = completions(remaining, height - 1)
        if rng.random() * (up + down) < up:
            out.append("(")
            height += 1
        else:
            out.append(")")
            height -= 1
    return "".join(out)


def is_balanced(sequence: Sequence[str] | str) -> bool:
    """Whether ``sequence`` (characters ``(`` and ``)``) is balanced and not empty.

    Example:
        >>> is_balanced("(()())"), is_balanced("())("), is_balanced("")
        (True, False, False)
    """
    height = 0
    for char in sequence:
        if char == "(":
            height += 1
        elif char == ")":
            height -= 1
            if height < 0:
                return False
        else:
            return False
    return height == 0 and len(sequence) > 0


def generate_split(settings: ParenthesesSettings, split: str, size: int) -> list[str]:
    """``size`` sequences of ``split``, from the split's own seeded stream.

    Example:
        >>> generate_split(ParenthesesSettings(2, 6), "test", 4) == generate_split(ParenthesesSettings(2, 6), "test", 4)
        True
    """
    check_split(split)
    check_split_size(size)
    rng = random.Random(f"parentheses:{settings.seed}:{split}")
    low, high = settings.min_length // 2, settings.max_length // 2
    return [random_balanced(rng, rng.randint(low, high)) for _ in range(size)]


class ParenthesesSplits(Splits[str]):
    """The train, valid and test sequences."""


def load_parentheses(
    data_dir: str | Path | None = None,
    settings: ParenthesesSettings | None = None,
    sizes: tuple[int, int, int] = (10_000, 1_000, 1_000),
) -> ParenthesesSplits:
    """The fixed train/valid/test sets of ``settings``: generated and written to the data
    directory on first use, read back afterwards.

    Args:
        data_dir: the data directory (``None``: ``$LATENTGRAD_DATA``, else
            ``~/.cache/latentgrad``).
        settings: how sequences are drawn (default: :class:`ParenthesesSettings`).
        sizes: sequences in train, valid and test.

    Raises:
        ValueError: if a split file holds something other than balanced sequences.

    Example:
        >>> import tempfile
        >>> data = load_parentheses(tempfile.mkdtemp(), ParenthesesSettings(2, 8), (6, 2, 2))
        >>> len(data.train), all(is_balanced(s) for s in data.test)
        (6, True)
    """
    settings = ParenthesesSettings() if settings is None else settings
    folder = resolve_data_dir(data_dir) / "parentheses" / settings.tag()
    loaded = load_split_files(
        folder,
        asdict(settings),
        sizes,
        ".txt",
        # generate_split is looked up at call time, so tests can check that files are only read.
        lambda split, size: generate_split(settings, split, size),
        _balanced_line,
    )
    return ParenthesesSplits(**loaded)


def _balanced_line(path: Path, line: str) -> str:
    if not is_balanced(line):
        raise ValueError(f"{path} holds a sequence that is not balanced: {line!r}")
    return line


def encode(sequence: str) -> Tensor:
    """Character ids (``(``: 0, ``)``: 1), long ``(n,)``.

    Example:
        >>> encode("(())")
        tensor([0, 0, 1, 1])
    """
    return torch.tensor([CHARACTERS.index(c) for c in sequence], dtype=torch.long)
