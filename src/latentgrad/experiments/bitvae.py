"""Bit-vector VAE on Fashion-MNIST: Correia, Niculae, Aziz & Martins (NeurIPS 2020), Section 5.

An image ``x`` of ``P`` pixels, each a categorical over ``levels`` grey levels (256), is encoded
into ``q(z | x)`` over bit-vectors ``z in {0, 1}^D`` and decoded into ``p(x | z)``, a
categorical per pixel, under the uniform prior ``p(z) = 2^-D``:

- encoder ``P-128-D`` (ReLU): the scores ``s`` of the ``D`` bits;
- decoder ``D-128-(P x 5)`` (ReLU), then one linear map ``5 -> levels`` applied to each pixel's
  5 features: the pixel logits.

Training minimizes the negative ELBO

    E_q[-log p(x | z)] + KL(q(z | x) || p(z)),     KL = D log 2 - H(q),

with the expectation's gradient from the chosen estimator and the KL analytic. The latent
family comes with the estimator:

- ``sf-ma``, ``sfe+``, ``nvil``, ``gs``, ``st-gs``: factorized bits, ``Bernoulli(logits=s)``;
- ``topk-sparsemax``: :class:`~latentgrad.TopKSparsemax` over all bit-vectors (``k = 10``);
- ``sparsemap``: :class:`~latentgrad.SparseMAP` over free bit-vectors; ``sparsemap-budget``:
  over bit-vectors with at most ``budget`` ones (default ``D // 2``: Correia et al.'s 16 for
  ``D = 32`` and 64 for ``D = 128``). As in Correia et al.'s code each bit is an on/off pair
  with scores ``(s_i, 0)`` (``bit_encoding="one-hot"``), so the mean of free bits is
  ``clamp((s + 1) / 2, 0, 1)``; ``bit_encoding="ones"`` gives ``clamp(s, 0, 1)``.

For the sparse families the expectation is an exact sum over the few structures of nonzero
weight (:class:`~latentgrad.Marginalize`) and ``H(q)`` is the entropy over that support.

**The bound.** ``log p(x)`` is estimated by importance sampling with ``S = eval_samples``
(1024) draws from the proposal

    r(z | x) = (1 - eps) q(z | x) + eps 2^-D,     eps = uniform_mix (0.1),

the encoder's posterior mixed with the uniform distribution over ``{0, 1}^D``:

    log p(x) >= E_r[log (1/S) sum_s p(x | z_s) p(z_s) / r(z_s | x)].

A sparse ``q`` has zero mass on all but a few bit-vectors, while ``p(x, z) > 0`` for every
``z`` (uniform prior, softmax pixels). Importance sampling with ``q`` alone would only sum
``p(x, z)`` over the support of ``q``, a lower bound of a smaller quantity. ``r`` is positive
everywhere (``r(z) >= eps 2^-D``), so ``E_r[p(x, z) / r(z)] = sum_z p(x, z) = p(x)``: the
average of the weights is unbiased for ``p(x)`` and, by Jensen's inequality, its log is a
lower bound of ``log p(x)`` in expectation, tightening as ``S`` grows. The same proposal serves
every family, so the bounds compare; it costs little where ``q`` is good: a draw from the
``q`` component gets the weight ``p(x, z) / r(z) ~ p(x, z) / ((1 - eps) q(z))``, and a fraction
``1 - eps`` of the draws come from it, so the estimate is close to importance sampling with
``q`` itself (when ``q(z) >> 2^-D``). Bits per dimension: ``bpd = -log p(x) / (P log 2)``.

**Pixels.** Grey levels in ``[0, 1]`` (Fashion-MNIST: ``/ 255``) become the integers
``round(x (levels - 1))``, so Fashion-MNIST's pixels are its 256 grey levels. The embedded
``digits`` set is binary, so its pixels take 2 of the 256 levels (0 and 255); ``--levels 2``
models them with 2 levels instead.

Paper settings kept as defaults: Fashion-MNIST (55,000 / 5,000 / 10,000), ``D = 32``
(``num_bits``; the paper also runs 128), batch 64, Adam, 100 epochs, the per-estimator
learning rates of Correia et al.'s scripts (``lr=None``; see :data:`LEARNING_RATES`), 1024
importance samples. Our choices: the proposal above, ``valid_samples`` = 100 samples for the
per-epoch validation bound.

References:
    [1] Correia, Niculae, Aziz & Martins, "Efficient Marginalization of Discrete and Structured
        Latent Variables via Sparsity", NeurIPS 2020.
    [2] Niculae, Martins, Blondel & Cardie, "SparseMAP: Differentiable Sparse Structured
        Inference", ICML 2018.
    [3] Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from latentgrad.distributions import Bernoulli, SparseMAP, TopKSparsemax
from latentgrad.estimators import LatentDistribution, PackedLoss, pack_support
from latentgrad.lab.config import (
    FOR_LATENTS,
    RECORDED_BEFORE,
    is_positive_int,
    require,
    require_choice,
    require_positive_ints,
)
from latentgrad.lab.experiment import Experiment, PresetLRConfig, ResolvedEstimator
from latentgrad.lab.images import (
    ACTIVATIONS,
    EVAL_DATA_SEED,
    SPLITS,
    DataSplitsLike,
    check_split,
    chunk_sizes,
    eval_sample_count,
    eval_subset,
    has_relaxed_value,
    make_optimizer,
    mlp,
    shuffled_batches,
    summed_linear_logsumexp,
)
from latentgrad.mappings.oracles import BudgetBits, FreeBits
from latentgrad.schedules import Scheduled

#: Correia et al.'s estimators: SFE (``sf-ma``: a moving-average baseline), SFE+, NVIL, GS and
#: ST-GS on factorized bits; top-k sparsemax, SparseMAP and SparseMAP with a budget.
ESTIMATORS = (
    "sf-ma",
    "sfe+",
    "nvil",
    "gs",
    "st-gs",
    "topk-sparsemax",
    "sparsemap",
    "sparsemap-budget",
)

#: Learning rates of Correia et al.'s scripts by latent size and estimator (the budget at
#: ``D = 128`` uses SparseMAP's 2e-3, as their script does).
LEARNING_RATES: Mapping[int, Mapping[str, float]] = {
    32: {
        "sf-ma": 1e-3,
        "sfe+": 1e-3,
        "nvil": 1e-3,
        "gs": 1e-3,
        "st-gs": 1e-3,
        "topk-sparsemax": 2e-3,
        "sparsemap": 2e-3,
        "sparsemap-budget": 2e-3,
    },
    128: {
        "sf-ma": 1e-3,
        "sfe+": 1e-3,
        "nvil": 5e-4,
        "gs": 1e-3,
        "st-gs": 5e-4,
        "topk-sparsemax": 1e-3,
        "sparsemap": 2e-3,
        "sparsemap-budget": 2e-3,
    },
}

#: Estimator options of Correia et al.'s scripts that differ from the registry's defaults, by
#: latent size (as :data:`LEARNING_RATES`) and estimator. NVIL's baseline network maps the
#: image through three ReLU layers of 512 units (``lvmhelpers/nvil.py``), where Mnih & Gregor's,
#: the registry's, has one tanh layer of 100. Gumbel-Softmax anneals its temperature as the
#: registry's does, ``max(0.5, exp(-r t))`` every 1000 steps, but with ``r = 1e-5`` instead of
#: Jang et al.'s ``1e-4`` except for Gumbel-Softmax at ``D = 128`` (``scripts/bit_vector/``).
#: Runs recorded before these presets (December 2026) used the registry's settings; their
#: records say so in their options.
ESTIMATOR_PRESETS: Mapping[int, Mapping[str, Mapping[str, Any]]] = {
    32: {
        "nvil": {"nvil_hidden": 512, "nvil_layers": 3, "nvil_activation": "relu"},
        "gs": {"tau_rate": 1e-5},
        "st-gs": {"tau_rate": 1e-5},
    },
    128: {
        "nvil": {"nvil_hidden": 512, "nvil_layers": 3, "nvil_activation": "relu"},
        "st-gs": {"tau_rate": 1e-5},
    },
}

#: Samples x examples decoded at once by :func:`importance_sampled_bound`: each is ``P x
#: levels`` logits (0.8 MB in float32 for Fashion-MNIST), and a pass holds a few such tensors.
EVAL_CHUNK = 2**8

#: How SparseMAP sees the scores (``BitVAEConfig.bit_encoding``).
BIT_ENCODINGS = ("ones", "one-hot")

#: How SparseMAP's distribution is found (``BitVAEConfig.sparsemap_method``).
SPARSEMAP_METHODS = ("auto", "active_set")

#: The latent families this experiment builds, by ``ResolvedEstimator.latent``.
FAMILIES = ("softmax", "topk-sparsemax", "sparsemap")


def preset_bits(num_bits: int) -> int:
    """The latent size whose learning rates apply: 32 below 64 bits, 128 from 64 on.

    Example:
        >>> preset_bits(8), preset_bits(32), preset_bits(64), preset_bits(200)
        (32, 32, 128, 128)
    """
    return 32 if num_bits < 64 else 128


def default_budget(num_bits: int) -> int:
    """Half the bits (at least 1): Correia et al.'s budgets, 16 of 32 and 64 of 128.

    Example:
        >>> default_budget(32), default_budget(128), default_budget(1)
        (16, 64, 1)
    """
    return max(1, num_bits // 2)


@dataclass
class BitVAEConfig(PresetLRConfig):
    """Settings of the bit-vector VAE; the defaults are Correia et al.'s (module docstring).

    Attributes:
        lr: learning rate (``None``: Correia et al.'s for the estimator and ``num_bits``, see
            :data:`LEARNING_RATES`; sizes below 64 bits take the ``D = 32`` rates, others
            the ``D = 128`` ones).
        eval_samples: importance samples per image in the test bound (paper: 1024).
        num_bits: ``D``, the bits of the latent (paper: 32 and 128).
        hidden: hidden units of the encoder and of the decoder (paper: 128).
        pixel_features: decoder features per pixel, mapped linearly to the pixel's logits
            (paper: 5).
        levels: grey levels per pixel, 2 to 256: ``round(x (levels - 1))`` of the images'
            values ``x`` in [0, 1] (paper: 256).
        activation: hidden units, ``"relu"`` (Correia et al.'s) or ``"tanh"``.
        uniform_mix: ``eps`` in (0, 1], the weight of the uniform distribution over
            ``{0, 1}^D`` in the importance-sampling proposal ``(1 - eps) q + eps uniform``.
        valid_samples: importance samples for the validation bound (``None``:
            ``eval_samples``).
        bit_encoding: how SparseMAP sees the encoder's scores ``s``: ``"one-hot"`` (the
            default) scores each bit as an on/off pair with scores ``(s_i, 0)``, as Correia
            et al.'s code does (LP-SparseMAP factors over ``2D`` indicators), which is
            SparseMAP over the ones with scores ``(s + 1) / 2`` (mean
            ``clamp((s + 1) / 2, 0, 1)``): at initialization the scores sit mid-box.
            ``"ones"`` scores the ones of ``z`` (mean ``clamp(s, 0, 1)``): about half the
            bits start on a face of the box, without a gradient, and at ``D = 32`` the codes
            can collapse (docs/experiments.md). Records made before the option existed used
            ``"ones"``. Other families ignore it.
        sparsemap_method: how SparseMAP's distribution over bit-vectors is found, both with
            the same mean: ``"auto"``, the closed form (free bits: the nested decomposition,
            ``m + 1`` structures for ``m`` fractional bits; a budget: the capped-simplex
            projection); ``"active_set"``, the iterative solver, as Correia et al.'s
            LP-SparseMAP runs (at ``D = 128`` its supports at initialization are about half
            the closed form's). Other families ignore it.
    """

    estimator: str = "sparsemap"
    epochs: int = 100
    batch_size: int = 64
    dataset: str = "fashion-mnist"
    eval_samples: int = 1024
    num_bits: int = 32
    hidden: int = 128
    pixel_features: int = 5
    levels: int = 256
    activation: Literal["relu", "tanh"] = "relu"
    uniform_mix: float = 0.1
    valid_samples: int | None = 100
    # Runs recorded before this field existed scored the ones; only SparseMAP reads it.
    bit_encoding: Literal["ones", "one-hot"] = field(
        default="one-hot", metadata={RECORDED_BEFORE: "ones", FOR_LATENTS: ("sparsemap",)}
    )
    sparsemap_method: Literal["auto", "active_set"] = field(
        default="auto", metadata={RECORDED_BEFORE: "auto", FOR_LATENTS: ("sparsemap",)}
    )

    def preset_estimator_options(self) -> Mapping[str, Mapping[str, Any]]:
        """Correia et al.'s settings of the estimators for ``num_bits``
        (:data:`ESTIMATOR_PRESETS`), which options not given take (see
        :func:`~latentgrad.lab.registry.resolve_config_options`).

        Example:
            >>> dict(BitVAEConfig().preset_estimator_options()["nvil"])
            {'nvil_hidden': 512, 'nvil_layers': 3, 'nvil_activation': 'relu'}
            >>> "gs" in BitVAEConfig(num_bits=128).preset_estimator_options()
            False
        """
        return ESTIMATOR_PRESETS[preset_bits(self.num_bits)]

    def preset_learning_rates(self) -> Mapping[str, float]:
        """Correia et al.'s learning rates for ``num_bits`` (:data:`LEARNING_RATES`), which
        :meth:`resolved_lr` reads when ``lr`` is ``None`` (an estimator missing from them:
        :data:`~latentgrad.lab.experiment.DEFAULT_LR`).

        Example:
            >>> BitVAEConfig(estimator="nvil", num_bits=128).resolved_lr()
            0.0005
            >>> BitVAEConfig().resolved_lr(), BitVAEConfig(lr=0.01).resolved_lr()
            (0.002, 0.01)
        """
        return LEARNING_RATES[preset_bits(self.num_bits)]

    def validate(self) -> None:
        """Check the shared settings, then these (see :meth:`ExperimentConfig.validate`).

        ``lr`` may be ``None`` (the preset's); a given one must be positive and finite.

        Raises:
            InvalidConfigValue: (a ``ValueError``) naming the first field out of range.

        Example:
            >>> BitVAEConfig(num_bits=0).validate()
            Traceback (most recent call last):
            ...
            latentgrad.lab.config.InvalidConfigValue: num_bits must be a positive int, got 0
        """
        require_positive_ints(self, "num_bits")
        super().validate()
        require_positive_ints(self, "hidden", "pixel_features")
        levels = self.levels
        ok = is_positive_int(levels) and 2 <= levels <= 256
        require(ok, "levels", "an int in [2, 256]", levels)
        require_choice(self, "activation", ACTIVATIONS)
        require_choice(self, "bit_encoding", BIT_ENCODINGS)
        require_choice(self, "sparsemap_method", SPARSEMAP_METHODS)
        mix = self.uniform_mix
        ok = isinstance(mix, (int, float)) and not isinstance(mix, bool) and 0 < mix <= 1
        require(ok, "uniform_mix", "a number in (0, 1]", mix)
        require_positive_ints(self, "valid_samples", optional=True)
        budget = self.estimator_options.get("budget")
        if isinstance(budget, int) and not isinstance(budget, bool):
            check_budget(budget, self.num_bits)


def check_budget(budget: int, num_bits: int) -> None:
    """Refuse a budget above the number of bits, naming the option."""
    require(budget <= num_bits, "budget", f"at most num_bits ({num_bits})", budget)


def quantize(x: Tensor, levels: int) -> Tensor:
    """Grey levels ``x`` in [0, 1] as the integers ``round(x (levels - 1))``, ``uint8``.

    Example:
        >>> quantize(torch.tensor([0.0, 0.5, 1.0, 254.6 / 255]), 256).tolist()
        [0, 128, 255, 255]
    """
    if not 2 <= levels <= 256:
        raise ValueError(f"levels must be in [2, 256], got {levels}")
    return (x.clamp(0.0, 1.0) * (levels - 1)).round().to(torch.uint8)


class PixelLevels:
    """Training batches and fixed evaluation sets of images as integer grey levels.

    Args:
        data: splits of shape ``(N, P)`` with values in [0, 1].
        levels: grey levels per pixel (see :func:`quantize`).
        batch_size: training batch size.
        max_steps_per_epoch: cap on the batches of an epoch (``None``: the whole split).
        max_eval_examples: cap on the evaluated examples, a fixed random subset (``None``: all).

    Shape:
        batches and evaluation sets: ``(B, P)``, ``int64`` in ``[0, levels)``.

    Example:
        >>> from latentgrad.data import load_dataset
        >>> images = PixelLevels(load_dataset("digits"), 256, 64, 2, 50)
        >>> [tuple(b.shape) for b in images.train_batches()], images.eval_data("test").shape
        ([(64, 64), (64, 64)], torch.Size([50, 64]))
        >>> sorted(images.eval_data("test").unique().tolist())
        [0, 255]
    """

    def __init__(
        self,
        data: DataSplitsLike,
        levels: int,
        batch_size: int,
        max_steps_per_epoch: int | None = None,
        max_eval_examples: int | None = None,
    ) -> None:
        self.levels = levels
        self.batch_size = batch_size
        self.max_steps_per_epoch = max_steps_per_epoch
        self.max_eval_examples = max_eval_examples
        # uint8 storage: Fashion-MNIST's training split is 43 MB instead of 345 MB as int64.
        self.splits = {split: quantize(getattr(data, split), levels) for split in SPLITS}
        self._eval_cache: dict[str, Tensor] = {}

    @property
    def num_pixels(self) -> int:
        return int(self.splits["train"].shape[-1])

    def train_batches(self) -> Iterator[Tensor]:
        """Shuffled minibatches of the training split (``torch.randperm``, global RNG)."""
        train = self.splits["train"]
        for batch in shuffled_batches(train, self.batch_size, self.max_steps_per_epoch):
            yield batch.long()

    def eval_data(self, split: str) -> Tensor:
        """The evaluation examples of ``split``: at most ``max_eval_examples``, a subset fixed
        by :data:`~latentgrad.lab.images.EVAL_DATA_SEED`."""
        check_split(split)
        if split not in self._eval_cache:
            generator = torch.Generator().manual_seed(EVAL_DATA_SEED)
            (x,) = eval_subset([self.splits[split]], self.max_eval_examples, generator)
            self._eval_cache[split] = x.long()
        return self._eval_cache[split]


class BitVectorVAE(nn.Module):
    """Encoder ``q(z | x)`` over ``{0, 1}^D``, decoder ``p(x | z)`` with categorical pixels,
    uniform prior ``p(z) = 2^-D``.

    Args:
        num_pixels: pixels ``P`` per image.
        num_bits: bits ``D`` of the latent.
        levels: grey levels per pixel (classes of each pixel's categorical).
        hidden: hidden units of the encoder and of the decoder.
        pixel_features: decoder features per pixel, mapped to the pixel's logits by one
            linear map shared by the pixels.
        activation: ``"relu"`` or ``"tanh"``.
        family: ``"softmax"`` (factorized ``Bernoulli`` bits), ``"topk-sparsemax"`` or
            ``"sparsemap"``.
        k: the structures of top-k sparsemax.
        budget: SparseMAP over bit-vectors with at most ``budget`` ones (``None``: free bits).
        bit_encoding: ``"ones"`` or ``"one-hot"`` (SparseMAP sees ``(s + 1) / 2``), see
            :class:`BitVAEConfig`.
        sparsemap_method: ``"auto"`` (closed form) or ``"active_set"``, see
            :class:`BitVAEConfig`.

    Shape:
        ``x``: ``(B, P)`` integer levels; ``z``: ``S + (B, D)`` with any leading ``S``;
        ``log_likelihood(x)(z)``: ``S + (B,)``.

    Example:
        >>> import torch
        >>> vae = BitVectorVAE(6, 4, levels=8, hidden=5, pixel_features=2, family="sparsemap")
        >>> x = torch.randint(0, 8, (3, 6))
        >>> q = vae.posterior(x)
        >>> values, probs = q.support_probs()
        >>> values.shape[1:], vae.log_likelihood(x)(values).shape == probs.shape
        (torch.Size([3, 4]), True)
    """

    def __init__(
        self,
        num_pixels: int,
        num_bits: int,
        *,
        levels: int = 256,
        hidden: int = 128,
        pixel_features: int = 5,
        activation: str = "relu",
        family: str = "softmax",
        k: int = 10,
        budget: int | None = None,
        bit_encoding: str = "one-hot",
        sparsemap_method: str = "auto",
    ) -> None:
        super().__init__()
        for name, value, allowed in (
            ("family", family, FAMILIES),
            ("bit_encoding", bit_encoding, BIT_ENCODINGS),
            ("sparsemap_method", sparsemap_method, SPARSEMAP_METHODS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        self.bit_encoding = bit_encoding
        self.sparsemap_method = sparsemap_method
        self.num_pixels = num_pixels
        self.num_bits = num_bits
        self.levels = levels
        self.pixel_features = pixel_features
        self.family = family
        self.k = k
        self.budget = budget
        self.encoder = mlp([num_pixels, hidden, num_bits], activation)
        self.decoder = mlp([num_bits, hidden, num_pixels * pixel_features], activation)
        self.pixel_logits = nn.Linear(pixel_features, levels)
        #: Rows the decoder has run on (distinct bit-vectors, see :meth:`nll_rows`), a counter
        #: the training step reads and resets.
        self.decoded_rows = 0
        #: ``fn(features (U, P, F), weight, bias) -> (U,)``: the pixels' log-partitions summed
        #: per row (the benchmark swaps in other ways of computing it).
        self.log_partition: Callable[[Tensor, Tensor, Tensor], Tensor] = summed_linear_logsumexp

    @property
    def log_num_values(self) -> float:
        """``D log 2 = -log p(z)`` for every ``z`` under the uniform prior."""
        return self.num_bits * math.log(2.0)

    @property
    def sparse(self) -> bool:
        """Whether ``q`` has a few structures of nonzero weight (summed exactly)."""
        return self.family != "softmax"

    def inputs(self, x: Tensor) -> Tensor:
        """The encoder's input: the levels scaled to [0, 1]."""
        return x.float() / (self.levels - 1)

    def posterior(self, x: Tensor) -> LatentDistribution:
        """``q(z | x)`` with batch shape ``(B,)`` and event shape ``(D,)``."""
        if self.family == "sparsemap":
            # No support check: the bound evaluates log q at every bit-vector (0 off its support).
            scores, method = self.sparsemap_scores(x), self.sparsemap_method
            return SparseMAP(scores, self.oracle(), method=method, validate_args=False)
        scores = self.encoder(self.inputs(x))
        if self.family == "topk-sparsemax":
            return TopKSparsemax(scores, k=self.k, validate_args=False)
        return Bernoulli(logits=scores)

    def oracle(self) -> FreeBits | BudgetBits:
        """SparseMAP's bit-vectors: all of them, or those with at most ``budget`` ones."""
        d = self.num_bits
        return FreeBits(d) if self.budget is None else BudgetBits(d, self.budget)

    def sparsemap_scores(self, x: Tensor) -> Tensor:
        """The scores of the ones that SparseMAP sees, ``(B, D)``: the encoder's ``s``, or
        ``(s + 1) / 2`` with ``bit_encoding="one-hot"``."""
        scores = self.encoder(self.inputs(x))
        if self.bit_encoding == "one-hot":
            # max <[s; 0], [m; 1 - m]> - |[m; 1 - m]|^2 / 2 = 2 (<(s + 1) / 2, m> - |m|^2 / 2)
            # + const: the same problem over the ones, with scores (s + 1) / 2.
            scores = (scores + 1.0) / 2.0
        return scores

    def modal_code(self, x: Tensor) -> Tensor:
        """The most probable bit-vector of ``q(z | x)`` per image, ``(B, D)``: the structure of
        largest weight of a sparse ``q``, the bits with positive scores of factorized bits."""
        q = self.posterior(x)
        if isinstance(q, Bernoulli):
            return (q.logits > 0).to(q.logits.dtype)
        values, probs = q.support_probs()
        return values[probs.argmax(0), torch.arange(x.shape[0], device=x.device)]

    def features(self, z: Tensor) -> Tensor:
        """The decoder's features per pixel, shape ``z.shape[:-1] + (P, pixel_features)``."""
        return self.decoder(z).unflatten(-1, (self.num_pixels, self.pixel_features))

    def decode(self, z: Tensor) -> Tensor:
        """Pixel logits of ``p(x | z)``, shape ``z.shape[:-1] + (P, levels)``."""
        return self.pixel_logits(self.features(z))

    def log_likelihood(self, x: Tensor) -> Callable[[Tensor], Tensor]:
        """``fn(z) = log p(x | z)`` summed over pixels, for ``z`` of shape ``S + (B, D)``;
        ``x`` broadcasts over the leading sample dims (see :meth:`nll_rows`)."""

        def fn(z: Tensor) -> Tensor:
            target = x.expand(*z.shape[:-1], x.shape[-1])
            nll = self.nll_rows(z.reshape(-1, z.shape[-1]), target.reshape(-1, x.shape[-1]))
            return -nll.view(z.shape[:-1])

        return fn

    def nll_rows(self, z: Tensor, x: Tensor) -> Tensor:
        """``-log p(x_n | z_n)`` summed over pixels for ``N`` pairs: ``z`` ``(N, D)``, ``x``
        ``(N, P)`` integer levels; shape ``(N,)``.

        The decoder and the pixels' log-softmax depend on ``z`` alone, so when ``z`` needs no
        gradient (bit-vectors of a sparse support, samples of a score-function estimator, the
        bound's draws) each distinct bit-vector is decoded once and its log-probabilities are
        picked for every image paired with it: the same values and gradients as decoding
        every row, at the cost of the distinct rows. (At initialization, ``D = 32``, a batch's
        SparseMAP supports hold about 1,240 rows of which about 960 are distinct; with a
        budget about 890 of which about 60 are.) A ``z`` with a gradient (a relaxation) is
        decoded row by row.
        """
        if z.requires_grad or z.shape[0] < 2:
            distinct, inverse = z, None
        else:
            distinct, inverse = torch.unique(z, dim=0, return_inverse=True)
            if distinct.shape[0] == z.shape[0]:
                distinct, inverse = z, None
        self.decoded_rows += distinct.shape[0]
        features = self.features(distinct)
        layer = self.pixel_logits
        # -log p(x_p | z) = logsumexp of the pixel's logits - the logit of its level x_p; the
        # first without the (U, P, levels) logits in memory.
        log_partition = self.log_partition(features, layer.weight, layer.bias)
        if inverse is not None:
            features, log_partition = features[inverse], log_partition[inverse]
        levels = x.flatten()
        level_weights = layer.weight.index_select(0, levels).view(*x.shape, -1)
        observed = (features * level_weights).sum(-1) + layer.bias.index_select(0, levels).view(
            x.shape
        )
        return log_partition - observed.sum(-1)

    def reconstruction_loss(self, x: Tensor) -> PackedLoss:
        """``loss_fn(z) = -log p(x | z)``, the loss the estimators see.

        A :class:`~latentgrad.estimators.PackedLoss` (rows of ``x`` gathered per value): with
        :class:`~latentgrad.Marginalize` the decoder runs once on the structures of nonzero
        weight of the whole batch, not on every padded slot; every other estimator calls it
        as an ordinary ``loss_fn(z)`` with ``z`` of shape ``S + (B, D)``.
        """
        return PackedLoss.from_rows(self.nll_rows, x)

    def kl_to_prior(self, q: LatentDistribution) -> Tensor:
        """``KL(q || uniform) = D log 2 - H(q)``, shape ``(B,)`` (``H`` over the support of a
        sparse ``q``)."""
        return self.log_num_values - q.entropy()


class Bound(NamedTuple):
    """Per-example evaluation terms (nats), each of shape ``(B,)``, float64.

    Attributes:
        log_px: the importance-sampled estimate of ``log p(x)`` (a lower bound in expectation).
        elbo: ``E_q[log p(x | z)] - KL(q || p)``: the expectation exact over the support of a
            sparse ``q``, importance-sampled with the same draws otherwise.
        kl: ``KL(q(z | x) || p(z))``.
        support_size: bit-vectors of nonzero ``q(z | x)`` (``2^D`` for factorized bits).
        log_px_support: ``log sum_{z in supp q} p(x | z) p(z)``, the joint summed exactly over
            the support of a sparse ``q``: a deterministic lower bound of ``log p(x)``, which
            misses only the mass of the bit-vectors off the support (NaN for factorized bits).
            Correia et al.'s estimate for the sparse families is this plus an
            importance-sampled ``p(x)`` with a uniform proposal, combined by ``logsumexp``.
    """

    log_px: Tensor
    elbo: Tensor
    kl: Tensor
    support_size: Tensor
    log_px_support: Tensor


def proposal_sample(
    q: LatentDistribution, num_samples: int, uniform_mix: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Draws from ``r = (1 - eps) q + eps uniform({0, 1}^D)`` with ``log r`` and ``log q``.

    Each draw comes from ``q`` with probability ``1 - eps`` and is a uniform bit-vector
    otherwise; ``r(z) >= eps 2^-D > 0`` for every ``z``. Uses torch's global RNG.

    Args:
        q: the posterior, batch shape ``(B,)``, event shape ``(D,)``.
        num_samples: draws ``S`` per example.
        uniform_mix: ``eps`` in (0, 1].

    Returns:
        ``(z, log_r, log_q)``, shapes ``(S, B, D)``, ``(S, B)`` and ``(S, B)``, the last two
        float64 (``log_q`` is ``-inf`` off the support of a sparse ``q``).

    Example:
        >>> import torch, latentgrad as lg
        >>> z, log_r, log_q = proposal_sample(lg.Bernoulli(logits=torch.zeros(2, 3)), 5, 0.5)
        >>> z.shape, torch.allclose(log_r, torch.full((5, 2), -3 * math.log(2.0), dtype=torch.float64))
        (torch.Size([5, 2, 3]), True)
    """
    from_q = q.sample((num_samples,))
    uniform = torch.randint_like(from_q, 0, 2)
    pick = torch.rand(from_q.shape[:-1], device=from_q.device) < uniform_mix
    z = torch.where(pick.unsqueeze(-1), uniform, from_q)
    log_q = q.log_prob(z).double()
    log_keep = math.log1p(-uniform_mix) if uniform_mix < 1 else -math.inf
    log_uniform = math.log(uniform_mix) - z.shape[-1] * math.log(2.0)
    log_r = torch.logaddexp(log_q + log_keep, torch.full_like(log_q, log_uniform))
    return z, log_r, log_q


@torch.no_grad()
def importance_sampled_bound(
    model: BitVectorVAE,
    x: Tensor,
    num_samples: int,
    uniform_mix: float = 0.1,
    chunk: int = EVAL_CHUNK,
) -> Bound:
    """``log p(x) >= E log (1/S) sum_s p(x | z_s) p(z_s) / r(z_s | x)``, ``z_s ~ r``, with the
    proposal ``r = (1 - eps) q + eps uniform`` of :func:`proposal_sample`; and the ELBO.

    ``r > 0`` everywhere, so the mean weight is unbiased for ``p(x)`` whatever the support of
    ``q`` (see the module docstring). The ELBO's ``E_q[log p(x | z)]`` is the exact sum over the
    support of a sparse ``q``; for factorized bits it is ``(1/S) sum_s (q / r)(z_s) log p(x |
    z_s)``, unbiased, on the same draws. The decoder sees at most ``chunk`` (samples x examples)
    at a time. Uses torch's global RNG.

    Args:
        model: the VAE.
        x: integer levels, shape ``(B, P)``.
        num_samples: importance samples ``S`` per example.
        uniform_mix: ``eps`` in (0, 1].
        chunk: samples x examples per decoder pass.

    Returns:
        :class:`Bound` per example.

    Example:
        >>> import torch
        >>> vae = BitVectorVAE(6, 3, levels=4, hidden=5, pixel_features=2, family="sparsemap")
        >>> b = importance_sampled_bound(vae, torch.randint(0, 4, (5, 6)), 64)
        >>> b.log_px.shape, bool((b.kl >= -1e-5).all()), bool((b.support_size >= 1).all())
        (torch.Size([5]), True, True)
    """
    if not 0 < uniform_mix <= 1:
        raise ValueError(f"uniform_mix must be in (0, 1], got {uniform_mix}")
    examples, samples = chunk_sizes(num_samples, chunk)
    parts: list[Bound] = []
    for xs in x.split(examples):
        q = model.posterior(xs)
        log_likelihood = model.log_likelihood(xs)
        log_weights: list[Tensor] = []
        expected = torch.zeros(xs.shape[0], dtype=torch.float64, device=xs.device)
        for start in range(0, num_samples, samples):
            z, log_r, log_q = proposal_sample(q, min(samples, num_samples - start), uniform_mix)
            ll = log_likelihood(z).double()
            log_weights.append(ll - model.log_num_values - log_r)
            expected += ((log_q - log_r).exp() * ll).sum(0)
        log_px = torch.cat(log_weights).logsumexp(0) - math.log(num_samples)
        kl = model.kl_to_prior(q).double()
        if model.sparse:
            values, probs = q.support_probs()
            packed = pack_support(values, probs, q.batch_shape)  # decode nonzero weights only
            ll = -model.nll_rows(packed.values, xs[packed.element]).double()
            expected = torch.zeros_like(expected).index_add(0, packed.element, packed.probs * ll)
            support = (probs > 0).sum(0).double()
            joint = ll - model.log_num_values
            top = torch.full_like(expected, -math.inf)
            top = top.scatter_reduce(0, packed.element, joint, "amax")
            total = torch.zeros_like(expected)
            total = total.index_add(0, packed.element, (joint - top[packed.element]).exp())
            on_support = top + total.log()
        else:
            expected = expected / num_samples
            support = torch.full_like(kl, 2.0**model.num_bits)
            on_support = torch.full_like(kl, math.nan)
        parts.append(Bound(log_px, expected - kl, kl, support, on_support))
    return Bound(*(torch.cat(terms) for terms in zip(*parts, strict=True)))


def _family_settings(
    config: BitVAEConfig, chosen: ResolvedEstimator
) -> tuple[str, int, int | None]:
    """``(family, k, budget)`` of the latent ``chosen`` asks for, checked against the config."""
    family = chosen.latent
    if family not in FAMILIES:
        raise ValueError(
            f"estimator {chosen.name!r} asks for a {family!r} latent, which the bit-vector VAE "
            f"does not have (its families: {', '.join(FAMILIES)})"
        )
    options = chosen.latent_options
    k = int(options.get("k", 10))
    budget: int | None = None
    if family == "sparsemap" and options.get("structures", "free") == "budget":
        given = options.get("budget")
        budget = default_budget(config.num_bits) if given is None else int(given)
        check_budget(budget, config.num_bits)
    return family, k, budget


class BitVAETrainable:
    """The bit-vector VAE, its estimator and optimizer, as the runner drives them.

    Args:
        config: the experiment settings.
        chosen: the estimator the runner resolved from ``config.estimator``, with the latent
            family it asks for (``"softmax"``: factorized bits; ``"topk-sparsemax"``, ``k``
            from ``chosen.latent_options``; ``"sparsemap"``, with ``structures`` and ``budget``
            from ``chosen.latent_options``, ``budget=None`` meaning :func:`default_budget`).
        data: splits of shape ``(N, P)`` with values in [0, 1] (quantized to ``config.levels``).

    Attributes:
        model: the :class:`BitVectorVAE`.
        estimator: the gradient estimator (``chosen.estimator``).
        modules: ``{"model", "estimator"}``.
        optimizer: Adam over the model's and the estimator's parameters (NVIL's network).
    """

    def __init__(
        self, config: BitVAEConfig, chosen: ResolvedEstimator, data: DataSplitsLike
    ) -> None:
        config.validate()
        self.config = config
        family, k, budget = _family_settings(config, chosen)
        self.images = PixelLevels(
            data,
            config.levels,
            config.batch_size,
            config.max_steps_per_epoch,
            config.max_eval_examples,
        )
        self.model = BitVectorVAE(
            self.images.num_pixels,
            config.num_bits,
            levels=config.levels,
            hidden=config.hidden,
            pixel_features=config.pixel_features,
            activation=config.activation,
            family=family,
            k=k,
            budget=budget,
            bit_encoding=config.bit_encoding,
            sparsemap_method=config.sparsemap_method,
        )
        self.estimator = chosen.estimator
        self.modules = nn.ModuleDict({"model": self.model, "estimator": self.estimator})
        self.optimizer = make_optimizer("adam", self.modules.parameters(), config.resolved_lr())

    def train_batches(self, epoch: int) -> Iterator[Tensor]:
        """Shuffled minibatches of the training split, integer levels."""
        return self.images.train_batches()

    def train_step(self, batch: Tensor) -> Mapping[str, float]:
        """One Adam step on the negative ELBO; the estimator's schedule advances after it.

        Reports ``loss`` (the training negative ELBO: the estimator's value of
        ``E_q[-log p(x | z)]``, exact for the sparse families, plus the analytic KL),
        ``loss_evals`` (loss evaluations per image, for the sparse families the mean support
        rounded up: :class:`~latentgrad.Marginalize` evaluates only the structures of nonzero
        weight), ``decoder_calls`` (rows the decoder ran on per image: the distinct
        bit-vectors of the batch, see :meth:`BitVectorVAE.nll_rows`, so below ``loss_evals``
        where images share structures), ``kl`` and, for the sparse families,
        ``support_size`` (structures of nonzero weight per image, mean over the batch). A
        Gumbel-Softmax without ``honest_value`` reports its relaxed objective as
        ``relaxed_loss`` and ``loss`` as NaN.
        """
        self.modules.train()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.decoded_rows = 0
        q = self.model.posterior(batch)
        loss_fn = self.model.reconstruction_loss(batch)
        out = self.estimator(q, loss_fn, context=self.model.inputs(batch))
        kl = self.model.kl_to_prior(q)
        (out.surrogate.mean() + kl.mean()).backward()
        self.optimizer.step()
        if isinstance(self.estimator, Scheduled):
            self.estimator.step()
        kl = kl.detach()
        loss = float((out.value + kl).mean())
        metrics = {
            "loss": loss,
            "loss_evals": float(out.loss_evals),
            "decoder_calls": self.model.decoded_rows / batch.shape[0],
            "kl": float(kl.mean()),
        }
        if "support_size" in out.extras:
            metrics["support_size"] = float(out.extras["support_size"].double().mean())
        if has_relaxed_value(self.estimator):
            metrics.update(loss=math.nan, relaxed_loss=loss)
        return metrics

    def evaluate(self, split: str) -> Mapping[str, float]:
        """``nelbo``, ``nll`` (the importance-sampled ``-log p(x)``) and ``kl`` in nats per image,
        ``bpd`` (``nll / (P log 2)``), ``support_size`` (bit-vectors of nonzero ``q``) and
        ``codes`` (the distinct modal codes of the evaluated images, :meth:`distinct_codes`);
        for the sparse families also ``support_bpd``, the bits per dimension of the exact sum
        over the support (``Bound.log_px_support``, a deterministic upper bound of the true
        bits per dimension).

        ``eval_samples`` importance samples (``valid_samples`` on ``"valid"``), drawn from
        torch's global RNG, whose state is restored afterwards (the runner seeds it).
        """
        x = self.images.eval_data(split)
        samples = eval_sample_count(split, self.config.eval_samples, self.config.valid_samples)
        self.modules.eval()
        with torch.random.fork_rng(devices=[]):
            bound = importance_sampled_bound(self.model, x, samples, self.config.uniform_mix)
        nll = float(-bound.log_px.mean())
        per_dim = self.images.num_pixels * math.log(2.0)
        out = {
            "nelbo": float(-bound.elbo.mean()),
            "nll": nll,
            "bpd": nll / per_dim,
            "kl": float(bound.kl.mean()),
            "support_size": float(bound.support_size.mean()),
            "codes": self.distinct_codes(x),
        }
        if self.model.sparse:
            out["support_bpd"] = float(-bound.log_px_support.mean()) / per_dim
        return out

    @torch.no_grad()
    def distinct_codes(self, x: Tensor) -> float:
        """How many different modal codes (:meth:`BitVectorVAE.modal_code`) the images ``x``
        get: at most ``len(x)``; a handful means the latent tells the decoder little."""
        codes = torch.cat([self.model.modal_code(xs) for xs in x.split(EVAL_CHUNK)])
        return float(torch.unique(codes, dim=0).shape[0])


def build(config: BitVAEConfig, chosen: ResolvedEstimator) -> BitVAETrainable:
    """Load ``config.dataset`` and build the bit-vector VAE around ``chosen``'s estimator."""
    from latentgrad.data import load_dataset

    return BitVAETrainable(config, chosen, load_dataset(config.dataset, data_dir=config.data))


def support_figure(sources: Sequence[str | Path], path: str | Path) -> Path:
    """The mean support size (structures per image) over training of the sparse families
    in the ``bitvae`` runs or results records ``sources``: one panel per latent size ``D``, one
    line per estimator (the mean over its seeds), against training steps, log scale. The
    README's figure is made this way from ``results/bitvae``.

    Args:
        sources: run directories, results records, or folders of them.
        path: the PNG to write.

    Returns:
        ``path``.

    Raises:
        FileNotFoundError: if ``sources`` hold no finished ``bitvae`` run of a sparse family.
    """
    from latentgrad.lab.plots import new_figure, seed_band
    from latentgrad.lab.runs import collect_runs

    histories: dict[int, dict[str, list[Sequence[Mapping[str, Any]]]]] = {}
    for info in collect_runs(sources):
        if info.experiment != "bitvae" or not info.finished:
            continue
        if any("support_size" in r.get("train", {}) for r in info.history):
            by_name = histories.setdefault(int(info.config["num_bits"]), {})
            by_name.setdefault(str(info.config["estimator"]), []).append(info.history)
    if not histories:
        raise FileNotFoundError(
            f"no finished bitvae run of a sparse family in {', '.join(map(str, sources))}"
        )
    fig = new_figure((5.0 * len(histories), 4.0))
    axes = fig.subplots(1, len(histories), squeeze=False)[0]
    for ax, (bits, by_name) in zip(axes, sorted(histories.items()), strict=True):
        for name, runs in sorted(by_name.items()):
            epochs, means, _, _ = seed_band(runs, "train", "support_size")
            step_of = {int(r["epoch"]): int(r["step"]) for run in runs for r in run}
            steps = [step_of[e] for e in epochs]
            ax.plot(steps, means, marker="o", markersize=3, label=f"{name} (n={len(runs)})")
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("mean support size (structures per image)")
        ax.set_title(f"bitvae, D = {bits}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


EXPERIMENT = Experiment(
    name="bitvae",
    description=(
        "bit-vector VAE on Fashion-MNIST with 256-way pixels, D = 32 or 128 bits, SparseMAP "
        "and top-k sparsemax against sampling estimators, bits/dim by importance sampling "
        "(Correia et al. 2020)"
    ),
    config_class=BitVAEConfig,
    build=build,
    primary_metric="bpd",
    estimators=ESTIMATORS,
)
