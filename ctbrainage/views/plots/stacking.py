"""Step 08's figures: the stacked models' predictions, and per age group the synthesised
channel and where each encoder looks (Grad-CAM)."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ctbrainage.views.plots.common import save

BRAIN_LEVEL = 0.02  # a group's mean CT input above this is brain (the input is 0 outside)
LAYERS = {  # maps.npz layer → column title
    "ct": "CT input",
    "maturity": "planted maturity",
    "synthesised": "synthesised map",
    "gradcam_T": "Grad-CAM of T",
    "gradcam_A": "Grad-CAM of A",
}


def stacking_figure(predictions: pd.DataFrame, table: pd.DataFrame, out=None):
    """Predicted against chronological age for each encoder and each stacked model
    (out-of-fold; the stacked ones cross-fitted), with its MAE."""
    encoders = [c for c in ("T", "A", "T2") if c in predictions]
    stacked = [c.removeprefix("stacked_") for c in predictions if c.startswith("stacked_")]
    panels = [(f"{e} encoder", e) for e in encoders] + [(m, f"stacked_{m}") for m in stacked]
    mae = dict(zip(table["model"], table["mae"], strict=True))
    columns = 4
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.1 * columns, 3.0 * rows),
                             squeeze=False, constrained_layout=True)  # fmt: skip
    age = predictions["age_months"]
    values = predictions[[c for _, c in panels]]
    top = float(max(age.max(), values.max().max())) + 2
    lowest = float(values.min().min())
    bottom = 0.0 if lowest >= 0 else lowest - 2  # a stack may predict below 0 months
    for ax, (name, column) in zip(axes.flat, panels, strict=False):
        ax.scatter(age, predictions[column], s=9, alpha=0.7)
        ax.plot([bottom, top], [bottom, top], color="grey", lw=0.8)
        ax.set(xlim=(0, top), ylim=(bottom, top), title=f"{name}: MAE {mae[name]:.2f} months")
        ax.set_xlabel("age (months)")
        ax.set_ylabel("predicted (months)")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_axis_off()
    fig.suptitle("Encoders T (CT), A (synthesised map), T2 (CT, other seed) and their stacks")
    return save(fig, out)


def stacking_maps_figure(maps: Mapping[str, np.ndarray], out=None):
    """Rows: age groups; columns: the group's mean CT input, planted and synthesised maturity,
    and the mean Grad-CAM of each encoder over the input (inside the brain), on the axial
    slice with the most brain."""
    from ctbrainage.interpret.attribution import group_map_key, split_group_map_key  # torch

    groups = {split_group_map_key(k)[1] for k in maps}
    groups = sorted(groups, key=lambda g: float(g.split("-")[0]))
    fig, axes = plt.subplots(len(groups), len(LAYERS), squeeze=False, constrained_layout=True,
                             figsize=(2.0 * len(LAYERS), 2.0 * len(groups)))  # fmt: skip
    for i, group in enumerate(groups):
        ct = maps[group_map_key("ct", group)]
        z = int(np.argmax((ct > 0.05).sum((0, 1))))
        for j, (layer, title) in enumerate(LAYERS.items()):
            ax = axes[i, j]
            ax.set_xticks([]), ax.set_yticks([])
            image = np.rot90(maps[group_map_key(layer, group)][:, :, z])
            if layer.startswith("gradcam"):
                ax.imshow(np.rot90(ct[:, :, z]), cmap="gray", vmin=0, vmax=1)
                outside = np.rot90(ct[:, :, z]) <= BRAIN_LEVEL
                ax.imshow(np.ma.masked_where(outside | (image <= 0), image), cmap="hot", alpha=0.7)
            else:
                ax.imshow(image, cmap="gray" if layer == "ct" else "viridis", vmin=0, vmax=1)
            if i == 0:
                ax.set_title(title, fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{group} months", fontsize=9)
    fig.suptitle(
        "Age-group means (test folds): the second channel and where each encoder looks", fontsize=10
    )
    return save(fig, out)
