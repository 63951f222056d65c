"""The ``latentgrad`` command.

* ``latentgrad list`` shows the experiments and the estimators.
* ``latentgrad run EXPERIMENT [--estimator NAME] [--FIELD VALUE ...] [--config FILE]
  [--run-dir DIR | --out ROOT] [--no-resume] [--quiet]`` trains and evaluates one experiment
  into a run directory (resumable; see :mod:`latentgrad.lab.runner`); every field of the
  experiment's config is an option, and so is every option of the chosen estimator
  (``latentgrad run EXPERIMENT --estimator NAME --help`` lists them with their defaults).
* ``latentgrad sweep EXPERIMENT --grid KEY=V1,V2... [--grid-file FILE] [--FIELD VALUE ...]
  [--out ROOT] [--workers N] [--threads N] [--ray [ADDRESS]]`` runs the cartesian product of a
  grid, one resumable run per point, on a local process pool or as Ray tasks (see
  :mod:`latentgrad.lab.sweep`); exit status 1 if a run failed.
* ``latentgrad report RUN_DIR_OR_RECORDS... [--select KEY... --by valid.METRIC] [--format
  md,csv,tex] [--out DIR]`` prints a comparison of finished runs (mean ± std over seeds, 95%
  intervals; with ``--select``, the setting with the best mean validation metric per row), and
  writes it as markdown, CSV and LaTeX with figures to ``DIR``; ``latentgrad report
  --update-readme`` regenerates the tables of the README and docs from ``results/``.
* ``latentgrad record RUN_DIR... --to results/TABLE/`` writes the results records of runs.
* ``latentgrad compare`` runs every estimator on small problems with exact gradients and
  prints bias, variance and cost as a table.

Experiments are the modules of :mod:`latentgrad.experiments`; what runs them is
:mod:`latentgrad.lab`. Estimator names are mapped to constructors in :mod:`latentgrad.lab.registry`
(the library itself never parses strings); the runner resolves ``--estimator`` once and hands
the experiment the built estimator.

Errors the user can fix (a bad flag or value, a bad ``--config`` file, a run directory that
cannot be written, a damaged run file, missing data, a missing optional package) are one line
on stderr, ``latentgrad COMMAND: error: ...``, naming the flag or file and what to do, with exit
status 2; ``LATENTGRAD_DEBUG=1`` shows the traceback instead. Warnings (e.g. figures skipped
because matplotlib is missing) are one line each too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

import torch

from latentgrad.lab.config import InvalidConfigValue
from latentgrad.lab.registry import (
    ESTIMATORS,
    describe,
    estimator_entry,
    supported_estimators,
)

if TYPE_CHECKING:
    from latentgrad.lab.experiment import Experiment, ExperimentConfig

_RUN_USAGE = "latentgrad run EXPERIMENT [--estimator NAME] [--FIELD VALUE ...] [options]"
_DEBUG_ENV = "LATENTGRAD_DEBUG"

#: Optional packages, by import name: the pip name and the latentgrad extra that brings them.
OPTIONAL_PACKAGES = {
    "numpy": ("numpy", "experiments"),
    "sklearn": ("scikit-learn", "experiments"),
    "matplotlib": ("matplotlib", "experiments"),
    "tqdm": ("tqdm", "experiments"),
}


class CommandError(Exception):
    """A problem the user can fix, reported as one line ``latentgrad COMMAND: error: MESSAGE``."""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (no usage block), naming ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind: Callable[[str], Any], minimum: float, what: str) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)``, finite and at least ``minimum``."""

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (math.isfinite(value) and value >= minimum):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    convert.__name__ = what
    return convert


_positive_int = _number(int, 1, "an int >= 1")


def _experiments() -> dict[str, Experiment]:
    from latentgrad.lab import catalog

    return catalog.all_experiments()


def _experiment(name: str | None, usage: str) -> Experiment:
    """The experiment called ``name``, or a one-line error listing the known ones."""
    experiments = _experiments()
    if name is None:
        raise CommandError(f"name an experiment: {usage}; experiments: {', '.join(experiments)}")
    if name not in experiments:
        raise CommandError(
            f"unknown experiment {name!r}; known: {', '.join(experiments)} (see `latentgrad list`)"
        )
    return experiments[name]


