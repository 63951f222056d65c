"""Generated sequence data sets: fixed split files in the data directory, batches by length.

The synthetic sequence tasks (:mod:`latentgrad.data.listops`, :mod:`latentgrad.data.parentheses`)
draw their examples from a seeded generator once and write them under the data directory
(``$LATENTGRAD_DATA`` or ``~/.cache/latentgrad``, see :mod:`latentgrad.data.files`), one text
file per split; later runs read the files back, so every run of a setting sees the same
examples. A file starts with a header line holding its settings as JSON, checked on reading.

Structured latents over a sequence need one size per batch, so :func:`length_batches` groups the
examples by length.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

__all__ = [
    "SPLITS",
    "Splits",
    "check_split",
    "check_split_size",
    "length_batches",
    "load_split_files",
    "read_or_generate",
]

_HEADER = "# "
SPLITS = ("train", "valid", "test")
T = TypeVar("T")


def check_split(split: str) -> str:
    """``split`` if it is one of :data:`SPLITS`.

    Raises:
        ValueError: naming ``split`` otherwise.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return split


def check_split_size(size: object) -> int:
    """``size`` if it is a positive int (not a bool).

    Raises:
        ValueError: naming ``size`` otherwise.
    """
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    return size


@dataclass(frozen=True)
class Splits(Generic[T]):
    """The train, valid and test examples of a generated data set.

    Example:
        >>> Splits(["a", "b"], ["c"], ["d"]).split("valid")
        ['c']
    """

    train: list[T]
    valid: list[T]
    test: list[T]

    def split(self, name: str) -> list[T]:
        """The examples of ``name`` (``train``, ``valid`` or ``test``)."""
        examples: list[T] = getattr(self, check_split(name))
        return examples


def load_split_files(
    folder: Path,
    settings: dict[str, Any],
    sizes: tuple[int, int, int],
    suffix: str,
    generate: Callable[[str, int], list[str]],
    parse: Callable[[Path, str], T],
) -> dict[str, list[T]]:
    """The examples of each split, from ``folder / f"{split}-{size}{suffix}"`` (written from
    ``generate(split, size)`` first when missing, :func:`read_or_generate`; the header holds
    ``settings`` with the split and its size).

    Args:
        folder: the folder of this data set and settings.
        settings: what the examples are generated from.
        sizes: examples in train, valid and test.
        suffix: the files' extension.
        generate: the lines of a split.
        parse: an example from its file's path (for error messages) and one line.

    Returns:
        The examples of ``train``, ``valid`` and ``test``.

    Raises:
        ValueError: if ``sizes`` is not three sizes, or as :func:`read_or_generate`.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> load_split_files(folder, {"seed": 0}, (2, 1, 1), ".txt",
        ...                  lambda split, size: [split] * size, lambda path, line: line.upper())
        {'train': ['TRAIN', 'TRAIN'], 'valid': ['VALID'], 'test': ['TEST']}
    """
    if len(sizes) != 3:
        raise ValueError(f"sizes must be (train, valid, test), got {sizes!r}")
    loaded = {}
    for split, size in zip(SPLITS, sizes, strict=True):
        path = folder / f"{split}-{size}{suffix}"
        header = {**settings, "split": split, "size": size}
        lines = read_or_generate(path, header, partial(generate, split, size))
        loaded[split] = [parse(path, line) for line in lines]
    return loaded


def read_or_generate(
    path: Path, settings: dict[str, Any], generate: Callable[[], list[str]]
) -> list[str]:
    """The lines of ``path``, written from ``generate()`` first when the file is missing.

    The file is written under a temporary name and renamed into place, so an interrupted run
    leaves no partial file. Its first line is ``# `` and ``settings`` as JSON.

    Args:
        path: the split file.
        settings: what the lines were generated from (checked against the header on reading).
        generate: makes the lines (without newlines) when the file is missing.

    Returns:
        The lines, without the header.

    Raises:
        ValueError: if the file's header does not hold ``settings`` (a file of other
            settings under this name: delete it to regenerate).

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> read_or_generate(folder / "a.txt", {"seed": 0}, lambda: ["x", "y"])
        ['x', 'y']
        >>> read_or_generate(folder / "a.txt", {"seed": 0}, lambda: ["never called"])
        ['x', 'y']
    """
    header = _HEADER + json.dumps(settings, sort_keys=True)
    if not path.exists():
        lines = generate()
        if any("\n" in line for line in lines):
            raise ValueError("generated lines must not contain newlines")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("\n".join([header, *lines]) + "\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    text = path.read_text(encoding="utf-8").splitlines()
    if not text or text[0] != header:
        found = text[0] if text else "an empty file"
        raise ValueError(
            f"{path} was not generated with these settings (expected header {header!r}, found "
            f"{found!r}); delete it to generate it again"
        )
    return text[1:]


def length_batches(
    lengths: Sequence[int], batch_size: int, *, shuffle: bool, limit: int | None = None
) -> list[list[int]]:
    """Indices of the examples in batches of equal length, at most ``batch_size`` each.

    With ``shuffle``, the examples of each length and then the order of the batches are
    shuffled with torch's global RNG (which the runner seeds per epoch); without, batches keep
    the examples' order within each length and come by increasing length.

    Args:
        lengths: the length of each example.
        batch_size: the largest batch.
        shuffle: whether to shuffle (training) or not (evaluation).
        limit: use only the first ``limit`` examples (``None``: all).

    Returns:
        The batches, lists of indices into ``lengths``.

    Example:
        >>> length_batches([3, 5, 3, 3, 5], batch_size=2, shuffle=False)
        [[0, 2], [3], [1, 4]]
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    count = len(lengths) if limit is None else min(limit, len(lengths))
    groups: dict[int, list[int]] = {}
    for i in range(count):
        groups.setdefault(int(lengths[i]), []).append(i)
    batches: list[list[int]] = []
    for length in sorted(groups):
        members = groups[length]
        if shuffle:
            members = [members[j] for j in torch.randperm(len(members)).tolist()]
        batches.extend(members[k : k + batch_size] for k in range(0, len(members), batch_size))
    if shuffle:
        batches = [batches[j] for j in torch.randperm(len(batches)).tolist()]
    return batches
