"""Figures. Every function returns the Figure and saves it when given an output path."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pandas as pd

from ctbrainage import io
from ctbrainage.lobes import LOBES

LOBE_COLOURS = {
    "frontal": "#1f77b4",
    "parietal": "#2ca02c",
    "temporal": "#d62728",
    "occipital": "#9467bd",
}
BRAIN_WINDOW = (0.0, 80.0)  # HU: window 80, level 40


def save(fig: plt.Figure, out: str | Path | None, dpi: int = 110) -> plt.Figure:
    """Save atomically when ``out`` is given; return the figure."""
    if out is not None:
        with io.atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=Path(out).suffix[1:] or "png")
    return fig


def canonical_slices(image: nib.Nifti1Image, centre_ijk=None):
    """Axial, coronal and sagittal slices (RAS display orientation) through ``centre_ijk``
    (voxel index in the canonical image; default the middle), with their pixel aspect ratios."""
    canon = nib.as_closest_canonical(image)
    data = np.asarray(canon.dataobj)
    zooms = canon.header.get_zooms()[:3]
    c = np.array(data.shape) // 2 if centre_ijk is None else np.asarray(centre_ijk, int)
    return [
        (data[:, :, c[2]].T, zooms[1] / zooms[0]),  # axial: x right-left, y up = anterior
        (data[:, c[1], :].T, zooms[2] / zooms[0]),  # coronal
        (data[c[0], :, :].T, zooms[2] / zooms[1]),  # sagittal
    ]


def synthetic_cohort_figure(cohort_dir: str | Path, out=None, ages=(1, 6, 12, 24, 36, 47)):
    """Subjects across the age range (three planes, brain window), planted vs measured lobe
    white-matter attenuation, and brain volume vs the normative curve."""
    from ctbrainage.synth.schedule import MaturationSchedule

    cohort = Path(cohort_dir)
    truth = pd.read_csv(cohort / "truth.csv")
    manifest = pd.read_csv(cohort / "cohort.csv")
    schedule = MaturationSchedule.from_dict(json.loads((cohort / "schedule.json").read_text()))
    picks = []
    for age in ages:
        row = truth.iloc[(truth["age_months"] - age).abs().argsort().iloc[0]]
        if row["subject_id"] not in picks:
            picks.append(row["subject_id"])

    fig = plt.figure(figsize=(2.3 * len(picks), 11.5), layout="constrained")
    grid = fig.add_gridspec(4, len(picks), height_ratios=[1, 0.8, 0.8, 1.5])
    for col, sid in enumerate(picks):
        rec = truth.set_index("subject_id").loc[sid]
        image_path = manifest.set_index("subject_id").loc[sid, "image"]
        image = nib.load(cohort / image_path)
        brain = nib.as_closest_canonical(nib.load(cohort / "truth" / f"{sid}_brain.nii.gz"))
        centre = np.argwhere(np.asarray(brain.dataobj) > 0).mean(axis=0)
        for row, (plane, aspect) in enumerate(canonical_slices(image, centre)):
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(
                plane,
                cmap="gray",
                vmin=BRAIN_WINDOW[0],
                vmax=BRAIN_WINDOW[1],
                origin="lower",
                aspect=aspect,
                interpolation="antialiased",
            )
            ax.set_axis_off()
            if row == 0:
                ax.set_title(
                    f"{rec['age_months']:.0f} mo, {rec['sex']}, site {rec['site']}", fontsize=10
                )
    bottom = grid[3, :].subgridspec(1, 2, width_ratios=[1.4, 1])
    ax = fig.add_subplot(bottom[0])
    ages_line = np.linspace(0, 48, 200)
    for name in LOBES.values():
        colour = LOBE_COLOURS[name]
        ax.plot(
            ages_line,
            schedule.wm_hu(name, ages_line),
            color=colour,
            lw=2,
            label=f"{name} (planted)",
        )
        measured = truth[f"wm_hu_measured_{name}"] - truth["site_offset_hu"]
        ax.scatter(truth["age_months"], measured, s=9, color=colour, alpha=0.6)
    ax.set_xlabel("age (months)")
    ax.set_ylabel("white-matter attenuation (HU)")
    ax.set_title(
        "Planted schedule (lines) and measured lobe white matter (dots, site offset removed)",
        fontsize=9,
    )
    ax.legend(fontsize=8, ncol=2)
    brain_volume_vs_age(truth, ax=fig.add_subplot(bottom[1]), label="measured")
    fig.suptitle("Synthetic pediatric head-CT cohort (brain window W80/L40)", fontsize=12)
    return save(fig, out)


def _planes_with_outline(axes_row, image: nib.Nifti1Image, mask: nib.Nifti1Image, window, label):
    centre = np.argwhere(np.asarray(nib.as_closest_canonical(mask).dataobj) > 0).mean(axis=0)
    views = zip(canonical_slices(image, centre), canonical_slices(mask, centre), strict=True)
    for ax, ((plane, aspect), (outline, _)) in zip(axes_row, views, strict=True):
        ax.imshow(plane, cmap="gray", vmin=window[0], vmax=window[1], origin="lower", aspect=aspect)
        ax.contour(outline, levels=[0.5], colors="#ff5a36", linewidths=0.7)
        ax.set_axis_off()
    axes_row[0].set_title(label, fontsize=9, loc="left")


def preprocess_qc_figure(native, result, title: str = "", out=None):
    """Before (native HU, brain window, brain outline) and after (model input) in three planes."""
    import SimpleITK as sitk

    fig, axes = plt.subplots(2, 3, figsize=(9, 6.2), layout="constrained")
    hu = sitk.Resample(native, result.work_mask, sitk.Transform(), sitk.sitkLinear, -1024.0)
    hu_array, affine = io.sitk_to_ras(hu)
    mask_array, _ = io.sitk_to_ras(result.work_mask)
    _planes_with_outline(
        axes[0],
        nib.Nifti1Image(hu_array.astype(np.float32), affine),
        nib.Nifti1Image(mask_array, affine),
        BRAIN_WINDOW,
        "native (W80/L40) with the brain mask",
    )
    grid = np.diag([*np.linalg.norm(result.affine[:3, :3], axis=0), 1.0])  # anatomical axes
    _planes_with_outline(
        axes[1],
        nib.Nifti1Image(result.image, grid),
        nib.Nifti1Image(result.brain, grid),
        (0.0, 1.0),
        "model input (P-tile normalised, anatomical axes)",
    )
    fig.suptitle(
        f"{title}  brain {result.brain_volume_ml:.0f} mL  "
        f"P-tile {result.ptile_hu[0]:.0f}-{result.ptile_hu[1]:.0f} HU",
        fontsize=10,
    )
    return save(fig, out, dpi=80)


def qc_montage(run_dir: str | Path, subject_ids, ncols: int = 3, out=None):
    """Tile the per-subject QC images (``qc/<id>.png``) of a run."""
    run = Path(run_dir)
    ids = list(subject_ids)
    nrows = max(1, -(-len(ids) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.7 * nrows), layout="constrained")
    for ax in np.atleast_1d(axes).ravel():
        ax.set_axis_off()
    for ax, sid in zip(np.atleast_1d(axes).ravel(), ids, strict=False):
        ax.imshow(plt.imread(run / "qc" / f"{sid}.png"))
    return save(fig, out)


def brain_volume_vs_age(table: pd.DataFrame, out=None, ax=None, label="skull-stripped"):
    """Brain volume against age (columns ``age_months``, ``brain_volume_ml``, optional ``sex``),
    with the normative median curve (cuMIP intracranial volume × brain fraction)."""
    from ctbrainage.synth import norms

    if ax is None:
        fig, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
    sexes = table["sex"].fillna("") if "sex" in table else pd.Series("", index=table.index)
    for sex, marker in (("F", "o"), ("M", "s"), ("", "^")):
        part = table[sexes == sex]
        if len(part):
            ax.scatter(
                part["age_months"],
                part["brain_volume_ml"],
                s=14,
                marker=marker,
                alpha=0.7,
                label=f"{sex or 'sex unknown'}: {label}",
            )
    ages = np.linspace(0, 48, 100)
    for sex in ("F", "M"):
        norm = [norms.brain_fraction(a) * norms.intracranial_volume_ml(a, sex) for a in ages]
        ax.plot(ages, norm, lw=1.5, label=f"{sex}: norm (cuMIP ICV × brain fraction)")
    ax.set_xlabel("age (months)")
    ax.set_ylabel("brain volume (mL)")
    ax.legend(fontsize=8)
    return ax.figure if out is None else save(ax.figure, out)


def _lobe_colormap():
    from matplotlib.colors import ListedColormap

    return ListedColormap([(0, 0, 0, 0)] + [LOBE_COLOURS[name] for name in LOBES.values()])


def lobe_overlay_montage(run_dir: str | Path, subject_ids, ages=None, out=None, alpha=0.45):
    """Lobe labels over the model input, three planes per subject (rows)."""
    from matplotlib.patches import Patch

    run = Path(run_dir)
    ids = list(subject_ids)
    fig, axes = plt.subplots(
        len(ids), 3, figsize=(7.5, 2.6 * len(ids)), layout="constrained", squeeze=False
    )
    for row, sid in zip(axes, ids, strict=True):
        image = nib.load(run / "preprocessed" / f"{sid}.nii.gz")
        grid = np.diag([*np.linalg.norm(image.affine[:3, :3], axis=0), 1.0])  # anatomical axes
        lobes = np.asarray(nib.load(run / "lobes" / f"{sid}.nii.gz").dataobj)
        centre = np.argwhere(lobes > 0).mean(axis=0)
        planes = canonical_slices(nib.Nifti1Image(np.asarray(image.dataobj), grid), centre)
        labels = canonical_slices(nib.Nifti1Image(lobes, grid), centre)
        for ax, (plane, aspect), (label, _) in zip(row, planes, labels, strict=True):
            ax.imshow(plane, cmap="gray", vmin=0, vmax=1, origin="lower", aspect=aspect)
            ax.imshow(
                label,
                cmap=_lobe_colormap(),
                vmin=0,
                vmax=4,
                alpha=alpha,
                origin="lower",
                aspect=aspect,
                interpolation="nearest",
            )
            ax.set_axis_off()
        age = "" if ages is None else f", {ages[sid]:.0f} months"
        row[0].set_title(f"{sid}{age}", fontsize=9, loc="left")
    handles = [Patch(color=LOBE_COLOURS[n], label=n) for n in LOBES.values()]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=8)
    return save(fig, out)


def lobe_volumes_vs_age(table: pd.DataFrame, out=None):
    """Lobe volumes (columns ``<lobe>_ml``) against ``age_months``."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
    for name in LOBES.values():
        ax.scatter(
            table["age_months"],
            table[f"{name}_ml"],
            s=12,
            alpha=0.7,
            color=LOBE_COLOURS[name],
            label=name,
        )
    ax.set_xlabel("age (months)")
    ax.set_ylabel("lobe volume (mL)")
    ax.legend(fontsize=8)
    return save(fig, out)


