"""Attribution methods scored against what the model really uses (the interventional model truth
of step 07, ``model_truth.csv``), and the model scored against what the data hold (the ideal
observer).

- *Faithfulness* (method ↔ model): per subject, the rank correlation of a method's lobe
  importance with the model's |s_k| (its sensitivity to each lobe's maturation), whether the
  method's top lobe is the model's, and the share of the method's importance on the model's top
  lobe against its chance level; per age group (:func:`~ctbrainage.synth.scoring.lobe_scores`
  against the groups' mean |s_k|).
- *Model ↔ data*: with linear-Gaussian cues the optimal (ideal-observer) estimator's
  sensitivity to lobe k is I_k / Σ_j I_j, the Fisher shares of ``expected_importance.csv``; the
  model's shares are |s_k| / Σ_j |s_j|. Only with the lobar white matter as the only cue is
  that the whole ideal observer; where every cue ages, the model's non-lobar part says how much
  it takes from elsewhere.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import pandas as pd

from ctbrainage.core.cohort import age_group
from ctbrainage.core.labels import LOBES
from ctbrainage.synth.scoring import (
    SCORE_COLUMNS,
    lobe_recovery,
    lobe_scores,
    percentile_ci,
    spearman_rho,
)

LOBE_NAMES = list(LOBES.values())
MATURATION = "maturation"
NON_LOBAR = "non_lobar"  # the model truth's cue: s_all − Σ s_k
PROJECTION = "projection:"  # the model truth's kinds of the gradient maps' projections


def lobe_sensitivity(model_truth: pd.DataFrame, kind: str = MATURATION) -> pd.DataFrame:
    """The model truth of the four lobes, one row per subject and one column per lobe
    (``kind``: maturation, content, chain_maturation, chain_content), with its age."""
    rows = model_truth[(model_truth["kind"] == kind) & model_truth["cue"].isin(LOBE_NAMES)]
    wide = rows.pivot_table(index=["subject_id", "age_months"], columns="cue", values="value")
    return wide[LOBE_NAMES].reset_index()


def model_vs_ideal(model_truth: pd.DataFrame, expected: pd.DataFrame, edges) -> pd.DataFrame:
    """Per age group and lobe: the model's mean s_k (months of predicted age per month of the
    lobe's maturation), its share |s_k| / Σ |s_j| of the group means, and the ideal observer's
    share (``expected``: one definition of ``expected_importance.csv``, Fisher); plus the non-
    lobar remainder s_all − Σ s_k as lobe ``non_lobar`` (no share)."""
    wide = lobe_sensitivity(model_truth)
    wide["group"] = age_group(wide["age_months"], edges).astype(str)
    rest = model_truth[(model_truth["kind"] == MATURATION) & (model_truth["cue"] == NON_LOBAR)]
    rest = rest.set_index("subject_id")["value"]
    wide[NON_LOBAR] = wide["subject_id"].map(rest)
    means = wide.groupby("group", observed=True)[[*LOBE_NAMES, NON_LOBAR]].mean()
    counts = wide.groupby("group", observed=True).size()
    ideal = expected.set_index(["group", "lobe"])["share"]
    rows = []
    for group, mean in means.iterrows():
        total = mean[LOBE_NAMES].abs().sum()
        for lobe in [*LOBE_NAMES, NON_LOBAR]:
            lobar = lobe in LOBE_NAMES
            rows.append(
                {
                    "group": group,
                    "lobe": lobe,
                    "subjects": int(counts[group]),
                    "model_s": float(mean[lobe]),
                    "model_share": float(abs(mean[lobe]) / total) if lobar and total else np.nan,
                    "ideal_share": float(ideal.get((group, lobe), np.nan)) if lobar else np.nan,
                }
            )
    return pd.DataFrame(rows)


def model_vs_ideal_scores(table: pd.DataFrame) -> dict[str, float]:
    """:func:`~ctbrainage.synth.scoring.lobe_recovery` of the model's shares against the ideal
    observer's (:func:`model_vs_ideal`): ρ over cells, the mean within-group ρ, the groups
    whose top lobes agree."""
    lobes = table[table["lobe"].isin(LOBE_NAMES)]
    scored = lobe_recovery(lobes["ideal_share"], lobes["model_share"], lobes["group"])
    return {
        "spearman_rho": float(scored.rho.statistic) if scored.rho else np.nan,
        "within_group_rho": scored.within_rho,
        "top_lobe_matches": scored.top_matches,
        "groups": len(scored.tops),
    }


def projection_rows(model_truth: pd.DataFrame) -> pd.DataFrame:
    """Each gradient map's signed projection on the lobes' signal maps (``projection:<method>``
    rows, its estimate of s_k) as the rows of a lobe method ``<method> (projection)`` in step
    07's long form: importance |ŝ_k|."""
    rows = model_truth[model_truth["kind"].str.startswith(PROJECTION)]
    rows = rows[rows["cue"].isin(LOBE_NAMES)]
    method = rows["kind"].str.removeprefix(PROJECTION) + " (projection)"
    magnitude = rows["value"].abs()
    return pd.DataFrame(
        {
            "method": method,
            "subject_id": rows["subject_id"],
            "fold": rows["fold"],
            "age_months": rows["age_months"],
            "lobe": rows["cue"],
            "importance": magnitude,
            "reference": magnitude,
            "tested": magnitude,
        }  # fmt: skip
    ).reset_index(drop=True)


