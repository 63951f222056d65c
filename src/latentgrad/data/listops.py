"""Simplified ListOps: nested MIN / MAX / MED expressions over digits, with their parse trees.

An expression is written in prefix form, one token per operator (with its opening bracket),
digit and closing bracket: ``[MAX 2 [MIN 4 7 ] 0 ]`` is the 8 tokens ``[MAX``, ``2``, ``[MIN``,
``4``, ``7``, ``]``, ``0``, ``]`` and evaluates to 4. The label is the value, a digit. This is
the ListOps of Nangia & Bowman (2018) without ``SUM_MOD``, with bounded length and depth, as
used by Paulus et al. (2020) and Struminsky et al. (2021) for unsupervised parsing with a latent
arborescence over the tokens.

Operators: ``MIN`` and ``MAX`` of their arguments, ``MED`` their median (for an even number of
arguments, the floor of the mean of the two middle values, as ``int(numpy.median(...))`` in
the original generator).

Gold parse (an arborescence over the tokens, rooted at token 0): every expression is an
operator applied to 2 to ``max_args`` arguments; the operator token *heads* each of its
arguments (a digit, or the operator token of a nested expression) and its own closing bracket.
Token 0 is always the outermost operator, the root; every other token has exactly one head.
``parents[v]`` is the head of token ``v`` (``-1`` for the root); the adjacency matrix has
``A[parents[v], v] = 1``, the form :class:`~latentgrad.Arborescence` values take.

Generation (seeded, :class:`random.Random`): the root is an operator; below it, a node is an
operator with probability ``branch_prob`` while the depth allows, else a digit; an operator
takes ``randint(2, max_args)`` arguments, operators and digits uniformly. Depth counts nested
operators (``[MAX 1 2 ]`` has depth 1). Expressions outside ``[min_length, max_length]`` tokens
are redrawn. Defaults: 10 to 50 tokens, depth at most 5, 2 to 5 arguments, ``branch_prob``
0.25 (the original generator's). Struminsky et al. bound the length and the depth without
saying the bounds in the text we could read; these are our choice.

Splits are drawn from their own seeded streams (``seed`` and the split's name), written to
``<data dir>/listops/<settings>/<split>-<size>.tsv`` on first use (one example per line: tokens,
label, parents, tab-separated) and read back afterwards (:func:`load_listops`). Splits are
drawn independently, so a short expression may occur in two of them.

References:
    [1] Nangia & Bowman, "ListOps: A Diagnostic Dataset for Latent Tree Learning", NAACL SRW
        2018.
    [2] Paulus, Choi, Tarlow, Krause & Maddison, "Gradient Estimation with Stochastic Softmax
        Tricks", NeurIPS 2020.
    [3] Struminsky, Gadetsky, Rakitin, Karpushkin & Vetrov, "Leveraging recursive Gumbel-max
        trick for approximate inference in combinatorial spaces", NeurIPS 2021.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from latentgrad.data.files import resolve_data_dir
from latentgrad.data.sequences import Splits, check_split, check_split_size, load_split_files

__all__ = [
    "OPERATORS",
    "VOCAB",
    "ListOpsExample",
    "ListOpsSettings",
    "ListOpsSplits",
    "encode",
    "evaluate_parse",
    "evaluate_tokens",
    "expression_depth",
    "generate_example",
    "generate_split",
    "load_listops",
    "parse_adjacency",
]

OPERATORS: tuple[str, ...] = ("[MIN", "[MAX", "[MED")
CLOSE = "]"
DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))
#: Token ids: the digits are their own ids (0-9), then the operators and the closing bracket.
VOCAB: tuple[str, ...] = (*DIGITS, *OPERATORS, CLOSE)
_ID = {token: i for i, token in enumerate(VOCAB)}


@dataclass(frozen=True)
class ListOpsSettings:
    """How expressions are drawn (see the module docstring).

    Attributes:
        min_length: fewest tokens of an expression (>= 4: an operator, two arguments, ``]``).
        max_length: most tokens.
        max_depth: most nested operators (>= 1).
        max_args: most arguments of an operator (>= 2).
        branch_prob: probability that a node below the root is an operator (while the depth
            allows).
        seed: seeds the generator (each split draws from its own stream).
    """

    min_length: int = 10
    max_length: int = 50
    max_depth: int = 5
    max_args: int = 5
    branch_prob: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low in (("min_length", 4), ("max_length", 4), ("max_depth", 1), ("max_args", 2)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if self.max_length < self.min_length:
            raise ValueError(
                f"max_length must be >= min_length={self.min_length}, got {self.max_length}"
            )
        if not 0.0 <= float(self.branch_prob) < 1.0:
            raise ValueError(f"branch_prob must be in [0, 1), got {self.branch_prob!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise TypeError(f"seed must be an int, got {type(self.seed).__name__}")
        if self.branch_prob == 0.0 and self.min_length > self.max_args + 2:
            raise ValueError(
                f"min_length={self.min_length} is unreachable with branch_prob=0 (one operator "
                f"has at most max_args + 2 = {self.max_args + 2} tokens)"
            )
        if self.min_length > _longest(self.max_depth, self.max_args):
            raise ValueError(
                f"min_length={self.min_length} is more than the longest expression of depth "
                f"{self.max_depth} with {self.max_args} arguments "
                f"({_longest(self.max_depth, self.max_args)} tokens)"
            )

    def tag(self) -> str:
        """The settings as a folder name, e.g. ``len10-50_depth5_args5_p0.25_seed0``."""
        return (
            f"len{self.min_length}-{self.max_length}_depth{self.max_depth}_args{self.max_args}"
            f"_p{self.branch_prob:g}_seed{self.seed}"
        )


def _longest(depth: int, args: int) -> int:
    """Tokens of the largest expression: every argument an operator until the last level."""
    return 2 + args * (1 if depth == 1 else _longest(depth - 1, args))


@dataclass(frozen=True)
class ListOpsExample:
    """One expression.

    Attributes:
        tokens: the tokens, e.g. ``("[MAX", "2", "9", "]")``.
        label: its value, in ``0..9``.
        parents: the head of each token in the gold parse (``-1`` for token 0, the root).
    """

    tokens: tuple[str, ...]
    label: int
    parents: tuple[int, ...]

    def to_line(self) -> str:
        """``tokens<TAB>label<TAB>parents``, space-separated lists."""
        return "\t".join([" ".join(self.tokens), str(self.label), " ".join(map(str, self.parents))])

    @classmethod
    def from_line(cls, line: str) -> ListOpsExample:
        """The inverse of :meth:`to_line`.

        Raises:
            ValueError: for a malformed line.
        """
        fields = line.split("\t")
        if len(fields) != 3:
            raise ValueError(f"a ListOps line has 3 tab-separated fields, got {line!r}")
        tokens = tuple(fields[0].split())
        parents = tuple(int(p) for p in fields[2].split())
        if len(parents) != len(tokens) or any(t not in _ID for t in tokens):
            raise ValueError(f"malformed ListOps line {line!r}")
        return cls(tokens, int(fields[1]), parents)


def _apply(operator: str, values: Sequence[int]) -> int:
    if operator == "[MIN":
        return min(values)
    if operator == "[MAX":
        return max(values)
    ordered = sorted(values)
    k = len(ordered)
    if k % 2:
        return ordered[k // 2]
    return (ordered[k // 2 - 1] + ordered[k // 2]) // 2


def evaluate_tokens(tokens: Sequence[str]) -> int:
    """The value of a prefix expression, by a stack (independent of any parse).

    Raises:
        ValueError: if ``tokens`` is not one well-formed expression.

    Example:
        >>> evaluate_tokens("[MAX 2 [MIN 4 7 ] 0 ]".split())
        4
        >>> evaluate_tokens("[MED 1 2 3 9 ]".split())
        2
    """
    stack: list[tuple[str, list[int]]] = []
    result: int | None = None
    for i, token in enumerate(tokens):
        if result is not None:
            raise ValueError(f"tokens go on after the expression ended, at position {i}")
        if token in OPERATORS:
            stack.append((token, []))
        elif token == CLOSE:
            if not stack or not stack[-1][1]:
                raise ValueError(f"unexpected {CLOSE!r} at position {i}")
            operator, values = stack.pop()
            value = _apply(operator, values)
            if stack:
                stack[-1][1].append(value)
            else:
                result = value
        elif token in DIGITS:
            if not stack:
                raise ValueError(f"a digit outside any operator at position {i}")
            stack[-1][1].append(int(token))
        else:
            raise ValueError(f"unknown token {token!r} at position {i}")
    if result is None:
        raise ValueError("tokens do not form a complete expression")
    return result


def evaluate_parse(tokens: Sequence[str], parents: Sequence[int]) -> int:
    """The value of the expression read along a parse: each operator applied to the values of
    its dependents (in token order), closing brackets ignored.

    Raises:
        ValueError: if the parse has no single root at token 0, or an operator no argument.

    Example:
        >>> evaluate_parse("[MAX 2 [MIN 4 7 ] 0 ]".split(), [-1, 0, 0, 2, 2, 2, 0, 0])
        4
    """
    if len(parents) != len(tokens) or not tokens or parents[0] != -1:
        raise ValueError("parents must have one entry per token, -1 at token 0 (the root)")
    children: list[list[int]] = [[] for _ in tokens]
    for v, p in enumerate(parents[1:], start=1):
        if not 0 <= p < len(tokens):
            raise ValueError(f"parents[{v}] = {p} is not a token")
        children[p].append(v)

    def value(v: int, budget: int) -> int:
        if budget < 0:
            raise ValueError("the parse has a cycle")
        token = tokens[v]
        if token in DIGITS:
            return int(token)
        args = [value(c, budget - 1) for c in children[v] if tokens[c] != CLOSE]
        if token not in OPERATORS or not args:
            raise ValueError(f"token {v} ({token!r}) heads no argument")
        return _apply(token, args)

    return value(0, len(tokens))


def expression_depth(tokens: Sequence[str]) -> int:
    """The most nested operators (``[MAX 1 2 ]``: 1).

    Example:
        >>> expression_depth("[MAX 2 [MIN 4 7 ] 0 ]".split())
        2
    """
    depth = deepest = 0
    for token in tokens:
        if token in OPERATORS:
            depth += 1
            deepest = max(deepest, depth)
        elif token == CLOSE:
            depth -= 1
    return deepest


def _draw(rng: random.Random, settings: ListOpsSettings) -> tuple[list[str], list[int]]:
    """One expression's tokens and gold parents (not length-checked)."""
    tokens: list[str] = []
    parents: list[int] = []

    def node(parent: int, depth_left: int, root: bool) -> None:
        operator = root or (depth_left >= 1 and rng.random() < settings.branch_prob)
        if not operator:
            tokens.append(rng.choice(DIGITS))
            parents.append(parent)
            return
        here = len(tokens)
        tokens.append(rng.choice(OPERATORS))
        parents.append(parent)
        for _ in range(rng.randint(2, settings.max_args)):
            node(here, depth_left - 1, False)
        tokens.append(CLOSE)
        parents.append(here)

    node(-1, settings.max_depth, True)  # depth_left: operators allowed here and below
    return tokens, parents


