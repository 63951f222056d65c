"""The training loop: epochs of optimizer steps, evaluations, and the run's final summary.

:class:`TrainingLoop` drives a :class:`~latentgrad.lab.experiment.Trainable` one epoch at a time
and keeps its progress in a :class:`TrainState` (what a checkpoint restores besides the modules
and the optimizer). Each epoch reseeds the global RNGs from ``(seed, "train", epoch)`` and every
evaluation runs on its own stream (:func:`evaluate`), so neither resuming nor how often or how
much is evaluated changes the training trajectory. Inside an epoch the loop calls ``save`` every
``checkpoint_seconds``, after recording in ``state.partial`` where it is; resuming replays the
epoch's batches up to that step and restores the RNG state saved there.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping, Sized
from dataclasses import dataclass, field
from typing import Any

from latentgrad.lab.experiment import Experiment, ExperimentConfig, Trainable
from latentgrad.lab.randomness import derived_seed, forked_rng, seed_all, set_rng_state


@dataclass
class TrainState:
    """The progress of a run, as checkpoints store it.

    Attributes:
        epoch: completed epochs.
        step: optimizer steps so far.
        history: one record per completed epoch (the lines of ``metrics.jsonl``).
        partial: the epoch in progress at the last in-epoch checkpoint (``None``: none):
            ``epoch``, ``epoch_step``, ``sums`` of the step metrics, ``elapsed`` seconds, and
            after loading, the ``rng`` state saved with it.
    """

    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    partial: dict[str, Any] | None = None


def say(message: str) -> None:
    """A progress or status line on stderr (stdout is for results)."""
    print(message, file=sys.stderr, flush=True)


class TrainingLoop:
    """Trains ``trainable`` epoch by epoch, updating ``state``.

    Args:
        config: the run's config (seed, epochs, step cap, evaluation period).
        trainable: what the experiment built.
        state: the progress so far (restored from a checkpoint when resuming).
        save: writes a checkpoint of ``trainable`` and ``state``.
        progress: show a progress bar per epoch and a line per epoch on stderr.
        checkpoint_seconds: inside an epoch, call ``save`` when this many seconds have passed
            since the last one (``0``: after every step; ``None``: only between epochs).
    """

    def __init__(
        self,
        config: ExperimentConfig,
        trainable: Trainable,
        state: TrainState,
        *,
        save: Callable[[], None],
        progress: bool,
        checkpoint_seconds: float | None,
    ) -> None:
        self.config = config
        self.trainable = trainable
        self.state = state
        self._save = save
        self.progress = progress
        self.checkpoint_seconds = checkpoint_seconds
        self.last_save = time.monotonic()

    def save(self) -> None:
        """Checkpoint now (and restart the in-epoch checkpoint clock)."""
        self._save()
        self.last_save = time.monotonic()

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """Train epoch ``epoch`` (1-based), resuming it if ``state.partial`` is inside it.

        Returns:
            The epoch's record: ``epoch``, ``step``, ``epoch_steps``, ``time``, ``train``
            (means of the step metrics) and, on evaluation epochs, ``valid`` and
            ``valid_time``. It is also appended to ``state.history``.
        """
        config, state, trainable = self.config, self.state, self.trainable
        partial = state.partial if state.partial and state.partial["epoch"] == epoch else None
        sums: dict[str, float] = dict(partial["sums"]) if partial else {}
        done = int(partial["epoch_step"]) if partial else 0
        elapsed = float(partial["elapsed"]) if partial else 0.0
        cap = config.max_steps_per_epoch

        seed_all(derived_seed(config.seed, "train", epoch))
        trainable.modules.train()
        iterable = trainable.train_batches(epoch)
        total = len(iterable) if isinstance(iterable, Sized) else None
        if cap is not None:
            total = cap if total is None else min(total, cap)
        batches = iter(iterable)
        if partial:
            # Replaying the batches drawn before the checkpoint puts the data iterator where it
            # was; the RNG state saved at that point then continues the interrupted stream.
            for _ in range(done):
                if next(batches, _END) is _END:
                    raise RuntimeError(
                        f"cannot resume epoch {epoch} at step {done}: train_batches({epoch}) "
                        "now yields fewer batches"
                    )
            set_rng_state(partial["rng"])

        start = time.perf_counter()
        bar = _progress_bar(total, done, f"epoch {epoch}/{config.epochs}", self.progress)
        try:
            while cap is None or done < cap:
                batch = next(batches, _END)
                if batch is _END:
                    break
                metrics = scalar_metrics(trainable.train_step(batch), "train_step")
                if "loss" not in metrics or "loss_evals" not in metrics:
                    raise KeyError(
                        f"train_step must report 'loss' and 'loss_evals', got {sorted(metrics)}"
                    )
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + value
                done += 1
                state.step += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{sums['loss'] / done:.5g}", refresh=False)
                if (
                    self.checkpoint_seconds is not None
                    and time.monotonic() - self.last_save >= self.checkpoint_seconds
                ):
                    state.partial = {
                        "epoch": epoch,
                        "epoch_step": done,
                        "sums": dict(sums),
                        "elapsed": elapsed + time.perf_counter() - start,
                    }
                    self.save()
        finally:
            if bar is not None:
                bar.close()
        if done == 0:
            raise RuntimeError(f"train_batches({epoch}) yielded no batches")

        record: dict[str, Any] = {
            "epoch": epoch,
            "step": state.step,
            "epoch_steps": done,
            "time": elapsed + time.perf_counter() - start,
            "train": {k: v / done for k, v in sums.items()},
        }
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            start = time.perf_counter()
            record["valid"] = evaluate(
                trainable, "valid", derived_seed(config.seed, "valid", epoch)
            )
            record["valid_time"] = time.perf_counter() - start
        state.history.append(record)
        state.epoch = epoch
        state.partial = None
        if self.progress:
            say(_epoch_line(record, config.epochs))
        return record


_END = object()


def _epoch_line(record: Mapping[str, Any], epochs: int) -> str:
    parts = [f"epoch {record['epoch']}/{epochs}", f"loss {record['train']['loss']:.6g}"]
    parts += [f"valid {k} {v:.6g}" for k, v in record.get("valid", {}).items()]
    parts.append(f"{record['time']:.1f} s")
    return ", ".join(parts)


def _progress_bar(total: int | None, initial: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # progress bars are a nicety; the extra may be absent
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit="step", file=sys.stderr, leave=False)


def scalar_metrics(metrics: Mapping[str, Any], where: str) -> dict[str, float]:
    """``metrics`` as ``{str: float}``; ``TypeError`` naming ``where`` for anything else.

    Example:
        >>> import torch
        >>> scalar_metrics({"loss": torch.tensor(2.0), "loss_evals": 4}, "train_step")
        {'loss': 2.0, 'loss_evals': 4.0}
    """
    if not isinstance(metrics, Mapping):
        raise TypeError(f"{where} must return a mapping of scalar metrics, got {metrics!r}")
    out = {}
    for key, value in metrics.items():
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{where} returned a non-scalar metric {key!r}: {value!r}") from None
    return out


def evaluate(trainable: Trainable, split: str, seed: int) -> dict[str, float]:
    """``trainable.evaluate(split)`` on its own RNG stream seeded from ``seed``."""
    with forked_rng(seed):
        return scalar_metrics(trainable.evaluate(split), f"evaluate({split!r})")


def summarize(
    experiment: Experiment,
    config: ExperimentConfig,
    state: TrainState,
    test: dict[str, float],
) -> dict[str, Any]:
    """The contents of ``results.json`` for a run that trained to ``state`` and tested ``test``.

    Best validation is by ``experiment.primary_metric`` (lower is better; NaN never wins).
    """
    history = state.history
    evals = [r for r in history if "valid" in r]
    final = evals[-1] if evals else None
    key = experiment.primary_metric
    scored = [r for r in evals if key in r["valid"] and not math.isnan(r["valid"][key])]
    best = min(scored, key=lambda r: r["valid"][key]) if scored else final
    steps = sum(r["epoch_steps"] for r in history)
    evals_sum = sum(r["train"]["loss_evals"] * r["epoch_steps"] for r in history)
    return {
        "experiment": experiment.name,
        "estimator": config.estimator,
        "seed": config.seed,
        "primary_metric": key,
        "test": test,
        "valid_final": final["valid"] if final else None,
        "valid_final_epoch": final["epoch"] if final else None,
        "valid_best": best["valid"] if best else None,
        "valid_best_epoch": best["epoch"] if best else None,
        "train_final": history[-1]["train"] if history else None,
        "epochs": len(history),
        "total_steps": state.step,
        "loss_evals_per_step": evals_sum / steps if steps else None,
        "time_per_epoch": sum(r["time"] for r in history) / len(history) if history else None,
        "total_time": sum(r["time"] + r.get("valid_time", 0.0) for r in history),
    }
