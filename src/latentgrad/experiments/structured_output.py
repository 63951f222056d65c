"""Structured output prediction with a stochastic binary network: Jang, Gu & Poole (2017),
Table 1, rows "SBN (Bern.)" and "SBN (Cat.)".

The network predicts the lower half of a binarized digit from its upper half through stochastic
layers: ``392-200-200-392`` with Bernoulli units or ``392-(20x10)-(20x10)-392`` with categorical
units. Every connection is linear (a sigmoid / softmax belief net): ``z_1 ~ q(z_1 | x_upper)``,
``z_{l+1} ~ q(z_{l+1} | z_l)``, ``p(x_lower | z_L)`` Bernoulli pixels. Training minimizes
``E_z[-log p(x_lower | z)]`` with one sample per example; the test metric is

    -log (1/m) sum_m p(x_lower | z_m),   z_m drawn through the network,  m = 1000,

in nats (the paper's). Every layer gets its own copy of the estimator
(:class:`~latentgrad.estimators.Chain`): a score-function estimator scores each layer's samples
with the loss estimate of the layers above, a relaxation passes relaxed samples up the network,
and local marginalization (``local-reparam``) flips every unit of both layers with the layers
above re-simulated from the same noise. The loss is evaluated once per step on one batched
tensor, whatever the number of samples or flipped units.

Paper settings kept as defaults: fixed binarized MNIST (upper 14 rows -> lower 14 rows), batch
100, the layer sizes above, 1000 test samples. Choices the paper leaves open or that differ:
Adam with ``lr = 1e-3`` (the paper picks the learning rate per estimator on the validation set;
``optimizer="sgd"`` gives its SGD with momentum 0.9) and 100 epochs.

References:
    [1] Jang, Gu & Poole, "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017.
    [2] Raiko, Berglund, Alain & Dinh, "Techniques for Learning Binary Stochastic Feedforward
        Neural Networks", ICLR 2015 (the task).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentgrad.distributions import Bernoulli, Categorical
from latentgrad.estimators import Chain, LatentDistribution
from latentgrad.lab.config import (
    is_positive_int,
    require,
    require_choice,
    require_positive_ints,
)
from latentgrad.lab.experiment import Experiment, ExperimentConfig, ResolvedEstimator
from latentgrad.lab.images import (
    OPTIMIZERS,
    BinaryImages,
    DataSplitsLike,
    chunk_sizes,
    eval_sample_count,
    has_relaxed_value,
    make_optimizer,
)

LATENTS = ("categorical", "bernoulli")

#: Samples x examples pushed through the network at once by :func:`predictive_nll`.
EVAL_CHUNK = 2**13

#: The estimators that apply: every one that scores, relaxes or locally marginalizes a sample
#: (summing over the 2^200 or 10^20 values of a layer is out of reach).
ESTIMATORS = (
    "sf",
    "sf-ma",
    "sf-loo",
    "sfe+",
    "nvil",
    "muprop",
    "muprop-nvil",
    "darn",
    "gs",
    "st-gs",
    "st",
    "annealed-st",
    "local-reparam",
    "local-expectation",
)


@dataclass
class StructuredOutputConfig(ExperimentConfig):
    """Settings of structured output prediction; the defaults are the paper's (module docstring).

    Attributes:
        latent: ``"bernoulli"`` (``num_bits`` units per layer) or ``"categorical"``
            (``num_categoricals`` units of ``num_classes`` classes per layer).
        layers: stochastic layers (paper: 2).
        num_bits: Bernoulli units per layer (paper: 200).
        num_categoricals: categorical units per layer (paper: 20).
        num_classes: classes per categorical unit (paper: 10).
        optimizer: ``"adam"``, ``"sgd"`` (momentum 0.9, the paper's) or ``"rmsprop"``.
        valid_samples: network samples for the validation metric (``None``: ``eval_samples``).
    """

    epochs: int = 100
    batch_size: int = 100
    lr: float = 1e-3
    dataset: str = "binarized-mnist"
    eval_samples: int = 1000
    estimator: str = "gs"
    latent: Literal["categorical", "bernoulli"] = "bernoulli"
    layers: int = 2
    num_bits: int = 200
    num_categoricals: int = 20
    num_classes: int = 10
    optimizer: Literal["adam", "sgd", "rmsprop"] = "adam"
    valid_samples: int | None = 100

    def validate(self) -> None:
        """Check the shared settings, then these (see :meth:`ExperimentConfig.validate`).

        Example:
            >>> StructuredOutputConfig(layers=0).validate()
            Traceback (most recent call last):
            ...
            latentgrad.lab.config.InvalidConfigValue: layers must be a positive int, got 0
        """
        super().validate()
        require_choice(self, "latent", LATENTS)
        require_choice(self, "optimizer", OPTIMIZERS)
        require_positive_ints(self, "layers", "num_bits", "num_categoricals")
        classes = self.num_classes
        require(is_positive_int(classes) and classes >= 2, "num_classes", "an int >= 2", classes)
        require_positive_ints(self, "valid_samples", optional=True)


class StochasticNet(nn.Module):
    """A belief net ``x_upper -> z_1 -> ... -> z_L -> x_lower`` with linear connections.

    Args:
        input_dim: pixels of the upper half.
        output_dim: pixels of the lower half.
        latent_shape: one layer's event shape: ``(D,)`` bits or ``(N, K)`` categoricals.
        layers: number ``L`` of stochastic layers.

    Shape:
        ``x_upper``: ``(B, D_in)``; ``z_l``: ``S + (B,) + latent_shape`` for any leading ``S``;
        losses: ``S + (B,)``.

    Example:
        >>> import torch
        >>> net = StochasticNet(6, 5, (3, 4), layers=2)
        >>> q1 = net.first(torch.zeros(7, 6))
        >>> z1 = q1.sample((2,))
        >>> z2 = net.conditional(z1).sample()
        >>> z1.shape, z2.shape, net.nll(z2, torch.zeros(7, 5)).shape
        (torch.Size([2, 7, 3, 4]), torch.Size([2, 7, 3, 4]), torch.Size([2, 7]))
    """

    def __init__(
        self, input_dim: int, output_dim: int, latent_shape: tuple[int, ...], layers: int
    ) -> None:
        super().__init__()
        if len(latent_shape) not in (1, 2):
            raise ValueError(f"latent_shape must be (N, K) or (D,), got {latent_shape}")
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        self.latent_shape = tuple(latent_shape)
        width = math.prod(latent_shape)
        self.input = nn.Linear(input_dim, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(layers - 1))
        self.output = nn.Linear(width, output_dim)

    @property
    def categorical(self) -> bool:
        return len(self.latent_shape) == 2

    def _layer(self, logits: Tensor) -> LatentDistribution:
        if not self.categorical:
            return Bernoulli(logits=logits)
        return Categorical(logits=logits.unflatten(-1, self.latent_shape)).to_event(1)

    def _flat(self, z: Tensor) -> Tensor:
        return z.flatten(-2) if self.categorical else z

    def first(self, x_upper: Tensor) -> LatentDistribution:
        """``q(z_1 | x_upper)``, batch shape ``(B,)``."""
        return self._layer(self.input(x_upper))

    def conditional(self, z: Tensor, layer: int = 0) -> LatentDistribution:
        """``q(z_{l+2} | z_{l+1})`` for ``layer = l``, batch shape ``z``'s batch dims."""
        return self._layer(self.hidden[layer](self._flat(z)))

    def conditionals(self) -> list[Callable[[Tensor], LatentDistribution]]:
        """The ``L - 1`` maps ``z_l -> q(z_{l+1} | z_l)`` in order."""
        return [functools.partial(self.conditional, layer=i) for i in range(len(self.hidden))]

    def nll(self, z: Tensor, x_lower: Tensor) -> Tensor:
        """``-log p(x_lower | z_L)`` summed over pixels; ``x_lower`` broadcasts over ``S``."""
        logits = self.output(self._flat(z))
        target = x_lower.expand_as(logits)
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)


