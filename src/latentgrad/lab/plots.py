"""Figures of runs, drawn with matplotlib's Agg canvas directly (no pyplot, no global state)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latentgrad.lab.rundir import read_metrics

if TYPE_CHECKING:
    from latentgrad.lab.runs import RunInfo


class MissingExtraWarning(UserWarning):
    """An optional part of a run or report (figures) was skipped: its library is missing."""


def matplotlib_available() -> bool:
    """Whether matplotlib can be imported (it comes with ``latentgrad[experiments]``).

    Example:
        >>> isinstance(matplotlib_available(), bool)
        True
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def new_figure(figsize: tuple[float, float] = (6.0, 4.0)) -> Any:
    """A matplotlib ``Figure`` on an Agg canvas, made without pyplot (no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write ``loss.png`` (training loss) and ``valid.png`` (validation metric) against epoch.

    Args:
        run_dir: a run directory with its ``config.json`` and ``metrics.jsonl``.

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


def plot_bands(
    series: Sequence[tuple[str, Sequence[RunInfo]]],
    name: str,
    metric: str,
    out_dir: str | Path,
) -> list[Path]:
    """Write ``<name>-valid.png`` (validation ``metric``) and ``<name>-loss.png`` (training
    loss) against epoch: one line per series, the mean over its runs (seeds), with a band from
    the smallest to the largest value when it has several runs.

    Args:
        series: ``(label, runs)`` pairs, e.g. the rows of a report at their chosen settings.
        name: the figure's title and file name prefix (the experiment).
        metric: the validation metric.
        out_dir: the folder to write to.

    Returns:
        The paths written.
    """
    out_dir = Path(out_dir)
    paths = []
    for suffix, section, key, ylabel in (
        ("valid", "valid", metric, f"validation {metric}"),
        ("loss", "train", "loss", "training loss (epoch mean)"),
    ):
        fig = new_figure((7.0, 4.5))
        ax = fig.add_subplot()
        for label, runs in series:
            xs, mean, low, high = seed_band([r.history for r in runs], section, key)
            if not xs:
                continue
            (line,) = ax.plot(xs, mean, label=f"{label} (n={len(runs)})")
            if len(runs) > 1:
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


def seed_band(
    histories: Sequence[Sequence[Mapping[str, Any]]], section: str, key: str
) -> tuple[list[int], list[float], list[float], list[float]]:
    """Per epoch: the mean, minimum and maximum of ``record[section][key]`` over the histories
    (one per seed) that have it.

    Example:
        >>> runs = [[{"epoch": 1, "valid": {"nll": 3.0}}], [{"epoch": 1, "valid": {"nll": 5.0}}]]
        >>> seed_band(runs, "valid", "nll")
        ([1], [4.0], [3.0], [5.0])
    """
    per_epoch: dict[int, list[float]] = {}
    for history in histories:
        for rec in history:
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
