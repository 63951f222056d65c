"""Variational autoencoder with discrete latents: Jang, Gu & Poole (2017), Table 1, VAE rows.

A binarized image ``x`` is encoded into ``q(z | x)``: 200 independent bits or 20 categoricals
of 10 classes (a sparsemax categorical for the ``sparsemax`` estimator, top-k sparsemax over the
bit-vectors for ``topk-sparsemax``), decoded by an MLP into
Bernoulli pixel probabilities ``p(x | z)``, under a uniform prior ``p(z)``. Training minimizes
the negative ELBO

    E_q[-log p(x | z)] + KL(q(z | x) || p(z)),     KL = log |Z| - H(q)   (uniform prior),

with the expectation's gradient from the chosen estimator and the KL analytic. The test metric
is the negative 1000-sample importance-weighted bound (Burda et al.) in nats, as in the paper.

With ``objective="iwae"`` (the default for a multi-sample estimator, VIMCO) training instead
minimizes the negative ``K``-sample importance-weighted bound
``-log (1/K) sum_k p(x, z_k) / q(z_k | x)`` (Burda et al.; Mnih & Rezende), ``K`` the
estimator's ``num_samples``: the estimator's loss is the negative log-weight
``-log p(x | z) + log |Z| + log q(z | x)``, and no KL is added.

Paper settings kept as defaults: fixed binarized MNIST, batch 100, uniform prior, 1000-sample
test bound, the temperature schedule of the ``gs``/``st-gs`` estimator entries. Choices the paper
leaves open or that differ: Adam with ``lr = 1e-3`` (the paper picks the learning rate on the
validation set from {3e-5, 1e-5, 3e-4, 1e-4, 3e-3, 1e-3}; ``optimizer="sgd"`` gives its SGD with
momentum 0.9), tanh hidden units, and the architecture read from the table's notation:
``784-200-784`` (Bernoulli: linear encoder to 200 logits, linear decoder) and
``784-(20x10)-200`` (categorical: linear encoder to 20x10 logits, one hidden decoder layer of
200 units).

References:
    [1] Jang, Gu & Poole, "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017.
    [2] Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
    [3] Mnih & Rezende, "Variational Inference for Monte Carlo Objectives", ICML 2016.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentgrad.distributions import Bernoulli, Categorical, SparsemaxCategorical, TopKSparsemax
from latentgrad.estimators import (
    VIMCO,
    Estimator,
    LatentDistribution,
    Marginalize,
    SumAndSample,
)
from latentgrad.lab.config import (
    is_positive_int,
    require,
    require_choice,
    require_positive_ints,
)
from latentgrad.lab.experiment import Experiment, ExperimentConfig, ResolvedEstimator
from latentgrad.lab.images import (
    ACTIVATIONS,
    BinaryImages,
    DataSplitsLike,
    chunk_sizes,
    eval_sample_count,
    has_relaxed_value,
    make_optimizer,
    mlp,
)
from latentgrad.schedules import Scheduled

LATENTS = ("categorical", "bernoulli")
OPTIMIZERS = ("adam", "sgd")
OBJECTIVES = ("auto", "elbo", "iwae")

#: The latent families (``ResolvedEstimator.latent``) the VAE builds; others are refused.
FAMILIES = ("softmax", "sparsemax", "topk-sparsemax")

#: Samples x examples decoded at once by :func:`importance_weighted_bound` (memory bound:
#: about 13 MB per decoder-output-sized tensor with 784 pixels; larger chunks are slower on CPU).
EVAL_CHUNK = 2**12


@dataclass
class VAEConfig(ExperimentConfig):
    """Settings of the discrete VAE; the defaults are the paper's (see the module docstring).

    Attributes:
        latent: ``"categorical"`` (``num_categoricals`` one-hot units of ``num_classes``
            classes) or ``"bernoulli"`` (``num_bits`` bits).
        num_categoricals: categorical units of the latent (paper: 20).
        num_classes: classes per categorical unit (paper: 10).
        num_bits: bits of the Bernoulli latent (paper: 200).
        encoder_hidden: hidden layer widths of the encoder ``x -> logits``; ``None``: the
            paper's, no hidden layer.
        decoder_hidden: hidden layer widths of the decoder ``z -> pixel logits``; ``None``:
            the paper's, ``(200,)`` for the categorical latent and ``()`` for the Bernoulli one.
        activation: hidden units, ``"tanh"`` or ``"relu"``.
        optimizer: ``"adam"`` or ``"sgd"`` (momentum 0.9, as in the paper).
        valid_samples: importance samples for the validation bound (cheaper than the test's
            ``eval_samples``; ``None``: ``eval_samples``).
        objective: what training minimizes: ``"elbo"`` (the negative ELBO, every estimator of
            ``E_q[loss]``), ``"iwae"`` (the negative importance-weighted bound over the
            estimator's ``num_samples`` samples; needs a multi-sample estimator, ``vimco``) or
            ``"auto"`` (``"iwae"`` for a multi-sample estimator, ``"elbo"`` otherwise).
    """

    epochs: int = 100
    batch_size: int = 100
    lr: float = 1e-3
    dataset: str = "binarized-mnist"
    eval_samples: int = 1000
    latent: Literal["categorical", "bernoulli"] = "categorical"
    num_categoricals: int = 20
    num_classes: int = 10
    num_bits: int = 200
    encoder_hidden: tuple[int, ...] | None = None
    decoder_hidden: tuple[int, ...] | None = None
    activation: Literal["tanh", "relu"] = "tanh"
    optimizer: Literal["adam", "sgd"] = "adam"
    valid_samples: int | None = 100
    objective: Literal["auto", "elbo", "iwae"] = "auto"

    def validate(self) -> None:
        """Check the shared settings, then the VAE's (see :meth:`ExperimentConfig.validate`).

        Raises:
            InvalidConfigValue: (a ``ValueError``) naming the first field out of range.

        Example:
            >>> VAEConfig(num_classes=1).validate()
            Traceback (most recent call last):
            ...
            latentgrad.lab.config.InvalidConfigValue: num_classes must be an int >= 2, got 1
        """
        super().validate()
        require_choice(self, "latent", LATENTS)
        require_choice(self, "activation", ACTIVATIONS)
        require_choice(self, "optimizer", OPTIMIZERS)
        require_choice(self, "objective", OBJECTIVES)
        require_positive_ints(self, "num_categoricals", "num_bits")
        classes = self.num_classes
        require(is_positive_int(classes) and classes >= 2, "num_classes", "an int >= 2", classes)
        for name in ("encoder_hidden", "decoder_hidden"):
            widths = getattr(self, name)
            ok = widths is None or all(is_positive_int(w) for w in widths)
            require(ok, name, "positive widths or none", widths)
        require_positive_ints(self, "valid_samples", optional=True)


class DiscreteVAE(nn.Module):
    """Encoder ``q(z | x)``, decoder ``p(x | z)`` (Bernoulli pixels), uniform prior ``p(z)``.

    Args:
        input_dim: pixels ``D``.
        latent_shape: ``(N, K)`` for ``N`` categoricals of ``K`` classes, ``(D_z,)`` for bits.
        encoder_hidden: hidden widths of the encoder.
        decoder_hidden: hidden widths of the decoder.
        activation: ``"tanh"`` or ``"relu"``.
        sparsemax: categorical units with sparsemax probabilities (Correia et al. 2020).
        topk: bits with top-k sparsemax probabilities over the whole bit-vector, at most
            ``topk`` structures (Correia et al. 2020); ``None``: independent Bernoulli bits.

    Shape:
        ``x``: ``(B, D)``; samples ``z``: ``S + (B,) + latent_shape`` with any leading ``S``.

    Example:
        >>> import torch
        >>> vae = DiscreteVAE(16, (3, 4), (), (8,), "tanh")
        >>> x = torch.rand(5, 16).bernoulli()
        >>> q = vae.posterior(x)
        >>> z = q.sample((2,))
        >>> z.shape, vae.reconstruction_loss(x)(z).shape, vae.kl_to_prior(q).shape
        (torch.Size([2, 5, 3, 4]), torch.Size([2, 5]), torch.Size([5]))
    """

    def __init__(
        self,
        input_dim: int,
        latent_shape: tuple[int, ...],
        encoder_hidden: Sequence[int],
        decoder_hidden: Sequence[int],
        activation: str,
        sparsemax: bool = False,
        topk: int | None = None,
    ) -> None:
        super().__init__()
        if len(latent_shape) not in (1, 2):
            raise ValueError(f"latent_shape must be (N, K) or (D,), got {latent_shape}")
        if sparsemax and len(latent_shape) == 1:
            raise ValueError("the sparsemax latent needs categorical units, not bits")
        if topk is not None and len(latent_shape) != 1:
            raise ValueError("the top-k sparsemax latent is over bit-vectors, not categoricals")
        self.topk = topk
        self.latent_shape = tuple(latent_shape)
        self.sparsemax = sparsemax
        width = math.prod(latent_shape)
        self.encoder = mlp([input_dim, *encoder_hidden, width], activation)
        self.decoder = mlp([width, *decoder_hidden, input_dim], activation)

    @property
    def categorical(self) -> bool:
        return len(self.latent_shape) == 2

    @property
    def num_values(self) -> int:
        """``|Z|``, the number of latent values (``K ** N`` or ``2 ** D_z``)."""
        if self.categorical:
            units, classes = self.latent_shape
            return classes**units
        return 2 ** self.latent_shape[0]

    @property
    def log_num_values(self) -> float:
        """``log |Z|``: ``-log p(z)`` for every ``z`` under the uniform prior."""
        if self.categorical:
            units, classes = self.latent_shape
            return units * math.log(classes)
        return self.latent_shape[0] * math.log(2.0)

    def posterior(self, x: Tensor) -> LatentDistribution:
        """``q(z | x)`` with batch shape ``(B,)`` and event shape ``latent_shape``."""
        logits = self.encoder(x)
        if not self.categorical:
            if self.topk is not None:
                return TopKSparsemax(logits, k=self.topk)
            return Bernoulli(logits=logits)
        scores = logits.unflatten(-1, self.latent_shape)
        if self.sparsemax:
            return SparsemaxCategorical(scores).to_event(1)
        return Categorical(logits=scores).to_event(1)

    def decode(self, z: Tensor) -> Tensor:
        """Pixel logits of ``p(x | z)``, shape ``z.shape[:-event_dims] + (D,)``."""
        return self.decoder(z.flatten(-2) if self.categorical else z)

    def reconstruction_loss(self, x: Tensor) -> Callable[[Tensor], Tensor]:
        """``loss_fn(z) = -log p(x | z)`` summed over pixels, for ``z`` of shape ``S + (B,) + E``.

        Returns losses of shape ``S + (B,)``; ``x`` broadcasts over the leading sample dims.
        """

        def loss_fn(z: Tensor) -> Tensor:
            logits = self.decode(z)
            target = x.expand_as(logits)
            nll = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            return nll.sum(-1)

        return loss_fn

    def kl_to_prior(self, q: LatentDistribution) -> Tensor:
        """``KL(q || uniform) = log |Z| - H(q)``, analytic, shape ``(B,)``."""
        return self.log_num_values - q.entropy()


class Bound(NamedTuple):
    """Per-example evaluation terms (nats), each of shape ``(B,)``.

    Attributes:
        iwae: the importance-weighted lower bound on ``log p(x)``.
        elbo: ``E_q[log p(x | z)]`` (Monte Carlo, the same samples) ``- KL(q || p)`` (analytic).
        kl: ``KL(q(z | x) || p(z))``.
    """

    iwae: Tensor
    elbo: Tensor
    kl: Tensor


@torch.no_grad()
def importance_weighted_bound(
    model: DiscreteVAE, x: Tensor, num_samples: int, chunk: int = EVAL_CHUNK
) -> Bound:
    """``log p(x) >= log (1/S) sum_s p(x | z_s) p(z_s) / q(z_s | x)``, ``z_s ~ q(z | x)``.

    The decoder sees at most ``chunk`` (samples x examples) at a time, so memory stays bounded
    for any ``num_samples``. Samples are discrete; for a sparsemax latent they never fall on
    values of probability 0, so ``log q`` is finite. Uses torch's global RNG.

    Args:
        model: the VAE.
        x: binary data, shape ``(B, D)``.
        num_samples: importance samples ``S`` per example.
        chunk: samples x examples per decoder pass.

    Returns:
        :class:`Bound` per example.

    Example:
        >>> import torch
        >>> vae = DiscreteVAE(16, (3, 4), (), (8,), "tanh")
        >>> b = importance_weighted_bound(vae, torch.rand(5, 16).bernoulli(), 100)
        >>> b.iwae.shape, bool((b.kl >= -1e-5).all())
        (torch.Size([5]), True)
    """
    examples, samples = chunk_sizes(num_samples, chunk)
    parts: list[Bound] = []
    for xs in x.split(examples):
        q = model.posterior(xs)
        loss_fn = model.reconstruction_loss(xs)
        log_weights: list[Tensor] = []
        log_lik = torch.zeros(xs.shape[0], dtype=torch.float64, device=xs.device)
        for start in range(0, num_samples, samples):
            z = q.sample((min(samples, num_samples - start),))
            ll = -loss_fn(z)
            log_weights.append(ll - model.log_num_values - q.log_prob(z))
            log_lik += ll.double().sum(0)
        iwae = torch.cat(log_weights).double().logsumexp(0) - math.log(num_samples)
        kl = model.kl_to_prior(q).double()
        parts.append(Bound(iwae, log_lik / num_samples - kl, kl))
    return Bound(*(torch.cat(terms) for terms in zip(*parts, strict=True)))


def _hidden_sizes(config: VAEConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
    encoder = () if config.encoder_hidden is None else tuple(config.encoder_hidden)
    default_decoder = (200,) if config.latent == "categorical" else ()
    decoder = default_decoder if config.decoder_hidden is None else tuple(config.decoder_hidden)
    return encoder, decoder


def _check_enumerable(name: str, estimator: Estimator, model: DiscreteVAE) -> None:
    """Refuse, at build time, estimators that sum over a support too large to enumerate."""
    # UnorderedSet draws from a larger factorized latent by stochastic beam search instead.
    enumerates = (Marginalize, SumAndSample)
    if not isinstance(estimator, enumerates) or model.topk is not None:
        return  # top-k sparsemax: at most k structures, whatever the latent's size
    if model.num_values > estimator.max_support:
        if model.categorical:
            units, classes = model.latent_shape
            size = f"up to {classes}^{units} values ({units} categoricals of {classes} classes)"
        else:
            size = f"2^{model.latent_shape[0]} values ({model.latent_shape[0]} bits)"
        raise ValueError(
            f"estimator {name!r} enumerates the latent's support, which has {size}, more than "
            f"its max_support={estimator.max_support}; use a smaller latent (num_categoricals, "
            "num_classes, num_bits) or another estimator"
        )


def _training_objective(objective: str, name: str, estimator: Estimator) -> str:
    """``"elbo"`` or ``"iwae"``: ``objective`` resolved for ``estimator``, which must fit it.

    A multi-sample estimator (VIMCO) estimates ``-log (1/K) sum_k exp(-loss_k)``, not
    ``E_q[loss]``: on the ELBO's reconstruction loss that would be neither bound, so the two
    objectives each take only their own kind of estimator.
    """
    multi_sample = isinstance(estimator, VIMCO)
    if objective == "auto":
        return "iwae" if multi_sample else "elbo"
    if objective == "iwae" and not multi_sample:
        raise ValueError(
            f"objective 'iwae' needs a multi-sample estimator (vimco), whose loss is the "
            f"negative log-weight; estimator {name!r} estimates E_q[loss] (use objective 'elbo')"
        )
    if objective == "elbo" and multi_sample:
        raise ValueError(
            f"estimator {name!r} estimates the multi-sample bound -log mean_k exp(-loss_k), "
            "not the ELBO; use objective 'iwae' (or 'auto')"
        )
    return objective


class VAETrainable:
    """The discrete VAE, its estimator and optimizer, as the runner drives them.

    Args:
        config: the experiment settings.
        chosen: the estimator the runner resolved from ``config.estimator``, with the latent
            family it asks for (``"sparsemax"``: sparsemax categorical units;
            ``"topk-sparsemax"``: top-k sparsemax over the bit-vector, ``k`` from
            ``chosen.latent_options``).
        data: splits of shape ``(N, D)`` with values in [0, 1]; non-binary ones are binarized
            dynamically (a fresh Bernoulli draw per training batch, one fixed draw for
            evaluation).

    Attributes:
        model: the :class:`DiscreteVAE`.
        estimator: the gradient estimator (``chosen.estimator``).
        objective: ``"elbo"`` or ``"iwae"``, what training minimizes (``config.objective``
            resolved for the estimator).
        modules: ``{"model", "estimator"}`` (the estimator's state: schedules, learned
            baselines; empty for stateless estimators).
        optimizer: over the model's and the estimator's parameters (NVIL's network).
    """

    def __init__(self, config: VAEConfig, chosen: ResolvedEstimator, data: DataSplitsLike) -> None:
        config.validate()
        self.config = config
        self.data = data
        input_dim = data.train.shape[-1]
        self.estimator = chosen.estimator
        if chosen.latent not in FAMILIES:
            raise ValueError(
                f"estimator {chosen.name!r} asks for a {chosen.latent!r} latent, which the VAE "
                f"does not have (its families: {', '.join(FAMILIES)}); the bitvae experiment "
                "has SparseMAP over bit-vectors"
            )
        sparsemax = chosen.latent == "sparsemax"
        if sparsemax and config.latent == "bernoulli":
            raise ValueError(
                f"estimator {chosen.name!r} needs a sparsemax categorical latent, not bits; "
                "use latent 'categorical' (--latent categorical) or another estimator"
            )
        if config.latent == "categorical":
            latent_shape: tuple[int, ...] = (config.num_categoricals, config.num_classes)
        else:
            latent_shape = (config.num_bits,)
        topk = None
        if chosen.latent == "topk-sparsemax":
            if config.latent != "bernoulli":
                raise ValueError(
                    f"estimator {chosen.name!r} needs bits (a top-k sparsemax over bit-vectors), "
                    "not categoricals; use latent 'bernoulli' (--latent bernoulli)"
                )
            topk = int(chosen.latent_options["k"])
        encoder_hidden, decoder_hidden = _hidden_sizes(config)
        self.model = DiscreteVAE(
            input_dim,
            latent_shape,
            encoder_hidden,
            decoder_hidden,
            config.activation,
            sparsemax,
            topk,
        )
        _check_enumerable(chosen.name, self.estimator, self.model)
        self.objective = _training_objective(config.objective, chosen.name, self.estimator)
        self.modules = nn.ModuleDict({"model": self.model, "estimator": self.estimator})
        self.optimizer = make_optimizer(config.optimizer, self.modules.parameters(), config.lr)
        self.images = BinaryImages(
            data, config.batch_size, config.max_steps_per_epoch, config.max_eval_examples
        )

    def train_batches(self, epoch: int) -> Iterator[Tensor]:
        """Shuffled minibatches of the training split (``torch.randperm``, global RNG)."""
        return self.images.train_batches()

    def training_loss(self, x: Tensor, q: LatentDistribution) -> Callable[[Tensor], Tensor]:
        """The estimator's ``loss_fn``: ``-log p(x | z)`` for the ELBO; for the IWAE bound the
        negative log-weight ``-log p(x | z) + log |Z| + log q(z | x)`` (differentiable in the
        encoder through ``log q``)."""
        reconstruction = self.model.reconstruction_loss(x)
        if self.objective == "elbo":
            return reconstruction
        log_num_values = self.model.log_num_values

        def neg_log_weight(z: Tensor) -> Tensor:
            return reconstruction(z) + log_num_values + q.log_prob(z)

        return neg_log_weight

    def train_step(self, batch: Tensor) -> Mapping[str, float]:
        """One optimizer step on the negative ELBO (or the negative IWAE bound, see
        :attr:`objective`); the estimator's schedule advances after it.

        Reports ``loss`` (the negative ELBO at the discrete samples, or the negative
        ``K``-sample bound), ``loss_evals`` and ``kl`` (analytic; part of the ELBO objective
        only). A Gumbel-Softmax without ``honest_value`` evaluates the loss at relaxed samples
        only: then ``relaxed_loss`` is that relaxed objective and ``loss`` is NaN (not measured).
        """
        x = self.images.binarize(batch)
        self.modules.train()  # learned baselines update their running statistics in training mode
        self.optimizer.zero_grad(set_to_none=True)
        q = self.model.posterior(x)
        out = self.estimator(q, self.training_loss(x, q), context=x)
        kl = self.model.kl_to_prior(q)
        if self.objective == "iwae":
            out.surrogate.mean().backward()  # the bound holds the prior and q already
        else:
            (out.surrogate.mean() + kl.mean()).backward()
        self.optimizer.step()
        if isinstance(self.estimator, Scheduled):
            self.estimator.step()
        kl = kl.detach()
        value = out.value if self.objective == "iwae" else out.value + kl
        loss = float(value.mean())
        metrics = {"loss": loss, "loss_evals": float(out.loss_evals), "kl": float(kl.mean())}
        if has_relaxed_value(self.estimator):
            metrics.update(loss=math.nan, relaxed_loss=loss)
        return metrics

    def _eval_data(self, split: str) -> Tensor:
        """The (fixed, binarized) evaluation examples of ``split``, at most ``max_eval_examples``."""
        return self.images.eval_data(split)

    def evaluate(self, split: str) -> Mapping[str, float]:
        """``nll`` (the negative importance-weighted bound), ``elbo`` and ``kl``, in nats.

        ``eval_samples`` importance samples (``valid_samples`` on ``"valid"``), drawn from
        torch's global RNG, whose state is restored afterwards (the runner seeds it).
        """
        x = self._eval_data(split)
        samples = eval_sample_count(split, self.config.eval_samples, self.config.valid_samples)
        with torch.random.fork_rng(devices=[]):
            bound = importance_weighted_bound(self.model, x, samples)
        return {
            "nll": float(-bound.iwae.mean()),
            "elbo": float(bound.elbo.mean()),
            "kl": float(bound.kl.mean()),
        }


def build(config: VAEConfig, chosen: ResolvedEstimator) -> VAETrainable:
    """Load ``config.dataset`` and build the VAE around ``chosen``'s estimator."""
    from latentgrad.data import load_dataset

    return VAETrainable(config, chosen, load_dataset(config.dataset, data_dir=config.data))


EXPERIMENT = Experiment(
    name="vae",
    description=(
        "discrete VAE on binarized MNIST, 20x10 categorical or 200 Bernoulli latents, "
        "1000-sample test bound (Jang et al. 2017, Table 1)"
    ),
    config_class=VAEConfig,
    build=build,
    primary_metric="nll",
    latent_families=(Categorical, Bernoulli),
    latent_kinds=("softmax", "sparsemax", "topk-sparsemax"),
)
