"""Seeds and random-number-generator state for reproducible, resumable runs.

Randomness in a run is a pure function of its seed: :func:`seed_all` seeds the global RNGs
(Python's ``random``, torch, numpy when installed), :func:`derived_seed` makes independent seeds
for epochs and evaluations, :func:`rng_state`/:func:`set_rng_state` capture and restore all of
them for checkpoints, and :func:`forked_rng` runs a block on its own stream.

Example:
    >>> import torch
    >>> seed_all(0)
    >>> with forked_rng(derived_seed(0, "valid", 1)):
    ...     _ = torch.rand(3)  # does not move the global stream
    >>> a = torch.rand(1)
    >>> seed_all(0)
    >>> bool(torch.equal(a, torch.rand(1)))
    True
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
from collections.abc import Iterator, Mapping
from typing import Any

import torch


def derived_seed(seed: int, *tags: object) -> int:
    """A seed in ``[0, 2**63)`` that is a fixed function of ``seed`` and ``tags`` (JSON values).

    Example:
        >>> derived_seed(0, "train", 1) == derived_seed(0, "train", 1) != derived_seed(0, "train", 2)
        True
    """
    digest = hashlib.sha256(json.dumps([seed, *tags]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def numpy_module() -> Any:
    """The ``numpy`` module, or ``None`` when it is not installed (it is an extra)."""
    try:
        import numpy
    except ImportError:
        return None
    return numpy


def seed_all(seed: int) -> None:
    """Seed Python's ``random``, torch and (when installed) numpy's global RNGs."""
    random.seed(seed)
    torch.manual_seed(seed)
    np = numpy_module()
    if np is not None:
        np.random.seed(seed % 2**32)


def rng_state() -> dict[str, Any]:
    """The state of every global RNG, in a form ``torch.save(..., weights_only)`` can load."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    np = numpy_module()
    if np is not None:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state["numpy"] = (kind, keys.tolist(), int(pos), int(has_gauss), float(gauss))
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    np = numpy_module()
    if np is not None and "numpy" in state:
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def forked_rng(seed: int) -> Iterator[None]:
    """Run the block with every global RNG seeded from ``seed``, then restore their states."""
    saved = rng_state()
    seed_all(seed)
    try:
        yield
    finally:
        set_rng_state(saved)
