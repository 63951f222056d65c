"""The experiments the command line knows, by name (imported lazily: they need the extras)."""

from __future__ import annotations

from latentgrad.experiments.base import Experiment


def all_experiments() -> dict[str, Experiment]:
    """Registered experiments by CLI name."""
    from latentgrad.experiments.vae import EXPERIMENT as VAE

    return {e.name: e for e in (VAE,)}
