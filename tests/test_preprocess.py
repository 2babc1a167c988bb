"""Preprocessing stages, and their accuracy against the synthetic cohort's ground truth."""

import json

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from ctbrainage.imaging import ctio
from ctbrainage.imaging import preprocess as pp
from ctbrainage.synth.scoring import dice, orientation_spread_deg, true_axes_in_grid


@pytest.fixture(scope="module")
def processed(cohort_dir):
    """Six subjects across the age range, preprocessed as in the demo profile."""
    truth = pd.read_csv(cohort_dir / "truth.csv").sort_values("age_months")
    picks = truth.iloc[np.linspace(0, len(truth) - 1, 6).astype(int)]
    out = []
    for row in picks.itertuples():
        scan = ctio.read_ct(cohort_dir / "images" / f"{row.subject_id}.nii.gz")
        result = pp.preprocess_scan(scan.image, spacing_mm=3.0, size=64, ptile=(0.5, 99.5))
        record = json.loads((cohort_dir / "truth" / f"{row.subject_id}.json").read_text())
        out.append((row.subject_id, result, record))
    return out


def test_skull_strip_matches_the_true_brain(processed, cohort_dir):
    for sid, result, record in processed:
        truth = sitk.ReadImage(str(cohort_dir / "truth" / f"{sid}_brain.nii.gz"))
        ours = sitk.Resample(
            sitk.Cast(result.work_mask, sitk.sitkFloat32),
            truth,
            sitk.Transform(),
            sitk.sitkLinear,
            0.0,
        )
        score = dice(sitk.GetArrayViewFromImage(ours) >= 0.5, sitk.GetArrayViewFromImage(truth))
        assert score >= 0.95, (sid, record["age_months"], score)
        assert result.brain_volume_ml == pytest.approx(record["brain_volume_ml"], rel=0.12)


def test_every_subject_ends_in_the_same_orientation(processed):
    rotations = []
    for _, result, record in processed:
        assert np.linalg.det(result.orientation.axes) == pytest.approx(1.0)  # never a mirror
        rotations.append(true_axes_in_grid(result.affine, record))
    assert orientation_spread_deg(rotations).max() < 5.0


def test_model_input_contract(processed):
    for _, result, _ in processed:
        assert result.image.shape == result.brain.shape == (64, 64, 64)
        assert result.image.dtype == np.float32
        assert result.image.min() >= 0.0 and result.image.max() <= 1.0
        assert not result.image[result.brain == 0].any()
        # the brain is whole and centred: no brain voxel on the cube's faces
        faces = [
            result.brain[0],
            result.brain[-1],
            result.brain[:, 0],
            result.brain[:, -1],
            result.brain[:, :, 0],
            result.brain[:, :, -1],
        ]
        assert not any(face.any() for face in faces)
        centre = np.argwhere(result.brain).mean(axis=0)
        assert np.all(np.abs(centre - 31.5) < 3)
        # the array's axes are anatomical: right, anterior, superior
        assert np.allclose(np.linalg.norm(result.affine[:3, :3], axis=0), 3.0)


def test_ptile_normalise_maps_percentiles_to_unit_range():
    rng = np.random.default_rng(0)
    hu = rng.normal(30, 5, (20, 20, 20)).astype(np.float32)
    brain = np.zeros(hu.shape, np.uint8)
    brain[5:15, 5:15, 5:15] = 1
    out, lo, hi = pp.ptile_normalise(hu, brain, 1.0, 99.0)
    inside = hu[brain > 0]
    assert (lo, hi) == pytest.approx(tuple(np.percentile(np.round(inside, 1), [1, 99])))
    assert (lo, hi) == pytest.approx(tuple(np.percentile(inside, [1, 99])), abs=0.05)
    assert np.mean(out[brain > 0] == 0) == pytest.approx(0.01, abs=0.005)
    assert np.mean(out[brain > 0] == 1) == pytest.approx(0.01, abs=0.005)
    assert not out[brain == 0].any()
    with pytest.raises(pp.PreprocessError, match="flat"):
        pp.ptile_normalise(np.full(hu.shape, 20.0), brain, 1, 99)


def test_a_block_of_soft_tissue_without_skull_is_no_head():
    cube = np.full((110, 110, 110), -1000.0, np.float32)
    cube[25:85, 25:85, 25:85] = 35 + 5 * np.random.default_rng(1).standard_normal((60,) * 3)
    cube[25:85, 25:85, 20:23] = 900.0  # a bone plate under it is not a skull
    with pytest.raises(pp.PreprocessError, match="no head"):
        pp.skull_strip(sitk.GetImageFromArray(cube))


def test_output_grid_is_centred_on_the_brain():
    orientation = pp.Orientation(centre=np.array([10.0, -5.0, 20.0]), axes=np.eye(3))
    grid = pp.output_grid(orientation, spacing_mm=2.0, size=32)
    assert grid.GetSize() == (32, 32, 32) and grid.GetSpacing() == (2.0, 2.0, 2.0)
    middle = grid.TransformContinuousIndexToPhysicalPoint([15.5, 15.5, 15.5])
    assert middle == pytest.approx((10.0, -5.0, 20.0))


