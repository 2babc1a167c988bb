"""Step 11 (on request): myelination-aware inputs and multi-task learning — the infant
T1w/T2w-ratio paper (Park et al. 2026), in CT.

One resumable unit per training (:class:`Unit`): an input condition (channels of
:mod:`ctbrainage.imaging.channels`), a target (chronological or the planted biological age),
the heads besides age (the ablation: segmentation of the lobes' white-matter cores,
reconstruction of the input), a repeat of the cross-validation and its test fold — or, per
condition, one training on site A tested on site B. Each trains :class:`~ctbrainage.learn.
multitask.MultiTaskNet` on step 11's grid and writes its test predictions, its predictions of
the delayed-maturation children and their on-time twins (never trained on), and for the
age-only units Grad-CAM's lobe shares with, where planted, the model's own chain-rule s_k.

Then (:mod:`ctbrainage.steps.s11_tables`): ``multitask_conditions.csv``,
``multitask_ablation.csv``, ``delayed.csv`` and ``multitask/`` (summary, tests, site, gradcam,
delayed summary). On a real cohort (``data``) there is no white-matter truth, no biological age
and no delayed child: the segmentation head and the biological target are left out.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ctbrainage.core.cohort import stratified_folds
from ctbrainage.core.config import Profile, TrainConfig
from ctbrainage.core.labels import LOBES
from ctbrainage.core.layout import RunLayout
from ctbrainage.imaging.channels import parse_condition
from ctbrainage.learn import train
from ctbrainage.learn.datasets import AgeScaler
from ctbrainage.learn.multitask import SEGMENT_CLASSES, MultiTaskNet, MultiTaskRegressor
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
from ctbrainage.steps.s11_inputs import Inputs, cohort_inputs, delayed_inputs, grid_size

STEP = Step(
    "11_multitask",
    settings=(
        "seed",
        "data",
        "age_range_months",
        "age_group_edges",
        "synth.mode",
        "synth.cues",
        "preprocess",
        "train.folds",
        "attribution.gradcam_layer",
        "attribution.bootstrap",
        "multitask",
    ),
    runtime=("synth.workers",),
    version="1",
)
HEADS = ("segment", "reconstruct")
OUT_OF_SITE = -1  # a unit's fold: trained on site A, tested on site B
REPEAT_STRIDE = 100  # repeat r > 0 draws its folds with the profile's seed + REPEAT_STRIDE × r
SCORED_FOLD = 0  # the test fold whose children's maps are scored against the model's own s_k
UNIT_PARTS = ("test", "delayed", "lobe_shares")
RESULTS = ("summary", "tests", "site", "gradcam", "delayed_summary")
TABLES = ("multitask_conditions", "multitask_ablation", "delayed")


@dataclass(frozen=True)
class Unit:
    """One training of step 11."""

    condition: str
    target: str  # "chronological" or "biological"
    heads: str  # "age", or "age+" the heads of :data:`HEADS`
    repeat: int
    fold: int  # the test fold, or OUT_OF_SITE

    @property
    def name(self) -> str:
        where = "siteB" if self.fold == OUT_OF_SITE else f"f{self.fold}"
        parts = (self.condition, self.target[:3], self.heads, f"r{self.repeat}", where)
        return "_".join(parts).replace("+", "-")

    @property
    def out_of_site(self) -> bool:
        return self.fold == OUT_OF_SITE

    @property
    def head_set(self) -> set[str]:
        return set(self.heads.split("+")) - {"age"}


@dataclass(frozen=True)
class Result:
    """Step 11's tables (see the module docstring)."""

    conditions: pd.DataFrame
    ablation: pd.DataFrame
    delayed: pd.DataFrame
    summary: pd.DataFrame
    tests: pd.DataFrame
    site: pd.DataFrame
    gradcam: pd.DataFrame
    delayed_summary: pd.DataFrame


def _check(profile) -> None:
    config = profile.multitask
    for condition in (*config.conditions, config.ablation_condition):
        parse_condition(condition)
    for heads in config.ablation:
        parts = heads.split("+")
        if parts[0] != "age" or not set(parts[1:]) <= set(HEADS) or len(set(parts)) < len(parts):
            raise ValueError(
                f"multitask.ablation: {heads!r} must be 'age' or 'age+' heads of "
                f"{', '.join(HEADS)}, each at most once"
            )
    wrong = [lobe for lobe in config.delay_lobes if lobe not in ("all", *LOBES.values())]
    if wrong:
        raise ValueError(f"multitask.delay_lobes: {wrong}: choose 'all' or a lobe name")
    low, high = config.myelin_window_hu
    if high <= low:
        raise ValueError(f"multitask.myelin_window_hu: {[low, high]} must be increasing")
    size, multiple = grid_size(profile), 2 ** (config.levels - 1)
    if size > profile.preprocess.size or size % multiple:
        raise ValueError(
            f"step 11's grid ({size}) must be at most preprocess.size ({profile.preprocess.size}) "
            f"and a multiple of {multiple} (multitask.levels {config.levels})"
        )


