"""Step 10 (on request): explanations across seeds, augmentation and registration — the
multi-seed paper's 2 × 2 × seeds design, in CT, with two truths to score the maps against.

Per training condition (augmentation off/on × registration off/on), seed and test fold of step
03's ``folds.csv`` (one resumable unit each, :mod:`ctbrainage.steps.s10_seed`): the profile's
model trained with early stopping on an inner validation split that the seed draws, with the
checkpoints at the phases; per checkpoint its test MAE and ``robustness.methods``' maps
(z-scored per child, averaged over the test children); at the best checkpoint Table 1's lobe
ΔAE and the model's own chain-rule s_k. Every unit's raw numbers stay in
``robustness/trainings/``.

Then across seeds (``robustness/``): the voxels that agree (top ``agree_top`` of the map in more
than half of the seeds) per condition and phase, each seed's agreement with the others, the lobe
ranks of each seed's top ``rank_top`` and their Kendall's W; per seed the faithfulness (against
its own s_k) and the correctness (against the planted ideal observer) of its lobe importance;
Table 1 per seed and the share of seeds in which each cell is significant and keeps the sign of
the reference training (no augmentation, no registration, seed 0); Welch's tests between
conditions; and whether agreement goes with faithfulness or correctness (``robustness.csv``
summarises per condition).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ctbrainage.core.config import Profile
from ctbrainage.core.layout import RunLayout
from ctbrainage.interpret.attribution import VOXEL_MAPS
from ctbrainage.steps import s03_train
from ctbrainage.steps.contract import (
    Settings,
    StaleUnit,
    Step,
    kept_subjects,
    stale_units,
    up_to_date,
    write_table,
)
from ctbrainage.steps.s10_seed import Arrays, Unit, run_unit

STEP = Step(
    "10_robustness",
    settings=(
        "seed",
        "data",
        "age_range_months",
        "age_group_edges",
        "preprocess",
        "lobes.method",
        "lobes.keep_warp",
        "model",
        "train",
        "perturb",
        "stats",
        "attribution",
        "robustness",
    ),
    runtime=("synth.workers",),
    version="1",
)
UNIT_PARTS = ("checkpoints", "curve", "subjects", "perturbation", "sensitivity", "maps")
# the settings a unit's training and measurements depend on (the others only the tables)
UNIT_SETTINGS = ("seed", "data", "age_range_months", "preprocess", "model", "train", "perturb")
UNIT_ROBUSTNESS = ("epochs", "patience", "val_fraction", "phases", "methods", "rank_top")
UNIT_ATTRIBUTION = (
    "ig_steps",
    "smoothgrad_samples",
    "smoothgrad_sd",
    "batch_size",
    "gradcam_layer",
)
RESULTS = (
    "runs",
    "checkpoints",
    "agreement",
    "lobe_ranks",
    "table1_cells",
    "table1_share",
    "tests",
    "agreement_tests",
    "curves",
)


@dataclass(frozen=True)
class Result:
    """Step 10's tables (see the module docstring)."""

    table: pd.DataFrame  # robustness.csv: one row per condition
    runs: pd.DataFrame  # one row per unit: errors, epochs, agreement, faithfulness, correctness
    checkpoints: pd.DataFrame  # every unit's checkpoints: epoch, threshold, validation, test MAE
    agreement: pd.DataFrame  # per condition, fold, checkpoint and method
    lobe_ranks: pd.DataFrame  # per seed: each lobe's share of the top set and its rank
    table1_cells: pd.DataFrame  # Table 1 per condition and seed
    table1_share: pd.DataFrame  # per condition and cell: share significant, share sign kept
    tests: pd.DataFrame  # Welch's tests between conditions across seeds
    agreement_tests: pd.DataFrame  # Spearman's ρ of agreement with faithfulness, correctness
    curves: pd.DataFrame  # every unit's validation MAE per epoch


def _check(profile) -> None:
    config = profile.robustness
    wrong = [m for m in config.methods if m not in VOXEL_MAPS]
    if wrong:
        raise ValueError(
            f"robustness.methods: {wrong} are not voxel maps of a model; choose from "
            f"{', '.join(VOXEL_MAPS)}"
        )
    lobes = profile.lobes
    if True in config.register and (lobes.method != "atlas" or not lobes.keep_warp):
        raise ValueError(
            "registration on warps each subject onto step 02's atlas with the atlas method's "
            f"own warp; lobes.method is {lobes.method!r} and lobes.keep_warp {lobes.keep_warp} "
            "(set lobes.method: atlas and lobes.keep_warp: true, then run step 02 again; or "
            "robustness.register: [false])"
        )


def units(profile: Profile | Settings) -> list[Unit]:
    """Every training: condition × seed × fold."""
    config = STEP.view(profile).robustness
    grid = itertools.product(config.augment, config.register, range(config.seeds), config.folds)
    return [Unit(bool(a), bool(r), s, int(k)) for a, r, s, k in grid]


def folds(profile: Profile | Settings) -> pd.DataFrame:
    """Step 03's folds over the subjects that no earlier step excluded."""
    kept = set(kept_subjects(RunLayout(profile.run_path), STEP))
    table = s03_train.make_folds(profile)
    return table[table["subject_id"].isin(kept)].reset_index(drop=True)


