"""Figures of brain age for new scans (:mod:`ctbrainage.predict`)."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ctbrainage.plots.common import LOBE_COLOURS, save


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
    half = (interval[1] - interval[0]) / 2
    cloud.fill_between(line, line - half, line + half, color="0.9", zorder=0, label="interval")
    cloud.plot(line, line, color="0.4", lw=1)
    low, high = brain_age - interval[0], interval[1] - brain_age
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
        ylim=(min(0.0, interval[0]), hi),
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