# ---- 04_evaluate ------------------------------------------------------------------------------
def _group_palette(labels) -> dict:
    import seaborn as sns

    return dict(zip(labels, sns.color_palette("viridis", len(labels)), strict=True))


def predicted_vs_true(
    predictions: pd.DataFrame, edges, column: str = "predicted_months", ax=None, out=None
):
    """Predicted against true age, coloured by age group, with the identity line and the
    fitted line (its slope below 1 is the usual regression to the mean)."""
    from ctbrainage.cohort import age_group
    from ctbrainage.evaluate import regression_metrics

    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 5), layout="constrained")
    age, predicted = predictions["age_months"], predictions[column]
    groups = age_group(age, edges)
    for label, colour in _group_palette(list(groups.cat.categories)).items():
        part = groups == label
        ax.scatter(age[part], predicted[part], s=16, color=colour, label=f"{label} months")
    lo, hi = float(edges[0]), float(edges[-1])
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="identity")
    slope, intercept = np.polyfit(age, predicted, 1)
    ax.plot(
        [lo, hi],
        [intercept + slope * lo, intercept + slope * hi],
        "r-",
        lw=1,
        label=f"fit (slope {slope:.2f})",
    )
    m = regression_metrics(age, predicted)
    ax.text(
        0.03,
        0.97,
        f"MAE {m['mae']:.2f} · RMSE {m['rmse']:.2f} months\nr {m['r']:.3f}",
        transform=ax.transAxes,
        va="top",
        fontsize=9,
    )
    ax.set(
        xlabel="true age (months)", ylabel="predicted age (months)", xlim=(lo, hi), aspect="equal"
    )
    ax.legend(fontsize=8, loc="lower right")
    return ax.figure if out is None else save(ax.figure, out)


