"""The ``latentgrad`` command.

* ``latentgrad list`` shows the experiments and the estimators.
* ``latentgrad run EXPERIMENT [--estimator NAME] [--FIELD VALUE ...] [--config FILE]
  [--run-dir DIR | --out ROOT] [--no-resume] [--quiet]`` trains and evaluates one experiment
  into a run directory (resumable; see :mod:`latentgrad.experiments.runner`); every field of the
  experiment's config is an option (``latentgrad run EXPERIMENT --help`` lists them with their
  defaults).
* ``latentgrad report RUN_DIR... [--out DIR]`` prints a markdown comparison of finished runs
  (and writes it with figures to ``DIR``).
* ``latentgrad compare`` runs every estimator on small problems with exact gradients and
  prints bias, variance and cost as a table.

Estimator names are mapped to constructors in :mod:`latentgrad.experiments.registry` (the
library itself never parses strings).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from latentgrad.experiments.registry import ESTIMATORS, describe

if TYPE_CHECKING:
    from latentgrad.experiments.base import Experiment

_RUN_USAGE = "latentgrad run EXPERIMENT [--estimator NAME] [--FIELD VALUE ...] [options]"


def _experiments() -> dict[str, Experiment]:
    from latentgrad.experiments import catalog

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


def _valid_estimators(experiment: Experiment) -> list[str]:
    allowed = experiment.estimators
    return [n for n in ESTIMATORS if allowed is None or n in allowed]


def build_run_parser(experiment: Experiment) -> argparse.ArgumentParser:
    """The options of ``latentgrad run EXPERIMENT``: one per config field, then run options."""
    from latentgrad.experiments.config import add_config_arguments

    estimators = _valid_estimators(experiment)
    parser = argparse.ArgumentParser(
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
    opts.add_argument("--threads", type=int, metavar="N", help="torch threads (default: torch's)")
    opts.add_argument(
        "--checkpoint-every",
        type=float,
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
    from latentgrad.experiments.config import ConfigError, cli_overrides, resolve_config

    experiments = _experiments()
    name = args.experiment
    if name is None:
        print(f"usage: {_RUN_USAGE}", file=sys.stderr)
        print(f"experiments: {', '.join(experiments)}", file=sys.stderr)
        return 2
    if name not in experiments:
        print(
            f"unknown experiment {name!r}; known: {', '.join(experiments)} (see `latentgrad list`)",
            file=sys.stderr,
        )
        return 2
    experiment = experiments[name]
    opts = build_run_parser(experiment).parse_args(args.options)
    try:
        config = resolve_config(
            experiment.config_class,
            file=opts.config_file,
            overrides=cli_overrides(opts, experiment.config_class),
        )
    except ConfigError as err:
        print(f"latentgrad run {name}: {err}", file=sys.stderr)
        return 2
    estimators = _valid_estimators(experiment)
    if config.estimator not in estimators:
        print(
            f"unknown estimator {config.estimator!r} for experiment {name!r}; "
            f"valid: {', '.join(estimators)}",
            file=sys.stderr,
        )
        return 2
    if opts.checkpoint_every < 0:
        print("--checkpoint-every must be >= 0", file=sys.stderr)
        return 2

    from latentgrad.experiments.config import config_to_dict
    from latentgrad.experiments.runner import RunConfigMismatch, default_run_dir, run

    run_dir = Path(opts.run_dir) if opts.run_dir else default_run_dir(experiment, config, opts.out)
    if opts.print_config:
        record = {"experiment": name, "run_dir": str(run_dir), "config": config_to_dict(config)}
        print(json.dumps(record, indent=2))
        return 0
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    try:
        results = run(
            experiment,
            config,
            run_dir,
            resume=not opts.no_resume,
            progress=not opts.quiet,
            checkpoint_seconds=opts.checkpoint_every,
        )
    except RunConfigMismatch as err:
        print(f"latentgrad run {name}: {err}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as err:
        # Bad settings and missing data are the user's to fix: one line, not a traceback.
        if os.environ.get("LATENTGRAD_DEBUG"):
            raise
        print(
            f"latentgrad run {name}: error: {err}\n(set LATENTGRAD_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 2
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
    from latentgrad.experiments.report import report

    try:
        text = report(args.run_dirs, args.out)
    except FileNotFoundError as err:
        print(f"latentgrad report: {err}", file=sys.stderr)
        return 1
    print(text, end="")
    if args.out:
        print(f"wrote {Path(args.out) / 'report.md'}", file=sys.stderr)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from latentgrad.experiments.compare import compare, format_table

    names = args.estimators or list(ESTIMATORS)
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown:
        print(f"unknown estimator(s): {', '.join(unknown)}; see `latentgrad list`", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    chosen = {n: ESTIMATORS[n] for n in names}

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
    parser = argparse.ArgumentParser(
        prog="latentgrad",
        description="Gradient estimators for discrete latent variables.",
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
        "--replicates", type=int, default=4000, help="gradient estimates per estimator"
    )
    p_cmp.add_argument("--seed", type=int, default=0, help="random seed")
    p_cmp.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p_cmp.add_argument("--json", metavar="PATH", help="also write the rows as JSON lines")
    p_cmp.add_argument("--quiet", action="store_true", help="no progress messages")
    p_cmp.set_defaults(func=_cmd_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``latentgrad`` command."""
    args = build_parser().parse_args(argv)
    if getattr(args, "replicates", 2) < 2:
        print("--replicates must be >= 2", file=sys.stderr)
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
