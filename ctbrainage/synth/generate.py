"""A synthetic cohort: subjects, parallel generation, files on disk, manifest and ground truth.

Layout of a cohort folder (:class:`~ctbrainage.core.layout.SyntheticLayout`)::

    cohort.csv                    manifest: subject_id, age_months, sex, site, image
    images/<id>.nii.gz            int16 HU (or dicom/<id>/IM0001.dcm ... with --format dicom)
    truth/<id>_lobes.nii.gz       lobe labels 1-4 in the native grid
    truth/<id>_brain.nii.gz       brain mask
    truth/<id>_wm.nii.gz          lobe white-matter cores (labels 1-4), for measuring attenuation
    truth/<id>_signal.nii.gz      the planted lobar signal: d HU / d age (float32)
    truth/<id>.json               every planted parameter of the subject
    truth.csv                     one row per subject: planted and measured values
    schedule.json                 the maturation schedule
    expected_importance.csv       expected lobe importance per age group, every definition
    records/<id>.json             what each subject was generated from (``freshness``)
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from ctbrainage.core.atomic import atomic_write_json, atomic_write_text
from ctbrainage.core.cohort import PAPER_AGE_EDGES
from ctbrainage.core.freshness import Record
from ctbrainage.core.labels import LOBES
from ctbrainage.core.layout import SyntheticLayout
from ctbrainage.core.workers import map_subjects, reason
from ctbrainage.imaging import ctio
from ctbrainage.synth.dicom import write_ct_dicom_series
from ctbrainage.synth.head import (
    ACQUISITIONS,
    CUES,
    GENERATOR_VERSION,
    SITES,
    SubjectSpec,
    cached_template,
    simulate_head,
)
from ctbrainage.synth.schedule import IMPORTANCE_DEFINITIONS, MaturationSchedule

AGE_LIMITS = (0.0, 48.0)  # months: the paper's 0-47 months
_GIVEN = ["Aiko", "Ben", "Chloe", "Daichi", "Emma", "Felix", "Hana", "Ivan", "Jun", "Kai"]
_FAMILY = ["SATO", "MILLER", "TANAKA", "GARCIA", "SUZUKI", "NOVAK", "ITO", "SILVA"]


class CohortError(ValueError):
    """Arguments that cannot make a cohort."""


def cohort_specs(
    n: int,
    seed: int,
    age_range: tuple[float, float] = AGE_LIMITS,
    tilt_fraction: float = 0.0,
) -> list[SubjectSpec]:
    """Subjects with ages spread evenly (stratified uniform) over ``age_range``, sexes balanced,
    two sites, optional gantry tilt (10-20°) for a fraction of them; deterministic for ``seed``."""
    if not isinstance(n, int | np.integer) or n < 1:
        raise CohortError(f"the number of subjects must be a positive integer, got {n!r}")
    lo, hi = age_range
    if not (AGE_LIMITS[0] <= lo < hi <= AGE_LIMITS[1]):
        raise CohortError(
            f"ages must lie within 0-47 months (range [{AGE_LIMITS[0]:g}, {AGE_LIMITS[1]:g})),"
            f" got [{lo:g}, {hi:g})"
        )
    if not 0.0 <= tilt_fraction <= 1.0:
        raise CohortError(f"tilt fraction must be within [0, 1], got {tilt_fraction}")
    rng = np.random.default_rng(seed)
    ages = lo + (hi - lo) * (rng.permutation(n) + rng.uniform(0.0, 1.0, n)) / n
    sexes = rng.permutation(np.resize(["F", "M"], n))
    sites = rng.permutation(np.resize(list(SITES), n))
    tilted = rng.uniform(size=n) < tilt_fraction
    tilts = np.where(tilted, rng.uniform(10.0, 20.0, n), 0.0)
    seeds = np.random.SeedSequence(seed).generate_state(n)
    width = max(4, len(str(n)))
    return [
        SubjectSpec(
            subject_id=f"syn{i + 1:0{width}d}",
            age_months=float(ages[i]),
            sex=str(sexes[i]),
            site=str(sites[i]),
            seed=int(seeds[i]),
            gantry_tilt_deg=round(float(tilts[i]), 2),
        )
        for i in range(n)
    ]


def measure_lobe_wm_hu(hu: np.ndarray, wm_core: np.ndarray) -> dict[str, float]:
    """Mean HU of each lobe's white-matter core, measured in the image."""
    return {name: float(hu[wm_core == idx].mean()) for idx, name in LOBES.items()}


