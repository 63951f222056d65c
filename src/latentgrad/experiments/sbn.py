"""Variational learning of sigmoid belief networks: Tokui & Sato (2017), with the gradient-variance
study of their figures.

A generative SBN ``p(z_L) p(z_{L-1} | z_L) ... p(z_1 | z_2) p(x | z_1)`` with Bernoulli units and a
mirrored inference network ``q(z_1 | x) q(z_2 | z_1) ... q(z_L | z_{L-1})`` are trained on MNIST
with dynamic binarization by maximizing the ELBO, i.e. minimizing

    f(z) = log q(z | x) - log p(x, z),     z ~ q(z | x),

one sample per example. Each inference layer gets its own copy of the estimator
(:class:`~latentgrad.estimators.Chain`); local marginalization (``local-reparam``, Tokui & Sato's
RAM) and local expectation gradients (``local-expectation``) handle all layers jointly. ``f``
reads ``log q`` with the inference parameters detached: their gradient comes from the estimator
only (the pathwise term ``E[grad log q] = 0`` is dropped, as in NVIL).

Architectures (Tokui & Sato's names; units from the top layer down to the pixels):

- ``linear``: 200-200-784, two stochastic layers, linear connections;
- ``deep``: 200-200-200-200-784, four stochastic layers, linear connections;
- ``nonlinear``: 200-200-784 with two tanh layers (``hidden`` units) inside each connection.

Estimators (their names): LR = ``sf``; LR+C = ``sf-ma`` (moving average, decay 0.8 = rate 0.2);
LR+C+IDB = ``nvil`` (a per-layer tanh MLP of 100 units and a running centre, no variance
normalization); MuProp+C+IDB = ``muprop-nvil``; local expectation gradients =
``local-expectation``; RAM = ``local-reparam``.

Metrics: ``nelbo`` (the test variational bound ``-ELBO``, one sample per ``eval_samples``
averaged) and ``nll`` (``-log (1/S) sum_s p(x, z_s) / q(z_s | x)``, the Monte Carlo bound with
``S = eval_samples``, 50,000 in the paper).

**Gradient-variance study.** With ``variance_every = N`` the run measures, every ``N`` epochs
(on the validation schedule, so ``N`` must be a multiple of ``eval_every``), for every estimator in
``variance_estimators``: the variance of the inference network's gradient over
``variance_repeats`` independent estimates on each of ``variance_batches`` fixed training
minibatches, averaged over the parameters of each layer (and over all), with the model frozen.
Learned baselines (NVIL's network, the moving average) are first fitted to the frozen model for
``variance_warmup`` steps. The values are recorded with the validation metrics (``gradvar/NAME/
LAYER`` and ``evals/NAME``); at the end the run writes ``variance.csv`` (one row per checkpoint,
estimator and layer, with the variance, loss evaluations and their product) and
``variance.png`` (variance against training steps, log scale, one line per estimator).

Settings that differ from the paper (2M iterations, 50,000-sample bound): the budget is set by
``epochs`` and ``eval_samples``; Adam is available with ``optimizer="adam"``. RMSprop's learning
rate (``lr = 3e-4``) and the hidden width of the nonlinear connections (200) are our choices.

References:
    [1] Tokui & Sato, "Evaluating the Variance of Likelihood-Ratio Gradient Estimators",
        ICML 2017.
    [2] Mnih & Gregor, "Neural Variational Inference and Learning in Belief Networks", ICML 2014.
    [3] Titsias & Lázaro-Gredilla, "Local Expectation Gradients for Black Box Variational
        Inference", NeurIPS 2015.
"""

from __future__ import annotations

import csv
import functools
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from latentgrad.distributions import Bernoulli
from latentgrad.estimators import Chain, Estimate
from latentgrad.lab.config import (
    require,
    require_choice,
    require_nonnegative,
    require_positive_ints,
)
from latentgrad.lab.experiment import Experiment, ExperimentConfig, ResolvedEstimator
from latentgrad.lab.images import (
    OPTIMIZERS,
    BinaryImages,
    DataSplitsLike,
    chunk_sizes,
    eval_sample_count,
    make_optimizer,
    mlp,
)