def _cmd_list(args: argparse.Namespace) -> int:
    try:
        experiments = _experiments()
    except ImportError as err:  # an extra is missing: the estimators can still be listed
        print(f"experiments: unavailable ({err}; install latentgrad[experiments])")
    else:
        print("experiments (latentgrad run NAME --help):")
        width = max((len(n) for n in experiments), default=0)
        for name, exp in experiments.items():
            print(f"  {name:<{width}}  {exp.description}")
        print()
    from latentgrad.lab.registry import describe_options

    width = max(len(n) for n in ESTIMATORS)
    print("estimators (--estimator NAME), with their options and defaults (--OPTION VALUE):")
    for name in ESTIMATORS:
        print(f"  {name:<{width}}  {describe(name)}")
        print(f"  {'':<{width}}    {describe_options(name)}")
    return 0


def build_run_parser(
    experiment: Experiment, estimator: str | None = None
) -> argparse.ArgumentParser:
    """The options of ``latentgrad run EXPERIMENT``: one per config field, one per option of
    ``estimator`` (default: the config's default estimator), then run options.

    Raises:
        UnknownEstimator: (a ``ValueError``) if ``experiment`` does not support ``estimator``.
        ValueError: if an estimator option has the name of a config field.
    """
    from latentgrad.lab.config import add_config_arguments, config_fields

    estimators = supported_estimators(experiment)
    if estimator is None:
        estimator = experiment.config_class().estimator
    entry = estimator_entry(estimator, experiment)
    clash = set(config_fields(type(entry.options))) & set(config_fields(experiment.config_class))
    if clash:
        raise ValueError(
            f"estimator {estimator!r} has options named like config fields of experiment "
            f"{experiment.name!r}: {', '.join(sorted(clash))}"
        )
    parser = _Parser(
        prog=f"latentgrad run {experiment.name}",
        description=f"{experiment.description}. Trains and evaluates into a run directory "
        "(resumed when it exists). Values come from the config's defaults, then --config, "
        "then the flags.",
        epilog="estimators: " + ", ".join(estimators) + ". `--estimator NAME --help` lists "
        'the options of NAME; a config file sets them in an "estimator_options" object.',
    )
    add_config_arguments(
        parser.add_argument_group(f"config ({experiment.config_class.__name__})"),
        experiment.config_class,
    )
    add_config_arguments(
        parser.add_argument_group(
            f"options of estimator {estimator} (another's: --estimator NAME --help)"
        ),
        type(entry.options),
        defaults=entry.options,
    )
    opts = parser.add_argument_group("run options")
    opts.add_argument(
        "--config",
        dest="config_file",
        metavar="FILE",
        help="JSON file of config values (flags given here override it); a run's config.json "
        "works too",
    )
    where = opts.add_mutually_exclusive_group()
    where.add_argument(
        "--run-dir",
        metavar="DIR",
        help="run directory (default: ROOT/EXPERIMENT/ESTIMATOR[-HASH]-seedSEED, HASH naming "
        "the estimator options that differ from their defaults)",
    )
    where.add_argument(
        "--out", metavar="ROOT", default="runs", help="root of run directories (default: runs)"
    )
    opts.add_argument(
        "--no-resume",
        action="store_true",
        help="start again even if the run directory holds a run (its files are replaced)",
    )
    opts.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    opts.add_argument(
        "--threads", type=_positive_int, metavar="N", help="torch threads (default: torch's)"
    )
    opts.add_argument(
        "--checkpoint-every",
        type=_number(float, 0, "a number of seconds >= 0"),
        default=300.0,
        metavar="SECONDS",
        help="also checkpoint inside an epoch this often (0: every step; default: 300)",
    )
    opts.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config and run directory, and exit",
    )
    return parser


