"""Step 02: lobe labels in the model's grid.

For every subject kept by step 01: ``lobes/<id>`` (1 frontal, 2 parietal, 3 temporal,
4 occipital; 0 elsewhere) by atlas registration or TotalSegmentator (``lobes.method``); with the
atlas and ``lobes.keep_warp``, also the warp that resamples the subject into the atlas
(``lobes/<id>_to_atlas``, the inverse of the registration that carried the labels; step 10's
registered inputs); and the
table ``lobes.csv`` (the method that made each map, lobe volumes in ml, seconds). A subject that
fails is excluded with its reason; the others go on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ctbrainage.core.atomic import atomic_path
from ctbrainage.core.config import Profile
from ctbrainage.core.labels import LOBES
from ctbrainage.core.layout import RunLayout
from ctbrainage.core.workers import map_subjects
from ctbrainage.imaging import ctio
from ctbrainage.steps.contract import (
    Outcome,
    Settings,
    Step,
    kept_subjects,
    read_exclusions,
    write_table,
)
from ctbrainage.synth.head import GENERATOR_VERSION

LOBES_VERSION = 2  # bump when a change alters the lobe labels
WARP_VERSION = 2  # bump when a change alters the atlas warp
# the atlas is a generated head: a new generator makes new atlas labels
STEP = Step(
    "02_lobes",
    settings=("lobes.method", "lobes.keep_warp"),
    runtime=("lobes.totalseg_license", "synth.workers"),
    version=f"1/lobes{LOBES_VERSION}/atlas{GENERATOR_VERSION}/warp{WARP_VERSION}",
)


@dataclass(frozen=True)
class Result:
    table: pd.DataFrame  # lobes.csv: method and lobe volumes per subject
    excluded: pd.DataFrame  # this step's exclusions


def subjects(cfg: Profile | Settings) -> list[str]:
    return kept_subjects(RunLayout(cfg.run_path), STEP)


@STEP.recorded
def recorded(cfg: Settings) -> dict:
    return {"subjects": subjects(cfg)}


@STEP.inputs
def inputs(cfg: Settings) -> list[Path]:
    layout = RunLayout(cfg.run_path)
    ids = subjects(cfg)
    return [layout.cohort] + [p for s in ids for p in (layout.preprocessed(s), layout.brain(s))]


@STEP.outputs
def outputs(cfg: Settings) -> list[Path]:
    """The table and the labels of every subject in it."""
    layout = RunLayout(cfg.run_path)
    if not layout.lobes_table.exists():
        return [layout.lobes_table]
    ids = pd.read_csv(layout.lobes_table, dtype={"subject_id": str})["subject_id"]
    return [layout.lobes_table, *(layout.lobes(sid) for sid in ids)]


is_fresh = STEP.is_fresh


def run(profile: Profile, progress: bool = True) -> Result:
    """Lobe labels for every kept subject; see the module docstring."""
    STEP.run(profile, lambda cfg: _label(cfg, progress))
    layout = RunLayout(profile.run_path)
    excluded = read_exclusions(layout)
    return Result(
        pd.read_csv(layout.lobes_table, dtype={"subject_id": str}),
        excluded[excluded["step"] == STEP.name].reset_index(drop=True),
    )


def _label(cfg: Settings, progress: bool) -> Outcome:
    from ctbrainage.lobes.totalseg import licence

    layout = RunLayout(cfg.run_path)
    cohort = pd.read_csv(layout.cohort, dtype={"subject_id": str}).set_index("subject_id")
    common = {
        "root": str(layout.root),
        "method": cfg.lobes.method,
        "keep_warp": cfg.lobes.keep_warp,
        "licence": licence(cfg.lobes.totalseg_license),
    }
    items = [
        {"subject_id": sid, "image_path": cohort.loc[sid, "image_path"], **common}
        for sid in subjects(cfg)
    ]
    mapped = map_subjects(
        _lobes_subject, items, cfg.synth.workers, desc="lobe labels", progress=progress
    )
    empty = ["subject_id", "method"]  # a table with its header even when no subject is left
    table = pd.DataFrame(mapped.results, columns=None if mapped.results else empty)
    write_table(layout.lobes_table, table)
    return Outcome(failures=mapped.errors)


def _lobes_subject(item: dict) -> dict:
    import nibabel as nib
    import numpy as np

    from ctbrainage.lobes.segment import segment_lobes

    layout, sid = RunLayout(item["root"]), item["subject_id"]
    settings = {"method": item["method"], "keep_warp": item["keep_warp"]}
    sources = [layout.preprocessed(sid), layout.brain(sid)]
    if item["method"] != "atlas":
        sources.append(Path(item["image_path"]))  # TotalSegmentator reads the native scan
    record = STEP.subject_record(layout, sid)
    keep = item["keep_warp"] and item["method"] == "atlas"
    made = [layout.lobes(sid)] + ([layout.atlas_warp(sid)] if keep else [])
    done = record.fresh(settings, STEP.version, sources, made)
    if done is not None:
        return done
    prints = record.fingerprints(sources)
    start = time.perf_counter()
    image = nib.load(layout.preprocessed(sid))
    labels, method, warp = segment_lobes(
        np.asarray(image.dataobj),
        np.asarray(nib.load(layout.brain(sid)).dataobj),
        image.affine,
        item["method"],
        native_path=item["image_path"],
        licence_number=item["licence"],
        work_dir=layout.totalseg_dir,
        warp=item["keep_warp"],
    )
    ctio.write_nifti(layout.lobes(sid), labels, image.affine)
    if warp is not None:  # the atlas → subject warp: step 10's registered inputs
        import SimpleITK as sitk

        with atomic_path(layout.atlas_warp(sid)) as tmp:
            sitk.WriteImage(warp, str(tmp), useCompression=True)
    voxel_ml = float(abs(np.linalg.det(image.affine[:3, :3]))) / 1000.0
    summary = {
        "subject_id": sid,
        "method": method,
        **{
            f"{name}_ml": round(float((labels == i).sum()) * voxel_ml, 2)
            for i, name in LOBES.items()
        },
        "seconds": round(time.perf_counter() - start, 2),
    }
    record.write(settings, STEP.version, prints, summary)
    return summary
