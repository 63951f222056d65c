"""The machinery every experiment shares: configs, estimator names, runs, reports.

The experiments themselves are the modules of :mod:`latentgrad.experiments`, one per paper
experiment; this package runs them:

* :mod:`~latentgrad.lab.experiment`: the contract (``ExperimentConfig``, ``Experiment``,
  ``Trainable``, ``ResolvedEstimator``);
* :mod:`~latentgrad.lab.catalog`: finds the experiment modules;
* :mod:`~latentgrad.lab.config`: typed configs on the command line and in JSON files;
* :mod:`~latentgrad.lab.registry`: estimator names mapped to constructors;
* :mod:`~latentgrad.lab.runner`: ``run``, training an experiment into a run directory;
* :mod:`~latentgrad.lab.loop`, :mod:`~latentgrad.lab.rundir`, :mod:`~latentgrad.lab.randomness`,
  :mod:`~latentgrad.lab.plots`: the training loop, the run directory (files, checkpoints,
  resume), seeds and RNG state, figures;
* :mod:`~latentgrad.lab.runs`: run directories and results records read as one kind of run;
* :mod:`~latentgrad.lab.report`: comparison tables of runs (``latentgrad report``);
* :mod:`~latentgrad.lab.records`: writes results records (``latentgrad record``) and the
  tables generated from them in the README and docs;
* :mod:`~latentgrad.lab.compare`: bias, variance and cost on exact problems
  (``latentgrad compare``).

Example:
    >>> from latentgrad.lab import ExperimentConfig, all_experiments
    >>> ExperimentConfig().estimator, "vae" in all_experiments()
    ('sf-loo', True)
"""

from latentgrad.lab.catalog import all_experiments
from latentgrad.lab.experiment import (
    Experiment,
    ExperimentConfig,
    LatentFamily,
    ResolvedEstimator,
    Trainable,
)
from latentgrad.lab.registry import ESTIMATORS, EstimatorEntry, UnknownEstimator
from latentgrad.lab.rundir import RunConfigMismatch, default_run_dir
from latentgrad.lab.runner import run

__all__ = [
    "ESTIMATORS",
    "EstimatorEntry",
    "Experiment",
    "ExperimentConfig",
    "LatentFamily",
    "ResolvedEstimator",
    "RunConfigMismatch",
    "Trainable",
    "UnknownEstimator",
    "all_experiments",
    "default_run_dir",
    "run",
]
