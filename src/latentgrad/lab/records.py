"""Results records: the small JSON files in ``results/`` behind every table of the README and docs.

A record is one finished run without its checkpoint: the experiment, the resolved config
(estimator options included), the environment (``env.json`` without machine paths), the final
results and the per-epoch metrics (validation curve, training loss). ``latentgrad record RUN_DIR
... --to results/TABLE/`` writes one file per run, named from the run's identity
(:func:`record_name`); ``latentgrad report results/TABLE/ ...`` reads records like run
directories.

The tables of the README and of ``docs/*.md`` are *generated blocks*: an HTML comment holding
the ``latentgrad report`` command that makes the table, the command's output between blank lines
(so that markdown renders the table), and an end marker::

    <!-- table: latentgrad report results/demo --table-only --columns test,ci -->

    | estimator | test nll | ... |

    <!-- end table -->

:func:`update_blocks` (``latentgrad report --update-readme``) rewrites them from the records and
``tests/test_results_tables.py`` checks that they are what the records give. A block whose
records are still to be made is marked ``<!-- table (no record yet): ... -->``: its numbers are
kept as they are, and only until the records exist.

Example:
    >>> text = "a\\n<!-- table: latentgrad report results/x --table-only -->\\n| t |\\n<!-- end table -->\\n"
    >>> [(b.command, b.body, b.no_record) for b in find_blocks(text)]
    [('latentgrad report results/x --table-only', '| t |\\n', False)]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latentgrad.lab.rundir import ensure_writable_directory, read_json_file
from latentgrad.lab.runs import (
    RECORD_FORMAT,
    RECORD_HINT,
    collect_runs,
    find_runs,
    load_run,
)


class UnfinishedRunWarning(UserWarning):
    """A run given to :func:`write_records` has no results yet; it gets no record."""


def _scrub(value: Any) -> Any:
    """``value`` with every absolute path (a string) shortened to ``…/<last component>``."""
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value) and len(value) > 1:
        return "…/" + Path(value).name
    return value


def make_record(run_dir: str | Path) -> dict[str, Any]:
    """The record of a finished run directory.

    Args:
        run_dir: a run directory written by :func:`~latentgrad.lab.runner.run`.

    Returns:
        ``{"format", "experiment", "primary_metric", "config_class", "config", "env",
        "results", "history", "run"}``; ``env`` lacks the working directory, absolute paths are
        shortened to their last component, ``run`` is the run directory's name.

    Raises:
        ValueError: if the run is unfinished (no ``results.json``).
        RunFileError: if one of its files cannot be read.
    """
    run_dir = Path(run_dir)
    info = load_run(run_dir)
    if info.results is None:
        raise ValueError(f"{run_dir} has no results.json yet: finish the run first")
    meta = read_json_file(run_dir / "config.json", RECORD_HINT)
    env_path = run_dir / "env.json"
    env = read_json_file(env_path, RECORD_HINT) if env_path.exists() else {}
    env = {k: v for k, v in env.items() if k != "cwd"} if isinstance(env, dict) else {}
    return _scrub(
        {
            "format": RECORD_FORMAT,
            "experiment": info.experiment,
            "primary_metric": info.primary_metric,
            "config_class": meta.get("config_class"),
            "config": meta["config"],  # as the run wrote it (reports complete it when read)
            "env": env,
            "results": info.results,
            "history": info.history,
            "run": run_dir.name,
        }
    )


def record_name(record: dict[str, Any]) -> str:
    """The file name of a record: ``<experiment>-<estimator>-<hash>-seed<seed>.json``.

    ``hash`` is 8 hex digits of the SHA-256 of the config without the seed and the data
    directory (estimator options included), so runs that differ in any setting get other names
    and the same run always gets the same one.

    Example:
        >>> record_name({"experiment": "vae", "config": {"estimator": "gs", "seed": 2, "lr": 0.001}})
        'vae-gs-73dbc66f-seed2.json'
    """
    config = record["config"]
    identity = {k: v for k, v in config.items() if k not in ("seed", "data")}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
    return (
        f"{record['experiment']}-{config.get('estimator')}-{digest}-seed{config.get('seed')}.json"
    )


def benchmark_record(
    experiment: str,
    config: dict[str, Any],
    test: dict[str, float],
    *,
    primary_metric: str,
) -> dict[str, Any]:
    """The record of one case of a benchmark script (``benchmarks/``), so that its figures
    are reported (``latentgrad report``) and quoted in the docs like a run's.

    Args:
        experiment: the benchmark's name, e.g. ``"bench-ssvae"``.
        config: the case's settings; ``"estimator"`` names the row, ``"seed"`` defaults to 0.
        test: the measured figures (``latentgrad report --metrics NAME`` shows them).
        primary_metric: the figure rows are sorted by (a key of ``test``).

    Returns:
        A record as :func:`make_record` writes for runs, with the environment of this process
        (no working directory) and an empty history.

    Raises:
        ValueError: if ``config`` has no ``"estimator"`` or ``primary_metric`` is not measured.

    Example:
        >>> r = benchmark_record("bench-x", {"estimator": "gs"}, {"ms": 1.5}, primary_metric="ms")
        >>> r["results"]["test"], record_name(r).startswith("bench-x-gs-")
        ({'ms': 1.5}, True)
    """
    from latentgrad.lab.rundir import environment

    if "estimator" not in config:
        raise ValueError("config: a benchmark record needs an 'estimator' naming its row")
    if primary_metric not in test:
        raise ValueError(f"primary_metric: {primary_metric!r} is not among {sorted(test)}")
    config = {**config, "seed": config.get("seed", 0)}
    env = environment(config["seed"])
    env.pop("cwd", None)
    return _scrub(
        {
            "format": RECORD_FORMAT,
            "experiment": experiment,
            "primary_metric": primary_metric,
            "config_class": None,
            "config": config,
            "env": env,
            "results": {
                "experiment": experiment,
                "estimator": config["estimator"],
                "seed": config["seed"],
                "primary_metric": primary_metric,
                "test": dict(test),
            },
            "history": [],
            "run": f"{experiment}-{config['estimator']}",
        }
    )


def save_record(record: dict[str, Any], to: str | Path) -> Path:
    """Write ``record`` into the folder ``to`` (made if missing) under :func:`record_name`.

    Raises:
        RunFileError: if ``to`` cannot be written.
    """
    folder = ensure_writable_directory(to, "the records", "choose another folder")
    path = folder / record_name(record)
    path.write_text(json.dumps(record, indent=1, sort_keys=False) + "\n")
    return path


def write_records(paths: Sequence[str | Path], to: str | Path) -> list[Path]:
    """Write the record of every finished run among ``paths`` into the folder ``to``.

    Args:
        paths: run directories or folders of them.
        to: the records folder (made if missing), e.g. ``results/table1-reduced``.

    Returns:
        The record files written (an existing record of the same run is replaced).

    Unfinished runs are skipped with an :class:`UnfinishedRunWarning`.

    Raises:
        FileNotFoundError: if a path does not exist or holds no run directory.
        RunFileError: if a run file cannot be read or ``to`` cannot be written.
    """
    run_dirs = find_runs(paths)
    if not run_dirs:
        raise FileNotFoundError(
            "no run directories (with a config.json written by `latentgrad run`) under "
            + ", ".join(map(str, paths))
        )
    folder = ensure_writable_directory(to, "the records", "choose another --to")
    written = []
    for run_dir in run_dirs:
        if not (run_dir / "results.json").exists():
            warnings.warn(
                f"{run_dir} is unfinished (no results.json): no record written",
                UnfinishedRunWarning,
                stacklevel=2,
            )
            continue
        written.append(save_record(make_record(run_dir), folder))
    return written


# ---------------------------------------------------------------------------------------------
# Generated tables in markdown files

_START = re.compile(r"^<!-- table(?P<mark> \(no record yet\))?: (?P<command>.+?) -->$")
_END = "<!-- end table -->"
NO_RECORD_MARK = " (no record yet)"


@dataclass(frozen=True)
class TableBlock:
    """A generated table in a markdown file.

    Attributes:
        command: the ``latentgrad report ...`` command that makes it.
        body: the text between the markers, less a blank line on each side (the command's
            output when up to date).
        no_record: whether it is marked ``(no record yet)``: its numbers have no records yet.
        start: the character offset of the start marker.
        end: the character offset just after the end marker's line.
    """

    command: str
    body: str
    no_record: bool
    start: int
    end: int

    def sources(self) -> list[str]:
        """The run directories or record folders the command reads."""
        return list(_parse(self.command).run_dirs)


def find_blocks(text: str) -> list[TableBlock]:
    """The generated tables in markdown ``text``.

    Raises:
        ValueError: if a start marker has no end marker.
    """
    blocks = []
    lines = text.splitlines(keepends=True)
    offset = 0
    i = 0
    while i < len(lines):
        match = _START.match(lines[i].rstrip("\n"))
        if match is None:
            offset += len(lines[i])
            i += 1
            continue
        start = offset
        j = i + 1
        body_start = offset + len(lines[i])
        pos = body_start
        while j < len(lines) and lines[j].rstrip("\n") != _END:
            pos += len(lines[j])
            j += 1
        if j == len(lines):
            raise ValueError(f"a table marker ({match['command']!r}) has no {_END!r} after it")
        end = pos + len(lines[j])
        body = text[body_start:pos]
        # a blank line on each side keeps markdown from reading the table as part of the comment
        body = body[1:] if body.startswith("\n") else body
        body = body[:-1] if body.endswith("\n\n") else body
        blocks.append(TableBlock(match["command"], body, bool(match["mark"]), start, end))
        offset = end
        i = j + 1
    return blocks


def _parse(command: str) -> Any:
    from latentgrad.lab.report import add_report_arguments

    argv = shlex.split(command)
    if argv[:2] != ["latentgrad", "report"]:
        raise ValueError(f"a table's command must be `latentgrad report ...`, got {command!r}")
    parser = argparse.ArgumentParser(prog="latentgrad report", add_help=False)
    add_report_arguments(parser)
    try:
        return parser.parse_args(argv[2:])
    except SystemExit as err:  # argparse has printed its one-line message
        raise ValueError(f"cannot parse the table command {command!r}") from err


def render_block(command: str) -> str:
    """The output of ``command`` (``latentgrad report ...``), run in the current directory.

    Raises:
        ValueError: if it is not a report command or it fails (with its error line).
    """
    from latentgrad.lab.report import report_from_args

    args = _parse(command)
    try:
        return report_from_args(args)
    except (ValueError, OSError) as err:
        raise ValueError(f"`{command}` failed: {err}") from err


def has_records(block: TableBlock) -> bool:
    """Whether every source of the block's command exists, and they hold a record or run (a
    table that adds new records to old ones has its records only once the new ones exist)."""
    sources = block.sources()
    if not sources or not all(Path(s).exists() for s in sources):
        return False
    try:
        return bool(collect_runs(sources))
    except FileNotFoundError:
        return False


def markdown_files(root: str | Path = ".") -> list[Path]:
    """The files whose tables are generated: ``README.md`` and ``docs/*.md`` under ``root``."""
    root = Path(root)
    files = [root / "README.md"] if (root / "README.md").exists() else []
    return files + sorted((root / "docs").glob("*.md"))


def stale_blocks(path: str | Path) -> list[tuple[TableBlock, str]]:
    """The blocks of a markdown file that differ from what their commands give now.

    Commands run in the current directory (the repository root). A block marked ``(no record
    yet)`` counts as stale only once its records exist.

    Returns:
        ``(block, expected text)`` pairs.
    """
    stale = []
    for block in find_blocks(Path(path).read_text()):
        if block.no_record and not has_records(block):
            continue
        expected = render_block(block.command)
        if block.no_record or expected != block.body:
            stale.append((block, expected))
    return stale


def update_blocks(paths: Iterable[str | Path]) -> list[Path]:
    """Rewrite the stale generated tables of markdown files (see :func:`stale_blocks`); a block
    marked ``(no record yet)`` whose records now exist is generated and loses the mark.

    Returns:
        The files changed.
    """
    changed = []
    for path in map(Path, paths):
        text = path.read_text()
        stale = stale_blocks(path)
        for block, expected in sorted(stale, key=lambda s: -s[0].start):
            text = (
                text[: block.start]
                + f"<!-- table: {block.command} -->\n\n"
                + expected
                + "\n"
                + _END
                + "\n"
                + text[block.end :]
            )
        if stale:
            path.write_text(text)
            changed.append(path)
    return changed
