"""Step 06: paired statistics per lobe and age group, the paper's Table 1, and (synthetic runs)
how well each fill's readout recovers the planted maturation schedule.

From step 05's tables: every lobe × age-group test (``lobe_age_tests.csv``), the same over
sliding windows (``lobe_age_windows.csv``, ``lobe_tests.window_months`` wide every
``lobe_tests.window_step``), Table 1 as ``table1.csv`` / ``.md`` / ``.tex``, and for the embedded
synthetic cohort ``recovery.json``: the profile's fill scored against the planted importance
(its ``definition``: the first of ``IMPORTANCE_DEFINITIONS``), and under ``by_fill`` every fill of
step 05, read as ΔAE (the paper) and as |Δprediction| (``lobe_tests.mean_abs_change``), against
every
definition.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ctbrainage.core.atomic import atomic_write_json, atomic_write_text
from ctbrainage.core.config import Profile
from ctbrainage.core.layout import RunLayout
from ctbrainage.imaging import run_arrays
from ctbrainage.stats import lobe_tests, table1
from ctbrainage.steps import s05_perturbation
from ctbrainage.steps.contract import Outcome, Settings, Step, write_table
from ctbrainage.synth.schedule import IMPORTANCE_DEFINITIONS
from ctbrainage.synth.scoring import recovery_row, score_importance

STEP = Step(
    "06_stats_figures",
    settings=("seed", "data", "age_group_edges", "perturb", "stats"),
    version="1",
    requires=(s05_perturbation.STEP,),
)


@dataclass(frozen=True)
class Result:
    perturbation: pd.DataFrame  # step 05's table of the profile's fill
    tests: pd.DataFrame  # one row per age group × lobe (the long form of Table 1)
    table1: pd.DataFrame  # the paper's Table 1 for this run
    windows: pd.DataFrame  # the tests over sliding age windows
    expected: pd.DataFrame | None  # synthetic runs: the planted importance (scored definition)
    recovery: dict | None  # synthetic runs: the profile's fill against the planted truth
    by_fill: pd.DataFrame | None  # synthetic runs: every fill's recovery per truth definition


@STEP.inputs
def inputs(profile: Settings) -> list[Path]:
    layout = RunLayout(profile.run_path)
    tables = [layout.perturbation(f, profile.perturb.fill) for f in profile.perturb.fills]
    return tables + ([] if profile.data else [layout.synthetic.expected_importance])


@STEP.outputs
def outputs(profile: Settings) -> list[Path]:
    layout = RunLayout(profile.run_path)
    made = [layout.lobe_age_table, layout.trajectory, *(layout.table1(s) for s in table1.SUFFIXES)]
    return made + ([] if profile.data else [layout.recovery])


is_fresh = STEP.is_fresh


def tests(
    profile: Profile | Settings, perturbation: pd.DataFrame, windows: bool = False
) -> pd.DataFrame:
    """:func:`lobe_tests.lobe_age_table` with the profile's groups (or windows), alpha, FDR,
    seed."""
    config = profile.stats
    return lobe_tests.lobe_age_table(
        perturbation,
        edges=profile.age_group_edges,
        windows=(config.window_months, config.window_step) if windows else None,
        alpha=config.alpha,
        fdr=config.fdr,
        seed=profile.seed,
    )


def run(profile: Profile) -> Result:
    """The statistics of step 05's tables; writes the files in the module docstring (cheap:
    computed on every call)."""
    return STEP.run(profile, _compute, always=True).result


def _compute(profile: Settings) -> Outcome:
    layout = RunLayout(profile.run_path)
    perturbation = run_arrays.perturbation(profile, profile.perturb.fill)
    long = tests(profile, perturbation)
    ours = table1.table1(long)
    windows = tests(profile, perturbation, windows=True)
    write_table(layout.lobe_age_table, long)
    write_table(layout.trajectory, windows)
    for suffix, text in table1.render(ours).items():
        atomic_write_text(layout.table1(suffix), text)
    expected = recovery = by_fill = None
    if not profile.data:
        truths = pd.read_csv(layout.synthetic.expected_importance)
        by_definition = {d: truths[truths["definition"] == d] for d in IMPORTANCE_DEFINITIONS}
        expected = by_definition[IMPORTANCE_DEFINITIONS[0]]
        recovery = {"definition": IMPORTANCE_DEFINITIONS[0], **score_importance(long, expected)}
        main = profile.perturb.fill
        tables = {
            f: perturbation if f == main else run_arrays.perturbation(profile, f)
            for f in profile.perturb.fills
        }
        readouts = {
            "mean_delta_ae": {
                f: long if f == main else tests(profile, t) for f, t in tables.items()
            },
            "mean_abs_change": {
                f: lobe_tests.mean_abs_change(t, profile.age_group_edges) for f, t in tables.items()
            },
        }
        rows = [
            recovery_row(fill, measured[fill], truth, value)
            for truth in by_definition.values()
            for value, measured in readouts.items()
            for fill in profile.perturb.fills
        ]
        by_fill = pd.DataFrame(rows)
        recovery["by_fill"] = by_fill.to_dict("records")
        atomic_write_json(layout.recovery, recovery)
    result = Result(perturbation, long, ours, windows, expected, recovery, by_fill)
    return Outcome(subjects=False, result=result)
