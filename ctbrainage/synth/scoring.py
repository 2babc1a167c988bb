"""Score pipeline outputs against the synthetic cohort's ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ctbrainage.core.labels import LOBES
from ctbrainage.core.layout import RunLayout, SyntheticLayout
from ctbrainage.imaging.preprocess import map_to_grid
from ctbrainage.synth.generate import measure_lobe_wm_hu
from ctbrainage.synth.schedule import MaturationSchedule


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def brain_mask_dice(mask_path: str | Path, truth_path: str | Path) -> float:
    """Dice of a brain mask (any grid) against the true mask, on the truth's native grid."""
    truth = sitk.ReadImage(str(truth_path))
    ours = sitk.Resample(
        sitk.Cast(sitk.ReadImage(str(mask_path)), sitk.sitkFloat32),
        truth,
        sitk.Transform(),
        sitk.sitkLinear,
        0.0,
    )
    return dice(sitk.GetArrayViewFromImage(ours) >= 0.5, sitk.GetArrayViewFromImage(truth))


def true_axes_in_grid(affine: np.ndarray, truth: dict) -> np.ndarray:
    """The subject's true anatomical axes (template axes under the planted pose) expressed in
    the axes of a preprocessed grid (RAS ``affine``): a rotation matrix."""
    found = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    pose = Rotation.from_euler("xyz", truth["rotation_deg"], degrees=True).as_matrix()
    return found.T @ pose


def orientation_spread_deg(rotations: list[np.ndarray]) -> np.ndarray:
    """Angle (degrees) of each rotation from the cohort's mean rotation."""
    stack = Rotation.from_matrix(np.array(rotations))
    mean = stack.mean()
    return np.degrees((stack * mean.inv()).magnitude())


def score_preprocessing(layout: RunLayout) -> pd.DataFrame:
    """Per subject of a synthetic run: brain-mask Dice, orientation error, and measured / true
    brain volume."""
    cohort = layout.synthetic
    table = pd.read_csv(layout.preprocess_table, dtype={"subject_id": str})
    rows, rotations = [], []
    for rec in table.itertuples():
        truth = json.loads(cohort.truth(rec.subject_id).read_text())
        affine = nib.load(layout.preprocessed(rec.subject_id)).affine
        rotations.append(true_axes_in_grid(affine, truth))
        rows.append(
            {
                "subject_id": rec.subject_id,
                "age_months": truth["age_months"],
                "site": truth["site"],
                "dice": brain_mask_dice(
                    layout.brain_native(rec.subject_id), cohort.truth_brain(rec.subject_id)
                ),
                "volume_ratio": rec.brain_volume_ml / truth["brain_volume_ml"],
            }
        )
    scores = pd.DataFrame(rows)
    scores["orientation_error_deg"] = orientation_spread_deg(rotations)
    return scores


def score_lobes(layout: RunLayout) -> pd.DataFrame:
    """Dice of every subject's lobe labels in a synthetic run against the true lobes (carried
    from the native grid into the preprocessed grid): one row per subject and lobe."""
    cohort, rows = layout.synthetic, []
    for rec in pd.read_csv(layout.lobes_table, dtype={"subject_id": str}).itertuples():
        sid = rec.subject_id
        reference = sitk.ReadImage(str(layout.preprocessed(sid)))
        truth = map_to_grid(sitk.ReadImage(str(cohort.truth_lobes(sid))), reference)
        ours = np.asarray(nib.load(layout.lobes(sid)).dataobj)
        age = json.loads(cohort.truth(sid).read_text())["age_months"]
        for idx, name in LOBES.items():
            rows.append(
                {
                    "subject_id": rec.subject_id,
                    "age_months": age,
                    "lobe": name,
                    "dice": dice(ours == idx, truth == idx),
                }
            )
    return pd.DataFrame(rows)


