"""Shared helpers of the data tests: writers for small IDX files, and no network."""

from __future__ import annotations

import gzip
import urllib.error
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from latentgrad.data import files

IDX_TYPE_CODES = {"u1": 0x08, "i1": 0x09, ">i2": 0x0B, ">i4": 0x0C, ">f4": 0x0D, ">f8": 0x0E}


def _idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array`` (big-endian header and elements)."""
    dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    code = IDX_TYPE_CODES[dtype.str.replace("|", "")]
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes()
    return header + array.astype(dtype).tobytes()


def _write(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path``, gzip-compressed when the name ends in ``.gz``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


@pytest.fixture
def idx_bytes() -> Callable[[np.ndarray], bytes]:
    """``idx_bytes(array)``: the IDX encoding of ``array``."""
    return _idx_bytes


@pytest.fixture
def write_bytes() -> Callable[[Path, bytes], Path]:
    """``write_bytes(path, data)``: write ``data``, gzip-compressed when the name ends in .gz."""
    return _write


@pytest.fixture
def write_idx() -> Callable[[Path, np.ndarray], Path]:
    """``write_idx(path, array)``: write ``array`` as IDX (gzip-compressed for ``*.gz``)."""
    return lambda path, array: _write(path, _idx_bytes(array))


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never reach the network: downloads fail unless a test installs its own fetch."""

    def no_network(url: str, dest: Path) -> None:
        raise urllib.error.URLError("network disabled in the tests")

    monkeypatch.setattr(files, "_fetch", no_network)