ARCHITECTURES: dict[str, tuple[int, bool]] = {
    "linear": (2, False),
    "deep": (4, False),
    "nonlinear": (2, True),
}
"""Architecture name -> (stochastic layers, tanh layers inside each connection)."""

#: Estimators for the inference network: score-function ones and the local ones (no
#: relaxations: ``log q`` of a relaxed sample is not the Bernoulli's).
ESTIMATORS = (
    "sf",
    "sf-ma",
    "sf-loo",
    "sfe+",
    "nvil",
    "muprop",
    "muprop-nvil",
    "local-expectation",
    "local-reparam",
)

VARIANCE_ESTIMATORS = ("sf", "sf-ma", "nvil", "muprop-nvil", "local-expectation", "local-reparam")

#: Samples x examples pushed through the networks at once by :func:`bounds`.
EVAL_CHUNK = 2**12


@dataclass
class SBNConfig(ExperimentConfig):
    """Settings of SBN variational learning (see the module docstring).

    Attributes:
        architecture: ``"linear"`` (200-200-784), ``"deep"`` (200-200-200-200-784) or
            ``"nonlinear"`` (200-200-784, two tanh layers inside each connection).
        units: Bernoulli units per stochastic layer (paper: 200).
        hidden: tanh units of the layers inside a nonlinear connection.
        optimizer: ``"rmsprop"`` (the paper's), ``"adam"`` or ``"sgd"``.
        weight_decay: L2 weight decay of the optimizer (paper: 1e-3).
        valid_samples: importance samples of the validation bound (``None``: ``eval_samples``).
        variance_every: run the gradient-variance study every this many epochs (``None``: never);
            a multiple of ``eval_every``.
        variance_estimators: the estimators whose gradient variance is measured.
        variance_repeats: independent gradient estimates per minibatch.
        variance_batches: fixed training minibatches the variance is averaged over.
        variance_warmup: steps fitting each estimator's learned baseline to the frozen model.
    """

    estimator: str = "local-reparam"
    epochs: int = 100
    batch_size: int = 100
    lr: float = 3e-4
    dataset: str = "mnist"
    eval_samples: int = 1000
    architecture: Literal["linear", "deep", "nonlinear"] = "linear"
    units: int = 200
    hidden: int = 200
    optimizer: Literal["adam", "sgd", "rmsprop"] = "rmsprop"
    weight_decay: float = 1e-3
    valid_samples: int | None = 100
    variance_every: int | None = None
    variance_estimators: tuple[str, ...] = VARIANCE_ESTIMATORS
    variance_repeats: int = 100
    variance_batches: int = 2
    variance_warmup: int = 100

    def validate(self) -> None:
        """Check the shared settings, then these (see :meth:`ExperimentConfig.validate`).

        Example:
            >>> SBNConfig(variance_every=3, eval_every=2).validate()
            Traceback (most recent call last):
            ...
            latentgrad.lab.config.InvalidConfigValue: variance_every must be a multiple of eval_every (2), got 3
        """
        super().validate()
        require_choice(self, "architecture", ARCHITECTURES)
        require_choice(self, "optimizer", OPTIMIZERS)
        require_positive_ints(self, "units", "hidden", "variance_repeats", "variance_batches")
        warmup = self.variance_warmup
        ok = isinstance(warmup, int) and not isinstance(warmup, bool) and warmup >= 0
        require(ok, "variance_warmup", "an int >= 0", warmup)
        require(self.variance_repeats >= 2, "variance_repeats", "at least 2", self.variance_repeats)
        require_nonnegative(self, "weight_decay")
        require_positive_ints(self, "valid_samples", "variance_every", optional=True)
        every = self.variance_every
        if every is not None:
            require(
                every % self.eval_every == 0,
                "variance_every",
                f"a multiple of eval_every ({self.eval_every})",
                every,
            )
        for name in self.variance_estimators:
            require(
                name in ESTIMATORS,
                "variance_estimators",
                "names among " + ", ".join(ESTIMATORS),
                self.variance_estimators,
            )


