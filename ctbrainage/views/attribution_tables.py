"""Step 07's results as the notebook shows them: one row per attribution method."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from ctbrainage.synth.scoring import SCORE_COLUMNS
from ctbrainage.views.tables import MISSING


def summary_table(
    methods: Iterable[str],
    scores: pd.DataFrame | None,
    verdict: pd.Series,
    cost: bool = True,
) -> pd.DataFrame:
    """One row per method, ranked by lobe ρ (synthetic runs, ``scores`` of
    ``attribution_scores.csv``; else in the order of ``methods``): lobe ρ, within-group ρ, top
    lobe, voxel AUROC, relevance mass (95 % CIs), the sanity ``verdict`` (per method) and, with
    ``cost``, seconds and passes per subject."""
    scores = scores if scores is not None else pd.DataFrame(columns=SCORE_COLUMNS)
    per_voxel = scores["level"] == "lobe_per_voxel"
    cell = scores.assign(
        metric=np.where(per_voxel, scores["metric"] + "/voxel", scores["metric"])
    ).set_index(["method", "metric"])

    def value(method, metric, fmt="{:.2f}"):
        found = (method, metric) in cell.index
        return fmt.format(cell.loc[(method, metric), "value"]) if found else MISSING

    def with_ci(method, metric):
        if (method, metric) not in cell.index:
            return MISSING
        row = cell.loc[(method, metric)]
        ci = "" if pd.isna(row["ci_low"]) else f" [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
        return f"{row['value']:.2f}{ci}"

    def fraction(method, metric):
        if (method, metric) not in cell.index:
            return MISSING
        return f"{value(method, metric, '{:.0f}')}/{value(method, 'groups', '{:.0f}')}"

    rows = [
        {
            "method": method,
            "lobe ρ": with_ci(method, "spearman_rho"),
            "within-group ρ": with_ci(method, "within_group_rho"),
            "top lobe": fraction(method, "top_lobe_matches"),
            "per voxel: ρ": with_ci(method, "spearman_rho/voxel"),
            "per voxel: top lobe": fraction(method, "top_lobe_matches/voxel"),
            "voxel AUROC": with_ci(method, "auroc"),
            "relevance mass": with_ci(method, "mass_accuracy"),
            "sanity": verdict.get(method, MISSING),
            "s / subject": value(method, "seconds_per_subject", "{:.3f}"),
            "passes / subject": f"{value(method, 'forward_passes', '{:.0f}')} + "
            f"{value(method, 'backward_passes', '{:.0f}')}",
            "_rank": cell["value"].get((method, "spearman_rho"), np.nan),
        }
        for method in methods
    ]
    table = pd.DataFrame(rows).sort_values("_rank", ascending=False, na_position="last")
    table = table.drop(columns="_rank").set_index("method")
    return table if cost else table.drop(columns=["s / subject", "passes / subject"])
