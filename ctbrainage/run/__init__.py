"""Run the pipeline's notebooks end to end with papermill; ``run_all.py`` is its command line.

``plan`` checks the options against the notebooks' parameter cells and the profile, before
anything runs, and lays out the notebook runs; ``execute`` runs them (folds in parallel,
resumable) into ``<run>/notebooks/`` and writes the HTML report (``<run>/html/``,
``<run>/index.html``); ``manifest`` records it all in ``<run>/manifest.json``; ``cli`` is the
argument parser. The function ``execute`` is not re-exported: ``run.execute`` is the module.
"""

from ctbrainage.run.cli import main
from ctbrainage.run.execute import (
    FAILED,
    USAGE,
    execute_notebook,
    failure_summary,
    run_all,
    timing_table,
)
from ctbrainage.run.plan import (
    DRIVER_PARAMETERS,
    FOLD_STEP,
    NOTEBOOKS,
    NotebookRun,
    Options,
    Plan,
    Text,
    UsageError,
    assignments,
    declared_parameters,
    make_plan,
)
from ctbrainage.run.record import Manifest

__all__ = [
    "DRIVER_PARAMETERS",
    "FAILED",
    "FOLD_STEP",
    "NOTEBOOKS",
    "USAGE",
    "Manifest",
    "NotebookRun",
    "Options",
    "Plan",
    "Text",
    "UsageError",
    "assignments",
    "declared_parameters",
    "execute_notebook",
    "failure_summary",
    "main",
    "make_plan",
    "run_all",
    "timing_table",
]
