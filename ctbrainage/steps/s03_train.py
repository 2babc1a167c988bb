"""Step 03: one cross-validation fold (run once per fold, folds in parallel).

Age-stratified folds over the subjects kept by steps 01-02 (``folds.csv``); fold *k*'s model is
trained on the other folds (an inner validation part held out when ``train.val_fraction`` > 0)
and predicts fold *k*: ``models/fold<k>.ckpt``, ``models/fold<k>_predictions.csv``,
``models/fold<k>_validation.csv`` and the loss curves in ``logs/``. When every fold is done,
the step writes the out-of-fold ``predictions.csv`` that the later steps read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ctbrainage.core.cohort import stratified_folds
from ctbrainage.core.config import Profile
from ctbrainage.core.layout import RunLayout
from ctbrainage.steps.contract import Settings, Step, kept_subjects, write_table

# the version's second part: bump it when a change of ctbrainage.learn.train or
# ctbrainage.learn.networks
# alters trained models or predictions (torch, Lightning and MONAI load only when a fold trains,
# so the later steps' notebooks start quickly)
STEP = Step(
    "03_train",
    settings=(
        "seed",
        "age_range_months",
        "preprocess.size",
        "preprocess.spacing_mm",
        "model",
        "train",
    ),
    version="1/2",
    parts=lambda cfg: range(cfg.train.folds),
    part_label="fold",
)


@dataclass(frozen=True)
class FoldResult:
    """One trained fold: its out-of-fold predictions and, with ``train.val_fraction`` > 0, its
    inner-validation predictions."""

    fold: int
    predictions: pd.DataFrame
    validation: pd.DataFrame | None


def subjects(profile: Profile | Settings) -> list[str]:
    return kept_subjects(RunLayout(profile.run_path), STEP)


def make_folds(profile: Profile | Settings) -> pd.DataFrame:
    """``folds.csv``: subject_id, age_months → fold, age-stratified and seeded (rewritten only
    when it changes)."""
    profile = STEP.view(profile)
    layout = RunLayout(profile.run_path)
    ids = subjects(profile)
    cohort = pd.read_csv(layout.cohort, dtype={"subject_id": str}).set_index("subject_id")
    ages = cohort.loc[ids, "age_months"].reset_index()
    folds = ages.assign(
        fold=stratified_folds(ages["age_months"], profile.train.folds, profile.seed)
    )
    if not layout.folds.exists() or not pd.read_csv(layout.folds, dtype={"subject_id": str}).equals(
        folds
    ):
        write_table(layout.folds, folds)
    return folds


@STEP.recorded
def recorded(cfg: Settings, fold: int) -> dict:
    return {"subjects": subjects(cfg), "fold": fold}


@STEP.inputs
def inputs(cfg: Settings, fold: int | None = None) -> list[Path]:
    layout = RunLayout(cfg.run_path)
    return [layout.preprocessed(s) for s in subjects(cfg)]


@STEP.outputs
def outputs(cfg: Settings, fold: int) -> list[Path]:
    layout = RunLayout(cfg.run_path)
    paths = [layout.model(fold), layout.fold_predictions(fold), layout.learning_curve(fold)]
    return paths + ([layout.fold_validation(fold)] if cfg.train.val_fraction > 0 else [])


def is_fresh(profile: Profile | Settings, fold: int | None = None) -> bool:
    """True when fold ``fold`` (default: every fold) is trained on today's inputs and settings."""
    if fold is not None:
        _check_fold(profile, fold)
    return STEP.is_fresh(profile, fold)


def _check_fold(profile: Profile | Settings, fold: int) -> None:
    folds = STEP.view(profile).train.folds
    if not 0 <= fold < folds:
        raise ValueError(f"fold must be in 0..{folds - 1}, got {fold}")


