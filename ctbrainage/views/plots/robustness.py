"""Step 10's figures: training across seeds and conditions, the agreement of the maps across
seeds per phase, agreement against faithfulness and correctness, and Table 1 across seeds."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ctbrainage.views.plots.common import save

CONDITIONS = ("noaug_noreg", "aug_noreg", "noaug_reg", "aug_reg")
LABELS = {
    "noaug_noreg": "no augmentation, not registered",
    "aug_noreg": "augmentation, not registered",
    "noaug_reg": "no augmentation, registered",
    "aug_reg": "augmentation, registered",
}
STYLE = {  # the paper's Fig. 2: colour = registration, line = augmentation
    "noaug_noreg": ("tab:blue", "--"),
    "aug_noreg": ("tab:blue", "-"),
    "noaug_reg": ("tab:red", "--"),
    "aug_reg": ("tab:red", "-"),
}


def _present(frame: pd.DataFrame) -> list[str]:
    return [c for c in CONDITIONS if c in set(frame["condition"])]


def robustness_curves_figure(curves: pd.DataFrame, checkpoints: pd.DataFrame, out=None):
    """Validation MAE per epoch of every seed (one line each), per condition, with the phase
    thresholds (dotted)."""
    conditions = _present(curves)
    fig, axes = plt.subplots(
        1,
        len(conditions),
        figsize=(3.2 * len(conditions), 3.0),
        sharey=True,
        squeeze=False,
        constrained_layout=True,
    )
    thresholds = checkpoints["threshold_months"].dropna().groupby(checkpoints["checkpoint"]).mean()
    for ax, condition in zip(axes[0], conditions, strict=True):
        colour, line = STYLE[condition]
        for _, run in curves[curves["condition"] == condition].groupby(["seed", "fold"]):
            ax.plot(run["epoch"], run["val_mae_months"], color=colour, ls=line, lw=1, alpha=0.7)
        for value in thresholds:
            ax.axhline(value, color="grey", ls=":", lw=0.8)
        ax.set(title=LABELS[condition], xlabel="epoch")
    axes[0, 0].set_ylabel("validation MAE (months)")
    fig.suptitle("Training of every seed; dotted: the phases' thresholds")
    return save(fig, out)


def robustness_agreement_figure(agreement: pd.DataFrame, method: str, out=None):
    """Per condition along the checkpoints (phases, best, last): the agreeing voxels where every
    seed reached the checkpoint (the count depends on the number of seeds; left) and each seed's
    agreement with the others, mean and 95 % CI over seeds (right) — the paper's Fig. 2."""
    rows = agreement[agreement["method"] == method]
    order = list(dict.fromkeys(rows["checkpoint"]))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4), constrained_layout=True)
    for condition in _present(rows):
        part = rows[rows["condition"] == condition].groupby("checkpoint").mean(numeric_only=True)
        part = part.reindex(order)
        colour, line = STYLE[condition]
        x = np.arange(len(order))
        every = part["agreeing_voxels"].where(part["seeds_reaching"] == part["seeds"])
        left.plot(x, every, color=colour, ls=line, marker="o", label=LABELS[condition])
        right.plot(x, part["seed_agreement"], color=colour, ls=line, marker="o")
        right.fill_between(
            x, part["seed_agreement_low"], part["seed_agreement_high"], color=colour, alpha=0.12
        )
    labels = ("agreeing voxels (every seed there)", "a seed's top 5 % shared with another's")
    for ax, label in zip((left, right), labels, strict=True):
        ax.set_xticks(range(len(order)), order)
        ax.set(xlabel="checkpoint", ylabel=label)
    left.legend(fontsize=7)
    fig.suptitle(f"Agreement of {method.replace('_', ' ')} maps across seeds")
    return save(fig, out)


def robustness_truth_figure(runs: pd.DataFrame, tests: pd.DataFrame, out=None):
    """Each seed's agreement with the other seeds against its faithfulness (ρ with its own
    |s_k|) and its correctness (ρ with the ideal observer), with Spearman's ρ over seeds."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharex=True, constrained_layout=True)
    result = tests.set_index("target")
    for ax, target in zip(axes, ("faithfulness", "correctness"), strict=True):
        for condition in _present(runs):
            part = runs[runs["condition"] == condition]
            colour, line = STYLE[condition]
            ax.scatter(
                part["agreement"],
                part[target],
                color=colour,
                s=28,
                marker="o" if line == "-" else "^",
                label=LABELS[condition],
            )
        rho, p = result.loc[target, "rho"], result.loc[target, "p"]
        ax.set(
            xlabel="a seed's top 5 % shared with another's (best checkpoint)",
            ylabel=f"{target} (Spearman ρ of lobe importance)",
            title=f"{target}: ρ = {rho:.2f}, p = {p:.3f}, n = {result.loc[target, 'n']}",
        )
        ax.axhline(0, color="grey", lw=0.6)
    axes[0].legend(fontsize=7)
    fig.suptitle("Does agreement between seeds mean faithfulness or correctness?")
    return save(fig, out)


def robustness_table1_figure(share: pd.DataFrame, out=None):
    """Per condition, Table 1's cells (age group × lobe): the share of seeds in which the cell
    is significant (colour) and in which it keeps the reference's sign (number)."""
    conditions = _present(share)
    fig, axes = plt.subplots(
        1,
        len(conditions),
        figsize=(3.0 * len(conditions), 2.9),
        squeeze=False,
        constrained_layout=True,
    )
    for ax, condition in zip(axes[0], conditions, strict=True):
        part = share[share["condition"] == condition]
        sig = part.pivot(index="group", columns="lobe", values="significant_share")
        kept = part.pivot(index="group", columns="lobe", values="sign_kept_share")
        lobes = [c for c in ("frontal", "parietal", "temporal", "occipital") if c in sig]
        sig, kept = sig[lobes], kept[lobes]
        image = ax.imshow(sig.to_numpy(float), vmin=0, vmax=1, cmap="Greens")
        for (i, j), value in np.ndenumerate(kept.to_numpy(float)):
            ax.text(j, i, f"{value:.0%}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(lobes)), [lobe[:4] for lobe in lobes])
        ax.set_yticks(range(len(sig.index)), sig.index)
        ax.set_title(LABELS[condition], fontsize=8)
    fig.colorbar(image, ax=axes[0, -1], label="share of seeds significant")
    fig.suptitle("Table 1 across seeds (numbers: share of seeds keeping the reference's sign)")
    return save(fig, out)
