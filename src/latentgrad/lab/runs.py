"""The runs a report reads: run directories and results records, as :class:`RunInfo`.

A run directory is what :func:`~latentgrad.lab.runner.run` writes (``config.json``,
``metrics.jsonl``, ``results.json`` once it ends); a *record* is one finished run in a small
JSON file (:mod:`~latentgrad.lab.records` writes them, ``results/`` holds them). Both read the
same way: :func:`collect_runs` finds and loads either below the paths it is given, and
:mod:`~latentgrad.lab.report` makes tables and :mod:`~latentgrad.lab.plots` figures of them.

Example:
    >>> run = RunInfo(Path("r"), "vae", "nll", {"lr": 1e-3, "estimator_options": {"tau": 1}}, None)
    >>> run.finished, run.settings()
    (False, {'lr': 0.001, 'tau': 1})
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentgrad.lab.config import config_class_named, fields_not_read, with_recorded_defaults
from latentgrad.lab.rundir import (
    RESULTS_HINT,
    RUN_FILES,
    RunFileError,
    read_json_file,
    read_metrics,
)

#: The ``format`` field of every record.
RECORD_FORMAT = "latentgrad-record/1"
#: What to do with a record that cannot be read.
RECORD_HINT = "write it again with `latentgrad record RUN_DIR --to DIR`, or remove it"


@dataclass
class RunInfo:
    """What a report reads from one run directory or results record.

    Attributes:
        path: the run directory (or the record file).
        experiment: experiment name.
        primary_metric: the metric rows are sorted by.
        config: the resolved config (JSON dict).
        results: the contents of ``results.json`` (``None``: unfinished).
        history: the records of ``metrics.jsonl`` (one per epoch).
    """

    path: Path
    experiment: str
    primary_metric: str
    config: dict[str, Any]
    results: dict[str, Any] | None
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        """Whether the run wrote its results."""
        return self.results is not None

    def settings(self) -> dict[str, Any]:
        """The config with the estimator options as keys of their own.

        An option whose name is also a config field is kept as ``estimator_options.NAME``.
        """
        flat = {k: v for k, v in self.config.items() if k != "estimator_options"}
        options = self.config.get("estimator_options") or {}
        for key, value in options.items():
            flat[key if key not in flat else f"estimator_options.{key}"] = value
        return flat


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories among ``paths`` and below them (a run directory holds the
    ``config.json`` written by :func:`~latentgrad.lab.runner.run`).

    Raises:
        FileNotFoundError: if a path does not exist.
        RunFileError: if the ``config.json`` of a run directory given directly, or of one with
            the other files of a run beside it, cannot be read.
    """
    found: dict[Path, None] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"no such run directory: {p}")
        candidates = [p / "config.json"] if (p / "config.json").exists() else []
        candidates += sorted(p.rglob("*/config.json")) if p.is_dir() else []
        for c in candidates:
            strict = c.parent == p or any((c.parent / f).exists() for f in _RUN_MARKERS)
            if _is_run_config(c, strict):
                found[c.parent] = None
    return list(found)


# Files only a run directory holds: a config.json beside them belongs to a run.
_RUN_MARKERS = ("metrics.jsonl", "env.json", "checkpoint.pt")
_CONFIG_HINT = "rerun the run with --no-resume, or leave its directory out of the report"


def _is_run_config(path: Path, strict: bool) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        if strict:
            read_json_file(path, _CONFIG_HINT)  # raises RunFileError naming the file
        return False
    return isinstance(data, dict) and "experiment" in data and isinstance(data.get("config"), dict)