def run(profile: Profile, fold: int, gpu: int | None = None, progress: bool = True) -> FoldResult:
    """Train and predict fold ``fold`` unless it is up to date; returns its predictions."""
    _check_fold(profile, fold)
    cfg = STEP.view(profile)
    layout = RunLayout(cfg.run_path)
    folds = make_folds(cfg)

    def compute(cfg: Settings) -> None:
        from ctbrainage.learn import train
        from ctbrainage.learn.datasets import load_volumes

        fitted = train.fit_fold(
            cfg,
            folds,
            fold,
            lambda ids: load_volumes([layout.preprocessed(s) for s in ids]),
            log_dir=layout.logs_dir,
            log_name=layout.fold_log_name(fold),
            gpu=gpu,
            progress=progress,
        )
        fitted.save_model(layout.model(fold))
        write_table(layout.fold_predictions(fold), fitted.predictions)
        if fitted.validation is not None:
            write_table(layout.fold_validation(fold), fitted.validation)

    STEP.run(cfg, compute, part=fold)
    finalise(cfg)
    validation = layout.fold_validation(fold)
    return FoldResult(
        fold,
        pd.read_csv(layout.fold_predictions(fold), dtype={"subject_id": str}),
        pd.read_csv(validation, dtype={"subject_id": str}) if validation.exists() else None,
    )


def finalise(profile: Profile | Settings) -> bool:
    """Write ``predictions.csv`` (every fold's out-of-fold predictions, by subject) when every
    fold is up to date; returns whether it did."""
    if not is_fresh(profile):
        return False
    profile = STEP.view(profile)
    layout = RunLayout(profile.run_path)
    parts = [
        pd.read_csv(layout.fold_predictions(k), dtype={"subject_id": str})
        for k in range(profile.train.folds)
    ]
    table = pd.concat(parts, ignore_index=True).sort_values("subject_id", ignore_index=True)
    write_table(layout.predictions, table)
    return True


def predictions(profile: Profile | Settings) -> pd.DataFrame:
    """``predictions.csv``; a clear error naming the folds still to train when it is missing
    or older than a fold."""
    profile = STEP.view(profile)
    layout = RunLayout(profile.run_path)
    missing = [k for k in range(profile.train.folds) if not is_fresh(profile, k)]
    if missing or not layout.predictions.exists():
        raise FileNotFoundError(
            f"out-of-fold predictions are not complete: fold(s) {missing or 'all'} need step 03 "
            f"(python run_all.py --from 3 --to 3 --folds {','.join(map(str, missing))})"
        )
    return pd.read_csv(layout.predictions, dtype={"subject_id": str})


def validation(profile: Profile | Settings) -> pd.DataFrame | None:
    """Inner-validation predictions of every fold's model (``fold`` = the model's fold), or None
    when the profile holds out no validation subjects."""
    profile = STEP.view(profile)
    if profile.train.val_fraction <= 0:
        return None
    layout = RunLayout(profile.run_path)
    paths = [layout.fold_validation(k) for k in range(profile.train.folds)]
    return pd.concat([pd.read_csv(p, dtype={"subject_id": str}) for p in paths], ignore_index=True)


def learning_curves(profile: Profile | Settings, folds=None) -> dict[int, pd.DataFrame]:
    """Lightning's loss log of each of ``folds`` (default: every fold) that has one."""
    profile = STEP.view(profile)
    layout = RunLayout(profile.run_path)
    folds = range(profile.train.folds) if folds is None else folds
    paths = {k: layout.learning_curve(k) for k in folds}
    return {k: pd.read_csv(path) for k, path in paths.items() if path.exists()}


def load_model(profile: Profile | Settings, fold: int):
    """Fold ``fold``'s trained network in eval mode on CPU (output: age in [0, 1])."""
    profile = STEP.view(profile)
    from ctbrainage.learn.networks import load_weights

    path = RunLayout(profile.run_path).model(fold)
    if not path.exists():
        raise FileNotFoundError(f"no trained model for fold {fold}: {path} (run step 03 first)")
    return load_weights(profile.model, path, profile.preprocess.size)
