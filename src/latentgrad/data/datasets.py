"""The benchmark data sets: binarized MNIST, MNIST, Fashion-MNIST and the embedded digits.

``load_dataset(name)`` returns a :class:`DataSplits` of flat ``float32`` images in ``[0, 1]``.
``"digits"`` (scikit-learn's 8x8 digits, shipped with scikit-learn) works offline on a fresh
machine; the MNIST family is read from the data directory (see :mod:`latentgrad.data.files`) and
downloaded there, checksum-verified, when missing.

References:
    [1] LeCun, Bottou, Bengio & Haffner, Proc. IEEE 1998 (MNIST).
    [2] Salakhutdinov & Murray, ICML 2008; Larochelle & Murray, AISTATS 2011 (binarized MNIST).
    [3] Xiao, Rasul & Vollgraf, arXiv:1708.07747, 2017 (Fashion-MNIST).
    [4] Correia, Niculae, Aziz & Martins, NeurIPS 2020 (the 55k/5k Fashion-MNIST split).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from latentgrad.data.files import ensure_files, resolve_data_dir
from latentgrad.data.formats import read_amat, read_idx

__all__ = ["DATASET_NAMES", "DataSplits", "dynamic_binarize", "load_dataset"]

DATASET_NAMES: tuple[str, ...] = ("digits", "binarized-mnist", "mnist", "fashion-mnist")
"""The names :func:`load_dataset` knows; ``"digits"`` needs no data directory."""

_IDX_IMAGES, _IDX_LABELS = 2051, 2049
_DIGITS_SEED = 0
_DIGITS_VALID = _DIGITS_TEST = 300


@dataclass(frozen=True, repr=False)
class DataSplits:
    """A data set split into train, validation and test images.

    Attributes:
        name: the data set's name.
        train: training images, flattened, ``float32`` in ``[0, 1]``.
        valid: validation images.
        test: test images.
        binary: whether the images are already binary (statically binarized); when false,
            binarize them with :func:`dynamic_binarize` for a Bernoulli likelihood.
        image_shape: the shape of one image, e.g. ``(28, 28)``.
        train_labels: the class of each training image (``int64``), or ``None`` when the data
            set has no labels; the same for ``valid_labels`` and ``test_labels``.

    Shape:
        ``train``: ``(N_train, D)`` with ``D = prod(image_shape)``; ``train_labels``:
        ``(N_train,)``; likewise for the other splits.

    Raises:
        ValueError: the splits disagree on ``D``, ``D`` is not ``prod(image_shape)``, or labels
            do not match their images in number.

    Example:
        >>> splits = load_dataset("digits")
        >>> splits
        DataSplits('digits', train=(1197, 64), valid=(300, 64), test=(300, 64), labels=True, binary=True, image_shape=(8, 8))
        >>> splits.train.view(-1, *splits.image_shape).shape
        torch.Size([1197, 8, 8])
    """

    name: str
    train: Tensor
    valid: Tensor
    test: Tensor
    binary: bool
    image_shape: tuple[int, ...]
    train_labels: Tensor | None = None
    valid_labels: Tensor | None = None
    test_labels: Tensor | None = None

    def __post_init__(self) -> None:
        dim = math.prod(self.image_shape)
        for split in ("train", "valid", "test"):
            images: Tensor = getattr(self, split)
            if images.dim() != 2 or images.shape[1] != dim:
                raise ValueError(
                    f"{self.name}: {split} has shape {tuple(images.shape)}, expected (N, {dim}) "
                    f"for images of shape {self.image_shape}"
                )
            labels: Tensor | None = getattr(self, f"{split}_labels")
            if labels is not None and labels.shape != images.shape[:1]:
                raise ValueError(
                    f"{self.name}: {split}_labels has shape {tuple(labels.shape)}, expected "
                    f"({images.shape[0]},)"
                )

    @property
    def dim(self) -> int:
        """The number of pixels ``D`` of one flattened image."""
        return self.train.shape[1]

    @property
    def has_labels(self) -> bool:
        """Whether the data set comes with class labels."""
        return self.train_labels is not None

    def __repr__(self) -> str:
        shapes = ", ".join(
            f"{split}={tuple(getattr(self, split).shape)}" for split in ("train", "valid", "test")
        )
        return (
            f"DataSplits({self.name!r}, {shapes}, labels={self.has_labels}, "
            f"binary={self.binary}, image_shape={self.image_shape})"
        )


def load_dataset(
    name: str, data_dir: str | os.PathLike[str] | None = None, download: bool = True
) -> DataSplits:
    """Load a benchmark data set as flat ``float32`` images in ``[0, 1]``.

    - ``"digits"``: scikit-learn's 8x8 digits, 1197/300/300 images, labels, binary, (8, 8).
    - ``"binarized-mnist"``: the fixed binarized MNIST [2], 50000/10000/10000, no labels,
      binary, (28, 28).
    - ``"mnist"``: MNIST [1], grayscale / 255, 50000/10000/10000, labels, (28, 28).
    - ``"fashion-mnist"``: Fashion-MNIST [3], grayscale / 255, 55000/5000/10000, labels,
      (28, 28).

    ``digits`` is embedded (scikit-learn ships it): intensities ``0..16`` divided by 16 and
    set to 1 where at least 0.5, split by a fixed seeded permutation, so it loads the same
    on every machine without a network. ``binarized-mnist`` is Larochelle & Murray's fixed
    binarization [2]. The MNIST validation sets are the last 10,000 (MNIST) or 5,000
    (Fashion-MNIST [4]) training images; the test sets are the published ones.

    Args:
        name: one of :data:`DATASET_NAMES` (case and ``_``/``-`` do not matter).
        data_dir: the data directory holding ``mnist/``, ``fashion-mnist/`` and
            ``binarized-mnist/``; default ``$LATENTGRAD_DATA``, else ``~/.cache/latentgrad``.
            Not used for ``digits``.
        download: download missing files (checksum-verified) into the data directory.

    Returns:
        The splits, with labels where the data set has them.

    Shape:
        Images ``(N, D)`` (``D = 64`` for digits, 784 otherwise); labels ``(N,)``.

    Raises:
        ValueError: ``name`` is unknown, or a file is malformed.
        DataNotFoundError: files are missing and could not be downloaded; the message names
            them and the directory they belong in.
        ChecksumError: a file is not the published one.
        ImportError: ``digits`` without scikit-learn installed.

    Example:
        >>> splits = load_dataset("digits")
        >>> splits.train.shape, splits.valid.shape, splits.test.shape
        (torch.Size([1197, 64]), torch.Size([300, 64]), torch.Size([300, 64]))
        >>> splits.binary, splits.image_shape, splits.train_labels.dtype
        (True, (8, 8), torch.int64)
        >>> sorted(splits.train.unique().tolist())
        [0.0, 1.0]
    """
    key = name.strip().lower().replace("_", "-")
    if key not in _LOADERS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    return _LOADERS[key](resolve_data_dir(data_dir), download)


def dynamic_binarize(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Sample binary images whose pixels are on with probability equal to the intensity.

    Dynamic binarization draws a fresh binary version of grayscale data (e.g. every epoch),
    which regularizes models with a Bernoulli likelihood compared with one fixed draw.

    Args:
        x: intensities in ``[0, 1]``, any shape, floating point.
        generator: the random generator to draw from (default: torch's global one).

    Returns:
        ``z ~ Bernoulli(x)`` elementwise, with ``x``'s dtype and device.

    Shape:
        Same as ``x``.

    Raises:
        TypeError: ``x`` is not floating point.
        ValueError: ``x`` has values outside ``[0, 1]``.

    Example:
        >>> x = load_dataset("digits").train * 0.5
        >>> z = dynamic_binarize(x, torch.Generator().manual_seed(0))
        >>> z.shape, sorted(z.unique().tolist())
        (torch.Size([1197, 64]), [0.0, 1.0])
    """
    if not x.is_floating_point():
        raise TypeError(f"dynamic_binarize needs floating point intensities, got {x.dtype}")
    if x.numel() and not bool(((x >= 0) & (x <= 1)).all()):
        raise ValueError("dynamic_binarize needs intensities in [0, 1]")
    return torch.bernoulli(x, generator=generator)


