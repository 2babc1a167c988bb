"""Step 07's results as the notebook shows them: one row per attribution method."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from ctbrainage.synth.scoring import SCORE_COLUMNS
from ctbrainage.views.tables import MISSING

#: a score's key: its metric, suffixed by its level where metrics repeat between levels
SUFFIX = {"lobe_per_voxel": "/voxel", "faithfulness": "/model"}


def score_cells(scores: pd.DataFrame | None) -> pd.DataFrame:
    """``attribution_scores.csv`` indexed by (method, key): the metric with its level's
    :data:`SUFFIX`."""
    scores = scores if scores is not None else pd.DataFrame(columns=SCORE_COLUMNS)
    key = scores["metric"] + scores["level"].map(SUFFIX).fillna("")
    return scores.assign(metric=key).set_index(["method", "metric"])


def _with_ci(cell: pd.DataFrame, method: str, key: str) -> str:
    if (method, key) not in cell.index:
        return MISSING
    row = cell.loc[(method, key)]
    if pd.isna(row["value"]):
        return MISSING
    ci = "" if pd.isna(row["ci_low"]) else f" [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
    return f"{row['value']:.2f}{ci}"


def chance(scores: pd.DataFrame | None, key: str) -> float:
    """The chance level of one score (the mean over methods: the same subjects for each)."""
    cell = score_cells(scores)
    found = cell.xs(key, level="metric")["chance"] if key in cell.index.get_level_values(1) else []
    return float(np.nanmean(found)) if len(found) and np.isfinite(found).any() else np.nan


def faithfulness_table(scores: pd.DataFrame | None) -> pd.DataFrame:
    """One row per method measured against the model truth, ranked by its per-group ρ with the
    model's |s_k|: ρ over lobe × group cells, groups whose top lobe is the model's, and per
    subject the mean ρ, the share whose top lobe is the model's, and the share of importance
    on the model's top lobe (95 % CIs; chance levels in the header)."""
    cell = score_cells(scores)
    methods = [m for m in dict.fromkeys(cell.index.get_level_values(0))
               if (m, "subject_rho/model") in cell.index]  # fmt: skip

    def groups(method):
        found, total = (cell.loc[(method, k + "/model"), "value"]
                        for k in ("top_lobe_matches", "groups"))  # fmt: skip
        return f"{found:.0f}/{total:.0f}"

    mass = f"mass on the model's top lobe (chance {chance(scores, 'top_lobe_mass/model'):.2f})"
    rows = [
        {
            "method": method,
            "ρ with the model (groups)": _with_ci(cell, method, "spearman_rho/model"),
            "top lobe (groups)": groups(method),
            "ρ per subject": _with_ci(cell, method, "subject_rho/model"),
            "top lobe per subject (chance 0.25)": _with_ci(cell, method, "subject_top_lobe/model"),
            mass: _with_ci(cell, method, "top_lobe_mass/model"),
            "_rank": cell.loc[(method, "spearman_rho/model"), "value"],
        }
        for method in methods
    ]
    table = pd.DataFrame(rows, columns=["method", "ρ with the model (groups)", "_rank"])
    if rows:
        table = pd.DataFrame(rows).sort_values("_rank", ascending=False, na_position="last")
    return table.drop(columns="_rank").set_index("method")


def sanity_cells(verdict: pd.DataFrame, not_converged=()) -> pd.Series:
    """Per method (index) the sanity verdict with its similarities (``sanity_verdict``): "fails
    (0.91 / 0.88)" = ρ after full randomisation / with random labels; a trained method in
    ``not_converged`` gets no verdict, "not converged (…)"."""
    cell = lambda v: "–" if pd.isna(v) else f"{v:.2f}"  # noqa: E731
    word = lambda r: "not converged" if r.method in not_converged else r.sanity  # noqa: E731
    return pd.Series(
        [f"{word(r)} ({cell(r.rho_randomised)} / {cell(r.rho_random_labels)})"
         for r in verdict.itertuples()],
        index=verdict["method"].to_numpy(), dtype=object,
    )  # fmt: skip


