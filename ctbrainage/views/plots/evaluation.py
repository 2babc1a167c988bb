"""Figures of step 04: predictions against the truth, errors, learning curves, the gap."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ctbrainage.views.plots.common import group_palette, save


def predicted_vs_true(
    predictions: pd.DataFrame, edges, column: str = "predicted_months", ax=None, out=None
):
    """Predicted against true age, coloured by age group, with the identity line and the
    fitted line (its slope below 1 is the usual regression to the mean)."""
    from ctbrainage.core.cohort import age_group
    from ctbrainage.stats.evaluate import regression_metrics

    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 5), layout="constrained")
    age, predicted = predictions["age_months"], predictions[column]
    groups = age_group(age, edges)
    for label, colour in group_palette(list(groups.cat.categories)).items():
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
    colours = list(group_palette(list(table.index)).values())
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
    from ctbrainage.stats.evaluate import error_by_age_group

    fig, axes = plt.subplots(1, 3, figsize=(16, 5), layout="constrained")
    predicted_vs_true(predictions, edges, ax=axes[0])
    bland_altman(predictions, ax=axes[1])
    error_by_age_group_bars(error_by_age_group(predictions, edges), ax=axes[2])
    return save(fig, out)


def learning_curves(logs: Mapping[int, pd.DataFrame], out=None):
    """Training (and, when held out, inner-validation) MSE per epoch for each fold: ``logs``
    maps a fold to its Lightning CSV log (``pd.read_csv(layout.learning_curve(k))``)."""
    fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
    for k, log in logs.items():
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