def generate_example(rng: random.Random, settings: ListOpsSettings) -> ListOpsExample:
    """One expression within the length bounds (redrawn until it is), its value and parse.

    Example:
        >>> example = generate_example(random.Random(0), ListOpsSettings(min_length=4, max_length=8))
        >>> 4 <= len(example.tokens) <= 8, example.label == evaluate_tokens(example.tokens)
        (True, True)
    """
    while True:
        tokens, parents = _draw(rng, settings)
        if settings.min_length <= len(tokens) <= settings.max_length:
            return ListOpsExample(tuple(tokens), evaluate_tokens(tokens), tuple(parents))


def generate_split(settings: ListOpsSettings, split: str, size: int) -> list[ListOpsExample]:
    """``size`` expressions of ``split``, from the split's own seeded stream.

    Example:
        >>> a = generate_split(ListOpsSettings(min_length=4, max_length=12), "test", 3)
        >>> a == generate_split(ListOpsSettings(min_length=4, max_length=12), "test", 3)
        True
    """
    check_split(split)
    check_split_size(size)
    rng = random.Random(f"listops:{settings.seed}:{split}")
    return [generate_example(rng, settings) for _ in range(size)]


class ListOpsSplits(Splits[ListOpsExample]):
    """The train, valid and test expressions."""