def _connection(n_in: int, n_out: int, hidden: int | None) -> nn.Module:
    return nn.Linear(n_in, n_out) if hidden is None else mlp([n_in, hidden, hidden, n_out], "tanh")


def bernoulli_log_lik(logits: Tensor, z: Tensor) -> Tensor:
    """``sum_d z_d a_d - softplus(a_d)``: ``log Bernoulli(z; sigmoid(a))``, also for continuous ``z``.

    Example:
        >>> bernoulli_log_lik(torch.zeros(3), torch.ones(3))
        tensor(-2.0794)
    """
    return (z * logits - F.softplus(logits)).sum(-1)


def _bernoulli_layer(connection: nn.Module, z: Tensor) -> Bernoulli:
    return Bernoulli(logits=connection(z))


class SigmoidBeliefNet(nn.Module):
    """A generative SBN and its mirrored inference network.

    Args:
        input_dim: pixels ``D``.
        layers: stochastic layers ``L``.
        units: Bernoulli units per layer.
        hidden: tanh units inside each connection (``None``: linear connections).

    Shape:
        ``x``: ``(B, D)``; ``zs[l]``: ``S + (B, units)`` with the same leading ``S`` for all
        layers; :meth:`loss`: ``S + (B,)``.

    Example:
        >>> net = SigmoidBeliefNet(6, layers=2, units=3)
        >>> x = torch.zeros(4, 6)
        >>> zs = net.sample_posterior(x, 5)
        >>> [z.shape for z in zs], net.loss(x, zs).shape
        ([torch.Size([5, 4, 3]), torch.Size([5, 4, 3])], torch.Size([5, 4]))
    """

    def __init__(self, input_dim: int, layers: int, units: int, hidden: int | None = None) -> None:
        super().__init__()
        self.layers = layers
        self.encoders = nn.ModuleList(
            [_connection(input_dim, units, hidden)]
            + [_connection(units, units, hidden) for _ in range(layers - 1)]
        )
        self.prior_logits = nn.Parameter(torch.zeros(units))
        self.decoders = nn.ModuleList(
            [_connection(units, units, hidden) for _ in range(layers - 1)]
        )
        self.pixels = _connection(units, input_dim, hidden)

    def posterior(self, x: Tensor) -> Bernoulli:
        """``q(z_1 | x)``, batch shape ``x.shape[:-1]``."""
        return Bernoulli(logits=self.encoders[0](x))

    def conditionals(self) -> list[Callable[[Tensor], Bernoulli]]:
        """``z_l -> q(z_{l+1} | z_l)`` for ``l = 1..L-1``."""
        return [functools.partial(_bernoulli_layer, enc) for enc in self.encoders[1:]]

    def sample_posterior(self, x: Tensor, num_samples: int) -> list[Tensor]:
        """Ancestral samples ``[z_1, ..., z_L]`` of ``q(z | x)``, each ``(S, B, units)``."""
        zs = [self.posterior(x).sample((num_samples,))]
        for cond in self.conditionals():
            zs.append(cond(zs[-1]).sample())
        return zs

    def log_joint(self, x: Tensor, zs: Sequence[Tensor]) -> Tensor:
        """``log p(x, z)``; ``x`` broadcasts over the leading dims of ``zs``."""
        top = zs[-1]
        total = bernoulli_log_lik(self.prior_logits.expand_as(top), top)
        for i in range(self.layers - 1):
            total = total + bernoulli_log_lik(self.decoders[i](zs[i + 1]), zs[i])
        logits = self.pixels(zs[0])
        return total + bernoulli_log_lik(logits, x.expand_as(logits))

    def log_posterior(self, x: Tensor, zs: Sequence[Tensor], detach: bool = False) -> Tensor:
        """``log q(z | x)``; with ``detach``, the inference parameters are constants (the
        samples are not: MuProp differentiates the loss at the mean-field point)."""

        def apply(module: nn.Module, inp: Tensor) -> Tensor:
            if not detach:
                return module(inp)
            params = {k: v.detach() for k, v in module.named_parameters()}
            return functional_call(module, params, (inp,))

        first = apply(self.encoders[0], x)
        total = bernoulli_log_lik(first.expand_as(zs[0]), zs[0])
        for i in range(1, self.layers):
            total = total + bernoulli_log_lik(apply(self.encoders[i], zs[i - 1]), zs[i])
        return total

    def loss(self, x: Tensor, zs: Sequence[Tensor]) -> Tensor:
        """``f(z) = log q(z | x) - log p(x, z)`` with the inference parameters detached."""
        return self.log_posterior(x, zs, detach=True) - self.log_joint(x, zs)

    def inference_layers(self) -> dict[str, list[nn.Parameter]]:
        """The inference network's parameters by layer (``"layer1"``, ...)."""
        return {f"layer{i + 1}": list(enc.parameters()) for i, enc in enumerate(self.encoders)}


