"""Step 09 (on request): brain age of new scans with the run's bundle.

Exports the run as a bundle (``bundle/``, :mod:`ctbrainage.apps.bundle`) and applies it
(:mod:`ctbrainage.apps.predict`) to ``data`` (a manifest CSV or a DICOM tree) or, when none is
given,
to a new synthetic cohort of ``new_subjects`` children drawn with another seed (the run's seed
+ 1), generated into ``new_scans/synthetic/``; the results go to ``new_scans/`` (laid out like a
run: ``predictions.csv``, ``pages/``, ``index.html``, ``exclusions.csv``). The scans' own
preprocessing is resumable there (steps 01 and 02's records).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctbrainage.apps.bundle import DEFAULT_LEVEL, Bundle, export_bundle, load_bundle
from ctbrainage.apps.predict import STEP, Prediction, predict
from ctbrainage.core.config import Profile
from ctbrainage.core.layout import BundleLayout, RunLayout
from ctbrainage.steps import s03_train
from ctbrainage.steps.contract import up_to_date
from ctbrainage.steps.s01_preprocess import generate_synthetic

__all__ = ["STEP", "Result", "inputs", "is_fresh", "outputs", "run"]
NEW_SEED_OFFSET = 1  # the new synthetic cohort's seed: the run's + 1


@dataclass(frozen=True)
class Result:
    bundle: Bundle
    prediction: Prediction
    synthetic: bool  # the scans are a new synthetic cohort (their true ages are known)

    def accuracy(self) -> dict[str, float]:
        """MAE of the raw and the corrected brain age, and the interval's coverage, over the
        predicted scans (meaningful when their ages are true ages, as in a synthetic cohort)."""
        table = self.prediction.table
        return {
            "scans": len(table),
            "mae_months": float(np.mean(np.abs(table["gap_months"]))),
            "mae_corrected_months": float(np.mean(np.abs(table["gap_corrected_months"]))),
            "coverage": float(table["age_in_interval"].mean()),
            "level": float(table["level"].iloc[0]) if len(table) else np.nan,
        }


def _settings(profile: Profile, data: str, level: float, new_subjects: int) -> dict:
    return {"data": data, "level": level, "new_subjects": new_subjects, "seed": profile.seed}


def inputs(profile: Profile, data: str = "") -> list[Path]:
    """The fold models, the out-of-fold predictions and the new scans' manifest."""
    layout = RunLayout(profile.run_path)
    models = [layout.model(k) for k in range(profile.train.folds)]
    return [*models, layout.predictions] + ([Path(data)] if data else [])


def outputs(profile: Profile) -> list[Path]:
    layout = RunLayout(profile.run_path)
    new = RunLayout(layout.new_scans_dir)
    return [BundleLayout(layout.bundle_dir).manifest, new.predictions, new.index]


def is_fresh(
    profile: Profile, data: str = "", level: float = DEFAULT_LEVEL, new_subjects: int = 40
) -> bool:
    """True when the bundle and the new scans' predictions were made from today's run."""
    record = STEP.record(RunLayout(profile.run_path))
    settings = _settings(profile, data, level, new_subjects)
    return up_to_date(record, settings, STEP.version, inputs(profile, data), outputs(profile))


def run(
    profile: Profile,
    data: str = "",
    level: float = DEFAULT_LEVEL,
    key: str | None = None,
    new_subjects: int = 40,
    gpu: int | None = None,
    progress: bool = True,
) -> Result:
    """Export the bundle and predict the new scans; see the module docstring."""
    layout = RunLayout(profile.run_path)
    s03_train.predictions(profile)  # a clear error when a fold is missing or out of date
    record, settings = STEP.record(layout), _settings(profile, data, level, new_subjects)
    prints = record.fingerprints(inputs(profile, data))
    bundle = load_bundle(export_bundle(profile, layout.bundle_dir, progress=progress))
    new = RunLayout(layout.new_scans_dir)
    if not data:
        seed = profile.seed + NEW_SEED_OFFSET
        generate_synthetic(profile, new.synthetic.root, new_subjects, seed, progress)
    manifest = Path(data) if data else new.synthetic.manifest
    prediction = predict(bundle, manifest, new.root, level, key, gpu=gpu, progress=progress)
    record.write(settings, STEP.version, prints, {"predicted": len(prediction.table)})
    return Result(bundle, prediction, synthetic=not data)
