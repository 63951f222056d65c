"""The run directory: what a run writes, how it is checked, checkpointed and resumed.

A run directory holds

* ``config.json``: the experiment's name, its primary metric, the config class and the
  resolved config;
* ``env.json``: versions, platform, git revision, command line, start time, seed, threads (and
  one entry per resumption);
* ``metrics.jsonl``: one JSON object per completed epoch (see
  :meth:`~latentgrad.lab.loop.TrainingLoop.train_epoch`);
* ``checkpoint.pt``: modules, optimizer, the :class:`~latentgrad.lab.loop.TrainState` and the
  RNG states; written atomically;
* ``results.json``: the final results (its presence marks a finished run);
* ``loss.png`` and ``valid.png`` (see :mod:`latentgrad.lab.plots`).

Example:
    >>> from latentgrad.lab.experiment import Experiment, ExperimentConfig
    >>> exp = Experiment("toy", "a toy", ExperimentConfig, build=lambda c, e: None)
    >>> default_run_dir(exp, ExperimentConfig(estimator="gs", seed=3)).as_posix()
    'runs/toy/gs-seed3'
    >>> config = ExperimentConfig(estimator="gs", estimator_options={"hard": True}, seed=3)
    >>> default_run_dir(exp, config).as_posix()
    'runs/toy/gs-f1901d85-seed3'
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from latentgrad.lab.config import (
    ConfigError,
    config_differences,
    config_from_dict,
    config_to_dict,
    with_recorded_defaults,
)
from latentgrad.lab.experiment import Experiment, ExperimentConfig, Trainable
from latentgrad.lab.loop import TrainState
from latentgrad.lab.randomness import numpy_module, rng_state, set_rng_state

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
CHECKPOINT_FORMAT = 1
RESULTS_HINT = (
    "delete it and rerun the same `latentgrad run` command, which recomputes it from the checkpoint"
)


class RunConfigMismatch(ValueError):
    """The run directory holds a run with another config."""


class RunFileError(ValueError):
    """A run directory, or one of its files, that cannot be created, written or read.

    The message names the path and says what to do.

    Attributes:
        path: the directory or file.
    """

    def __init__(self, message: str, path: str | Path) -> None:
        super().__init__(message)
        self.path = Path(path)

    def __reduce__(self) -> tuple[type[RunFileError], tuple[str, Path]]:
        return type(self), (str(self.args[0]), self.path)


def ensure_writable_directory(path: str | Path, what: str, hint: str) -> Path:
    """Make directory ``path`` (and its parents) if needed and check that files can be written.

    Args:
        path: the directory.
        what: what the directory is for, for the message (``"the run directory"``).
        hint: what to do instead, for the message (``"choose another --out"``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        RunFileError: naming the directory, the reason and ``hint``.

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile() as f:
        ...     ensure_writable_directory(Path(f.name) / "runs", "the runs", "choose another")
        Traceback (most recent call last):
        ...
        latentgrad.lab.rundir.RunFileError: cannot write the runs to ... is a file, not a directory; choose another
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        file = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        reason = f"{file} is a file, not a directory" if file else _os_reason(err)
        raise RunFileError(f"cannot write {what} to {path}: {reason}; {hint}", path) from None
    return path


def _short(err: BaseException, limit: int = 120) -> str:
    """The exception's type and the first line of its message, at most ``limit`` characters."""
    lines = str(err).strip().splitlines()
    first = lines[0] if lines else ""
    if len(first) > limit and ". " in first:
        first = first.split(". ")[0]  # the first sentence
    text = f"{type(err).__name__}: {first}" if first else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _os_reason(err: OSError) -> str:
    if err.filename is not None and err.strerror:
        return f"{err.strerror} ({err.filename})"
    return err.strerror or str(err)


def read_json_file(path: Path, hint: str) -> Any:
    """The JSON value in ``path``; a :class:`RunFileError` naming it and ``hint`` if unreadable."""
    try:
        return json.loads(path.read_text())
    except OSError as err:
        raise RunFileError(f"cannot read {path}: {_os_reason(err)}; {hint}", path) from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise RunFileError(
            f"{path} is not valid JSON (truncated or edited? {err}); {hint}", path
        ) from None


def default_run_dir(
    experiment: Experiment, config: ExperimentConfig, root: str | Path = "runs"
) -> Path:
    """``root/<experiment>/<estimator>[-<options hash>]-seed<seed>``.

    The hash (8 hex digits, :func:`~latentgrad.lab.registry.options_hash`) identifies the
    estimator options that differ from the estimator's defaults; with all defaults there is
    none. So two runs that differ only in an option never share a directory.

    Raises:
        UnknownEstimator: (a ``ValueError``) for an estimator the registry does not know.
        ValueError: for estimator options it rejects (see
            :func:`~latentgrad.lab.registry.resolve_options`).
    """
    from latentgrad.lab.registry import options_hash

    digest = options_hash(config.estimator, config.estimator_options)
    tag = config.estimator if digest is None else f"{config.estimator}-{digest}"
    return Path(root) / experiment.name / f"{tag}-seed{config.seed}"


class RunDirectory:
    """The files of one run, in ``path``.

    Args:
        path: the run directory (created by :meth:`create`).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    @property
    def checkpoint(self) -> Path:
        """``checkpoint.pt``."""
        return self.path / "checkpoint.pt"

    def create(self) -> None:
        """Make the directory (and its parents) if needed and check that it is writable.

        Raises:
            RunFileError: if it cannot be made or written (naming it and what to do).
        """
        ensure_writable_directory(
            self.path, "the run directory", "choose another --run-dir or --out"
        )

    def has_config(self) -> bool:
        """Whether a run was started here (``config.json`` exists)."""
        return (self.path / "config.json").exists()

    def clear(self) -> None:
        """Remove the files of a previous run (:data:`RUN_FILES`)."""
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)

    # --- config.json -----------------------------------------------------------------------

    def write_config(self, experiment: Experiment, config: ExperimentConfig) -> None:
        """Record the experiment and the resolved config."""
        cls = type(config)
        record = {
            "experiment": experiment.name,
            "primary_metric": experiment.primary_metric,
            "config_class": f"{cls.__module__}.{cls.__qualname__}",
            "config": config_to_dict(config),
        }
        write_json(self.path / "config.json", record)

    def check_config(self, experiment: Experiment, config: ExperimentConfig) -> None:
        """Check that the run recorded here is of ``experiment`` with ``config``.

        Raises:
            RunConfigMismatch: naming the fields that differ (or why the record is unreadable).
        """
        path = self.path / "config.json"
        hint = "use another --run-dir, or --no-resume to overwrite it"
        try:
            stored = json.loads(path.read_text())
            if stored.get("experiment") != experiment.name:
                raise RunConfigMismatch(
                    f"{self.path} holds a run of experiment {stored.get('experiment')!r}, not "
                    f"{experiment.name!r}; {hint}"
                )
            recorded = with_recorded_defaults(type(config), stored["config"])
            previous = config_from_dict(type(config), recorded, source=str(path))
        except (ConfigError, KeyError, TypeError, json.JSONDecodeError) as err:
            raise RunConfigMismatch(
                f"{self.path} holds a run whose config cannot be read ({err}); {hint}"
            ) from None
        diff = config_differences(_resolved(previous), _resolved(config))
        if diff:
            shown = ", ".join(f"{k}: {a!r} there, {b!r} requested" for k, (a, b) in diff.items())
            raise RunConfigMismatch(
                f"{self.path} holds a run with another config ({shown}); {hint}"
            )

    # --- env.json, metrics.jsonl, results.json ---------------------------------------------

    def write_env(self, config: ExperimentConfig, state: TrainState) -> None:
        """Record the environment; a resumed run (``state.step > 0``) appends a resumption."""
        path = self.path / "env.json"
        now = environment(config.seed)
        env: Any = None
        if state.step > 0 and path.exists():
            try:
                env = json.loads(path.read_text())
            except (OSError, ValueError):
                env = None  # a damaged record of the environment is not worth stopping a run
        if not isinstance(env, dict):
            env = {**now, "resumed": []}
        else:
            env.setdefault("resumed", []).append(
                {**now, "from_epoch": state.epoch, "from_step": state.step}
            )
        write_json(path, env)

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """Rewrite ``metrics.jsonl`` with the records of ``history``."""
        write_text(self.path / "metrics.jsonl", "".join(_json_line(r) for r in history))

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one epoch's record to ``metrics.jsonl``."""
        with (self.path / "metrics.jsonl").open("a") as f:
            f.write(_json_line(record))

    def read_results(self) -> dict[str, Any] | None:
        """The contents of ``results.json`` (``None``: the run has not finished)."""
        path = self.path / "results.json"
        if not path.exists():
            return None
        results = read_json_file(path, RESULTS_HINT)
        if not isinstance(results, dict):
            raise RunFileError(f"{path} does not hold a JSON object; {RESULTS_HINT}", path)
        return results

    def write_results(self, results: dict[str, Any]) -> None:
        """Write ``results.json``, which marks the run finished."""
        write_json(self.path / "results.json", results)

    # --- checkpoint.pt ---------------------------------------------------------------------

    def save_checkpoint(self, trainable: Trainable, state: TrainState) -> None:
        """Atomically write the modules, the optimizer, ``state`` and the RNG states."""
        payload = {
            "format": CHECKPOINT_FORMAT,
            "modules": trainable.modules.state_dict(),
            "optimizer": trainable.optimizer.state_dict(),
            "epoch": state.epoch,
            "step": state.step,
            "history": state.history,
            "partial": state.partial,
            "rng": rng_state(),
        }
        _atomic(self.checkpoint, lambda tmp: torch.save(payload, tmp))

    def load_checkpoint(self, trainable: Trainable) -> TrainState:
        """Restore ``trainable`` and the RNG states from the checkpoint; return the progress.

        Raises:
            RunFileError: if the checkpoint is truncated, empty, of an unknown format or from
                another program (naming it and what to do).
        """
        path = self.checkpoint
        hint = (
            "delete it to restart the run from the beginning (or pass --no-resume), or "
            "restore the file"
        )
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # EOFError, zip-reader RuntimeError, UnpicklingError, ...
            raise RunFileError(
                f"{path} cannot be read as a checkpoint ({_short(err)}); {hint}", path
            ) from None
        found = payload.get("format") if isinstance(payload, dict) else None
        if found != CHECKPOINT_FORMAT:
            what = f"format {found!r}" if found is not None else "not a latentgrad checkpoint"
            raise RunFileError(
                f"{path} is not a checkpoint this version can read ({what}); {hint}", path
            )
        try:
            trainable.modules.load_state_dict(payload["modules"])
            trainable.optimizer.load_state_dict(payload["optimizer"])
            state = TrainState(
                epoch=int(payload["epoch"]),
                step=int(payload["step"]),
                history=list(payload["history"]),
                partial=payload["partial"],
            )
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise RunFileError(
                f"{path} does not fit this run's model ({_short(err)}); {hint}", path
            ) from None
        if state.partial is not None:
            state.partial["rng"] = payload["rng"]
        set_rng_state(payload["rng"])
        return state


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl`` (empty if the file is missing).

    Raises:
        RunFileError: if a line is not a JSON object (naming the file, the line and what to do).
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    hint = "delete the damaged line, or rerun the run with --no-resume"
    try:
        text = path.read_text()
    except (OSError, ValueError) as err:
        raise RunFileError(f"cannot read {path} ({err}); {hint}", path) from None
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raise RunFileError(
                f"{path}, line {number}: not a JSON object (truncated?); {hint}", path
            )
        records.append(record)
    return records


def _resolved(config: ExperimentConfig) -> ExperimentConfig:
    """``config`` with full estimator options (a run recorded before options had them all, or
    a requested config with some omitted, compares by what it means)."""
    from latentgrad.lab.registry import with_resolved_options

    try:
        return with_resolved_options(config)
    except ValueError:  # an estimator or option this version does not know: compare as given
        return config


# --- files ---------------------------------------------------------------------------------


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file, then a rename)."""
    _atomic(path, lambda tmp: tmp.write_text(text))


def write_json(path: Path, data: object) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def _json_line(record: object) -> str:
    return json.dumps(record) + "\n"


# --- the environment -----------------------------------------------------------------------


def git_revision() -> dict[str, Any] | None:
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


def environment(seed: int) -> dict[str, Any]:
    """Versions, platform, git revision, command line, start time, ``seed`` and threads."""
    import latentgrad

    np = numpy_module()
    cuda = torch.cuda.is_available()
    return {
        "start_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": list(sys.argv),
        "cwd": os.getcwd(),
        "seed": seed,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__ if np is not None else None,
        "latentgrad": latentgrad.__version__,
        "git": git_revision(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cuda": torch.cuda.get_device_name() if cuda and torch.cuda.is_initialized() else None,
    }
