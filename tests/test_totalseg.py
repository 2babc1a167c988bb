"""TotalSegmentator adapter: label mapping, native → preprocessed grid, error translation.

TotalSegmentator itself is replaced by fakes here; tests/totalseg_real checks the real package."""

import importlib.util
import urllib.error

import nibabel as nib
import numpy as np
import pytest
import requests
from scipy.spatial.transform import Rotation

from ctbrainage.core.labels import LOBE_IDS
from ctbrainage.imaging import preprocess as pp
from ctbrainage.imaging.ctio import ras_to_sitk, write_nifti
from ctbrainage.lobes import totalseg as ts
from ctbrainage.synth.dicom import write_ct_dicom_series

# ---- label mapping ------------------------------------------------------------------------------


def test_every_totalseg_lobe_maps_to_its_lobe():
    assert ts.TOTALSEG_LOBES == {
        12: LOBE_IDS["frontal"],
        13: LOBE_IDS["parietal"],
        14: LOBE_IDS["occipital"],
        15: LOBE_IDS["temporal"],
    }
    ids = np.arange(0, 40).reshape(2, 4, 5)
    lobes = ts.lobes_from_multilabel(ids)
    assert lobes.dtype == np.uint8 and lobes.shape == ids.shape
    for ts_id, lobe in zip(ids.ravel(), lobes.ravel(), strict=True):
        assert lobe == ts.TOTALSEG_LOBES.get(int(ts_id), 0)
    assert set(np.unique(lobes)) == {0, 1, 2, 3, 4}  # no +10 right-hemisphere labels


# ---- a small synthetic CT and a fake TotalSegmentator -------------------------------------------
CENTRE_RAS = np.array([5.0, -3.0, 40.0])


def native_affine() -> np.ndarray:
    """1 x 1 x 2.5 mm voxels, axes rotated 10° about x (oblique but orthogonal), centred."""
    shape = np.array([56, 56, 24])
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("x", 10, degrees=True).as_matrix() @ np.diag([1, 1, 2.5])
    affine[:3, 3] = CENTRE_RAS - affine[:3, :3] @ ((shape - 1) / 2)
    return affine


def structures_at(ras: np.ndarray) -> np.ndarray:
    """brain_structures ids at RAS points (N, 3), relative to the head centre: frontal in front,
    parietal/occipital behind (above/below), temporal right, cerebellum (no lobe) left."""
    x, y, z = (ras - CENTRE_RAS).T
    ids = np.zeros(len(ras), np.uint8)
    ids[y > 6] = 12
    ids[(y < -6) & (z > 0)] = 13
    ids[(y < -6) & (z <= 0)] = 14
    ids[(np.abs(y) <= 6) & (x > 6)] = 15
    ids[(np.abs(y) <= 6) & (x < -6)] = 5
    ids[np.linalg.norm(ras - CENTRE_RAS, axis=1) > 22] = 0
    return ids


def voxel_ras(shape, affine) -> np.ndarray:
    idx = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1).reshape(-1, 3)
    return idx @ affine[:3, :3].T + affine[:3, 3]


@pytest.fixture
def ct_nifti(tmp_path):
    """HU volume: air, a 40 HU head, a bone shell."""
    affine = native_affine()
    r = np.linalg.norm(voxel_ras((56, 56, 24), affine) - CENTRE_RAS, axis=1).reshape(56, 56, 24)
    hu = np.where(r < 24, 40, -1000).astype(np.int16)
    hu[(r >= 24) & (r < 27)] = 1200
    path = tmp_path / "ct.nii.gz"
    write_nifti(path, hu, affine)
    return path, hu, affine


class FakeAPI:
    """Stands in for ``totalsegmentator.python_api.totalsegmentator``: labels by position."""

    def __init__(self):
        self.calls = []

    def __call__(self, input, output, **kwargs):
        self.calls.append({"input": input, "output": output, **kwargs})
        img = nib.load(input)
        ids = structures_at(voxel_ras(img.shape, img.affine)).reshape(img.shape)
        nib.save(nib.Nifti1Image(ids, img.affine), output)
        return nib.load(output)


