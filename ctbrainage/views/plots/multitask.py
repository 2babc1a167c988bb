"""Step 11's figures: the input conditions and targets, the multi-task ablation, and the
delayed children's brain-age gap against their planted delay."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ctbrainage.views.plots.common import save

TARGET_COLOURS = {"chronological": "tab:blue", "biological": "tab:orange"}


def multitask_conditions_figure(conditions: pd.DataFrame, ablation: pd.DataFrame, out=None):
    """MAE per fold (points) and its mean (bars) per input condition and target (left), and
    per variant of the multi-task ablation (right)."""
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(11, 3.6), width_ratios=[3, 2], constrained_layout=True
    )
    order = list(dict.fromkeys(conditions["condition"]))
    hue = list(dict.fromkeys(conditions["target"]))
    palette = {t: TARGET_COLOURS[t] for t in hue}
    sns.barplot(conditions, x="condition", y="mae", hue="target", order=order, hue_order=hue,
                palette=palette, errorbar=None, alpha=0.5, ax=left)  # fmt: skip
    sns.stripplot(conditions, x="condition", y="mae", hue="target", order=order, hue_order=hue,
                  palette=palette, dodge=True, legend=False, size=4, jitter=False,
                  ax=left)  # fmt: skip
    left.set(xlabel="input condition", ylabel="MAE against the target (months)")
    left.tick_params(axis="x", labelrotation=15)
    left.set_title("Input conditions: MAE per fold (bars: mean)")
    heads = list(dict.fromkeys(ablation["heads"]))
    sns.barplot(ablation, x="heads", y="mae", order=heads, color="tab:grey", errorbar=None,
                alpha=0.5, ax=right)  # fmt: skip
    sns.stripplot(ablation, x="heads", y="mae", order=heads, color="black", size=4, jitter=False,
                  ax=right)  # fmt: skip
    right.set(xlabel="heads", ylabel="MAE (months)")
    right.tick_params(axis="x", labelrotation=15)
    condition = ablation["condition"].iloc[0] if len(ablation) else ""
    right.set_title(f"Multi-task ablation ({condition})")
    return save(fig, out)


def delayed_figure(delayed: pd.DataFrame, target: str = "chronological", out=None):
    """Per input condition (age-only models, ``target``): each delayed child's brain-age gap
    against its on-time twin's (months) over its planted delay; the dashed line is a gap of
    minus the whole delay. Filled: the whole brain delayed; open: one lobe."""
    rows = delayed[(delayed["heads"] == "age") & (delayed["target"] == target)]
    conditions = list(dict.fromkeys(rows["condition"]))
    fig, axes = plt.subplots(1, len(conditions), figsize=(2.8 * len(conditions), 3.0),
                             sharey=True, squeeze=False, constrained_layout=True)  # fmt: skip
    top = float(rows["planted_delay_months"].max()) if len(rows) else 1.0
    for ax, condition in zip(axes[0], conditions, strict=True):
        part = rows[rows["condition"] == condition]
        whole = part["lobe"] == "all"
        ax.scatter(part.loc[whole, "planted_delay_months"], part.loc[whole, "gap_vs_twin_months"],
                   color="tab:red", label="whole brain")  # fmt: skip
        ax.scatter(part.loc[~whole, "planted_delay_months"],
                   part.loc[~whole, "gap_vs_twin_months"], facecolors="none",
                   edgecolors="tab:red", label="one lobe")  # fmt: skip
        line = np.array([0.0, top * 1.1])
        ax.plot(line, -line, ls="--", color="grey", lw=1)
        ax.axhline(0, color="black", lw=0.6)
        ax.set(title=condition, xlabel="planted delay (months)")
    axes[0, 0].set_ylabel("gap − twin's gap (months)")
    axes[0, -1].legend(fontsize=8, loc="lower left")
    fig.suptitle("Delayed children: the gap the model sees, against the delay planted")
    return save(fig, out)


def channels_figure(inputs, ages: dict[str, float], out=None):
    """The four input channels (columns) of a few children (rows): the middle axial slice of
    step 11's grid."""
    from ctbrainage.imaging.channels import CHANNELS

    ids = list(ages)
    fig, axes = plt.subplots(len(ids), len(CHANNELS), figsize=(2.4 * len(CHANNELS), 2.4 * len(ids)),
                             squeeze=False, constrained_layout=True)  # fmt: skip
    rows = inputs.rows(ids)
    for r, (sid, row) in enumerate(zip(ids, rows, strict=True)):
        for c, name in enumerate(CHANNELS):
            volume = inputs.channels[name][row]
            middle = volume[:, :, volume.shape[2] // 2].T
            shown = axes[r, c].imshow(middle, origin="lower", cmap="gray")
            fig.colorbar(shown, ax=axes[r, c], shrink=0.7)
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(name)
        axes[r, 0].text(-0.1, 0.5, f"{sid}\n{ages[sid]:.0f} months", transform=axes[r, 0].transAxes,
                        ha="right", va="center", fontsize=9)  # fmt: skip
    return save(fig, out)
