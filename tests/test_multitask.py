"""Step 11's parts: the input channels, the multi-task network, delayed subjects."""

import numpy as np
import pytest
import SimpleITK as sitk

from ctbrainage.imaging import channels
from ctbrainage.imaging.channels import Contrast


def _phantom(offset_hu: float = 0.0):
    """A 40³ mm brain (1 mm voxels): grey-matter shell 36 HU around white matter 22 HU, with a
    CSF rim of 5 HU outside; ``offset_hu`` added everywhere (a scanner's calibration)."""
    grid = np.indices((40, 40, 40)) - 19.5
    radius = np.sqrt((grid**2).sum(0))
    brain = radius < 15
    hu = np.where(brain, np.where(radius < 10, 22.0, 36.0), 5.0) + offset_hu
    return hu.astype(np.float32), brain


def test_windows_map_their_limits_to_0_and_1_and_clip():
    hu = np.array([-20.0, 0.0, 40.0, 80.0, 200.0, 15.0, 23.5, 32.0, 40.0])
    np.testing.assert_allclose(channels.window(hu[:5], (0.0, 80.0)), [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(channels.window(hu[5:], (15.0, 32.0)), [0, 0.5, 1, 1])
    with pytest.raises(ValueError, match="low < high"):
        channels.window(hu, (32.0, 15.0))


def test_every_channel_on_a_phantom_with_known_hu():
    hu, brain = _phantom()
    grey = channels.grey_matter_hu(hu, brain, 1.0)
    assert grey == pytest.approx(36.0)  # the ribbon 1-4 mm inside the surface is grey matter
    made = channels.hu_channels(hu, brain, grey, Contrast(gm_scale_hu=10.0))
    white = (slice(18, 22),) * 3
    np.testing.assert_allclose(made["brain"][white], 22.0 / 80.0, rtol=1e-6)
    np.testing.assert_allclose(made["myelin"][white], (22.0 - 15.0) / 17.0, rtol=1e-6)
    np.testing.assert_allclose(made["gmref"][white], (22.0 - 36.0) / 10.0, rtol=1e-6)
    for image in made.values():
        assert not image[~brain].any()  # 0 outside the brain


def test_the_grey_matter_reference_cancels_a_constant_offset():
    (hu, brain), (shifted, _) = _phantom(), _phantom(offset_hu=3.0)
    contrast = Contrast()
    plain = channels.hu_channels(hu, brain, channels.grey_matter_hu(hu, brain, 1.0), contrast)
    site_b = channels.hu_channels(
        shifted, brain, channels.grey_matter_hu(shifted, brain, 1.0), contrast
    )
    np.testing.assert_allclose(site_b["gmref"], plain["gmref"], atol=1e-6)
    assert not np.allclose(site_b["myelin"], plain["myelin"])  # an absolute window moves


def test_slopes_are_the_channels_derivatives_where_they_do_not_clip():
    hu, brain = _phantom()
    contrast = Contrast()
    grey = channels.grey_matter_hu(hu, brain, 1.0)
    step = 0.01
    before = channels.hu_channels(hu, brain, grey, contrast)
    after = channels.hu_channels(hu + step, brain, grey, contrast)
    found = channels.slopes(hu, brain, (0.0, 40.0), contrast)
    for name in ("brain", "myelin", "gmref"):
        np.testing.assert_allclose((after[name] - before[name]) / step, found[name], atol=1e-3)
    assert found["myelin"][brain].min() == 0.0  # grey matter (36 HU) is above the window
    np.testing.assert_allclose(found["ptile"][brain], 1 / 40.0)


def test_scan_on_grid_samples_hu_and_keeps_the_skull_out_of_the_brain():
    hu, brain = _phantom()
    hu[~brain & (np.sqrt(((np.indices(hu.shape) - 19.5) ** 2).sum(0)) > 17)] = 1000.0  # skull
    native = sitk.GetImageFromArray(hu)
    mask = sitk.GetImageFromArray(brain.astype(np.uint8))
    grid = sitk.Image([10, 10, 10], sitk.sitkUInt8)
    grid.SetSpacing([4.0] * 3)
    grid.SetOrigin([1.5] * 3)
    sampled, grey = channels.scan_on_grid(native, grid, mask)
    assert grey == pytest.approx(36.0)
    assert sampled.max() <= 36.0 + 1e-3  # brain and CSF only: no bone bled in
    assert sampled[5, 5, 5] == pytest.approx(22.0, abs=0.5)


@pytest.mark.parametrize("bad", ["t1w", "brain+brain", "myelin+"])
def test_a_condition_names_known_channels_once(bad):
    with pytest.raises(ValueError, match="channels are ptile, brain, myelin, gmref"):
        channels.parse_condition(bad)
    assert channels.parse_condition("ptile+gmref") == ("ptile", "gmref")
