"""The pipeline's steps over a run directory (what the notebooks call).

Step 01: ``prepare_cohort`` (the user's manifest, or the embedded synthetic cohort, validated into
``cohort.csv`` + ``exclusions.csv``) and ``preprocess_cohort`` (``preprocessed/``, ``qc/``,
``preprocess.csv``). Step 02: ``lobes_cohort`` (``lobes/``, ``lobes.csv``). Every file is
written atomically; finished subjects are skipped on a rerun; a subject that fails is excluded
with its reason and the others go on.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from ctbrainage import cohort as cohort_mod
from ctbrainage import io
from ctbrainage.config import Profile
from ctbrainage.preprocess import PREPROCESS_VERSION, preprocess_scan
from ctbrainage.runner import is_current, map_subjects, read_result, write_record

LOBES_VERSION = 2  # bump when a change alters the lobe labels


def prepare_cohort(profile: Profile, progress: bool = True) -> pd.DataFrame:
    """Validate the run's manifest (generating the synthetic cohort first when ``data`` is
    empty) into ``cohort.csv`` and ``exclusions.csv`` of the run directory; returns the valid
    rows with their age group."""
    if not profile.data:
        from ctbrainage.synth import generate_cohort

        synth = profile.synth
        generate_cohort(
            profile.synthetic_dir,
            n=synth.n,
            seed=profile.seed,
            schedule=synth.schedule,
            mode=synth.mode,
            fmt=synth.format,
            tilt_fraction=synth.gantry_tilt_fraction,
            workers=synth.workers,
            age_group_edges=profile.age_group_edges,
            progress=progress,
        )
    valid, excluded = cohort_mod.validate_manifest(profile.manifest_path, profile.age_range_months)
    valid["age_group"] = cohort_mod.age_group(valid["age_months"], profile.age_group_edges)
    cohort_mod.write_validated(valid, excluded, profile.run_path)
    return valid


def preprocess_cohort(profile: Profile, cohort: pd.DataFrame, progress: bool = True):
    """Preprocess every subject of ``cohort``; returns (per-subject table, exclusions added).

    The table (also ``preprocess.csv``) has brain volume, orientation angles, P-tile HU values,
    gantry tilt and seconds per subject; failures replace this step's earlier rows of those
    subjects in ``exclusions.csv``.
    """
    run = profile.run_path
    params = {
        "spacing_mm": profile.preprocess.spacing_mm,
        "size": profile.preprocess.size,
        "ptile": [profile.preprocess.ptile_low, profile.preprocess.ptile_high],
        "version": PREPROCESS_VERSION,
    }
    items = [
        {"subject_id": r.subject_id, "image_path": r.image_path, "run": str(run), "params": params}
        for r in cohort.itertuples()
    ]
    results, errors = map_subjects(
        _preprocess_subject, items, profile.synth.workers, desc="preprocess", progress=progress
    )
    table = pd.DataFrame(results)
    if not table.empty:
        table = cohort[["subject_id", "age_months"]].merge(table, on="subject_id")
    io.atomic_write_text(run / "preprocess.csv", table.to_csv(index=False))
    failed = pd.DataFrame(
        {"subject_id": list(errors), "reason": [f"preprocessing: {m}" for m in errors.values()]}
    )
    update_exclusions(run, [item["subject_id"] for item in items], failed)
    return table, failed


def preprocessed_paths(run: Path, subject_id: str) -> dict[str, Path]:
    folder = run / "preprocessed"
    return {
        "image": folder / f"{subject_id}.nii.gz",
        "brain": folder / f"{subject_id}_brain.nii.gz",
        "brain_native": folder / f"{subject_id}_brain_native.nii.gz",
        "qc": run / "qc" / f"{subject_id}.png",
        "record": folder / f"{subject_id}.json",
    }


def _preprocess_subject(item: dict) -> dict:
    import matplotlib.pyplot as plt

    from ctbrainage.plots import preprocess_qc_figure

    run, sid, params = Path(item["run"]), item["subject_id"], item["params"]
    paths = preprocessed_paths(run, sid)
    outputs = [paths["image"], paths["brain"], paths["brain_native"], paths["qc"]]
    if is_current(paths["record"], params, outputs):
        return read_result(paths["record"])
    start = time.perf_counter()
    try:
        scan = io.read_ct(item["image_path"])
        result = preprocess_scan(
            scan.image, params["spacing_mm"], params["size"], tuple(params["ptile"])
        )
    except ValueError as err:
        raise ValueError(f"{sid}: {err}") from None
    io.write_nifti(paths["image"], result.image, result.affine)
    io.write_nifti(paths["brain"], result.brain, result.affine)
    io.write_nifti(paths["brain_native"], *io.sitk_to_ras(result.work_mask))
    plt.close(preprocess_qc_figure(scan.image, result, title=sid, out=paths["qc"]))
    roll, pitch, yaw = result.orientation.angles_deg()
    record = {
        "subject_id": sid,
        "brain_volume_ml": round(result.brain_volume_ml, 2),
        "roll_deg": round(roll, 2),
        "pitch_deg": round(pitch, 2),
        "yaw_deg": round(yaw, 2),
        "ptile_low_hu": round(result.ptile_hu[0], 2),
        "ptile_high_hu": round(result.ptile_hu[1], 2),
        "gantry_tilt_deg": round(scan.gantry_tilt_deg, 2),
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_record(paths["record"], params, record)
    return record


def update_exclusions(
    run: Path, processed: list[str], failed: pd.DataFrame, step: str = "preprocessing"
) -> None:
    """Replace this step's rows of every subject it processed by its new failures (if any)."""
    path = run / "exclusions.csv"
    old = pd.read_csv(path, dtype=str, keep_default_na=False) if path.exists() else failed[:0]
    mine = old["subject_id"].isin(processed) & old["reason"].str.startswith(f"{step}:")
    kept = old[~mine]
    io.atomic_write_text(path, pd.concat([kept, failed], ignore_index=True).to_csv(index=False))


