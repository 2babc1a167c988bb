"""Reading NIfTI files and DICOM series into HU images: geometry, tilt, bad input, privacy."""

import itertools
import json
import math
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import RLELossless

from ctbrainage.imaging import ctio
from ctbrainage.imaging.ctio import (
    ImageError,
    parse_dicom_age,
    ras_to_sitk,
    read_ct,
    read_dicom_age_sex,
    resample_to_orthogonal,
    sitk_to_ras,
    write_nifti,
)
from ctbrainage.synth import generate_cohort

SID = "syn0001"


def _cohort(factory, fmt, tilt):
    out = factory.mktemp(f"{fmt}_tilt{tilt}")
    generate_cohort(out, n=1, seed=3, fmt=fmt, tilt_fraction=tilt, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def nifti_cohort(tmp_path_factory):
    return _cohort(tmp_path_factory, "nifti", 0.0)


@pytest.fixture(scope="module")
def dicom_cohort(tmp_path_factory):
    return _cohort(tmp_path_factory, "dicom", 0.0)


@pytest.fixture(scope="module")
def tilted_cohort(tmp_path_factory):
    return _cohort(tmp_path_factory, "dicom", 1.0)


@pytest.fixture
def series_copy(dicom_cohort, tmp_path):
    """A writable copy of the synthetic DICOM series."""
    dst = tmp_path / "series"
    shutil.copytree(dicom_cohort / "dicom" / SID, dst)
    return dst


def _orthonormal(image):
    d = np.reshape(image.GetDirection(), (3, 3))
    return np.allclose(d @ d.T, np.eye(3), atol=1e-9)


def _world_centroid(mask, affine):
    idx = np.argwhere(mask > 0.5)
    return idx.mean(axis=0) @ affine[:3, :3].T + affine[:3, 3]


def test_nifti_reads_back_the_written_hu(nifti_cohort):
    path = nifti_cohort / "images" / f"{SID}.nii.gz"
    scan = read_ct(path)
    written = nib.load(path)
    array, affine = sitk_to_ras(scan.image)
    assert scan.image.GetPixelID() == sitk.sitkInt16 and _orthonormal(scan.image)
    np.testing.assert_array_equal(array, np.asarray(written.dataobj))
    np.testing.assert_allclose(affine, written.affine, atol=1e-5)
    assert (scan.age_months, scan.sex, scan.gantry_tilt_deg, scan.source) == (None, "", 0, "nifti")


def test_nifti_in_another_orientation_reads_the_same_world(nifti_cohort, tmp_path):
    path = nifti_cohort / "images" / f"{SID}.nii.gz"
    img = nib.load(path)
    array, affine = np.asarray(img.dataobj), img.affine
    # slices along the first axis, stored in reverse order
    permuted = affine[:, [2, 0, 1, 3]].copy()
    permuted[:3, 0] = -affine[:3, 2]
    permuted[:3, 3] = affine[:3, 3] + affine[:3, 2] * (array.shape[2] - 1)
    write_nifti(tmp_path / "permuted.nii.gz", array.transpose(2, 0, 1)[::-1], permuted)
    reference = read_ct(path).image
    other = read_ct(tmp_path / "permuted.nii.gz").image
    assert other.GetDirection() != reference.GetDirection()
    same_grid = sitk.Resample(other, reference, sitk.Transform(), sitk.sitkNearestNeighbor)
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(same_grid), sitk.GetArrayFromImage(reference)
    )


def test_dicom_reads_back_the_same_as_nifti(nifti_cohort, dicom_cohort):
    from_nifti = read_ct(nifti_cohort / "images" / f"{SID}.nii.gz")
    scan = read_ct(dicom_cohort / "dicom" / SID)
    a_nii, aff_nii = sitk_to_ras(from_nifti.image)
    a_dcm, aff_dcm = sitk_to_ras(scan.image)
    np.testing.assert_array_equal(a_dcm, a_nii)
    np.testing.assert_allclose(aff_dcm, aff_nii, atol=1e-4)
    row = pd.read_csv(dicom_cohort / "cohort.csv").iloc[0]
    # PatientAge holds completed months
    assert row.age_months - 1 < scan.age_months <= row.age_months
    assert scan.sex == row.sex and scan.source == "dicom" and scan.gantry_tilt_deg == 0
    assert read_dicom_age_sex(dicom_cohort / "dicom" / SID) == (scan.age_months, scan.sex)


