"""Manifest validation: one reason per problem, only missing columns stop; age groups."""

import numpy as np
import pandas as pd
import pytest

from ctbrainage.core.cohort import age_group, sliding_windows
from ctbrainage.imaging.cohort_manifest import REQUIRED_COLUMNS, ManifestError, validate_manifest
from ctbrainage.imaging.ctio import write_nifti
from ctbrainage.synth import generate_cohort
from ctbrainage.synth.dicom import write_ct_dicom_series

AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def _dicom(folder, age_months, sex):
    hu = np.random.default_rng(0).integers(-1000, 1500, (8, 8, 12)).astype(np.int16)
    write_ct_dicom_series(
        folder,
        hu,
        AFFINE,
        age_months=age_months,
        sex=sex,
        patient_name="SECRET^NAME",
        patient_id="MRN1234567",
        study_date="20200102",
        uid_seed=folder.name,
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest")
    (root / "img").mkdir()
    write_nifti(root / "img" / "a.nii.gz", np.zeros((4, 4, 4), np.int16), AFFINE)
    (root / "img" / "broken.nii.gz").write_bytes(b"not a nifti at all" * 10)
    (root / "img" / "scan.mha").write_bytes(b"x")
    (root / "img" / "empty").mkdir()
    (root / "img" / "empty" / "notes.txt").write_text("no DICOM here")
    _dicom(root / "img" / "d18", 18.7, "M")  # PatientAge 018M, PatientSex M
    _dicom(root / "img" / "d2w", 0.5, "")  # PatientAge 002W, PatientSex O
    return root


def _validate(root, rows, name="cohort.csv", **kwargs):
    path = root / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return validate_manifest(path, **kwargs)


def _row(sid, age="12", sex="F", image="img/a.nii.gz", **extra):
    return {"subject_id": sid, "age_months": age, "sex": sex, "site": "A", "image": image, **extra}


def _reasons(exclusions):
    return dict(zip(exclusions["subject_id"], exclusions["reason"], strict=True))


def test_every_exclusion_rule_names_its_problem(images):
    rows = [
        _row("ok1", scanner="X1"),
        _row("bad id!"),
        _row("dup"),
        _row("dup", age="13"),
        _row("nofile", image="img/missing.nii.gz"),
        _row("broken", image="img/broken.nii.gz"),
        _row("nodicom", image="img/empty"),
        _row("format", image="img/scan.mha"),
        _row("noage", age=""),
        _row("text", age="abc"),
        _row("neg", age="-2"),
        _row("old", age="60"),
        _row("edge", age="48"),
        _row("sexX", sex="X"),
    ]
    valid, excl = _validate(images, rows)
    assert valid["subject_id"].tolist() == ["ok1"]
    reasons = _reasons(excl)
    # an invalid id may be a name: reported by its row, never echoed
    assert reasons["row 3"] == "invalid subject_id in row 3 (use letters, digits, _ and -)"
    assert not excl.astype(str).apply(lambda column: column.str.contains("bad id")).any().any()
    assert (excl["subject_id"] == "dup").sum() == 2
    assert reasons["dup"] == "duplicate subject_id (rows 4, 5)"
    assert reasons["nofile"] == "image not found: img/missing.nii.gz"
    assert reasons["broken"].startswith("image unreadable")
    assert reasons["nodicom"] == "image unreadable: no DICOM files in the folder"
    assert reasons["format"].startswith("image is neither a NIfTI file")
    assert reasons["noage"] == "age missing"
    assert reasons["text"] == "age_months 'abc' is not a number"
    assert reasons["neg"] == "age_months -2 is negative"
    assert reasons["old"] == "age_months 60 is outside the allowed range [0, 48) months"
    assert reasons["edge"] == "age_months 48 is outside the allowed range [0, 48) months"
    assert reasons["sexX"] == "unknown sex code 'X' (use F, M or empty)"
    # exclusions keep the row's values as given, extra columns included
    assert list(excl.columns[:2]) == ["subject_id", "reason"]
    assert set(REQUIRED_COLUMNS) | {"scanner"} <= set(excl.columns)
    assert excl.set_index("subject_id").loc["text", "age_months"] == "abc"


def test_several_problems_are_reported_together(images):
    _, excl = _validate(images, [_row("a b", age="x", sex="?", image="nope")])
    reason = excl["reason"].iloc[0]
    for part in ("invalid subject_id", "image not found: nope", "'x' is not a number", "'?'"):
        assert part in reason


def test_valid_rows_are_normalised_and_keep_extra_columns(images):
    rows = [
        _row("s1", age=" 3.5 ", sex="female", scanner="GE"),
        _row("s2", sex="m", scanner=""),
        _row("s3", sex="", image=str(images / "img" / "a.nii.gz"), scanner="Siemens"),
    ]
    valid, excl = _validate(images, rows)
    assert excl.empty and list(excl.columns[:2]) == ["subject_id", "reason"]
    assert valid["sex"].tolist() == ["F", "M", ""]
    assert valid["age_months"].tolist() == [3.5, 12.0, 12.0]
    assert valid["scanner"].tolist() == ["GE", "", "Siemens"]
    assert valid["image"].tolist()[:2] == ["img/a.nii.gz"] * 2  # kept as given
    assert valid["image_path"].tolist() == [str(images / "img" / "a.nii.gz")] * 3
    assert valid["age_source"].tolist() == ["manifest"] * 3
    assert list(valid.columns[:6]) == [*REQUIRED_COLUMNS, "scanner"]


def test_age_and_sex_come_from_dicom_when_empty(images):
    rows = [
        _row("d1", age="", sex="", image="img/d18"),
        _row("d2", age="", sex="", image="img/d2w"),
        _row("d3", age="20", sex="F", image="img/d18"),  # the manifest wins
    ]
    valid, excl = _validate(images, rows)
    assert excl.empty
    v = valid.set_index("subject_id")
    assert v.loc["d1", "age_months"] == 18 and v.loc["d1", "sex"] == "M"
    assert v.loc["d2", "age_months"] == pytest.approx(14 / 30.4375, abs=1e-3)
    assert v.loc["d2", "sex"] == ""  # PatientSex O is unknown
    assert v["age_source"].tolist() == ["dicom", "dicom", "manifest"]
    assert v["sex_source"].tolist() == ["dicom", "", "manifest"]
    assert (v.loc["d3", "age_months"], v.loc["d3", "sex"]) == (20, "F")
    # nothing but age and sex is carried from the headers
    text = valid.to_csv()
    assert "SECRET" not in text and "MRN1234567" not in text and "20200102" not in text


def test_dicom_age_is_checked_against_the_range(images):
    _, excl = _validate(images, [_row("d1", age="", image="img/d18")], age_range=(0, 12))
    assert _reasons(excl)["d1"].startswith("DICOM PatientAge 18 is outside the allowed range")


def test_missing_columns_and_empty_manifests_stop(images):
    path = images / "bad.csv"
    pd.DataFrame([{"subject_id": "a", "age_months": 3, "sex": "F"}]).to_csv(path, index=False)
    with pytest.raises(ManifestError, match="lacks required columns: site, image"):
        validate_manifest(path)
    path.write_text("")
    with pytest.raises(ManifestError, match="empty"):
        validate_manifest(path)
    path.write_text(",".join(REQUIRED_COLUMNS) + "\n")
    with pytest.raises(ManifestError, match="no rows"):
        validate_manifest(path)
    with pytest.raises(ManifestError, match="not found"):
        validate_manifest(images / "absent.csv")


def test_synthetic_cohort_manifest_is_valid(tmp_path):
    generate_cohort(tmp_path / "syn", n=2, seed=1, fmt="dicom", workers=1, progress=False)
    manifest = pd.read_csv(tmp_path / "syn" / "cohort.csv")
    valid, excl = validate_manifest(tmp_path / "syn" / "cohort.csv")
    assert excl.empty and valid["subject_id"].tolist() == manifest["subject_id"].tolist()
    np.testing.assert_allclose(valid["age_months"], manifest["age_months"])


def test_age_group_labels_at_the_edges():
    groups = age_group([0, 11.99, 12, 23.5, 24, 35.999, 36, 47.9, 48, -1])
    assert groups.iloc[:8].tolist() == [
        "0-11", "0-11", "12-23", "12-23", "24-35", "24-35", "36-47", "36-47"
    ]  # fmt: skip
    assert groups.iloc[8:].isna().all()
    assert list(groups.cat.categories) == ["0-11", "12-23", "24-35", "36-47"]
    assert age_group(pd.Series([6.0], index=["s1"]), edges=(0.0, 6.5, 12.0)).to_dict() == {
        "s1": "[0, 6.5)"
    }
    with pytest.raises(ValueError, match="increase"):
        age_group([1.0], edges=(0, 12, 12))


def test_sliding_windows_overlap():
    ages = pd.Series([1.0, 7.0, 13.0, 23.9], index=["a", "b", "c", "d"])
    windows = sliding_windows(ages, width=12, step=6, lo=0, hi=24)
    members = windows.groupby("window", sort=False)["index"].apply(list).to_dict()
    assert members == {"0-11": ["a", "b"], "6-17": ["b", "c"], "12-23": ["c", "d"]}
    assert windows[["start", "end"]].drop_duplicates().values.tolist() == [
        [0, 12], [6, 18], [12, 24]
    ]  # fmt: skip
    with pytest.raises(ValueError):
        sliding_windows(ages, width=30, step=6, lo=0, hi=24)