def load_run(run_dir: str | Path) -> RunInfo:
    """Read the config, results (if any) and metrics of one run directory.

    Raises:
        RunFileError: if one of its files cannot be read (naming it and what to do).
    """
    run_dir = Path(run_dir)
    meta = read_json_file(run_dir / "config.json", _CONFIG_HINT)
    results_path = run_dir / "results.json"
    results = read_json_file(results_path, RESULTS_HINT) if results_path.exists() else None
    for path, value in ((run_dir / "config.json", meta), (results_path, results)):
        if value is not None and not isinstance(value, dict):
            raise RunFileError(f"{path} does not hold a JSON object; {RESULTS_HINT}", path)
    return _run_info(run_dir, meta, results, read_metrics(run_dir))


def _run_info(
    path: Path, meta: Mapping[str, Any], results: dict[str, Any] | None, history: list[Any]
) -> RunInfo:
    """The :class:`RunInfo` of a run directory's ``config.json`` or a record (``meta``)."""
    return RunInfo(
        path=path,
        experiment=str(meta["experiment"]),
        primary_metric=str(meta.get("primary_metric", "nll")),
        config=recorded_config(meta),
        results=results,
        history=history,
    )


def recorded_config(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The ``"config"`` of a run directory's ``config.json`` or of a record, as the report
    compares runs: with the fields added since it ran that say what it ran with
    (:data:`~latentgrad.lab.config.RECORDED_BEFORE` of its ``"config_class"`` and of its
    estimator's options class), and without
    the fields its estimator's latent family does not read
    (:data:`~latentgrad.lab.config.FOR_LATENTS`)."""
    config = dict(meta["config"])
    cls = config_class_named(meta.get("config_class"))
    if cls is None:
        return config
    config = with_recorded_defaults(cls, config)
    from latentgrad.lab.registry import ESTIMATORS  # (torch and the estimators: lazily)

    entry = ESTIMATORS.get(str(config.get("estimator")))
    options = config.get("estimator_options")
    if entry is not None and isinstance(options, Mapping):  # (options added since, likewise)
        config["estimator_options"] = with_recorded_defaults(type(entry.options), options)
    unread = fields_not_read(cls, entry.latent) if entry is not None else set()
    return {k: v for k, v in config.items() if k not in unread}


def collect_runs(paths: Sequence[str | Path]) -> list[RunInfo]:
    """The runs in ``paths``: run directories, results records (``*.json`` written by
    :func:`~latentgrad.lab.records.write_records`) and folders holding either.

    Raises:
        FileNotFoundError: if a path does not exist or nothing is found.
        RunFileError: if a file of a run or a record cannot be read.
    """
    runs = [load_run(p) for p in find_runs(paths)]
    runs += [load_record(p) for p in find_records(paths)]
    if not runs:
        raise FileNotFoundError(
            "no run directories (with a config.json written by `latentgrad run`) or results "
            "records under " + ", ".join(map(str, paths))
        )
    return runs


def is_record(path: Path) -> bool:
    """Whether ``path`` is a JSON file holding a record."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == RECORD_FORMAT


def find_records(paths: Iterable[str | Path]) -> list[Path]:
    """Record files among ``paths`` and below them (files of run directories excepted).

    Raises:
        FileNotFoundError: if a path does not exist.
    """
    found: dict[Path, None] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"no such run directory or record: {p}")
        candidates = sorted(p.rglob("*.json")) if p.is_dir() else [p]
        for c in candidates:
            if c.suffix == ".json" and c.name not in RUN_FILES and is_record(c):
                found[c] = None
    return list(found)


def load_record(path: str | Path) -> RunInfo:
    """A record as the :class:`RunInfo` a report reads.

    Raises:
        RunFileError: if it cannot be read or is not a record.
    """
    path = Path(path)
    data = read_json_file(path, RECORD_HINT)
    ok = isinstance(data, dict) and data.get("format") == RECORD_FORMAT
    ok = ok and isinstance(data.get("config"), dict) and isinstance(data.get("results"), dict)
    if not ok:
        raise RunFileError(f"{path} is not a results record ({RECORD_FORMAT}); {RECORD_HINT}", path)
    return _run_info(path, data, dict(data["results"]), list(data.get("history") or []))
