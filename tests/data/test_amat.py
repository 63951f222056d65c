""".amat reader: the fast byte parser, the general text fallback, and clear errors."""

import gzip

import numpy as np
import pytest

from latentgrad.data import read_amat


def _amat(matrix: np.ndarray, sep: str = " ", end: str = "\n") -> bytes:
    return "".join(sep.join(map(str, row)) + end for row in matrix.tolist()).encode()


@pytest.mark.parametrize("name", ["x.amat", "x.amat.gz"])
def test_reads_binary_rows(tmp_path, write_bytes, name):
    matrix = np.random.default_rng(0).integers(0, 2, size=(7, 784))
    path = write_bytes(tmp_path / name, _amat(matrix))
    read = read_amat(path, num_columns=784)
    assert read.dtype == np.float32 and read.shape == (7, 784)
    np.testing.assert_array_equal(read, matrix)


def test_fast_parser_agrees_with_numpy_loadtxt(tmp_path):
    matrix = np.random.default_rng(1).integers(0, 10, size=(40, 13))
    path = tmp_path / "x.amat"
    path.write_bytes(_amat(matrix))
    np.testing.assert_array_equal(read_amat(path), np.loadtxt(path, dtype=np.float32))


@pytest.mark.parametrize(
    "text",
    [
        "0 1 1\n1 0 0",  # no final newline
        "0 1 1\r\n1 0 0\r\n",  # CRLF
        "0  1 1\n1 0   0\n",  # several spaces
        "0.0 1.0 1\n1 0 0.00\n",  # decimals
        "\n0 1 1\n1 0 0\n\n",  # blank lines
    ],
)
def test_other_layouts(tmp_path, text):
    path = tmp_path / "x.amat"
    path.write_text(text, newline="")
    np.testing.assert_array_equal(read_amat(path, 3), [[0, 1, 1], [1, 0, 0]])


def test_decimal_values(tmp_path):
    path = tmp_path / "x.amat"
    path.write_text("0.25 0.5\n1e-1 3\n")
    np.testing.assert_allclose(read_amat(path), [[0.25, 0.5], [0.1, 3.0]])


def test_truncated_last_row(tmp_path, write_bytes):
    data = _amat(np.ones((5, 784), int))
    path = write_bytes(tmp_path / "x.amat.gz", data[: 4 * 1568 + 101])
    with pytest.raises(ValueError, match="row 5 has 51 values, the rows before it 784") as info:
        read_amat(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "0 1 1\n1 0\n0 1 1\n",  # a short row in the middle
        "0 1 1\n1 0 0 1\n",  # a long row
        "0 1 1\n1 x 0\n",  # not a number
    ],
)
def test_malformed_rows(tmp_path, text):
    path = tmp_path / "x.amat"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"malformed \.amat") as info:
        read_amat(path)
    assert str(path) in str(info.value)


def test_wrong_row_width(tmp_path):
    path = tmp_path / "x.amat"
    path.write_text("0 1 1\n1 0 0\n")
    with pytest.raises(ValueError, match="rows have 3 values, expected 784"):
        read_amat(path, num_columns=784)


def test_empty_file(tmp_path):
    path = tmp_path / "x.amat"
    path.write_text(" \n")
    with pytest.raises(ValueError, match="empty"):
        read_amat(path)


def test_not_text(tmp_path):
    path = tmp_path / "x.amat"
    path.write_bytes(b"0 1\n\xff\xfe\n")
    with pytest.raises(ValueError, match=r"malformed \.amat"):
        read_amat(path)


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "x.amat.gz"
    path.write_bytes(gzip.compress(_amat(np.ones((100, 784), int)))[:-20])
    with pytest.raises(ValueError, match="corrupt or truncated gzip") as info:
        read_amat(path)
    assert str(path) in str(info.value)
