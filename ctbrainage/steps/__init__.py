"""The pipeline's steps, one module per notebook (the step contract: :mod:`.contract`).

=====  ==========================  ==================================================
step   module                      writes
=====  ==========================  ==================================================
01     ``s01_preprocess``          cohort.csv, preprocessed/, qc/, preprocess.csv
02     ``s02_lobes``               lobes/, lobes.csv
03     ``s03_train`` (per fold)    folds.csv, models/, logs/, predictions.csv
04     ``s04_evaluate``            metrics.csv, brain_age_gap.csv, bias_correction.csv
05     ``s05_perturbation``        perturbation*.csv, lobe_levels.csv
06     ``s06_stats``               lobe_age_tests.csv, lobe_age_windows.csv, table1.*,
                                   recovery.json
07     ``s07_attribution``         attribution*.csv, attribution_maps.npz, attribution_parts/
08     ``s08_stacking``            stacking.csv, stacking_anova.csv, stacking/ (on request)
09     ``s09_new_scans``           bundle/, new_scans/ (a folder of new scans laid out like a run)
=====  ==========================  ==================================================

Every step also writes its exclusions into ``exclusions.csv`` and its record into ``records/``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ctbrainage.config import Profile

MODULES = {
    1: "s01_preprocess",
    2: "s02_lobes",
    3: "s03_train",
    4: "s04_evaluate",
    5: "s05_perturbation",
    6: "s06_stats",
    7: "s07_attribution",
    8: "s08_stacking",
    9: "s09_new_scans",
}


def step_module(number: int) -> ModuleType:
    """The module of step ``number`` (imported on first use)."""
    return importlib.import_module(f"{__name__}.{MODULES[number]}")


def is_fresh(number: int, profile: Profile, fold: int | None = None) -> bool:
    """True when step ``number`` (fold ``fold`` of step 03) would compute nothing: its record
    matches today's settings, code and inputs, and its outputs exist."""
    module = step_module(number)
    try:
        return module.is_fresh(profile, fold) if fold is not None else module.is_fresh(profile)
    except (FileNotFoundError, ValueError, KeyError):  # an upstream file is missing or damaged
        return False