def measure_age_cues(cohort: SyntheticLayout) -> pd.DataFrame:
    """Age cues measured in each generated image (not taken from the planted parameters):
    brain volume (true brain mask), skull volume and mean attenuation (bone, > 400 HU, inside the
    head), cortical grey-matter HU (the brain mask's outermost voxel layer, site offset removed)
    and each lobe's white-matter HU (``wm_hu_<lobe>``, white-matter cores, offset removed);
    one row per subject, with its age and biological age."""
    truth = pd.read_csv(cohort.truth_table, dtype={"subject_id": str})
    rows = []
    for rec in truth.itertuples():
        sid = rec.subject_id
        image = nib.load(cohort.root / json.loads(cohort.truth(sid).read_text())["image"])
        hu = np.asarray(image.dataobj, dtype=np.float32) - rec.site_offset_hu
        brain = np.asarray(nib.load(cohort.truth_brain(sid)).dataobj) > 0
        wm = np.asarray(nib.load(cohort.truth_wm(sid)).dataobj)
        voxel_ml = float(abs(np.linalg.det(image.affine[:3, :3]))) / 1000.0
        filled = ndimage.binary_fill_holes(ndimage.binary_closing(hu > -300, iterations=2))
        head = ndimage.label(filled)[0]
        largest = np.argmax(np.bincount(head[brain]))  # the component holding the brain
        skull = (head == largest) & (hu > 400) & ~brain
        cortex = brain & ~ndimage.binary_erosion(brain)
        rows.append(
            {
                "subject_id": sid,
                "age_months": rec.age_months,
                "biological_age_months": rec.biological_age_months,
                "brain_volume_ml": float(brain.sum()) * voxel_ml,
                "skull_volume_ml": float(skull.sum()) * voxel_ml,
                "skull_hu": float(hu[skull].mean()),
                "cortex_hu": float(hu[cortex].mean()),
                **{f"wm_hu_{k}": v for k, v in measure_lobe_wm_hu(hu, wm).items()},
            }
        )
    return pd.DataFrame(rows)


def score_importance(
    measured: pd.DataFrame,
    expected: pd.DataFrame,
    min_signal: float = 0.1,
    value: str = "mean_delta_ae",
) -> dict:
    """Does the perturbation analysis recover the planted maturation schedule?

    ``measured``: one row per (group, lobe) with the readout ``value`` (default
    ``mean_delta_ae``) and, when it was tested, ``significant`` (a ``stats.lobe_age_table``;
    ``stats.mean_abs_change`` is untested: its significance entries are None); ``expected``:
    the schedule's ``expected_importance`` over the same groups, one definition. Returns
    Spearman ρ between planted importance and the measured readout over all cells, the mean
    within-group Spearman ρ of the lobe ranking (the overall ρ is helped by every lobe's
    importance falling with age; the within-group one tests the order alone), the top lobe per
    group (planted vs measured), and, for lobes planted with no age signal, the groups where
    masking them was significant (should be none).

    Groups whose summed planted signal (``hu_per_month``) is below ``min_signal`` × the largest
    group's hold no planted lobe signal (e.g. a schedule complete by 30 months): ranking their
    lobes ranks noise. The same numbers are therefore also given over the groups with a
    signal (``signal_*``), and significant cells in groups without one are listed
    (``significant_without_signal``: effects the schedule did not plant).
    """
    from scipy import stats

    if "definition" in expected and expected["definition"].nunique() > 1:
        raise ValueError("expected importance holds several definitions: choose one")
    columns = ["group", "lobe", "hu_per_month", "importance"]
    cells = measured.merge(expected[columns], on=["group", "lobe"])
    if cells.empty:
        raise ValueError("measured and planted importance share no (group, lobe) cell")
    rho = stats.spearmanr(cells["importance"], cells[value])
    top = {}
    for group, part in cells.groupby("group", sort=False):
        planted = part.loc[part["importance"].idxmax(), "lobe"]
        found = part.loc[part[value].idxmax(), "lobe"]
        top[group] = {"planted": planted, "measured": found, "match": bool(planted == found)}
    totals = expected.groupby("lobe")["importance"].sum()
    null_lobes = totals[totals <= 0].index
    tested = "significant" in cells
    significant_null = (
        {
            lobe: cells.loc[(cells["lobe"] == lobe) & cells["significant"], "group"].tolist()
            for lobe in null_lobes
        }
        if tested
        else None
    )
    totals_by_group = cells.groupby("group", sort=False)["hu_per_month"].sum()
    signal = totals_by_group[totals_by_group >= min_signal * totals_by_group.max()].index
    in_signal = cells["group"].isin(signal)
    signal_rho = (
        stats.spearmanr(cells.loc[in_signal, "importance"], cells.loc[in_signal, value])
        if in_signal.sum() > 2
        else None
    )
    return {
        "signal_groups": list(signal),
        "signal_spearman_rho": float(signal_rho.statistic) if signal_rho else float("nan"),
        "signal_within_group_spearman_rho": _mean_within(cells[in_signal], value),
        "signal_top_lobe_matches": sum(top[g]["match"] for g in signal),
        "significant_without_signal": (
            [f"{r.group}: {r.lobe}" for r in cells[~in_signal & cells["significant"]].itertuples()]
            if tested
            else None
        ),
        "spearman_rho": float(rho.statistic),
        "spearman_p": float(rho.pvalue),
        "within_group_spearman_rho": _mean_within(cells, value),
        "cells": len(cells),
        "top_lobe": top,
        "top_lobe_matches": sum(t["match"] for t in top.values()),
        "groups": len(top),
        "null_lobes_significant_in": significant_null,
    }


