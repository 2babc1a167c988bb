"""Figures of steps 05-06: what masking each lobe does to the error, per age group and over age,
and how it compares with the importance planted in a synthetic cohort."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pandas as pd

from ctbrainage.core.labels import LOBES
from ctbrainage.views.plots.common import LOBE_COLOURS, canonical_slices, group_palette, save

if TYPE_CHECKING:
    from ctbrainage.imaging.run_arrays import SubjectImage

# how each expected-importance definition of the schedule reads on an axis
DEFINITION_LABELS = {
    "fisher": "Fisher information, (dHU/dage)² / σ²",
    "hu_slope_x_wm_share": "|dHU/dage| × white-matter share",
}


def _labels(subject: SubjectImage) -> np.ndarray:
    if subject.labels is None:
        raise ValueError(f"{subject.subject_id}: lobe labels missing (run step 02)")
    return subject.labels


def _anatomical_grid(subject: SubjectImage) -> np.ndarray:
    """The subject's voxel sizes as a diagonal affine: slices along the voxel axes."""
    return np.diag([*np.linalg.norm(subject.affine[:3, :3], axis=0), 1.0])


def _grid(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """(lobe × group) pivot of a long stats table, lobes in label order, groups in age order."""
    groups = list(dict.fromkeys(table.sort_values("start")["group"]))
    return table.pivot(index="lobe", columns="group", values=column).loc[
        list(LOBES.values()), groups
    ]


def table1_heatmap(table: pd.DataFrame, out=None):
    """Mean ΔAE per lobe and age group, annotated with the value and Table 1's markers
    (* significant, † small, ‡ medium, § large effect)."""
    import seaborn as sns

    values = _grid(table, "mean_delta_ae")
    markers = _grid(table, "marker").fillna("")
    text = values.map(lambda v: "—" if np.isnan(v) else f"{v:.2f}") + markers
    fig, ax = plt.subplots(figsize=(1.6 * values.shape[1] + 2, 3.6), layout="constrained")
    limit = np.nanmax(np.abs(values.to_numpy())) or 1.0
    sns.heatmap(
        values,
        annot=text,
        fmt="",
        cmap="RdBu_r",
        vmin=-limit,
        vmax=limit,
        ax=ax,
        cbar_kws={"label": "mean ΔAE (months)"},
        linewidths=0.5,
    )
    ax.set(xlabel="age group (months)", ylabel="masked lobe", title="Table 1: ΔAE when masked")
    return save(fig, out)


def importance_trajectory(windows: pd.DataFrame, out=None):
    """Mean ΔAE of each lobe over age (sliding windows, plotted at their centres), with the
    bootstrap 95 % CI as a band."""
    fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    for lobe in LOBES.values():
        part = windows[windows["lobe"] == lobe].sort_values("start")
        centre = (part["start"] + part["end"]) / 2
        colour = LOBE_COLOURS[lobe]
        ax.plot(centre, part["mean_delta_ae"], "-o", ms=3, color=colour, label=lobe)
        ax.fill_between(centre, part["ci_low"], part["ci_high"], color=colour, alpha=0.15)
    ax.axhline(0, color="k", lw=0.8)
    ax.set(
        xlabel="age (months, window centre)",
        ylabel="mean ΔAE (months)",
        title="importance of each lobe over development",
    )
    ax.legend(fontsize=8)
    return save(fig, out)


def delta_ae_distributions(errors: pd.DataFrame, edges, out=None):
    """ΔAE of every subject per lobe and age group (``stats.subject_lobe_errors``): boxes with
    the subjects as points."""
    import seaborn as sns

    from ctbrainage.core.cohort import age_group

    data = errors.assign(group=age_group(errors["age_months"], edges))
    palette = group_palette(list(data["group"].cat.categories))
    fig, ax = plt.subplots(figsize=(9, 4.2), layout="constrained")
    order = list(LOBES.values())
    common = {"data": data, "x": "lobe", "y": "delta_ae", "hue": "group", "order": order,
              "palette": palette, "ax": ax}  # fmt: skip
    sns.boxplot(**common, showfliers=False)
    sns.stripplot(**common, dodge=True, size=2.5, alpha=0.5, legend=False)
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xlabel="masked lobe", ylabel="ΔAE (months)", title="ΔAE per subject")
    ax.legend(title="age group (months)", fontsize=8)
    return save(fig, out)


def importance_on_brain(subject: SubjectImage, table: pd.DataFrame, out=None):
    """The lobes of one subject's axial slice painted by their mean ΔAE (``table``: the long
    Table 1, one panel per age group): where the model's age information sits as children
    grow. ``subject``: :func:`ctbrainage.imaging.run_arrays.subject_image`, with lobe labels."""
    lobes = _labels(subject)
    grid = _anatomical_grid(subject)
    centre = np.argwhere(lobes > 0).mean(axis=0)
    centre[2] += 0.15 * np.ptp(np.argwhere(lobes > 0)[:, 2])  # above the temporal poles
    (plane, aspect), *_ = canonical_slices(nib.Nifti1Image(subject.volume, grid), centre)
    (labels, _), *_ = canonical_slices(nib.Nifti1Image(lobes, grid), centre)
    values = _grid(table, "mean_delta_ae")
    limit = np.nanmax(np.abs(values.to_numpy())) or 1.0
    fig, axes = plt.subplots(
        1, values.shape[1], figsize=(3 * values.shape[1], 3.4), layout="constrained"
    )
    for ax, group in zip(np.atleast_1d(axes), values.columns, strict=True):
        painted = np.full(labels.shape, np.nan)
        for index, name in LOBES.items():
            painted[labels == index] = values.loc[name, group]
        ax.imshow(plane, cmap="gray", vmin=0, vmax=1, origin="lower", aspect=aspect)
        shown = ax.imshow(
            painted,
            cmap="RdBu_r",
            vmin=-limit,
            vmax=limit,
            origin="lower",
            aspect=aspect,
            interpolation="nearest",
            alpha=0.8,
        )
        ax.set_title(f"{group} months", fontsize=9)
        ax.set_axis_off()
    fig.colorbar(shown, ax=axes, label="mean ΔAE (months)", shrink=0.8)
    return save(fig, out)