def _estimator_and_file_options(
    experiment: Experiment, argv: Sequence[str]
) -> tuple[str, dict[str, Any]]:
    """The estimator a ``run`` command line asks for (``--estimator``, else the ``--config``
    file's, else the config's default) and the file's estimator options that apply to it."""
    from latentgrad.lab.config import load_config_file

    pre = _Parser(prog=f"latentgrad run {experiment.name}", add_help=False)
    pre.add_argument("--estimator")
    pre.add_argument("--config", dest="config_file")
    known, _ = pre.parse_known_args(list(argv))
    values = (
        load_config_file(experiment.config_class, known.config_file) if known.config_file else {}
    )
    estimator = known.estimator or values.get("estimator") or experiment.config_class().estimator
    options = dict(values.get("estimator_options") or {})
    if "estimator" in values and values["estimator"] != estimator:
        options = {}  # the file's options are those of another estimator
    return estimator, options


def _with_options(
    experiment: Experiment,
    config: ExperimentConfig,
    file_options: dict[str, Any],
    opts: argparse.Namespace,
) -> ExperimentConfig:
    """``config`` with its full estimator options: defaults, the experiment's preset, the
    file's, then the flags."""
    import dataclasses

    from latentgrad.lab.config import cli_overrides
    from latentgrad.lab.registry import options_to_dict, resolve_config_options

    entry = estimator_entry(config.estimator, experiment)
    given = {**file_options, **cli_overrides(opts, type(entry.options))}
    options = resolve_config_options(config, given)
    return dataclasses.replace(config, estimator_options=options_to_dict(options))


def _cmd_run(args: argparse.Namespace) -> int:
    from latentgrad.lab.config import cli_overrides, resolve_config

    experiment = _experiment(args.experiment, _RUN_USAGE)
    estimator, file_options = _estimator_and_file_options(experiment, args.options)
    parser = build_run_parser(experiment, estimator)
    opts = parser.parse_args(args.options)
    config = resolve_config(
        experiment.config_class,
        file=opts.config_file,
        overrides=cli_overrides(opts, experiment.config_class),
    )
    config = _with_options(experiment, config, file_options, opts)
    config.validate()

    from latentgrad.lab import runner
    from latentgrad.lab.config import config_to_dict
    from latentgrad.lab.rundir import default_run_dir

    run_dir = Path(opts.run_dir) if opts.run_dir else default_run_dir(experiment, config, opts.out)
    if opts.print_config:
        # a run resolves its estimator itself; a printed config must name a valid one too
        estimator_entry(config.estimator, experiment)
        record = {
            "experiment": experiment.name,
            "run_dir": str(run_dir),
            "config": config_to_dict(config),
        }
        print(json.dumps(record, indent=2))
        return 0
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    try:
        results = runner.run(
            experiment,
            config,
            run_dir,
            resume=not opts.no_resume,
            progress=not opts.quiet,
            checkpoint_seconds=opts.checkpoint_every,
        )
    except KeyboardInterrupt:
        print(
            f"\ninterrupted; the same command resumes from the last checkpoint in {run_dir}",
            file=sys.stderr,
        )
        return 130
    print(f"run directory: {run_dir}")
    for key, value in (results.get("test") or {}).items():
        print(f"test {key}: {value:.6g}")
    return 0


_SWEEP_USAGE = (
    "latentgrad sweep EXPERIMENT --grid KEY=V1,V2... [--grid-file FILE] [--FIELD VALUE ...] "
    "[options]"
)


