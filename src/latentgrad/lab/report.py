"""Comparison tables and figures from run directories and results records (``latentgrad report``).

Runs of the same experiment whose configs differ only in the seed are one *setting*; its
metrics are summarized over the seeds (mean ± sample standard deviation, the seed count, and a
95% confidence interval from the t-distribution). With ``select`` (e.g. ``["lr"]``), the settings
that differ only in those keys compete, and each row shows the one with the best mean validation
metric (``by``, e.g. ``"valid.nll"``) with its test metrics: the model-selection protocol of
Jang et al. (2017), who pick the learning rate per estimator on the validation set. Keys are
config fields or estimator options (``config.estimator_options``). Runs without
``results.json`` are listed as unfinished.

Tables render as markdown, CSV (one column per statistic, full precision) and LaTeX.

Example:
    >>> s = Stat((1.0, 2.0, 3.0))
    >>> s.text(), [round(x, 3) for x in s.interval()]
    ('2.0 ± 1.0 (n=3)', [-0.484, 4.484])
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from latentgrad.lab.plots import MissingExtraWarning, matplotlib_available, plot_bands
from latentgrad.lab.rundir import (
    RunFileError,
    ensure_writable_directory,
    read_json_file,
)
from latentgrad.lab.runs import RunInfo, collect_runs

#: Output formats of a table.
Format = Literal["md", "csv", "tex"]
FORMATS: tuple[Format, ...] = ("md", "csv", "tex")

#: Columns a table can show (``columns=``), in their order; ``paper`` needs ``paper=``.
COLUMNS = ("seeds", "test", "ci", "paper", "valid", "time", "evals", "epochs")

# Config fields that never tell settings apart: the seed (runs of one setting), where the data
# lives on a machine, and how often the validation curve is sampled (validation draws from its own
# random stream, so training and the test metric do not depend on it).
_NOT_A_SETTING = ("seed", "data", "eval_every")


# ---------------------------------------------------------------------------------------------
# Statistics

# Two-sided 95% quantiles of Student's t, t_{0.975}(df), for df = 1..30 (then 40, 60, 120, inf).
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip
_T975_TAIL = ((30, 2.0423), (40, 2.0211), (60, 2.0003), (120, 1.9799), (math.inf, 1.9600))


def t_quantile_95(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (4 decimals).

    Tabulated for ``df`` up to 30; beyond, interpolated linearly in ``1/df`` between 40, 60,
    120 and infinity (error below 1e-3).

    Raises:
        ValueError: if ``df < 1``.

    Example:
        >>> t_quantile_95(1), t_quantile_95(9), t_quantile_95(10**9)
        (12.7062, 2.2622, 1.96)
    """
    if df < 1:
        raise ValueError(f"df must be at least 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    for (d0, t0), (d1, t1) in itertools.pairwise(_T975_TAIL):
        if df <= d1:
            w = (1 / d0 - 1 / df) / (1 / d0 - 1 / d1)
            return round(t0 + w * (t1 - t0), 4)
    return 1.96


@dataclass(frozen=True)
class Stat:
    """Values of one metric over the seeds of a setting.

    Attributes:
        values: one value per seed (non-finite values are kept and make the mean non-finite).
        digits: significant digits of a value shown alone.
    """

    values: tuple[float, ...]
    digits: int = 4

    @property
    def n(self) -> int:
        """The number of values (seeds)."""
        return len(self.values)

    @property
    def mean(self) -> float:
        """The mean (NaN without values)."""
        return sum(self.values) / self.n if self.values else math.nan

    @property
    def std(self) -> float:
        """The sample standard deviation (NaN with fewer than two values)."""
        if self.n < 2:
            return math.nan
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (self.n - 1))

    def interval(self) -> tuple[float, float] | None:
        """The 95% confidence interval of the mean (t-distribution); ``None`` below 2 values."""
        if self.n < 2:
            return None
        half = t_quantile_95(self.n - 1) * self.std / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    def text(self) -> str:
        """``mean ± std (n=N)``; ``–`` without values."""
        if not self.values:
            return "–"
        return f"{mean_std(self.values, self.digits)} (n={self.n})"

    def interval_text(self) -> str:
        """``[low, high]`` to the decimals of :meth:`text`; ``–`` below two values."""
        ci = self.interval()
        if ci is None or not all(map(math.isfinite, ci)):
            return "–"
        decimals = _decimals(self.std) if self.std > 0 else 1
        return f"[{ci[0]:.{decimals}f}, {ci[1]:.{decimals}f}]"


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
    decimals = _decimals(std)
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def _decimals(std: float) -> int:
    return max(0, min(8, 1 - math.floor(math.log10(std))))