def planted_vs_measured(measured: pd.DataFrame, expected: pd.DataFrame, out=None):
    """Measured mean ΔAE against the importance planted in the synthetic cohort, per lobe
    (colour) and age group (panel order), with each group's lobe ranking side by side."""
    cells = measured.merge(expected[["group", "lobe", "importance"]], on=["group", "lobe"])
    groups = list(dict.fromkeys(cells.sort_values("start")["group"]))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    markers = dict(zip(groups, "osD^v<>p*h", strict=False))
    for _, row in cells.iterrows():
        axes[0].scatter(
            row["importance"],
            row["mean_delta_ae"],
            color=LOBE_COLOURS[row["lobe"]],
            marker=markers[row["group"]],
            s=45,
        )
    for lobe in LOBES.values():
        axes[0].scatter([], [], color=LOBE_COLOURS[lobe], label=lobe)
    for group in groups:
        axes[0].scatter([], [], color="0.4", marker=markers[group], label=f"{group} months")
    definition = expected["definition"].iloc[0] if "definition" in expected else "planted"
    axes[0].set(
        xlabel=f"planted importance ({DEFINITION_LABELS.get(definition, definition)})",
        ylabel="measured mean ΔAE (months)",
        title="planted vs measured",
    )
    axes[0].legend(fontsize=7, ncols=2)
    width = 0.8 / len(LOBES)
    x = np.arange(len(groups))
    for i, lobe in enumerate(LOBES.values()):
        part = cells[cells["lobe"] == lobe].set_index("group").loc[groups]
        share = part["importance"] / cells.groupby("group")["importance"].sum().loc[groups]
        found = part["mean_delta_ae"].clip(lower=0)
        found = (
            found
            / cells.groupby("group")["mean_delta_ae"]
            .apply(lambda v: v.clip(lower=0).sum() or 1.0)
            .loc[groups]
        )
        axes[1].bar(x + i * width, share, width, color=LOBE_COLOURS[lobe], alpha=0.35)
        axes[1].bar(x + i * width, found, width * 0.45, color=LOBE_COLOURS[lobe], label=lobe)
    axes[1].set_xticks(x + 0.4 - width / 2, [f"{g}" for g in groups])
    axes[1].set(
        xlabel="age group (months)",
        ylabel="share within the group",
        title="planted (wide, pale) vs measured (narrow) share",
    )
    axes[1].legend(fontsize=8)
    return save(fig, out)


def perturbed_slices(subject: SubjectImage, filled: Mapping[str, np.ndarray], title: str, out=None):
    """One subject's model input and its lobe-masked variants, axial slice through the brain:
    what the model sees in step 05. ``filled``: lobe name → the input with that lobe filled
    (on-disk voxel order; :func:`ctbrainage.interpret.perturb.filled_volumes`, e.g. the first
    repeat);
    ``title``: the figure's title, e.g. ``f"{subject_id}: {fill} fill"``."""
    labels = _labels(subject)
    panels = {"original": subject.volume}
    for name, volume in filled.items():
        if np.shape(volume) != subject.volume.shape:
            raise ValueError(
                f"{subject.subject_id}: the {name} volume {np.shape(volume)} does not match"
                f" the input {subject.volume.shape}"
            )
        panels[f"{name} masked"] = np.asarray(volume)
    grid = _anatomical_grid(subject)
    centre = np.argwhere(labels > 0).mean(axis=0)
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3), layout="constrained")
    for ax, (name, array) in zip(np.atleast_1d(axes), panels.items(), strict=True):
        (plane, aspect), *_ = canonical_slices(nib.Nifti1Image(array, grid), centre)
        ax.imshow(plane, cmap="gray", vmin=0, vmax=1, origin="lower", aspect=aspect)
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    return save(fig, out)


def fill_contrast_figure(perturbation: pd.DataFrame, out=None):
    """Signed prediction change against the fill's contrast (fill mean − lobe mean, model-input
    units), one point per subject and lobe, coloured by lobe, with each lobe's Spearman ρ."""
    from ctbrainage.stats.lobe_tests import fill_contrast, fill_contrast_points

    association = fill_contrast(perturbation)
    points = fill_contrast_points(perturbation)
    fig, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
    for lobe, part in points.groupby("lobe", sort=False):
        r = association["by_lobe"][lobe]["rho"]
        ax.scatter(
            part["contrast"],
            part["signed_change"],
            s=14,
            alpha=0.7,
            color=LOBE_COLOURS.get(lobe),
            label=f"{lobe} (ρ {r:.2f})",
        )
    ax.axhline(0, color="0.6", lw=0.8)
    ax.axvline(0, color="0.6", lw=0.8)
    ax.set(
        xlabel="fill contrast: fill mean − lobe mean (model input units)",
        ylabel="prediction change (months)",
        title=f"masking moves the prediction with the fill's contrast "
        f"(ρ {association['all']['rho']:.2f})",
    )
    ax.legend(fontsize=8)
    return save(fig, out)
