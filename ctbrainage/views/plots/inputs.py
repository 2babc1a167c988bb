"""Figures of the pipeline's inputs (steps 01-02): the synthetic cohort, preprocessing QC, lobe
overlays, brain and lobe volumes vs age."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pandas as pd

from ctbrainage.core.labels import LOBES
from ctbrainage.core.layout import SyntheticLayout
from ctbrainage.imaging import ctio
from ctbrainage.views.plots.common import (
    BRAIN_WINDOW,
    LOBE_COLOURS,
    canonical_slices,
    lobe_colormap,
    save,
)

if TYPE_CHECKING:
    from ctbrainage.imaging.run_arrays import SubjectImage


def synthetic_cohort_figure(
    cohort: SyntheticLayout | str | Path, out=None, ages=(1, 6, 12, 24, 36, 47)
):
    """Subjects across the age range (three planes, brain window), planted vs measured lobe
    white-matter attenuation, and brain volume vs the normative curve. ``cohort``: a generated
    cohort's :class:`~ctbrainage.core.layout.SyntheticLayout` (or its folder)."""
    from ctbrainage.synth.schedule import MaturationSchedule

    layout = cohort if isinstance(cohort, SyntheticLayout) else SyntheticLayout(Path(cohort))
    truth = pd.read_csv(layout.truth_table)
    manifest = pd.read_csv(layout.manifest)
    schedule = MaturationSchedule.from_dict(json.loads(layout.schedule.read_text()))
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
        image = nib.load(layout.root / image_path)
        brain = nib.as_closest_canonical(nib.load(layout.truth_brain(sid)))
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
    hu_array, affine = ctio.sitk_to_ras(hu)
    mask_array, _ = ctio.sitk_to_ras(result.work_mask)
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


def qc_montage(images: Iterable[str | Path | tuple[str, str | Path]], ncols: int = 3, out=None):
    """Tile per-subject QC images: their paths (e.g. ``[layout.qc(s) for s in ids]``) or
    (subject id, path) pairs."""
    paths = [item[1] if isinstance(item, tuple) else item for item in images]
    nrows = max(1, -(-len(paths) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.7 * nrows), layout="constrained")
    for ax in np.atleast_1d(axes).ravel():
        ax.set_axis_off()
    for ax, path in zip(np.atleast_1d(axes).ravel(), paths, strict=False):
        ax.imshow(plt.imread(path))
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


def lobe_overlay_montage(
    subjects: Iterable[SubjectImage], ages: Mapping[str, float] | None = None, out=None, alpha=0.45
):
    """Lobe labels over the model input, three planes per subject (rows). ``subjects``:
    :func:`ctbrainage.imaging.run_arrays.subject_image` with lobe labels; ``ages``: months by
    subject id,
    shown in the row titles."""
    from matplotlib.patches import Patch

    subjects = list(subjects)
    fig, axes = plt.subplots(
        len(subjects), 3, figsize=(7.5, 2.6 * len(subjects)), layout="constrained", squeeze=False
    )
    for row, subject in zip(axes, subjects, strict=True):
        sid, lobes = subject.subject_id, subject.labels
        if lobes is None:
            raise ValueError(f"{sid}: lobe labels missing (run step 02)")
        grid = np.diag([*np.linalg.norm(subject.affine[:3, :3], axis=0), 1.0])  # anatomical axes
        centre = np.argwhere(lobes > 0).mean(axis=0)
        planes = canonical_slices(nib.Nifti1Image(subject.volume, grid), centre)
        labels = canonical_slices(nib.Nifti1Image(lobes, grid), centre)
        for ax, (plane, aspect), (label, _) in zip(row, planes, labels, strict=True):
            ax.imshow(plane, cmap="gray", vmin=0, vmax=1, origin="lower", aspect=aspect)
            ax.imshow(
                label,
                cmap=lobe_colormap(),
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
