"""Step 11's tables as a reader wants them: the conditions and the ablation as mean ± SD over
folds (the infant MRI paper's form), the tests, the sites, Grad-CAM's scores and the delayed
children."""

from __future__ import annotations

import pandas as pd

from ctbrainage.stats.multitask import METRICS

METRIC_LABELS = {"mae": "MAE", "rmse": "RMSE", "r2": "R²", "r": "r", "rho": "ρ"}
AGE_LABELS = {"mae_vs_age": "MAE vs chronological", "mae_vs_biological_age": "MAE vs biological"}


def _text(frame: pd.DataFrame, digits: int) -> pd.DataFrame:
    """Every float column as text with ``digits`` decimals (– where missing); counts stay."""
    out = frame.copy()
    for column in out.columns:
        if pd.api.types.is_float_dtype(out[column]):
            out[column] = out[column].map(lambda v: "–" if pd.isna(v) else f"{v:.{digits}f}")
    return out


def _mean_sd(row: pd.Series, metric: str) -> str:
    mean, sd = row[f"{metric}_mean"], row[f"{metric}_sd"]
    digits = 2 if metric in ("mae", "rmse") or metric.startswith("mae_vs_") else 3
    return "–" if pd.isna(mean) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def summary_table(summary: pd.DataFrame, family: str = "conditions") -> pd.DataFrame:
    """One row per condition and target (``conditions``) or per heads (``ablation``): every
    metric as mean ± SD over folds and repeats; MAE and RMSE in months."""
    rows = summary[summary["family"] == family]
    keys = ["condition", "target"] if family == "conditions" else ["heads"]
    labels = METRIC_LABELS | AGE_LABELS
    present = [m for m in (*METRICS, *AGE_LABELS) if f"{m}_mean" in rows]
    table = pd.DataFrame(
        {labels[m]: [_mean_sd(r, m) for _, r in rows.iterrows()] for m in present},
        index=pd.MultiIndex.from_frame(rows[keys]) if len(keys) > 1 else rows[keys[0]],
    )
    return table.assign(folds=rows["cv_folds"].to_numpy())


def tests_table(tests: pd.DataFrame, family: str) -> pd.DataFrame:
    """One family of tests: the ANOVA per metric and each level against the reference (mean
    difference with its 95 % CI, paired t's p, Cohen's d, Mann–Whitney U's p)."""
    rows = tests[tests["family"] == family].copy()

    def difference(r):
        if pd.isna(r.get("difference")):
            return "–"
        return f"{r['difference']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"

    def p(value):
        return "–" if pd.isna(value) else f"{value:.3g}"

    return pd.DataFrame(
        {
            "metric": rows["metric"].map(METRIC_LABELS | AGE_LABELS),
            "test": rows["test"],
            "level": rows["level"],
            "F": rows["F"].map(lambda v: "" if pd.isna(v) else f"{v:.2f}"),
            "difference [95 % CI]": rows.apply(difference, axis=1),
            "p": rows["p"].map(p),
            "Cohen's d": rows["cohen_d"].map(lambda v: "" if pd.isna(v) else f"{v:+.2f}"),
            "Mann–Whitney p": rows["mannwhitney_p"].map(lambda v: "" if pd.isna(v) else p(v)),
        }
    ).reset_index(drop=True)


def site_table(site: pd.DataFrame) -> pd.DataFrame:
    """MAE per condition: site B when trained on site A alone, and each site in the
    cross-validation (trained on both)."""
    wide = site.pivot_table(
        index="condition", columns=["training", "site"], values="mae", sort=False
    )
    wide.columns = [f"{training}: site {s}" for training, s in wide.columns]
    return _text(wide, 2)


def gradcam_table(gradcam: pd.DataFrame) -> pd.DataFrame:
    """Per condition and target: Grad-CAM's correctness and faithfulness ρ and its lobe shares."""
    shares = [c for c in gradcam.columns if c.startswith("share_")]
    table = gradcam.set_index(["condition", "target"])[
        ["children", "correctness", "faithfulness", *shares]
    ]
    table = table.rename(columns={c: f"{c.removeprefix('share_')} share" for c in shares})
    return _text(table.rename(columns={"correctness": "correctness ρ",
                                       "faithfulness": "faithfulness ρ"}), 3)  # fmt: skip


def delayed_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per model and kind of delay: the children, their mean planted delay, mean gap and mean
    gap against the on-time twin (months), the share seen younger than the twin."""
    names = {
        "mean_planted_delay_months": "planted delay",
        "mean_gap_months": "gap",
        "mean_gap_vs_twin_months": "gap − twin's gap",
        "seen_younger_share": "seen younger than the twin",
    }
    table = summary.set_index(["condition", "target", "heads", "kind"]).rename(columns=names)
    return _text(table, 2)