def _fmt(x: float, digits: int) -> str:
    if math.isfinite(x) and x == int(x) and abs(x) < 1e15:
        return str(int(x))
    if math.isfinite(x) and abs(x) >= 10 ** (digits - 1):
        return f"{x:.1f}"
    return f"{x:.{digits}g}"


# ---------------------------------------------------------------------------------------------
# Model selection


def metric_value(run: RunInfo, spec: str) -> float | None:
    """The value of metric ``spec`` in a finished run's results (``None``: not there).

    ``spec`` is ``SECTION.METRIC`` with ``SECTION`` one of ``test``, ``valid`` (the last
    evaluation, ``valid_final``), ``valid_best`` or ``train`` (``train_final``), or a top-level
    results key such as ``time_per_epoch``.

    Example:
        >>> run = RunInfo(Path("r"), "toy", "mse", {}, {"valid_final": {"mse": 0.5}, "epochs": 3})
        >>> metric_value(run, "valid.mse"), metric_value(run, "epochs"), metric_value(run, "test.mse")
        (0.5, 3.0, None)
    """
    results = run.results or {}
    section, _, name = spec.partition(".")
    if not name:
        value = results.get(section)
    else:
        block = results.get(_SECTIONS.get(section, section))
        value = block.get(name) if isinstance(block, dict) else None
    return float(value) if isinstance(value, (int, float)) and value is not None else None


_SECTIONS = {"valid": "valid_final", "train": "train_final"}


def metric_spec(metric: str) -> str:
    """``SECTION.METRIC`` for a metric of ``--metrics``: a bare name is a test metric.

    Example:
        >>> metric_spec("nll"), metric_spec("valid.gradvar/sf/all")
        ('test.nll', 'valid.gradvar/sf/all')
    """
    section = metric.partition(".")[0]
    return metric if section in ("test", "valid", "valid_best", "train") else f"test.{metric}"


def _check_metric(runs: Sequence[RunInfo], spec: str, what: str) -> None:
    if any(metric_value(r, spec) is not None for r in runs):
        return
    known = sorted(
        {
            f"{s}.{k}"
            for r in runs
            for s in ("test", "valid", "valid_best")
            for k in (r.results or {}).get(_SECTIONS.get(s, s)) or {}
        }
    )
    raise ValueError(f"{what} {spec!r}: no run has it; known: {', '.join(known) or 'none'}")


@dataclass
class Cell:
    """One setting chosen for a table cell: its key, the competing settings, the chosen runs.

    Attributes:
        key: the config (without the seed and the selected keys) the cell stands for.
        chosen: the selected keys' values at the chosen setting.
        runs: the runs (seeds) of the chosen setting.
        candidates: the mean selection metric of every competing setting (JSON of the
            selected values -> mean).
    """

    key: dict[str, Any]
    chosen: dict[str, Any]
    runs: list[RunInfo]
    candidates: dict[str, float] = field(default_factory=dict)


