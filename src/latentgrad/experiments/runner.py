"""Train an experiment into a run directory, resumably and reproducibly.

:func:`run` drives a :class:`~latentgrad.experiments.base.Trainable` for ``config.epochs``
epochs and writes, in ``run_dir``:

* ``config.json``: the experiment's name and the resolved config;
* ``env.json``: versions, platform, git revision, command line, start time, seed, threads (and
  one entry per resumption);
* ``metrics.jsonl``: one JSON object per epoch: the epoch's means of every metric
  ``train_step`` returned (under ``"train"``), steps, training time, and on evaluation epochs
  the validation metrics (under ``"valid"``);
* ``checkpoint.pt``: modules, optimizer, epoch, step, RNG states and the metrics history, after
  every epoch and, inside an epoch, every ``checkpoint_seconds``; written atomically;
* ``results.json``: the final test metrics, the best and final validation metrics, time per
  epoch, loss evaluations per step, steps (its presence marks a finished run);
* ``loss.png`` and ``valid.png``: training loss and validation metric against the epoch.

Randomness is a pure function of ``config.seed``: the global RNGs (torch, numpy, random) are
seeded with ``config.seed`` before ``build``, reseeded from ``(seed, epoch)`` at the start of
every epoch, and evaluation runs on its own stream (seeded from ``(seed, split, epoch)`` and
restored afterwards), so neither resuming, nor how often or how much is evaluated, changes the
training trajectory. A resumed run gives exactly the results of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from latentgrad.experiments.base import Experiment, ExperimentConfig, Trainable
from latentgrad.experiments.config import (
    ConfigError,
    config_differences,
    config_from_dict,
    config_to_dict,
)

#: The files a run directory holds (``--no-resume`` removes them before starting again).
RUN_FILES = (
    "config.json",
    "env.json",
    "metrics.jsonl",
    "checkpoint.pt",
    "results.json",
    "loss.png",
    "valid.png",
)
_CHECKPOINT_FORMAT = 1


class RunConfigMismatch(ValueError):
    """The run directory holds a run with another config."""


def default_run_dir(
    experiment: Experiment, config: ExperimentConfig, root: str | Path = "runs"
) -> Path:
    """``root/<experiment>/<estimator>-seed<seed>``.

    Example:
        >>> from latentgrad.experiments.base import Experiment, ExperimentConfig
        >>> exp = Experiment("toy", "a toy", ExperimentConfig, build=lambda c: None)
        >>> default_run_dir(exp, ExperimentConfig(estimator="gs", seed=3)).as_posix()
        'runs/toy/gs-seed3'
    """
    return Path(root) / experiment.name / f"{config.estimator}-seed{config.seed}"


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
        config: an instance of ``experiment.config_class``.
        run_dir: the run directory (default: :func:`default_run_dir`, relative to the current
            directory).
        resume: continue the run in ``run_dir`` from its checkpoint (and return the results of
            a finished run without training); ``False`` removes its files and starts again.
        progress: show a progress bar per epoch and a line per epoch on stderr.
        checkpoint_seconds: inside an epoch, also checkpoint when this many seconds have
            passed since the last checkpoint (``0``: after every step; ``None``: only at the
            end of epochs). A kill then loses at most this much work.
        plots: write ``loss.png`` and ``valid.png`` (needs matplotlib).

    Returns:
        The contents of ``results.json``: ``"test"`` (the metrics of ``evaluate("test")``
        after the last epoch), ``"valid_final"``/``"valid_best"`` (with their epochs; best by
        ``experiment.primary_metric``, lower is better), ``"train_final"``,
        ``"time_per_epoch"`` (seconds of training, mean over epochs), ``"loss_evals_per_step"``,
        ``"total_steps"``, ``"epochs"``, ``"estimator"``, ``"seed"``, ``"experiment"``,
        ``"primary_metric"``.

    Raises:
        RunConfigMismatch: if ``run_dir`` holds a run with another config (and ``resume``).
        ValueError: for an unsupported estimator or invalid epochs/eval settings.
    """
    _check_config(experiment, config)
    if checkpoint_seconds is not None and checkpoint_seconds < 0:
        raise ValueError(f"checkpoint_seconds must be >= 0 or None, got {checkpoint_seconds}")
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(experiment, config)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.json"
    if resume and config_path.exists():
        _check_same_config(config_path, experiment, config, run_dir)
        if (run_dir / "results.json").exists():
            _say(f"{run_dir}: the run is complete; returning its results (--no-resume reruns it)")
            return dict(json.loads((run_dir / "results.json").read_text()))
    else:
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
    _write_json(config_path, _config_record(experiment, config))

    _seed_all(config.seed)
    trainable = experiment.build(config)
    state = _State()
    checkpoint = run_dir / "checkpoint.pt"
    if resume and checkpoint.exists():
        state = _load_checkpoint(checkpoint, trainable)
        where = f"epoch {state.epoch + 1}" + (
            f", step {state.partial['epoch_step']} of it" if state.partial else ""
        )
        _say(f"{run_dir}: resuming after {state.step} steps, at {where}")
    _write_env(run_dir, config, state)
    _write_text(run_dir / "metrics.jsonl", "".join(_json_line(r) for r in state.history))

    loop = _Loop(experiment, config, trainable, state, checkpoint, progress, checkpoint_seconds)
    for epoch in range(state.epoch + 1, config.epochs + 1):
        record = loop.train_epoch(epoch)
        with (run_dir / "metrics.jsonl").open("a") as f:
            f.write(_json_line(record))
        loop.save()

    test = _evaluate(trainable, "test", _derived_seed(config.seed, "test"))
    results = _results(experiment, config, state, test)
    if plots:
        plot_run(run_dir)
    _write_json(run_dir / "results.json", results)
    if progress:
        shown = ", ".join(f"{k} {v:.6g}" for k, v in test.items())
        _say(f"{run_dir}: test {shown}")
    return results