def generate_cohort(
    out_dir: str | Path,
    n: int,
    seed: int,
    schedule: str | Path | dict | MaturationSchedule = "physiological",
    mode: str = "demo",
    fmt: str = "nifti",
    age_range: tuple[float, float] = AGE_LIMITS,
    tilt_fraction: float = 0.0,
    workers: int = 0,
    age_group_edges=PAPER_AGE_EDGES,
    progress: bool = True,
    cues: str = "all",
) -> pd.DataFrame:
    """Generate (or complete) a cohort in ``out_dir``; returns the manifest. ``cues="lobar"``
    leaves the lobar white matter as the only age cue (:func:`~ctbrainage.synth.simulate_head`).

    Subjects whose files already exist with identical parameters are not generated again.
    Failures are collected and raised together after every other subject is written.
    """
    if mode not in ACQUISITIONS:
        raise CohortError(f"unknown mode {mode!r}; choose from {', '.join(ACQUISITIONS)}")
    if fmt not in ("nifti", "dicom"):
        raise CohortError(f"unknown format {fmt!r}; choose nifti or dicom")
    if cues not in CUES:
        raise CohortError(f"unknown cues {cues!r}; choose from {', '.join(CUES)}")
    schedule = MaturationSchedule.parse(schedule, age_group_edges)
    specs = cohort_specs(n, seed, age_range, tilt_fraction)
    out = SyntheticLayout(Path(out_dir))
    out.truth_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out.schedule, schedule.to_dict(), indent=2)

    todo = [s for s in specs if not _is_done(out, s, schedule, mode, fmt, cues)]
    if todo:
        cached_template(ACQUISITIONS[mode].template_mm)  # load once before the workers fork
    jobs = [
        {
            "subject_id": s.subject_id,
            "out": out,
            "spec": s,
            "schedule": schedule,
            "mode": mode,
            "fmt": fmt,
            "cues": cues,
        }
        for s in todo
    ]
    errors = map_subjects(
        _write_subject_job, jobs, workers, desc=f"synthetic {mode} heads", progress=progress
    ).errors
    if errors:
        detail = "; ".join(reason(sid, err) for sid, err in sorted(errors.items()))
        raise RuntimeError(f"{len(errors)} of {len(specs)} subjects failed: {detail}")

    truths = [json.loads(out.truth(s.subject_id).read_text()) for s in specs]
    manifest = pd.DataFrame(
        {
            "subject_id": [t["subject_id"] for t in truths],
            "age_months": [t["age_months"] for t in truths],
            "sex": [t["sex"] for t in truths],
            "site": [t["site"] for t in truths],
            "image": [t["image"] for t in truths],
        }
    )
    atomic_write_text(out.manifest, manifest.to_csv(index=False))
    atomic_write_text(out.truth_table, _truth_table(truths).to_csv(index=False))
    shares = _wm_shares(out, specs)
    importance = pd.concat(
        [schedule.expected_importance(age_group_edges, shares, d) for d in IMPORTANCE_DEFINITIONS]
    )
    atomic_write_text(out.expected_importance, importance.to_csv(index=False))
    return manifest


def _identity(spec: SubjectSpec) -> dict:
    """Synthetic identifying DICOM fields (they must never reach any pipeline output)."""
    rng = np.random.default_rng(spec.seed ^ 0x5EED)
    day = np.datetime64("2019-01-01") + int(rng.integers(0, 6 * 365))
    return {
        "patient_name": f"{rng.choice(_FAMILY)}^{rng.choice(_GIVEN)}",
        "patient_id": f"MRN{int(rng.integers(10**7, 10**8))}",
        "study_date": str(day).replace("-", ""),
    }


def _settings(spec: SubjectSpec, schedule: MaturationSchedule, mode, fmt, cues) -> dict:
    return {
        "spec": asdict(spec),
        "schedule": schedule.to_dict(),
        "mode": mode,
        "format": fmt,
        "cues": cues,
    }


