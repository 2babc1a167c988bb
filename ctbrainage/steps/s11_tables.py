"""Step 11's tables, from its units' files (:mod:`ctbrainage.steps.s11_multitask` writes the
units and calls :func:`write_tables` with them: its ``Unit`` objects, each with ``condition``,
``target``, ``heads``, ``repeat``, ``fold`` and ``out_of_site``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ctbrainage.core.layout import RunLayout
from ctbrainage.stats import multitask as mt
from ctbrainage.steps.contract import write_table
from ctbrainage.synth import faithfulness, scoring
from ctbrainage.synth.interventions import MATURATION
from ctbrainage.synth.schedule import IMPORTANCE_DEFINITIONS

KEYS = ["condition", "target", "heads", "repeat", "fold"]
TARGET_COLUMN = {"chronological": "age_months", "biological": "biological_age_months"}


def _read(profile, units: list, part: str) -> pd.DataFrame:
    layout = RunLayout(profile.run_path)
    frames = [
        pd.read_csv(layout.multitask_unit(u.name, part), dtype={"subject_id": str}).assign(
            **{k: getattr(u, k) for k in KEYS}
        )
        for u in units
    ]
    return pd.concat(frames, ignore_index=True)


def _metrics(test: pd.DataFrame) -> pd.DataFrame:
    parts = [
        mt.fold_metrics(part, TARGET_COLUMN[target], KEYS)
        for target, part in test.groupby("target", sort=False)
    ]
    return pd.concat(parts, ignore_index=True)


def write_tables(profile, units: list, ablation: list[str]) -> None:
    """Every table of step 11 (see :mod:`ctbrainage.steps.s11_multitask`); ``ablation``: the
    heads of the ablation's variants."""
    layout, config = RunLayout(profile.run_path), profile.multitask
    in_cv = [u for u in units if not u.out_of_site]
    first = units[0].target  # the first target: the ablation's and the out-of-site one
    test = _read(profile, in_cv, "test")
    metrics = _metrics(test)
    is_age = metrics["heads"] == "age"
    conditions = metrics[is_age & metrics["condition"].isin(config.conditions)]
    abl = metrics[
        (metrics["condition"] == config.ablation_condition)
        & (metrics["target"] == first)
        & metrics["heads"].isin(ablation)
    ]
    delayed = _delayed(profile, in_cv)
    tables = {
        "multitask_conditions": conditions.drop(columns="heads"),
        "multitask_ablation": abl,
        "delayed": delayed,
        "summary": pd.concat(
            [
                mt.summary(conditions, ["condition", "target"]).assign(family="conditions"),
                mt.summary(abl, ["condition", "target", "heads"]).assign(family="ablation"),
            ],
            ignore_index=True,
        ),
        "tests": _tests(profile, conditions, abl),
        "site": _site(profile, units, test, first),
        "gradcam": _gradcam(profile, [u for u in in_cv if u.heads == "age"]),
        "delayed_summary": _delayed_summary(delayed),
    }
    for name, table in tables.items():
        write_table(layout.multitask_result(name), table)


def _tests(profile, conditions: pd.DataFrame, abl: pd.DataFrame) -> pd.DataFrame:
    """The conditions against the first (per target), the ablation against age alone, and per
    condition the biological target against the chronological one."""
    reference = profile.multitask.conditions[0]
    parts = [
        mt.comparisons(part, "condition", reference, f"conditions ({target})")
        for target, part in conditions.groupby("target", sort=False)
    ]
    if abl["heads"].nunique() > 1 and "age" in set(abl["heads"]):
        parts.append(mt.comparisons(abl, "heads", "age", "ablation"))
    rows = []
    for condition, part in conditions.groupby("condition", sort=False):
        for metric in [c for c in part.columns if c.startswith("mae_vs_")]:
            wide = part.pivot_table(index=mt.PAIR, columns="target", values=metric).dropna()
            if {"chronological", "biological"} <= set(wide.columns):
                rows.append(
                    {"family": "targets", "metric": metric, "test": "vs chronological",
                     "level": condition}
                    | mt.paired_comparison(wide["chronological"], wide["biological"])
                )  # fmt: skip
    return pd.concat([*parts, pd.DataFrame(rows)], ignore_index=True)


def _site(profile, units: list, test: pd.DataFrame, first: str) -> pd.DataFrame:
    """Per condition: the MAE on site B of the model trained on site A alone, beside the
    cross-validation's MAE on each site (the first target, repeat 0)."""
    out_of_site = [u for u in units if u.out_of_site]
    if not out_of_site:
        return pd.DataFrame(columns=["condition", "site", "training", "n", "mae"])
    rows = []
    column = TARGET_COLUMN[first]
    for frame, training in ((_read(profile, out_of_site, "test"), "site A only"),
                            (test, "cross-validation")):  # fmt: skip
        picked = frame[(frame["heads"] == "age") & (frame["target"] == first)]
        picked = picked[(picked["repeat"] == 0) & picked["condition"].isin(
            profile.multitask.conditions)]  # fmt: skip
        for (condition, site), part in picked.groupby(["condition", "site"], sort=False):
            error = np.abs(part["predicted_months"] - part[column])
            rows.append({"condition": condition, "site": site, "training": training,
                         "n": len(part), "mae": float(error.mean())})  # fmt: skip
    return pd.DataFrame(rows)