def targets(profile) -> list[str]:
    """The targets trained: the biological age only where a truth plants it."""
    return [t for t in profile.multitask.targets if t == "chronological" or not profile.data]


def ablation(profile) -> list[str]:
    """The ablation's variants: without white-matter labels (a real cohort), no segmentation."""
    found = profile.multitask.ablation
    return [h for h in found if not (profile.data and "segment" in h)]


def units(profile: Profile | Settings) -> list[Unit]:
    """Every training: conditions × targets × repeats × folds (age only), the ablation on
    ``ablation_condition`` with the first target, and per condition the out-of-site one."""
    profile = STEP.view(profile)
    config, aims = profile.multitask, targets(profile)
    cells = [(c, t, "age") for c in config.conditions for t in aims]
    cells += [(config.ablation_condition, aims[0], h) for h in ablation(profile)]
    found = [
        Unit(c, t, h, r, k)
        for c, t, h in dict.fromkeys(cells)
        for r in range(config.repeats)
        for k in range(profile.train.folds)
    ]
    if config.out_of_site:
        found += [Unit(c, aims[0], "age", 0, OUT_OF_SITE) for c in config.conditions]
    return found


def subjects(profile) -> pd.DataFrame:
    """The subjects no earlier step excluded: subject_id, age_months, site, step 03's fold and,
    on a synthetic cohort, biological_age_months."""
    layout = RunLayout(profile.run_path)
    kept = set(kept_subjects(layout, STEP))
    table = s03_train.make_folds(profile)
    table = table[table["subject_id"].isin(kept)].reset_index(drop=True)
    cohort = pd.read_csv(layout.cohort, dtype={"subject_id": str})
    table = table.merge(cohort[["subject_id", "site"]], on="subject_id", how="left")
    if not profile.data:
        truth = pd.read_csv(layout.synthetic.truth_table, dtype={"subject_id": str})
        table = table.merge(truth[["subject_id", "biological_age_months"]], on="subject_id")
    return table


def unit_folds(profile, unit: Unit, table: pd.DataFrame) -> pd.DataFrame:
    """subject_id, age_months (the unit's target), fold: repeat 0 is step 03's folds, a later
    repeat its own age-stratified draw; out of site, site B is the test fold 1."""
    out = table[["subject_id", "age_months", "fold"]].copy()
    if unit.fold == OUT_OF_SITE:
        out["fold"] = (table["site"] == "B").astype(int)
    elif unit.repeat:
        seed = profile.seed + REPEAT_STRIDE * unit.repeat
        out["fold"] = stratified_folds(table["age_months"], profile.train.folds, seed)
    if unit.target == "biological":
        out["age_months"] = table["biological_age_months"]
    return out


def inputs(profile, table: pd.DataFrame) -> list[Path]:
    layout = RunLayout(profile.run_path)
    paths = [layout.folds, layout.cohort, layout.preprocess_table]
    for sid in table["subject_id"]:
        paths += [layout.preprocessed(sid), layout.brain(sid), layout.brain_native(sid)]
        paths += [layout.lobes(sid)]
    if not profile.data:
        truth = layout.synthetic
        paths += [truth.schedule, truth.truth_table, truth.expected_importance]
        paths += [truth.truth_wm(sid) for sid in table["subject_id"]]
    return paths


def unit_outputs(profile, unit: Unit) -> list[Path]:
    return [RunLayout(profile.run_path).multitask_unit(unit.name, p) for p in UNIT_PARTS]


def outputs(profile) -> list[Path]:
    layout = RunLayout(profile.run_path)
    return [layout.multitask_result(n) for n in (*TABLES, *RESULTS)]


# the settings a unit's training and files depend on (the others only the tables)
UNIT_SETTINGS = ("seed", "data", "age_range_months", "synth.mode", "synth.cues", "preprocess",
                 "train.folds", "attribution.gradcam_layer")  # fmt: skip
UNIT_MULTITASK = ("size", "width", "levels", "multiscale", "epochs", "batch_size", "lr",
                  "segment_weight", "reconstruct_weight", "myelin_window_hu", "gm_scale_hu",
                  "delays_months", "delay_lobes")  # fmt: skip


