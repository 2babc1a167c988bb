"""``run_all.py``'s command line: its arguments as ``Options``, then ``run_all``."""

from __future__ import annotations

import argparse

from ctbrainage.core.config import available_profiles
from ctbrainage.run.execute import run_all
from ctbrainage.run.plan import NOTEBOOKS, Options, Text, convert


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _assignment(text: str) -> tuple[str, Text]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), Text(value)


def _description() -> str:
    """Every step, the default range and the steps that run only when asked (from the plan)."""
    default = [name for number, name in NOTEBOOKS.items() if number <= Options.last]
    asked = [name for number, name in NOTEBOOKS.items() if number > Options.last]
    return (
        f"Run the pipeline's notebooks with papermill into the run directory. By default "
        f"{' -> '.join(default)} (03 once per fold, folds in parallel); on request "
        f"(--from NN --to NN): {', '.join(asked)}. Resumes: finished steps are skipped. "
        "Without arguments: the demo profile on the embedded synthetic cohort."
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python run_all.py", description=_description())
    p.add_argument(
        "--profile",
        default="demo",
        help=f"{' | '.join(available_profiles())}, or a profile YAML (default: demo)",
    )
    p.add_argument("--data", default="", help="manifest CSV of your cohort (default: synthetic)")
    p.add_argument("--run-dir", default="", help="run directory (default: runs/<profile>)")
    p.add_argument("--gpus", type=_int_list, default=(), help="e.g. 0,1: one fold per GPU")
    p.add_argument("--folds", type=_int_list, default=None, help="e.g. 0,2 (default: all)")
    p.add_argument(
        "--from", dest="first", type=int, default=1, metavar="NN", help="first step (default: 1)"
    )
    p.add_argument(
        "--to",
        dest="last",
        type=int,
        default=Options.last,
        metavar="NN",
        help=f"last step (default: {Options.last}; 1-{max(NOTEBOOKS)})",
    )
    p.add_argument(
        "--executor",
        choices=["local", "slurm"],
        default="local",
        help="where the per-fold notebooks run: here, or as SLURM jobs through submitit",
    )
    p.add_argument(
        "--jobs", type=int, default=0, help="folds at once (default: one per GPU; CPU: cores/4)"
    )
    p.add_argument("--figures", default="", help="04, 06 and 07 also save their figures here")
    p.add_argument(
        "-p",
        "--parameter",
        dest="parameters",
        type=_assignment,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a notebook parameter (e.g. workers=2) or a profile setting (e.g. train.epochs=3)",
    )
    p.add_argument("--force", action="store_true", help="rerun steps that are already done")
    p.add_argument("--timeout", type=float, default=None, help="seconds per cell (default: none)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument(
        "--submitit-cluster", default="slurm", help="submitit cluster for --executor slurm"
    )
    p.add_argument(
        "--slurm",
        dest="submitit_parameters",
        type=_assignment,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="submitit parameter, e.g. slurm_partition=gpu or timeout_min=600",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """``run_all.py``: parse the command line and run; returns the exit code."""
    args = _parser().parse_args(argv)
    fields = vars(args)
    fields["parameters"] = dict(args.parameters)
    fields["submitit_parameters"] = {k: convert(v, None) for k, v in args.submitit_parameters}
    return run_all(Options(**fields))
