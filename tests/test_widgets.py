"""Slice/lobe and perturbation viewers: pure rendering, and widgets driven headless."""

from __future__ import annotations

import dataclasses
import io
import re
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from ctbrainage import widgets
from ctbrainage.lobes import LOBE_IDS, LOBES
from ctbrainage.perturb import fill_baseline, perturb_cohort
from ctbrainage.plots.common import LOBE_COLOURS, canonical_slices

SHAPE = (20, 24, 28)


def phantom():
    """A [20, 24, 28] volume in [0, 1] varying along every axis, and four box-shaped lobes."""
    i, j, k = np.indices(SHAPE)
    volume = ((i + 2 * j + 3 * k) / (19 + 46 + 81)).astype(np.float32)
    labels = np.zeros(SHAPE, np.uint8)
    labels[2:10, 2:12, 4:24] = 1
    labels[10:18, 2:12, 4:24] = 2
    labels[2:10, 12:22, 4:24] = 3
    labels[10:18, 12:22, 4:24] = 4
    return volume, labels


def is_grey(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])


def png_shape(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.height, image.width


# ---- pure functions ---------------------------------------------------------------------------
def test_planes_follow_canonical_slices():
    volume, _ = phantom()
    image = nib.Nifti1Image(volume, np.diag([1.0, 2.0, 3.0, 1.0]))
    centre = (5, 7, 9)
    for (expected, aspect), axis in zip(canonical_slices(image, centre), widgets.AXES, strict=True):
        index = centre[widgets._AXIS_DIM[axis]]
        # canonical_slices is drawn with origin="lower"; plane() is already top row first
        np.testing.assert_array_equal(widgets.plane(volume, axis, index), np.flipud(expected))
        assert widgets.pixel_aspect((1.0, 2.0, 3.0), axis) == pytest.approx(aspect)
    axial = widgets.plane(volume, "axial", 0)
    assert axial[0, 0] > axial[-1, 0]  # anterior (high j) at the top


def test_render_slice_colours_only_chosen_lobes():
    volume, labels = phantom()
    rgb = widgets.render_slice(volume, labels, "axial", 14, lobes_on=["frontal", 4], opacity=0.5)
    lab = widgets.plane(labels, "axial", 14)
    grey = widgets.window_grey(widgets.plane(volume, "axial", 14), (0, 1))
    for k in (1, 4):
        colour = 255 * np.asarray(to_rgb(LOBE_COLOURS[LOBES[k]]))
        expected = np.round(0.5 * grey[lab == k, None] + 0.5 * colour)
        np.testing.assert_array_equal(rgb[lab == k], expected)
    for k in (0, 2, 3):
        np.testing.assert_array_equal(rgb[lab == k], np.repeat(grey[lab == k, None], 3, 1))
    right = widgets.render_slice(volume, np.where(labels > 0, labels + 10, 0), "axial", 14)
    assert not is_grey(right[lab > 0]).any()  # right-hemisphere labels count as their lobe


def test_render_errors_name_the_problem():
    volume, labels = phantom()
    with pytest.raises(ValueError, match="unknown lobe 'insula'"):
        widgets.render_slice(volume, labels, "axial", 3, lobes_on=["insula"])
    with pytest.raises(ValueError, match="unknown axis 'oblique'"):
        widgets.render_slice(volume, labels, "oblique", 3)
    with pytest.raises(IndexError, match="axial slice 28 outside 0..27"):
        widgets.render_slice(volume, labels, "axial", 28)
    with pytest.raises(ValueError, match="do not match the volume"):
        widgets.SliceViewer(volume, labels[:-1])


def test_png_keeps_pixels_and_aspect():
    rgb = np.random.default_rng(0).integers(0, 256, (10, 20, 3), dtype=np.uint8)
    data = widgets.to_png(rgb, aspect=2.0, size=200)
    assert png_shape(data) == (200, 200)
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(decoded[::20, ::10], rgb)


# ---- SliceViewer ------------------------------------------------------------------------------
@pytest.fixture
def viewer():
    volume, labels = phantom()
    return widgets.SliceViewer(volume, labels, spacing=(1.0, 1.0, 2.0), window=(0.0, 1.0))


def test_axis_sets_slider_range_and_image_shape(viewer):
    assert viewer.axis.value == "axial" and viewer.slice.max == 27 and viewer.slice.value == 14
    assert viewer.rgb.shape == (24, 20, 3)
    assert "axial slice 14 of 27" in viewer.caption.value
    viewer.axis.value = "sagittal"
    assert (viewer.slice.max, viewer.slice.value) == (19, 10)
    assert viewer.rgb.shape == (28, 24, 3)
    height, width = png_shape(viewer.image.value)
    assert height / width == pytest.approx(28 * 2 / 24, rel=0.02)  # 2 mm slices: taller pixels
    assert "sagittal slice 10 of 19" in viewer.caption.value
    viewer.axis.value = "coronal"
    assert (viewer.slice.max, viewer.slice.value, viewer.rgb.shape) == (23, 12, (28, 20, 3))


def test_moving_the_slice_changes_image_and_caption(viewer):
    before, png = viewer.rgb.copy(), viewer.image.value
    viewer.slice.value = 3
    assert not np.array_equal(before, viewer.rgb) and viewer.image.value != png
    expected = widgets.render_slice(
        viewer.volume, viewer.labels, "axial", 3, (0.0, 1.0), opacity=0.4
    )
    np.testing.assert_array_equal(viewer.rgb, expected)
    assert "axial slice 3 of 27" in viewer.caption.value


def test_lobe_toggle_removes_its_colour(viewer):
    lab = widgets.plane(viewer.labels, "axial", 14)
    frontal = lab == LOBE_IDS["frontal"]
    assert not is_grey(viewer.rgb[frontal]).any()
    viewer.lobes["frontal"].value = False
    assert is_grey(viewer.rgb[frontal]).all()
    assert not is_grey(viewer.rgb[lab > 1]).any()  # the other lobes keep theirs
    assert "lobes: parietal, temporal, occipital" in viewer.caption.value
    for box in viewer.lobes.values():
        box.value = False
    assert is_grey(viewer.rgb).all() and "lobes: none" in viewer.caption.value


def test_opacity_zero_is_the_grey_image(viewer):
    viewer.opacity.value = 0.0
    grey = widgets.window_grey(widgets.plane(viewer.volume, "axial", 14), (0.0, 1.0))
    np.testing.assert_array_equal(viewer.rgb, np.repeat(grey[..., None], 3, -1))
    assert "opacity 0.00" in viewer.caption.value
    viewer.opacity.value = 1.0
    lab = widgets.plane(viewer.labels, "axial", 14)
    colour = np.round(255 * np.asarray(to_rgb(LOBE_COLOURS["temporal"])))
    assert (viewer.rgb[lab == LOBE_IDS["temporal"]] == colour).all()


def test_window_changes_pixel_values(viewer):
    viewer.opacity.value = 0.0
    before = viewer.rgb.copy()
    viewer.window.value = (0.2, 0.5)
    values = widgets.plane(viewer.volume, "axial", 14)
    assert not np.array_equal(before, viewer.rgb)
    assert (viewer.rgb[values <= 0.2] == 0).all() and (viewer.rgb[values >= 0.5] == 255).all()
    inside = (values > 0.21) & (values < 0.49)
    assert inside.any() and (viewer.rgb[inside, 0] > before[inside, 0]).all()  # more contrast
    assert "width 0.30, level 0.35" in viewer.caption.value


def test_viewer_without_labels_and_display(viewer):
    plain = widgets.SliceViewer(phantom()[0])
    assert is_grey(plain.rgb).all() and "lobes" not in plain.caption.value
    bundle = viewer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle


# ---- run-based viewers ------------------------------------------------------------------------
def copy_run(profile, dest, **perturb):
    """Step 05's inputs of ``profile``'s run copied to ``dest`` (the fixture stays intact)."""
    for name in ("preprocessed", "lobes", "models"):
        shutil.copytree(profile.run_path / name, dest / name)
    for name in ("predictions.csv", "folds.csv", "exclusions.csv"):
        if (profile.run_path / name).exists():
            shutil.copy2(profile.run_path / name, dest / name)
    settings = dataclasses.replace(profile.perturb, **perturb)
    return dataclasses.replace(profile, run_dir=str(dest), perturb=settings)


@pytest.fixture(scope="module")
def perturbed_run(tiny_run, tmp_path_factory):
    profile = copy_run(tiny_run, tmp_path_factory.mktemp("widgets"), repeats=2)
    table, failures = perturb_cohort(profile, progress=False)
    assert failures.empty
    return profile, table


def expected_plane(profile, subject_id, lobe, repeat, axis, index):
    """The perturbed slice computed independently: all lobes filled, then one lobe kept, then
    sliced like canonical_slices (origin lower → flipped)."""
    run = profile.run_path
    image = nib.load(run / "preprocessed" / f"{subject_id}.nii.gz")
    volume = np.asarray(image.dataobj, np.float32)
    labels = np.asarray(nib.load(run / "lobes" / f"{subject_id}.nii.gz").dataobj)
    filled = fill_baseline(volume, labels, repeat, subject_id=subject_id, seed=profile.seed)
    changed = np.where(labels == LOBE_IDS[lobe], filled[0].numpy(), volume)
    canon = nib.as_closest_canonical(nib.Nifti1Image(changed, image.affine))
    centre = np.array(canon.shape) // 2
    centre[widgets._AXIS_DIM[axis]] = index
    slices = canonical_slices(nib.Nifti1Image(np.asarray(canon.dataobj), canon.affine), centre)
    return np.flipud(slices[widgets.AXES.index(axis)][0])


def check_view(viewer, profile, table):
    """Panels differ only inside the chosen lobe, match the model's input, and the caption
    quotes the table."""
    sid, lobe, repeat = viewer.subject.value, viewer.lobe.value, viewer.repeat.value
    _, labels, affine, _ = widgets.load_subject(profile.run_path, sid)
    canon = widgets._canonical(labels, affine)
    lab = widgets.plane(canon, viewer.axis.value, viewer.slice.value)
    changed = (viewer.original_rgb != viewer.perturbed_rgb).any(-1)
    inside = lab == LOBE_IDS[lobe]
    assert inside.any() and changed.any()
    assert not changed[~inside].any()
    assert changed[inside].mean() > 0.9  # noise changes nearly every voxel of the lobe
    expected = expected_plane(profile, sid, lobe, repeat, viewer.axis.value, viewer.slice.value)
    np.testing.assert_array_equal(
        viewer.perturbed_rgb[..., 0], widgets.window_grey(expected, (0, 1))
    )
    rows = table[(table["subject_id"] == sid) & (table["lobe"] == lobe)]
    row = rows[rows["repeat"] == repeat].iloc[0]
    text = viewer.text
    assert text.startswith(f"{sid} · age {row['age_months']:.2f} months · {lobe} lobe")
    assert f"repeat {repeat} of 2" in text
    assert f"whole prediction {row['pred_whole']:.2f} months" in text
    assert f"masked {row['pred_masked']:.2f} months, ΔAE {row['delta_ae']:+.2f}" in text
    assert f"ΔAE {rows['delta_ae'].mean():+.2f} months" in text.splitlines()[-1]
    assert "mean over 2 repeats" in viewer.caption.value


def test_perturbation_viewer_follows_its_controls(perturbed_run):
    profile, table = perturbed_run
    viewer = widgets.PerturbationViewer(profile)
    assert (viewer.fill, viewer.seed) == ("noise", profile.seed)
    ids = list(
        pd.read_csv(profile.run_path / "predictions.csv", dtype={"subject_id": str})["subject_id"]
    )
    assert [value for _, value in viewer.subject.options] == ids
    assert re.fullmatch(r".+ \(\d+\.\d months\)", viewer.subject.options[0][0])
    check_view(viewer, profile, table)
    first = viewer.text

    viewer.lobe.value = "occipital"
    _, labels, affine, _ = widgets.load_subject(profile.run_path, ids[0])
    canon = widgets._canonical(labels, affine)
    assert viewer.slice.value == widgets.lobe_centre(canon, "occipital", "axial")
    check_view(viewer, profile, table)
    assert viewer.text != first

    before = viewer.perturbed_rgb.copy()
    viewer.repeat.value = 1
    assert not np.array_equal(before, viewer.perturbed_rgb)
    check_view(viewer, profile, table)

    viewer.subject.value = ids[3]
    viewer.axis.value = "coronal"
    check_view(viewer, profile, table)
    viewer.slice.value -= 1
    check_view(viewer, profile, table)

    viewer.show(subject=ids[1], lobe="temporal")
    assert (viewer.subject.value, viewer.lobe.value) == (ids[1], "temporal")
    check_view(viewer, profile, table)


def test_bad_subject_is_named(perturbed_run):
    profile, table = perturbed_run
    viewer = widgets.PerturbationViewer(profile.run_path, perturbation=table)
    with pytest.raises(ValueError, match="unknown subject 'nobody'"):
        viewer.show(subject="nobody")
    with pytest.raises(ValueError, match="unknown lobe 'insula'"):
        viewer.show(lobe="insula")
    with pytest.raises(ValueError, match="unknown subject 'nobody'"):
        widgets.perturbation_panels(profile, "nobody", "frontal", perturbation_table=table)
    with pytest.raises(ValueError, match="unknown subject 'nobody'"):
        widgets.SliceViewer.from_run(profile, "nobody")


def test_slice_viewer_from_run_is_in_canonical_orientation(tiny_run):
    sid = pd.read_csv(tiny_run.run_path / "predictions.csv", dtype={"subject_id": str})[
        "subject_id"
    ][0]
    viewer = widgets.SliceViewer.from_run(tiny_run, sid)
    image = nib.load(tiny_run.run_path / "preprocessed" / f"{sid}.nii.gz")
    (axial, _), *_ = canonical_slices(image)
    viewer.opacity.value = 0.0
    np.testing.assert_array_equal(viewer.rgb[..., 0], widgets.window_grey(np.flipud(axial), (0, 1)))
    assert viewer.caption.value.startswith(sid) and set(viewer.lobes_on) == set(LOBES.values())


def test_panels_without_a_table_say_so(tiny_run):
    sid = pd.read_csv(tiny_run.run_path / "predictions.csv", dtype={"subject_id": str})[
        "subject_id"
    ][0]
    original, perturbed, text = widgets.perturbation_panels(tiny_run, sid, 2, fill="zero")
    assert original.shape == perturbed.shape
    assert (perturbed[(original != perturbed).any(-1)] == 0).all()  # the zero fill is black
    assert "parietal lobe, zero fill" in text and "no perturbation results" in text
    assert "whole prediction" in text