# ---- step 02: lobe labels -----------------------------------------------------------------------
def lobes_cohort(profile: Profile, cohort: pd.DataFrame, progress: bool = True):
    """Lobe labels (1 frontal, 2 parietal, 3 temporal, 4 occipital) for every preprocessed
    subject in ``lobes/<id>.nii.gz``; returns a table (also ``lobes.csv``) with the method that
    made each subject's labels and the lobe volumes, and the failures (also in
    ``exclusions.csv``)."""
    from ctbrainage.totalseg import licence

    run = profile.run_path
    done = pd.read_csv(run / "preprocess.csv")["subject_id"]
    params = {"method": profile.lobes.method, "version": LOBES_VERSION}
    licence_number = licence(profile.lobes.totalseg_license)
    items = [
        {
            "subject_id": r.subject_id,
            "image_path": r.image_path,
            "run": str(run),
            "params": params,
            "licence": licence_number,
        }
        for r in cohort[cohort["subject_id"].isin(done)].itertuples()
    ]
    results, errors = map_subjects(
        _lobes_subject, items, profile.synth.workers, desc="lobes", progress=progress
    )
    table = pd.DataFrame(results)
    io.atomic_write_text(run / "lobes.csv", table.to_csv(index=False))
    failed = pd.DataFrame(
        {"subject_id": list(errors), "reason": [f"lobes: {m}" for m in errors.values()]}
    )
    update_exclusions(run, [item["subject_id"] for item in items], failed, step="lobes")
    return table, failed


def _lobes_subject(item: dict) -> dict:
    import nibabel as nib
    import numpy as np

    from ctbrainage.lobes import LOBES, segment_lobes

    run, sid, params = Path(item["run"]), item["subject_id"], item["params"]
    pre = preprocessed_paths(run, sid)
    out = run / "lobes" / f"{sid}.nii.gz"
    record_path = run / "lobes" / f"{sid}.json"
    if is_current(record_path, params, [out]):
        return read_result(record_path)
    start = time.perf_counter()
    image = nib.load(pre["image"])
    brain = np.asarray(nib.load(pre["brain"]).dataobj)
    labels, method = segment_lobes(
        np.asarray(image.dataobj),
        brain,
        image.affine,
        params["method"],
        native_path=item["image_path"],
        licence_number=item["licence"],
        work_dir=run / "lobes" / "totalsegmentator",
    )
    io.write_nifti(out, labels, image.affine)
    voxel_ml = float(abs(np.linalg.det(image.affine[:3, :3]))) / 1000.0
    record = {
        "subject_id": sid,
        "method": method,
        **{
            f"{name}_ml": round(float((labels == i).sum()) * voxel_ml, 2)
            for i, name in LOBES.items()
        },
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_record(record_path, params, record)
    return record
