"""Comparison tables and figures from run directories (``latentgrad report``).

Runs of the same experiment whose configs differ only in the seed form one row: the metrics
are averaged over the seeds (mean ± sample standard deviation). Rows are sorted by the
experiment's primary test metric (lower is better). Runs without ``results.json`` are listed
as unfinished.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentgrad.lab.plots import MissingExtraWarning, matplotlib_available, new_figure
from latentgrad.lab.rundir import (
    RESULTS_HINT,
    RunFileError,
    ensure_writable_directory,
    read_json_file,
    read_metrics,
)


@dataclass
class RunInfo:
    """What a report reads from one run directory.

    Attributes:
        path: the run directory.
        experiment: experiment name.
        primary_metric: the metric rows are sorted by.
        config: the resolved config (JSON dict).
        results: the contents of ``results.json`` (``None``: unfinished).
        history: the records of ``metrics.jsonl``.
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
    return RunInfo(
        path=run_dir,
        experiment=str(meta["experiment"]),
        primary_metric=str(meta.get("primary_metric", "nll")),
        config=dict(meta["config"]),
        results=results,
        history=read_metrics(run_dir),
    )


@dataclass
class _Group:
    label: str
    estimator: str
    runs: list[RunInfo]


def report(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> str:
    """A markdown comparison of the runs in ``run_dirs`` (run directories or folders of them).

    One section per experiment, one row per estimator and config (seeds aggregated: mean ± std):
    the primary test metric, the final validation value of the same metric, training seconds
    per epoch, loss evaluations per step and epochs, sorted by the test metric; unfinished runs
    are listed under the table.

    Args:
        run_dirs: run directories, or folders searched recursively for them.
        out: if given, a folder to write ``report.md`` and, per experiment,
            ``<experiment>-valid.png`` (validation metric against epoch, one line per row,
            mean over seeds with the min-max band) and ``<experiment>-loss.png`` (training loss).

    Returns:
        The markdown text.

    Without matplotlib the figures are skipped with a
    :class:`~latentgrad.lab.plots.MissingExtraWarning`; ``report.md`` is still written.

    Raises:
        FileNotFoundError: if a path does not exist or no run directory is found.
        RunFileError: if a file of a run cannot be read, or ``out`` cannot be written.
    """
    paths = find_runs(run_dirs)
    if not paths:
        raise FileNotFoundError(
            "no run directories (with a config.json written by `latentgrad run`) under "
            + ", ".join(map(str, run_dirs))
        )
    runs = [load_run(p) for p in paths]
    by_experiment: dict[str, list[RunInfo]] = {}
    for r in runs:
        by_experiment.setdefault(r.experiment, []).append(r)

    sections = []
    figures: list[Path] = []
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        ensure_writable_directory(out_dir, "the report", "choose another --out")
    draw = out_dir is not None and matplotlib_available()
    if out_dir is not None and not draw:
        warnings.warn(
            f"matplotlib is not installed, so {out_dir} gets report.md without figures; "
            "pip install 'latentgrad[experiments]' for them",
            MissingExtraWarning,
            stacklevel=2,
        )
    for name in sorted(by_experiment):
        exp_runs = by_experiment[name]
        groups = _groups([r for r in exp_runs if r.finished])
        sections.append(_section(name, groups, [r for r in exp_runs if not r.finished]))
        if out_dir is not None and draw and groups:
            figures += _figures(name, groups, out_dir)
    text = "\n\n".join(sections) + "\n"
    if out_dir is not None:
        if figures:
            text += "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in figures) + "\n"
        (out_dir / "report.md").write_text(text)
    return text


def _groups(runs: list[RunInfo]) -> list[_Group]:
    """Runs grouped by their config without the seed, labelled by what tells groups apart."""
    keyed: dict[str, list[RunInfo]] = {}
    for r in runs:
        rest = {k: v for k, v in r.config.items() if k != "seed"}
        keyed.setdefault(json.dumps(rest, sort_keys=True), []).append(r)
    configs = [json.loads(k) for k in keyed]
    names = sorted({k for c in configs for k in c})
    varying = [
        k for k in names if k != "estimator" and len({json.dumps(c.get(k)) for c in configs}) > 1
    ]
    groups = []
    for key, members in keyed.items():
        cfg = json.loads(key)
        extra = ", ".join(f"{k}={json.dumps(cfg.get(k))}" for k in varying)
        estimator = str(cfg.get("estimator"))
        label = f"{estimator} ({extra})" if extra else estimator
        members.sort(key=lambda r: (r.config.get("seed", 0), str(r.path)))
        groups.append(_Group(label, estimator, members))
    metric = runs[0].primary_metric if runs else "nll"
    groups.sort(key=lambda g: _sort_key(_metric_values(g, "test", metric)))
    return groups


def _sort_key(values: list[float]) -> tuple[bool, float]:
    finite = [v for v in values if math.isfinite(v)]
    mean = sum(finite) / len(finite) if finite else math.inf
    return (not finite, mean)


def _metric_values(group: _Group, section: str, metric: str) -> list[float]:
    out = []
    for r in group.runs:
        block = (r.results or {}).get(section) or {}
        if metric in block and block[metric] is not None:
            out.append(float(block[metric]))
    return out


def _field_values(group: _Group, key: str) -> list[float]:
    return [
        float(r.results[key]) for r in group.runs if r.results and r.results.get(key) is not None
    ]


def _section(name: str, groups: list[_Group], unfinished: list[RunInfo]) -> str:
    metric = (groups[0].runs[0] if groups else unfinished[0]).primary_metric
    lines = [
        f"## {name}",
        "",
        f"Sorted by test `{metric}` (lower is better); mean ± std over seeds; valid is the "
        "last evaluation; s/epoch is training time.",
        "",
    ]
    if groups:
        lines += [
            f"| estimator | seeds | test {metric} | valid {metric} | s/epoch | "
            "loss evals/step | epochs |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for g in groups:
            seeds = ", ".join(str(r.config.get("seed")) for r in g.runs)
            cells = [
                g.label,
                seeds,
                mean_std(_metric_values(g, "test", metric)),
                mean_std(_metric_values(g, "valid_final", metric)),
                mean_std(_field_values(g, "time_per_epoch"), digits=3),
                mean_std(_field_values(g, "loss_evals_per_step")),
                mean_std(_field_values(g, "epochs")),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    else:
        lines.append("No finished runs.")
    if unfinished:
        lines += ["", "Unfinished runs:"]
        for r in sorted(unfinished, key=lambda r: str(r.path)):
            done = len(r.history)
            total = r.config.get("epochs", "?")
            lines.append(
                f"- {r.config.get('estimator')} seed {r.config.get('seed')}: "
                f"{done}/{total} epochs (`{r.path}`)"
            )
    return "\n".join(lines)


def mean_std(values: Sequence[float], digits: int = 4) -> str:
    """``mean ± std`` (sample std) with the std to two significant digits; one value alone.

    Example:
        >>> mean_std([1.0, 2.0]), mean_std([95.25]), mean_std([4, 4]), mean_std([])
        ('1.50 ± 0.71', '95.25', '4', '–')
    """
    vals = [float(v) for v in values]
    if not vals:
        return "–"
    mean = sum(vals) / len(vals)
    if len(vals) == 1 or not all(math.isfinite(v) for v in vals):
        return _fmt(mean, digits)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    if std == 0:
        return _fmt(mean, digits)
    decimals = max(0, min(8, 1 - math.floor(math.log10(std))))
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def _fmt(x: float, digits: int) -> str:
    if math.isfinite(x) and x == int(x) and abs(x) < 1e15:
        return str(int(x))
    if math.isfinite(x) and abs(x) >= 10 ** (digits - 1):
        return f"{x:.1f}"
    return f"{x:.{digits}g}"


def _figures(name: str, groups: list[_Group], out_dir: Path) -> list[Path]:
    metric = groups[0].runs[0].primary_metric
    paths = []
    for suffix, section, key, ylabel in (
        ("valid", "valid", metric, f"validation {metric}"),
        ("loss", "train", "loss", "training loss (epoch mean)"),
    ):
        fig = new_figure((7.0, 4.5))
        ax = fig.add_subplot()
        for g in groups:
            xs, mean, low, high = _curve(g.runs, section, key)
            if not xs:
                continue
            (line,) = ax.plot(xs, mean, label=f"{g.label} (n={len(g.runs)})")
            if len(g.runs) > 1:
                ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(ylabel)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        path = out_dir / f"{name}-{suffix}.png"
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths


def _curve(
    runs: list[RunInfo], section: str, key: str
) -> tuple[list[int], list[float], list[float], list[float]]:
    """Per epoch: mean, min and max over the runs that have the value."""
    per_epoch: dict[int, list[float]] = {}
    for r in runs:
        for rec in r.history:
            value = (rec.get(section) or {}).get(key)
            if value is not None:
                per_epoch.setdefault(int(rec["epoch"]), []).append(float(value))
    xs = sorted(per_epoch)
    return (
        xs,
        [sum(per_epoch[x]) / len(per_epoch[x]) for x in xs],
        [min(per_epoch[x]) for x in xs],
        [max(per_epoch[x]) for x in xs],
    )
