"""Step 04: how good the brain-age model is.

From ``predictions.csv``: metrics per fold, their mean and SD and pooled (``metrics.csv``), the
bias-corrected brain-age gap (``brain_age_gap.csv``, with the fitted lines in
``bias_correction.csv``; fitted on the other folds or on each fold's inner validation,
``evaluate.bias_source``), and for display bootstrap CIs, the error per age group and two
baselines refitted per fold (the training mean age; a ridge regression on image features).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from ctbrainage.core.config import Profile
from ctbrainage.core.layout import RunLayout
from ctbrainage.stats import evaluate
from ctbrainage.steps import s03_train
from ctbrainage.steps.contract import Outcome, Settings, Step, write_table

STEP = Step(
    "04_evaluate",
    settings=("seed", "age_group_edges", "train.folds", "train.val_fraction", "evaluate"),
    version="1",
    requires=(s03_train.STEP,),
)


@dataclass(frozen=True)
class Result:
    predictions: pd.DataFrame  # out-of-fold predictions (step 03)
    metrics: pd.DataFrame  # per fold, mean, sd, pooled
    confidence: pd.DataFrame  # pooled metrics with bootstrap CIs
    by_age_group: pd.DataFrame  # MAE, mean error and n per age group
    gaps: pd.DataFrame  # predictions with raw and bias-corrected gaps
    bias_lines: pd.DataFrame  # the correction fitted for each fold
    baselines: pd.DataFrame  # the CNN against the baselines, mean and SD over folds


@STEP.inputs
def inputs(profile: Profile | Settings) -> list[Path]:
    layout = RunLayout(profile.run_path)
    ids = (
        pd.read_csv(layout.predictions, dtype={"subject_id": str})["subject_id"]
        if layout.predictions.exists()
        else []
    )
    validation = (
        [layout.fold_validation(k) for k in range(profile.train.folds)]
        if profile.train.val_fraction > 0
        else []
    )
    volumes = [p for s in ids for p in (layout.preprocessed(s), layout.lobes(s))]
    return [layout.predictions, layout.preprocess_table, layout.lobes_table, *validation, *volumes]


@STEP.outputs
def outputs(profile: Profile | Settings) -> list[Path]:
    layout = RunLayout(profile.run_path)
    return [layout.metrics, layout.brain_age_gaps, layout.bias_lines, layout.baselines]


is_fresh = STEP.is_fresh


def run(profile: Profile) -> Result:
    """Evaluate the out-of-fold predictions; writes ``metrics.csv``, ``brain_age_gap.csv``,
    ``bias_correction.csv`` and ``baselines.csv`` (cheap: computed on every call)."""
    return STEP.run(profile, _evaluate, always=True).result


def _evaluate(profile: Settings) -> Outcome:
    layout = RunLayout(profile.run_path)
    predictions = s03_train.predictions(profile)
    metrics = evaluate.fold_metrics(predictions)
    source = profile.evaluate.bias_source
    validation = s03_train.validation(profile) if source == "validation" else None
    if source == "validation" and validation is None:
        raise ValueError("evaluate.bias_source 'validation' needs train.val_fraction > 0")
    gaps, lines = evaluate.brain_age_gap(predictions, validation)
    features = evaluate.image_features(
        pd.read_csv(layout.preprocess_table, dtype={"subject_id": str}),
        pd.read_csv(layout.lobes_table, dtype={"subject_id": str}),
        {sid: _arrays(layout, sid) for sid in predictions["subject_id"]},
    )
    baselines = evaluate.compare_with_baselines(
        predictions, evaluate.baseline_predictions(features, predictions)
    )
    write_table(layout.metrics, metrics.reset_index(names=""))
    write_table(layout.brain_age_gaps, gaps)
    write_table(layout.bias_lines, lines)
    write_table(layout.baselines, baselines.reset_index(names="model"))
    result = Result(
        predictions,
        metrics,
        evaluate.bootstrap_ci(predictions, seed=profile.seed),
        evaluate.error_by_age_group(predictions, profile.age_group_edges),
        gaps,
        lines,
        baselines,
    )
    return Outcome(subjects=False, result=result)


def _arrays(layout: RunLayout, subject_id: str) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(nib.load(layout.preprocessed(subject_id)).dataobj)
    return image, np.asarray(nib.load(layout.lobes(subject_id)).dataobj)
