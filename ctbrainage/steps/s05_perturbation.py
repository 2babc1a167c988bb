"""Step 05: lobe-wise perturbation (the paper's section 3.4) with every fill.

Every subject of ``predictions.csv`` that no earlier step excluded is predicted by its
out-of-fold model whole and with each lobe filled (``perturb.fill``; and every fill of
``perturb.compare_fills`` beside it): ``perturbation.csv`` for the profile's fill,
``perturbation_<fill>.csv`` for the others, and ``lobe_levels.csv`` (each subject's lobe means
and its age group's, the targets of the ``group_level`` fill). Subjects are resumable: one
whose inputs, model and settings are unchanged is not perturbed again. A subject that fails
(missing or damaged lobe labels, an empty lobe) is excluded with its reason; the others go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ctbrainage.core.config import Profile
from ctbrainage.core.labels import LOBES
from ctbrainage.core.layout import RunLayout
from ctbrainage.core.workers import progress_bar, set_aside
from ctbrainage.imaging import run_arrays
from ctbrainage.imaging.run_arrays import group_levels, subject_arrays
from ctbrainage.interpret import perturb
from ctbrainage.learn.datasets import AgeScaler
from ctbrainage.steps import s03_train
from ctbrainage.steps.contract import (
    Outcome,
    Settings,
    Step,
    kept_subjects,
    read_exclusions,
    write_table,
)

STEP = Step(
    "05_perturbation",
    settings=("seed", "age_range_months", "age_group_edges", "train.folds", "perturb"),
    version=f"1/perturb{perturb.PERTURB_VERSION}",
    requires=(s03_train.STEP,),
)


@dataclass(frozen=True)
class Result:
    tables: dict[str, pd.DataFrame]  # fill → perturbation table (the profile's fill first)
    excluded: pd.DataFrame  # this step's exclusions

    @property
    def table(self) -> pd.DataFrame:
        """The profile's fill."""
        return next(iter(self.tables.values()))


def perturbation_path(profile: Profile | Settings, fill: str) -> Path:
    """Where the table of ``fill`` lies."""
    return RunLayout(profile.run_path).perturbation(fill, profile.perturb.fill)


def subjects(profile: Profile | Settings) -> pd.DataFrame:
    """Rows of ``predictions.csv`` (subject_id, fold, age_months) of the subjects kept so far
    (none before step 03 has written it)."""
    layout = RunLayout(profile.run_path)
    if not layout.predictions.exists():
        return pd.DataFrame(columns=["subject_id", "fold", "age_months"])
    table = pd.read_csv(layout.predictions, dtype={"subject_id": str})
    kept = set(kept_subjects(layout, STEP))
    return table[table["subject_id"].isin(kept)].reset_index(drop=True)


@STEP.inputs
def inputs(profile: Settings) -> list[Path]:
    layout = RunLayout(profile.run_path)
    ids = subjects(profile)["subject_id"]
    models = [layout.model(k) for k in range(profile.train.folds)]
    volumes = [p for s in ids for p in (layout.preprocessed(s), layout.lobes(s))]
    return [layout.predictions, *models, *volumes]


@STEP.outputs
def outputs(profile: Settings) -> list[Path]:
    return [perturbation_path(profile, f) for f in profile.perturb.fills] + [
        RunLayout(profile.run_path).lobe_levels
    ]


@STEP.recorded
def recorded(profile: Settings) -> dict:
    return {"subjects": list(subjects(profile)["subject_id"])}


is_fresh = STEP.is_fresh


def run(
    profile: Profile, gpu: int | None = None, progress: bool = True, batch_size: int = 16
) -> Result:
    """Perturb every kept subject with every fill; see the module docstring."""
    device = torch.device("cpu" if gpu is None else f"cuda:{gpu}")

    def compute(cfg: Settings) -> Outcome:
        table = subjects(cfg)
        levels = _lobe_levels(cfg, table, progress)
        errors: dict[str, BaseException] = {}
        for fill in cfg.perturb.fills:
            rows, failed = _perturb_fill(cfg, table, fill, levels, device, batch_size, progress)
            write_table(perturbation_path(cfg, fill), rows)
            errors.update({sid: err for sid, err in failed.items() if sid not in errors})
        return Outcome(failures=errors)

    STEP.run(profile, compute)
    profile = STEP.view(profile)
    layout = RunLayout(profile.run_path)
    excluded = read_exclusions(layout)
    tables = {fill: run_arrays.perturbation(profile, fill) for fill in profile.perturb.fills}
    return Result(tables, excluded[excluded["step"] == STEP.name].reset_index(drop=True))