def _unit_check(profile, unit: Unit, table: pd.DataFrame):
    every = STEP.settings_of(profile, subjects=table["subject_id"].tolist())
    settings = {k: every[k] for k in (*UNIT_SETTINGS, "subjects")} | {"unit": unit.name}
    settings["multitask"] = {k: every["multitask"][k] for k in UNIT_MULTITASK}
    return STEP.record(RunLayout(profile.run_path), f"_{unit.name}"), settings


def _stale(profile, table: pd.DataFrame) -> list[StaleUnit]:
    files = inputs(profile, table)  # the same for every unit
    return stale_units(
        units(profile),
        lambda unit: _unit_check(profile, unit, table),
        lambda unit: files,
        lambda unit: unit_outputs(profile, unit),
        STEP.version,
    )


def _final_check(profile):
    parts = [p for u in units(profile) for p in unit_outputs(profile, u)]
    return STEP.record(RunLayout(profile.run_path), "_final"), STEP.settings_of(profile), parts


TABLES_VERSION = f"{STEP.version}/tables2"  # bump when s11_tables changes a table


def is_fresh(profile: Profile | Settings, fold: int | None = None) -> bool:
    """True when every unit and the tables are up to date."""
    profile = STEP.view(profile)
    _check(profile)
    if _stale(profile, subjects(profile)):
        return False
    record, settings, parts = _final_check(profile)
    return up_to_date(record, settings, TABLES_VERSION, parts, outputs(profile))


def run(profile: Profile, gpu: int | None = None, progress: bool = True) -> Result:
    """Every unit that is not up to date, then the tables; returns them."""
    from ctbrainage.core.workers import progress_bar

    profile = STEP.view(profile)
    _check(profile)
    table = subjects(profile)
    todo = _stale(profile, table)
    arrays = None
    with progress_bar(total=len(todo), desc="step 11", progress=progress, unit="training") as bar:
        for stale in todo:
            prints = stale.record.fingerprints(stale.inputs)
            arrays = arrays or _arrays(profile, table, progress)
            bar.set_postfix_str(stale.unit.name)
            run_unit(profile, stale.unit, table, arrays, gpu)
            stale.record.write(stale.settings, STEP.version, prints)
            bar.update()
    record, settings, parts = _final_check(profile)
    if not up_to_date(record, settings, TABLES_VERSION, parts, outputs(profile)):
        from ctbrainage.steps.s11_tables import write_tables

        prints = record.fingerprints(parts)
        write_tables(profile, units(profile), ablation(profile))
        record.write(settings, TABLES_VERSION, prints)
    return load(profile)


def _arrays(profile, table: pd.DataFrame, progress: bool) -> dict:
    scored = table.loc[table["fold"] == SCORED_FOLD, "subject_id"].tolist()
    found = {"cohort": cohort_inputs(profile, table["subject_id"].tolist(), scored, progress)}
    if not profile.data:
        found["delayed"] = delayed_inputs(profile, progress)
    return found


# ---- one training ------------------------------------------------------------------------------
def unit_profile(profile, unit: Unit) -> Profile:
    """The profile a unit trains with: step 11's grid, AdamW annealed with a cosine, MSE."""
    config = profile.multitask
    return Profile(
        name=profile.name,
        run_dir=profile.run_dir,
        seed=profile.seed + REPEAT_STRIDE * unit.repeat,
        age_range_months=profile.age_range_months,
        preprocess=dataclasses.replace(profile.preprocess, size=grid_size(profile)),
        train=TrainConfig(
            folds=profile.train.folds, epochs=config.epochs, batch_size=config.batch_size,
            lr=config.lr, optimizer="adamw", schedule="cosine", loss="mse",
        ),
    )  # fmt: skip


def build_net(profile, unit: Unit) -> MultiTaskNet:
    config = profile.multitask
    return MultiTaskNet(
        in_channels=len(parse_condition(unit.condition)),
        width=config.width,
        levels=config.levels,
        segment_classes=SEGMENT_CLASSES if "segment" in unit.head_set else 0,
        reconstruct="reconstruct" in unit.head_set,
        multiscale=config.multiscale,
    )