def faithfulness_scores(
    table: pd.DataFrame,
    model_truth: pd.DataFrame,
    *,
    edges,
    n_resamples: int,
    seed: int,
    per_voxel: Collection[str],
) -> pd.DataFrame:
    """Every method of step 07's long ``table`` against the model truth, on the subjects it was
    measured for: rows ``method, level="faithfulness", metric, value, ci_low, ci_high, chance``.
    Metrics: ``subject_rho`` (mean per-subject Spearman ρ of importance with |s_k|; chance 0),
    ``subject_top_lobe`` (share of subjects whose top lobes agree; chance 1/4),
    ``top_lobe_mass`` (the method's share on the model's top lobe: voxel methods' share of
    |attribution|, lobe methods' share of |importance|; chance: the lobe's share of the brain's
    voxels, or 1/4), each with a bootstrap CI over subjects; and the group-level
    :func:`~ctbrainage.synth.scoring.lobe_scores` against the groups' mean |s_k| (chance: ρ 0,
    top lobe in a quarter of the groups). The gradient maps' signed projections
    (:func:`projection_rows`) are scored with them, as lobe methods."""
    table = pd.concat([table, projection_rows(model_truth)], ignore_index=True)
    truth = lobe_sensitivity(model_truth).set_index("subject_id")
    magnitude = truth[LOBE_NAMES].abs()
    groups = age_group(truth["age_months"], edges).astype(str)
    expected = magnitude.assign(group=groups.to_numpy()).groupby("group")[LOBE_NAMES].mean()
    expected = expected.stack().rename("importance").rename_axis(["group", "lobe"]).reset_index()
    rows = []
    measured = table[table["subject_id"].isin(truth.index)]
    for number, (method, part) in enumerate(measured.groupby("method", sort=False)):
        wide = part.pivot_table(index="subject_id", columns="lobe", values="importance")
        wide = wide[LOBE_NAMES].dropna()
        size = part.pivot_table(index="subject_id", columns="lobe", values="reference")
        size = size.loc[wide.index, LOBE_NAMES]
        model = magnitude.loc[wide.index]
        per_subject = _per_subject(wide, model, size, voxel=method in per_voxel)
        rng = np.random.default_rng([seed, number])
        for metric, (values, chance) in per_subject.items():
            draws = [
                np.nanmean(values[rng.integers(0, len(values), len(values))])
                for _ in range(n_resamples)
            ]
            low, high = percentile_ci(draws)
            rows.append(
                {"method": method, "level": "faithfulness", "metric": metric,
                 "value": float(np.nanmean(values)), "ci_low": low, "ci_high": high,
                 "chance": chance}
            )  # fmt: skip
        scored = lobe_scores(part, expected, edges, n_resamples, seed, "faithfulness")
        rows += [{"method": method, **score} for score in scored]
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def _per_subject(importance, model, size, voxel: bool) -> dict[str, tuple[np.ndarray, float]]:
    """Per-subject values of each faithfulness metric and the metric's chance level."""
    mine, truth = importance.to_numpy(float), model.to_numpy(float)
    rho = np.array([spearman_rho(a, b) for a, b in zip(mine, truth, strict=True)])
    top = truth.argmax(axis=1)
    agree = (mine.argmax(axis=1) == top).astype(float)
    pick = np.arange(len(top)), top
    if voxel:
        mass, chance = mine[pick], float(np.mean(size.to_numpy(float)[pick]))
    else:
        weights = np.abs(mine)
        mass, chance = weights[pick] / weights.sum(axis=1), 0.25
    return {
        "subject_rho": (rho, 0.0),
        "subject_top_lobe": (agree, 0.25),
        "top_lobe_mass": (mass, chance),
    }


def chain_rule_agreement(model_truth: pd.DataFrame) -> pd.DataFrame:
    """How well the first-order (one backward pass) estimates agree with the interventions,
    over every subject and lobe: per pair (``maturation`` ↔ ``chain_maturation``, ``content`` ↔
    ``chain_content``) Pearson's r, Spearman's ρ, the least-squares slope of the chain-rule
    value on the interventional one (1 = equal in scale) and the number of pairs."""
    rows = []
    for kind in (MATURATION, "content"):
        if not model_truth["kind"].isin([kind, "chain_" + kind]).any():
            continue  # not measured
        measured = lobe_sensitivity(model_truth, kind).set_index("subject_id")[LOBE_NAMES]
        chained = lobe_sensitivity(model_truth, "chain_" + kind).set_index("subject_id")
        x = measured.to_numpy(float).ravel()
        y = chained.loc[measured.index, LOBE_NAMES].to_numpy(float).ravel()
        keep = np.isfinite(x) & np.isfinite(y)
        x, y = x[keep], y[keep]
        varies = len(x) > 2 and np.ptp(x) > 0 and np.ptp(y) > 0
        rows.append(
            {
                "interventional": kind,
                "chain_rule": "chain_" + kind,
                "pearson_r": float(np.corrcoef(x, y)[0, 1]) if varies else np.nan,
                "spearman_rho": spearman_rho(x, y) if varies else np.nan,
                "slope": float(np.dot(x, y) / np.dot(x, x)) if varies else np.nan,
                "pairs": int(len(x)),
            }
        )
    columns = ["interventional", "chain_rule", "pearson_r", "spearman_rho", "slope", "pairs"]
    return pd.DataFrame(rows, columns=columns)