def test_native_labels_map_into_the_preprocessed_grid(processed, cohort_dir, tmp_path):
    """The saved grid is the native → preprocessed transform: the true lobes, made in native
    space, land inside the preprocessed brain mask."""
    for sid, result, _ in processed[:3]:
        ctio.write_nifti(tmp_path / f"{sid}.nii.gz", result.image, result.affine)
        reference = sitk.ReadImage(str(tmp_path / f"{sid}.nii.gz"))
        lobes = sitk.ReadImage(str(cohort_dir / "truth" / f"{sid}_lobes.nii.gz"))
        mapped = pp.map_to_grid(lobes, reference)
        assert mapped.shape == result.brain.shape
        assert set(np.unique(mapped)) == {0, 1, 2, 3, 4}
        inside = (result.brain[mapped > 0] > 0).mean()
        shifted = np.roll(mapped, 3, axis=1)  # 9 mm off along the anterior axis
        assert inside > 0.94 and (result.brain[shifted > 0] > 0).mean() < inside - 0.03


def test_fill_holes_and_the_cropped_masked_morphology_equal_scipys():
    """Skull stripping's faster forms give SciPy's masks: ``fill_holes`` (SimpleITK) on blobs
    with holes, open cavities and objects touching the border; a dilation restricted to the
    region it is cut back to; and ``_bounding_box`` with a margin (ops on the box, then placed
    back)."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    for _ in range(5):
        noise = ndimage.gaussian_filter(rng.normal(size=(40, 44, 36)), 2.0)
        mask = noise > 0.02
        assert mask[0].any() or mask[-1].any()  # objects touch the border
        assert np.array_equal(pp.fill_holes(mask), ndimage.binary_fill_holes(mask))
        far = ~ndimage.binary_dilation(mask, pp._ball(2.5))  # "farther than 2.5 voxels"
        assert np.array_equal(far, ndimage.distance_transform_edt(~mask) > 2.5)
        region = noise > -0.05
        core = ndimage.binary_erosion(region, pp._ball(3))
        assert core.any()
        expected = ndimage.binary_dilation(core, pp._ball(3)) & region
        assert np.array_equal(
            ndimage.binary_dilation(core, pp._ball(3), mask=region) & region, expected
        )
        blob = np.zeros((40, 44, 36), bool)
        blob[8:30, 5:20, 12:33] = mask[8:30, 5:20, 12:33]
        box = pp._bounding_box(blob, margin=2)
        assert [(s.start, s.stop) for s in box] == [(6, 32), (3, 22), (10, 35)]
        opened = np.zeros_like(blob)
        opened[box] = ndimage.binary_opening(blob[box], pp._ball(1))
        assert np.array_equal(opened, ndimage.binary_opening(blob, pp._ball(1)))


def _phantom_head(wm_hu: float, grey_hu: float, gap: bool, seed: int = 0):
    """A 1 mm spherical head: scalp, skull, 4 mm of CSF, 3 mm of cortex around white matter;
    with ``gap`` a 6 mm channel of white matter runs through the cortex to the CSF (a cortex
    that does not enclose it, so hole filling cannot bring it back). Returns the image, the
    white matter and the CSF."""
    shape = (120, 120, 120)
    r = np.sqrt(((np.indices(shape) - 59.5) ** 2).sum(axis=0))
    hu = np.full(shape, -1000.0, np.float32)
    hu[r < 56] = 40.0  # scalp
    hu[r < 52] = 900.0  # skull
    hu[r < 47] = 5.0  # CSF
    hu[r < 43] = grey_hu
    wm = r < 40
    if gap:
        i, j = np.indices(shape[:2])
        channel = ((i - 59.5) ** 2 + (j - 59.5) ** 2 < 9)[:, :, None] & (np.arange(120) > 59)
        wm |= channel & (r < 43)
    hu[wm] = wm_hu
    hu += 2.0 * np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return sitk.GetImageFromArray(hu), wm, (r >= 43) & (r < 47)


def test_the_skull_strip_keeps_unmyelinated_white_matter_without_hole_filling():
    """16 HU white matter (a young infant's) below the cortex-CSF level, open to the CSF through
    a gap in the cortex: it stays brain (the earlier threshold dropped all of it)."""
    image, wm, csf = _phantom_head(wm_hu=16.0, grey_hu=31.0, gap=True)
    brain = sitk.GetArrayFromImage(pp.skull_strip(image)) > 0
    assert brain[wm].mean() > 0.97
    assert brain[csf].mean() < 0.05


def test_the_skull_strip_stops_at_the_cortex_of_an_adult_like_head():
    image, wm, csf = _phantom_head(wm_hu=27.0, grey_hu=38.0, gap=False)
    brain = sitk.GetArrayFromImage(pp.skull_strip(image)) > 0
    r = np.sqrt(((np.indices(brain.shape) - 59.5) ** 2).sum(axis=0))
    assert brain[wm].mean() > 0.99 and brain[csf].mean() < 0.05
    assert dice(brain, r < 43) > 0.97


def test_the_output_grid_barely_moves_when_a_few_mask_voxels_do():
    """The orientation is a smooth function of the mask: a random draw of points, or an argmax
    over candidate angles, turned the grid by 0.3-1° when 4 voxels of the mask changed."""
    from scipy import ndimage

    k, j, i = np.indices((100, 130, 110)) - np.array([50, 65, 55])[:, None, None, None]
    mask = (k / 40.0) ** 2 + (j / 55.0) ** 2 + (i / 45.0) ** 2 < 1  # a brain-like ellipsoid
    mask |= (k + 30) ** 2 + (j + 35) ** 2 + i**2 < 15**2  # and a cerebellum
    changed = mask.copy()
    rim = np.argwhere(mask & ~ndimage.binary_erosion(mask))
    changed[tuple(rim[:: len(rim) // 6][:6].T)] = False
    first, second = (pp.orient(sitk.GetImageFromArray(m.astype(np.uint8))) for m in (mask, changed))
    cosine = (np.trace(first.axes.T @ second.axes) - 1) / 2
    assert np.degrees(np.arccos(np.clip(cosine, -1, 1))) < 0.05
