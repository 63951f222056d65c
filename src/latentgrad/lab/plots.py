"""Figures of runs, drawn with matplotlib's Agg canvas directly (no pyplot, no global state)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from latentgrad.lab.rundir import read_metrics


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
