"""Train an experiment into a run directory, resumably and reproducibly.

:func:`run` ties the pieces together: it resolves ``config.estimator`` once
(:func:`~latentgrad.lab.registry.estimator_entry`) and its options ``config.estimator_options``
(:func:`~latentgrad.lab.registry.resolve_config_options`: the given ones checked, the others
filled in with the experiment's preset or the estimator's defaults, all of them recorded in
``config.json``), prepares the run directory
(:class:`~latentgrad.lab.rundir.RunDirectory`: config check, resume or a fresh start), seeds
the global RNGs with ``config.seed`` and builds the experiment with the fresh estimator, trains
(:class:`~latentgrad.lab.loop.TrainingLoop`, a checkpoint after every epoch and every
``checkpoint_seconds``), tests, and writes the results and plots.

Randomness is a pure function of ``config.seed`` (see :mod:`latentgrad.lab.loop`), so a resumed
run gives exactly the results of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

from latentgrad.lab.experiment import Experiment, ExperimentConfig, Trainable
from latentgrad.lab.loop import TrainingLoop, TrainState, evaluate, say, summarize
from latentgrad.lab.plots import MissingExtraWarning, matplotlib_available, plot_run
from latentgrad.lab.randomness import derived_seed, seed_all
from latentgrad.lab.registry import estimator_entry, options_to_dict, resolve_config_options
from latentgrad.lab.rundir import RunConfigMismatch, RunDirectory, default_run_dir

__all__ = ["RunConfigMismatch", "default_run_dir", "run"]


def run(
    experiment: Experiment,
    config: ExperimentConfig,
    run_dir: str | Path | None = None,
    *,
    resume: bool = True,
    progress: bool = True,
    checkpoint_seconds: float | None = 300.0,
    plots: bool = True,
) -> dict[str, Any]:
    """Train and evaluate ``experiment`` with ``config``, writing (or resuming) ``run_dir``.

    Args:
        experiment: the experiment (its ``build`` makes the trainable).
        config: an instance of ``experiment.config_class``; its ``estimator_options`` may
            omit options (they take the estimator's defaults) and the run records them all.
        run_dir: the run directory (default: :func:`~latentgrad.lab.rundir.default_run_dir`,
            relative to the current directory).
        resume: continue the run in ``run_dir`` from its checkpoint (and return the results of
            a finished run without training); ``False`` removes its files and starts again.
        progress: show a progress bar per epoch and a line per epoch on stderr.
        checkpoint_seconds: inside an epoch, also checkpoint when this many seconds have
            passed since the last checkpoint (``0``: after every step; ``None``: only at the
            end of epochs). A kill then loses at most this much work.
        plots: write ``loss.png`` and ``valid.png`` after the results (without matplotlib: a
            :class:`~latentgrad.lab.plots.MissingExtraWarning` and no figures).

    Returns:
        The contents of ``results.json``: ``"test"`` (the metrics of ``evaluate("test")``
        after the last epoch), ``"valid_final"``/``"valid_best"`` (with their epochs; best by
        ``experiment.primary_metric``, lower is better), ``"train_final"``,
        ``"time_per_epoch"`` (seconds of training, mean over epochs), ``"loss_evals_per_step"``,
        ``"total_steps"``, ``"epochs"``, ``"estimator"``, ``"seed"``, ``"experiment"``,
        ``"primary_metric"``.

    Raises:
        RunConfigMismatch: if ``run_dir`` holds a run with another config (and ``resume``).
        UnknownEstimator: (a ``ValueError``) if the experiment does not support
            ``config.estimator``.
        UnknownOption, ConfigError: (both ``ValueError``) for an option the estimator does not
            have, or of the wrong type (:func:`~latentgrad.lab.registry.resolve_options`).
        InvalidConfigValue: (a ``ValueError``) for a config value out of range
            (``config.validate()``).
        RunFileError: (a ``ValueError``) if ``run_dir`` cannot be written, or a file of the run
            there (checkpoint, results) cannot be read.

    A run rejected before training (a bad setting, missing data, an estimator that does not
    fit) writes no file; a run that fails before its first checkpoint removes the files it
    wrote, so a corrected command starts afresh.
    """
    _check_config(experiment, config)
    entry = estimator_entry(config.estimator, experiment)  # the one place the name is resolved
    options = resolve_config_options(config)
    config = dataclasses.replace(config, estimator_options=options_to_dict(options))
    if checkpoint_seconds is not None and checkpoint_seconds < 0:
        raise ValueError(f"checkpoint_seconds must be >= 0 or None, got {checkpoint_seconds}")
    directory = RunDirectory(
        run_dir if run_dir is not None else default_run_dir(experiment, config)
    )
    created = not directory.path.exists()
    directory.create()
    resuming = resume and directory.has_config()
    if resuming:
        directory.check_config(experiment, config)
        finished = directory.read_results()
        if finished is not None:
            say(
                f"{directory.path}: the run is complete; returning its results (--no-resume reruns it)"
            )
            return finished
    had_checkpoint = resuming and directory.checkpoint.exists()
    try:
        # Building (which loads the data and checks the settings against them) comes before
        # any file is written: a rejected run leaves no config.json to block the corrected one.
        seed_all(config.seed)
        trainable = experiment.build(config, entry.resolve(config.estimator, options))
        if not resuming:
            directory.clear()
        results = _train(
            experiment, config, directory, trainable, had_checkpoint, progress, checkpoint_seconds
        )
    except BaseException:
        if not had_checkpoint and not directory.checkpoint.exists():
            _discard(directory, created)  # nothing to resume: leave no trace of this attempt
        raise
    if plots:
        _plot(directory.path)
    if experiment.artifacts is not None:
        experiment.artifacts(directory.path, plots and matplotlib_available())
    return results


def _train(
    experiment: Experiment,
    config: ExperimentConfig,
    directory: RunDirectory,
    trainable: Trainable,
    from_checkpoint: bool,
    progress: bool,
    checkpoint_seconds: float | None,
) -> dict[str, Any]:
    directory.write_config(experiment, config)
    state = TrainState()
    if from_checkpoint:
        state = directory.load_checkpoint(trainable)
        where = f"epoch {state.epoch + 1}" + (
            f", step {state.partial['epoch_step']} of it" if state.partial else ""
        )
        say(f"{directory.path}: resuming after {state.step} steps, at {where}")
    directory.write_env(config, state)
    directory.write_metrics(state.history)

    loop = TrainingLoop(
        config,
        trainable,
        state,
        save=lambda: directory.save_checkpoint(trainable, state),
        progress=progress,
        checkpoint_seconds=checkpoint_seconds,
    )
    for epoch in range(state.epoch + 1, config.epochs + 1):
        loop.train_epoch(epoch)
        directory.write_metrics(state.history)  # whole and atomic: a kill leaves no half line
        loop.save()

    test = evaluate(trainable, "test", derived_seed(config.seed, "test"))
    results = summarize(experiment, config, state, test)
    directory.write_results(results)
    if progress:
        shown = ", ".join(f"{k} {v:.6g}" for k, v in test.items())
        say(f"{directory.path}: test {shown}")
    return results


def _discard(directory: RunDirectory, created: bool) -> None:
    """Remove what a run that failed before its first checkpoint wrote."""
    if directory.has_config() or created:
        directory.clear()
    if created:
        try:
            directory.path.rmdir()
        except OSError:  # not empty: someone else's files are there too
            pass


def _plot(run_dir: Path) -> None:
    """The figures of a finished run; without matplotlib, a warning instead."""
    if not matplotlib_available():
        warnings.warn(
            f"matplotlib is not installed, so {run_dir} gets no loss.png or valid.png (the "
            "results are written); pip install 'latentgrad[experiments]' for the figures",
            MissingExtraWarning,
            stacklevel=3,
        )
        return
    plot_run(run_dir)


def _check_config(experiment: Experiment, config: ExperimentConfig) -> None:
    if not isinstance(config, experiment.config_class):
        raise TypeError(
            f"config must be a {experiment.config_class.__name__} for experiment "
            f"{experiment.name!r}, got {type(config).__name__}"
        )
    config.validate()