def _check_config(experiment: Experiment, config: ExperimentConfig) -> None:
    if not isinstance(config, experiment.config_class):
        raise TypeError(
            f"config must be a {experiment.config_class.__name__} for experiment "
            f"{experiment.name!r}, got {type(config).__name__}"
        )
    if experiment.estimators is not None and config.estimator not in experiment.estimators:
        raise ValueError(
            f"experiment {experiment.name!r} does not support estimator {config.estimator!r}; "
            f"supported: {', '.join(experiment.estimators)}"
        )
    if config.epochs < 1 or config.eval_every < 1:
        raise ValueError("epochs and eval_every must be >= 1")
    if config.max_steps_per_epoch is not None and config.max_steps_per_epoch < 1:
        raise ValueError("max_steps_per_epoch must be >= 1 or None")


def _config_record(experiment: Experiment, config: ExperimentConfig) -> dict[str, Any]:
    cls = type(config)
    return {
        "experiment": experiment.name,
        "primary_metric": experiment.primary_metric,
        "config_class": f"{cls.__module__}.{cls.__qualname__}",
        "config": config_to_dict(config),
    }


def _check_same_config(
    path: Path, experiment: Experiment, config: ExperimentConfig, run_dir: Path
) -> None:
    hint = "use another --run-dir, or --no-resume to overwrite it"
    try:
        stored = json.loads(path.read_text())
        if stored.get("experiment") != experiment.name:
            raise RunConfigMismatch(
                f"{run_dir} holds a run of experiment {stored.get('experiment')!r}, not "
                f"{experiment.name!r}; {hint}"
            )
        previous = config_from_dict(type(config), stored["config"], source=str(path))
    except (ConfigError, KeyError, TypeError, json.JSONDecodeError) as err:
        raise RunConfigMismatch(
            f"{run_dir} holds a run whose config cannot be read ({err}); {hint}"
        ) from None
    diff = config_differences(previous, config)
    if diff:
        shown = ", ".join(f"{k}: {a!r} there, {b!r} requested" for k, (a, b) in diff.items())
        raise RunConfigMismatch(f"{run_dir} holds a run with another config ({shown}); {hint}")


# --- the training loop -------------------------------------------------------------------


