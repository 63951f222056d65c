"""Data sets: the embedded digits, DataSplits, dynamic binarization, and the real MNIST family."""

import gzip
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from latentgrad.data import DATASET_NAMES, DataSplits, dynamic_binarize, load_dataset

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


# --- digits -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    pytest.importorskip("sklearn")
    return load_dataset("digits")


def _sorted_rows(images: torch.Tensor, labels: torch.Tensor) -> list:
    return sorted(zip(map(tuple, images.tolist()), labels.tolist(), strict=True))


def test_digits_shapes_and_types(digits):
    assert digits.name == "digits" and digits.binary and digits.image_shape == (8, 8)
    assert digits.dim == 64 and digits.has_labels
    for split, n in [("train", 1197), ("valid", 300), ("test", 300)]:
        images, labels = getattr(digits, split), getattr(digits, f"{split}_labels")
        assert images.shape == (n, 64) and images.dtype == torch.float32
        assert labels.shape == (n,) and labels.dtype == torch.int64
        assert set(images.unique().tolist()) == {0.0, 1.0}
        assert set(labels.unique().tolist()) <= set(range(10))


def test_digits_is_a_partition_of_scikit_learns_digits(digits):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    expected = torch.from_numpy((bunch.data / 16 >= 0.5).astype(np.float32))
    images = torch.cat([digits.train, digits.valid, digits.test])
    labels = torch.cat([digits.train_labels, digits.valid_labels, digits.test_labels])
    # Every original image appears once: match rows with their labels after sorting both.
    original = _sorted_rows(expected, torch.from_numpy(bunch.target))
    assert _sorted_rows(images, labels) == original
    assert 0.2 < float(images.mean()) < 0.5


def test_digits_split_is_fixed(digits):
    again = load_dataset("Digits")
    for split in ("train", "valid", "test"):
        assert torch.equal(getattr(digits, split), getattr(again, split))
    # Pinned so that a change of the split (seed, permutation) is noticed.
    assert digits.test_labels[:10].tolist() == [8, 8, 2, 2, 2, 9, 8, 8, 3, 6]
    assert torch.bincount(digits.test_labels).tolist() == [27, 25, 36, 28, 38, 25, 30, 31, 25, 35]


def test_unknown_name():
    with pytest.raises(ValueError, match=r"unknown data set 'cifar'.*digits"):
        load_dataset("cifar")
    assert set(DATASET_NAMES) == {"digits", "binarized-mnist", "mnist", "fashion-mnist"}


# --- DataSplits ---------------------------------------------------------------------------


def test_data_splits_checks_shapes():
    x = torch.zeros(3, 4)
    DataSplits("t", x, x, x, binary=True, image_shape=(2, 2))
    with pytest.raises(ValueError, match="valid has shape"):
        DataSplits("t", x, torch.zeros(3, 5), x, binary=True, image_shape=(2, 2))
    with pytest.raises(ValueError, match=r"expected \(N, 6\)"):
        DataSplits("t", x, x, x, binary=True, image_shape=(2, 3))
    with pytest.raises(ValueError, match="test_labels"):
        DataSplits("t", x, x, x, False, (4,), test_labels=torch.zeros(2, dtype=torch.long))


def test_data_splits_repr_is_short(digits):
    assert repr(digits) == (
        "DataSplits('digits', train=(1197, 64), valid=(300, 64), test=(300, 64), "
        "labels=True, binary=True, image_shape=(8, 8))"
    )


# --- dynamic binarization -----------------------------------------------------------------


@pytest.mark.stat
def test_dynamic_binarize_statistics():
    """Pixel frequencies match the intensities. Fixed seed; each bound is 5 standard errors,
    so a fresh seed fails with probability below 1e-5."""
    n = 20_000
    p = torch.linspace(0, 1, 11).double()
    x = p.expand(n, -1)
    z = dynamic_binarize(x, torch.Generator().manual_seed(0))
    assert z.dtype == torch.float64 and z.shape == x.shape
    assert set(z.unique().tolist()) <= {0.0, 1.0}
    freq = z.mean(0)
    se = (p * (1 - p) / n).sqrt()
    assert torch.all((freq - p).abs() <= 5 * se + 1e-12), (freq, p)
    assert freq[0] == 0 and freq[-1] == 1  # the ends are exact
    # Pixels are independent: the correlation of two columns with p = 0.5 is ~0.
    a, b = z[:, 5] - 0.5, z[:, 5].roll(1) - 0.5
    assert abs(float((a * b).mean() / 0.25)) <= 5 / math.sqrt(n)


