"""Tests for ctbrainage.core.atomic (atomic writes) and the NIfTI writer of
ctbrainage.imaging.ctio."""

import nibabel as nib
import numpy as np
import pytest
from helpers import affine, random_hu, tilted_affine

from ctbrainage.core.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from ctbrainage.imaging.ctio import write_nifti


def test_atomic_path_names_and_replace(tmp_path):
    target = tmp_path / "sub" / "scan.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.parent.is_dir()
        assert tmp.name.startswith(".tmp-") and tmp.name.endswith(".nii.gz")
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["scan.nii.gz"]
    atomic_write_text(target, "text ü")
    assert target.read_text(encoding="utf-8") == "text ü"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"


def test_atomic_path_failure_keeps_old_file(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_atomic_path_directory(tmp_path):
    target = tmp_path / "series"
    for content in ("first", "second"):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / f"{content}.txt").write_text(content)
    assert [p.name for p in target.iterdir()] == ["second.txt"]
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "third.txt").write_text("x")
        raise ValueError
    assert [p.name for p in target.iterdir()] == ["second.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["series"]


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_write_nifti_roundtrip_and_deterministic(tmp_path, dtype, suffix):
    data = (np.random.default_rng(1).random((7, 5, 3)) * 200).astype(dtype)
    aff = affine(np.diag([-0.5, 0.5, 1.25]))
    a, b = tmp_path / f"a{suffix}", tmp_path / "other" / f"b{suffix}"
    write_nifti(a, data, aff)
    write_nifti(b, data, aff)
    assert a.read_bytes() == b.read_bytes()
    img = nib.load(a)
    assert img.get_data_dtype() == np.dtype(dtype)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), data)
    np.testing.assert_allclose(img.affine, aff)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    np.testing.assert_allclose(img.header.get_qform(), aff, atol=1e-6)


def test_write_nifti_sheared(tmp_path):
    data = random_hu((6, 5, 4))
    aff = tilted_affine()
    path = tmp_path / "tilt.nii.gz"
    write_nifti(path, data, aff)
    first = path.read_bytes()
    write_nifti(path, data, aff)
    assert path.read_bytes() == first
    img = nib.load(path)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), data)
    assert img.get_data_dtype() == np.int16
    np.testing.assert_allclose(img.header.get_sform(), aff, atol=1e-6)
    np.testing.assert_allclose(img.affine, aff, atol=1e-6)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 0


def test_write_nifti_rejects_other_suffix(tmp_path):
    with pytest.raises(ValueError):
        write_nifti(tmp_path / "x.mgz", np.zeros((2, 2, 2), np.uint8), np.eye(4))
