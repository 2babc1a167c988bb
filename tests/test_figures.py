"""The figures of steps 04, 07 and 08 and of new scans hold the data they are given: the points,
lines, bars and image panels are read back from the returned Figure and compared with values
worked out by hand from small hand-made inputs in the steps' formats. Also known answers of the
top-voxel sets and their Jaccard overlap (step 08's Grad-CAM comparison)."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from PIL import Image

from ctbrainage.core.labels import LOBES
from ctbrainage.views import plots
from ctbrainage.views.plots.common import LOBE_COLOURS

EDGES = (0.0, 12.0, 24.0, 36.0, 48.0)
LOBE_NAMES = list(LOBES.values())


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ---- helpers ------------------------------------------------------------------------------


def offsets(collection) -> np.ndarray:
    return np.asarray(collection.get_offsets(), float)


def ydata(line) -> np.ndarray:
    return np.asarray(line.get_ydata(), float)


def xdata(line) -> np.ndarray:
    return np.asarray(line.get_xdata(), float)


def image(ax, n: int = 0):
    """(data, mask) of the ``n``-th image drawn on ``ax``."""
    shown = ax.images[n].get_array()
    return np.ma.getdata(shown), np.ma.getmaskarray(shown)


def texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def tick_labels(axis_labels) -> list[str]:
    return [t.get_text() for t in axis_labels]


def covers(limits, values) -> bool:
    lo, hi = sorted(limits)
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    return bool(lo <= values.min() and values.max() <= hi)


def assert_png_written(out) -> None:
    """``out`` is a non-blank PNG and the only file in its folder (the write was atomic)."""
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]
    with Image.open(out) as png:
        assert png.format == "PNG"
        grey = np.asarray(png.convert("L"))
    assert grey.shape[0] > 100 and grey.shape[1] > 100
    assert len(np.unique(grey)) > 16 and grey.std() > 5


# ---- step 04: evaluation ----------------------------------------------------------------

# two subjects per age group, predictions exactly on the line 10 + 0.5 · age: the fitted line is
# known, |error| = |10 − 0.5 age| = 9, 7 | 3, 0 | 3, 6.5 | 9, 12.5 (MAE 8, 1.5, 4.75, 10.75 per
# group, 6.25 overall)
AGES = np.array([2.0, 6.0, 14.0, 20.0, 26.0, 33.0, 38.0, 45.0])
PREDICTED = 10 + 0.5 * AGES
GROUP_LABELS = ["0-11", "12-23", "24-35", "36-47"]


def predictions(column: str = "predicted_months") -> pd.DataFrame:
    """Step 04's out-of-fold predictions (``result.predictions``)."""
    return pd.DataFrame(
        {
            "subject_id": [f"sub-{i}" for i in range(len(AGES))],
            "fold": [0, 1] * (len(AGES) // 2),
            "age_months": AGES,
            column: PREDICTED,
        }
    )


def check_predicted_vs_true(ax) -> None:
    groups = ax.collections  # one scatter per age group, youngest first
    assert [c.get_label() for c in groups] == [f"{g} months" for g in GROUP_LABELS]
    for k, scatter in enumerate(groups):
        np.testing.assert_allclose(
            offsets(scatter), np.c_[AGES, PREDICTED][2 * k : 2 * k + 2], err_msg=GROUP_LABELS[k]
        )
    identity, fit = ax.lines
    np.testing.assert_allclose(xdata(identity), [0, 48])
    np.testing.assert_allclose(ydata(identity), [0, 48])
    np.testing.assert_allclose(xdata(fit), [0, 48])
    np.testing.assert_allclose(ydata(fit), [10, 34])  # 10 + 0.5 · 0, 10 + 0.5 · 48
    assert fit.get_label() == "fit (slope 0.50)"
    rmse = math.sqrt((81 + 49 + 9 + 0 + 9 + 42.25 + 81 + 156.25) / 8)
    assert texts(ax) == [f"MAE 6.25 · RMSE {rmse:.2f} months\nr 1.000"]
    assert ax.get_xlabel() == "true age (months)"
    assert ax.get_ylabel() == "predicted age (months)"
    assert ax.get_xlim() == (0, 48) and covers(ax.get_xlim(), AGES)
    assert covers(ax.get_ylim(), PREDICTED)
    legend = tick_labels(ax.get_legend().get_texts())
    assert legend == [*(f"{g} months" for g in GROUP_LABELS), "identity", "fit (slope 0.50)"]


def test_predicted_vs_true_draws_each_age_group_with_the_identity_and_fitted_lines(tmp_path):
    out = tmp_path / "pvt.png"
    fig = plots.predicted_vs_true(predictions(), EDGES, out=out)
    assert len(fig.axes) == 1
    check_predicted_vs_true(fig.axes[0])
    assert_png_written(out)


def test_predicted_vs_true_reads_the_named_column_onto_the_given_axes():
    fig, (left, right) = plt.subplots(1, 2)
    frame = predictions("corrected_months").assign(predicted_months=-99.0)  # must not be drawn
    returned = plots.predicted_vs_true(frame, EDGES, column="corrected_months", ax=right)
    assert returned is fig and not left.collections and not left.lines
    check_predicted_vs_true(right)


def test_bland_altman_draws_the_differences_the_bias_and_the_limits_of_agreement(tmp_path):
    # differences 1, 3, 5, 7: mean 4, sample SD sqrt(20 / 3)
    frame = pd.DataFrame({"age_months": [10.0, 20, 30, 40], "predicted_months": [11.0, 23, 35, 47]})
    out = tmp_path / "ba.png"
    fig = plots.bland_altman(frame, out=out)
    ax = fig.axes[0]
    np.testing.assert_allclose(
        offsets(ax.collections[0]), [[10.5, 1], [21.5, 3], [32.5, 5], [43.5, 7]]
    )
    sd = math.sqrt(20 / 3)
    levels = [4, 4 + 1.96 * sd, 4 - 1.96 * sd]
    assert len(ax.lines) == 3
    for line, level in zip(ax.lines, levels, strict=True):
        np.testing.assert_allclose(ydata(line), [level, level])
    assert [line.get_linestyle() for line in ax.lines] == ["-", "--", "--"]
    assert texts(ax) == [" mean +4.0", f" +1.96 SD {levels[1]:+.1f}", f" −1.96 SD {levels[2]:+.1f}"]
    assert texts(ax)[1:] == [" +1.96 SD +9.1", " −1.96 SD -1.1"]
    assert ax.get_title() == "Bland–Altman"
    assert ax.get_xlabel() == "mean of true and predicted age (months)"
    assert ax.get_ylabel() == "predicted − true (months)"
    assert covers(ax.get_xlim(), [10.5, 43.5]) and covers(ax.get_ylim(), [1, 7, *levels])
    assert_png_written(out)


def test_error_by_age_group_bars_are_the_tables_mae_with_n_on_each(tmp_path):
    # the table of stats.evaluate.error_by_age_group: a categorical index, an empty group (NaN)
    table = pd.DataFrame(
        {"n": [3, 0, 2], "mae": [1.5, np.nan, 2.25], "mean_error": [0.5, np.nan, -1.0]},
        index=pd.CategoricalIndex(["0-11", "12-23", "24-35"], name="group"),
    )
    out = tmp_path / "bars.png"
    fig = plots.error_by_age_group_bars(table, out=out)
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(heights, [1.5, np.nan, 2.25])
    np.testing.assert_allclose([p.get_x() + p.get_width() / 2 for p in ax.patches], [0, 1, 2])
    assert texts(ax) == ["n=3", "n=0", "n=2"]
    fig.canvas.draw()
    assert tick_labels(ax.get_xticklabels()) == ["0-11", "12-23", "24-35"]
    assert ax.get_title() == "error per age group"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("age group (months)", "MAE (months)")
    assert covers(ax.get_ylim(), [0, 2.25])
    assert_png_written(out)


def test_evaluation_figure_puts_the_three_panels_side_by_side(tmp_path):
    out = tmp_path / "evaluation.png"
    fig = plots.evaluation_figure(predictions(), EDGES, out=out)
    scatter, agreement, bars = fig.axes
    check_predicted_vs_true(scatter)
    differences = PREDICTED - AGES
    np.testing.assert_allclose(offsets(agreement.collections[0])[:, 1], differences)
    np.testing.assert_allclose(ydata(agreement.lines[0]), [differences.mean()] * 2)
    assert agreement.get_title() == "Bland–Altman"
    # MAE per age group from the |errors| above; n = 2 each
    np.testing.assert_allclose([p.get_height() for p in bars.patches], [8, 1.5, 4.75, 10.75])
    assert texts(bars) == ["n=2"] * 4
    assert bars.get_title() == "error per age group"
    assert_png_written(out)


def test_brain_age_gap_figure_draws_the_raw_and_corrected_gaps_with_their_trends(tmp_path):
    ages = np.array([3.0, 9, 15, 27, 33, 45])
    gaps = pd.DataFrame(
        {
            "subject_id": [f"sub-{i}" for i in range(6)],
            "fold": [0, 1, 0, 1, 0, 1],
            "age_months": ages,
            "predicted_months": ages + 10 - 0.5 * ages,
            "gap": 10 - 0.5 * ages,
            "corrected_months": 1.1 * ages - 1,
            "gap_corrected": 0.1 * ages - 1,
        }
    )
    out = tmp_path / "gap.png"
    fig = plots.brain_age_gap_figure(gaps, out=out)
    raw, corrected = fig.axes
    for ax, column, trend, label in (
        (raw, "gap", [8.5, -12.5], "trend -0.50/month"),
        (corrected, "gap_corrected", [-0.7, 3.5], "trend +0.10/month"),
    ):
        np.testing.assert_allclose(offsets(ax.collections[0]), np.c_[ages, gaps[column]])
        line, zero = ax.lines
        np.testing.assert_allclose(xdata(line), [3, 45])
        np.testing.assert_allclose(ydata(line), trend, atol=1e-9)
        assert line.get_label() == label
        np.testing.assert_allclose(ydata(zero), [0, 0])
        assert ax.get_xlabel() == "age (months)"
        assert covers(ax.get_xlim(), ages) and covers(ax.get_ylim(), gaps[column])
    assert raw.get_title() == "brain-age gap, raw"
    assert corrected.get_title() == "brain-age gap, bias-corrected (fitted outside the fold)"
    assert raw.get_ylabel() == "predicted − true (months)"
    assert_png_written(out)


# ---- step 07: attribution ---------------------------------------------------------------


def test_group_maps_figure_draws_each_groups_map_over_its_mean_input_on_the_maps_slice(tmp_path):
    from ctbrainage.interpret.attribution import MEAN_INPUT, group_map_key

    rng = np.random.default_rng(0)
    shape = (5, 6, 4)

    def peaked(z: int) -> np.ndarray:
        """A group map (≥ 0, zero outside its top voxels) largest on axial slice ``z``."""
        volume = np.zeros(shape, np.float32)
        volume[1:4, 2:5, :] = 0.01
        volume[1:4, 2:5, z] = rng.uniform(0.5, 1.0, (3, 3))
        return volume

    inputs = {g: rng.uniform(0, 1, shape).astype(np.float32) for g in ("12-23", "0-11", "24-35")}
    maps = {group_map_key(MEAN_INPUT, g): v for g, v in inputs.items()}  # as step 07 writes
    maps |= {
        group_map_key("saliency", "12-23"): peaked(1),
        group_map_key("saliency", "0-11"): peaked(2),
        group_map_key("integrated_gradients", "0-11"): peaked(3),
        group_map_key("saliency", "24-35"): peaked(0),
    }  # no integrated_gradients map of 12-23 and 24-35, no occlusion map at all
    out = tmp_path / "group_maps.png"
    fig = plots.group_maps_figure(maps, ["saliency", "occlusion", "integrated_gradients"], out=out)
    axes = np.array(fig.axes).reshape(2, 3)  # occlusion's row is left out
    assert [ax.get_title() for ax in axes[0]] == ["0-11 months", "12-23 months", "24-35 months"]
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["saliency", "integrated gradients"]
    slices = {
        ("saliency", "0-11"): 2,
        ("saliency", "12-23"): 1,
        ("saliency", "24-35"): 0,
        ("integrated_gradients", "0-11"): 3,
    }
    for i, method in enumerate(["saliency", "integrated_gradients"]):
        for j, group in enumerate(["0-11", "12-23", "24-35"]):
            ax = axes[i, j]
            if (method, group) not in slices:
                assert not ax.images and not ax.axison
                continue
            z = slices[method, group]
            background, _ = image(ax, 0)
            np.testing.assert_array_equal(background, np.rot90(inputs[group][:, :, z]))
            values, hidden = image(ax, 1)
            expected = np.rot90(maps[group_map_key(method, group)][:, :, z])
            np.testing.assert_array_equal(hidden, expected <= 0)
            np.testing.assert_array_equal(values[~hidden], expected[expected > 0])
            assert ax.images[0].get_clim() == (0, 1)
    assert "top 10 %" in fig._suptitle.get_text()
    assert_png_written(out)


def attribution_table() -> pd.DataFrame:
    """Step 07's attribution.csv: one row per method, subject and lobe."""
    subjects = {"sub-a": 3.0, "sub-b": 4.0, "sub-c": 15.0, "sub-d": 8.0}
    importance = {
        "saliency": {
            "sub-a": [0.1, 0.2, 0.3, 0.4],
            "sub-b": [0.3, 0.2, 0.1, 0.4],
            "sub-c": [0.5, 0.1, 0.2, 0.2],
            "sub-d": [0.2, 0.6, 0.1, 0.1],
        },
        "occlusion": {
            "sub-a": [-0.5, 0.3, 0.1, 0.1],
            "sub-b": [-0.3, 0.1, 0.1, 0.1],
            "sub-c": [0.1, 0.1, 0.4, 0.8],
            "sub-d": [0.25, 0.25, 0.25, 0.25],
        },
    }
    rows = [
        {
            "method": method,
            "subject_id": sid,
            "fold": 0,
            "age_months": age,
            "lobe": lobe,
            "importance": value,
            "reference": 1.0,
            "tested": 1.0 + value,
        }
        for method, per_subject in importance.items()
        for sid, age in subjects.items()
        for lobe, value in zip(LOBE_NAMES, per_subject[sid], strict=True)
    ]
    return pd.DataFrame(rows)


def test_lobe_importance_figure_scales_each_groups_mean_to_its_top_lobe(tmp_path):
    edges = (0, 6, 12, 24)  # groups 0-5 (sub-a, sub-b), 6-11 (sub-d), 12-23 (sub-c)
    planted = {"12-23": [1, 1, 3, 6], "0-5": [2, 4, 1, 1], "6-11": [0, 5, 5, 10]}
    expected = pd.DataFrame(
        [
            {
                "definition": "fisher",
                "group": g,
                "lobe": lobe,
                "hu_per_month": 0.0,
                "importance": v,
                "share": 0.0,
            }
            for g, values in planted.items()
            for lobe, v in zip(LOBE_NAMES, values, strict=True)
        ]
    )
    out = tmp_path / "lobes.png"
    fig = plots.lobe_importance_figure(attribution_table(), expected, edges, out=out)
    assert len(fig.axes) == 4
    panels, unused = fig.axes[:3], fig.axes[3]
    assert [ax.get_title() for ax in panels] == ["planted (Fisher)", "saliency", "occlusion"]
    assert not unused.axison and not unused.images
    # rows 0-5, 6-11, 12-23 (by age, not as text); each row over its largest |value|
    cells = {
        "planted (Fisher)": [[0.5, 1, 0.25, 0.25], [0, 0.5, 0.5, 1], [1 / 6, 1 / 6, 0.5, 1]],
        "saliency": [[0.5, 0.5, 0.5, 1], [1 / 3, 1, 1 / 6, 1 / 6], [1, 0.2, 0.4, 0.4]],
        "occlusion": [[-1, 0.5, 0.25, 0.25], [1, 1, 1, 1], [0.125, 0.125, 0.5, 1]],
    }
    boxed = {"planted (Fisher)": [1, 3, 3], "saliency": [3, 1, 0], "occlusion": [1, 0, 3]}
    for ax in panels:
        name = ax.get_title()
        values, _ = image(ax)
        np.testing.assert_allclose(values, cells[name], err_msg=name)
        assert ax.images[0].get_clim() == (-1, 1)
        corners = [tuple(p.get_xy()) for p in ax.patches]
        assert corners == [(c - 0.5, r - 0.5) for r, c in enumerate(boxed[name])], name
        assert tick_labels(ax.get_yticklabels()) == ["0-5", "6-11", "12-23"]
        assert tick_labels(ax.get_xticklabels()) == ["fron", "pari", "temp", "occi"]
    assert_png_written(out)


def test_lobe_importance_figure_without_a_planted_truth_shows_the_methods_only():
    fig = plots.lobe_importance_figure(attribution_table(), None, (0, 6, 12, 24))
    assert [ax.get_title() for ax in fig.axes if ax.axison] == ["saliency", "occlusion"]


def test_lobe_importance_figure_leaves_an_age_group_without_importance_blank():
    table = attribution_table()
    table.loc[(table["method"] == "occlusion") & (table["subject_id"] == "sub-d"), "importance"] = (
        np.nan
    )  # the only subject of 6-11: a map with no mass in the brain
    fig = plots.lobe_importance_figure(table, None, (0, 6, 12, 24))
    occlusion = fig.axes[1]
    values, _ = image(occlusion)
    assert np.isnan(values[1]).all()
    assert len(occlusion.patches) == 2  # boxes for the groups that have a top lobe


def sanity_table(random_lobe_rho: float = 0.1) -> pd.DataFrame:
    """Step 07's attribution_sanity.csv (interpret.sanity.table): cascade steps 1-3, the
    label-randomised model as step 0; occlusion is a final-only method, lobe_shapley a lobe
    method (no voxel similarity)."""
    from ctbrainage.interpret import sanity

    steps = {"fc": 1, "layer4": 2, "layer3": 3, "random_labels": 0}
    voxel = {  # per model, in the order of ``steps``; NaN: not computed
        "saliency": [0.9, 0.6, 0.3, 0.2],
        "gradcam": [0.8, 0.7, 0.65, 0.55],
        "lobe_shapley": [np.nan] * 4,
        "occlusion": [None, None, 0.1, 0.05],
    }
    lobe = {
        "saliency": [0.95, 0.5, 0.1, random_lobe_rho],
        "gradcam": [0.9, 0.8, 0.6, 0.4],
        "lobe_shapley": [1.0, 0.3, -0.2, 0.0],
        "occlusion": [None, None, 0.2, 0.15],
    }
    rows = [
        {
            "method": method,
            "model": model,
            "step": step,
            "voxel_rho": voxel[method][i],
            "lobe_rho": lobe[method][i],
        }
        for i, (model, step) in enumerate(steps.items())
        for method in voxel
        if lobe[method][i] is not None  # occlusion: last stage and random labels only
    ]
    return sanity.table(rows)


def test_sanity_figure_draws_each_methods_similarity_along_the_cascade(tmp_path):
    table = sanity_table()
    out = tmp_path / "sanity.png"
    fig = plots.sanity_figure(table, out=out)
    voxel_ax, lobe_ax = fig.axes[:2]
    expected = {
        voxel_ax: {
            "saliency": ([1, 2, 3], [0.9, 0.6, 0.3]),
            "gradcam": ([1, 2, 3], [0.8, 0.7, 0.65]),
            "occlusion": ([3], [0.1]),
        },  # lobe_shapley has no voxel maps
        lobe_ax: {
            "saliency": ([1, 2, 3], [0.95, 0.5, 0.1]),
            "gradcam": ([1, 2, 3], [0.9, 0.8, 0.6]),
            "lobe shapley": ([1, 2, 3], [1.0, 0.3, -0.2]),
            "occlusion": ([3], [0.2]),
        },
    }
    shuffled = {voxel_ax: [0.2, 0.55, 0.05], lobe_ax: [0.1, 0.4, 0.0, 0.15]}
    for ax, lines in expected.items():
        curves = [line for line in ax.lines if line.get_label() in lines]
        assert [c.get_label() for c in curves] == list(lines)
        for curve in curves:
            steps, rho = lines[curve.get_label()]
            np.testing.assert_allclose(xdata(curve), steps)
            np.testing.assert_allclose(ydata(curve), rho)
        (threshold,) = [line for line in ax.lines if line not in curves]
        np.testing.assert_allclose(ydata(threshold), [0.5, 0.5])
        points = offsets(ax.collections[0])  # the label-randomised model, right of the cascade
        np.testing.assert_allclose(points[:, 0], 4)
        np.testing.assert_allclose(points[:, 1], shuffled[ax])
        np.testing.assert_allclose(ax.get_xticks(), [1, 2, 3, 4])
        labels = tick_labels(ax.get_xticklabels())
        assert labels == ["fc", "layer4", "layer3", "random\nlabels"]
        assert covers(ax.get_xlim(), [1, 4])
        assert covers(ax.get_ylim(), [r for _, rho in lines.values() for r in rho])
    assert voxel_ax.get_title() == "voxel maps: randomised up to …"
    assert lobe_ax.get_title() == "lobe importances: randomised up to …"
    assert voxel_ax.get_ylabel() == "Spearman ρ with the trained model's voxel maps"
    assert lobe_ax.get_ylabel() == "Spearman ρ with the trained model's lobe importances"
    legend = tick_labels(lobe_ax.get_legend().get_texts())
    assert legend == ["saliency", "gradcam", "lobe shapley", "occlusion"]
    assert_png_written(out)


def test_sanity_figure_shows_a_strongly_negative_similarity():
    fig = plots.sanity_figure(sanity_table(random_lobe_rho=-0.8))
    lobe_ax = fig.axes[1]
    assert -0.8 in offsets(lobe_ax.collections[0])[:, 1]
    assert covers(lobe_ax.get_ylim(), [-0.8])


# ---- step 08: stacking ------------------------------------------------------------------

STACK_AGES = np.array([1.0, 8, 16, 25, 33, 41, 47])
ENCODER_OFFSETS = {"T": 1.5, "A": -0.5, "T2": 2.0}
STACKED_OFFSETS = {"T": 1.0, "A": 0.5, "TA": 0.8, "TAS": 0.6, "TT2": 3.0}


def stacking_predictions(encoders=("T", "A", "T2"), stacked=tuple(STACKED_OFFSETS)):
    """Step 08's stacking/predictions.csv: the encoders' and the stacked models' out-of-fold
    predictions (``stacked_<model>``)."""
    frame = pd.DataFrame(
        {
            "subject_id": [f"sub-{i}" for i in range(len(STACK_AGES))],
            "fold": [0, 1, 0, 1, 0, 1, 0],
            "age_months": STACK_AGES,
        }
    )
    for e in encoders:
        frame[e] = STACK_AGES + ENCODER_OFFSETS[e]
    frame["sex"] = "F"
    for m in stacked:
        frame[f"stacked_{m}"] = STACK_AGES + STACKED_OFFSETS[m]
    return frame


def stacking_table() -> pd.DataFrame:
    """Step 08's stacking.csv (stats.stacking.stacking_table), with MAEs that are not those of
    the predictions above: the titles must be read from the table."""
    models = ["T encoder", "A encoder", "T2 encoder", *STACKED_OFFSETS]
    return pd.DataFrame(
        {
            "model": models,
            "features": ["–"] * 3 + ["T", "A", "T + A", "T + A + male", "T + T2"],
            "n": 7,
            "mae": [1.11, 2.22, 3.33, 4.44, 5.55, 6.66, 7.77, 8.88],
        }
    )


def test_stacking_figure_draws_each_encoder_and_stack_against_age(tmp_path):
    out = tmp_path / "stacking.png"
    frame = stacking_predictions()
    fig = plots.stacking_figure(frame, stacking_table(), out=out)
    assert len(fig.axes) == 8
    columns = ["T", "A", "T2", *(f"stacked_{m}" for m in STACKED_OFFSETS)]
    names = ["T encoder", "A encoder", "T2 encoder", *STACKED_OFFSETS]
    maes = ["1.11", "2.22", "3.33", "4.44", "5.55", "6.66", "7.77", "8.88"]
    titles = [f"{name}: MAE {mae} months" for name, mae in zip(names, maes, strict=True)]
    top = 47 + 3.0 + 2  # the largest value, plus 2
    for ax, column, title in zip(fig.axes, columns, titles, strict=True):
        assert ax.get_title() == title
        np.testing.assert_allclose(offsets(ax.collections[0]), np.c_[STACK_AGES, frame[column]])
        (identity,) = ax.lines
        np.testing.assert_allclose(xdata(identity), [0, top])
        np.testing.assert_allclose(ydata(identity), [0, top])
        assert ax.get_xlim() == ax.get_ylim() == (0, top)
        assert covers(ax.get_xlim(), STACK_AGES) and covers(ax.get_ylim(), frame[column])
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("age (months)", "predicted (months)")
    assert_png_written(out)


def test_stacking_figure_leaves_unused_panels_empty():
    fig = plots.stacking_figure(stacking_predictions(("T", "A"), ("TA",)), stacking_table())
    assert len(fig.axes) == 4
    assert [ax.get_title() for ax in fig.axes[:3]] == [
        "T encoder: MAE 1.11 months",
        "A encoder: MAE 2.22 months",
        "TA: MAE 6.66 months",
    ]
    assert not fig.axes[3].axison and not fig.axes[3].collections


def test_stacking_figure_shows_a_negative_prediction():
    frame = stacking_predictions()
    frame.loc[0, "stacked_TA"] = -2.5  # the 1-month-old
    fig = plots.stacking_figure(frame, stacking_table())
    ta = fig.axes[5]
    assert ta.get_title().startswith("TA:")
    assert covers(ta.get_ylim(), frame["stacked_TA"])


def test_stacking_maps_figure_draws_each_groups_layers_on_the_slice_with_most_brain(tmp_path):
    from ctbrainage.views.plots.stacking import LAYERS

    rng = np.random.default_rng(1)
    shape = (6, 7, 5)
    maps = {}
    slices = {"12-23": 3, "0-11": 1}  # step 08's keys: <layer>/<group>, groups in any order
    for group, z in slices.items():
        ct = np.zeros(shape, np.float32)
        ct[1:5, 1:6, :] = rng.uniform(0.01, 0.5, (4, 5, shape[2]))
        ct[1:5, 1:6, :][ct[1:5, 1:6, :] < 0.3] = 0.01  # faint: not brain for the slice choice
        ct[0:6, 0:7, z] = rng.uniform(0.3, 0.9, (6, 7))  # the most brain on slice z
        ct[0, 0, z] = 0.015  # below BRAIN_LEVEL: Grad-CAM hidden there
        maps[f"ct/{group}"] = ct
        for layer in ("maturity", "synthesised"):
            maps[f"{layer}/{group}"] = rng.uniform(0, 1, shape).astype(np.float32)
        for layer in ("gradcam_T", "gradcam_A"):
            cam = rng.uniform(-0.2, 1, shape).astype(np.float32)
            cam[0, 0, z] = 0.9
            maps[f"{layer}/{group}"] = cam
    out = tmp_path / "stacking_maps.png"
    fig = plots.stacking_maps_figure(maps, out=out)
    axes = np.array(fig.axes).reshape(2, len(LAYERS))
    assert [ax.get_title() for ax in axes[0]] == list(LAYERS.values())
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["0-11 months", "12-23 months"]
    for row, group in zip(axes, ["0-11", "12-23"], strict=True):
        z = slices[group]
        ct = np.rot90(maps[f"ct/{group}"][:, :, z])
        for ax, layer in zip(row, LAYERS, strict=True):
            drawn = np.rot90(maps[f"{layer}/{group}"][:, :, z])
            if layer.startswith("gradcam"):
                background, _ = image(ax, 0)
                np.testing.assert_array_equal(background, ct)
                values, hidden = image(ax, 1)
                np.testing.assert_array_equal(hidden, (ct <= 0.02) | (drawn <= 0))
                np.testing.assert_array_equal(values[~hidden], drawn[~hidden])
                assert hidden[ct <= 0.02].all() and (drawn[ct <= 0.02] > 0).all()
            else:
                assert len(ax.images) == 1
                values, _ = image(ax)
                np.testing.assert_array_equal(values, drawn)
                assert ax.images[0].get_clim() == (0, 1)
    assert_png_written(out)


# ---- new scans ----------------------------------------------------------------------------


def out_of_fold() -> pd.DataFrame:
    """A bundle's out_of_fold.csv: fold, age_months, predicted_months, corrected_months."""
    return pd.DataFrame(
        {
            "fold": [0, 1, 0, 1, 0],
            "age_months": [2.0, 10, 20, 30, 40],
            "predicted_months": [8.0, 12, 21, 27, 35],
            "corrected_months": [3.0, 9, 22, 28, 41],
        }
    )


def errorbar_parts(container):
    """(the marker's (x, y), the error bars' (x, y_low, y_high)) of an ``errorbar`` call."""
    data_line, _, (bars,) = container.lines
    segments = [np.asarray(s) for s in bars.get_segments()]
    ends = np.array([[s[0, 0], min(s[:, 1]), max(s[:, 1])] for s in segments])
    return np.asarray(data_line.get_xydata(), float), ends


def test_new_scan_figure_places_the_childs_brain_age_and_interval_on_the_cohort(tmp_path):
    lobes = {"frontal": 1.5, "parietal": -0.5, "temporal": 0.25, "occipital": 3.0}
    out = tmp_path / "sub-x.png"
    fig = plots.new_scan_figure(out_of_fold(), 15.0, 18.0, (12.0, 24.0), lobes, "sub-x", out=out)
    cloud, bars = fig.axes
    assert fig._suptitle.get_text() == "sub-x"
    np.testing.assert_allclose(
        offsets(cloud.collections[0]), [[2, 3], [10, 9], [20, 22], [30, 28], [40, 41]]
    )
    (child,) = cloud.containers
    point, ends = errorbar_parts(child)
    np.testing.assert_allclose(point, [[15, 18]])  # chronological age, brain age
    np.testing.assert_allclose(ends, [[15, 12, 24]])  # the interval
    hi = 40 * 1.05
    band = cloud.collections[1].get_paths()[0].vertices  # the interval's half-width, 6
    for x, (low, high) in ((0, (-6, 6)), (hi, (hi - 6, hi + 6))):
        at = band[np.isclose(band[:, 0], x)]
        np.testing.assert_allclose([at[:, 1].min(), at[:, 1].max()], [low, high])
    (identity,) = [line for line in cloud.lines if len(xdata(line)) == 2]
    np.testing.assert_allclose(ydata(identity), [0, hi])
    assert cloud.get_xlim() == (0, hi)
    assert covers(cloud.get_xlim(), [2, 40, 15]) and covers(cloud.get_ylim(), [3, 41, 12, 24])
    assert cloud.get_xlabel() == "chronological age (months)"
    assert cloud.get_ylabel() == "brain age, bias-corrected (months)"
    legend = tick_labels(cloud.get_legend().get_texts())
    assert legend == ["training cohort", "interval", "this child"]
    np.testing.assert_allclose([p.get_width() for p in bars.patches], [1.5, -0.5, 0.25, 3.0])
    assert [p.get_facecolor() for p in bars.patches] == [to_rgba(LOBE_COLOURS[n]) for n in lobes]
    assert tick_labels(bars.get_yticklabels()) == list(lobes)
    assert bars.get_title() == "lobe importance"
    assert bars.get_xlabel() == "ΔAE (months) with the lobe at its age group's level"
    assert covers(bars.get_xlim(), [-0.5, 3.0])
    assert_png_written(out)


def test_new_scan_figure_keeps_a_clipped_interval_and_says_when_no_lobe_was_computed():
    lobes = dict.fromkeys(LOBE_NAMES, float("nan"))  # predict's rows when no age group fits
    fig = plots.new_scan_figure(out_of_fold(), 50.0, 3.0, (0.0, 9.0), lobes)
    cloud, bars = fig.axes
    point, ends = errorbar_parts(cloud.containers[0])
    np.testing.assert_allclose(point, [[50, 3]])
    np.testing.assert_allclose(ends, [[50, 0, 9]])  # the lower end clipped at 0, as given
    assert cloud.get_xlim() == (0, 50 * 1.05)  # the child's age sets the range
    assert not bars.axison and not bars.patches
    assert texts(bars) == ["no lobe importance\n(age outside the age groups)"]
    assert fig._suptitle is None


def test_new_scan_figure_shows_every_training_subject():
    cohort = out_of_fold()
    cohort.loc[0, "corrected_months"] = -3.0
    fig = plots.new_scan_figure(cohort, 15.0, 18.0, (12.0, 24.0), {})
    assert covers(fig.axes[0].get_ylim(), cohort["corrected_months"])


def new_scans_table() -> pd.DataFrame:
    """apps.predict's predictions.csv (the columns the figure reads, and a few others)."""
    deltas = {  # per scan, frontal, parietal, temporal, occipital
        "new-a": [1.0, 2.0, 0.0, -1.0],
        "new-b": [3.0, 0.0, 1.0, 1.0],
        "new-c": [0.5, 0.5, 0.5, 0.5],
        "new-d": [-2.0, 4.0, 1.0, 0.0],
    }
    frame = pd.DataFrame(
        {
            "subject_id": list(deltas),
            "age_months": [5.0, 8.0, 20.0, 30.0],
            "brain_age_months": [6.0, 20.0, 19.0, 33.0],
            "corrected_months": [6.5, 21.0, 18.0, 34.0],
            "interval_low": [0.0, 15.0, 12.0, 28.0],
            "interval_high": [12.5, 27.0, 24.0, 40.0],
            "age_in_interval": [True, False, True, True],
        }
    )
    for k, name in enumerate(LOBE_NAMES):
        frame[f"delta_ae_{name}"] = [d[k] for d in deltas.values()]
    return frame


def test_new_cohort_figure_draws_every_scan_and_the_mean_lobe_importance_per_group(tmp_path):
    table = new_scans_table()
    out = tmp_path / "new_scans.png"
    fig = plots.new_cohort_figure(out_of_fold(), table, EDGES, out=out)
    cloud, bars = fig.axes
    cohort = out_of_fold()[["age_months", "corrected_months"]]
    np.testing.assert_allclose(offsets(cloud.collections[0]), cohort)
    inside, outside = cloud.containers
    point, ends = errorbar_parts(inside)
    np.testing.assert_allclose(point, [[5, 6.5], [20, 18], [30, 34]])
    np.testing.assert_allclose(ends, [[5, 0, 12.5], [20, 12, 24], [30, 28, 40]])
    point, ends = errorbar_parts(outside)
    np.testing.assert_allclose(point, [[8, 21]])
    np.testing.assert_allclose(ends, [[8, 15, 27]])
    assert inside.get_label() == "age within the interval"
    assert outside.get_label() == "age outside the interval"
    assert to_rgba(inside.lines[0].get_color()) == to_rgba("#2c7fb8")
    assert to_rgba(outside.lines[0].get_color()) == to_rgba("#c0392b")
    assert cloud.get_title() == "4 new scans"
    assert cloud.get_xlim() == (0, 40 * 1.05)
    assert covers(cloud.get_ylim(), [3, 41, 0, 40])
    # groups 0-11 (new-a, new-b), 12-23 (new-c), 24-35 (new-d); bars lobe by lobe
    means = {
        "frontal": [2.0, 0.5, -2.0],
        "parietal": [1.0, 0.5, 4.0],
        "temporal": [0.5, 0.5, 1.0],
        "occipital": [0.0, 0.5, 0.0],
    }
    heights = [p.get_height() for p in bars.patches]
    np.testing.assert_allclose(heights, [v for name in LOBE_NAMES for v in means[name]])
    colours = [p.get_facecolor() for p in bars.patches]
    assert colours == [to_rgba(LOBE_COLOURS[name]) for name in LOBE_NAMES for _ in range(3)]
    assert tick_labels(bars.get_xticklabels()) == ["0-11", "12-23", "24-35"]
    assert tick_labels(bars.get_legend().get_texts()) == LOBE_NAMES
    assert bars.get_ylabel() == "mean ΔAE (months)"
    assert covers(bars.get_ylim(), [-2.0, 4.0])
    assert_png_written(out)


# ---- top-voxel sets and their overlap ---------------------------------------------------


def test_top_set_keeps_exactly_the_top_share_of_the_brain_and_jaccard_counts_the_overlap():
    import torch

    from ctbrainage.interpret.attribution import jaccard, top_set

    shape = (2, 3, 4)  # 24 voxels, flat index = position in C order
    maps = torch.zeros(2, *shape)
    brain = torch.zeros(2, *shape, dtype=torch.bool)
    # subject 0: value = flat index; 8 brain voxels, the largest values (20-23) outside it
    maps[0] = torch.arange(24.0).view(shape)
    brain[0].view(-1)[[1, 3, 5, 8, 10, 13, 17, 19]] = True
    # subject 1: all brain; 5 highest, then 2, 9, 14 tied, then zeros and negatives
    flat = maps[1].view(-1)
    flat[[5, 2, 9, 14]] = torch.tensor([3.0, 2.0, 2.0, 2.0])
    flat[[0, 4, 23]] = -1.0
    brain[1] = True

    def indices(chosen):
        return [sorted(torch.nonzero(row.reshape(-1)).flatten().tolist()) for row in chosen]

    eighth = top_set(maps, brain, 0.125)  # round(1.0) of 8 voxels, round(3.0) of 24
    assert eighth.shape == maps.shape and eighth.dtype == torch.bool
    assert indices(eighth) == [[19], [2, 5, 9]]  # ties: the first in voxel order
    share = top_set(maps, brain, 0.3)  # round(2.4) = 2 of 8, round(7.2) = 7 of 24
    assert indices(share) == [[17, 19], [1, 2, 3, 5, 6, 9, 14]]  # zeros before -1, in order
    assert not (share & ~brain).any()
    # brain as 0/1 floats (like the inputs): the same sets
    assert torch.equal(top_set(maps, brain.float(), 0.3), share)

    # |A ∩ B| / |A ∪ B|: {19} vs {17, 19}: 1 / 2; {2, 5, 9} vs 7 voxels holding them: 3 / 7
    np.testing.assert_allclose(jaccard(eighth, share), [1 / 2, 3 / 7])
    a = torch.zeros(3, 10, dtype=torch.bool)
    b = torch.zeros(3, 10, dtype=torch.bool)
    a[0, [0, 1, 2, 3, 4]], b[0, [3, 4, 5, 6]] = True, True  # 2 shared of 7
    a[2, 7], b[2, 8] = True, True  # disjoint
    overlap = jaccard(a, b)
    assert isinstance(overlap, np.ndarray) and overlap.shape == (3,)
    assert overlap[0] == pytest.approx(2 / 7) and np.isnan(overlap[1]) and overlap[2] == 0
    assert jaccard(share, share).tolist() == [1.0, 1.0]


# ---- step 10 ---------------------------------------------------------------------------------
def test_robustness_figures_hold_the_seeds_and_cells_they_are_given():
    runs = pd.DataFrame(
        {"condition": ["noaug_noreg", "noaug_noreg", "aug_reg", "aug_reg"],
         "agreement": [0.1, 0.2, 0.3, 0.4], "faithfulness": [0.5, 0.6, -0.1, 0.0],
         "correctness": [0.2, 0.1, 0.0, 0.3]}
    )  # fmt: skip
    tests = pd.DataFrame({"target": ["faithfulness", "correctness"], "n": [4, 4],
                          "rho": [-0.8, 0.4], "p": [0.2, 0.6]})  # fmt: skip
    fig = plots.robustness_truth_figure(runs, tests)
    left = fig.axes[0]
    points = np.vstack([c.get_offsets() for c in left.collections])
    assert sorted(map(tuple, points.round(2))) == [(0.1, 0.5), (0.2, 0.6), (0.3, -0.1), (0.4, 0.0)]
    assert "ρ = -0.80" in left.get_title()
    agreement = pd.DataFrame(
        {"condition": "aug_reg", "method": "guided_backprop",
         "checkpoint": ["phase1", "best", "last"], "seeds": 3, "seeds_reaching": [2, 3, 3],
         "agreeing_voxels": [50.0, 80.0, 70.0], "seed_agreement": [0.2, 0.3, 0.25],
         "seed_agreement_low": 0.1, "seed_agreement_high": 0.4}
    )  # fmt: skip
    fig = plots.robustness_agreement_figure(agreement, "guided_backprop")
    counts = fig.axes[0].lines[0].get_ydata()
    assert np.isnan(counts[0]) and list(counts[1:]) == [80.0, 70.0]  # phase1: not every seed
    assert list(fig.axes[1].lines[0].get_ydata()) == [0.2, 0.3, 0.25]
    share = pd.DataFrame(
        {"condition": "noaug_noreg", "group": ["0-11"] * 2, "lobe": ["frontal", "occipital"],
         "significant_share": [1.0, 1 / 3], "sign_kept_share": [1.0, 2 / 3]}
    )  # fmt: skip
    fig = plots.robustness_table1_figure(share)
    image = fig.axes[0].images[0].get_array()
    assert list(np.asarray(image)[0].round(3)) == [1.0, 0.333]
    assert [t.get_text() for t in fig.axes[0].texts] == ["100%", "67%"]