def _load_digits(data_dir: Path, download: bool) -> DataSplits:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError(
            "the 'digits' data set comes with scikit-learn, which is not installed: "
            "pip install 'latentgrad[experiments]' (or scikit-learn)",
            name="sklearn",
        ) from exc
    bunch = load_digits()
    images = (bunch.data / 16.0 >= 0.5).astype(np.float32)
    labels = bunch.target.astype(np.int64)
    # The legacy RandomState stream is frozen across numpy versions (Generator streams are not),
    # so the split is the same everywhere.
    order = np.random.RandomState(_DIGITS_SEED).permutation(len(images))
    num_train = len(images) - _DIGITS_VALID - _DIGITS_TEST
    parts = np.split(order, [num_train, num_train + _DIGITS_VALID])
    x = [torch.from_numpy(images[part]) for part in parts]
    y = [torch.from_numpy(labels[part]) for part in parts]
    return DataSplits(
        "digits",
        train=x[0],
        valid=x[1],
        test=x[2],
        binary=True,
        image_shape=(8, 8),
        train_labels=y[0],
        valid_labels=y[1],
        test_labels=y[2],
    )


def _load_binarized_mnist(data_dir: Path, download: bool) -> DataSplits:
    paths = ensure_files("binarized-mnist", data_dir, download)
    train, valid, test = (
        torch.from_numpy(read_amat(paths[split], num_columns=784))
        for split in ("train", "valid", "test")
    )
    return DataSplits("binarized-mnist", train, valid, test, binary=True, image_shape=(28, 28))