def test_dynamic_binarize_is_reproducible_and_fresh():
    x = torch.rand(64, 784, generator=torch.Generator().manual_seed(1))
    first = dynamic_binarize(x, torch.Generator().manual_seed(7))
    assert torch.equal(first, dynamic_binarize(x, torch.Generator().manual_seed(7)))
    assert not torch.equal(first, dynamic_binarize(x, torch.Generator().manual_seed(8)))


def test_dynamic_binarize_validates():
    with pytest.raises(TypeError, match="floating point"):
        dynamic_binarize(torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dynamic_binarize(torch.tensor([0.5, 1.5]))
    assert dynamic_binarize(torch.empty(0, 4)).shape == (0, 4)


# --- the real data (skipped when the files are not there) ---------------------------------


def _real_data_dir(subdir: str) -> Path:
    roots = [Path(__file__).resolve().parents[3] / "shared" / "data"]
    if os.environ.get("LATENTGRAD_DATA"):
        roots.insert(0, Path(os.environ["LATENTGRAD_DATA"]))
    for root in roots:
        if (root / subdir).is_dir():
            return root
    pytest.skip(f"no {subdir}/ in LATENTGRAD_DATA or ../shared/data")


def test_real_binarized_mnist():
    root = _real_data_dir("binarized-mnist")
    splits = load_dataset("binarized-mnist", root, download=False)
    assert splits.binary and not splits.has_labels and splits.image_shape == (28, 28)
    assert splits.valid_labels is None and splits.test_labels is None
    for split, n in [("train", 50_000), ("valid", 10_000), ("test", 10_000)]:
        images = getattr(splits, split)
        assert images.shape == (n, 784) and images.dtype == torch.float32
        assert torch.all((images == 0) | (images == 1))
        assert abs(float(images.mean()) - 0.13) < 0.01
    # Independent of the reader: the recipe of shared/data/README.md on the test file.
    path = root / "binarized-mnist" / "binarized_mnist_test.amat.gz"
    if path.exists():
        raw = np.frombuffer(gzip.decompress(path.read_bytes()), np.uint8)[0::2] - 48
        assert torch.equal(splits.test, torch.from_numpy(raw.reshape(-1, 784).astype("f4")))


def test_real_mnist():
    splits = load_dataset("mnist", _real_data_dir("mnist"), download=False)
    assert not splits.binary and splits.image_shape == (28, 28)
    assert [len(splits.train), len(splits.valid), len(splits.test)] == [50_000, 10_000, 10_000]
    assert torch.bincount(splits.test_labels).tolist() == MNIST_TEST_COUNTS
    train_and_valid = torch.cat([splits.train_labels, splits.valid_labels])
    assert torch.bincount(train_and_valid).tolist() == MNIST_TRAIN_COUNTS
    pixels = torch.cat([splits.train, splits.valid])
    assert pixels.shape[1] == 784 and pixels.dtype == torch.float32
    assert float(pixels.min()) == 0 and float(pixels.max()) == 1
    assert abs(float(pixels.double().mean()) - 0.1307) < 5e-4
    # Grayscale, not binary: many intermediate values.
    assert int(((pixels > 0) & (pixels < 1)).sum()) > 1_000_000


def test_real_fashion_mnist():
    splits = load_dataset("fashion-mnist", _real_data_dir("fashion-mnist"), download=False)
    assert not splits.binary and splits.image_shape == (28, 28)
    assert [len(splits.train), len(splits.valid), len(splits.test)] == [55_000, 5_000, 10_000]
    assert torch.bincount(splits.test_labels).tolist() == [1000] * 10
    train_and_valid = torch.cat([splits.train_labels, splits.valid_labels])
    assert torch.bincount(train_and_valid).tolist() == [6000] * 10
    assert 0 <= float(splits.train.min()) and float(splits.train.max()) <= 1
    assert 0.2 < float(splits.test.mean()) < 0.4