def _gradcam(profile, units: list) -> pd.DataFrame:
    """Per condition and target: Grad-CAM's lobe shares scored against the data's truth (the
    ideal observer's Fisher shares: correctness) and the model's own |s_k| (faithfulness,
    the children of the scored fold), step 07's scoring; NaN without a planted truth."""
    lobes = _read(profile, [u for u in units if u.repeat == 0], "lobe_shares")
    columns = ["condition", "target", "children", "correctness", "faithfulness"]
    if profile.data or lobes.empty:
        return pd.DataFrame(columns=columns)
    expected = pd.read_csv(RunLayout(profile.run_path).synthetic.expected_importance)
    fisher = expected[expected["definition"] == IMPORTANCE_DEFINITIONS[0]]
    edges, n, seed = profile.age_group_edges, profile.attribution.bootstrap, profile.seed
    rows = []
    lobes = lobes.assign(empty=lobes.groupby("subject_id")["importance"].transform(
        lambda v: v.isna().all()))  # fmt: skip
    for (condition, target), every in lobes.groupby(["condition", "target"], sort=False):
        part = every[~every["empty"]]  # a Grad-CAM map without mass in the brain is not scored
        correct = pd.DataFrame(scoring.lobe_scores(part, fisher, edges, n, seed))
        row = {"condition": condition, "target": target, "children": part["subject_id"].nunique(),
               "empty_maps": every.loc[every["empty"], "subject_id"].nunique(),
               "correctness": _metric(correct, "spearman_rho"), "faithfulness": np.nan}  # fmt: skip
        scored = part.dropna(subset=["s_chain"])
        if not scored.empty:
            truth = scored.assign(cue=scored["lobe"], kind=MATURATION, value=scored["s_chain"])
            faithful = faithfulness.faithfulness_scores(
                scored.assign(method="gradcam"), truth, edges=edges, n_resamples=n, seed=seed,
                per_voxel=(),
            )  # fmt: skip
            row["faithfulness"] = _metric(faithful, "spearman_rho")
            row["faithfulness_subject"] = _metric(faithful, "subject_rho")
        shares = part.groupby("lobe")["importance"].mean()
        rows.append(row | {f"share_{lobe}": share for lobe, share in shares.items()})
    return pd.DataFrame(rows)


def _metric(scores: pd.DataFrame, name: str) -> float:
    return float(scores.loc[scores["metric"] == name, "value"].iloc[0])


def _delayed(profile, units: list) -> pd.DataFrame:
    """Per delayed child and model (condition, target, heads): the prediction averaged over
    folds and repeats, its brain-age gap and its on-time twin's."""
    found = _read(profile, units, "delayed")
    if found.empty:
        return pd.DataFrame(columns=["subject_id", "planted_delay_months", "lobe", "gap_months"])
    model = ["condition", "target", "heads"]
    mean = (
        found.groupby([*model, "subject_id"], sort=False)
        .agg(predicted_months=("predicted_months", "mean"), age_months=("age_months", "first"),
             twin=("twin", "first"), lobe=("lobe", "first"),
             planted_delay_months=("planted_delay_months", "first"),
             biological_age_months=("biological_age_months", "first"))
        .reset_index()
    )  # fmt: skip
    mean["gap_months"] = mean["predicted_months"] - mean["age_months"]
    twins = mean[mean["planted_delay_months"] == 0].set_index([*model, "twin"])["gap_months"]
    delayed = mean[mean["planted_delay_months"] > 0].copy()
    delayed["twin_gap_months"] = twins.loc[
        list(delayed[[*model, "twin"]].itertuples(index=False, name=None))
    ].to_numpy()
    delayed["gap_vs_twin_months"] = delayed["gap_months"] - delayed["twin_gap_months"]
    first = ["subject_id", "planted_delay_months", "lobe", "gap_months"]
    rest = [c for c in delayed.columns if c not in first and c != "twin"]
    return delayed[first + rest].reset_index(drop=True)


def _delayed_summary(delayed: pd.DataFrame) -> pd.DataFrame:
    """Per model and delay kind (global, one lobe): mean planted delay, mean gap, mean gap
    against the twin, and the share of children that the model sees younger than their twin."""
    if delayed.empty:
        return pd.DataFrame()
    kind = np.where(delayed["lobe"] == "all", "global", "one lobe")
    return (
        delayed.assign(kind=kind, younger=delayed["gap_vs_twin_months"] < 0)
        .groupby(["condition", "target", "heads", "kind"], sort=False)
        .agg(children=("subject_id", "size"),
             mean_planted_delay_months=("planted_delay_months", "mean"),
             mean_gap_months=("gap_months", "mean"),
             mean_gap_vs_twin_months=("gap_vs_twin_months", "mean"),
             seen_younger_share=("younger", "mean"))
        .reset_index()
    )  # fmt: skip