@torch.no_grad()
def bounds(
    net: SigmoidBeliefNet, x: Tensor, num_samples: int, chunk: int = EVAL_CHUNK
) -> tuple[Tensor, Tensor]:
    """Per example: ``-ELBO`` (mean of ``f`` over the samples) and the ``S``-sample bound
    ``-log (1/S) sum_s exp(-f(z_s))``, both float64, ``z_s ~ q(z | x)`` (global RNG).

    Example:
        >>> net = SigmoidBeliefNet(6, layers=2, units=3)
        >>> nelbo, nll = bounds(net, torch.ones(4, 6), 50)
        >>> bool((nll <= nelbo + 1e-9).all())
        True
    """
    examples, samples = chunk_sizes(num_samples, chunk)
    nelbo, nll = [], []
    for xs in x.split(examples):
        neg = []
        for start in range(0, num_samples, samples):
            zs = net.sample_posterior(xs, min(samples, num_samples - start))
            neg.append(-net.loss(xs, zs).double())
        log_w = torch.cat(neg)
        nelbo.append(-log_w.mean(0))
        nll.append(-(log_w.logsumexp(0) - math.log(num_samples)))
    return torch.cat(nelbo), torch.cat(nll)


class SBNTrainable:
    """The SBN, its per-layer estimators (:class:`Chain`) and optimizer, for the runner.

    Args:
        config: the settings.
        chosen: the estimator the runner resolved (copied once per layer).
        data: splits of shape ``(N, D)`` in [0, 1], binarized dynamically when not binary.

    The variance study builds its estimators with ``chosen.others``.
    """

    def __init__(self, config: SBNConfig, chosen: ResolvedEstimator, data: DataSplitsLike) -> None:
        config.validate()
        self.config = config
        self.images = BinaryImages(
            data, config.batch_size, config.max_steps_per_epoch, config.max_eval_examples
        )
        layers, nonlinear = ARCHITECTURES[config.architecture]
        hidden = config.hidden if nonlinear else None
        self.net = SigmoidBeliefNet(self.images.dim, layers, config.units, hidden)
        self.estimator = Chain(chosen.estimator, layers)
        self.modules = nn.ModuleDict({"model": self.net, "estimator": self.estimator})
        self.optimizer = make_optimizer(
            config.optimizer, self.modules.parameters(), config.lr, config.weight_decay
        )
        self._make_estimator = chosen.others
        self._epoch = 0

    def train_batches(self, epoch: int) -> Iterator[Tensor]:
        """Shuffled minibatches of the training split (``epoch`` dates the variance study)."""
        self._epoch = epoch
        return self.images.train_batches()

    def estimate(self, chain: Chain, x: Tensor) -> Estimate:
        """``chain``'s estimate of the negative ELBO on binary ``x`` (batch shape ``(B,)``)."""
        return chain(
            self.net.posterior(x),
            self.net.conditionals(),
            lambda zs: self.net.loss(x, zs),
            context=x,
        )

    def train_step(self, batch: Tensor) -> Mapping[str, float]:
        """One step on the negative ELBO; reports ``loss`` (``-ELBO``) and ``loss_evals``."""
        x = self.images.binarize(batch)
        self.modules.train()
        self.optimizer.zero_grad(set_to_none=True)
        out = self.estimate(self.estimator, x)
        out.surrogate.mean().backward()
        self.optimizer.step()
        self.estimator.step()
        return {"loss": float(out.value.mean()), "loss_evals": float(out.loss_evals)}

    def evaluate(self, split: str) -> Mapping[str, float]:
        """``nelbo`` and ``nll`` (the importance-sampled bound) in nats; on ``"valid"``, also
        the gradient-variance study when it is due (see the module docstring)."""
        x = self.images.eval_data(split)
        samples = eval_sample_count(split, self.config.eval_samples, self.config.valid_samples)
        nelbo, nll = bounds(self.net, x, samples)
        metrics = {"nelbo": float(nelbo.mean()), "nll": float(nll.mean())}
        every = self.config.variance_every
        if split == "valid" and every is not None and self._epoch % every == 0:
            metrics.update(self.variance_study())
        return metrics

    def variance_study(self) -> dict[str, float]:
        """``gradvar/NAME/LAYER`` (mean per-parameter variance; ``LAYER`` is ``all`` too),
        ``evals/NAME`` (loss evaluations per example) and ``gradvar_x_evals/NAME`` (the variance
        over all layers times the evaluations: the variance at equal cost) for every estimator of
        ``config.variance_estimators``."""
        if self._make_estimator is None:
            raise RuntimeError(
                "the variance study builds estimators by name: chosen.others must be set "
                "(the runner's ResolvedEstimator has it)"
            )
        config = self.config
        generator = torch.Generator().manual_seed(config.seed + 7919)
        train = self.images.data.train
        picks = torch.randperm(train.shape[0], generator=generator)
        size = config.batch_size
        batches = [
            self.images.binarize(train[picks[i * size : (i + 1) * size]], generator)
            for i in range(config.variance_batches)
        ]
        out: dict[str, float] = {}
        for name in config.variance_estimators:
            chain = Chain(self._make_estimator(name), self.net.layers)
            variances, evals = gradient_variance(
                self, chain, batches, config.variance_repeats, config.variance_warmup
            )
            for layer, value in variances.items():
                out[f"gradvar/{name}/{layer}"] = value
            out[f"evals/{name}"] = float(evals)
            out[f"gradvar_x_evals/{name}"] = variances["all"] * evals
        return out


