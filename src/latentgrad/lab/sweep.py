"""Sweeps: a grid of runs of one experiment, on a local process pool or on a Ray cluster.

A grid maps keys to lists of values; the sweep is their cartesian product, one
:func:`latentgrad.lab.runner.run` per point. A key is ``estimator``, a field of the experiment's
config (``lr``, ``seed``, ``epochs``, ...), or an option of the estimator (``num_samples``,
``tau_initial``, ...; resolved by :func:`latentgrad.lab.registry.resolve_config_options`
where the registry has it, over the experiment's preset).

* :func:`parse_grid` reads the command line's ``KEY=V1,V2,...`` items (``a..b`` is the integers
  ``a`` to ``b`` inclusive; tuple values go in brackets, ``hidden=[300,200],[200]``);
  :func:`load_grid_file` reads a JSON (or, with pyyaml, YAML) file holding one grid or a list
  of grids (their union).
* :func:`plan_sweep` turns the grids into :class:`SweepRun` s: a validated config and a run
  directory each. Grid keys that are config fields other than ``estimator`` and ``seed`` name a
  folder (``OUT/vae/lr=0.0003/gs-seed0``), so runs that differ only in them never share a
  directory, and a run keeps its directory when the grid around it grows.
* :func:`run_sweep` runs the plan: finished runs are skipped (their ``results.json`` is there),
  killed ones resume from their checkpoint, a failed run is reported with its error line and the
  others go on. By default a local process pool (``spawn`` workers, one torch thread per run
  unless told); with ``ray=True`` one Ray task per run, asking for as many CPUs as it has
  threads (``ray.init(address=...)`` joins a cluster; without an address a local Ray runtime
  starts).
* :func:`format_summary` lists each run's status and directory.

Example:
    >>> grid = parse_grid(["estimator=gs,st-gs", "lr=1e-3,3e-4", "seed=0..1"])
    >>> grid["seed"]
    ['0', '1']
    >>> len(expand_grid([grid]))
    8
    >>> from latentgrad.lab.catalog import all_experiments
    >>> runs = plan_sweep(all_experiments()["vae"], [grid], out="runs/sweep")
    >>> runs[0].run_dir.as_posix(), runs[0].config.lr
    ('runs/sweep/vae/lr=0.001/gs-seed0', 0.001)
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import multiprocessing
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from latentgrad.lab import registry
from latentgrad.lab.config import (
    ConfigError,
    coerce_value,
    config_fields,
    config_from_dict,
    config_to_dict,
    load_config_file,
    parse_text,
)
from latentgrad.lab.experiment import Experiment, ExperimentConfig
from latentgrad.lab.rundir import RunConfigMismatch, RunDirectory, default_run_dir

__all__ = [
    "RunOutcome",
    "SweepRun",
    "expand_grid",
    "format_summary",
    "import_ray",
    "load_grid_file",
    "parse_grid",
    "plan_sweep",
    "run_point",
    "run_sweep",
]

#: A grid: each key with its values (strings are parsed as on the command line).
Grid = dict[str, list[Any]]
#: What became of one run of a sweep.
Status = Literal["done", "resumed", "skipped", "failed"]

_RANGE = re.compile(r"^\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*$")
#: Grid keys that the run directory's own name already tells apart.
_NAMED_BY_RUN_DIR = frozenset({"estimator", "seed", "estimator_options"})
RAY_HINT = "pip install 'latentgrad[ray]' (or ray)"


@dataclass(frozen=True)
class SweepRun:
    """One planned run of a sweep.

    Attributes:
        config: the run's validated config.
        run_dir: its run directory.
        point: the grid values that made it, by key.
    """

    config: ExperimentConfig
    run_dir: Path
    point: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunOutcome:
    """What became of one run.

    Attributes:
        run_dir: the run directory.
        status: ``"done"`` (trained from the start), ``"resumed"`` (trained on from a
            checkpoint), ``"skipped"`` (finished before the sweep started) or ``"failed"``.
        error: the error's one line (``"failed"`` only).
        seconds: wall time of the run in its worker (0 when skipped).
        test: the test metrics of a finished run.
    """

    run_dir: Path
    status: Status
    error: str | None = None
    seconds: float = 0.0
    test: dict[str, float] | None = None


# --- grids ---------------------------------------------------------------------------------


def _split_values(text: str) -> list[str]:
    """Split at the commas outside brackets: ``"[1,2],[3]"`` -> ``["[1,2]", "[3]"]``."""
    items, depth, current = [], 0, ""
    for char in text:
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    return [item.strip() for item in items]


def _expand_ranges(values: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for value in values:
        match = _RANGE.match(value) if isinstance(value, str) else None
        if match is None:
            out.append(value)
            continue
        low, high = int(match[1]), int(match[2])
        if high < low:
            raise ValueError(f"empty range {value!r} in the grid (write low..high)")
        out += [str(v) for v in range(low, high + 1)]
    return out


def parse_grid(items: Sequence[str]) -> Grid:
    """The grid of command-line items ``KEY=V1,V2,...``.

    Values stay strings (typed by :func:`plan_sweep`, which knows each key's type); ``a..b``
    is the integers from ``a`` to ``b`` inclusive; a value in brackets keeps its commas (a
    tuple). A key given twice keeps the last values.

    Args:
        items: the items, e.g. ``["estimator=gs,st-gs", "seed=0..4"]``.

    Returns:
        Each key with its list of values, in the order given.

    Raises:
        ValueError: for an item without ``=``, an empty key, value or range.

    Example:
        >>> parse_grid(["seed=0..2", "hidden=[300,200],[200]", "lr=1e-3"])
        {'seed': ['0', '1', '2'], 'hidden': ['[300,200]', '[200]'], 'lr': ['1e-3']}
    """
    grid: Grid = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"grid item {item!r} must be KEY=V1,V2,... (e.g. seed=0..4)")
        values = _split_values(text)
        if any(not v for v in values):
            raise ValueError(f"grid item {item!r} has an empty value")
        grid[key] = _expand_ranges(values)
    return grid


def load_grid_file(path: str | Path) -> list[Grid]:
    """The grids of a JSON (or YAML) file: one object of ``key: values``, or a list of them.

    A value is a list of values or one value; strings are read as on the command line
    (``"0..4"`` is a range). A list of objects is the union of their grids, e.g. an option
    only some estimators have in a grid of its own. ``.yaml``/``.yml`` files need pyyaml.

    Args:
        path: the file.

    Returns:
        The grids.

    Raises:
        ValueError: if the file cannot be read or parsed, or holds something else.
        ImportError: for a YAML file without pyyaml.

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        ...     _ = f.write('{"estimator": ["gs", "st-gs"], "seed": "0..1", "lr": 0.001}')
        >>> load_grid_file(f.name)
        [{'estimator': ['gs', 'st-gs'], 'seed': ['0', '1'], 'lr': [0.001]}]
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ValueError(f"cannot read grid file {path}: {err.strerror or err}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ModuleNotFoundError:
            raise ImportError(
                f"grid file {path} is YAML and pyyaml is not installed; pip install pyyaml, "
                "or write the grid as JSON"
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(f"grid file {path} is not valid YAML: {err}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"grid file {path} is not valid JSON: {err}") from None
    grids = data if isinstance(data, list) else [data]
    if not grids or not all(isinstance(g, dict) and g for g in grids):
        raise ValueError(f"grid file {path} must hold an object of key: values, or a list of them")
    out = []
    for grid in grids:
        parsed: Grid = {}
        for key, values in grid.items():
            listed = values if isinstance(values, list) else [values]
            if not listed:
                raise ValueError(f"grid file {path}: {key!r} has no values")
            parsed[str(key).replace("-", "_")] = _expand_ranges(listed)
        out.append(parsed)
    return out


def expand_grid(grids: Sequence[Mapping[str, Sequence[Any]]]) -> list[dict[str, Any]]:
    """The points of the grids: the cartesian product of each, one after the other.

    String values ``a..b`` are the integers from ``a`` to ``b`` inclusive.

    Args:
        grids: grids of ``key: values``.

    Returns:
        One dict per point, the first key varying slowest.

    Example:
        >>> expand_grid([{"estimator": ["gs", "st"], "seed": [0, 1]}])[:3]
        [{'estimator': 'gs', 'seed': 0}, {'estimator': 'gs', 'seed': 1}, {'estimator': 'st', 'seed': 0}]
    """
    points = []
    for grid in grids:
        keys = list(grid)
        for values in itertools.product(*(_expand_ranges(grid[k]) for k in keys)):
            points.append(dict(zip(keys, values, strict=True)))
    return points


# --- planning ------------------------------------------------------------------------------


def _typed(tp: Any, value: Any) -> Any:
    return parse_text(tp, value) if isinstance(value, str) else coerce_value(tp, value)


def _tag_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_tag_text(v) for v in value)
    return str(value).replace("/", "_").replace("\\", "_")


def _options_mapping(options: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(options) and not isinstance(options, type):
        return config_to_dict(options)
    return dict(options)


def _with_options(
    config: ExperimentConfig, options: Mapping[str, Any], fields: Mapping[str, Any]
) -> ExperimentConfig:
    """``config`` with its estimator's options resolved (where the registry resolves options).

    The experiment's preset for the estimator comes first; options from the base config apply
    on top while the estimator is the base config's, then the grid's.
    """
    resolve = getattr(registry, "resolve_config_options", None)
    if resolve is None or "estimator_options" not in fields:
        if options:
            raise ValueError(
                f"unknown grid key(s) {', '.join(map(repr, options))}: not a field of "
                f"{type(config).__name__} ({', '.join(fields)}) or 'estimator'"
            )
        return config
    try:
        resolved = resolve(config, options)
    except (ValueError, TypeError) as err:
        raise ValueError(f"estimator {config.estimator!r}: {err}") from None
    changes: dict[str, Any] = {"estimator_options": _options_mapping(resolved)}
    return dataclasses.replace(config, **changes)


def plan_sweep(
    experiment: Experiment,
    grids: Sequence[Mapping[str, Sequence[Any]]],
    *,
    out: str | Path = "runs",
    config_file: str | Path | None = None,
    fixed: Mapping[str, Any] | None = None,
) -> list[SweepRun]:
    """The runs of a sweep: a validated config and a run directory per grid point.

    Each config is the class defaults, then ``config_file``, then ``fixed``, then the point.
    Points that give the same run (same directory, same config) are run once.

    Args:
        experiment: the experiment.
        grids: grids of ``key: values`` (:func:`parse_grid`, :func:`load_grid_file`); keys
            are config fields, ``estimator`` or estimator options.
        out: root of the run directories (``out/<experiment>/[<grid fields>/]<run>``).
        config_file: a JSON file of config values (as ``latentgrad run --config``).
        fixed: config values for every run (typed, or strings parsed as on the command line).

    Returns:
        The runs, in grid order.

    Raises:
        ValueError: for an unknown key or estimator, a value of the wrong type or out of
            range, or two different configs that would share a run directory; the message
            names the key or directory.

    Example:
        >>> from latentgrad.lab.catalog import all_experiments
        >>> runs = plan_sweep(all_experiments()["vae"], [{"seed": ["0..2"]}], fixed={"epochs": 1})
        >>> [r.run_dir.name for r in runs], runs[0].config.epochs
        (['sf-loo-seed0', 'sf-loo-seed1', 'sf-loo-seed2'], 1)
    """
    cls = experiment.config_class
    fields = config_fields(cls)
    base: dict[str, Any] = {}
    if config_file is not None:
        base.update(load_config_file(cls, config_file))
    for key, value in (fixed or {}).items():
        if key not in fields:
            raise ValueError(
                f"unknown config field {key!r}; {cls.__name__} has: {', '.join(fields)}"
            )
        base[key] = _typed(fields[key], value)
    base_options = dict(base.pop("estimator_options", None) or {})
    base_estimator = base.get("estimator", getattr(cls, "estimator", None))

    runs: dict[Path, SweepRun] = {}
    for point in expand_grid(grids):
        values = dict(base)
        options: dict[str, Any] = {}
        typed_point: dict[str, Any] = {}
        for key, value in point.items():
            if key in fields and key != "estimator_options":
                try:
                    values[key] = typed_point[key] = _typed(fields[key], value)
                except ValueError as err:
                    raise ValueError(f"grid key {key!r}: {err}") from None
            else:
                options[key] = value  # the registry types it (text as on the command line)
        try:
            config = config_from_dict(cls, values, source="the sweep's config")
        except ConfigError as err:
            raise ValueError(str(err)) from None
        registry.estimator_entry(config.estimator, experiment)
        if config.estimator == base_estimator:
            options = {**base_options, **options}
        config = _with_options(config, options, fields)
        config.validate()
        resolved = getattr(config, "estimator_options", None) or {}
        typed_point.update((k, resolved.get(k, v)) for k, v in point.items() if k in options)
        run_dir = _run_dir(experiment, config, out, typed_point)
        earlier = runs.get(run_dir)
        if earlier is not None and config_to_dict(earlier.config) != config_to_dict(config):
            raise ValueError(
                f"grid points {earlier.point} and {typed_point} both map to run directory "
                f"{run_dir} with different configs; vary that key in separate --out folders"
            )
        runs.setdefault(run_dir, SweepRun(config, run_dir, typed_point))
    return list(runs.values())


def _run_dir(
    experiment: Experiment, config: ExperimentConfig, out: str | Path, point: Mapping[str, Any]
) -> Path:
    fields = config_fields(type(config))
    named = default_run_dir(experiment, config, out)
    tag = ",".join(
        f"{key}={_tag_text(getattr(config, key))}"
        for key in point
        if key in fields and key not in _NAMED_BY_RUN_DIR
    )
    return named.parent / tag / named.name if tag else named


# --- running -------------------------------------------------------------------------------


def _error_line(err: BaseException, limit: int = 200) -> str:
    """The error's type and the first line of its message (its first sentence when long)."""
    lines = str(err).strip().splitlines()
    text = " ".join(lines[0].split()) if lines else ""
    if len(text) > limit and ". " in text:
        text = text.split(". ")[0] + "."
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def run_point(
    experiment_name: str,
    config: Mapping[str, Any],
    run_dir: str,
    threads: int = 1,
    checkpoint_seconds: float | None = 300.0,
) -> RunOutcome:
    """Run one point of a sweep (in a worker): the experiment by name, the config as a dict.

    Errors do not escape: a failed run comes back as a ``"failed"`` :class:`RunOutcome` with
    its error line, so one run's failure never stops the others.

    Args:
        experiment_name: the experiment's name (``latentgrad list``).
        config: the config, as :func:`~latentgrad.lab.config.config_to_dict` writes it.
        run_dir: the run directory.
        threads: torch threads for this run.
        checkpoint_seconds: see :func:`latentgrad.lab.runner.run`.

    Returns:
        The outcome: ``"done"``, ``"resumed"`` (from a checkpoint) or ``"failed"``.
    """
    start = time.perf_counter()
    try:
        import torch

        from latentgrad.lab import catalog, runner

        torch.set_num_threads(threads)
        experiment = catalog.all_experiments()[experiment_name]
        cfg = config_from_dict(experiment.config_class, config, source=run_dir)
        resumed = RunDirectory(run_dir).checkpoint.exists()
        results = runner.run(
            experiment, cfg, run_dir, progress=False, checkpoint_seconds=checkpoint_seconds
        )
    except Exception as err:
        return RunOutcome(Path(run_dir), "failed", _error_line(err), time.perf_counter() - start)
    test = {k: float(v) for k, v in (results.get("test") or {}).items()}
    status: Status = "resumed" if resumed else "done"
    return RunOutcome(Path(run_dir), status, None, time.perf_counter() - start, test)


def _finished(experiment: Experiment, run: SweepRun) -> RunOutcome | None:
    """The outcome of a run that needs no worker: finished already, or blocked by another run."""
    directory = RunDirectory(run.run_dir)
    if not directory.has_config():
        return None
    try:
        directory.check_config(experiment, run.config)
        results = directory.read_results()
    except (RunConfigMismatch, ValueError) as err:
        return RunOutcome(run.run_dir, "failed", _error_line(err))
    if results is None:
        return None
    test = {k: float(v) for k, v in (results.get("test") or {}).items()}
    return RunOutcome(run.run_dir, "skipped", test=test)


class _Progress:
    """A bar counting runs (tqdm when installed), or a line per run."""

    def __init__(self, total: int, done: int, enabled: bool) -> None:
        self.total, self.count, self.enabled = total, done, enabled
        self.bar: Any = None
        if enabled:
            try:
                from tqdm import tqdm
            except ModuleNotFoundError:
                pass
            else:
                self.bar = tqdm(
                    total=total, initial=done, unit="run", desc="sweep", file=sys.stderr
                )

    def update(self, outcome: RunOutcome) -> None:
        self.count += 1
        line = f"[{self.count}/{self.total}] {outcome.status}: {outcome.run_dir}"
        if outcome.error:
            line += f": {outcome.error}"
        if self.bar is not None:
            if outcome.status == "failed":
                self.bar.write(line, file=sys.stderr)
            self.bar.update(1)
        elif self.enabled:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_sweep(
    experiment: Experiment,
    runs: Sequence[SweepRun],
    *,
    workers: int = 1,
    threads: int = 1,
    ray: bool = False,
    ray_address: str | None = None,
    progress: bool = True,
    checkpoint_seconds: float | None = 300.0,
) -> list[RunOutcome]:
    """Run the planned runs; finished ones are skipped, killed ones resume.

    Args:
        experiment: the experiment.
        runs: the plan (:func:`plan_sweep`).
        workers: runs at a time on the local pool; the CPUs of a local Ray runtime
            (``workers * threads``). Ignored when joining a Ray cluster (its resources decide).
        threads: torch threads per run (and the CPUs each Ray task asks for).
        ray: run each run as a Ray task instead of on the local pool.
        ray_address: the Ray cluster to join (``"auto"``, ``"ray://host:10001"``, ...);
            ``None`` starts a local Ray runtime (unless Ray is initialized already, or
            ``RAY_ADDRESS`` names a cluster).
        progress: a progress bar counting runs on stderr (tqdm when installed; else a line
            per run).
        checkpoint_seconds: see :func:`latentgrad.lab.runner.run`.

    Returns:
        One outcome per run, in the order of ``runs``.

    Raises:
        ValueError: for ``workers`` or ``threads`` below 1.
        ImportError: with ``ray=True`` when ray is not installed (naming the extra).
    """
    for name, value in (("workers", workers), ("threads", threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    ray_module = import_ray() if ray else None
    outcomes: dict[Path, RunOutcome] = {}
    pending = []
    for run in runs:
        known = _finished(experiment, run)
        if known is not None:
            outcomes[run.run_dir] = known
        else:
            pending.append(run)
    skipped = sum(o.status == "skipped" for o in outcomes.values())
    bar = _Progress(len(runs), skipped, progress)
    for outcome in outcomes.values():
        if outcome.status == "failed":  # another run's directory: reported, not run
            bar.update(outcome)
    try:
        if pending and ray_module is not None:
            done = _on_ray(
                ray_module,
                experiment,
                pending,
                workers,
                threads,
                ray_address,
                checkpoint_seconds,
                bar.update,
            )
        elif pending:
            done = _on_pool(experiment, pending, workers, threads, checkpoint_seconds, bar.update)
        else:
            done = []
    finally:
        bar.close()
    outcomes.update((o.run_dir, o) for o in done)
    return [outcomes[run.run_dir] for run in runs]


def _arguments(
    experiment: Experiment, run: SweepRun, threads: int, checkpoint_seconds: float | None
) -> tuple[str, dict[str, Any], str, int, float | None]:
    # absolute: a worker's current directory need not be ours
    return (
        experiment.name,
        config_to_dict(run.config),
        str(run.run_dir.absolute()),
        threads,
        checkpoint_seconds,
    )


def _relative(outcome: RunOutcome, run: SweepRun) -> RunOutcome:
    return dataclasses.replace(outcome, run_dir=run.run_dir)


def _on_pool(
    experiment: Experiment,
    runs: Sequence[SweepRun],
    workers: int,
    threads: int,
    checkpoint_seconds: float | None,
    report: Callable[[RunOutcome], None],
) -> list[RunOutcome]:
    context = multiprocessing.get_context("spawn")  # no forked torch state, same on every OS
    outcomes = []
    with ProcessPoolExecutor(max_workers=min(workers, len(runs)), mp_context=context) as pool:
        futures: dict[Future[RunOutcome], SweepRun] = {
            pool.submit(run_point, *_arguments(experiment, run, threads, checkpoint_seconds)): run
            for run in runs
        }
        try:
            remaining = set(futures)
            while remaining:
                finished, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                for future in finished:
                    run = futures[future]
                    try:
                        outcome = _relative(future.result(), run)
                    except BrokenProcessPool:
                        outcome = RunOutcome(
                            run.run_dir,
                            "failed",
                            "a worker process died (killed, or out of memory); rerun the "
                            "sweep to resume",
                        )
                    outcomes.append(outcome)
                    report(outcome)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return outcomes


def import_ray() -> Any:
    """The ``ray`` module; an ``ImportError`` naming ``pip install 'latentgrad[ray]'`` without it."""
    try:
        import ray
    except ModuleNotFoundError:
        raise ImportError(
            f"--ray needs the ray package, which is not installed; {RAY_HINT}"
        ) from None
    return ray


def _on_ray(
    ray: Any,
    experiment: Experiment,
    runs: Sequence[SweepRun],
    workers: int,
    threads: int,
    address: str | None,
    checkpoint_seconds: float | None,
    report: Callable[[RunOutcome], None],
) -> list[RunOutcome]:
    started = not ray.is_initialized()
    if started:
        if address is not None:
            ray.init(address=address)
        else:
            ray.init(
                num_cpus=workers * threads, include_dashboard=False, logging_level=logging.WARNING
            )
    try:
        task = ray.remote(num_cpus=threads)(run_point)
        refs = {
            task.remote(*_arguments(experiment, run, threads, checkpoint_seconds)): run
            for run in runs
        }
        outcomes = []
        remaining = list(refs)
        while remaining:
            finished, remaining = ray.wait(remaining, num_returns=1)
            for ref in finished:
                run = refs[ref]
                try:
                    outcome = _relative(ray.get(ref), run)
                except Exception as err:  # the worker died: Ray's error, on one line
                    outcome = RunOutcome(run.run_dir, "failed", _error_line(err).split(" ***")[0])
                outcomes.append(outcome)
                report(outcome)
        return outcomes
    finally:
        if started:
            ray.shutdown()


def format_summary(outcomes: Sequence[RunOutcome], metric: str | None = None) -> str:
    """The sweep's summary: a line per run (status, directory, test metric or error), then the
    counts.

    Args:
        outcomes: the outcomes (:func:`run_sweep`).
        metric: the test metric to show (e.g. the experiment's primary metric).

    Returns:
        The text, ending with a newline.

    Example:
        >>> print(format_summary([RunOutcome(Path("runs/a"), "done", test={"nll": 90.5}),
        ...                       RunOutcome(Path("runs/b"), "failed", "ValueError: bad")], "nll"),
        ...       end="")
        done     runs/a  test nll 90.5
        failed   runs/b  ValueError: bad
        2 runs: 1 done, 1 failed
    """
    lines = []
    for o in outcomes:
        detail = o.error or ""
        if not detail and metric and o.test and metric in o.test:
            detail = f"test {metric} {o.test[metric]:.6g}"
        lines.append(f"{o.status:<8} {o.run_dir}  {detail}".rstrip())
    counts = {
        s: sum(o.status == s for o in outcomes) for s in ("done", "resumed", "skipped", "failed")
    }
    shown = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    lines.append(f"{len(outcomes)} runs: {shown}" if outcomes else "0 runs")
    return "\n".join(lines) + "\n"
