"""Figures of brain age for new scans (:mod:`ctbrainage.apps.predict`)."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ctbrainage.views.plots.common import LOBE_COLOURS, save


def new_scan_figure(
    out_of_fold: pd.DataFrame,
    age_months: float,
    brain_age: float,
    interval: tuple[float, float],
    lobes: Mapping[str, float],
    title: str = "",
    out=None,
):
    """Left: the child's bias-corrected brain age and its interval on the training cohort's
    out-of-fold cloud (the band: the interval's half-width around the identity line).
    Right: each lobe's ΔAE (months) when its level is set to the age group's (empty when none
    was computed)."""
    fig, (cloud, bars) = plt.subplots(
        1, 2, figsize=(9.5, 4), gridspec_kw={"width_ratios": [1.4, 1]}, constrained_layout=True
    )
    ages = out_of_fold["age_months"]
    cloud.scatter(ages, out_of_fold["corrected_months"], s=10, c="0.65", label="training cohort")
    hi = max(float(ages.max()), age_months, interval[1]) * 1.05
    line = np.array([0.0, hi])
    half = interval[1] - brain_age  # the upper end is never clipped (the lower one at 0 is)
    cloud.fill_between(line, line - half, line + half, color="0.9", zorder=0, label="interval")
    cloud.plot(line, line, color="0.4", lw=1)
    low, high = max(0.0, brain_age - interval[0]), interval[1] - brain_age
    cloud.errorbar(
        age_months,
        brain_age,
        yerr=[[low], [high]],
        fmt="o",
        color="#c0392b",
        ms=7,
        capsize=4,
        label="this child",
    )
    cloud.set(
        xlabel="chronological age (months)",
        ylabel="brain age, bias-corrected (months)",
        xlim=(0, hi),
        ylim=(min(0.0, float(out_of_fold["corrected_months"].min()) * 1.05), hi),
        title="brain age",
    )
    cloud.legend(loc="upper left", fontsize=8)
    names = list(lobes)
    values = [lobes[n] for n in names]
    if names and np.isfinite(values).any():
        bars.barh(names, values, color=[LOBE_COLOURS.get(n, "0.5") for n in names])
        bars.axvline(0, color="0.3", lw=1)
        bars.invert_yaxis()
        bars.set(
            xlabel="ΔAE (months) with the lobe at its age group's level", title="lobe importance"
        )
    else:
        bars.axis("off")
        bars.text(
            0.5,
            0.5,
            "no lobe importance\n(age outside the age groups)",
            ha="center",
            va="center",
            color="0.4",
        )
    if title:
        fig.suptitle(title)
    return save(fig, out)


def new_cohort_figure(out_of_fold: pd.DataFrame, table: pd.DataFrame, edges, out=None):
    """Left: every new scan's bias-corrected brain age (with its interval) on the training
    cohort's out-of-fold cloud; red when the chronological age lies outside the interval.
    Right: mean lobe ΔAE of the new scans per age group."""
    from ctbrainage.core.cohort import age_group
    from ctbrainage.core.labels import LOBES

    fig, (cloud, bars) = plt.subplots(
        1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.2, 1]}, constrained_layout=True
    )
    cloud.scatter(
        out_of_fold["age_months"],
        out_of_fold["corrected_months"],
        s=8,
        c="0.75",
        label="training cohort (out-of-fold)",
    )
    inside = table["age_in_interval"].astype(bool)
    for mask, colour, label in (
        (inside, "#2c7fb8", "age within the interval"),
        (~inside, "#c0392b", "age outside the interval"),
    ):
        part = table[mask]
        if part.empty:
            continue
        error = [
            (part["corrected_months"] - part["interval_low"]).clip(lower=0),
            part["interval_high"] - part["corrected_months"],
        ]
        cloud.errorbar(
            part["age_months"],
            part["corrected_months"],
            yerr=error,
            fmt="o",
            ms=4,
            color=colour,
            alpha=0.8,
            elinewidth=0.6,
            label=label,
        )
    hi = max(float(out_of_fold["age_months"].max()), float(table["age_months"].max())) * 1.05
    cloud.plot([0, hi], [0, hi], color="0.4", lw=1)
    cloud.set(
        xlabel="chronological age (months)",
        ylabel="brain age, bias-corrected (months)",
        xlim=(0, hi),
        title=f"{len(table)} new scans",
    )
    cloud.legend(loc="upper left", fontsize=8)
    columns = {f"delta_ae_{name}": name for name in LOBES.values()}
    groups = age_group(table["age_months"], edges)
    means = table[list(columns)].groupby(groups, observed=True).mean().rename(columns=columns)
    if len(means):
        means.plot.bar(ax=bars, color=[LOBE_COLOURS[n] for n in means.columns], rot=0)
        bars.axhline(0, color="0.3", lw=1)
        bars.set(
            xlabel="age group (months)",
            ylabel="mean ΔAE (months)",
            title="lobe importance (group_level fill)",
        )
    return save(fig, out)
