"""Bits per dimension of trained sparse bit-vector VAEs by three estimates of ``log p(x)``, on
the same weights and test images: ours, the exact sum over the support, and Correia et al.'s.

- ``ours``: importance sampling with the proposal ``(1 - eps) q + eps uniform`` (1024 draws;
  :func:`latentgrad.experiments.bitvae.importance_sampled_bound`), a lower bound of ``log p(x)``
  in expectation.
- ``support sum``: ``log sum_{z in supp q} p(x, z)``, exact and deterministic, a lower bound of
  ``log p(x)`` that misses the bit-vectors off the support (``Bound.log_px_support``, the
  runs' ``support_bpd``).
- ``uniform IS``: importance sampling with the uniform proposal alone (1024 draws), unbiased
  for ``p(x)``.
- ``authors'``: the support sum plus the uniform-IS term, combined by ``logsumexp``, as Correia
  et al.'s code estimates ``log p(x)`` for the sparse families. The uniform term also counts the
  support, so in expectation it estimates ``p(x) + sum_{supp} p(x, z)``: at most ``log 2`` nats
  too high per image, ``1 / P`` bits per dimension (0.0013 for 784 pixels).

Each run directory is one of ``latentgrad run bitvae`` with a sparse estimator (its
``config.json`` and ``checkpoint.pt``); the images are the run's test subset.

Usage::

    python benchmarks/compare_bitvae_bounds.py runs/bitvae/sparsemap-seed0 [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from pathlib import Path

import torch
from torch import Tensor

from latentgrad.experiments.bitvae import (
    BitVAEConfig,
    BitVAETrainable,
    BitVectorVAE,
    build,
    importance_sampled_bound,
)
from latentgrad.lab import ESTIMATORS
from latentgrad.lab.config import resolve_config
from latentgrad.lab.registry import resolve_options
from latentgrad.lab.rundir import RunDirectory


def trained(run_dir: Path, data_dir: str | None) -> BitVAETrainable:
    """The run's model with its last checkpoint's weights (the run's config as ``--config``
    reads it, the checkpoint as a resumed run loads it)."""
    config = resolve_config(BitVAEConfig, file=run_dir / "config.json")
    config = dataclasses.replace(config, data=data_dir)
    name = config.estimator
    chosen = ESTIMATORS[name].resolve(name, resolve_options(name, config.estimator_options))
    t = build(config, chosen)
    RunDirectory(run_dir).load_checkpoint(t)
    t.modules.eval()
    return t


@torch.no_grad()
def uniform_log_px(
    model: BitVectorVAE, x: Tensor, samples: int, images: int = 8, draws: int = 16
) -> Tensor:
    """``log (1/S) sum_s p(x | z_s)``, ``z_s`` uniform over ``{0, 1}^D``: the log of an
    unbiased estimate of ``p(x)`` (the weight ``p(x, z) / 2^-D`` is ``p(x | z)``), ``(B,)``.
    The decoder sees ``draws`` draws of ``images`` images at a time."""
    out = []
    for xs in x.split(images):
        z = torch.randint(0, 2, (samples, xs.shape[0], model.num_bits)).float()
        ll = torch.cat([model.log_likelihood(xs)(zc).double() for zc in z.split(draws)])
        out.append(ll.logsumexp(0) - math.log(samples))
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--data", default=os.environ.get("LATENTGRAD_DATA"))
    parser.add_argument("--samples", type=int, default=1024, help="draws per image, each estimate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("bits per dimension on each run's test images: ours, support sum, uniform IS, authors'")
    for run_dir in args.run_dirs:
        t = trained(run_dir, args.data)
        if not t.model.sparse:
            print(f"{run_dir}: not a sparse family; skipped")
            continue
        x = t.images.eval_data("test")
        torch.manual_seed(args.seed)
        with torch.no_grad():
            bound = importance_sampled_bound(t.model, x, args.samples, t.config.uniform_mix)
        uniform = uniform_log_px(t.model, x, args.samples)
        authors = torch.logaddexp(bound.log_px_support, uniform)
        per_dim = x.shape[1] * math.log(2.0)
        figures = [
            float(-estimate.mean()) / per_dim
            for estimate in (bound.log_px, bound.log_px_support, uniform, authors)
        ]
        c = t.config
        print(
            f"{run_dir} ({c.estimator}, D = {c.num_bits}, {c.bit_encoding}, {len(x)} images): "
            + ", ".join(f"{v:.4f}" for v in figures)
        )


if __name__ == "__main__":
    main()