def summary_table(
    methods: Iterable[str],
    scores: pd.DataFrame | None,
    verdict: pd.Series,
    cost: bool = True,
) -> pd.DataFrame:
    """One row per method, ranked by lobe ρ (synthetic runs, ``scores`` of
    ``attribution_scores.csv``; else in the order of ``methods``): lobe ρ, within-group ρ, top
    lobe, voxel AUROC, relevance mass and rank (95 % CIs; chance levels in the header), the
    sanity ``verdict`` (per method, :func:`sanity_cells`) and, with ``cost``, seconds and
    passes per subject."""
    cell = score_cells(scores)

    def value(method, metric, fmt="{:.2f}"):
        found = (method, metric) in cell.index
        return fmt.format(cell.loc[(method, metric), "value"]) if found else MISSING

    def with_ci(method, metric):
        return _with_ci(cell, method, metric)

    def fraction(method, metric):
        if (method, metric) not in cell.index:
            return MISSING
        return f"{value(method, metric, '{:.0f}')}/{value(method, 'groups', '{:.0f}')}"

    mass = f"relevance mass (chance {chance(scores, 'mass_accuracy'):.2f})"
    rank = f"relevance rank (chance {chance(scores, 'rank_accuracy'):.2f})"
    rows = [
        {
            "method": method,
            "lobe ρ": with_ci(method, "spearman_rho"),
            "within-group ρ": with_ci(method, "within_group_rho"),
            "top lobe": fraction(method, "top_lobe_matches"),
            "per voxel: ρ": with_ci(method, "spearman_rho/voxel"),
            "per voxel: top lobe": fraction(method, "top_lobe_matches/voxel"),
            "voxel AUROC (chance 0.50)": with_ci(method, "auroc"),
            mass: with_ci(method, "mass_accuracy"),
            rank: with_ci(method, "rank_accuracy"),
            "sanity (ρ random / labels)": verdict.get(method, MISSING),
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


#: the goal of a method faithful to the model (issue 29): ρ with |s_k| and top lobe in every group
FAITHFUL_RHO = 0.9


def two_truths_text(scores: pd.DataFrame, model_vs_ideal: dict, noise_fill: str) -> str:
    """The notebook's verdict in words, from the faithfulness scores and the model ↔ ideal
    observer scores (``faithfulness.model_vs_ideal_scores``): which methods are faithful to
    the model (per-group ρ ≥ :data:`FAITHFUL_RHO` and the model's top lobe in every group),
    whether the model weights the lobes as the data allow, and where the paper's fill stands."""
    cell = score_cells(scores)

    def get(method, key):
        return cell["value"].get((method, key), np.nan)

    methods = [m for m in dict.fromkeys(cell.index.get_level_values(0))
               if (m, "spearman_rho/model") in cell.index]  # fmt: skip
    faithful = [
        m for m in methods
        if get(m, "spearman_rho/model") >= FAITHFUL_RHO
        and get(m, "top_lobe_matches/model") == get(m, "groups/model")
    ]  # fmt: skip
    best = max(methods, key=lambda m: np.nan_to_num(get(m, "spearman_rho/model"), nan=-2))
    lines = [
        "**Faithful to the model** (ρ ≥ 0.9 with its |s_k| and its top lobe in every group): "
        + (", ".join(f"`{m}`" for m in faithful) if faithful else "none")
        + f"; the closest is `{best}` (ρ {get(best, 'spearman_rho/model'):.2f}, top lobe in "
        f"{get(best, 'top_lobe_matches/model'):.0f}/{get(best, 'groups/model'):.0f} groups).",
        f"**The model against the data**: its lobe shares against the ideal observer's, ρ "
        f"{model_vs_ideal['spearman_rho']:.2f}, the same top lobe in "
        f"{model_vs_ideal['top_lobe_matches']}/{model_vs_ideal['groups']} groups.",
    ]
    if (noise_fill, "spearman_rho/model") in cell.index:
        lines.append(
            f"**The paper's fill** (`{noise_fill}`): ρ {get(noise_fill, 'spearman_rho/model'):.2f}"
            f" with the model, top lobe in {get(noise_fill, 'top_lobe_matches/model'):.0f}/"
            f"{get(noise_fill, 'groups/model'):.0f} groups; against the data ρ "
            f"{get(noise_fill, 'spearman_rho'):.2f}."
        )
    return "\n\n".join(lines)


def not_converged(training: pd.DataFrame | None) -> list[str]:
    """The trained methods (U-Noise) of which some fold's training ran out of epochs before its
    validation loss plateaued (``unoise_training.csv``; None: not trained). Candidates that were
    not used make no map and do not count."""
    if training is None:
        return []
    return [] if training.loc[training["role"] == "fold", "plateaued"].all() else ["unoise"]


def unoise_summary(training: pd.DataFrame) -> pd.DataFrame:
    """One row per U-Noise training of ``unoise_training.csv`` (the candidates on fold 0, then
    each fold): its noise settings, epochs run, best epoch, whether the validation loss
    plateaued, the validation MAE without and with the noise, the mean noise SD in the brain (σ),
    and the mask's mean, SD and share at the floor (m < 0.05) at the best epoch."""
    rows = []
    keys = ["role", "fold", "r", "v_min", "v_max"]
    for key, part in training.groupby(keys, sort=False):
        role, fold, r, v_min, v_max = key
        noise = part[part["phase"] == "noise"]
        best = noise[noise["best"].astype(bool)].iloc[0]
        rows.append(
            {
                "training": f"candidate (fold {fold})" if role == "candidate" else f"fold {fold}",
                "r": r,
                "v_min": v_min,
                "v_max": v_max,
                "epochs": int(noise["epoch"].max()),
                "best epoch": int(best["epoch"]),
                "plateaued": "yes" if bool(best["plateaued"]) else "no (max_epochs)",
                "MAE clean": best["clean_mae_months"],
                "MAE noisy": best["val_mae_months"],
                "noise SD (σ)": v_min + (v_max - v_min) * best["mask_mean"],
                "mask mean": best["mask_mean"],
                "mask SD": best["mask_sd"],
                "at floor": best["floor_share"],
                "chosen": "✓" if bool(best["chosen"]) and role == "candidate" else "",
            }  # fmt: skip
        )
    return pd.DataFrame(rows)