def gradient_variance(
    trainable: SBNTrainable,
    chain: Chain,
    batches: Sequence[Tensor],
    repeats: int,
    warmup: int,
) -> tuple[dict[str, float], int]:
    """Mean per-parameter variance of ``chain``'s inference-network gradient, by layer.

    The model is frozen. ``chain``'s learned state (baselines; estimators without parameters or
    buffers skip this) is first fitted for ``warmup`` steps on ``batches`` in turn (Adam on the estimator's parameters only, running statistics
    updated); then, in eval mode, each batch gets ``repeats`` independent estimates of the
    gradient of the minibatch mean of the surrogate, whose per-parameter sample variance is
    averaged over each layer's parameters and over the batches.

    Returns:
        ``({"layer1": v, ..., "all": v}, loss evaluations per example)``.
    """
    net = trainable.net
    layers = net.inference_layers()
    params = [p for group in layers.values() for p in group]
    est_params = list(chain.parameters())
    chain.train()
    if warmup and (est_params or any(True for _ in chain.buffers())):
        opt = torch.optim.Adam(est_params, lr=1e-3) if est_params else None
        for step in range(warmup):
            x = batches[step % len(batches)]
            surrogate = trainable.estimate(chain, x).surrogate
            if opt is not None:
                opt.zero_grad(set_to_none=True)
                grads = torch.autograd.grad(surrogate.mean(), est_params, allow_unused=True)
                for p, g in zip(est_params, grads, strict=True):
                    p.grad = g
                opt.step()
    chain.eval()
    totals = {name: 0.0 for name in layers}
    totals["all"] = 0.0
    evals = 0
    for x in batches:
        sums = [torch.zeros_like(p, dtype=torch.float64) for p in params]
        squares = [torch.zeros_like(p, dtype=torch.float64) for p in params]
        for _ in range(repeats):
            out = trainable.estimate(chain, x)
            surrogate, evals = out.surrogate, out.loss_evals
            grads = torch.autograd.grad(surrogate.mean(), params, allow_unused=True)
            for i, g in enumerate(grads):
                if g is not None:
                    g = g.double()
                    sums[i] += g
                    squares[i] += g * g
        per_param = [
            ((sq - s * s / repeats) / (repeats - 1)).clamp_min(0)
            for s, sq in zip(sums, squares, strict=True)
        ]
        start = 0
        flat_all = []
        for name, group in layers.items():
            chunk = torch.cat([v.flatten() for v in per_param[start : start + len(group)]])
            totals[name] += float(chunk.mean()) / len(batches)
            flat_all.append(chunk)
            start += len(group)
        totals["all"] += float(torch.cat(flat_all).mean()) / len(batches)
    return totals, evals


