"""Readers for the file formats of the MNIST family: IDX and ``.amat`` text.

Both readers accept plain or gzip-compressed files (recognized by their content, so the name
does not matter, except that a name ending in ``.gz`` must hold gzip data) and raise
``ValueError`` naming the file for anything malformed: a bad magic number, a header that
disagrees with the data length, a corrupt or truncated gzip stream, rows of the wrong width.
They parse whole buffers with numpy, so the 50,000-row training file of the binarized MNIST
loads in well under a second.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zlib
from pathlib import Path

import numpy as np

__all__ = ["read_amat", "read_idx"]

_GZIP_MAGIC = b"\x1f\x8b"

# IDX type codes (third byte of the magic number) and the big-endian dtypes they denote.
_IDX_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def _read_bytes(path: str | os.PathLike[str]) -> tuple[Path, bytes]:
    """Return the file's contents, decompressed when they are gzip data."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] != _GZIP_MAGIC:
        if path.suffix == ".gz":
            raise ValueError(f"{path}: not a gzip file (the name ends in .gz)")
        return path, raw
    try:
        return path, gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt or truncated gzip data ({exc})") from exc


def read_idx(path: str | os.PathLike[str], magic: int | None = None) -> np.ndarray:
    """Read an IDX file (the format of MNIST and Fashion-MNIST).

    The file starts with a big-endian magic number ``0x0000TTNN`` (``TT`` the element type,
    ``NN`` the number of dimensions), then one big-endian ``int32`` size per dimension, then
    the elements in row-major order: ``2051`` (``0x0803``) for a stack of ``uint8`` images,
    ``2049`` (``0x0801``) for a vector of ``uint8`` labels.

    Args:
        path: the file, plain or gzip-compressed.
        magic: the magic number the file must have (e.g. ``2051`` for images), or ``None``
            to accept any valid IDX type.

    Returns:
        The elements, in native byte order, with the shape the header gives.

    Shape:
        ``(d_1, ..., d_n)`` as in the header, e.g. ``(60000, 28, 28)`` for images.

    Raises:
        ValueError: the file is not valid IDX (bad magic number, truncated header, more or
            fewer data bytes than the header announces, corrupt gzip data), or its magic
            number is not ``magic``.
        OSError: the file cannot be read.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "labels-idx1-ubyte"
        >>> _ = path.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1]))
        >>> read_idx(path, magic=2049)
        array([7, 2, 1], dtype=uint8)
    """
    path, data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes)")
    found = int.from_bytes(data[:4], "big")
    zero, type_code, ndim = data[0:2], data[2], data[3]
    if zero != b"\x00\x00" or type_code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(f"{path}: bad IDX magic number 0x{found:08x}; not an IDX file")
    if magic is not None and found != magic:
        raise ValueError(f"{path}: IDX magic number is {found}, expected {magic}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} of {header} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = math.prod(shape) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: the IDX header announces shape {shape} ({expected} data bytes), "
            f"but the file holds {len(data) - header} data bytes (truncated or corrupt)"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    # Copy into a writable array in native byte order (frombuffer views are read-only).
    return array.astype(dtype.newbyteorder("="))


def read_amat(path: str | os.PathLike[str], num_columns: int | None = None) -> np.ndarray:
    """Read an ``.amat`` text matrix (the format of Larochelle & Murray's binarized MNIST).

    One row per line, values separated by whitespace. The common layout of single-digit
    values separated by single spaces (``"0 1 0 ... 1\\n"``) is parsed directly from the
    bytes; any other layout (decimals, several spaces, CRLF) falls back to a general text
    parser.

    Args:
        path: the file, plain or gzip-compressed.
        num_columns: the width every row must have, or ``None`` to take it from the first row.

    Returns:
        The matrix as ``float32``.

    Shape:
        ``(num_rows, num_columns)``.

    Raises:
        ValueError: the file is empty, holds something other than numbers, has rows of
            different widths (e.g. a truncated last row) or rows not ``num_columns`` wide, or
            holds corrupt gzip data.
        OSError: the file cannot be read.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny.amat"
        >>> _ = path.write_text("0 1 1\\n1 0 0\\n")
        >>> read_amat(path, num_columns=3)
        array([[0., 1., 1.],
               [1., 0., 0.]], dtype=float32)
    """
    path, data = _read_bytes(path)
    if not data.strip():
        raise ValueError(f"{path}: empty .amat file")
    matrix = _parse_single_digits(path, data)
    if matrix is None:
        matrix = _parse_text(path, data)
    if num_columns is not None and matrix.shape[1] != num_columns:
        raise ValueError(
            f"{path}: rows have {matrix.shape[1]} values, expected {num_columns} (wrong row width)"
        )
    return matrix


def _parse_single_digits(path: Path, data: bytes) -> np.ndarray | None:
    """Parse ``"d d ... d\\n"`` rows straight from the bytes; ``None`` if the layout differs."""
    if not data.endswith(b"\n"):
        data += b"\n"
    line_length = data.find(b"\n") + 1
    if line_length < 2 or line_length % 2:
        return None
    complete = len(data) - len(data) % line_length
    rows = np.frombuffer(data, dtype=np.uint8, count=complete).reshape(-1, line_length)
    if not (np.all(rows[:, -1] == ord("\n")) and _single_digit_layout(rows[:, :-1])):
        return None
    tail = data[complete:]
    if tail:
        last = np.frombuffer(tail, dtype=np.uint8)[:-1]
        if tail.count(b"\n") != 1 or len(last) % 2 == 0 or not _single_digit_layout(last):
            return None
        # A shorter last row: the usual sign of a truncated file, reported without a slow parse.
        raise ValueError(
            f"{path}: row {len(rows) + 1} has {len(tail.split())} values, the rows before it "
            f"{line_length // 2} (wrong row width; truncated file?)"
        )
    return (rows[:, 0::2] - np.uint8(ord("0"))).astype(np.float32)


def _single_digit_layout(chars: np.ndarray) -> bool:
    """Whether each row of ``chars`` reads ``"d d ... d"`` (digits at even positions)."""
    # Bytes below "0" wrap around in the uint8 subtraction, so one comparison checks the range.
    return bool(
        np.all(chars[..., 0::2] - np.uint8(ord("0")) <= 9) and np.all(chars[..., 1::2] == ord(" "))
    )


def _parse_text(path: Path, data: bytes) -> np.ndarray:
    try:
        text = data.decode("ascii")
        return np.loadtxt(io.StringIO(text), dtype=np.float32, ndmin=2)
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        raise ValueError(
            f"{path}: malformed .amat file (wrong row width or not numbers): {exc}"
        ) from exc