def _lobe_levels(profile: Settings, table: pd.DataFrame, progress: bool) -> pd.DataFrame:
    """``lobe_levels.csv``: per subject and lobe its mean input and its age group's mean (the
    target of a ``group_level`` fill). Subjects whose inputs cannot be read get none."""
    layout = RunLayout(profile.run_path)
    means = {}
    for sid in progress_bar(table["subject_id"], desc="lobe levels", progress=progress):
        try:
            volume, labels = subject_arrays(layout, sid)
            means[sid] = perturb.lobe_means(volume, labels)
        except Exception:  # noqa: BLE001 - reported when the subject itself is perturbed
            continue
    ages = table.set_index("subject_id")["age_months"]
    targets = perturb.level_targets(means, ages, profile.age_group_edges)
    rows = [
        {
            "subject_id": sid,
            "lobe": LOBES[k],
            "lobe_mean": mean,
            "group_level": targets.get(sid, {}).get(k, np.nan),
        }
        for sid, lobes in means.items()
        for k, mean in lobes.items()
    ]
    levels = pd.DataFrame(rows, columns=["subject_id", "lobe", "lobe_mean", "group_level"])
    write_table(layout.lobe_levels, levels)
    return levels


def _perturb_fill(profile, table, fill, levels, device, batch_size, progress):
    """Every subject with one fill: (rows of all subjects, failures subject → reason)."""
    layout = RunLayout(profile.run_path)
    scaler = AgeScaler(*profile.age_range_months)
    settings = {k: v for k, v in STEP.settings_of(profile).items() if k != "perturb"}
    settings |= {"fill": fill, "repeats": profile.perturb.repeats}
    parts, errors = {}, {}
    bar = progress_bar(total=len(table), desc=f"perturbation ({fill})", progress=progress)
    for fold, group in table.groupby("fold", sort=True):
        model = None
        for row in group.itertuples(index=False):
            sid = row.subject_id
            target = group_levels(levels, sid) if fill == "group_level" else {}
            mine = {**settings, "fold": int(fold), "age_months": row.age_months, "levels": target}
            sources = [layout.model(int(fold)), layout.preprocessed(sid), layout.lobes(sid)]
            record = STEP.subject_record(layout, sid, f"_{fill}")
            done = record.fresh(mine, STEP.version, sources)
            if done is not None:
                parts[sid] = pd.DataFrame(done["rows"], columns=perturb.COLUMNS)
                bar.update()
                continue
            try:
                prints = record.fingerprints(sources)
                if model is None:
                    model = perturb.prepare_model(s03_train.load_model(profile, int(fold)), device)
                volume, labels = subject_arrays(layout, sid)
                result = perturb.perturb_subject(
                    model,
                    volume,
                    labels,
                    subject_id=sid,
                    seed=profile.seed,
                    repeats=profile.perturb.repeats,
                    fill=fill,
                    batch_size=batch_size,
                    device=device,
                    levels=target,
                )
                parts[sid] = perturb.subject_rows(result, row, fill, scaler)
                record.write(mine, STEP.version, prints, {"rows": parts[sid].to_dict("records")})
            except Exception as err:  # one bad subject never stops the others; a bug does
                if not set_aside(err):
                    raise
                errors[sid] = err
            bar.update()
        del model
    bar.close()
    order = [sid for sid in table["subject_id"] if sid in parts]
    rows = (
        pd.concat([parts[s] for s in order], ignore_index=True)
        if order
        else pd.DataFrame(columns=perturb.COLUMNS)
    )
    return rows, errors