def variance_rows(history: Sequence[Mapping[str, object]]) -> list[dict[str, object]]:
    """Rows ``(epoch, step, estimator, layer, variance, loss_evals, variance_x_evals)`` from a
    run's metrics records (``metrics.jsonl``)."""
    rows: list[dict[str, object]] = []
    for record in history:
        valid = record.get("valid")
        if not isinstance(valid, Mapping):
            continue
        for key, value in valid.items():
            if not key.startswith("gradvar/"):
                continue
            _, name, layer = key.split("/", 2)
            evals = float(valid[f"evals/{name}"])
            rows.append(
                {
                    "epoch": record["epoch"],
                    "step": record["step"],
                    "estimator": name,
                    "layer": layer,
                    "variance": float(value),
                    "loss_evals": evals,
                    "variance_x_evals": float(value) * evals,
                }
            )
    return rows


def write_artifacts(run_dir: Path, figures: bool = True) -> list[Path]:
    """``variance.csv`` (and ``variance.png`` with ``figures``) of a finished run whose
    validation records hold a variance study; nothing otherwise."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    rows = variance_rows([json.loads(line) for line in lines if line.strip()])
    if not rows:
        return []
    path = run_dir / "variance.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    written = [path]
    if figures:
        written.append(plot_variance(rows, run_dir / "variance.png"))
    return written


def plot_variance(rows: Sequence[Mapping[str, object]], path: Path) -> Path:
    """Variance (log scale) against training steps, one line per estimator, one panel per layer."""
    from latentgrad.lab.plots import new_figure

    layers = sorted({str(r["layer"]) for r in rows}, key=lambda s: (s == "all", s))
    names = list(dict.fromkeys(str(r["estimator"]) for r in rows))
    fig = new_figure((4.0 * len(layers), 3.5))
    axes = fig.subplots(1, len(layers), squeeze=False)[0]
    for ax, layer in zip(axes, layers, strict=True):
        for name in names:
            pts = [
                (r["step"], r["variance"])
                for r in rows
                if r["layer"] == layer and r["estimator"] == name
            ]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o", label=name)
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_title(f"inference {layer}")
    axes[0].set_ylabel("mean per-parameter gradient variance")
    axes[-1].legend(fontsize="small")
    fig.savefig(path, dpi=100)
    return path


def build(config: SBNConfig, chosen: ResolvedEstimator) -> SBNTrainable:
    """Load ``config.dataset`` and build the SBN around ``chosen``'s estimator."""
    from latentgrad.data import load_dataset

    data = load_dataset(config.dataset, data_dir=config.data)
    return SBNTrainable(config, chosen, data)


EXPERIMENT = Experiment(
    name="sbn",
    description=(
        "variational learning of sigmoid belief nets on MNIST (linear, deep, nonlinear), "
        "with the gradient-variance study (Tokui & Sato 2017)"
    ),
    config_class=SBNConfig,
    build=build,
    primary_metric="nll",
    estimators=ESTIMATORS,
    artifacts=write_artifacts,
)