def build_sweep_parser(experiment: Experiment) -> argparse.ArgumentParser:
    """The options of ``latentgrad sweep EXPERIMENT``: the grid, fixed config values (one flag
    per config field, as ``run``), and where and how the runs go."""
    from latentgrad.lab.config import add_config_arguments

    parser = _Parser(
        prog=f"latentgrad sweep {experiment.name}",
        usage=_SWEEP_USAGE,
        description=f"{experiment.description}. Runs the cartesian product of the grid, one "
        "resumable run per point, on a local process pool (or Ray with --ray). Finished runs "
        "are skipped, killed ones resume, a failed run is reported and the others go on; the "
        "exit status is 1 if any run failed.",
        epilog="grid keys: estimator, config fields (lr, seed, ...) and estimator options "
        "(num_samples, ...); estimators: " + ", ".join(supported_estimators(experiment)),
    )
    grid = parser.add_argument_group("grid")
    grid.add_argument(
        "--grid",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=V1,V2",
        help="values of a key, e.g. estimator=gs,st-gs lr=1e-3,3e-4 seed=0..4 (a..b: the ints "
        "from a to b; tuples in brackets: hidden=[300,200],[200]); these win over --grid-file",
    )
    grid.add_argument(
        "--grid-file",
        metavar="FILE",
        help="JSON (or YAML, with pyyaml) object of key: values, or a list of them (their union)",
    )
    add_config_arguments(
        parser.add_argument_group(
            f"fixed config values for every run ({experiment.config_class.__name__})"
        ),
        experiment.config_class,
    )
    opts = parser.add_argument_group("sweep options")
    opts.add_argument(
        "--config",
        dest="config_file",
        metavar="FILE",
        help="JSON file of config values for every run (the flags and the grid override it)",
    )
    opts.add_argument(
        "--out",
        metavar="ROOT",
        default="runs",
        help="root of the run directories: ROOT/EXPERIMENT/[GRID FIELDS/]ESTIMATOR-seedSEED "
        "(default: runs)",
    )
    opts.add_argument(
        "--workers", type=_positive_int, default=1, metavar="N", help="runs at a time (default 1)"
    )
    opts.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        metavar="N",
        help="torch threads per run, and the CPUs each Ray task asks for (default 1)",
    )
    opts.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="one Ray task per run: join the cluster at ADDRESS (e.g. auto), or start a local "
        "Ray runtime with WORKERS*THREADS CPUs (needs pip install 'latentgrad[ray]')",
    )
    opts.add_argument(
        "--checkpoint-every",
        type=_number(float, 0, "a number of seconds >= 0"),
        default=300.0,
        metavar="SECONDS",
        help="also checkpoint inside an epoch this often (0: every step; default: 300)",
    )
    opts.add_argument("--quiet", action="store_true", help="no progress bar")
    opts.add_argument(
        "--dry-run", action="store_true", help="print the planned run directories, and exit"
    )
    return parser


def _cmd_sweep(args: argparse.Namespace) -> int:
    from latentgrad.lab import sweep
    from latentgrad.lab.config import cli_overrides

    experiment = _experiment(args.experiment, _SWEEP_USAGE)
    opts = build_sweep_parser(experiment).parse_args(args.options)
    grids = sweep.load_grid_file(opts.grid_file) if opts.grid_file else [{}]
    command_line = sweep.parse_grid(opts.grid)
    grids = [{**g, **command_line} for g in grids]
    if not any(grids):
        raise CommandError("give the grid: --grid KEY=V1,V2 ... or --grid-file FILE")
    if opts.ray is not None:
        sweep.import_ray()  # missing ray: one line now, not after planning
    runs = sweep.plan_sweep(
        experiment,
        grids,
        out=opts.out,
        config_file=opts.config_file,
        fixed=cli_overrides(opts, experiment.config_class),
    )
    if opts.dry_run:
        for run in runs:
            print(run.run_dir)
        print(f"{len(runs)} runs")
        return 0
    try:
        outcomes = sweep.run_sweep(
            experiment,
            runs,
            workers=opts.workers,
            threads=opts.threads,
            ray=opts.ray is not None,
            ray_address=opts.ray or None,
            progress=not opts.quiet,
            checkpoint_seconds=opts.checkpoint_every,
        )
    except KeyboardInterrupt:
        print("\ninterrupted; the same command resumes the sweep", file=sys.stderr)
        return 130
    print(sweep.format_summary(outcomes, experiment.primary_metric), end="")
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def _cmd_report(args: argparse.Namespace) -> int:
    from latentgrad.lab.records import markdown_files, update_blocks
    from latentgrad.lab.report import report_from_args

    if args.update_readme:
        if args.run_dirs:
            raise CommandError("--update-readme takes no RUN_DIR: the commands are in the tables")
        changed = update_blocks(markdown_files("."))
        for path in changed:
            print(f"updated {path}")
        if not changed:
            print("the generated tables are up to date")
        return 0
    print(report_from_args(args), end="")
    if args.out:
        print(f"wrote {Path(args.out) / 'report.md'} (.csv, .tex)", file=sys.stderr)
    return 0


