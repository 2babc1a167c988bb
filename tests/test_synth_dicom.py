"""Tests for ctbrainage.synth.dicom: the synthetic cohort's DICOM CT series writer."""

import math

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from helpers import affine, random_hu, tilted_affine

from ctbrainage.synth.dicom import write_ct_dicom_series

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
DICOM_KW = dict(
    age_months=18,
    sex="F",
    patient_name="Doe^Jane",
    patient_id="P0001",
    study_date="20240315",
    uid_seed="subject-0001",
)


def _read_dir(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _sitk_read(folder):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    img = reader.Execute()
    arr = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
    lin = np.array(img.GetDirection()).reshape(3, 3) * np.array(img.GetSpacing())
    return arr, LPS @ affine(lin, img.GetOrigin())  # back to RAS


def test_dicom_sitk_roundtrip_standard_orientation(tmp_path):
    hu = random_hu()
    aff = affine(np.diag([-0.5, -0.5, 1.25]))  # LPS-aligned: i -> L, j -> P, k -> S
    write_ct_dicom_series(tmp_path / "dcm", hu, aff, **DICOM_KW)
    assert sorted(p.name for p in (tmp_path / "dcm").iterdir()) == [
        f"IM{k:04d}.dcm" for k in range(1, 7)
    ]
    arr, sitk_aff = _sitk_read(tmp_path / "dcm")
    np.testing.assert_array_equal(arr, hu)
    np.testing.assert_allclose(sitk_aff, aff, atol=1e-6)


def test_dicom_sitk_roundtrip_flipped(tmp_path):
    """A left-handed grid: readers stack slices along the (right-handed) normal, reversing k."""
    hu = random_hu()
    aff = affine(np.diag([-0.5, 0.5, 1.25]))
    write_ct_dicom_series(tmp_path / "dcm", hu, aff, **DICOM_KW)
    arr, sitk_aff = _sitk_read(tmp_path / "dcm")
    n = hu.shape[2]
    flip_k = np.diag([1.0, 1.0, -1.0, 1.0])
    flip_k[2, 3] = n - 1
    np.testing.assert_array_equal(arr, hu[:, :, ::-1])
    np.testing.assert_allclose(sitk_aff, aff @ flip_k, atol=1e-6)
    # Same voxel -> same world point: voxel (i, j, k) of the input is voxel (i, j, n-1-k) in SITK.
    ijk = np.array([3, 7, 1, 1.0])
    np.testing.assert_allclose(aff @ ijk, sitk_aff @ (flip_k @ ijk), atol=1e-6)
    # Orientation tags as specified (LPS unit vectors of affine columns 0 and 1).
    ds = pydicom.dcmread(tmp_path / "dcm" / "IM0001.dcm")
    np.testing.assert_allclose([float(v) for v in ds.ImageOrientationPatient], [1, 0, 0, 0, -1, 0])
    np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], [0.5, 0.5])


def test_dicom_gantry_tilt(tmp_path):
    hu = random_hu((12, 10, 5), seed=3)
    aff = tilted_affine(15.0)
    write_ct_dicom_series(tmp_path / "dcm", hu, aff, **DICOM_KW)
    for k in range(hu.shape[2]):
        ds = pydicom.dcmread(tmp_path / "dcm" / f"IM{k + 1:04d}.dcm")
        assert ds.InstanceNumber == k + 1
        assert float(ds.GantryDetectorTilt) == pytest.approx(15.0, abs=1e-6)
        assert float(ds.SliceThickness) == pytest.approx(1.25 * math.cos(math.radians(15)))
        expected = (LPS @ aff @ [0, 0, k, 1])[:3]
        np.testing.assert_allclose(
            [float(v) for v in ds.ImagePositionPatient], expected, rtol=0, atol=1e-9
        )
        assert ds.PixelRepresentation == 0 and ds.pixel_array.dtype == np.uint16
        values = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        np.testing.assert_array_equal(values, hu[:, :, k].T)
    untilted = tmp_path / "flat"
    write_ct_dicom_series(untilted, hu, affine(np.diag([-0.5, 0.5, 1.25])), **DICOM_KW)
    assert "GantryDetectorTilt" not in pydicom.dcmread(untilted / "IM0001.dcm")


def test_dicom_header_fields(tmp_path):
    hu = random_hu((4, 3, 2))
    hu[0, 0, 0], hu[1, 0, 0] = -3000, 5000
    write_ct_dicom_series(tmp_path / "a", hu, np.diag([-0.5, -0.5, 1.25, 1]), **DICOM_KW)
    ds = pydicom.dcmread(tmp_path / "a" / "IM0001.dcm")
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage == ds.file_meta.MediaStorageSOPClassUID
    assert ds.Modality == "CT" and ds.RescaleType == "HU"
    assert (ds.Rows, ds.Columns) == (3, 4)
    assert ds.PatientAge == "018M" and ds.PatientSex == "F"
    assert ds.PatientName == "Doe^Jane" and ds.PatientID == "P0001"
    assert ds.StudyDate == ds.SeriesDate == ds.AcquisitionDate == "20240315"
    assert ds.PatientBirthDate == "20220914"
    assert ds.InstitutionName == "Synthetic Children's Hospital"
    assert ds.AccessionNumber and ds.ReferringPhysicianName and ds.StationName
    assert ds.BodyPartExamined == "HEAD" and float(ds.KVP) == 100
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (40, 80)
    values = ds.pixel_array.astype(int) + int(ds.RescaleIntercept)
    assert values[0, 0] == -1024 and values[0, 1] == 3071  # clipped


@pytest.mark.parametrize(
    ("age", "sex", "want_age", "want_sex"),
    [(18, "M", "018M", "M"), (0.3, "", "001W", "O"), (0.05, "female", "000W", "F")],
)
def test_dicom_age_and_sex(tmp_path, age, sex, want_age, want_sex):
    kw = {**DICOM_KW, "age_months": age, "sex": sex}
    write_ct_dicom_series(tmp_path / "s", random_hu((4, 4, 1)), np.eye(4), **kw)
    ds = pydicom.dcmread(tmp_path / "s" / "IM0001.dcm")
    assert (ds.PatientAge, ds.PatientSex) == (want_age, want_sex)


def test_dicom_deterministic_and_seeded_uids(tmp_path):
    hu, aff = random_hu((8, 6, 3)), tilted_affine(10.0)
    write_ct_dicom_series(tmp_path / "a", hu, aff, **DICOM_KW)
    write_ct_dicom_series(tmp_path / "b", hu, aff, **DICOM_KW)
    assert _read_dir(tmp_path / "a") == _read_dir(tmp_path / "b")
    write_ct_dicom_series(tmp_path / "a", hu, aff, **DICOM_KW)  # overwrite existing folder
    assert _read_dir(tmp_path / "a") == _read_dir(tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
    write_ct_dicom_series(tmp_path / "c", hu, aff, **{**DICOM_KW, "uid_seed": "other"})
    a = pydicom.dcmread(tmp_path / "a" / "IM0001.dcm")
    c = pydicom.dcmread(tmp_path / "c" / "IM0001.dcm")
    assert a.StudyInstanceUID != c.StudyInstanceUID and a.SOPInstanceUID != c.SOPInstanceUID
    uids = {pydicom.dcmread(p).SOPInstanceUID for p in (tmp_path / "a").iterdir()}
    assert len(uids) == 3