def _idx_loader(name: str, num_train: int) -> Callable[[Path, bool], DataSplits]:
    def load(data_dir: Path, download: bool) -> DataSplits:
        paths = ensure_files(name, data_dir, download)
        train_images, train_labels = _read_idx_pair(paths["train_images"], paths["train_labels"])
        test_images, test_labels = _read_idx_pair(paths["test_images"], paths["test_labels"])
        if not 0 < num_train < len(train_images):
            raise ValueError(
                f"{paths['train_images']}: {len(train_images)} training images, "
                f"need more than {num_train}"
            )
        return DataSplits(
            name,
            train=_unit_float(train_images[:num_train]),
            valid=_unit_float(train_images[num_train:]),
            test=_unit_float(test_images),
            binary=False,
            image_shape=train_images.shape[1:],
            train_labels=torch.from_numpy(train_labels[:num_train].astype(np.int64)),
            valid_labels=torch.from_numpy(train_labels[num_train:].astype(np.int64)),
            test_labels=torch.from_numpy(test_labels.astype(np.int64)),
        )

    return load


def _read_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, magic=_IDX_IMAGES)
    labels = read_idx(labels_path, magic=_IDX_LABELS)
    if len(images) != len(labels):
        raise ValueError(f"{images_path}: {len(images)} images but {len(labels)} labels")
    return images, labels


def _unit_float(images: np.ndarray) -> Tensor:
    flat = images.reshape(len(images), -1).astype(np.float32)
    flat /= 255.0
    return torch.from_numpy(flat)


_LOADERS: dict[str, Callable[[Path, bool], DataSplits]] = {
    "digits": _load_digits,
    "binarized-mnist": _load_binarized_mnist,
    "mnist": _idx_loader("mnist", num_train=50_000),
    "fashion-mnist": _idx_loader("fashion-mnist", num_train=55_000),
}