def load_listops(
    data_dir: str | Path | None = None,
    settings: ListOpsSettings | None = None,
    sizes: tuple[int, int, int] = (100_000, 10_000, 10_000),
) -> ListOpsSplits:
    """The fixed train/valid/test sets of ``settings``: generated and written to the data
    directory on first use, read back afterwards.

    Args:
        data_dir: the data directory (``None``: ``$LATENTGRAD_DATA``, else
            ``~/.cache/latentgrad``).
        settings: how expressions are drawn (default: :class:`ListOpsSettings`).
        sizes: examples in train, valid and test.

    Returns:
        The splits.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> data = load_listops(folder, ListOpsSettings(min_length=4, max_length=12), (5, 2, 2))
        >>> len(data.train), data.test == load_listops(folder, ListOpsSettings(min_length=4, max_length=12), (5, 2, 2)).test
        (5, True)
    """
    settings = ListOpsSettings() if settings is None else settings
    folder = resolve_data_dir(data_dir) / "listops" / settings.tag()
    loaded = load_split_files(
        folder,
        asdict(settings),
        sizes,
        ".tsv",
        lambda split, size: _split_lines(settings, split, size),
        lambda path, line: ListOpsExample.from_line(line),
    )
    return ListOpsSplits(**loaded)


def _split_lines(settings: ListOpsSettings, split: str, size: int) -> list[str]:
    return [e.to_line() for e in generate_split(settings, split, size)]


def encode(tokens: Sequence[str]) -> Tensor:
    """Token ids (:data:`VOCAB` order), long ``(n,)``.

    Example:
        >>> encode(["[MAX", "2", "9", "]"])
        tensor([11,  2,  9, 13])
    """
    return torch.tensor([_ID[t] for t in tokens], dtype=torch.long)


def parse_adjacency(parents: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
    """The adjacency matrix of a parse, ``A[parents[v], v] = 1``, shape ``(n, n)``.

    Example:
        >>> parse_adjacency([-1, 0, 0, 0])[0]
        tensor([0., 1., 1., 1.])
    """
    n = len(parents)
    adjacency = torch.zeros(n, n, dtype=dtype)
    for v, p in enumerate(parents):
        if p >= 0:
            adjacency[p, v] = 1
    return adjacency