@torch.no_grad()
def predictive_nll(
    net: StochasticNet,
    x_upper: Tensor,
    x_lower: Tensor,
    num_samples: int,
    chunk: int = EVAL_CHUNK,
) -> tuple[Tensor, Tensor]:
    """``-log (1/m) sum_m p(x_lower | z_m)`` and ``(1/m) sum_m -log p(x_lower | z_m)``.

    ``z_m`` are drawn through the network (ancestral sampling, torch's global RNG), at most
    ``chunk`` samples x examples at a time.

    Returns:
        Both per example, shape ``(B,)``, float64.

    Example:
        >>> import torch
        >>> net = StochasticNet(6, 5, (4,), layers=2)
        >>> bound, expected = predictive_nll(net, torch.zeros(3, 6), torch.ones(3, 5), 50)
        >>> bool((bound <= expected + 1e-9).all())  # Jensen
        True
    """
    examples, samples = chunk_sizes(num_samples, chunk)
    bounds, means = [], []
    for xu, xl in zip(x_upper.split(examples), x_lower.split(examples), strict=True):
        log_liks = []
        for start in range(0, num_samples, samples):
            z = net.first(xu).sample((min(samples, num_samples - start),))
            for fn in net.conditionals():
                z = fn(z).sample()
            log_liks.append(-net.nll(z, xl).double())
        ll = torch.cat(log_liks)
        bounds.append(-(ll.logsumexp(0) - math.log(num_samples)))
        means.append(-ll.mean(0))
    return torch.cat(bounds), torch.cat(means)


