"""Semi-supervised VAE (Kingma et al.'s M2) on MNIST: Correia et al. (2020), Section 5, and
Jang, Gu & Poole (2017), Table 2.

The class ``y`` of an image ``x`` is a discrete latent variable, observed on a few labelled
images and marginalized (or estimated) on the others. The model:

- ``q(y | x)``: a classifier MLP ``D-256-256-256-K`` giving a ``Categorical`` (a
  ``SparsemaxCategorical`` when the estimator asks for the sparsemax family);
- ``q(z | x, y)``: a Gaussian over ``z`` of dimension 8, from an encoder ``(D+K)-128-128-16``
  (mean and log standard deviation), reparameterized;
- ``p(x | y, z)``: Bernoulli pixels from a decoder ``(8+K)-128-128-D``; ``p(y)`` uniform,
  ``p(z)`` standard normal.

With ``f(x, y) = E_q(z|x,y)[-log p(x | y, z)] + KL(q(z | x, y) || p(z))`` (one reparameterized
``z``), the losses are

    labelled:    -ELBO(x, y) + alpha * CE(q(y | x), y),   -ELBO(x, y) = f(x, y) + log K,
    unlabelled:  U(x) = E_q(y|x)[f(x, y)] + KL(q(y | x) || p(y)),   KL = log K - H(q(y | x)),

``U(x)`` being the negative ELBO of ``log p(x)``. The gradient of ``E_q(y|x)[f]`` comes from
the run's estimator, which calls ``f`` once, batched, on the one-hot (or relaxed) ``y`` values
it chooses; the KL is analytic. Each training step takes a labelled and an unlabelled batch of
``batch_size`` images each (ratio 1:1, Correia et al.'s scripts: the labelled set is cycled
through while the unlabelled set is passed once per epoch) and minimizes

    mean_labelled[-ELBO(x, y) + alpha CE] + w * mean_unlabelled[U(x)],   w = N_u / N_l,

Correia et al.'s weighting, which with ``alpha = 0.1 N / N_l`` is Kingma et al.'s objective
``J + 0.1 N E[CE]`` scaled by ``1 / N_l`` (``N = N_l + N_u`` training images). The first
``warmup_epochs`` epochs are a warm start on the labelled images alone (their term only).

Test metrics: ``error`` (``1 - accuracy`` of ``argmax q(y | x)``, the primary metric, lower is
better), ``accuracy``, ``nelbo`` (``U(x)`` with the sum over the classes of nonzero ``q(y | x)``
done exactly and ``eval_samples`` draws of ``z``, shared by the classes) and ``support_size``
(classes of nonzero ``q(y | x)``: the decoder calls exact marginalization needs per image).

Paper settings kept as defaults (Correia et al.): MNIST with dynamic binarization, 5,000
labelled and 45,000 unlabelled training images and the 10,000 validation images, the
architecture above with ReLU units, a warm start of 100 epochs then 200 epochs (``epochs``
counts both: 300), batch 64, Adam with weight decay 1e-5 and the per-estimator learning rates of
their scripts, softmax cross-entropy of the classifier's scores as the labelled loss (for the
sparsemax family too, where ``-log q(y | x)`` is infinite off the support), one ``z`` sample in
the test bound. The ``jang`` preset takes 100 labels (10 per class) instead; the rest of its
settings are Correia et al.'s (Jang et al. give no architecture; they pick learning rates on the
validation set).

References:
    [1] Kingma, Rezende, Mohamed & Welling, "Semi-Supervised Learning with Deep Generative
        Models", NeurIPS 2014.
    [2] Jang, Gu & Poole, "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017.
    [3] Correia, Niculae, Aziz & Martins, "Efficient Marginalization of Discrete and Structured
        Latent Variables via Sparsity", NeurIPS 2020.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentgrad.distributions import Categorical, SparsemaxCategorical
from latentgrad.estimators import LatentDistribution, PackedLoss
from latentgrad.lab.config import (
    is_positive_int,
    require,
    require_choice,
    require_nonnegative,
    require_positive_ints,
)
from latentgrad.lab.experiment import Experiment, PresetLRConfig, ResolvedEstimator
from latentgrad.lab.images import (
    ACTIVATIONS,
    EVAL_DATA_SEED,
    SPLITS,
    BinaryImages,
    DataSplitsLike,
    check_split,
    chunk_sizes,
    epoch_steps,
    eval_subset,
    has_relaxed_value,
    make_optimizer,
    mlp,
    shuffled_batches,
)
from latentgrad.schedules import Scheduled

#: The estimators that apply to one categorical latent of ``K`` classes. ``sf`` has no
#: baseline; Correia et al.'s "SFE" (a running-mean baseline) is ``sf-ma``.
ESTIMATORS = (
    "exact",
    "sparsemax",
    "sf",
    "sf-ma",
    "sfe+",
    "nvil",
    "gs",
    "st-gs",
    "sum-and-sample",
)

#: Correia et al.'s learning rates by estimator (their scripts; SFE is ``sf`` and ``sf-ma``).
CORREIA_LEARNING_RATES: Mapping[str, float] = {
    "exact": 1e-3,
    "sparsemax": 5e-4,
    "sf": 1e-4,
    "sf-ma": 1e-4,
    "sfe+": 1e-4,
    "nvil": 1e-3,
    "gs": 1e-3,
    "st-gs": 1e-3,
    "sum-and-sample": 1e-3,
}

#: Samples x examples decoded at once by :func:`unlabelled_nelbo`.
EVAL_CHUNK = 2**13


@dataclass(frozen=True)
class Preset:
    """What a preset fixes: the labelled subset's size and the learning rates.

    Attributes:
        num_labelled: labelled training images (``None``: a tenth of the training split,
            5,000 of MNIST's 50,000).
        learning_rates: the learning rate by estimator name (others:
            :data:`~latentgrad.lab.experiment.DEFAULT_LR`).
    """

    num_labelled: int | None
    learning_rates: Mapping[str, float]


PRESETS: Mapping[str, Preset] = {
    "correia": Preset(None, CORREIA_LEARNING_RATES),
    "jang": Preset(100, CORREIA_LEARNING_RATES),
}


@dataclass
class SSVAEConfig(PresetLRConfig):
    """Settings of the semi-supervised VAE; the defaults are Correia et al.'s (module docstring).

    Attributes:
        epochs: passes over the training data, the warm start's included (paper: 100 + 200);
            a warm-start epoch passes over the labelled images, a later one over the
            unlabelled images (with as many labelled ones).
        batch_size: labelled images and unlabelled images per step (each).
        lr: learning rate (``None``: the preset's for the estimator, Correia et al.'s: exact
            1e-3, sparsemax 5e-4, sf / sf-ma / sfe+ 1e-4, nvil, gs, st-gs, sum-and-sample 1e-3).
        eval_samples: draws of z per image in the test negative ELBO (shared by the classes).
        preset: ``"correia"`` (a tenth of the training images labelled: 5,000 of MNIST's 50,000)
            or ``"jang"`` (100 labelled images); both balanced over the classes.
        num_labelled: labelled training images (``None``: the preset's); the others are the
            unlabelled set. At least one per class and fewer than the training images.
        split_seed: seed of the choice of labelled images (the same for every run seed, so runs
            compare on the same labels).
        warmup_epochs: the first epochs, trained on the labelled images only (paper: 100).
        alpha: weight of the classifier's cross-entropy on the labelled batch (``None``:
            ``0.1 N / N_l``, Kingma et al.'s ``alpha = 0.1 N`` in this scale; 1.0 with 5,000 of
            50,000 labelled, the weight of Correia et al.'s scripts).
        unlabelled_weight: weight of the unlabelled batch's mean loss against the labelled
            batch's (``None``: ``N_u / N_l``, Correia et al.'s scripts).
        latent_dim: dimension of the Gaussian latent z (paper: 8).
        classifier_hidden: hidden widths of the classifier ``x -> scores of y``.
        encoder_hidden: hidden widths of the encoder ``(x, y) -> (mean, log std) of z``.
        decoder_hidden: hidden widths of the decoder ``(z, y) -> pixel logits``.
        activation: hidden units, ``"relu"`` (Correia et al.'s) or ``"tanh"``.
        weight_decay: L2 weight decay of Adam (paper: 1e-5).
    """

    estimator: str = "exact"
    epochs: int = 300
    batch_size: int = 64
    dataset: str = "mnist"
    eval_samples: int = 1
    preset: Literal["correia", "jang"] = "correia"
    num_labelled: int | None = None
    split_seed: int = 0
    warmup_epochs: int = 100
    alpha: float | None = None
    unlabelled_weight: float | None = None
    latent_dim: int = 8
    classifier_hidden: tuple[int, ...] = (256, 256, 256)
    encoder_hidden: tuple[int, ...] = (128, 128)
    decoder_hidden: tuple[int, ...] = (128, 128)
    activation: Literal["relu", "tanh"] = "relu"
    weight_decay: float = 1e-5

    def preset_learning_rates(self) -> Mapping[str, float]:
        """The learning rates of ``preset``, which :meth:`resolved_lr` reads when ``lr`` is
        ``None`` (:data:`~latentgrad.lab.experiment.DEFAULT_LR` for an estimator
        missing from them).

        Example:
            >>> SSVAEConfig(estimator="sparsemax").resolved_lr(), SSVAEConfig(lr=0.01).resolved_lr()
            (0.0005, 0.01)
        """
        return PRESETS[self.preset].learning_rates

    def resolved_num_labelled(self, num_train: int) -> int:
        """``num_labelled``, or the preset's for a training split of ``num_train`` images.

        Example:
            >>> SSVAEConfig().resolved_num_labelled(50000), SSVAEConfig(preset="jang").resolved_num_labelled(50000)
            (5000, 100)
        """
        if self.num_labelled is not None:
            return self.num_labelled
        preset = PRESETS[self.preset].num_labelled
        return num_train // 10 if preset is None else preset

    def validate(self) -> None:
        """Check the shared settings, then the SSVAE's (see :meth:`ExperimentConfig.validate`).

        ``lr`` may be ``None`` (the preset's); a given one must be positive and finite.

        Raises:
            InvalidConfigValue: (a ``ValueError``) naming the first field out of range.

        Example:
            >>> SSVAEConfig(warmup_epochs=400).validate()
            Traceback (most recent call last):
            ...
            latentgrad.lab.config.InvalidConfigValue: warmup_epochs must be an int in [0, epochs] (300), got 400
        """
        require_choice(self, "preset", PRESETS)
        super().validate()
        require_choice(self, "activation", ACTIVATIONS)
        require_positive_ints(self, "num_labelled", optional=True)
        require_positive_ints(self, "latent_dim")
        seed = self.split_seed
        ok = isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0
        require(ok, "split_seed", "an int >= 0", seed)
        warmup = self.warmup_epochs
        ok = isinstance(warmup, int) and not isinstance(warmup, bool)
        ok = ok and 0 <= warmup <= self.epochs
        require(ok, "warmup_epochs", f"an int in [0, epochs] ({self.epochs})", warmup)
        require_nonnegative(self, "alpha", "unlabelled_weight", optional=True)
        require_nonnegative(self, "weight_decay")
        for name in ("classifier_hidden", "encoder_hidden", "decoder_hidden"):
            widths = getattr(self, name)
            ok = isinstance(widths, tuple) and all(is_positive_int(w) for w in widths)
            require(ok, name, "positive widths", widths)


class M2(nn.Module):
    """Kingma et al.'s M2: ``q(y | x)``, ``q(z | x, y)`` Gaussian, ``p(x | y, z)`` Bernoulli.

    Args:
        input_dim: pixels ``D``.
        num_classes: classes ``K`` of ``y``.
        latent_dim: dimension of the Gaussian ``z``.
        classifier_hidden: hidden widths of the classifier ``D -> K``.
        encoder_hidden: hidden widths of the encoder ``D + K -> 2 latent_dim``.
        decoder_hidden: hidden widths of the decoder ``latent_dim + K -> D``.
        activation: ``"relu"`` or ``"tanh"``.
        sparsemax: ``q(y | x)`` is a :class:`~latentgrad.distributions.SparsemaxCategorical`
            (else a softmax :class:`~latentgrad.distributions.Categorical`).

    Shape:
        ``x``: ``(B, D)``; ``y``: ``S + (B, K)`` one-hot or relaxed, with any leading ``S``;
        losses ``S + (B,)``.

    Example:
        >>> import torch
        >>> model = M2(12, 3, 2, (8,), (8,), (8,), "relu")
        >>> x = torch.rand(5, 12).bernoulli()
        >>> q = model.posterior(x)
        >>> y = q.sample((4,))
        >>> y.shape, model.conditional_nelbo(x, y).shape, model.kl_to_prior(q).shape
        (torch.Size([4, 5, 3]), torch.Size([4, 5]), torch.Size([5]))
    """

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        latent_dim: int = 8,
        classifier_hidden: tuple[int, ...] = (256, 256, 256),
        encoder_hidden: tuple[int, ...] = (128, 128),
        decoder_hidden: tuple[int, ...] = (128, 128),
        activation: str = "relu",
        sparsemax: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.latent_dim = latent_dim
        self.sparsemax = sparsemax
        self.classifier = mlp([input_dim, *classifier_hidden, num_classes], activation)
        self.encoder = mlp([input_dim + num_classes, *encoder_hidden, 2 * latent_dim], activation)
        self.decoder = mlp([latent_dim + num_classes, *decoder_hidden, input_dim], activation)

    def posterior(self, x: Tensor) -> Categorical | SparsemaxCategorical:
        """``q(y | x)``, batch shape ``(B,)``, event shape ``(K,)``."""
        scores = self.classifier(x)
        if self.sparsemax:
            return SparsemaxCategorical(scores)
        return Categorical(logits=scores)

    def conditional_nelbo(self, x: Tensor, y: Tensor, noise: Tensor | None = None) -> Tensor:
        """``f(x, y) = -log p(x | y, z) + KL(q(z | x, y) || N(0, I))`` at ``z = mean + std * noise``.

        Args:
            x: images ``(B, D)``, broadcast over the leading dims of ``y``.
            y: classes, one-hot or relaxed, ``S + (B, K)``.
            noise: standard normal noise that broadcasts to ``S + (B, latent_dim)`` (``None``:
                a fresh draw from torch's global RNG for every row of ``y``).

        Returns:
            ``S + (B,)``: one decoder pass over all rows; ``f + log K`` is ``-ELBO(x, y)``.
        """
        target = x.expand(*y.shape[:-1], x.shape[-1])
        stats = self.encoder(torch.cat([target, y], -1))
        mean, log_std = stats.chunk(2, -1)
        if noise is None:
            noise = torch.randn_like(mean)
        z = mean + log_std.exp() * noise
        logits = self.decoder(torch.cat([z, y], -1))
        nll = F.binary_cross_entropy_with_logits(logits, target.expand_as(logits), reduction="none")
        kl = 0.5 * (mean.square() + (2 * log_std).exp() - 1 - 2 * log_std)
        return nll.sum(-1) + kl.sum(-1)

    def loss_fn(self, x: Tensor) -> PackedLoss:
        """``y -> f(x, y)`` for the estimator: ``S + (B, K) -> S + (B,)``, one decoder pass.

        A :class:`~latentgrad.estimators.PackedLoss`: summed over a support
        (:class:`~latentgrad.Marginalize`), it decodes only the classes of nonzero ``q(y | x)``
        of each image, not every image padded to the batch's largest support.
        """
        return PackedLoss.from_rows(lambda y, rows: self.conditional_nelbo(rows, y), x)

    def kl_to_prior(self, q: LatentDistribution) -> Tensor:
        """``KL(q(y | x) || uniform) = log K - H(q)``, analytic, shape ``(B,)``."""
        return math.log(self.num_classes) - q.entropy()


@torch.no_grad()
def unlabelled_nelbo(
    model: M2, x: Tensor, noise: Tensor, chunk: int = EVAL_CHUNK
) -> tuple[Tensor, Tensor]:
    """``U(x) = sum_{y: q(y|x) > 0} q(y | x) f(x, y) + KL(q(y | x) || p(y))``, exact in ``y``.

    ``f(x, y)`` is averaged over the ``S`` draws of ``noise``; every class of an image shares
    them (common random numbers). At most ``chunk`` (classes x draws x images) rows are decoded
    at once.

    Args:
        model: the M2 model.
        x: binary images ``(B, D)``.
        noise: standard normal ``(S, B, latent_dim)``.
        chunk: rows per decoder pass.

    Returns:
        ``(nelbo, support_size)``, both ``(B,)``: ``U(x)`` in float64 and the number of classes
        of nonzero ``q(y | x)``.

    Example:
        >>> import torch
        >>> model = M2(12, 3, 2, (8,), (8,), (8,), "relu")
        >>> x = torch.rand(5, 12).bernoulli()
        >>> nelbo, size = unlabelled_nelbo(model, x, torch.randn(2, 5, 2))
        >>> nelbo.shape, size.tolist()
        (torch.Size([5]), [3, 3, 3, 3, 3])
    """
    examples, _ = chunk_sizes(model.num_classes * noise.shape[0], chunk)
    nelbos, sizes = [], []
    for xs, eps in zip(x.split(examples), noise.split(examples, dim=1), strict=True):
        q = model.posterior(xs)
        values, probs = q.support_probs()  # (V, b, K), (V, b)
        y = values.unsqueeze(1).expand(-1, eps.shape[0], -1, -1)  # (V, S, b, K)
        f = model.conditional_nelbo(xs, y, eps).double().mean(1)  # (V, b)
        probs = probs.double()
        expected = torch.where(probs > 0, probs * f, torch.zeros_like(f)).sum(0)
        nelbos.append(expected + model.kl_to_prior(q).double())
        sizes.append((q.probs > 0).sum(-1))
    return torch.cat(nelbos), torch.cat(sizes)


def labelled_split(
    labels: Tensor, num_labelled: int, num_classes: int, seed: int
) -> tuple[Tensor, Tensor]:
    """A class-balanced labelled subset of the training images, and the rest.

    Class ``c`` gets ``num_labelled // K`` images, one more for the first
    ``num_labelled % K`` classes, drawn without replacement with a generator seeded by ``seed``.

    Args:
        labels: the training labels ``(N,)``, in ``0 .. K - 1``.
        num_labelled: the size of the labelled subset.
        num_classes: ``K``.
        seed: the seed of the draw.

    Returns:
        ``(labelled, unlabelled)``: sorted indices into the training split, a partition of it.

    Raises:
        ValueError: if a class has fewer images than its share.

    Example:
        >>> labels = torch.tensor([0, 1, 0, 1, 0, 1, 2, 2])
        >>> labelled, rest = labelled_split(labels, 3, 3, seed=0)
        >>> labels[labelled].tolist(), len(rest)
        ([0, 1, 2], 5)
    """
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(num_classes):
        share = num_labelled // num_classes + int(c < num_labelled % num_classes)
        members = (labels == c).nonzero().squeeze(-1)
        if members.numel() < share:
            raise ValueError(
                f"num_labelled={num_labelled} needs {share} labelled images of class {c}, but "
                f"the training split has {members.numel()}; choose a smaller num_labelled"
            )
        chosen.append(members[torch.randperm(members.numel(), generator=generator)[:share]])
    labelled = torch.cat(chosen).sort().values
    rest = torch.ones(labels.shape[0], dtype=torch.bool)
    rest[labelled] = False
    return labelled, rest.nonzero().squeeze(-1)


class LabelledSplitsLike(DataSplitsLike, Protocol):
    """What the experiment needs from ``latentgrad.data.load_dataset``: images with labels."""

    @property
    def name(self) -> str: ...
    @property
    def train_labels(self) -> Tensor | None: ...
    @property
    def valid_labels(self) -> Tensor | None: ...
    @property
    def test_labels(self) -> Tensor | None: ...


class SSVAEBatch(NamedTuple):
    """One step's data, not yet binarized.

    Attributes:
        labelled: labelled images ``(B_l, D)``.
        labels: their classes ``(B_l,)``.
        unlabelled: unlabelled images ``(B_u, D)``, or ``None`` in a warm-start step.
    """

    labelled: Tensor
    labels: Tensor
    unlabelled: Tensor | None


class SSVAETrainable:
    """The M2 model, its estimator and optimizer, as the runner drives them.

    Args:
        config: the experiment settings.
        chosen: the estimator the runner resolved from ``config.estimator``, with the latent
            family it asks for (``"sparsemax"``: a sparsemax ``q(y | x)``).
        data: splits of shape ``(N, D)`` in [0, 1] with labels; non-binary ones are binarized
            dynamically (a fresh draw per training batch, one fixed draw for evaluation).

    Attributes:
        model: the :class:`M2` model.
        estimator: the gradient estimator for ``y`` on unlabelled images.
        labelled, unlabelled: indices of the two training subsets (:func:`labelled_split`).
        alpha: the cross-entropy weight in use; ``unlabelled_weight`` likewise.
        modules: ``{"model", "estimator"}``.
        optimizer: Adam over both, with ``config.weight_decay``.
    """

    def __init__(
        self, config: SSVAEConfig, chosen: ResolvedEstimator, data: LabelledSplitsLike
    ) -> None:
        config.validate()
        self.config = config
        self.data = data
        labels: list[Tensor] = [
            y for split in SPLITS if (y := getattr(data, f"{split}_labels", None)) is not None
        ]
        if len(labels) < len(SPLITS):
            raise ValueError(
                "the ssvae experiment needs class labels; data set "
                f"{getattr(data, 'name', '')!r} has none (use mnist, fashion-mnist or digits)"
            )
        train_labels = labels[0]
        num_classes = max(int(y.max()) for y in labels) + 1
        num_train = data.train.shape[0]
        num_labelled = config.resolved_num_labelled(num_train)
        if not num_classes <= num_labelled < num_train:
            where = "" if config.num_labelled is not None else f" (the {config.preset} preset's)"
            raise ValueError(
                f"num_labelled={num_labelled}{where} must be at least the {num_classes} classes "
                f"and less than the {num_train} training images of {data.name!r}; set "
                "num_labelled (--num-labelled)"
            )
        self.labelled, self.unlabelled = labelled_split(
            train_labels, num_labelled, num_classes, config.split_seed
        )
        num_unlabelled = self.unlabelled.numel()
        self.alpha = 0.1 * num_train / num_labelled if config.alpha is None else config.alpha
        weight = config.unlabelled_weight
        self.unlabelled_weight = num_unlabelled / num_labelled if weight is None else weight
        self.estimator = chosen.estimator
        self.model = M2(
            data.train.shape[-1],
            num_classes,
            config.latent_dim,
            config.classifier_hidden,
            config.encoder_hidden,
            config.decoder_hidden,
            config.activation,
            sparsemax=chosen.latent == "sparsemax",
        )
        self.modules = nn.ModuleDict({"model": self.model, "estimator": self.estimator})
        self.optimizer = make_optimizer(
            "adam", self.modules.parameters(), config.resolved_lr(), config.weight_decay
        )
        self.images = BinaryImages(data, config.batch_size)
        self._eval_cache: dict[str, tuple[Tensor, Tensor]] = {}

    def warming_up(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (1-based) is a warm-start epoch (labelled images only)."""
        return epoch <= self.config.warmup_epochs

    def train_batches(self, epoch: int) -> Iterator[SSVAEBatch]:
        """The epoch's batches; every permutation is drawn (global RNG) before the first one,
        so replaying the batches on resume consumes the same random numbers."""
        size = self.config.batch_size
        cap = self.config.max_steps_per_epoch
        x, y = self.data.train, self.data.train_labels
        assert y is not None
        if self.warming_up(epoch):
            for rows in shuffled_batches(self.labelled, size, cap):
                yield SSVAEBatch(x[rows], y[rows], None)
            return
        unlabelled = self.unlabelled[torch.randperm(self.unlabelled.numel())]
        steps = epoch_steps(unlabelled.numel(), size, cap)
        cycles = math.ceil(steps * size / self.labelled.numel())
        perms = [torch.randperm(self.labelled.numel()) for _ in range(cycles)]
        labelled = self.labelled[torch.cat(perms)]
        for i in range(steps):
            rows = unlabelled[i * size : (i + 1) * size]
            lab = labelled[i * size : i * size + rows.numel()]
            yield SSVAEBatch(x[lab], y[lab], x[rows])

    def _labelled_terms(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``-ELBO(x, y)``, the cross-entropy and the correct predictions, each ``(B,)``."""
        k = self.model.num_classes
        y = F.one_hot(labels, k).to(x.dtype)
        nelbo = self.model.conditional_nelbo(x, y) + math.log(k)
        scores = self.model.classifier(x)
        cross_entropy = F.cross_entropy(scores, labels, reduction="none")
        correct = (scores.argmax(-1) == labels).to(x.dtype)
        return nelbo, cross_entropy, correct

    def train_step(self, batch: SSVAEBatch) -> Mapping[str, float]:
        """One optimizer step; the estimator's schedule advances after a joint step.

        Reports ``loss`` (the objective above at the discrete samples), ``loss_evals`` (decoder
        calls per unlabelled image; 1 in a warm-start step), ``labelled_nelbo``,
        ``cross_entropy`` and ``accuracy`` (of the labelled batch) and, in joint steps,
        ``nelbo`` (``U(x)`` of the unlabelled batch), ``kl_y`` and, when the estimator sums
        over a support, ``support_size`` (its mean over the batch). A Gumbel-Softmax without
        ``honest_value`` reports ``loss`` NaN and ``relaxed_loss`` instead.
        """
        self.modules.train()
        self.optimizer.zero_grad(set_to_none=True)
        x_l = self.images.binarize(batch.labelled)
        nelbo_l, cross_entropy, correct = self._labelled_terms(x_l, batch.labels)
        labelled = (nelbo_l + self.alpha * cross_entropy).mean()
        metrics = {
            "labelled_nelbo": float(nelbo_l.detach().mean()),
            "cross_entropy": float(cross_entropy.detach().mean()),
            "accuracy": float(correct.mean()),
        }
        if batch.unlabelled is None:
            labelled.backward()
            self.optimizer.step()
            metrics.update(loss=float(labelled.detach()), loss_evals=1.0)
            return metrics
        x_u = self.images.binarize(batch.unlabelled)
        q = self.model.posterior(x_u)
        out = self.estimator(q, self.model.loss_fn(x_u), context=x_u)
        kl_y = self.model.kl_to_prior(q)
        weight = self.unlabelled_weight
        (labelled + weight * (out.surrogate + kl_y).mean()).backward()
        self.optimizer.step()
        if isinstance(self.estimator, Scheduled):
            self.estimator.step()
        kl_y = kl_y.detach()
        nelbo_u = float((out.value + kl_y).mean())
        loss = float(labelled.detach()) + weight * nelbo_u
        metrics.update(
            loss=loss, loss_evals=float(out.loss_evals), nelbo=nelbo_u, kl_y=float(kl_y.mean())
        )
        if "support_size" in out.extras:
            metrics["support_size"] = float(out.extras["support_size"].float().mean())
        if has_relaxed_value(self.estimator):
            metrics.update(loss=math.nan, nelbo=math.nan, relaxed_loss=loss)
        return metrics

    def eval_data(self, split: str) -> tuple[Tensor, Tensor]:
        """The fixed, binarized images of ``split`` and their labels, at most
        ``max_eval_examples`` (the same random subset and draw as the other experiments')."""
        check_split(split)
        if split not in self._eval_cache:
            images_and_labels = [getattr(self.data, split), getattr(self.data, f"{split}_labels")]
            generator = torch.Generator().manual_seed(EVAL_DATA_SEED)
            x, y = eval_subset(images_and_labels, self.config.max_eval_examples, generator)
            self._eval_cache[split] = (self.images.binarize(x, generator), y)
        return self._eval_cache[split]

    @torch.no_grad()
    def evaluate(self, split: str) -> Mapping[str, float]:
        """``error`` (primary), ``accuracy``, ``nelbo`` and ``support_size`` on ``split``.

        The z noise, ``(eval_samples, N, latent_dim)``, is one draw from torch's global RNG
        (the runner seeds it); the classes of nonzero ``q(y | x)`` are summed exactly.
        """
        self.modules.eval()
        x, labels = self.eval_data(split)
        noise = torch.randn(self.config.eval_samples, x.shape[0], self.model.latent_dim)
        nelbo, support = unlabelled_nelbo(self.model, x, noise)
        accuracy = float((self.model.classifier(x).argmax(-1) == labels).double().mean())
        return {
            "error": 1.0 - accuracy,
            "accuracy": accuracy,
            "nelbo": float(nelbo.mean()),
            "support_size": float(support.double().mean()),
        }


def build(config: SSVAEConfig, chosen: ResolvedEstimator) -> SSVAETrainable:
    """Load ``config.dataset`` and build the M2 model around ``chosen``'s estimator."""
    from latentgrad.data import load_dataset

    return SSVAETrainable(config, chosen, load_dataset(config.dataset, data_dir=config.data))


EXPERIMENT = Experiment(
    name="ssvae",
    description=(
        "semi-supervised VAE (Kingma's M2) on MNIST, 5k labels, class y as the discrete latent "
        "(Correia et al. 2020; Jang et al. 2017, Table 2)"
    ),
    config_class=SSVAEConfig,
    build=build,
    primary_metric="error",
    estimators=ESTIMATORS,
)
