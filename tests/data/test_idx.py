"""IDX reader: round trips (plain and gzip, all element types) and clear errors."""

import gzip

import numpy as np
import pytest

from latentgrad.data import read_idx


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_reads_images_and_labels(tmp_path, write_idx, name):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=5, dtype=np.uint8)
    image_path = write_idx(tmp_path / name, images)
    label_path = write_idx(tmp_path / name.replace("images-idx3", "labels-idx1"), labels)
    read = read_idx(image_path, magic=2051)
    np.testing.assert_array_equal(read, images)
    assert read.dtype == np.uint8 and read.flags.writeable
    np.testing.assert_array_equal(read_idx(label_path, magic=2049), labels)
    np.testing.assert_array_equal(read_idx(label_path), labels)


@pytest.mark.parametrize("dtype", ["i1", ">i2", ">i4", ">f4", ">f8"])
def test_reads_every_element_type_in_native_order(tmp_path, write_idx, dtype):
    array = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype)
    read = read_idx(write_idx(tmp_path / "x.idx.gz", array))
    np.testing.assert_array_equal(read, array)
    assert read.dtype.isnative and read.dtype.kind == np.dtype(dtype).kind


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (bytes([1, 0, 8, 1]), "bad IDX magic"),  # first two bytes must be zero
        (bytes([0, 0, 7, 1]), "bad IDX magic"),  # unknown element type
        (bytes([0, 0, 8, 0]), "bad IDX magic"),  # no dimensions
    ],
)
def test_bad_magic(tmp_path, header, message):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(header + (3).to_bytes(4, "big") + bytes(3))
    with pytest.raises(ValueError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_wrong_expected_magic(tmp_path, write_idx):
    path = write_idx(tmp_path / "labels.gz", np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match="magic number is 2049, expected 2051"):
        read_idx(path, magic=2051)


@pytest.mark.parametrize("change", ["truncate", "extend"])
def test_data_length_disagrees_with_header(tmp_path, idx_bytes, write_bytes, change):
    data = idx_bytes(np.zeros((3, 2, 2), np.uint8))
    data = data[:-1] if change == "truncate" else data + b"\0"
    path = write_bytes(tmp_path / "images-idx3-ubyte.gz", data)
    with pytest.raises(ValueError, match="truncated or corrupt") as info:
        read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("size", [0, 3, 9])
def test_truncated_header(tmp_path, idx_bytes, size):
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((3, 2, 2), np.uint8))[:size])
    with pytest.raises(ValueError, match="truncated IDX header") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_gz_name_without_gzip_data(tmp_path, idx_bytes):
    path = tmp_path / "labels-idx1-ubyte.gz"
    path.write_bytes(idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(ValueError, match="not a gzip file"):
        read_idx(path)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_gzip(tmp_path, idx_bytes, damage):
    rng = np.random.default_rng(1)
    packed = gzip.compress(idx_bytes(rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)))
    if damage == "garbage":
        packed = packed[:10] + bytes(reversed(packed[10:]))
    else:
        packed = packed[: len(packed) // 2]
    path = tmp_path / "images-idx3-ubyte.gz"
    path.write_bytes(packed)
    with pytest.raises(ValueError, match="corrupt or truncated gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nothing-idx1-ubyte")
