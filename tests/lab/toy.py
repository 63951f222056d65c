"""A tiny experiment for the runner, report and CLI tests: Bernoulli latent regression.

``x -> logits -> z ~ Bernoulli(3 bits) -> y_hat = decoder(z)``, squared error against targets
made by a fixed random teacher; every registered estimator applies. Loaded by the tests with
importlib (the test folders are not packages). Like every experiment, it gets its estimator
built (``chosen``) and never sees the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import latentgrad as lg
from latentgrad.lab import Experiment, ExperimentConfig, ResolvedEstimator
from latentgrad.schedules import Scheduled


@dataclass
class ToyConfig(ExperimentConfig):
    """Toy settings.

    Attributes:
        latent: number of latent bits.
        hidden: widths of the encoder's hidden layers.
        noise: target noise scale (``None``: noiseless).
        center: center the targets.
    """

    estimator: str = "sf-loo"
    epochs: int = 3
    batch_size: int = 16
    lr: float = 0.05
    eval_samples: int = 4
    latent: int = 3
    hidden: tuple[int, ...] = (8,)
    noise: float | None = 0.1
    center: bool = True


class ToyTrainable:
    """The toy model, data and steps."""

    def __init__(self, config: ToyConfig, chosen: ResolvedEstimator) -> None:
        self.config = config
        gen = torch.Generator().manual_seed(1234)  # the data set is fixed, not seeded
        x = torch.randn(112, 4, generator=gen)
        teacher = torch.randn(4, 1, generator=gen)
        y = (x @ teacher).squeeze(-1).tanh() * 2
        if config.noise is not None:
            y = y + config.noise * torch.randn(y.shape, generator=gen)
        if config.center:
            y = y - y.mean()
        self.splits = {"train": (x[:64], y[:64]), "valid": (x[64:88], y[64:88])}
        self.splits["test"] = (x[88:], y[88:])
        layers: list[nn.Module] = []
        width = 4
        for h in config.hidden:
            layers += [nn.Linear(width, h), nn.Tanh()]
            width = h
        layers.append(nn.Linear(width, config.latent))
        self.estimator = chosen.estimator
        self.modules = nn.ModuleDict(
            {
                "encoder": nn.Sequential(*layers),
                "decoder": nn.Linear(config.latent, 1),
                "estimator": self.estimator,
            }
        )
        self.optimizer = torch.optim.Adam(self.modules.parameters(), lr=config.lr)

    def _loss_fn(self, y: Tensor) -> Callable[[Tensor], Tensor]:
        decoder = self.modules["decoder"]
        return lambda z: (decoder(z).squeeze(-1) - y) ** 2

    def train_batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        x, y = self.splits["train"]
        order = torch.randperm(len(x))
        for i in range(0, len(x), self.config.batch_size):
            idx = order[i : i + self.config.batch_size]
            yield x[idx], y[idx]

    def train_step(self, batch: tuple[Tensor, Tensor]) -> Mapping[str, float]:
        x, y = batch
        self.optimizer.zero_grad()
        q = lg.Bernoulli(logits=self.modules["encoder"](x))
        out = self.estimator(q, self._loss_fn(y), context=x)
        out.surrogate.mean().backward()
        self.optimizer.step()
        if isinstance(self.estimator, Scheduled):
            self.estimator.step()
        return {"loss": float(out.value.mean()), "loss_evals": out.loss_evals}

    @torch.no_grad()
    def evaluate(self, split: str) -> Mapping[str, float]:
        x, y = self.splits[split]
        q = lg.Bernoulli(logits=self.modules["encoder"](x))
        z = q.sample((self.config.eval_samples,))
        sampled = self._loss_fn(y)(z).mean()
        exact = lg.Marginalize()(q, self._loss_fn(y)).value.mean()
        return {"mse": float(exact), "sampled_mse": float(sampled)}


EXPERIMENT = Experiment(
    name="toy",
    description="Bernoulli latent regression (3 bits), for tests",
    config_class=ToyConfig,
    build=ToyTrainable,
    primary_metric="mse",
)