def _made(out: SyntheticLayout, sid: str, fmt: str) -> list[Path]:
    maps = [out.truth_lobes(sid), out.truth_brain(sid), out.truth_wm(sid), out.truth_signal(sid)]
    return [out.root / out.image(sid, fmt), out.truth(sid), *maps]


def _is_done(out: SyntheticLayout, spec, schedule, mode, fmt, cues) -> bool:
    record = Record(out.record(spec.subject_id), out.root)
    settings = _settings(spec, schedule, mode, fmt, cues)
    made = _made(out, spec.subject_id, fmt)
    return record.fresh(settings, GENERATOR_VERSION, outputs=made) is not None


def _write_subject_job(job: dict) -> dict:
    _write_subject(job["out"], job["spec"], job["schedule"], job["mode"], job["fmt"], job["cues"])
    return {"subject_id": job["subject_id"]}


def _write_subject(out: SyntheticLayout, spec, schedule, mode, fmt, cues) -> None:
    head = simulate_head(spec, schedule, mode, cues=cues)
    sid = spec.subject_id
    image = out.image(sid, fmt)
    if fmt == "nifti":
        ctio.write_nifti(out.root / image, head.hu, head.affine)
    else:
        write_ct_dicom_series(
            out.root / image,
            head.hu,
            head.affine,
            age_months=spec.age_months,
            sex=spec.sex,
            uid_seed=str(spec.seed),
            **_identity(spec),
        )
    for path, labels in (
        (out.truth_lobes(sid), head.lobes),
        (out.truth_brain(sid), head.brain),
        (out.truth_wm(sid), head.wm_core),
        (out.truth_signal(sid), head.signal),
    ):
        ctio.write_nifti(path, labels, head.affine)
    voxel_ml = float(abs(np.linalg.det(head.affine[:3, :3]))) / 1000.0
    truth = {
        **head.truth,
        "image": image.as_posix(),
        "brain_volume_ml": float(head.brain.sum()) * voxel_ml,
        "lobe_volume_ml": {n: float((head.lobes == i).sum()) * voxel_ml for i, n in LOBES.items()},
        "wm_core_volume_ml": {
            n: float((head.wm_core == i).sum()) * voxel_ml for i, n in LOBES.items()
        },
        "wm_hu_measured": measure_lobe_wm_hu(head.hu, head.wm_core),
    }
    atomic_write_json(out.truth(sid), truth)
    settings = _settings(spec, schedule, mode, fmt, cues)
    Record(out.record(sid), out.root).write(settings, GENERATOR_VERSION, {})


def _truth_table(truths: list[dict]) -> pd.DataFrame:
    rows = []
    for t in truths:
        row = {
            k: t[k]
            for k in (
                "subject_id",
                "age_months",
                "biological_age_months",
                "maturity_offset_months",
                "sex",
                "site",
                "cues",
                "gantry_tilt_deg",
                "brain_volume_ml",
                "brain_volume_planted_ml",
                "intracranial_volume_norm_ml",
                "cephalic_index",
                "extra_axial_csf_mm",
                "fontanelle_radius_mm",
                "grey_matter_hu",
                "site_offset_hu",
            )
        }
        row.update({f"bone_{k}_mm": v for k, v in t["bone_thickness_mm"].items()})
        row.update({f"wm_hu_planted_{k}": v for k, v in t["wm_hu"].items()})
        row.update({f"wm_hu_measured_{k}": v for k, v in t["wm_hu_measured"].items()})
        row.update({f"lobe_volume_ml_{k}": v for k, v in t["lobe_volume_ml"].items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _wm_shares(out: SyntheticLayout, specs) -> dict[str, float]:
    """Each lobe's mean share of lobar white-matter core volume across the cohort."""
    totals = dict.fromkeys(LOBES.values(), 0.0)
    for spec in specs:
        volumes = json.loads(out.truth(spec.subject_id).read_text())
        for name, ml in volumes["wm_core_volume_ml"].items():
            totals[name] += ml
    grand = sum(totals.values()) or 1.0
    return {name: v / grand for name, v in totals.items()}