def _mean_within(cells: pd.DataFrame, value: str) -> float:
    """Mean over groups of the Spearman ρ between planted and measured lobe order."""
    from scipy import stats

    within = [
        stats.spearmanr(part["importance"], part[value]).statistic
        for _, part in cells.groupby("group", sort=False)
        if part["importance"].nunique() > 1 and part[value].nunique() > 1
    ]
    return float(np.mean(within)) if within else float("nan")


READOUTS = {"mean_delta_ae": "ΔAE", "mean_abs_change": "|Δprediction|"}


def recovery_row(
    fill: str, measured: pd.DataFrame, expected: pd.DataFrame, value: str = "mean_delta_ae"
) -> dict:
    """One fill's and readout's :func:`score_importance` in brief (a row of the by-fill
    comparison): overall and signal-group scores and the number of significant cells of
    ``measured`` (None for an untested readout)."""
    score = score_importance(measured, expected, value=value)
    return {
        "fill": fill,
        "readout": READOUTS[value],
        "definition": expected["definition"].iloc[0],
        "spearman_rho": score["spearman_rho"],
        "within_group_rho": score["within_group_spearman_rho"],
        "top_lobe": f"{score['top_lobe_matches']}/{score['groups']}",
        "signal_rho": score["signal_spearman_rho"],
        "signal_within_group_rho": score["signal_within_group_spearman_rho"],
        "signal_top_lobe": f"{score['signal_top_lobe_matches']}/{len(score['signal_groups'])}",
        "significant_cells": (
            int(measured["significant"].sum()) if "significant" in measured else None
        ),
    }


def voxel_scores(attribution_map, signal, brain, level: float = 0.25) -> dict[str, float]:
    """A voxel map against the planted signal of one subject (same grid): the true region is
    the brain's voxels whose |signal| reaches ``level`` × its maximum. Returns the AUROC of
    |map| for that region over the brain's voxels and the relevance-mass accuracy (Arras et al.
    2022: the share of the brain's |map| inside the region); NaN without a planted signal."""
    from sklearn.metrics import roc_auc_score

    inside = np.asarray(brain) > 0
    score = np.abs(np.asarray(attribution_map, np.float64))[inside]
    planted = np.abs(np.asarray(signal, np.float64))[inside]
    if planted.size == 0 or planted.max() <= 0:
        return {"auroc": float("nan"), "mass_accuracy": float("nan")}
    region = planted >= level * planted.max()
    total = score.sum()
    return {
        "auroc": float(roc_auc_score(region, score)) if 0 < region.sum() < region.size else np.nan,
        "mass_accuracy": float(score[region].sum() / total) if total > 0 else float("nan"),
    }


def planted_maturity(layout: RunLayout, subject_id: str) -> np.ndarray:
    """The planted white-matter maturity of one subject of a synthetic run, in its model grid:
    each lobe's maturity fraction at the child's biological age (the schedule's curve, in
    [0, 1]) on that lobe's white-matter core, 0 elsewhere; carried from the native grid like
    the lobes (linear interpolation)."""
    cohort = layout.synthetic
    schedule = MaturationSchedule.from_dict(json.loads(cohort.schedule.read_text()))
    age = json.loads(cohort.truth(subject_id).read_text())["biological_age_months"]
    lookup = np.zeros(max(LOBES) + 1, np.float32)
    for idx, name in LOBES.items():
        lookup[idx] = float(schedule.lobes[name].fraction(age))
    wm = sitk.ReadImage(str(cohort.truth_wm(subject_id)))
    native = sitk.GetImageFromArray(lookup[sitk.GetArrayFromImage(wm)])
    native.CopyInformation(wm)
    reference = sitk.ReadImage(str(layout.preprocessed(subject_id)))
    return map_to_grid(native, reference, labels=False).astype(np.float32)