@pytest.fixture
def fake(monkeypatch):
    api = FakeAPI()
    monkeypatch.setattr(ts, "_api", lambda: api)
    return api


def reference_grid():
    """Preprocessed grid: 24³ × 1.5 mm (crops the 44 mm head), rotated 20° about z."""
    lps_centre = CENTRE_RAS * [-1, -1, 1] + [2.0, -1.0, 1.5]
    axes = Rotation.from_euler("z", 20, degrees=True).as_matrix() @ np.diag([-1.0, -1.0, 1.0])
    return pp.output_grid(pp.Orientation(centre=lps_centre, axes=axes), 1.5, 24)


# ---- native → preprocessed grid -----------------------------------------------------------------


def test_lobes_land_on_the_rotated_cropped_grid(fake, ct_nifti, tmp_path):
    path, _, affine = ct_nifti
    reference = reference_grid()
    lobes = ts.totalseg_lobes_in_grid(path, reference, "", tmp_path / "work")

    call = fake.calls[0]
    assert call["input"] == path and call["task"] == "brain_structures"
    assert call["ml"] is True and call["quiet"] is True
    assert call["license_number"] is None and call["device"] == "cpu"
    assert lobes.dtype == np.uint8 and lobes.shape == (24, 24, 24)

    # the same as mapping the native lobe labels ourselves
    native_ids = structures_at(voxel_ras((56, 56, 24), affine)).reshape(56, 56, 24)
    native = ras_to_sitk(ts.lobes_from_multilabel(native_ids), affine)
    np.testing.assert_array_equal(lobes, pp.map_to_grid(native, reference, labels=True))

    # and physically right: each grid voxel holds the lobe at its own position (away from edges)
    ras = voxel_ras((24, 24, 24), pp.grid_affine(reference))
    expected = ts.lobes_from_multilabel(structures_at(ras))
    d = ras - CENTRE_RAS
    planes = np.abs(np.stack([d[:, 0] - 6, d[:, 0] + 6, d[:, 1] - 6, d[:, 1] + 6, d[:, 2]]))
    away = (planes.min(axis=0) > 1.5) & (np.abs(np.linalg.norm(d, axis=1) - 22) > 1.5)
    np.testing.assert_array_equal(lobes.ravel()[away], expected[away])
    for lobe in (1, 2, 3, 4):
        assert (lobes.ravel()[away] == lobe).sum() > 50
    assert not (lobes == 5).any()  # cerebellum is no lobe


def test_dicom_folder_is_converted_to_nifti_first(fake, ct_nifti, tmp_path):
    path, hu, affine = ct_nifti
    folder = tmp_path / "dicom"
    write_ct_dicom_series(
        folder, hu, affine, age_months=12, sex="F", patient_name="Synthetic^Test",
        patient_id="t1", study_date="20200101", uid_seed="totalseg-test",
    )  # fmt: skip
    reference = reference_grid()
    work = tmp_path / "work"
    from_dicom = ts.totalseg_lobes_in_grid(folder, reference, "ABC", work)
    given = fake.calls[0]["input"]
    assert given.name.endswith(".nii.gz") and not given.exists()  # temporary, removed
    assert fake.calls[0]["license_number"] == "ABC"
    assert sorted(p.name for p in work.iterdir()) == ["brain_structures.nii.gz"]
    from_nifti = ts.totalseg_lobes_in_grid(path, reference, "ABC", tmp_path / "work2")
    np.testing.assert_array_equal(from_dicom, from_nifti)


# ---- error translation --------------------------------------------------------------------------
def failing(*, printed: str = "", error: BaseException):
    def api(**kwargs):
        print(printed)
        raise error

    return api


LICENCE_MISSING = """In contrast to the other tasks this task is not openly available.
It requires a license. For non-commercial usage a free license can be acquired here:
https://backend.totalsegmentator.com/license-academic/"""
OFFLINE = (
    "HTTPSConnectionPool(host='backend.totalsegmentator.com', port=443): Max retries exceeded "
    "(Caused by NameResolutionError: Failed to resolve 'backend.totalsegmentator.com')"
)


