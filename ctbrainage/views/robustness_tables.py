"""Step 10's tables as a reader wants them: the condition table with CIs over seeds, the
phases (the multi-seed paper's Table 2), Table 1's share of seeds, and the tests."""

from __future__ import annotations

import pandas as pd

LABELS = {
    "noaug_noreg": "no aug., not reg.",
    "aug_noreg": "aug., not reg.",
    "noaug_reg": "no aug., reg.",
    "aug_reg": "aug., reg.",
}
LOBE_ORDER = ("frontal", "parietal", "temporal", "occipital")  # Table 1's
METRIC_LABELS = {
    "mae_best": "MAE best (months)",
    "mae_last": "MAE last (months)",
    "best_epoch": "best epoch",
    "agreement": "seed agreement (best)",
    "faithfulness": "faithfulness ρ",
    "correctness": "correctness ρ",
}


def _plain(value, digits: int) -> str:
    return "–" if pd.isna(value) else f"{value:.{digits}f}"


def _with_ci(row: pd.Series, metric: str, digits: int = 2) -> str:
    value, low, high = row[metric], row[f"{metric}_low"], row[f"{metric}_high"]
    if pd.isna(value):
        return "–"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def condition_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per condition: each per-seed metric's mean [95 % CI over seeds], the seeds, the
    epoch each phase was first reached (mean; seeds reaching it), the agreeing voxels and
    Kendall's W of the lobe ranks at the best checkpoint."""
    rows = []
    for _, row in table.iterrows():
        out = {"condition": LABELS.get(row["condition"], row["condition"]), "seeds": row["seeds"]}
        out |= {label: _with_ci(row, metric) for metric, label in METRIC_LABELS.items()}
        for column in [c for c in table if c.startswith("epoch_phase")]:
            reached = int(row[column.replace("epoch_", "reached_")])
            mean = "–" if pd.isna(row[column]) else f"{row[column]:.1f}"
            out[column.replace("epoch_", "epoch to ")] = f"{mean} ({reached}/{row['seeds']})"
        out["agreeing voxels"] = _plain(row["agreeing_voxels"], 0)
        out["Kendall's W"] = _plain(row["kendall_w"], 2)
        rows.append(out)
    return pd.DataFrame(rows).set_index("condition")


def phase_table(agreement: pd.DataFrame, method: str) -> pd.DataFrame:
    """The paper's Table 2 per condition and checkpoint: seeds reaching it (#C), mean epoch
    (#E), mean validation MAE (#L), agreeing voxels, each seed's agreement with the others
    [95 % CI] and Kendall's W (folds averaged)."""
    rows = agreement[agreement["method"] == method]
    grouped = rows.groupby(["condition", "checkpoint"], sort=False).mean(numeric_only=True)
    out = pd.DataFrame(
        {
            "#C": grouped["seeds_reaching"].round().astype(int).astype(str)
            + "/" + grouped["seeds"].round().astype(int).astype(str),
            "#E": grouped["mean_epoch"].round(1),
            "#L (months)": grouped["mean_val_mae"].round(2),
            "agreeing voxels": [_plain(v, 0) for v in grouped["agreeing_voxels"]],
            "seed agreement": [
                "–" if pd.isna(r["seed_agreement"]) else
                f"{r['seed_agreement']:.2f} [{r['seed_agreement_low']:.2f}, "
                f"{r['seed_agreement_high']:.2f}]" for _, r in grouped.iterrows()
            ],
            "Kendall's W": [_plain(v, 2) for v in grouped["kendall_w"]],
        }
    )  # fmt: skip
    return out.rename(index=LABELS, level="condition")


def table1_share_table(share: pd.DataFrame) -> pd.DataFrame:
    """Per Table 1 cell (age group × lobe) and condition: "significant share / sign kept
    share" of the seeds, with the reference's sign of the mean ΔAE."""
    cells = share.assign(
        cell=[f"{s:.0%} / {k:.0%}" for s, k in zip(share["significant_share"],
                                                  share["sign_kept_share"], strict=True)],
    )  # fmt: skip
    wide = cells.pivot(index=["group", "lobe"], columns="condition", values="cell")
    order = [(g, lobe) for g in dict.fromkeys(share["group"]) for lobe in LOBE_ORDER]
    wide = wide.reindex([cell for cell in order if cell in wide.index])
    wide = wide[[c for c in LABELS if c in wide]].rename(columns=LABELS)
    sign = share.drop_duplicates(["group", "lobe"]).set_index(["group", "lobe"])
    wide.insert(0, "reference ΔAE sign", sign["reference_sign"].map({1.0: "+", -1.0: "−"}))
    return wide


def tests_table(tests: pd.DataFrame) -> pd.DataFrame:
    """Welch's tests across seeds: on − off, with Cohen's d and the 95 % CI of the difference."""
    out = tests.assign(
        metric=tests["metric"].map(METRIC_LABELS).fillna(tests["metric"]),
        difference=tests["mean_on"] - tests["mean_off"],
    )
    columns = ["metric", "factor", "within", "n_off", "n_on", "mean_off", "mean_on",
               "difference", "ci_low", "ci_high", "t", "p", "cohen_d"]  # fmt: skip
    return out[columns].set_index(["metric", "factor", "within"])