def split_halves(x: Tensor, image_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """The upper and lower halves (by rows) of flattened images ``(B, H * W)``.

    Example:
        >>> upper, lower = split_halves(torch.arange(12.0).view(1, 12), (4, 3))
        >>> upper.tolist(), lower.tolist()
        ([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]], [[6.0, 7.0, 8.0, 9.0, 10.0, 11.0]])
    """
    rows = image_shape[0]
    cut = (rows // 2) * (math.prod(image_shape) // rows)
    return x[..., :cut], x[..., cut:]


class StructuredOutputTrainable:
    """The network, its per-layer estimators (:class:`Chain`) and optimizer, for the runner.

    Args:
        config: the experiment settings.
        chosen: the estimator the runner resolved (copied once per layer).
        data: splits of shape ``(N, H * W)``; non-binary ones are binarized dynamically.
        image_shape: ``(H, W)``; the first ``H // 2`` rows are the input.
    """

    def __init__(
        self,
        config: StructuredOutputConfig,
        chosen: ResolvedEstimator,
        data: DataSplitsLike,
        image_shape: tuple[int, ...],
    ) -> None:
        config.validate()
        if len(image_shape) != 2 or image_shape[0] < 2:
            raise ValueError(f"image_shape must be (H, W) with H >= 2, got {image_shape}")
        self.config = config
        self.image_shape = tuple(image_shape)
        self.images = BinaryImages(
            data, config.batch_size, config.max_steps_per_epoch, config.max_eval_examples
        )
        upper, lower = split_halves(data.train[:1], self.image_shape)
        if config.latent == "categorical":
            latent: tuple[int, ...] = (config.num_categoricals, config.num_classes)
        else:
            latent = (config.num_bits,)
        self.net = StochasticNet(upper.shape[-1], lower.shape[-1], latent, config.layers)
        self.estimator = Chain(chosen.estimator, config.layers)
        self.modules = nn.ModuleDict({"model": self.net, "estimator": self.estimator})
        self.optimizer = make_optimizer(config.optimizer, self.modules.parameters(), config.lr)

    def train_batches(self, epoch: int) -> Iterator[Tensor]:
        """Shuffled minibatches of the training split."""
        return self.images.train_batches()

    def train_step(self, batch: Tensor) -> Mapping[str, float]:
        """One step on ``E[-log p(x_lower | z)]``; reports ``loss`` and ``loss_evals``.

        A Gumbel-Softmax without ``honest_value`` reports the relaxed loss as
        ``relaxed_loss`` and ``loss`` as NaN.
        """
        x_upper, x_lower = split_halves(self.images.binarize(batch), self.image_shape)
        self.modules.train()
        self.optimizer.zero_grad(set_to_none=True)
        out = self.estimator(
            self.net.first(x_upper),
            self.net.conditionals(),
            lambda zs: self.net.nll(zs[-1], x_lower),
            context=x_upper,
        )
        out.surrogate.mean().backward()
        self.optimizer.step()
        self.estimator.step()
        loss = float(out.value.mean())
        metrics = {"loss": loss, "loss_evals": float(out.loss_evals)}
        if has_relaxed_value(self.estimator.layers[0]):
            metrics.update(loss=math.nan, relaxed_loss=loss)
        return metrics

    def evaluate(self, split: str) -> Mapping[str, float]:
        """``nll`` (the ``m``-sample predictive bound) and ``expected_nll`` (one sample), nats."""
        x = self.images.eval_data(split)
        samples = eval_sample_count(split, self.config.eval_samples, self.config.valid_samples)
        x_upper, x_lower = split_halves(x, self.image_shape)
        with torch.random.fork_rng(devices=[]):
            bound, expected = predictive_nll(self.net, x_upper, x_lower, samples)
        return {"nll": float(bound.mean()), "expected_nll": float(expected.mean())}


def build(config: StructuredOutputConfig, chosen: ResolvedEstimator) -> StructuredOutputTrainable:
    """Load ``config.dataset`` and build the network around ``chosen``'s estimator."""
    from latentgrad.data import load_dataset

    data = load_dataset(config.dataset, data_dir=config.data)
    return StructuredOutputTrainable(config, chosen, data, data.image_shape)


EXPERIMENT = Experiment(
    name="structured-output",
    description=(
        "predict the lower half of binarized MNIST digits from the upper half through two "
        "stochastic layers, 200 bits or 20x10 categoricals (Jang et al. 2017, Table 1, SBN rows)"
    ),
    config_class=StructuredOutputConfig,
    build=build,
    primary_metric="nll",
    estimators=ESTIMATORS,
)