def test_gantry_tilted_series_is_resampled_in_place(tilted_cohort):
    truth = json.loads((tilted_cohort / "truth" / f"{SID}.json").read_text())
    assert truth["gantry_tilt_deg"] >= 10
    scan = read_ct(tilted_cohort / "dicom" / SID)
    assert _orthonormal(scan.image)
    assert abs(scan.gantry_tilt_deg - truth["gantry_tilt_deg"]) < 0.1

    brain_img = nib.load(tilted_cohort / "truth" / f"{SID}_brain.nii.gz")
    brain = np.asarray(brain_img.dataobj)
    resampled, affine = resample_to_orthogonal(brain, brain_img.affine, cval=0)
    hu, scan_affine = sitk_to_ras(scan.image)
    assert resampled.shape == hu.shape
    np.testing.assert_allclose(scan_affine, affine, atol=1e-3)
    before = _world_centroid(brain, brain_img.affine)
    after = _world_centroid(resampled, affine)
    assert np.linalg.norm(after - before) < 1.0
    volume_ratio = (
        (resampled > 0.5).sum()
        * np.linalg.det(affine[:3, :3])
        / (brain.sum() * np.linalg.det(brain_img.affine[:3, :3]))
    )
    assert abs(abs(volume_ratio) - 1) < 0.02
    # the brain mask lands on brain tissue of the read image (grey/white matter 15-45 HU)
    assert 15 < hu[resampled > 0.5].mean() < 45


def test_tilted_nifti_reads_like_tilted_dicom(tilted_cohort, tmp_path):
    scan = read_ct(tilted_cohort / "dicom" / SID)
    hu, affine = sitk_to_ras(scan.image)
    brain_img = nib.load(tilted_cohort / "truth" / f"{SID}_brain.nii.gz")
    # rebuild the sheared original from the DICOM slices and write it as NIfTI
    files = sorted((tilted_cohort / "dicom" / SID).glob("*.dcm"))
    stack = np.stack([pydicom.dcmread(f).pixel_array.astype(np.int16) - 1024 for f in files])
    write_nifti(tmp_path / "tilted.nii.gz", stack.transpose(2, 1, 0), brain_img.affine)
    from_nifti = read_ct(tmp_path / "tilted.nii.gz")
    hu_n, affine_n = sitk_to_ras(from_nifti.image)
    assert abs(from_nifti.gantry_tilt_deg - scan.gantry_tilt_deg) < 0.01
    np.testing.assert_allclose(affine_n, affine, atol=1e-3)
    assert np.abs(hu_n.astype(int) - hu).max() <= 1


def _sheared(tilt_deg=15.0):
    t = math.radians(tilt_deg)
    affine = np.eye(4)
    affine[:3, 0] = [0.8, 0.0, 0.0]
    affine[:3, 1] = [0.0, 0.8 * math.cos(t), 0.8 * math.sin(t)]
    affine[:3, 2] = [0.0, 0.0, 1.5]  # stacked along z, oblique to the slice normal
    affine[:3, 3] = [-30.0, -40.0, -25.0]
    return affine