def _tested(profile, table: pd.DataFrame) -> list[str]:
    return table.loc[table["fold"].isin(profile.robustness.folds), "subject_id"].tolist()


def unit_inputs(profile, unit: Unit, table: pd.DataFrame) -> list[Path]:
    layout = RunLayout(profile.run_path)
    paths = [layout.folds]
    for sid in table["subject_id"]:
        paths += [layout.preprocessed(sid), layout.brain(sid), layout.lobes(sid)]
        paths += [layout.atlas_warp(sid)] if unit.register else []
    if not profile.data:
        truth = layout.synthetic
        tested = table.loc[table["fold"] == unit.fold, "subject_id"]
        paths += [truth.schedule] + [truth.truth(sid) for sid in tested]
    return paths


def unit_outputs(profile, unit: Unit) -> list[Path]:
    return [RunLayout(profile.run_path).robustness_unit(unit.name, p) for p in UNIT_PARTS]


def outputs(profile) -> list[Path]:
    layout = RunLayout(profile.run_path)
    return [layout.robustness_table] + [layout.robustness_result(n) for n in RESULTS]


def _unit_check(profile, unit: Unit, table: pd.DataFrame):
    every = STEP.settings_of(profile, subjects=table["subject_id"].tolist())
    settings = {k: every[k] for k in UNIT_SETTINGS} | {"unit": unit.name}
    settings["robustness"] = {k: every["robustness"][k] for k in UNIT_ROBUSTNESS}
    settings["maps"] = {k: every["attribution"][k] for k in UNIT_ATTRIBUTION}
    return STEP.record(RunLayout(profile.run_path), f"_{unit.name}"), settings


def _stale(profile, table: pd.DataFrame) -> list[StaleUnit]:
    return stale_units(
        units(profile),
        lambda unit: _unit_check(profile, unit, table),
        lambda unit: unit_inputs(profile, unit, table),
        lambda unit: unit_outputs(profile, unit),
        STEP.version,
    )


def _final_check(profile):
    parts = [p for u in units(profile) for p in unit_outputs(profile, u)]
    return STEP.record(RunLayout(profile.run_path), "_final"), STEP.settings_of(profile), parts


TABLES_VERSION = f"{STEP.version}/tables2"  # bump when s10_tables changes a table


def is_fresh(profile: Profile | Settings, fold: int | None = None) -> bool:
    """True when every unit and the tables across seeds are up to date."""
    profile = STEP.view(profile)
    _check(profile)
    if _stale(profile, folds(profile)):
        return False
    record, settings, parts = _final_check(profile)
    return up_to_date(record, settings, TABLES_VERSION, parts, outputs(profile))


def run(profile: Profile, gpu: int | None = None, progress: bool = True) -> Result:
    """Every unit that is not up to date, then the tables across seeds; returns them."""
    from ctbrainage.core.workers import progress_bar

    profile = STEP.view(profile)
    _check(profile)
    table = folds(profile)
    todo = _stale(profile, table)
    arrays = None
    with progress_bar(total=len(todo), desc="step 10", progress=progress, unit="training") as bar:
        for stale in todo:
            prints = stale.record.fingerprints(stale.inputs)
            arrays = arrays or Arrays(profile, table, _tested(profile, table), progress)
            bar.set_postfix_str(stale.unit.name)
            run_unit(profile, stale.unit, table, arrays, gpu)
            stale.record.write(stale.settings, STEP.version, prints)
            bar.update()
    record, settings, parts = _final_check(profile)
    if not up_to_date(record, settings, TABLES_VERSION, parts, outputs(profile)):
        prints = record.fingerprints(parts)
        _finalise(profile)
        record.write(settings, TABLES_VERSION, prints)
    return load(profile)


# ---- across seeds ------------------------------------------------------------------------------


def _read(profile, unit: Unit, part: str) -> pd.DataFrame:
    path = RunLayout(profile.run_path).robustness_unit(unit.name, part)
    return pd.read_csv(path, dtype={"subject_id": str}).assign(
        condition=unit.condition,
        augment=unit.augment,
        register=unit.register,
        seed=unit.seed,
        fold=unit.fold,
    )


def _finalise(profile) -> None:
    from ctbrainage.steps.s10_tables import tables

    layout = RunLayout(profile.run_path)
    every = units(profile)
    read = {
        part: pd.concat([_read(profile, u, part) for u in every], ignore_index=True)
        for part in UNIT_PARTS
        if part != "maps"
    }
    maps = {u.name: np.load(layout.robustness_unit(u.name, "maps")) for u in every}
    try:
        made = tables(profile, every, read, maps)
    finally:
        for opened in maps.values():
            opened.close()
    write_table(layout.robustness_table, made.pop("table"))
    for name, frame in made.items():
        write_table(layout.robustness_result(name), frame)


def load(profile: Profile | Settings) -> Result:
    """The step's tables (a clear error when the step has not run)."""
    profile = STEP.view(profile)
    layout = RunLayout(profile.run_path)
    STEP.check_outputs(layout, outputs(profile))
    read = {n: pd.read_csv(layout.robustness_result(n), dtype={"subject_id": str}) for n in RESULTS}
    return Result(pd.read_csv(layout.robustness_table), **read)
