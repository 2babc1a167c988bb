"""Geometry and physics of one head, without writing files."""

import numpy as np
import pytest
from scipy import ndimage

from ctbrainage.synth.head import (
    ACQUISITIONS,
    SITES,
    SubjectSpec,
    _acquisition_grid,
    _noise_gain,
    _sample_body,
    _sample_pose,
    _scanner,
    cached_template,
    simulate_head,
)
from ctbrainage.synth.schedule import MaturationSchedule


@pytest.mark.parametrize("age", [0.5, 47.5])
def test_full_res_grid_is_the_papers_protocol(age):
    """512 x 512, 0.35-0.5 mm pixels, 0.625 mm slices, and the whole head inside the FOV."""
    tpl = cached_template(1.5)  # the geometry does not depend on the template's resolution
    spec = SubjectSpec("s", age, "M", "A", seed=1)
    rng = np.random.default_rng(0)
    body, pose = _sample_body(spec, tpl, rng), _sample_pose(rng)
    affine, to_template, shape = _acquisition_grid(tpl, body, pose, ACQUISITIONS["full-res"], spec)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    assert shape[:2] == (512, 512)
    assert 0.35 <= spacing[0] == spacing[1] <= 0.5
    assert spacing[2] == 0.625
    assert 180 <= shape[2] <= 360  # paper: 200-300 slices
    # every corner of the head's bounding box maps inside the acquisition grid
    head_idx = np.argwhere(tpl.dist <= 10.0)
    for corner in (head_idx.min(axis=0), head_idx.max(axis=0)):
        out = np.linalg.solve(to_template, np.r_[corner, 1.0])[:3]
        assert np.all(out >= 0) and np.all(out < shape)


def test_noise_level_and_correlation_follow_the_site():
    rng = np.random.default_rng(0)
    flat = np.full((128, 128, 40), 30.0, np.float32)
    spacing = np.array([0.45, 0.45, 0.625])
    a = _scanner(flat.copy(), spacing, SITES["A"], rng).astype(float)
    b = _scanner(flat.copy(), spacing, SITES["B"], rng).astype(float)
    assert a.std() == pytest.approx(10.0, rel=0.05)  # reference: 8-15 HU at thin slices
    assert b.std() == pytest.approx(13.0, rel=0.05)
    assert b.mean() - a.mean() == pytest.approx(SITES["B"].offset_hu, abs=0.2)
    lag1 = np.corrcoef(a[1:].ravel(), a[:-1].ravel())[0, 1]
    assert lag1 > 0.3  # kernel-correlated, not white
    assert _noise_gain([0.0001, 0.0001, 0.0001]) == pytest.approx(1.0)


def test_gantry_tilt_changes_the_grid_not_the_anatomy():
    schedule = MaturationSchedule()
    flat = simulate_head(SubjectSpec("s", 20.0, "F", "A", seed=5), schedule)
    tilted = simulate_head(SubjectSpec("s", 20.0, "F", "A", seed=5, gantry_tilt_deg=15.0), schedule)
    voxel = [abs(np.linalg.det(h.affine[:3, :3])) for h in (flat, tilted)]
    volumes = [h.brain.sum() * v for h, v in zip((flat, tilted), voxel, strict=True)]
    assert volumes[1] == pytest.approx(volumes[0], rel=0.03)
    assert not np.allclose(flat.affine, tilted.affine)
    for head in (flat, tilted):  # the whole brain is inside the scanned slab
        assert head.brain[:, :, [0, -1]].sum() == 0


def test_quick_grid_is_coarse_and_holds_the_whole_brain():
    """The tiny profile's preset: 128 x 128, 1.425-2.025 mm pixels, 4 mm slices; the brain it
    samples has the planted volume (partial volume at 4 mm slices aside)."""
    spec = SubjectSpec("s", 20.0, "F", "B", seed=4)
    head = simulate_head(spec, MaturationSchedule.parse("physiological"), "quick")
    spacing = np.linalg.norm(head.affine[:3, :3], axis=0)
    assert head.hu.shape[:2] == (128, 128) and 20 <= head.hu.shape[2] <= 60
    assert 1.425 <= spacing[0] == spacing[1] <= 2.025 and spacing[2] == 4.0
    brain_ml = head.brain.sum() * np.prod(spacing) / 1000
    assert brain_ml == pytest.approx(head.truth["brain_volume_planted_ml"], rel=0.05)


def test_a_delayed_child_is_its_on_time_twin_at_the_earlier_age_where_the_delay_applies():
    """With one age cue (``lobar``), a global delay of d months gives exactly the image of the
    same child (same seed) at age − d; a frontal delay gives that image in the frontal white
    matter and the on-time image away from it."""
    schedule, age, delay = MaturationSchedule(), 30.0, 10.0

    def head(months, **delayed):
        spec = SubjectSpec("s", months, "F", "A", seed=3, **delayed)
        return simulate_head(spec, schedule, mode="quick", cues="lobar")

    on_time, earlier = head(age), head(age - delay)
    global_delay = head(age, delay_months=delay)
    np.testing.assert_array_equal(global_delay.hu, earlier.hu)
    assert not np.array_equal(on_time.hu, earlier.hu)
    assert global_delay.truth["biological_age_months"] == pytest.approx(
        on_time.truth["biological_age_months"] - delay
    )
    frontal = head(age, delay_months=delay, delay_lobe="frontal")
    other = (frontal.lobes > 1) | (frontal.wm_core > 1)  # LOBES: 1 = frontal
    core = (frontal.wm_core == 1) & ~ndimage.binary_dilation(other, iterations=4)
    np.testing.assert_array_equal(frontal.hu[core], earlier.hu[core])
    far = ~ndimage.binary_dilation(frontal.lobes == 1, iterations=4)
    np.testing.assert_array_equal(frontal.hu[far], on_time.hu[far])
    assert frontal.truth["lobe_maturation_months"]["frontal"] == pytest.approx(
        on_time.truth["lobe_maturation_months"]["frontal"] - delay
    )
    with pytest.raises(ValueError, match="s: unknown delay_lobe 'cortex'"):
        head(age, delay_months=delay, delay_lobe="cortex")
