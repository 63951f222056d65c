"""The ``latentgrad`` command.

* ``latentgrad list`` shows the experiments and the estimators.
* ``latentgrad run EXPERIMENT [--estimator NAME] [--FIELD VALUE ...] [--config FILE]
  [--run-dir DIR | --out ROOT] [--no-resume] [--quiet]`` trains and evaluates one experiment
  into a run directory (resumable; see :mod:`latentgrad.lab.runner`); every field of the
  experiment's config is an option (``latentgrad run EXPERIMENT --help`` lists them with their
  defaults).
* ``latentgrad report RUN_DIR... [--out DIR]`` prints a markdown comparison of finished runs
  (and writes it with figures to ``DIR``).
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
    from latentgrad.lab.experiment import Experiment

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
    width = max(len(n) for n in ESTIMATORS)
    print("estimators (--estimator NAME):")
    for name in ESTIMATORS:
        print(f"  {name:<{width}}  {describe(name)}")
    return 0


def build_run_parser(experiment: Experiment) -> argparse.ArgumentParser:
    """The options of ``latentgrad run EXPERIMENT``: one per config field, then run options."""
    from latentgrad.lab.config import add_config_arguments

    estimators = supported_estimators(experiment)
    parser = _Parser(
        prog=f"latentgrad run {experiment.name}",
        description=f"{experiment.description}. Trains and evaluates into a run directory "
        "(resumed when it exists). Values come from the config's defaults, then --config, "
        "then the flags.",
        epilog="estimators: " + ", ".join(estimators),
    )
    add_config_arguments(
        parser.add_argument_group(f"config ({experiment.config_class.__name__})"),
        experiment.config_class,
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
        help="run directory (default: ROOT/EXPERIMENT/ESTIMATOR-seedSEED)",
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


def _cmd_run(args: argparse.Namespace) -> int:
    from latentgrad.lab.config import cli_overrides, resolve_config

    experiments = _experiments()
    name = args.experiment
    if name is None:
        raise CommandError(
            f"name an experiment: {_RUN_USAGE}; experiments: {', '.join(experiments)}"
        )
    if name not in experiments:
        raise CommandError(
            f"unknown experiment {name!r}; known: {', '.join(experiments)} (see `latentgrad list`)"
        )
    experiment = experiments[name]
    opts = build_run_parser(experiment).parse_args(args.options)
    config = resolve_config(
        experiment.config_class,
        file=opts.config_file,
        overrides=cli_overrides(opts, experiment.config_class),
    )
    config.validate()

    from latentgrad.lab import runner
    from latentgrad.lab.config import config_to_dict
    from latentgrad.lab.rundir import default_run_dir

    run_dir = Path(opts.run_dir) if opts.run_dir else default_run_dir(experiment, config, opts.out)
    if opts.print_config:
        # a run resolves its estimator itself; a printed config must name a valid one too
        estimator_entry(config.estimator, experiment)
        record = {"experiment": name, "run_dir": str(run_dir), "config": config_to_dict(config)}
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


def _cmd_report(args: argparse.Namespace) -> int:
    from latentgrad.lab.report import report

    text = report(args.run_dirs, args.out)
    print(text, end="")
    if args.out:
        print(f"wrote {Path(args.out) / 'report.md'}", file=sys.stderr)
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

    p_report = sub.add_parser(
        "report",
        help="markdown comparison of run directories (and figures with --out)",
        description="Compare finished runs: one table per experiment, one row per estimator "
        "and config (mean ± std over seeds), sorted by the primary test metric.",
    )
    p_report.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="run directories or folders of them"
    )
    p_report.add_argument(
        "--out", metavar="DIR", help="write report.md and comparison figures (PNG) here"
    )
    p_report.set_defaults(func=_cmd_report)

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