def select(
    runs: Sequence[RunInfo],
    keys: Sequence[str] = (),
    by: str | None = None,
    maximize: bool = False,
) -> list[Cell]:
    """Per setting of everything but the seed and ``keys``: the values of ``keys`` whose runs
    have the best mean ``by`` metric over their seeds.

    Args:
        runs: finished runs of one experiment.
        keys: the config fields or estimator options to select (e.g. ``["lr"]``); empty: every
            setting is its own cell.
        by: the selection metric (see :func:`metric_value`); default ``valid.<primary metric>``.
        maximize: whether a larger ``by`` is better (default: smaller, like a NLL).

    Returns:
        One :class:`Cell` per setting of the other keys, in the order first seen.

    Raises:
        ValueError: if a key is in no run's config, or no run has the ``by`` metric.
    """
    if not runs:
        return []
    by = by or f"valid.{runs[0].primary_metric}"
    flat = [r.settings() for r in runs]
    for k in keys:
        if not any(k in s for s in flat):
            known = sorted({name for s in flat for name in s})
            raise ValueError(
                f"--select {k!r} is not a config field or estimator option of the runs; known: {', '.join(known)}"
            )
    if keys:
        _check_metric(runs, by, "--by")
    groups: dict[str, dict[str, list[RunInfo]]] = {}
    for run, settings in zip(runs, flat, strict=True):
        rest = {k: v for k, v in settings.items() if k not in _NOT_A_SETTING and k not in keys}
        chosen = {k: settings.get(k) for k in keys}
        group = groups.setdefault(_canon(rest), {})
        group.setdefault(_canon(chosen), []).append(run)
    cells = []
    for group_key, candidates in groups.items():
        means = {}
        for cand_key, members in candidates.items():
            values = [v for r in members if (v := metric_value(r, by)) is not None]
            finite = [v for v in values if math.isfinite(v)]
            means[cand_key] = sum(finite) / len(finite) if finite else math.nan
        ranked = sorted(
            candidates,
            key=lambda c: (math.isnan(means[c]), -means[c] if maximize else means[c]),
        )
        best = ranked[0]
        members = sorted(candidates[best], key=lambda r: (r.config.get("seed", 0), str(r.path)))
        cells.append(Cell(json.loads(group_key), json.loads(best), members, means))
    return cells


def _canon(d: Mapping[str, Any]) -> str:
    return json.dumps(d, sort_keys=True)


# ---------------------------------------------------------------------------------------------
# Tables


@dataclass
class Column:
    """A table column.

    Attributes:
        name: the header.
        kind: ``"text"``, ``"stat"`` (a :class:`Stat`: mean ± std (n)) or ``"ci"`` (the 95%
            interval of a :class:`Stat`).
    """

    name: str
    kind: Literal["text", "stat", "ci"] = "text"


Value = str | Stat | None


@dataclass
class Table:
    """A rendered-agnostic table: columns and rows of cells (text, :class:`Stat` or ``None``).

    Attributes:
        experiment: the experiment the runs belong to.
        columns: the columns.
        rows: one list of cells per row, aligned with ``columns``.
        series: per row, its label and the runs of its chosen settings (for the figures).
    """

    experiment: str
    columns: list[Column]
    rows: list[list[Value]]
    series: list[tuple[str, list[RunInfo]]] = field(default_factory=list)

    def render(self, fmt: Format) -> str:
        """The table as markdown (``"md"``), CSV (``"csv"``) or a LaTeX ``tabular`` (``"tex"``).

        Raises:
            ValueError: for another format.
        """
        if fmt == "md":
            return _markdown(self)
        if fmt == "csv":
            return _csv(self)
        if fmt == "tex":
            return _latex(self)
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def _value_text(column: Column, value: Value) -> str:
    if value is None:
        return "—"
    if isinstance(value, Stat):
        return value.interval_text() if column.kind == "ci" else value.text()
    return value