def run_unit(profile, unit: Unit, table: pd.DataFrame, arrays: dict, gpu) -> None:
    """Train one unit and write its tables (``RunLayout.multitask_unit``)."""
    layout, config = RunLayout(profile.run_path), profile.multitask
    cohort: Inputs = arrays["cohort"]
    folds = unit_folds(profile, unit, table)
    trained = unit_profile(profile, unit)
    fitted = train.fit_fold(
        trained, folds, 1 if unit.fold == OUT_OF_SITE else unit.fold,
        lambda ids: cohort.x(unit.condition, ids), log_dir=layout.logs_dir,
        log_name=layout.multitask_log_name(unit.name), gpu=gpu, progress=False,
        module=lambda: MultiTaskRegressor(trained, build_net(profile, unit),
                                          config.segment_weight, config.reconstruct_weight),
        labels=(lambda ids: cohort.labels[cohort.rows(ids)]) if "segment" in unit.head_set
        else None,
    )  # fmt: skip
    model = fitted.trainer.lightning_module.model.eval()
    scaler = AgeScaler(*profile.age_range_months)
    test = fitted.predictions[["subject_id", "fold", "predicted_months"]].merge(
        table.drop(columns="fold"), on="subject_id"
    )
    write_table(layout.multitask_unit(unit.name, "test"), test)
    delayed = pd.DataFrame(columns=["subject_id", "predicted_months"])
    if "delayed" in arrays:
        rows, inputs = arrays["delayed"]
        x = torch.from_numpy(inputs.x(unit.condition, inputs.ids))
        with torch.no_grad():
            unit_age = torch.cat([model(part)[:, 0] for part in x.split(8)]).numpy()
        delayed = rows.assign(predicted_months=scaler.to_months(unit_age))
    write_table(layout.multitask_unit(unit.name, "delayed"), delayed)
    lobes = _lobes(profile, unit, model, test, cohort, scaler) if unit.heads == "age" else None
    write_table(layout.multitask_unit(unit.name, "lobe_shares"), _or_empty(lobes))


LOBE_COLUMNS = ["subject_id", "age_months", "lobe", "importance", "reference", "s_chain"]


def _or_empty(table: pd.DataFrame | None) -> pd.DataFrame:
    return pd.DataFrame(columns=LOBE_COLUMNS) if table is None else table


def _lobes(profile, unit: Unit, model, test: pd.DataFrame, cohort: Inputs, scaler) -> pd.DataFrame:
    """Grad-CAM's share of |map| per lobe for each test child and, where its planted slopes
    exist, the model's chain-rule s_k = Σ_c Σ_v ∂f/∂x_cv · ∂x_cv/∂age_k (months per month)."""
    from ctbrainage.interpret import attribution

    if unit.fold == OUT_OF_SITE:
        return None
    ids = test["subject_id"].tolist()
    rows = cohort.rows(ids)
    x = torch.from_numpy(cohort.x(unit.condition, ids))
    settings = attribution.MapSettings(gradcam_layer=profile.attribution.gradcam_layer)
    maps = attribution.voxel_map(model, x, "gradcam", settings)
    brain = torch.from_numpy(cohort.brain[rows])
    labels = torch.from_numpy(cohort.lobes[rows].astype(np.int64))
    shares = attribution.lobe_shares(maps, labels, brain, list(LOBES))
    sizes = attribution.lobe_shares(brain.double(), labels, brain, list(LOBES))
    found = []
    for i, subject in enumerate(test.itertuples()):
        s_chain = _chain_rule(model, x[i], cohort.slopes.get(subject.subject_id), unit, scaler)
        found += [
            {"subject_id": subject.subject_id, "age_months": subject.age_months, "lobe": lobe,
             "importance": shares[i, j], "reference": sizes[i, j], "s_chain": s_chain[j]}
            for j, lobe in enumerate(LOBES.values())
        ]  # fmt: skip
    return pd.DataFrame(found, columns=LOBE_COLUMNS)


def _chain_rule(model, x: torch.Tensor, slopes: dict | None, unit: Unit, scaler) -> np.ndarray:
    if slopes is None:
        return np.full(len(LOBES), np.nan)
    x = x[None].clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(model(x)[0, 0], x)
    per_channel = np.stack([slopes[c] for c in parse_condition(unit.condition)], axis=1)
    inner = (gradient[0].numpy()[None] * per_channel).sum(axis=(1, 2, 3, 4))
    return inner * (scaler.hi - scaler.lo)


def load(profile: Profile | Settings) -> Result:
    """The step's tables (a clear error when the step has not run)."""
    profile = STEP.view(profile)
    layout = RunLayout(profile.run_path)
    STEP.check_outputs(layout, outputs(profile))

    def read(name):
        return pd.read_csv(layout.multitask_result(name), dtype={"subject_id": str})

    found = {n.removeprefix("multitask_"): read(n) for n in (*TABLES, *RESULTS)}
    return Result(**found)
