"""The generated images measured against what was planted."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage, stats

from ctbrainage.core.labels import LOBES
from ctbrainage.synth import generate_cohort, norms
from ctbrainage.synth.generate import measure_lobe_wm_hu
from ctbrainage.synth.schedule import MaturationSchedule


def _truth(cohort_dir):
    return pd.read_csv(cohort_dir / "truth.csv")


def _load(cohort_dir, sid, kind=None):
    path = (
        cohort_dir
        / ("images" if kind is None else "truth")
        / (f"{sid}.nii.gz" if kind is None else f"{sid}_{kind}.nii.gz")
    )
    image = nib.load(path)
    return np.asarray(image.dataobj), image


def test_manifest_follows_the_design_contract(cohort_dir):
    manifest = pd.read_csv(cohort_dir / "cohort.csv")
    assert list(manifest.columns) == ["subject_id", "age_months", "sex", "site", "image"]
    assert manifest["subject_id"].str.fullmatch(r"[A-Za-z0-9_-]+").all()
    assert manifest["age_months"].between(0, 48, inclusive="left").all()
    assert set(manifest["sex"]) == {"F", "M"} and (manifest["sex"] == "F").sum() == 8
    assert set(manifest["site"]) == {"A", "B"}
    # ages stratified: every paper age group gets a quarter of the cohort
    groups = pd.cut(manifest["age_months"], [0, 12, 24, 36, 48], right=False)
    assert groups.value_counts().tolist() == [4, 4, 4, 4]
    for image in manifest["image"]:
        assert (cohort_dir / image).exists()


def test_brain_volume_follows_the_norm_curve(cohort_dir):
    truth = _truth(cohort_dir)
    for row in truth.itertuples():
        brain, image = _load(cohort_dir, row.subject_id, "brain")
        measured_ml = brain.sum() * np.prod(image.header.get_zooms()) / 1000
        norm_ml = norms.brain_fraction(row.age_months) * norms.intracranial_volume_ml(
            row.age_months, row.sex
        )
        # individual variation ~ 3 x WHO head-circumference CV (~8.5 %): allow 3 SD
        assert abs(measured_ml / norm_ml - 1) < 0.27, row.subject_id
        assert abs(measured_ml / row.brain_volume_planted_ml - 1) < 0.03, row.subject_id
    ratio = truth["brain_volume_ml"] / [
        norms.brain_fraction(a) * norms.intracranial_volume_ml(a, s)
        for a, s in zip(truth["age_months"], truth["sex"], strict=True)
    ]
    assert abs(np.median(ratio) - 1) < 0.06
    assert stats.spearmanr(truth["age_months"], truth["brain_volume_ml"]).statistic > 0.8


def test_lobe_white_matter_attenuation_follows_the_schedule(cohort_dir):
    schedule = MaturationSchedule.parse("physiological")
    truth = _truth(cohort_dir)
    for row in truth.itertuples():
        hu, _ = _load(cohort_dir, row.subject_id)
        wm, _ = _load(cohort_dir, row.subject_id, "wm")
        measured = measure_lobe_wm_hu(hu, wm)
        for name in LOBES.values():
            planted = getattr(row, f"wm_hu_planted_{name}")
            # measured in the image, calibration offset of the site removed: within 1.5 HU
            assert abs(measured[name] - row.site_offset_hu - planted) < 1.5, (row.subject_id, name)
            # individual variation around the schedule stays small (bio-age 1.5 mo, 0.7 HU)
            expected = float(schedule.wm_hu(name, row.age_months))
            assert abs(planted - expected) < 5.0
            # the planted value is the curve at the biological age plus the child's own 0.7 HU
            at_bio_age = float(schedule.wm_hu(name, row.biological_age_months))
            assert abs(planted - at_bio_age) < 3.5  # 5 SD
    assert np.allclose(
        truth["biological_age_months"],
        np.maximum(truth["age_months"] + truth["maturity_offset_months"], 0.0),
    )
    # the measured white matter spans the published range: 15-22 HU at birth, towards the
    # mature 29-32 HU after three years (the later phase still rises to 48 months)
    young = truth[truth["age_months"] < 3]
    old = truth[truth["age_months"] > 36]
    for name in LOBES.values():
        column = truth[f"wm_hu_measured_{name}"] - truth["site_offset_hu"]
        assert column[old.index].between(27.0, 33.0).all()
        assert column[young.index].between(15.0, 25.0).all()


def test_maturation_order_is_visible_in_the_images(cohort_dir):
    """In the first year, occipital white matter is measurably ahead of temporal."""
    truth = _truth(cohort_dir)
    infants = truth[truth["age_months"].between(3, 12)]
    gap = infants["wm_hu_measured_occipital"] - infants["wm_hu_measured_temporal"]
    assert (gap > 0).all() and gap.mean() > 1.5


def test_null_lobe_shows_no_age_trend(null_cohort_dir):
    truth = _truth(null_cohort_dir)
    ages = truth["age_months"]
    null = truth["wm_hu_measured_temporal"] - truth["site_offset_hu"]
    # image formation adds little age trend of its own: partial volume with maturing neighbours
    # (grey matter, central white matter) stays under 10 % of the 12.5 HU maturation span
    formation = null - truth["wm_hu_planted_temporal"]
    assert abs(stats.linregress(ages, formation).slope) * 48 < 1.25
    # what is left is individual variation (0.7 HU SD): infants and toddlers differ by well under
    # the 12 HU that maturation puts between them in the other lobes
    young, old = ages < 12, ages >= 24
    assert abs(null[old].mean() - null[young].mean()) < 2.0
    assert null.std() < 1.5
    for name in ("frontal", "parietal", "occipital"):
        measured = truth[f"wm_hu_measured_{name}"] - truth["site_offset_hu"]
        assert measured[old].mean() - measured[young].mean() > 4.0


def test_skull_thickness_grows_with_age(cohort_dir):
    truth = _truth(cohort_dir)
    thickness = []
    for sid in truth["subject_id"]:
        hu, image = _load(cohort_dir, sid)
        brain, _ = _load(cohort_dir, sid, "brain")
        spacing = image.header.get_zooms()
        near = ndimage.distance_transform_edt(brain == 0, sampling=spacing) < 15
        bone_ml = ((hu > 250) & near).sum() * np.prod(spacing) / 1000
        brain_ml = brain.sum() * np.prod(spacing) / 1000
        thickness.append(bone_ml / (36 * np.pi * brain_ml**2) ** (1 / 3))  # volume / area
    assert stats.spearmanr(truth["age_months"], thickness).statistic > 0.7
    planted = truth[["bone_frontal_mm", "bone_parietal_mm", "bone_occipital_mm"]].mean(axis=1)
    assert stats.spearmanr(planted, thickness).statistic > 0.7


def test_hu_ranges_are_those_of_head_ct(cohort_dir):
    sid = _truth(cohort_dir)["subject_id"].iloc[0]
    hu, _ = _load(cohort_dir, sid)
    brain, _ = _load(cohort_dir, sid, "brain")
    assert hu.dtype == np.int16
    assert np.median(hu[brain > 0]) == pytest.approx(30, abs=8)
    assert (hu < -900).mean() > 0.2  # air around the head (with noise)
    assert hu.max() > 400  # bone


def test_same_seed_gives_identical_bytes(tmp_path):
    for run in ("a", "b"):
        generate_cohort(tmp_path / run, n=1, seed=3, workers=1, progress=False)
    files = sorted(
        p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file()
    )
    assert len(files) == 11  # the cohort's 6 tables and records, the subject's 5 images
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    generate_cohort(tmp_path / "c", n=1, seed=4, workers=1, progress=False)
    first = sorted((tmp_path / "a" / "images").iterdir())[0].name
    assert (tmp_path / "a/images" / first).read_bytes() != (
        tmp_path / "c/images" / first
    ).read_bytes()


def test_rerun_skips_finished_subjects(tmp_path):
    generate_cohort(tmp_path, n=1, seed=5, workers=1, progress=False)
    image = sorted((tmp_path / "images").iterdir())[0]
    before = image.stat().st_mtime_ns
    generate_cohort(tmp_path, n=1, seed=5, workers=1, progress=False)
    assert image.stat().st_mtime_ns == before
    generate_cohort(tmp_path, n=1, seed=5, schedule="reversed", workers=1, progress=False)
    assert image.stat().st_mtime_ns != before  # a different schedule is a different subject


def test_dicom_written_and_read_back_gives_the_same_hu(tmp_path):
    generate_cohort(tmp_path / "nii", n=1, seed=9, workers=1, progress=False)
    generate_cohort(tmp_path / "dcm", n=1, seed=9, fmt="dicom", workers=1, progress=False)
    manifest = pd.read_csv(tmp_path / "dcm" / "cohort.csv")
    folder = tmp_path / "dcm" / manifest["image"].iloc[0]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    dicom = sitk.GetArrayFromImage(reader.Execute()).transpose(2, 1, 0)
    nifti = nib.load(tmp_path / "nii" / "images" / f"{manifest['subject_id'].iloc[0]}.nii.gz")
    assert np.array_equal(dicom, np.asarray(nifti.dataobj))
    import pydicom

    first = pydicom.dcmread(sorted(folder.iterdir())[0])
    assert first.Modality == "CT" and first.RescaleIntercept == -1024
    age = manifest["age_months"].iloc[0]
    assert first.PatientAge == (f"{int(age):03d}M" if age >= 1 else first.PatientAge)
    assert str(first.PatientName) and manifest["subject_id"].iloc[0] not in str(first.PatientName)


def test_gantry_tilt_is_a_sheared_grid(tmp_path):
    generate_cohort(tmp_path, n=1, seed=2, tilt_fraction=1.0, workers=1, progress=False)
    truth = json.loads(next((tmp_path / "truth").glob("*.json")).read_text())
    assert 10 <= truth["gantry_tilt_deg"] <= 20
    affine = nib.load(tmp_path / truth["image"]).affine
    cols = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    tilt = np.degrees(np.arcsin(abs(np.dot(np.cross(cols[:, 0], cols[:, 1]), [0, 1, 0]))))
    assert tilt == pytest.approx(truth["gantry_tilt_deg"], abs=0.01)
    assert affine[0, 2] == 0 and affine[1, 2] == 0  # slices stack along the table axis
