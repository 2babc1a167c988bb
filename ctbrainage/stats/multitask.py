"""Step 11's statistics, as the infant T1w/T2w-ratio paper reports them (Park et al. 2026):
metrics per cross-validation fold, their mean ± SD per condition, a one-way ANOVA across
conditions, and each condition against a reference: paired t test (folds paired by repeat and
fold), Cohen's d, the 95 % CI of the difference and the Mann–Whitney U test (pingouin)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ctbrainage.stats.evaluate import regression_metrics

METRICS = ("mae", "rmse", "r2", "r", "rho")
PAIR = ["repeat", "fold"]  # what pairs two conditions' folds


def fold_metrics(predictions: pd.DataFrame, target: str, keys: list[str]) -> pd.DataFrame:
    """Per group of ``keys``: MAE, RMSE, R², Pearson r and Spearman ρ of ``predicted_months``
    against the ``target`` column, and the MAE against each of ``age_months`` (chronological)
    and ``biological_age_months`` where present."""
    rows = []
    for key, part in predictions.groupby(keys, sort=False):
        found = regression_metrics(part[target], part["predicted_months"])
        row = dict(zip(keys, key, strict=True)) | {
            "n": len(part),
            **{m: found["spearman" if m == "rho" else m] for m in METRICS},
        }
        for age in ("age_months", "biological_age_months"):
            if age in part:
                row[f"mae_vs_{age.removesuffix('_months')}"] = float(
                    np.abs(part["predicted_months"] - part[age]).mean()
                )
        rows.append(row)
    return pd.DataFrame(rows)


def summary(metrics: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean and SD over folds (and repeats) of every metric, per group of ``by``."""
    present = [c for c in metrics.columns if c in METRICS or c.startswith("mae_vs_")]
    grouped = metrics.groupby(by, sort=False)[present]
    mean, sd = grouped.mean().add_suffix("_mean"), grouped.std(ddof=1).add_suffix("_sd")
    counts = metrics.groupby(by, sort=False).size().rename("cv_folds")
    return pd.concat([counts, mean, sd], axis=1).reset_index()


def anova(metrics: pd.DataFrame, between: str, metric: str) -> dict:
    """One-way ANOVA of ``metric`` across the levels of ``between`` (pingouin): F, p, η²."""
    import pingouin as pg

    if metrics[between].nunique() < 2:
        return {"F": np.nan, "p": np.nan, "eta2": np.nan}
    found = pg.anova(data=metrics, dv=metric, between=between, detailed=False).iloc[0]
    return {"F": float(found["F"]), "p": float(found["p_unc"]), "eta2": float(found["np2"])}


def paired_comparison(reference, other) -> dict:
    """``other`` against ``reference`` (values paired by position): mean difference, paired t
    test with Cohen's d and the 95 % CI of the difference (pingouin), Mann–Whitney U's p."""
    import pingouin as pg

    a, b = np.asarray(reference, float), np.asarray(other, float)
    out = {"n": len(a), "difference": float(np.mean(b - a)) if len(a) else np.nan}
    out |= dict.fromkeys(("t", "p", "cohen_d", "ci_low", "ci_high", "mannwhitney_p"), np.nan)
    if len(a) < 2 or np.ptp(b - a) == 0:
        return out
    t = pg.ttest(b, a, paired=True).iloc[0]
    low, high = t["CI95"]
    sign = np.sign(np.mean(b - a))  # pingouin's paired d is unsigned
    u = pg.mwu(b, a).iloc[0]
    return out | {
        "t": float(t["T"]),
        "p": float(t["p_val"]),
        "cohen_d": float(sign * abs(t["cohen_d"])),
        "ci_low": float(low),
        "ci_high": float(high),
        "mannwhitney_p": float(u["p_val"]),
    }


def comparisons(metrics: pd.DataFrame, between: str, reference: str, family: str) -> pd.DataFrame:
    """Per metric: the ANOVA across ``between`` and every level against ``reference``."""
    rows = []
    for metric in METRICS:
        rows.append({"family": family, "metric": metric, "test": "anova", "level": "all"}
                    | anova(metrics, between, metric))  # fmt: skip
        wide = metrics.pivot_table(index=PAIR, columns=between, values=metric)
        for level in wide.columns:
            if level == reference:
                continue
            pairs = wide[[reference, level]].dropna()
            rows.append(
                {"family": family, "metric": metric, "test": f"vs {reference}", "level": level}
                | paired_comparison(pairs[reference], pairs[level])
            )
    return pd.DataFrame(rows)