def unavailable(monkeypatch, tmp_path, api) -> str:
    monkeypatch.setattr(ts, "_api", lambda: api)
    with pytest.raises(ts.TotalSegmentatorUnavailable) as info:
        ts.run_brain_structures(tmp_path / "ct.nii.gz", tmp_path / "out")
    return str(info.value)


@pytest.mark.parametrize(
    "api",
    [
        failing(printed=LICENCE_MISSING, error=SystemExit(1)),  # what 2.18 does
        failing(error=SystemExit("ERROR: A license number has not been set so far.")),
        failing(printed="ERROR: Invalid license number. Please check", error=SystemExit(1)),
    ],
)
def test_missing_or_invalid_licence(monkeypatch, tmp_path, api):
    message = unavailable(monkeypatch, tmp_path, api)
    assert "licence" in message and "TOTALSEG_LICENSE" in message
    assert "lobes.totalseg_license" in message and "academic" in message
    assert "license" in message.lower()  # the original reason is kept


def test_what_it_prints_still_reaches_stdout(monkeypatch, tmp_path, capsys):
    unavailable(monkeypatch, tmp_path, failing(printed=LICENCE_MISSING, error=SystemExit(1)))
    assert capsys.readouterr().out.strip() == LICENCE_MISSING


def test_licence_not_validated_offline(monkeypatch, tmp_path):
    printed = f"An Exception occurred: {OFFLINE}\nERROR: Invalid license number. Please check"
    message = unavailable(monkeypatch, tmp_path, failing(printed=printed, error=SystemExit(1)))
    assert "validate the licence" in message and "internet" in message


@pytest.mark.parametrize(
    "error",
    [
        requests.exceptions.ConnectionError(OFFLINE),
        requests.exceptions.ConnectionError(),
        urllib.error.URLError("[Errno -3] Temporary failure in name resolution"),
        OSError("download of the weights failed"),
    ],
)
def test_weights_not_downloadable(monkeypatch, tmp_path, error):
    api = failing(printed="Downloading model for Task 409 ...", error=error)
    message = unavailable(monkeypatch, tmp_path, api)
    assert "weights" in message and "internet" in message
    assert "~/.totalsegmentator" in message and "TOTALSEG_HOME_DIR" in message


def test_not_installed(monkeypatch, tmp_path):
    def missing():
        raise ModuleNotFoundError("No module named 'totalsegmentator'")

    monkeypatch.setattr(ts, "_api", missing)
    with pytest.raises(ts.TotalSegmentatorUnavailable, match="not installed") as info:
        ts.run_brain_structures(tmp_path / "ct.nii.gz", tmp_path / "out")
    assert ".[totalseg]" in str(info.value)


@pytest.mark.skipif(
    importlib.util.find_spec("totalsegmentator") is not None, reason="TotalSegmentator installed"
)
def test_not_installed_for_real(tmp_path):
    with pytest.raises(ts.TotalSegmentatorUnavailable, match=r"not installed.*\.\[totalseg\]"):
        ts.run_brain_structures(tmp_path / "ct.nii.gz", tmp_path / "out")


@pytest.mark.parametrize(
    "error", [RuntimeError("CUDA out of memory"), FileNotFoundError("no such file: ct.nii.gz")]
)
def test_other_failures_keep_the_original_message(monkeypatch, tmp_path, error):
    message = unavailable(monkeypatch, tmp_path, failing(error=error))
    assert message.startswith("TotalSegmentator failed") and str(error) in message
    assert "weights" not in message


def test_no_output_written(monkeypatch, tmp_path):
    message = unavailable(monkeypatch, tmp_path, lambda **kwargs: None)
    assert "wrote no" in message


# ---- licence precedence -------------------------------------------------------------------------
def test_licence_profile_value_wins_over_environment(monkeypatch):
    monkeypatch.delenv("TOTALSEG_LICENSE", raising=False)
    assert ts.licence() == "" and ts.licence(" P ") == "P"
    monkeypatch.setenv("TOTALSEG_LICENSE", " E ")
    assert ts.licence() == "E"
    assert ts.licence("P") == "P"
