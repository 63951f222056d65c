"""Data sets for the experiments: the MNIST family and an embedded default.

``load_dataset(name)`` gives train/valid/test splits of flat images in ``[0, 1]``:
``"digits"`` (embedded, offline), ``"binarized-mnist"``, ``"mnist"`` and ``"fashion-mnist"``
(from the data directory ``$LATENTGRAD_DATA`` or ``~/.cache/latentgrad``, downloaded and
SHA-256-verified when missing). ``dynamic_binarize`` draws binary images from grayscale ones;
``read_idx`` and ``read_amat`` read the two file formats.

Example:
    >>> from latentgrad.data import dynamic_binarize, load_dataset
    >>> splits = load_dataset("digits")
    >>> batch = dynamic_binarize(splits.train[:32])
    >>> batch.shape
    torch.Size([32, 64])
"""

from latentgrad.data.datasets import DATASET_NAMES, DataSplits, dynamic_binarize, load_dataset
from latentgrad.data.files import (
    DATA_ENV_VAR,
    ChecksumError,
    DataNotFoundError,
    default_data_dir,
)
from latentgrad.data.formats import read_amat, read_idx

__all__ = [
    "DATASET_NAMES",
    "DATA_ENV_VAR",
    "ChecksumError",
    "DataNotFoundError",
    "DataSplits",
    "default_data_dir",
    "dynamic_binarize",
    "load_dataset",
    "read_amat",
    "read_idx",
]
