"""Does preprocessing see maturation? Age cues measured in the model input.

- :func:`maturation_leak`: the same child regenerated at many ages through step 01. With
  ``cues="lobar"`` a child's random draws do not depend on age, so two ages of one child differ
  only in the lobar white matter; whatever else changes in the model input (the brain mask, the
  P-tile levels, the output grid) is a leak: an age cue the preprocessing made, far from the
  maturing lobes. ``python -m ctbrainage.synth.invariance`` writes
  ``runs/benchmark/maturation_leak.csv``.
- :func:`input_age_cues`: every subject of a synthetic run, read from step 01's outputs (what the
  model sees, not the generated image): brain-mask volume, P-tile levels, the input in each
  lobe's white matter and outside the lobes; :func:`cue_correlations` ranks them against age.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ctbrainage.core.atomic import atomic_write_text
from ctbrainage.core.cohort import PAPER_AGE_EDGES
from ctbrainage.core.labels import LOBES
from ctbrainage.core.layout import RunLayout
from ctbrainage.imaging.ctio import ras_to_sitk
from ctbrainage.imaging.preprocess import map_to_grid, preprocess_scan
from ctbrainage.synth.head import SubjectSpec, simulate_head
from ctbrainage.synth.schedule import MaturationSchedule
from ctbrainage.synth.scoring import dice, spearman_rho

SEEDS = (21, 5, 77)
AGES = (2.0, 6.0, 10.0, 16.0, 24.0, 36.0, 46.0)
CHANGE_HU = 0.5  # a native voxel whose HU moves by more is part of the maturing white matter


def _changed_region(native_change: np.ndarray, affine: np.ndarray, grid_affine, size: int):
    """Where the native change (``[i, j, k]``, RAS ``affine``) reaches the model grid
    (``size``³, RAS ``grid_affine``), grown by one voxel for the resampling's reach."""
    indicator = ras_to_sitk(native_change.astype(np.float32), affine)
    reference = ras_to_sitk(np.zeros((size,) * 3, np.float32), grid_affine)
    out = sitk.Resample(indicator, reference, sitk.Transform(), sitk.sitkLinear, 0.0)
    reached = sitk.GetArrayFromImage(out).transpose(2, 1, 0) > 0
    return ndimage.binary_dilation(reached)


def maturation_leak(
    seeds=SEEDS,
    ages=AGES,
    mode: str = "demo",
    spacing_mm: float = 3.0,
    size: int = 64,
    ptile: tuple[float, float] = (0.5, 99.5),
) -> pd.DataFrame:
    """One row per child and age, against the same child at the first age: brain-mask volume
    and Dice, P-tile levels, how far the output grid turned (degrees) and moved (mm), and the
    model input's change outside the region the lobar maturation touched (mean |Δ| over brain
    voxels, and the share changing by more than 0.02 of the input range)."""
    schedule = MaturationSchedule.parse("staggered", PAPER_AGE_EDGES)
    rows = []
    for seed in seeds:
        reference = None
        for age in ages:
            spec = SubjectSpec(f"seed{seed}", float(age), "F", "A", int(seed))
            head = simulate_head(spec, schedule, mode, cues="lobar")
            result = preprocess_scan(ras_to_sitk(head.hu, head.affine), spacing_mm, size, ptile)
            mask = sitk.GetArrayFromImage(result.work_mask) > 0
            if reference is None:
                reference = head, result, mask
            ref_head, ref_result, ref_mask = reference
            changed = np.abs(head.hu.astype(np.float32) - ref_head.hu) > CHANGE_HU
            region = _changed_region(changed, head.affine, result.affine, size)
            brain = ((result.brain > 0) | (ref_result.brain > 0)) & ~region
            delta = np.abs(result.image - ref_result.image)[brain]
            turn = Rotation.from_matrix(result.orientation.axes @ ref_result.orientation.axes.T)
            rows.append(
                {
                    "seed": seed,
                    "age_months": age,
                    "mask_ml": result.brain_volume_ml,
                    "true_brain_ml": float(
                        head.brain.sum() * abs(np.linalg.det(head.affine[:3, :3])) / 1e3
                    ),
                    "mask_dice_vs_first": dice(mask, ref_mask),
                    "ptile_low_hu": result.ptile_hu[0],
                    "ptile_high_hu": result.ptile_hu[1],
                    "grid_turn_deg": float(np.degrees(turn.magnitude())),
                    "grid_shift_mm": float(
                        np.linalg.norm(result.orientation.centre - ref_result.orientation.centre)
                    ),
                    "input_change_outside": float(delta.mean()),
                    "share_changed_outside": float((delta > 0.02).mean()),
                }
            )
    return pd.DataFrame(rows)


def input_age_cues(layout: RunLayout) -> pd.DataFrame:
    """One row per preprocessed subject of a synthetic run: age, biological age, brain-mask
    volume (mL), P-tile levels (HU), and the mean model input in each lobe's white-matter core
    (``input_wm_<lobe>``) and in the brain outside the lobes, one voxel away from them
    (``input_outside_lobes``: deep grey matter, cerebellum, brainstem, central white matter)."""
    truth = pd.read_csv(layout.synthetic.truth_table, dtype={"subject_id": str})
    table = pd.read_csv(layout.preprocess_table, dtype={"subject_id": str})
    table = table.merge(truth[["subject_id", "biological_age_months"]], on="subject_id")
    rows = []
    for rec in table.itertuples():
        sid = rec.subject_id
        reference = sitk.ReadImage(str(layout.preprocessed(sid)))  # the input and its grid
        image = sitk.GetArrayViewFromImage(reference).transpose(2, 1, 0)
        brain = np.asarray(nib.load(layout.brain(sid)).dataobj) > 0
        wm = map_to_grid(sitk.ReadImage(str(layout.synthetic.truth_wm(sid))), reference)
        lobes = map_to_grid(sitk.ReadImage(str(layout.synthetic.truth_lobes(sid))), reference)
        outside = brain & ~ndimage.binary_dilation(lobes > 0)
        rows.append(
            {
                "subject_id": sid,
                "age_months": rec.age_months,
                "biological_age_months": rec.biological_age_months,
                "mask_ml": rec.brain_volume_ml,
                "ptile_low_hu": rec.ptile_low_hu,
                "ptile_high_hu": rec.ptile_high_hu,
                **{
                    f"input_wm_{name}": float(image[(wm == idx) & brain].mean())
                    for idx, name in LOBES.items()
                },
                "input_outside_lobes": float(image[outside].mean()),
            }
        )
    return pd.DataFrame(rows)


def cue_correlations(cues: pd.DataFrame, age: str = "age_months") -> pd.DataFrame:
    """Spearman's ρ of every cue of :func:`input_age_cues` with ``age``, per cue."""
    columns = [
        c for c in cues.columns if c not in ("subject_id", "age_months", "biological_age_months")
    ]
    return pd.DataFrame(
        [{"cue": c, "rho": spearman_rho(cues[c], cues[age]), "n": len(cues)} for c in columns]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path("runs/benchmark"),
        help="run directory to write maturation_leak.csv into (default: runs/benchmark)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--ages", type=float, nargs="+", default=list(AGES))
    args = parser.parse_args(argv)
    table = maturation_leak(args.seeds, args.ages)
    out = RunLayout(args.run_dir).maturation_leak
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, table.to_csv(index=False, float_format="%.6g"))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