def _markdown(table: Table) -> str:
    header = "| " + " | ".join(c.name for c in table.columns) + " |"
    align = "|" + "|".join("---" if c.kind == "text" else "---:" for c in table.columns) + "|"
    lines = [header, align]
    for row in table.rows:
        cells = [
            _value_text(c, v).replace("|", "\\|") for c, v in zip(table.columns, row, strict=True)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _csv(table: Table) -> str:
    header = ["experiment"]
    for c in table.columns:
        if c.kind == "stat":
            header += [c.name, f"{c.name} std", f"{c.name} n"]
        elif c.kind == "ci":
            header += [f"{c.name} low", f"{c.name} high"]
        else:
            header.append(c.name)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in table.rows:
        out: list[object] = [table.experiment]
        for c, v in zip(table.columns, row, strict=True):
            stat = v if isinstance(v, Stat) else Stat(())
            if c.kind == "stat":
                out += [_num(stat.mean), _num(stat.std), stat.n]
            elif c.kind == "ci":
                ci = stat.interval()
                out += [_num(ci[0]), _num(ci[1])] if ci else ["", ""]
            else:
                out.append("" if v is None else str(v))
        writer.writerow(out)
    return buf.getvalue()


def _num(x: float) -> str:
    return "" if math.isnan(x) else repr(float(x))


_TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped.

    Example:
        >>> latex_escape("sf_loo & 5%")
        'sf\\\\_loo \\\\& 5\\\\%'
    """
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)


def _latex(table: Table) -> str:
    spec = "".join("l" if c.kind == "text" else "r" for c in table.columns)
    lines = [f"\\begin{{tabular}}{{{spec}}}", r"\hline"]
    lines.append(" & ".join(latex_escape(c.name) for c in table.columns) + r" \\")
    lines.append(r"\hline")
    for row in table.rows:
        cells = []
        for c, v in zip(table.columns, row, strict=True):
            text = latex_escape(_value_text(c, v))
            cells.append(text.replace("±", r"$\pm$").replace("—", "--").replace("–", "--"))
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class PaperValues:
    """Published numbers to show beside a table (``paper=``), read from a JSON file.

    The file holds ``{"source": ..., "metric": "test.nll", "entries": [{"estimator": "gs",
    "latent": "categorical", "value": 101.5}, ...]}``: an entry applies to a row (or pivot
    column) whose settings (and ``experiment``) equal all its keys but ``value``.

    Attributes:
        source: where the numbers come from (cited under the table).
        metric: the metric they are.
        entries: the entries.
    """

    source: str
    metric: str
    entries: tuple[Mapping[str, Any], ...]

    @classmethod
    def read(cls, path: str | Path) -> PaperValues:
        """Read a paper-values file.

        Raises:
            RunFileError: if it cannot be read or does not have that layout.
        """
        path = Path(path)
        data = read_json_file(path, "give --paper a JSON file of published values")
        ok = isinstance(data, dict) and isinstance(data.get("entries"), list)
        ok = ok and all(isinstance(e, dict) and "value" in e for e in data["entries"])
        if not ok:
            raise RunFileError(
                f"{path} is not a paper-values file: expected an object with 'source', "
                "'metric' and 'entries' (objects with a 'value')",
                path,
            )
        return cls(str(data.get("source", "")), str(data.get("metric", "")), tuple(data["entries"]))

    def lookup(self, settings: Mapping[str, Any]) -> str | None:
        """The value of the first entry that matches ``settings``, as text (``None``: none)."""
        for entry in self.entries:
            if all(settings.get(k) == v for k, v in entry.items() if k != "value"):
                return str(entry["value"])
        return None


def build_table(
    runs: Sequence[RunInfo],
    select_keys: Sequence[str] = (),
    by: str | None = None,
    *,
    maximize: bool = False,
    metrics: Sequence[str] = (),
    pivot: str | None = None,
    columns: Sequence[str] = COLUMNS,
    paper: PaperValues | None = None,
) -> Table:
    """The comparison table of the finished runs of one experiment.

    One row per setting of the config without the seed, ``select_keys`` and ``pivot``, labelled
    by the estimator and the keys that vary between rows; with ``pivot`` (e.g. ``"latent"``),
    one group of columns per value of that key. Rows are sorted by the first test metric.

    Args:
        runs: finished runs of one experiment.
        select_keys: keys chosen per row by ``by`` (see :func:`select`).
        by: the selection metric (default ``valid.<primary metric>``).
        maximize: whether a larger ``by`` (and test metric) is better.
        metrics: the metrics shown (default: the primary metric): test metrics by name, or
            ``SECTION.METRIC`` for the others (``valid.M`` at the last evaluation, ...).
        pivot: a key whose values become column groups.
        columns: which of :data:`COLUMNS` to show, besides the label and the selected keys.
        paper: published values for the ``paper`` column.

    Returns:
        The :class:`Table`.

    Raises:
        ValueError: for an unknown column, key or metric.
    """
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise ValueError(f"--columns: unknown {', '.join(unknown)}; known: {', '.join(COLUMNS)}")
    if not runs:
        raise ValueError("no finished runs to tabulate")
    primary = runs[0].primary_metric
    by_spec = by or f"valid.{primary}"
    metrics = list(metrics) or [primary]
    specs = [metric_spec(m) for m in metrics]
    for spec in specs:
        _check_metric(runs, spec, "--metrics")
    if pivot is not None and not any(pivot in r.settings() for r in runs):
        raise ValueError(f"--pivot {pivot!r} is not a config field or estimator option of the runs")
    cells = select(runs, select_keys, by_spec, maximize)
    pivot_values: list[Any] = [None]
    if pivot is not None:
        pivot_values = sorted({json.dumps(c.key.get(pivot)) for c in cells})
        pivot_values = [json.loads(v) for v in pivot_values]
    rows: dict[str, dict[Any, Cell]] = {}
    for c in cells:
        rest = {k: v for k, v in c.key.items() if k != pivot}
        pivot_value = c.key.get(pivot) if pivot is not None else None
        rows.setdefault(_canon(rest), {})[json.dumps(pivot_value)] = c
    options = {k for r in runs for k in r.settings()} - {k for r in runs for k in r.config}
    labels = _labels([json.loads(k) for k in rows], options)

    def group(name: str, value: Any) -> str:
        return name if pivot is None else f"{_show(value)}: {name}"

    header = [Column("estimator")]
    for value in pivot_values:
        header += [Column(group(k, value)) for k in select_keys]
        for col in columns:
            if col == "seeds":
                header.append(Column(group("seeds", value)))
            elif col == "test":
                header += [
                    Column(group(spec.replace(".", " ", 1), value), "stat") for spec in specs
                ]
            elif col == "ci":
                shown = specs[0].replace(".", " ", 1)
                header.append(Column(group(f"95% CI {shown}", value), "ci"))
            elif col == "paper" and paper is not None:
                header.append(Column(group("paper", value)))
            elif col == "valid":
                header.append(Column(group(by_spec.replace(".", " ", 1), value), "stat"))
            elif col == "time":
                header.append(Column(group("s/epoch", value), "stat"))
            elif col == "evals":
                header.append(Column(group("loss evals/step", value), "stat"))
            elif col == "epochs":
                header.append(Column(group("epochs", value), "stat"))

    table_rows: list[tuple[float, list[Value], str, str]] = []
    for (row_key, by_pivot), label in zip(rows.items(), labels, strict=True):
        key = json.loads(row_key)
        out: list[Value] = [label]
        sort_value = math.nan
        for value in pivot_values:
            cell = by_pivot.get(json.dumps(value))
            out += [_show(cell.chosen[k]) if cell else None for k in select_keys]
            runs_here = cell.runs if cell else []
            test_stats = [_stat(runs_here, spec) for spec in specs]
            if math.isnan(sort_value) and test_stats[0].values:
                sort_value = test_stats[0].mean
            for col in columns:
                if col == "seeds":
                    out.append(", ".join(str(r.config.get("seed")) for r in runs_here) or None)
                elif col == "test":
                    out += [s if s.values else None for s in test_stats]
                elif col == "ci":
                    out.append(test_stats[0] if test_stats[0].values else None)
                elif col == "paper" and paper is not None:
                    settings = {**key, "experiment": runs[0].experiment}
                    if pivot is not None:
                        settings[pivot] = value
                    out.append(paper.lookup(settings))
                elif col in ("valid", "time", "evals", "epochs"):
                    spec = {"valid": by_spec, "time": "time_per_epoch"}.get(col, col)
                    spec = {"evals": "loss_evals_per_step"}.get(spec, spec)
                    s = _stat(runs_here, spec, digits=3 if col == "time" else 4)
                    out.append(s if s.values else None)
        if math.isnan(sort_value):
            sort_value = math.inf
        table_rows.append((-sort_value if maximize else sort_value, out, label, row_key))
    table_rows.sort(key=lambda t: t[0])
    series = []
    for _, _, label, row_key in table_rows:
        for value in pivot_values:
            cell = rows[row_key].get(json.dumps(value))
            if cell:
                series.append((label if pivot is None else f"{label}, {_show(value)}", cell.runs))
    return Table(runs[0].experiment, header, [t[1] for t in table_rows], series)


def _labels(keys: list[dict[str, Any]], options: set[str]) -> list[str]:
    """Row labels: the estimator, then the config fields that vary between rows and the
    estimator options that vary between rows of the same estimator. A field some rows lack (a
    run older than the field) varies only if the rows that have it differ in it, unless two
    rows would otherwise get the same label: then it is shown, ``—`` where it is missing."""

    def label(key: dict[str, Any], absent_too: bool) -> str:
        same = [k for k in keys if k.get("estimator") == key.get("estimator")]
        shown = []
        for name in sorted({n for k in same for n in k} if absent_too else key):
            pool = same if name in options else keys
            values = {json.dumps(k.get(name)) for k in pool if absent_too or name in k}
            if name != "estimator" and len(values) > 1:
                shown.append(name)
        extra = ", ".join(f"{name}={_show(key[name]) if name in key else '—'}" for name in shown)
        return f"{key.get('estimator')} ({extra})" if extra else str(key.get("estimator"))

    labels = [label(key, absent_too=False) for key in keys]
    repeated = {x for x in labels if labels.count(x) > 1}
    return [
        label(k, absent_too=True) if x in repeated else x for k, x in zip(keys, labels, strict=True)
    ]


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _stat(runs: Sequence[RunInfo], spec: str, digits: int = 4) -> Stat:
    values = tuple(v for r in runs if (v := metric_value(r, spec)) is not None)
    return Stat(values, digits)


# ---------------------------------------------------------------------------------------------
# The report


def report(
    run_dirs: Sequence[str | Path],
    out: str | Path | None = None,
    *,
    select_keys: Sequence[str] = (),
    by: str | None = None,
    maximize: bool = False,
    metrics: Sequence[str] = (),
    pivot: str | None = None,
    columns: Sequence[str] = COLUMNS,
    paper: str | Path | None = None,
    fmt: Format = "md",
    table_only: bool = False,
) -> str:
    """A comparison of the runs in ``run_dirs`` (run directories, results records, or folders).

    One section per experiment with the table of :func:`build_table` (every statistic over the
    seeds: mean ± std (n=seeds); the 95% confidence interval of the first test metric), a line on
    how settings were chosen, the unfinished runs, and (with ``out``) figures.

    Args:
        run_dirs: run directories, results records, or folders searched recursively for them.
        out: if given, a folder to write ``report.md``, ``report.csv``, ``report.tex`` and, per
            experiment, ``<experiment>-valid.png`` (validation metric against epoch, one line per
            row at its chosen setting: the mean over seeds with a min–max band) and
            ``<experiment>-loss.png`` (training loss).
        select_keys: keys chosen per row by the mean validation metric (see :func:`select`).
        by: the selection metric (default ``valid.<primary metric>``).
        maximize: whether a larger ``by`` is better.
        metrics: the test metrics shown (default: the primary metric).
        pivot: a key whose values become column groups (e.g. ``"latent"``).
        columns: which of :data:`COLUMNS` to show.
        paper: a JSON file of published values (see :class:`PaperValues`) for a ``paper`` column.
        fmt: the returned format, ``"md"``, ``"csv"`` or ``"tex"``.
        table_only: return the tables alone (no headings, notes or unfinished runs), as the
            README's generated blocks hold them.

    Returns:
        The report in ``fmt``.

    Without matplotlib the figures are skipped with a
    :class:`~latentgrad.lab.plots.MissingExtraWarning`; the tables are still written.

    Raises:
        FileNotFoundError: if a path does not exist or no run is found.
        RunFileError: if a file of a run cannot be read, or ``out`` cannot be written.
        ValueError: for an unknown key, metric, column or format.
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    runs = collect_runs(run_dirs)
    paper_values = PaperValues.read(paper) if paper is not None else None
    by_experiment: dict[str, list[RunInfo]] = {}
    for r in runs:
        by_experiment.setdefault(r.experiment, []).append(r)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        ensure_writable_directory(out_dir, "the report", "choose another --out")
    draw = out_dir is not None and matplotlib_available()
    if out_dir is not None and not draw:
        warnings.warn(
            f"matplotlib is not installed, so {out_dir} gets the tables without figures; "
            "pip install 'latentgrad[experiments]' for them",
            MissingExtraWarning,
            stacklevel=2,
        )
    tables: list[Table] = []
    sections = []
    figures: list[Path] = []
    for name in sorted(by_experiment):
        finished = [r for r in by_experiment[name] if r.finished]
        unfinished = [r for r in by_experiment[name] if not r.finished]
        table = None
        if finished:
            table = build_table(
                finished,
                select_keys,
                by,
                maximize=maximize,
                metrics=metrics,
                pivot=pivot,
                columns=columns,
                paper=paper_values,
            )
            tables.append(table)
        sections.append(
            _section(
                name, (finished or unfinished)[0], table, unfinished, select_keys, by, paper_values
            )
        )
        if out_dir is not None and draw and table is not None:
            primary = finished[0].primary_metric
            figures += plot_bands(table.series, name, primary, out_dir)
    markdown = "\n\n".join(sections) + "\n"
    if figures:
        markdown += "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in figures) + "\n"
    rendered = {
        "md": markdown,
        "csv": _join_csv([t.render("csv") for t in tables]),
        "tex": "\n".join(t.render("tex") for t in tables),
    }
    if out_dir is not None:
        for suffix, text in rendered.items():
            (out_dir / f"report.{suffix}").write_text(text)
    if table_only:
        if fmt == "csv":
            return rendered["csv"]
        return "\n".join(t.render(fmt) for t in tables)
    return rendered[fmt]


def _join_csv(parts: list[str]) -> str:
    if not parts:
        return ""
    out = [parts[0]]
    for p in parts[1:]:  # same header only once; another header starts a new block
        head, _, body = p.partition("\n")
        out.append(body if head == parts[0].partition("\n")[0] else p)
    return "".join(out)


def _section(
    name: str,
    first: RunInfo,
    table: Table | None,
    unfinished: list[RunInfo],
    select_keys: Sequence[str],
    by: str | None,
    paper: PaperValues | None,
) -> str:
    metric = first.primary_metric
    how = "; valid is the last evaluation"
    if select_keys:
        by_text = by or f"valid.{metric}"
        how = (
            f"; per row, the {', '.join(select_keys)} with the best mean `{by_text}` over seeds "
            "(its test metrics shown)"
        )
    lines = [
        f"## {name}",
        "",
        f"Sorted by test `{metric}` (lower is better); mean ± std (n=seeds){how}; 95% CI of "
        "the mean (t-distribution); s/epoch is training time.",
        "",
    ]
    lines.append(table.render("md").rstrip("\n") if table is not None else "No finished runs.")
    if paper is not None and paper.source:
        lines += ["", f"Paper: {paper.source}."]
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


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``latentgrad report`` (the command line and the README's table blocks
    parse them with this one definition)."""
    p.add_argument(
        "run_dirs",
        nargs="*",
        metavar="RUN_DIR",
        help="run directories, results records, or folders of them",
    )
    p.add_argument(
        "--select",
        nargs="+",
        metavar="KEY",
        help="config fields or estimator options chosen per row by --by (e.g. lr)",
    )
    p.add_argument(
        "--by",
        metavar="SECTION.METRIC",
        help="selection metric: valid.M (last evaluation), valid_best.M, test.M "
        "(default: valid.<primary metric>)",
    )
    p.add_argument("--maximize", action="store_true", help="a larger --by is better")
    p.add_argument(
        "--metrics",
        metavar="M,...",
        help="metrics shown: test metrics by name, others as SECTION.M (valid.M: last "
        "evaluation; valid_best.M, train.M) (default: the primary test metric)",
    )
    p.add_argument("--pivot", metavar="KEY", help="one group of columns per value of KEY")
    p.add_argument(
        "--columns",
        default=",".join(COLUMNS),
        metavar="C,...",
        help=f"columns shown, of {','.join(COLUMNS)} (default: all)",
    )
    p.add_argument("--paper", metavar="FILE", help="JSON of published values for the paper column")
    p.add_argument(
        "--format",
        default="md",
        metavar="md,csv,tex",
        help="what is printed: markdown, CSV, LaTeX, or several comma-separated (default: md)",
    )
    p.add_argument(
        "--table-only",
        action="store_true",
        help="only the tables (no headings or notes), as the README's generated blocks hold them",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="write report.md, report.csv, report.tex and comparison figures (PNG) here",
    )
    p.add_argument(
        "--update-readme",
        action="store_true",
        help="regenerate the tables of README.md and docs/*.md from their commands (run in the "
        "repository root)",
    )


def report_from_args(args: argparse.Namespace) -> str:
    """The text ``latentgrad report`` prints for parsed arguments (:func:`add_report_arguments`).

    Raises:
        ValueError: no run directories, or a ``--format`` other than md, csv, tex.
    """
    if not args.run_dirs:
        raise ValueError("name run directories or results records (or give --update-readme)")
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in ("md", "csv", "tex")]
    if bad or not formats:
        raise ValueError(f"--format takes md, csv, tex (comma-separated), got {args.format!r}")
    columns = [c.strip() for c in args.columns.split(",") if c.strip()]
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else []
    texts = [
        report(
            args.run_dirs,
            args.out if i == 0 else None,
            select_keys=args.select or (),
            by=args.by,
            maximize=args.maximize,
            metrics=metrics,
            pivot=args.pivot,
            columns=columns,
            paper=args.paper,
            fmt=fmt,
            table_only=args.table_only,
        )
        for i, fmt in enumerate(formats)
    ]
    return "\n".join(texts)
