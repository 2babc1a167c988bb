"""Figures of step 07: group maps per method, lobe importance against the planted truth, the
randomisation checks."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ctbrainage.core.cohort import age_group
from ctbrainage.core.labels import LOBES
from ctbrainage.views.plots.common import save


def _slice_index(volume: np.ndarray) -> int:
    """The axial slice (last axis) holding the most of ``volume``."""
    return int(np.argmax(volume.reshape(-1, volume.shape[-1]).sum(0)))


def group_maps_figure(maps: Mapping[str, np.ndarray], methods, out=None):
    """Rows: methods; columns: age groups. Each group map (top 10 %, smoothed) over the
    group's mean input, on the axial slice where the map is largest."""
    # the key scheme of step 07's file; torch: only when drawing it
    from ctbrainage.interpret.attribution import MEAN_INPUT, group_map_key, split_group_map_key

    keys = [split_group_map_key(k) for k in maps]
    groups = sorted({g for name, g in keys if name == MEAN_INPUT}, key=_start)
    methods = [m for m in methods if any(group_map_key(m, g) in maps for g in groups)]
    fig, axes = plt.subplots(
        len(methods), len(groups), figsize=(1.9 * len(groups) + 1.2, 1.9 * len(methods)),
        squeeze=False, constrained_layout=True,
    )  # fmt: skip
    for i, method in enumerate(methods):
        for j, group in enumerate(groups):
            ax = axes[i, j]
            ax.set_xticks([]), ax.set_yticks([])
            key = group_map_key(method, group)
            if key not in maps:
                ax.set_axis_off()
                continue
            z = _slice_index(maps[key])
            mean_input = maps[group_map_key(MEAN_INPUT, group)]
            ax.imshow(np.rot90(mean_input[:, :, z]), cmap="gray", vmin=0, vmax=1)
            shown = np.ma.masked_less_equal(np.rot90(maps[key][:, :, z]), 0)
            ax.imshow(shown, cmap="hot", alpha=0.75)
            if i == 0:
                ax.set_title(f"{group} months", fontsize=9)
            if j == 0:
                ax.set_ylabel(method.replace("_", " "), fontsize=9)
    fig.suptitle("Group maps: mean |attribution|, top 10 % of voxels, smoothed", fontsize=10)
    return save(fig, out)


def _start(group: str) -> float:
    return float(group.split("-")[0])


def lobe_importance_figure(
    table: pd.DataFrame, expected: pd.DataFrame | dict | None, edges, out=None
):
    """Per method (and the truth first), mean lobe importance per age group, each group scaled
    to its largest lobe: where a method puts the age information. ``expected``: the planted
    truth (``group, lobe, importance``), or truths by panel title."""
    cells = table.assign(group=age_group(table["age_months"], edges).astype(str))
    cells = cells.groupby(["method", "group", "lobe"], sort=False)["importance"].mean()
    if expected is not None and not isinstance(expected, dict):
        expected = {"planted (Fisher)": expected}
    panels = {
        title: truth.pivot(index="group", columns="lobe", values="importance")
        for title, truth in (expected or {}).items()
    }
    for method in table["method"].unique():
        panels[method] = cells.loc[method].unstack("lobe")
    lobes = list(LOBES.values())
    cols = 4
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 2.3 * rows), squeeze=False,
                             constrained_layout=True)  # fmt: skip
    for ax, (name, grid) in zip(axes.flat, panels.items(), strict=False):
        grid = grid.reindex(index=sorted(grid.index, key=_start), columns=lobes)
        scaled = grid.div(grid.abs().max(axis=1).replace(0, np.nan), axis=0)
        values = scaled.to_numpy(float)
        ax.imshow(values, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
        for r, row in enumerate(values):  # a group without any importance stays blank, unboxed
            if np.isfinite(row).any():
                c = int(np.nanargmax(row))
                ax.add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, lw=2, ec="k"))
        ax.set_xticks(range(len(lobes)), [lobe[:4] for lobe in lobes], fontsize=8)
        ax.set_yticks(range(len(grid)), grid.index, fontsize=8)
        ax.set_title(name.replace("_", " "), fontsize=9)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_axis_off()
    fig.suptitle("Lobe importance per age group (scaled to each group's top lobe, boxed)",
                 fontsize=10)  # fmt: skip
    return save(fig, out)


def sanity_figure(sanity: pd.DataFrame, out=None):
    """Similarity of each method's maps from randomised models to the trained model's, along
    the cascade (top stage first) and for the label-randomised model."""
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 3.8), constrained_layout=True)
    cascade = sanity[sanity["model"] != "random_labels"]
    labels = cascade.drop_duplicates("step").sort_values("step")
    for ax, column, title in zip(
        axes, ("voxel_rho", "lobe_rho"), ("voxel maps", "lobe importances"), strict=True
    ):
        for method, part in cascade.groupby("method", sort=False):
            part = part.sort_values("step")
            if part[column].notna().any():
                ax.plot(part["step"], part[column], marker="o", label=method.replace("_", " "))
        shuffled = sanity[(sanity["model"] == "random_labels") & sanity[column].notna()]
        ax.scatter(np.full(len(shuffled), labels["step"].max() + 1), shuffled[column], marker="x",
                   color="k")  # fmt: skip
        ax.set_xticks(
            [*labels["step"], labels["step"].max() + 1], [*labels["model"], "random\nlabels"],
            rotation=45, fontsize=8,
        )  # fmt: skip
        ax.axhline(0.5, color="grey", ls="--", lw=1)
        lowest = np.nanmin(sanity[column].to_numpy(float), initial=0.0)
        ax.set_ylim(min(-0.5, lowest - 0.05), 1.05)  # a strongly negative ρ stays in view
        ax.set_ylabel(f"Spearman ρ with the trained model's {title}")
        ax.set_title(f"{title}: randomised up to …", fontsize=10)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    return save(fig, out)


def unoise_curves_figure(training: pd.DataFrame, out=None):
    """U-Noise's validation loss per epoch of the noise phase: the candidates on fold 0 (the
    chosen one bold) and every fold's training (train dashed, validation solid, best epoch
    marked)."""
    noise = training[training["phase"] == "noise"]
    candidates = noise[noise["role"] == "candidate"]
    panels = [("candidates (fold 0)", candidates)] if not candidates.empty else []
    panels.append(("each fold's training", noise[noise["role"] == "fold"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 3.6), squeeze=False,
                             constrained_layout=True)  # fmt: skip
    for ax, (title, part) in zip(axes[0], panels, strict=True):
        by = ["r", "v_min", "v_max"] if part is candidates else ["fold"]
        for key, curve in part.groupby(by, sort=False):
            label = (f"r {key[0]:g}, v {key[1]:g}–{key[2]:g}" if part is candidates
                     else f"fold {key[0]}")  # fmt: skip
            bold = part is candidates and bool(curve["chosen"].iloc[0])
            line = ax.plot(curve["epoch"], curve["val_loss"], lw=2.5 if bold else 1.2,
                           label=label + (" (chosen)" if bold else ""))[0]  # fmt: skip
            if part is not candidates:
                ax.plot(curve["epoch"], curve["train_loss"], ls="--", lw=1, color=line.get_color())
            best = curve[curve["best"].astype(bool)]
            ax.scatter(best["epoch"], best["val_loss"], color=line.get_color(), zorder=3)
        ax.set_xlabel("epoch (noise phase)")
        ax.set_ylabel("loss (age error in years² − r · mean log m)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    return save(fig, out)