class _State:
    """What a checkpoint restores besides the modules and the optimizer."""

    def __init__(self) -> None:
        self.epoch = 0  # completed epochs
        self.step = 0  # optimizer steps so far
        self.history: list[dict[str, Any]] = []  # one record per completed epoch
        self.partial: dict[str, Any] | None = None  # the epoch in progress


class _Loop:
    def __init__(
        self,
        experiment: Experiment,
        config: ExperimentConfig,
        trainable: Trainable,
        state: _State,
        checkpoint: Path,
        progress: bool,
        checkpoint_seconds: float | None,
    ) -> None:
        self.experiment = experiment
        self.config = config
        self.trainable = trainable
        self.state = state
        self.checkpoint = checkpoint
        self.progress = progress
        self.checkpoint_seconds = checkpoint_seconds
        self.last_save = time.monotonic()

    def save(self) -> None:
        _save_checkpoint(self.checkpoint, self.trainable, self.state)
        self.last_save = time.monotonic()

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        config, state, trainable = self.config, self.state, self.trainable
        partial = state.partial if state.partial and state.partial["epoch"] == epoch else None
        sums: dict[str, float] = dict(partial["sums"]) if partial else {}
        done = int(partial["epoch_step"]) if partial else 0
        elapsed = float(partial["elapsed"]) if partial else 0.0
        cap = config.max_steps_per_epoch

        _seed_all(_derived_seed(config.seed, "train", epoch))
        trainable.modules.train()
        iterable = trainable.train_batches(epoch)
        total = len(iterable) if hasattr(iterable, "__len__") else None  # type: ignore[arg-type]
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
            _set_rng_state(partial["rng"])

        start = time.perf_counter()
        bar = _progress_bar(total, done, f"epoch {epoch}/{config.epochs}", self.progress)
        try:
            while cap is None or done < cap:
                batch = next(batches, _END)
                if batch is _END:
                    break
                metrics = _floats(trainable.train_step(batch), "train_step")
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
            record["valid"] = _evaluate(
                trainable, "valid", _derived_seed(config.seed, "valid", epoch)
            )
            record["valid_time"] = time.perf_counter() - start
        state.history.append(record)
        state.epoch = epoch
        state.partial = None
        if self.progress:
            _say(_epoch_line(record, config.epochs))
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


def _floats(metrics: Mapping[str, Any], where: str) -> dict[str, float]:
    if not isinstance(metrics, Mapping):
        raise TypeError(f"{where} must return a mapping of scalar metrics, got {metrics!r}")
    out = {}
    for key, value in metrics.items():
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{where} returned a non-scalar metric {key!r}: {value!r}") from None
    return out


def _evaluate(trainable: Trainable, split: str, seed: int) -> dict[str, float]:
    with _forked_rng(seed):
        return _floats(trainable.evaluate(split), f"evaluate({split!r})")


def _results(
    experiment: Experiment,
    config: ExperimentConfig,
    state: _State,
    test: dict[str, float],
) -> dict[str, Any]:
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


# --- randomness --------------------------------------------------------------------------