def bland_altman(predictions: pd.DataFrame, column: str = "predicted_months", ax=None, out=None):
    """Difference (predicted − true) against the mean of both, with the mean difference and the
    95 % limits of agreement (± 1.96 SD)."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 4), layout="constrained")
    age, predicted = predictions["age_months"], predictions[column]
    mean, diff = (age + predicted) / 2, predicted - age
    bias, sd = diff.mean(), diff.std(ddof=1)
    ax.scatter(mean, diff, s=14, alpha=0.7, color="0.3")
    for level, style, text in (
        (bias, "-", "mean"),
        (bias + 1.96 * sd, "--", "+1.96 SD"),
        (bias - 1.96 * sd, "--", "−1.96 SD"),
    ):
        ax.axhline(level, color="tab:red", ls=style, lw=1)
        ax.text(ax.get_xlim()[1], level, f" {text} {level:+.1f}", va="center", fontsize=8)
    ax.set(
        xlabel="mean of true and predicted age (months)",
        ylabel="predicted − true (months)",
        title="Bland–Altman",
    )
    return ax.figure if out is None else save(ax.figure, out)


def error_by_age_group_bars(table: pd.DataFrame, ax=None, out=None):
    """MAE per age group (a table from ``evaluate.error_by_age_group``), with n on each bar."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 4), layout="constrained")
    colours = list(_group_palette(list(table.index)).values())
    bars = ax.bar(table.index.astype(str), table["mae"], color=colours)
    for bar, n in zip(bars, table["n"], strict=True):
        ax.text(
            bar.get_x() + bar.get_width() / 2,
            bar.get_height(),
            f"n={n}",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set(xlabel="age group (months)", ylabel="MAE (months)", title="error per age group")
    return ax.figure if out is None else save(ax.figure, out)


def evaluation_figure(predictions: pd.DataFrame, edges, out=None):
    """Predicted vs true, Bland–Altman and MAE per age group side by side."""
    from ctbrainage.evaluate import error_by_age_group

    fig, axes = plt.subplots(1, 3, figsize=(16, 5), layout="constrained")
    predicted_vs_true(predictions, edges, ax=axes[0])
    bland_altman(predictions, ax=axes[1])
    error_by_age_group_bars(error_by_age_group(predictions, edges), ax=axes[2])
    return save(fig, out)


def learning_curves(run_dir: str | Path, folds, out=None):
    """Training (and, when held out, inner-validation) MSE per epoch for each fold, from the
    Lightning CSV logs in ``logs/fold<k>/``."""
    fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
    for k in folds:
        log = pd.read_csv(Path(run_dir) / "logs" / f"fold{k}" / "version_0" / "metrics.csv")
        colour = f"C{k}"
        for column, style in (("train_loss", "-"), ("val_loss", ":")):
            if column in log:
                curve = log.dropna(subset=[column])
                ax.plot(
                    curve["epoch"] + 1,
                    curve[column],
                    style,
                    color=colour,
                    label=f"fold {k} {column.split('_')[0]}",
                )
    ax.set(
        xlabel="epoch", ylabel="MSE (age scaled to [0, 1])", yscale="log", title="learning curves"
    )
    ax.legend(fontsize=7, ncols=2)
    return save(fig, out)


def brain_age_gap_figure(gaps: pd.DataFrame, out=None):
    """Brain-age gap against age before and after the linear bias correction."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True, layout="constrained")
    for ax, column, title in (
        (axes[0], "gap", "raw"),
        (axes[1], "gap_corrected", "bias-corrected (fitted outside the fold)"),
    ):
        ax.scatter(gaps["age_months"], gaps[column], s=14, alpha=0.7)
        slope, intercept = np.polyfit(gaps["age_months"], gaps[column], 1)
        ages = np.array([gaps["age_months"].min(), gaps["age_months"].max()])
        ax.plot(ages, intercept + slope * ages, "r-", lw=1, label=f"trend {slope:+.2f}/month")
        ax.axhline(0, color="k", lw=0.8)
        ax.set(xlabel="age (months)", title=f"brain-age gap, {title}")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("predicted − true (months)")
    return save(fig, out)