def _world(shape, affine):
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def test_resample_to_orthogonal_keeps_a_sphere_in_place():
    affine, shape = _sheared(), (80, 90, 40)
    center, radius = np.array([2.0, -3.0, 5.0]), 15.0
    sphere = (np.linalg.norm(_world(shape, affine) - center, axis=-1) < radius) * 1000.0 - 1000
    out, new = resample_to_orthogonal(sphere, affine)
    cols = new[:3, :3]
    np.testing.assert_allclose(cols.T @ cols, np.diag(np.diag(cols.T @ cols)), atol=1e-9)
    np.testing.assert_allclose(new[:3, :2], affine[:3, :2])
    assert np.linalg.norm(cols[:, 2]) == pytest.approx(1.5 * math.cos(math.radians(15)))
    inside = out > -500
    assert np.linalg.norm(_world_centroid(inside, new) - center) < 0.3
    volume = inside.sum() * abs(np.linalg.det(cols))
    assert volume == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.03)
    # the grid covers the original extent: every original corner lies inside it
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in shape])), float)
    idx = np.linalg.solve(new, np.c_[corners @ affine[:3, :3].T + affine[:3, 3], np.ones(8)].T)
    assert (idx[:3].T > -1e-6).all() and (idx[:3].T < np.array(out.shape) - 1 + 1e-6).all()


def test_resample_to_orthogonal_is_exact_for_a_linear_ramp():
    affine, shape = _sheared(12.0), (30, 30, 20)
    gradient = np.array([3.0, -2.0, 5.0])
    ramp = _world(shape, affine) @ gradient
    out, new = resample_to_orthogonal(ramp, affine, cval=np.nan)
    world = _world(out.shape, new)
    source_idx = (world - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T
    inside = ((source_idx > -1e-6) & (source_idx < np.array(shape) - 1 + 1e-6)).all(axis=-1)
    outside = ((source_idx < -1) | (source_idx > np.array(shape))).any(axis=-1)
    assert inside.mean() > 0.5 and outside.sum() > 1000 and np.isnan(out[outside]).all()
    np.testing.assert_allclose(out[inside], (world @ gradient)[inside], atol=1e-3)


def test_resample_nearest_keeps_labels():
    labels = np.zeros((20, 20, 12), np.uint8)
    labels[5:15, 5:15, 3:9] = 3
    out, _ = resample_to_orthogonal(labels, _sheared(), cval=0, order=0)
    assert set(np.unique(out)) == {0.0, 3.0}
    assert abs((out == 3).sum() - (labels == 3).sum()) < 0.1 * (labels == 3).sum()


def test_ras_sitk_round_trip_and_shear_refused():
    affine = np.array([[-0.5, 0, 0, 10], [0, 0, 2.0, -5], [0, 0.7, 0, 3], [0, 0, 0, 1]])
    array = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    back, back_affine = sitk_to_ras(ras_to_sitk(array, affine))
    np.testing.assert_array_equal(back, array)
    np.testing.assert_allclose(back_affine, affine, atol=1e-12)
    with pytest.raises(ValueError, match="shear"):
        ras_to_sitk(array, _sheared())


def test_dicom_age_strings():
    assert parse_dicom_age("018M") == 18
    assert parse_dicom_age("002W") == pytest.approx(14 / 30.4375)
    assert parse_dicom_age("003Y") == 36
    assert parse_dicom_age("010D") == pytest.approx(10 / 30.4375)
    assert parse_dicom_age("") is None and parse_dicom_age("18 months") is None


def _rewrite(folder, **fields):
    for f in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        for key, value in fields.items():
            setattr(ds, key, value)
        ds.save_as(f)


def test_mr_series_is_refused(series_copy):
    _rewrite(series_copy, Modality="MR")
    with pytest.raises(ImageError, match="modality MR, not CT"):
        read_ct(series_copy)


def test_missing_slice_is_detected(series_copy):
    files = sorted(series_copy.glob("*.dcm"))
    files[len(files) // 2].unlink()
    with pytest.raises(ImageError, match="missing or inconsistent slices: spacing varies"):
        read_ct(series_copy)


def test_too_few_slices(series_copy):
    for f in sorted(series_copy.glob("*.dcm"))[5:]:
        f.unlink()
    with pytest.raises(ImageError, match="too few slices"):
        read_ct(series_copy)


def test_slice_order_and_stray_files_do_not_matter(dicom_cohort, series_copy):
    files = sorted(series_copy.glob("*.dcm"))
    for n, f in enumerate(reversed(files)):  # file names now run against the slice order
        f.rename(series_copy / f"z{n:04d}.tmp")
    (series_copy / "README.txt").write_text("exported by the PACS")
    (series_copy / "sub").mkdir()
    (series_copy / "sub" / "DICOMDIR.bin").write_bytes(b"\x00" * 300)
    a, aff = sitk_to_ras(read_ct(series_copy).image)
    b, aff_b = sitk_to_ras(read_ct(dicom_cohort / "dicom" / SID).image)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(aff, aff_b)


def test_compressed_pixels_pydicom_cannot_decode_go_through_simpleitk(
    dicom_cohort, series_copy, monkeypatch
):
    expected = sitk_to_ras(read_ct(dicom_cohort / "dicom" / SID).image)[0]
    for f in series_copy.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.compress(RLELossless)
        ds.save_as(f)

    def no_decoder(self):
        raise NotImplementedError("no pixel data handler for this transfer syntax")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_decoder))
    np.testing.assert_array_equal(sitk_to_ras(read_ct(series_copy).image)[0], expected)