def _derived_seed(seed: int, *tags: object) -> int:
    """A seed in ``[0, 2**63)`` that is a fixed function of ``seed`` and ``tags``."""
    digest = hashlib.sha256(json.dumps([seed, *tags]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:
        return None
    return numpy


def _seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    np = _numpy()
    if np is not None:
        np.random.seed(seed % 2**32)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    np = _numpy()
    if np is not None:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state["numpy"] = (kind, keys.tolist(), int(pos), int(has_gauss), float(gauss))
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    np = _numpy()
    if np is not None and "numpy" in state:
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def _forked_rng(seed: int) -> Iterator[None]:
    saved = _rng_state()
    _seed_all(seed)
    try:
        yield
    finally:
        _set_rng_state(saved)


# --- checkpoints -------------------------------------------------------------------------


def _save_checkpoint(path: Path, trainable: Trainable, state: _State) -> None:
    payload = {
        "format": _CHECKPOINT_FORMAT,
        "modules": trainable.modules.state_dict(),
        "optimizer": trainable.optimizer.state_dict(),
        "epoch": state.epoch,
        "step": state.step,
        "history": state.history,
        "partial": state.partial,
        "rng": _rng_state(),
    }
    _atomic(path, lambda tmp: torch.save(payload, tmp))


def _load_checkpoint(path: Path, trainable: Trainable) -> _State:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {payload.get('format')!r}")
    trainable.modules.load_state_dict(payload["modules"])
    trainable.optimizer.load_state_dict(payload["optimizer"])
    state = _State()
    state.epoch = int(payload["epoch"])
    state.step = int(payload["step"])
    state.history = list(payload["history"])
    state.partial = payload["partial"]
    if state.partial is not None:
        state.partial["rng"] = payload["rng"]
    _set_rng_state(payload["rng"])
    return state


# --- files -------------------------------------------------------------------------------


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    _atomic(path, lambda tmp: tmp.write_text(text))


def _write_json(path: Path, data: object) -> None:
    _write_text(path, json.dumps(data, indent=2) + "\n")


def _json_line(record: object) -> str:
    return json.dumps(record) + "\n"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _git_revision() -> dict[str, Any] | None:
    """The git commit of the checkout latentgrad is imported from (``None`` if not in one)."""
    package = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", "-C", str(package), *args], capture_output=True, text=True, timeout=10
        )
        if out.returncode != 0:
            raise OSError(out.stderr.strip())
        return out.stdout.strip()

    try:
        git("ls-files", "--error-unmatch", "__init__.py")  # tracked: imported from a checkout
        return {
            "revision": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        }
    except (OSError, subprocess.SubprocessError):
        return None


def _environment(config: ExperimentConfig) -> dict[str, Any]:
    import latentgrad

    np = _numpy()
    cuda = torch.cuda.is_available()
    return {
        "start_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": list(sys.argv),
        "cwd": os.getcwd(),
        "seed": config.seed,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__ if np is not None else None,
        "latentgrad": latentgrad.__version__,
        "git": _git_revision(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cuda": torch.cuda.get_device_name() if cuda and torch.cuda.is_initialized() else None,
    }


def _write_env(run_dir: Path, config: ExperimentConfig, state: _State) -> None:
    path = run_dir / "env.json"
    now = _environment(config)
    if state.step == 0 or not path.exists():
        env = {**now, "resumed": []}
    else:
        env = json.loads(path.read_text())
        env.setdefault("resumed", []).append(
            {**now, "from_epoch": state.epoch, "from_step": state.step}
        )
    _write_json(path, env)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl`` (empty if the file is missing)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- plots -------------------------------------------------------------------------------


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write ``loss.png`` (training loss) and ``valid.png`` (validation metric) against epoch.

    Uses matplotlib's Agg canvas directly (no pyplot), so no global backend state changes.

    Returns:
        The paths written.
    """
    run_dir = Path(run_dir)
    history = read_metrics(run_dir)
    meta = json.loads((run_dir / "config.json").read_text())
    cfg = meta["config"]
    title = f"{meta['experiment']}: {cfg.get('estimator')}, seed {cfg.get('seed')}"
    train = [(r["epoch"], r["train"]["loss"]) for r in history]
    key = meta.get("primary_metric", "nll")
    evals = [r for r in history if "valid" in r]
    if evals and key not in evals[-1]["valid"]:
        key = next(iter(evals[-1]["valid"]), key)
    valid = [(r["epoch"], r["valid"][key]) for r in evals if key in r["valid"]]
    out = [
        (run_dir / "loss.png", train, "training loss (epoch mean)"),
        (run_dir / "valid.png", valid, f"validation {key}"),
    ]
    for path, points, label in out:
        fig = new_figure()
        ax = fig.add_subplot()
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", markersize=3)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(label)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        fig.savefig(path, dpi=100)
    return [path for path, _, _ in out]


def new_figure(figsize: tuple[float, float] = (6.0, 4.0)) -> Any:
    """A matplotlib ``Figure`` on an Agg canvas, made without pyplot (no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig
