"""Slice/lobe and perturbation viewers: pure rendering, and widgets driven headless."""

from __future__ import annotations

import io
import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from ctbrainage.core.config import load_profile
from ctbrainage.core.labels import LOBE_IDS, LOBES
from ctbrainage.core.layout import RunLayout
from ctbrainage.imaging import ctio, run_arrays
from ctbrainage.interpret import perturb
from ctbrainage.interpret.perturb import fill_baseline
from ctbrainage.views import widgets
from ctbrainage.views.plots.common import LOBE_COLOURS, canonical_slices

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


@pytest.fixture
def middle(viewer):
    """The viewer at the middle axial slice, where the phantom's values span the window."""
    viewer.slice.value = 14
    return viewer


def test_lobe_slice_has_the_most_voxels_of_the_lobes():
    labels = np.zeros(SHAPE, np.uint8)
    labels[3:5, 2:4, 6] = 1  # frontal: 4 voxels on axial slice 6
    labels[2:9, 2:9, 20] = 1  # 49 on slice 20
    labels[12:18, 5:7, 10] = 13  # a right temporal lobe: 12 voxels, most on sagittal 12-17
    labels[14, 5:20, 3:20] = 3  # left temporal: 255 voxels on sagittal slice 14
    assert widgets.lobe_slice(labels, "frontal", "axial") == 20
    assert widgets.lobe_slice(labels, ["frontal", "temporal"], "axial") == 20
    assert widgets.lobe_slice(labels, "temporal", "sagittal") == 14  # right labels count too
    assert widgets.lobe_slice(labels, 3, "coronal") == 5
    assert widgets.lobe_slice(labels, "occipital", "axial") == SHAPE[2] // 2  # absent: middle
    labels[labels == 3] = 0
    assert widgets.lobe_slice(labels, "temporal", "sagittal") == 12  # only the right lobe


def test_axis_sets_slider_range_and_image_shape(viewer):
    everything = list(LOBES.values())
    axial = widgets.lobe_slice(viewer.labels, everything, "axial")
    assert viewer.axis.value == "axial" and viewer.slice.max == 27 and viewer.slice.value == axial
    assert viewer.rgb.shape == (24, 20, 3)
    assert f"axial slice {axial} of 27" in viewer.caption.value
    viewer.axis.value = "sagittal"
    sagittal = widgets.lobe_slice(viewer.labels, everything, "sagittal")
    assert (viewer.slice.max, viewer.slice.value) == (19, sagittal)
    assert viewer.rgb.shape == (28, 24, 3)
    height, width = png_shape(viewer.image.value)
    assert height / width == pytest.approx(28 * 2 / 24, rel=0.02)  # 2 mm slices: taller pixels
    assert f"sagittal slice {sagittal} of 19" in viewer.caption.value
    viewer.axis.value = "coronal"
    coronal = widgets.lobe_slice(viewer.labels, everything, "coronal")
    assert (viewer.slice.max, viewer.slice.value, viewer.rgb.shape) == (23, coronal, (28, 20, 3))
    for box in viewer.lobes.values():
        box.value = False
    viewer.axis.value = "axial"  # no lobe shown: the middle slice
    assert viewer.slice.value == 14


def test_moving_the_slice_changes_image_and_caption(middle):
    before, png = middle.rgb.copy(), middle.image.value
    middle.slice.value = 3
    assert not np.array_equal(before, middle.rgb) and middle.image.value != png
    expected = widgets.render_slice(
        middle.volume, middle.labels, "axial", 3, (0.0, 1.0), opacity=0.4
    )
    np.testing.assert_array_equal(middle.rgb, expected)
    assert "axial slice 3 of 27" in middle.caption.value


def test_lobe_toggle_removes_its_colour(middle):
    lab = widgets.plane(middle.labels, "axial", middle.slice.value)
    frontal = lab == LOBE_IDS["frontal"]
    assert not is_grey(middle.rgb[frontal]).any()
    middle.lobes["frontal"].value = False
    assert is_grey(middle.rgb[frontal]).all()
    assert not is_grey(middle.rgb[lab > 1]).any()  # the other lobes keep theirs
    assert "lobes: parietal, temporal, occipital" in middle.caption.value
    for box in middle.lobes.values():
        box.value = False
    assert is_grey(middle.rgb).all() and "lobes: none" in middle.caption.value


def test_opacity_zero_is_the_grey_image(middle):
    middle.opacity.value = 0.0
    shown = middle.slice.value
    grey = widgets.window_grey(widgets.plane(middle.volume, "axial", shown), (0.0, 1.0))
    np.testing.assert_array_equal(middle.rgb, np.repeat(grey[..., None], 3, -1))
    assert "opacity 0.00" in middle.caption.value
    middle.opacity.value = 1.0
    lab = widgets.plane(middle.labels, "axial", shown)
    colour = np.round(255 * np.asarray(to_rgb(LOBE_COLOURS["temporal"])))
    assert (middle.rgb[lab == LOBE_IDS["temporal"]] == colour).all()


def test_window_changes_pixel_values(middle):
    middle.opacity.value = 0.0
    before = middle.rgb.copy()
    middle.window.value = (0.2, 0.5)
    values = widgets.plane(middle.volume, "axial", middle.slice.value)
    assert not np.array_equal(before, middle.rgb)
    assert (middle.rgb[values <= 0.2] == 0).all() and (middle.rgb[values >= 0.5] == 255).all()
    inside = (values > 0.21) & (values < 0.49)
    assert inside.any() and (middle.rgb[inside, 0] > before[inside, 0]).all()  # more contrast
    assert "width 0.30, level 0.35" in middle.caption.value


def test_viewer_without_labels_and_display(viewer):
    plain = widgets.SliceViewer(phantom()[0])
    assert is_grey(plain.rgb).all() and "lobes" not in plain.caption.value
    bundle = viewer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle


# ---- run-based viewers ------------------------------------------------------------------------
# A tiny run directory written through RunLayout: the phantom in a non-canonical grid (voxel i
# runs right to left, j inferior to superior, k posterior to anterior; 2 x 1 x 1.5 mm), the
# predictions and a perturbation table per fill (two repeats), and the group_level targets.
AFFINE = np.array([[-2.0, 0, 0, 20], [0, 0, 1.5, -10], [0, 1.0, 0, 5], [0, 0, 0, 1]])
IDS = ("sub-a", "sub-b", "sub-c", "sub-d")
FILLS = ("noise", "zero", "mean", "group_level")
REPEATS = 2


def subject_volume(n: int) -> np.ndarray:
    volume, _ = phantom()
    return (0.2 + 0.6 * volume + 0.04 * n).astype(np.float32)


def perturbation_table(fill: str) -> pd.DataFrame:
    """Made-up step 05 results, different for every subject, lobe, repeat and fill."""
    rows = []
    for n, sid in enumerate(IDS):
        age, whole = 6.0 + 10 * n, 7.5 + 10 * n
        for k, lobe in LOBES.items():
            for r in range(REPEATS):
                masked = whole + 0.3 * k - 0.1 * r + 0.05 * FILLS.index(fill)
                delta = abs(masked - age) - abs(whole - age)
                rows.append(
                    {"subject_id": sid, "fold": n % 2, "age_months": age, "lobe": lobe,
                     "repeat": r, "fill": fill, "pred_whole": whole, "pred_masked": masked,
                     "delta_ae": delta, "signed_change": masked - whole}
                )  # fmt: skip
    return pd.DataFrame(rows)


def write_run(root, tables: bool = True, main_fill: str = "noise") -> RunLayout:
    """The run; ``main_fill``: the fill whose table is ``perturbation.csv``."""
    layout = RunLayout(root)
    _, labels = phantom()
    levels = []
    for n, sid in enumerate(IDS):
        volume = subject_volume(n)
        ctio.write_nifti(layout.preprocessed(sid), volume, AFFINE)
        ctio.write_nifti(layout.lobes(sid), labels, AFFINE)
        for k, lobe in LOBES.items():
            mean = float(volume[labels == k].mean())
            levels.append(
                {"subject_id": sid, "lobe": lobe, "lobe_mean": mean, "group_level": mean + 0.05 * k}
            )
    predictions = pd.DataFrame(
        {"subject_id": IDS, "fold": [n % 2 for n in range(len(IDS))],
         "age_months": [6.0 + 10 * n for n in range(len(IDS))],
         "predicted_months": [7.5 + 10 * n for n in range(len(IDS))]}
    )  # fmt: skip
    predictions.to_csv(layout.predictions, index=False)
    if tables:
        pd.DataFrame(levels).to_csv(layout.lobe_levels, index=False)
        for fill in FILLS:
            perturbation_table(fill).to_csv(layout.perturbation(fill, main_fill), index=False)
    return layout


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The profile of a written tiny run (its own fill: noise)."""
    root = tmp_path_factory.mktemp("widgets_run")
    write_run(root)
    return load_profile("tiny", {"run_dir": str(root)})


def canonical(array: np.ndarray) -> np.ndarray:
    return np.asarray(nib.as_closest_canonical(nib.Nifti1Image(array, AFFINE)).dataobj)


def expected_plane(profile, subject_id, lobe, repeat, axis, index, fill):
    """The perturbed slice computed independently: all lobes filled, then one lobe kept, then
    sliced like canonical_slices (origin lower → flipped)."""
    layout = RunLayout(profile.run_path)
    image = nib.load(layout.preprocessed(subject_id))
    volume = np.asarray(image.dataobj, np.float32)
    labels = np.asarray(nib.load(layout.lobes(subject_id)).dataobj)
    levels = None
    if fill == "group_level":
        table = pd.read_csv(layout.lobe_levels)
        table = table[table["subject_id"] == subject_id]
        levels = dict(zip(table["lobe"].map(LOBE_IDS), table["group_level"], strict=True))
    filled = fill_baseline(
        volume, labels, repeat, subject_id=subject_id, seed=profile.seed, fill=fill, levels=levels
    )
    changed = np.where(labels == LOBE_IDS[lobe], filled[0].numpy(), volume)
    canon = nib.as_closest_canonical(nib.Nifti1Image(changed, image.affine))
    centre = np.array(canon.shape) // 2
    centre[widgets._AXIS_DIM[axis]] = index
    slices = canonical_slices(nib.Nifti1Image(np.asarray(canon.dataobj), canon.affine), centre)
    return np.flipud(slices[widgets.AXES.index(axis)][0])


def check_view(viewer, profile, fill="noise"):
    """Panels differ only inside the chosen lobe, match the model's input, and the caption
    quotes the fill's table."""
    sid, lobe, repeat = viewer.subject.value, viewer.lobe.value, viewer.repeat.value
    assert viewer.fill == fill
    lab = widgets.plane(canonical(phantom()[1]), viewer.axis.value, viewer.slice.value)
    changed = (viewer.original_rgb != viewer.perturbed_rgb).any(-1)
    inside = lab == LOBE_IDS[lobe]
    assert inside.any() and changed.any()
    assert not changed[~inside].any()
    if fill == "noise":
        assert changed[inside].mean() > 0.9  # noise changes nearly every voxel of the lobe
    expected = expected_plane(
        profile, sid, lobe, repeat, viewer.axis.value, viewer.slice.value, fill
    )
    np.testing.assert_array_equal(
        viewer.perturbed_rgb[..., 0], widgets.window_grey(expected, (0, 1))
    )
    table = perturbation_table(fill)
    rows = table[(table["subject_id"] == sid) & (table["lobe"] == lobe)]
    row = rows[rows["repeat"] == repeat].iloc[0]
    text = viewer.text
    assert text.startswith(
        f"{sid} · age {row['age_months']:.2f} months · {lobe} lobe, {fill} fill"
        f" (seed {profile.seed}), repeat {repeat} of {REPEATS}"
    )
    assert f"whole prediction {row['pred_whole']:.2f} months" in text
    assert f"masked {row['pred_masked']:.2f} months, ΔAE {row['delta_ae']:+.2f}" in text
    assert f"ΔAE {rows['delta_ae'].mean():+.2f} months" in text.splitlines()[-1]
    assert "mean over 2 repeats" in viewer.caption.value


def test_perturbation_viewer_follows_its_controls(run):
    viewer = widgets.PerturbationViewer(run)
    assert (viewer.fill, viewer.seed) == ("noise", run.seed)
    assert [value for _, value in viewer.subject.options] == list(IDS)
    assert re.fullmatch(r".+ \(\d+\.\d months\)", viewer.subject.options[0][0])
    assert viewer.repeat.max == REPEATS - 1
    check_view(viewer, run)
    first = viewer.text

    viewer.lobe.value = "occipital"
    assert viewer.slice.value == widgets.lobe_slice(canonical(phantom()[1]), "occipital", "axial")
    check_view(viewer, run)
    assert viewer.text != first

    before = viewer.perturbed_rgb.copy()
    viewer.repeat.value = 1
    assert not np.array_equal(before, viewer.perturbed_rgb)
    check_view(viewer, run)

    viewer.subject.value = IDS[3]
    viewer.axis.value = "coronal"
    check_view(viewer, run)
    viewer.slice.value += 1
    check_view(viewer, run)

    viewer.show(subject=IDS[1], lobe="temporal")
    assert (viewer.subject.value, viewer.lobe.value) == (IDS[1], "temporal")
    check_view(viewer, run)
    height, width = png_shape(viewer.perturbed.value)
    assert height / width == pytest.approx(24 * 1.0 / (20 * 2.0), rel=0.02)  # coronal: z / x mm


@pytest.mark.parametrize("fill", FILLS)
def test_perturbation_viewer_shows_every_fill(run, fill):
    viewer = widgets.PerturbationViewer(run, fill=fill).show(subject=IDS[2], lobe="parietal")
    viewer.repeat.value = 1
    check_view(viewer, run, fill)
    subject = run_arrays.subject_image(RunLayout(run.run_path), IDS[2])
    filled = perturb.filled_volume(run, IDS[2], "parietal", fill, 1)
    shown = widgets.plane(subject.canonical(filled), "axial", viewer.slice.value)
    np.testing.assert_array_equal(viewer.perturbed_rgb[..., 0], widgets.window_grey(shown, (0, 1)))
    lobe = phantom()[1] == LOBE_IDS["parietal"]
    volume = subject_volume(2)
    if fill == "zero":
        assert (filled[lobe] == 0).all()
    elif fill == "mean":
        np.testing.assert_allclose(filled[lobe], volume[lobe].mean(), rtol=1e-6)
    elif fill == "group_level":  # the lobe moved by a constant to its target mean
        target = volume[lobe].mean() + 0.05 * LOBE_IDS["parietal"]
        shift = target - volume[lobe].mean()
        np.testing.assert_allclose(filled[lobe] - volume[lobe], shift, atol=1e-6)
        assert filled[lobe].mean() == pytest.approx(target, abs=1e-6)
    np.testing.assert_array_equal(filled[~lobe], volume[~lobe])


def test_group_level_viewer_equals_the_loader(tmp_path):
    """The group_level panel is run_arrays.filled_volume (the lobe shifted by a constant to its
    age group's mean), here with group_level as the profile's own fill (perturbation.csv)."""
    layout = write_run(tmp_path, main_fill="group_level")
    assert (
        pd.read_csv(layout.perturbation("group_level", "group_level"))["fill"] == "group_level"
    ).all()
    profile = load_profile("tiny", {"run_dir": str(tmp_path), "perturb.fill": "group_level"})
    viewer = widgets.PerturbationViewer(profile).show(subject=IDS[0], lobe="frontal")
    check_view(viewer, profile, "group_level")
    expected = perturb.filled_volume(profile, IDS[0], "frontal", "group_level", 0)
    lobe = phantom()[1] == LOBE_IDS["frontal"]
    shift = expected[lobe] - subject_volume(0)[lobe]
    np.testing.assert_allclose(shift, 0.05 * LOBE_IDS["frontal"], atol=1e-6)
    subject = run_arrays.subject_image(layout, IDS[0])
    for axis in widgets.AXES:
        viewer.axis.value = axis
        shown = widgets.window_grey(
            widgets.plane(subject.canonical(expected), axis, viewer.slice.value), (0, 1)
        )
        np.testing.assert_array_equal(viewer.perturbed_rgb, np.repeat(shown[..., None], 3, -1))
        check_view(viewer, profile, "group_level")


def test_group_level_needs_the_lobe_levels(tmp_path):
    write_run(tmp_path, tables=False)
    profile = load_profile("tiny", {"run_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="no lobe levels"):
        widgets.PerturbationViewer(profile, fill="group_level")


def test_bad_subject_is_named(run):
    viewer = widgets.PerturbationViewer(run)
    with pytest.raises(ValueError, match="unknown subject 'nobody'"):
        viewer.show(subject="nobody")
    with pytest.raises(ValueError, match="unknown lobe 'insula'"):
        viewer.show(lobe="insula")
    with pytest.raises(ValueError, match="nobody: no preprocessed volume"):
        widgets.SliceViewer.from_run(run, "nobody")
    with pytest.raises(TypeError, match="takes the run's Profile"):
        widgets.PerturbationViewer(run.run_path)


@pytest.mark.parametrize("given", ["layout", "path", "str", "profile"])
def test_slice_viewer_from_run_is_in_canonical_orientation(run, given):
    layout = RunLayout(run.run_path)
    source = {"layout": layout, "path": run.run_path, "str": str(run.run_path), "profile": run}
    viewer = widgets.SliceViewer.from_run(source[given], IDS[1])
    image = nib.load(layout.preprocessed(IDS[1]))
    (axial, _), *_ = canonical_slices(image)
    viewer.opacity.value = 0.0
    viewer.slice.value = viewer.volume.shape[2] // 2  # canonical_slices' default
    np.testing.assert_array_equal(viewer.rgb[..., 0], widgets.window_grey(np.flipud(axial), (0, 1)))
    assert viewer.caption.value.startswith(IDS[1]) and set(viewer.lobes_on) == set(LOBES.values())
    assert viewer.spacing == (2.0, 1.5, 1.0)
    np.testing.assert_array_equal(viewer.labels, canonical(phantom()[1]))


def test_panels_without_a_table_say_so(run):
    subject = run_arrays.subject_image(RunLayout(run.run_path), IDS[0])
    filled = perturb.filled_volume(run, IDS[0], 2, "zero")
    original, perturbed, text = widgets.perturbation_panels(
        subject, filled, 2, None, age=6.0, predicted=7.5, fill="zero", seed=run.seed
    )
    assert original.shape == perturbed.shape
    assert (perturbed[(original != perturbed).any(-1)] == 0).all()  # the zero fill is black
    assert "parietal lobe, zero fill" in text and "no perturbation results" in text
    assert text.endswith("whole prediction 7.50 months")
    # rows of other subjects, lobes or fills are not this panel's
    _, _, text = widgets.perturbation_panels(
        subject, filled, 2, perturbation_table("noise"), 6.0, 7.5, "zero", run.seed
    )
    assert "no perturbation results" in text
    with pytest.raises(ValueError, match="does not match the input"):
        widgets.perturbation_panels(subject, filled[:-1], 2, None, 6.0, 7.5, "zero", run.seed)


def test_viewer_without_a_table_shows_every_subject(tmp_path):
    write_run(tmp_path, tables=False)
    profile = load_profile("tiny", {"run_dir": str(tmp_path)})
    viewer = widgets.PerturbationViewer(profile, fill="zero")
    assert viewer.table is None and [v for _, v in viewer.subject.options] == list(IDS)
    assert viewer.repeat.disabled
    assert "no perturbation results" in viewer.text and "whole prediction 7.50" in viewer.text
    assert (viewer.perturbed_rgb[(viewer.original_rgb != viewer.perturbed_rgb).any(-1)] == 0).all()


def test_slice_viewer_picks_every_preprocessed_subject_youngest_first(tmp_path):
    layout = write_run(tmp_path, tables=False)
    ages = {IDS[0]: 30.0, IDS[1]: 2.5, IDS[2]: 14.0, IDS[3]: 7.25}
    pd.DataFrame({"subject_id": list(ages), "age_months": list(ages.values())}).to_csv(
        layout.cohort, index=False
    )
    for sid in IDS:  # step 01 also writes brain masks there: they are no subjects
        ctio.write_nifti(layout.brain(sid), phantom()[1] > 0, AFFINE)
        ctio.write_nifti(layout.brain_native(sid), phantom()[1] > 0, AFFINE)
    viewer = widgets.SliceViewer.from_run(layout)
    assert viewer.subject.options == (
        (f"{IDS[1]} (2.5 months)", IDS[1]),
        (f"{IDS[3]} (7.2 months)", IDS[3]),
        (f"{IDS[2]} (14.0 months)", IDS[2]),
        (f"{IDS[0]} (30.0 months)", IDS[0]),
    )
    assert viewer.subject.value == IDS[1] and viewer.caption.value.startswith(IDS[1])
    assert viewer.subject in viewer.controls.children
    viewer.axis.value = "sagittal"
    viewer.subject.value = IDS[2]
    expected = widgets.SliceViewer.from_subject(run_arrays.subject_image(layout, IDS[2]))
    expected.axis.value = "sagittal"
    assert viewer.slice.value == widgets.lobe_slice(viewer.labels, LOBES.values(), "sagittal")
    np.testing.assert_array_equal(viewer.rgb, expected.rgb)
    assert viewer.text == expected.text and viewer.text.startswith(f"{IDS[2]} · sagittal")


def test_perturbation_viewer_picture_shows_both_panels(run):
    viewer = widgets.PerturbationViewer(run)
    picture = Image.open(io.BytesIO(viewer.picture()))
    bundle = viewer._repr_mimebundle_()
    assert picture.width > 1.8 * widgets.DISPLAY_SIZE and bundle["text/plain"].endswith(viewer.text)
    viewer.lobe.value = "temporal"
    assert viewer._repr_mimebundle_()["image/png"] != bundle["image/png"]