def _cmd_record(args: argparse.Namespace) -> int:
    from latentgrad.lab.records import write_records

    written = write_records(args.run_dirs, args.to)
    for path in written:
        print(path)
    print(f"{len(written)} record(s) in {args.to}", file=sys.stderr)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from latentgrad.lab.compare import compare, format_table

    chosen = {n: estimator_entry(n) for n in args.estimators or ESTIMATORS}
    if args.json:  # checked before the minutes of work, not after
        from latentgrad.lab.rundir import ensure_writable_directory

        if Path(args.json).is_dir():
            raise CommandError(f"--json {args.json} is a directory; give a file name")
        ensure_writable_directory(
            Path(args.json).parent, "--json", "give a --json file in a writable directory"
        )
    torch.set_num_threads(args.threads)

    def progress(msg: str) -> None:
        if not args.quiet:
            print(f"  running {msg} ...", file=sys.stderr, flush=True)

    rows = compare(
        chosen,
        families=args.problems,
        replicates=args.replicates,
        seed=args.seed,
        progress=progress,
    )
    print(
        f"Gradient of E_q[f(z)] w.r.t. (logits, loss parameters): {args.replicates} independent "
        f"estimates per estimator against the exact gradient by enumeration (seed {args.seed})."
    )
    print(
        "rel. bias = |mean - exact| / |exact|; max |z| = largest per-coordinate bias in "
        "standard errors (biased: above the Bonferroni bound at alpha = 1e-5);\n"
        "grad var = mean per-coordinate variance of one estimate; evals = loss evaluations per "
        "example and step; var*evals = variance at equal cost;\nms/step = median time of one "
        "forward+backward step (batch of 4 examples).\n"
    )
    print(format_table(rows))
    if args.json:
        path = Path(args.json)
        path.write_text("\n".join(json.dumps(r.as_dict()) for r in rows) + "\n")
        print(f"\nwrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="latentgrad",
        description="Gradient estimators for discrete latent variables.",
        epilog=f"Errors are one line on stderr (exit status 2); set {_DEBUG_ENV}=1 for the "
        "traceback.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p_list = sub.add_parser("list", help="list the experiments and estimators")
    p_list.set_defaults(func=_cmd_list)

    p_run = sub.add_parser(
        "run",
        help="train and evaluate an experiment into a run directory",
        usage=_RUN_USAGE,
        description="Train and evaluate EXPERIMENT (see `latentgrad list`) into a resumable run "
        "directory. `latentgrad run EXPERIMENT --help` lists its options: one per config "
        "field, with the defaults.",
    )
    p_run.add_argument("experiment", nargs="?", metavar="EXPERIMENT")
    p_run.add_argument("options", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p_run.set_defaults(func=_cmd_run)

    p_sweep = sub.add_parser(
        "sweep",
        help="a grid of runs on a local process pool or on Ray",
        usage=_SWEEP_USAGE,
        description="Run a grid of runs of EXPERIMENT (the cartesian product of --grid). "
        "`latentgrad sweep EXPERIMENT --help` lists its options.",
    )
    p_sweep.add_argument("experiment", nargs="?", metavar="EXPERIMENT")
    p_sweep.add_argument("options", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p_sweep.set_defaults(func=_cmd_sweep)

    _add_report_parser(sub)
    _add_record_parser(sub)

    p_cmp = sub.add_parser(
        "compare",
        help="bias, variance and cost of every estimator on small exact problems",
        description="Run every estimator on small problems whose exact gradient is known "
        "by enumeration and print bias, variance and cost per estimator.",
    )
    p_cmp.add_argument(
        "--problems",
        nargs="+",
        default=["categorical", "bernoulli", "factorized"],
        choices=["categorical", "bernoulli", "factorized"],
        help="which problems to run (default: all)",
    )
    p_cmp.add_argument(
        "--estimators", nargs="+", metavar="NAME", help="estimators to run (default: all)"
    )
    p_cmp.add_argument(
        "--replicates",
        type=_number(int, 2, "an int >= 2"),
        default=4000,
        help="gradient estimates per estimator (at least 2)",
    )
    p_cmp.add_argument("--seed", type=int, default=0, help="random seed")
    p_cmp.add_argument("--threads", type=_positive_int, default=1, help="torch threads (default 1)")
    p_cmp.add_argument("--json", metavar="PATH", help="also write the rows as JSON lines")
    p_cmp.add_argument("--quiet", action="store_true", help="no progress messages")
    p_cmp.set_defaults(func=_cmd_compare)
    return parser


def _add_report_parser(sub: Any) -> None:
    from latentgrad.lab.report import add_report_arguments

    p = sub.add_parser(
        "report",
        help="tables of run directories or results records (model selection, seed statistics)",
        description="Compare finished runs (run directories or results records): one table per "
        "experiment, one row per estimator and config, every cell mean ± std (n=seeds), a 95%% "
        "confidence interval (t-distribution), sorted by the primary test metric. With --select, "
        "each row shows the setting of those keys with the best mean validation metric (--by) "
        "and its test metrics.",
    )
    add_report_arguments(p)
    p.set_defaults(func=_cmd_report)


def _add_record_parser(sub: Any) -> None:
    p = sub.add_parser(
        "record",
        help="write results records (small JSON) of finished runs",
        description="Write one results record per finished run (resolved config, environment, "
        "final metrics, per-epoch curves; no checkpoint) into a folder such as results/TABLE/, "
        "named from the run's identity. Unfinished runs are skipped with a warning.",
    )
    p.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="run directories or folders of them"
    )
    p.add_argument("--to", required=True, metavar="DIR", help="the records folder")
    p.set_defaults(func=_cmd_record)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``latentgrad`` command; returns the exit status.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        0 on success, 2 for an error the user can fix (one line on stderr, see the module
        docstring), 130 when interrupted.
    """
    try:
        args = build_parser().parse_args(argv)
        where = f"latentgrad {args.command}"
        if getattr(args, "experiment", None):
            where += f" {args.experiment}"
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            try:
                return int(args.func(args))
            except (CommandError, ValueError, OSError, ImportError) as err:
                if os.environ.get(_DEBUG_ENV) and not isinstance(err, CommandError):
                    raise
                print(f"{where}: error: {describe_error(err)}", file=sys.stderr)
                return 2
    except SystemExit as exit_:  # argparse: --help (0) or a bad flag (2, one line printed)
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 2)


def describe_error(err: BaseException) -> str:
    """One line saying what went wrong and what to do, for an error the user can fix.

    Config values out of range are named by their flag, missing optional packages by the
    ``pip install`` that brings them; other messages are joined onto one line.

    Example:
        >>> describe_error(InvalidConfigValue("max_eval_examples", "a positive int or none", 0))
        '--max-eval-examples must be a positive int or none, got 0'
        >>> err = ModuleNotFoundError("No module named 'sklearn'", name="sklearn")
        >>> describe_error(err)
        "scikit-learn is not installed; pip install 'latentgrad[experiments]' (or scikit-learn)"
    """
    if isinstance(err, InvalidConfigValue):
        flag = "--" + err.field.replace("_", "-")
        return f"{flag} must be {err.requirement}, got {_as_flag_value(err.value)}"
    if isinstance(err, ModuleNotFoundError) and err.name:
        top = err.name.split(".")[0]
        if top in OPTIONAL_PACKAGES:
            pip, extra = OPTIONAL_PACKAGES[top]
            return f"{pip} is not installed; pip install 'latentgrad[{extra}]' (or {pip})"
    missing, directory = getattr(err, "missing", None), getattr(err, "directory", None)
    if isinstance(err, FileNotFoundError) and missing and directory is not None:
        # latentgrad.data's DataNotFoundError: its first line, and what to do in short
        first = str(err).splitlines()[0]
        return (
            f"{first} Put {', '.join(missing)} in {directory}/, or point --data (or "
            f"$LATENTGRAD_DATA) at a directory that holds {Path(directory).name}/ with them."
        )
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip())


def _as_flag_value(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return ",".join(_as_flag_value(v) for v in value) or '""'
    return str(value)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Warnings of the command as one line each on stderr."""
    text = " ".join(str(message).split())
    print(f"latentgrad: warning: {text}", file=file or sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