def test_corrupt_files_are_refused(tmp_path, series_copy):
    corrupt = tmp_path / "x.nii.gz"
    corrupt.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(ImageError, match="unreadable NIfTI"):
        read_ct(corrupt)
    files = sorted(series_copy.glob("*.dcm"))
    whole = files[3].read_bytes()
    for size in (200, 700, len(whole) - 100):  # meta header, data set header, pixel data
        files[3].write_bytes(whole[:size])
        with pytest.raises(ImageError, match=f"unreadable DICOM: {files[3].name}"):
            read_ct(series_copy)


def test_folder_without_dicom_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ImageError, match="no DICOM files"):
        read_ct(tmp_path)
    with pytest.raises(ImageError, match="no DICOM files"):
        read_dicom_age_sex(tmp_path)
    with pytest.raises(ImageError, match="image not found"):
        read_ct(tmp_path / "absent.nii.gz")


@pytest.mark.parametrize("kind", ["air", "zeros", "mr"])
def test_images_without_hounsfield_units_are_refused(tmp_path, kind):
    rng = np.random.default_rng(1)
    if kind == "air":
        array = np.full((40, 40, 20), -1000, np.int16)
        array.flat[rng.choice(array.size, 10, replace=False)] = rng.integers(-50, 1500, 10)
    elif kind == "zeros":
        array = np.zeros((40, 40, 20), np.int16)
    else:
        array = rng.uniform(0, 900, (40, 40, 20)).astype(np.float32)
    write_nifti(tmp_path / "scan.nii.gz", array, np.diag([1.0, 1.0, 2.0, 1.0]))
    with pytest.raises(ImageError, match="intensities are not CT Hounsfield units"):
        read_ct(tmp_path / "scan.nii.gz")


def test_no_identifier_reaches_the_scan(dicom_cohort):
    folder = dicom_cohort / "dicom" / SID
    ds = pydicom.dcmread(sorted(folder.glob("*.dcm"))[0])
    secrets = [
        str(ds.PatientName),
        str(ds.PatientID),
        ds.StudyDate,
        ds.PatientBirthDate,
        ds.InstitutionName,
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
    ]
    scan = read_ct(folder)
    image = scan.image
    text = " ".join(
        [
            repr(scan),
            str(scan),
            str(image),
            *image.GetMetaDataKeys(),
            *(image.GetMetaData(k) for k in image.GetMetaDataKeys()),
        ]
    )
    for secret in secrets:
        assert secret and secret not in text
    assert image.GetMetaDataKeys() == ()
    assert set(vars(scan)) == {"image", "age_months", "sex", "gantry_tilt_deg", "source"}


def test_dicom_tags_read_are_only_geometry_age_and_sex():
    identifying = {"PatientName", "PatientID", "PatientBirthDate", "StudyDate", "InstitutionName"}
    assert not identifying & set(ctio._DICOM_TAGS)
