"""Every step of a run by number: its module (imported on first use) and whether it is fresh.

Steps 01-08, 10 and 11 live in :mod:`ctbrainage.steps`; step 09 applies the new-scans app to the
run, so it lives with the apps (:mod:`ctbrainage.apps.new_scans`), which stand above the steps.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ctbrainage.core.config import Profile

MODULES = {
    1: "ctbrainage.steps.s01_preprocess",
    2: "ctbrainage.steps.s02_lobes",
    3: "ctbrainage.steps.s03_train",
    4: "ctbrainage.steps.s04_evaluate",
    5: "ctbrainage.steps.s05_perturbation",
    6: "ctbrainage.steps.s06_stats",
    7: "ctbrainage.steps.s07_attribution",
    8: "ctbrainage.steps.s08_stacking",
    9: "ctbrainage.apps.new_scans",
    10: "ctbrainage.steps.s10_robustness",
    11: "ctbrainage.steps.s11_multitask",
}


def step_module(number: int) -> ModuleType:
    """The module of step ``number`` (imported on first use)."""
    return importlib.import_module(MODULES[number])


def is_fresh(number: int, profile: Profile, fold: int | None = None) -> bool:
    """True when step ``number`` (fold ``fold`` of step 03) would compute nothing: its record
    matches today's settings, code and inputs, and its outputs exist. An upstream file that is
    missing, or a problem of the data (``ValueError``, which running the step reports), makes
    it not fresh; any other error is a bug and is raised."""
    module = step_module(number)
    try:
        return module.is_fresh(profile, fold) if fold is not None else module.is_fresh(profile)
    except (FileNotFoundError, ValueError):
        return False
