"""Tiny synthetic image data sets, to run the image experiments in tests at toy size.

The images are noisy copies of a few random binary prototypes: structure a tiny model can
learn in a few steps, drawn from fixed seeds (the same bits on every run and every machine).
:class:`ToySplits` has the fields the experiments read from
:class:`~latentgrad.data.DataSplits`.

Example:
    >>> from latentgrad.testing import toy_image_splits
    >>> data = toy_image_splits((3, 4), prototypes=3, noise=0.05, sizes=(48, 16, 16))
    >>> data.train.shape, data.image_shape, data.binary
    (torch.Size([48, 12]), (3, 4), True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

PROTOTYPE_SEED = 0
"""The seed of the prototypes, the same for every split."""

SPLIT_SEEDS = (1, 2, 3)
"""The seeds of the train, validation and test draws of :func:`toy_image_splits`."""


@dataclass(frozen=True)
class ToySplits:
    """Train, validation and test images, with the fields of :class:`~latentgrad.data.DataSplits`
    the experiments read.

    Attributes:
        train: training images, flattened, ``float32`` in ``[0, 1]``.
        valid: validation images.
        test: test images.
        binary: whether the images are binary (else the experiments binarize them).
        image_shape: the shape of one image.

    Shape:
        ``train``: ``(N_train, D)`` with ``D = prod(image_shape)``; likewise the other splits.
    """

    train: Tensor
    valid: Tensor
    test: Tensor
    binary: bool
    image_shape: tuple[int, ...]


def noisy_patterns(
    n: int, seed: int, *, image_shape: tuple[int, ...], prototypes: int, noise: float
) -> Tensor:
    """``n`` noisy copies of ``prototypes`` fixed random binary images.

    The prototypes are drawn from :data:`PROTOTYPE_SEED` (the same for every ``seed``); then,
    from ``seed``, each image picks a prototype uniformly and flips each pixel with probability
    ``noise``.

    Args:
        n: the number of images.
        seed: the seed of the choice of prototypes and of the flips.
        image_shape: the shape of one image.
        prototypes: the number of prototypes.
        noise: the probability of flipping a pixel.

    Returns:
        Binary images, flattened, ``float32``.

    Shape:
        ``(n, prod(image_shape))``.

    Example:
        >>> x = noisy_patterns(5, seed=1, image_shape=(4, 4), prototypes=4, noise=0.1)
        >>> x.shape, sorted(x.unique().tolist())
        (torch.Size([5, 16]), [0.0, 1.0])
    """
    pixels = math.prod(image_shape)
    g = torch.Generator().manual_seed(PROTOTYPE_SEED)
    images = torch.rand(prototypes, pixels, generator=g).round()
    g.manual_seed(seed)
    x = images[torch.randint(prototypes, (n,), generator=g)]
    flip = torch.rand(n, pixels, generator=g) < noise
    return torch.where(flip, 1 - x, x)


def toy_image_splits(
    image_shape: tuple[int, ...],
    *,
    prototypes: int,
    noise: float,
    sizes: tuple[int, int, int],
    binary: bool = True,
) -> ToySplits:
    """Train, validation and test splits of :func:`noisy_patterns`.

    The splits are drawn from the seeds :data:`SPLIT_SEEDS`, from the same prototypes.

    Args:
        image_shape: the shape of one image.
        prototypes: the number of prototypes.
        noise: the probability of flipping a pixel.
        sizes: the number of train, validation and test images.
        binary: binary images; when false, grey levels ``0.2 + 0.6 x`` in ``[0, 1]`` that an
            experiment must binarize.

    Example:
        >>> grey = toy_image_splits((4, 4), prototypes=4, noise=0.1, sizes=(8, 4, 4), binary=False)
        >>> sorted(grey.valid.unique().tolist()), grey.binary
        ([0.20000000298023224, 0.800000011920929], False)
    """
    train, valid, test = (
        noisy_patterns(n, seed, image_shape=image_shape, prototypes=prototypes, noise=noise)
        for n, seed in zip(sizes, SPLIT_SEEDS, strict=True)
    )
    if not binary:
        train, valid, test = (0.2 + 0.6 * x for x in (train, valid, test))
    return ToySplits(train, valid, test, binary, tuple(image_shape))
