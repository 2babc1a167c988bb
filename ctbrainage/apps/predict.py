"""Brain age for new scans: a bundle (:mod:`ctbrainage.apps.bundle`) applied to a manifest or a
DICOM
tree.

``python -m ctbrainage.apps.predict --bundle B --data NEW.csv|DICOM_ROOT --out OUT_DIR``. The output
folder is laid out like a run (:class:`ctbrainage.core.layout.RunLayout`): a DICOM tree becomes
``dicom_manifest.csv`` (:mod:`ctbrainage.apps.dicom_index`; skipped series beside it); steps 01
and 02
validate, preprocess and label the scans with the bundle's settings, exactly as in its training
run (their records make a rerun reuse what is unchanged); then every fold model predicts each
scan whole and with each lobe at its age group's level (``group_level`` fill). Per scan,
``predictions.csv`` holds the ensemble's brain age (mean of the folds) and their spread, the
bias-corrected brain age and gap, a split-conformal interval at ``level``, flags (an age outside
the training ages) and each lobe's ΔAE; ``pages/<id>.html`` shows it with the scan's QC image,
``index.html`` lists every scan, and every excluded scan is in ``exclusions.csv`` with its reason.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ctbrainage.apps.bundle import (
    DEFAULT_LEVEL,
    Bundle,
    BundleError,
    code_versions,
    describe,
    load_bundle,
)
from ctbrainage.core.atomic import atomic_write_json
from ctbrainage.core.config import Profile
from ctbrainage.core.labels import LOBES
from ctbrainage.core.layout import RunLayout
from ctbrainage.core.workers import progress_bar
from ctbrainage.imaging.cohort_manifest import ManifestError, user_files_inside
from ctbrainage.stats import evaluate
from ctbrainage.stats.evaluate import correct_bias
from ctbrainage.steps.contract import (
    Step,
    failures,
    kept_subjects,
    read_exclusions,
    write_exclusions,
    write_table,
)

# its exclusions are the scans the models failed on; its version changes with the code that
# decides a prediction, so that a run's step 09 is redone when any of it changes
STEP = Step("09_new_scans", settings=(), version="1/" + "/".join(code_versions().values()))


class PredictError(ValueError):
    """Nothing can be predicted (no usable scan, no bundle); the message says why."""


@dataclass(frozen=True)
class Prediction:
    layout: RunLayout  # the output folder
    table: pd.DataFrame  # predictions.csv
    excluded: pd.DataFrame  # every scan left out: step and reason
    skipped: pd.DataFrame | None  # DICOM series and files not used (a DICOM tree only)
    summary: dict  # prediction.json


def prediction_profile(bundle: Bundle, manifest: Path, out_dir: Path, workers: int) -> Profile:
    """The bundle's profile for a folder of new scans: its preprocessing and lobe settings,
    the new manifest, any non-negative age accepted (ages outside the training ages are
    flagged, not refused)."""
    profile = bundle.profile
    return replace(
        profile,
        run_dir=str(out_dir),
        data=str(manifest),
        age_range_months=(0.0, math.inf),
        synth=replace(profile.synth, workers=workers),
    )


def predict(
    bundle: str | Path | Bundle,
    data: str | Path,
    out_dir: str | Path,
    level: float = DEFAULT_LEVEL,
    key: str | None = None,
    workers: int = 0,
    gpu: int | None = None,
    progress: bool = True,
) -> Prediction:
    """Brain age of every scan in ``data`` (a manifest CSV or a DICOM tree, whose pseudonyms
    need ``key``); see the module docstring."""
    from ctbrainage.steps import s01_preprocess, s02_lobes

    start = time.perf_counter()
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    radius = bundle.radius(level)  # checks the level before any work
    layout = RunLayout(Path(out_dir).absolute())
    layout.root.mkdir(parents=True, exist_ok=True)
    manifest, skipped = _manifest(Path(data), layout, key, progress)
    profile = prediction_profile(bundle, manifest, layout.root, workers)
    try:
        s01_preprocess.run(profile, progress=progress)
    except ManifestError as err:
        raise PredictError(str(err)) from None
    except s01_preprocess.EmptyCohortError as err:
        raise PredictError(f"no scan could be predicted: {err}") from None
    s02_lobes.run(profile, progress=progress)
    cohort = pd.read_csv(layout.cohort, dtype={"subject_id": str, "sex": str, "site": str})
    cohort[["sex", "site"]] = cohort[["sex", "site"]].fillna("")
    ids = kept_subjects(layout, STEP)
    rows, errors = _predict_subjects(bundle, profile, cohort, ids, level, radius, gpu, progress)
    reasons, _ = failures(errors)
    write_exclusions(layout, STEP, reasons)
    table = pd.DataFrame(rows, columns=None if rows else ["subject_id"])
    write_table(layout.predictions, table)
    excluded = read_exclusions(layout)
    summary = {
        "bundle_name": bundle.root.name,
        "bundle_created": bundle.info["created"],
        "level": level,
        "radius_months": radius,
        "coverage_on_training_run": bundle.coverage(level)["coverage"],
        "training_ages_months": list(bundle.training_ages),
        "predicted": len(table),
        "excluded": len(excluded),
        "seconds": round(time.perf_counter() - start, 1),
    }
    atomic_write_json(layout.prediction_summary, summary)
    from ctbrainage.views.pages import write_prediction_report

    write_prediction_report(
        layout, bundle, describe(bundle), table, summary, skipped, progress=progress
    )
    if table.empty:
        raise PredictError(
            f"no scan could be predicted; every one is listed with its reason in "
            f"{layout.exclusions}"
        )
    return Prediction(layout, table, excluded, skipped, summary)


def _manifest(
    data: Path, layout: RunLayout, key: str | None, progress: bool
) -> tuple[Path, pd.DataFrame | None]:
    """The manifest to read: ``data`` itself, or the one built from a DICOM tree."""
    if data.is_file():
        overlap = user_files_inside(layout.root, data)
        if overlap:
            raise PredictError(
                f"output folder {layout.root}: {overlap}; choose another output folder (the "
                "user's files are never written)"
            )
        return data.absolute(), None
    if not data.is_dir():
        raise PredictError(f"--data {data}: no such manifest file or DICOM folder")
    out, tree = layout.root.resolve(), data.resolve()
    if out.is_relative_to(tree) or tree.is_relative_to(out):
        raise PredictError(
            f"output folder {layout.root}: it overlaps the DICOM tree {data}; choose another "
            "output folder (the user's files are never written)"
        )
    from ctbrainage.apps.dicom_index import build_manifest

    manifest, skipped = build_manifest(data, layout.dicom_manifest, key, progress=progress)
    if manifest.empty:
        raise PredictError(
            f"no usable head CT series under {data}; every series and file is listed with its "
            f"reason beside {layout.dicom_manifest}"
        )
    return layout.dicom_manifest, skipped


def _predict_subjects(bundle, profile, cohort, ids, level, radius, gpu, progress):
    """One row per scan (see the module docstring) and the scans that failed."""
    import torch

    from ctbrainage.imaging.run_arrays import subject_arrays
    from ctbrainage.interpret.perturb import delta_ae, perturb_subject, prepare_model

    layout = RunLayout(profile.run_path)
    device = torch.device("cpu" if gpu is None else f"cuda:{gpu}")
    models = [prepare_model(m, device) for m in bundle.models()]
    scaler = bundle.scaler
    slope, intercept = bundle.bias
    unstable = evaluate.unstable_slope(slope)
    low, high = bundle.training_ages
    by_id = cohort.set_index("subject_id")
    rows, errors = [], {}
    for sid in progress_bar(ids, desc="brain age", progress=progress):
        row = by_id.loc[sid]
        age = float(row["age_months"])
        levels = bundle.levels_for(age)
        lobes = tuple(LOBES) if levels else ()
        try:
            volume, labels = subject_arrays(layout, sid)
            outputs = [
                perturb_subject(
                    model,
                    volume,
                    labels,
                    subject_id=sid,
                    seed=profile.seed,
                    fill="group_level",
                    lobes=lobes,
                    levels=levels,
                    device=device,
                )
                for model in models
            ]
        except Exception as err:  # one bad scan never stops the others
            errors[sid] = err
            continue
        whole = scaler.to_months([o.whole for o in outputs])
        masked = scaler.to_months(np.stack([o.masked[:, 0] for o in outputs])).mean(axis=0)
        brain_age = float(whole.mean())
        corrected = float(correct_bias(brain_age, slope, intercept))
        delta = delta_ae(age, brain_age, masked)
        flags = []
        if not low <= age <= high:
            flags.append(f"age outside the training ages ({low:g}-{high:g} months)")
        if not levels:
            flags.append("no age group: lobe importance not computed")
        if unstable:
            flags.append(unstable)
        rows.append(
            {
                "subject_id": sid,
                "age_months": age,
                "sex": row.get("sex", ""),
                "site": row.get("site", ""),
                "brain_age_months": brain_age,
                "ensemble_sd_months": float(whole.std(ddof=1)) if len(whole) > 1 else 0.0,
                "corrected_months": corrected,
                "gap_months": brain_age - age,
                "gap_corrected_months": corrected - age,
                "interval_low": max(0.0, corrected - radius),  # no age is below 0
                "interval_high": corrected + radius,
                "level": level,
                "age_in_interval": bool(abs(corrected - age) <= radius),
                "in_training_ages": bool(low <= age <= high),
                **{
                    f"delta_ae_{LOBES[k]}": float(delta[i]) if lobes else float("nan")
                    for i, k in enumerate(LOBES)
                },
                **{f"fold{k}_months": float(v) for k, v in enumerate(whole)},
                "flags": "; ".join(flags),
            }
        )
    return rows, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ctbrainage.apps.predict",
        description="Brain age of new head CT scans with a bundle exported from a trained run.",
    )
    parser.add_argument("--bundle", required=True, type=Path, help="a bundle folder")
    parser.add_argument(
        "--data", required=True, type=Path, help="a manifest CSV, or the root of a DICOM tree"
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--level", type=float, default=DEFAULT_LEVEL, help="prediction interval level (0.9)"
    )
    parser.add_argument(
        "--key",
        default=os.environ.get("CTBRAINAGE_KEY"),
        help="DICOM tree only: the secret key of the pseudonyms; safer in the environment "
        "variable CTBRAINAGE_KEY (a command line is visible to other users)",
    )
    parser.add_argument("--workers", type=int, default=0, help="processes; 0 = every core")
    parser.add_argument("--gpu", type=int, default=None, help="CUDA device for the models")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        result = predict(
            args.bundle,
            args.data,
            args.out,
            level=args.level,
            key=args.key,
            workers=args.workers,
            gpu=args.gpu,
            progress=not args.no_progress,
        )
    except (BundleError, PredictError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = result.summary
    print(
        f"{summary['predicted']} scans predicted, {summary['excluded']} excluded "
        f"({summary['seconds']} s); see {result.layout.index}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
