"""Step 10's tables across seeds, from its units' files (:mod:`ctbrainage.steps.s10_robustness`
reads them and writes these tables)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ctbrainage.core.layout import RunLayout
from ctbrainage.interpret.attribution import top_set
from ctbrainage.stats import robustness as rb
from ctbrainage.steps.s06_stats import tests as table1_tests
from ctbrainage.steps.s10_seed import BEST, LAST, LOBE_NAMES, Unit
from ctbrainage.synth import faithfulness, scoring
from ctbrainage.synth.interventions import MATURATION
from ctbrainage.synth.schedule import IMPORTANCE_DEFINITIONS

KEYS = ["condition", "augment", "register", "seed", "fold"]
CONDITION_KEYS = ["condition", "augment", "register"]
# the per-seed metrics that the condition table summarises and the tests compare
REFERENCE = (False, False, 0)  # Table 1's reference training: augment, register, seed
METRICS = ["mae_best", "mae_last", "best_epoch", "agreement", "faithfulness", "correctness"]


def tables(profile, units: list[Unit], read: dict, maps: dict) -> dict[str, pd.DataFrame]:
    """Every table of step 10 (names as ``s10_robustness.RESULTS``, plus ``table``)."""
    config = profile.robustness
    checkpoints, subjects = read["checkpoints"], read["subjects"]
    agreement, ranks, per_seed = _agreement(profile, units, subjects, checkpoints, maps)
    runs = _runs(checkpoints, profile.robustness.phases).merge(per_seed, on=KEYS, how="left")
    runs = runs.merge(_scores(profile, subjects, read["sensitivity"]), on=KEYS, how="left")
    cells, share = _table1(profile, units, read["perturbation"])
    tests = rb.factor_tests(runs, [m for m in METRICS if runs[m].notna().any()])
    summary = _summary(runs, agreement, config)
    return {
        "table": summary,
        "runs": runs,
        "checkpoints": checkpoints,
        "agreement": agreement,
        "lobe_ranks": ranks,
        "table1_cells": cells,
        "table1_share": share,
        "tests": tests,
        "agreement_tests": _agreement_tests(runs),
        "curves": read["curve"],
    }


def _runs(checkpoints: pd.DataFrame, phases) -> pd.DataFrame:
    """One row per unit: best and last test MAE and epoch; the epoch each phase was reached."""
    rows = []
    for key, part in checkpoints.groupby(KEYS, sort=False):
        at = part.set_index("checkpoint")
        row = dict(zip(KEYS, key, strict=True))
        row |= {
            "best_epoch": at.loc[BEST, "epoch"],
            "last_epoch": at.loc[LAST, "epoch"],
            "mae_best": at.loc[BEST, "test_mae_months"],
            "mae_last": at.loc[LAST, "test_mae_months"],
        }
        for i in range(len(phases)):
            name = f"phase{i + 1}"
            row[f"epoch_{name}"] = at.loc[name, "epoch"] if name in at.index else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _agreement(profile, units, subjects, checkpoints, maps):
    """Per condition, fold, checkpoint and method: seeds that reached it, their mean epoch and
    validation MAE, the agreeing voxels, each seed's agreement with the others, Kendall's W of
    the lobe ranks of the seeds' top sets; the ranks; and each seed's agreement at the best
    checkpoint (of the first method) for the per-seed table."""
    config = profile.robustness
    rows, rank_rows, per_seed = [], [], []
    names = sorted({c for c in checkpoints["checkpoint"]}, key=_checkpoint_order)
    groups = {}
    for unit in units:
        groups.setdefault((unit.condition, unit.augment, unit.register, unit.fold), []).append(unit)
    for (condition, augment, register, fold), members in groups.items():
        for name, method in ((n, m) for n in names for m in config.methods):
            key = f"{name}/{method}"
            have = [u for u in members if key in maps[u.name].files]
            row = {
                "condition": condition,
                "augment": augment,
                "register": register,
                "fold": fold,
                "checkpoint": name,
                "method": method,
                "seeds": len(members),
                "seeds_reaching": len(have),
            }
            reached = checkpoints[
                (checkpoints["condition"] == condition)
                & (checkpoints["fold"] == fold)
                & (checkpoints["checkpoint"] == name)
            ]
            row |= {
                "mean_epoch": reached["epoch"].mean(),
                "mean_val_mae": reached["val_mae_months"].mean(),
            }
            shared = np.full(len(have), np.nan)
            if len(have) > 1:  # agreement needs two seeds at the checkpoint
                stack = np.stack([maps[u.name][key] for u in have])
                mask = maps[have[0].name]["mean_brain"] >= 0.5
                brain = torch.from_numpy(np.broadcast_to(mask, stack.shape).copy())
                tops = top_set(torch.from_numpy(stack), brain, config.agree_top).numpy()
                agreeing = rb.agreeing_voxels(tops)
                shared = rb.seed_agreement(tops)
                mean, low, high = rb.mean_ci(shared, config.bootstrap, profile.seed)
                row |= {
                    "agreeing_voxels": int(agreeing.sum()),
                    "agreeing_share": agreeing.sum() / max(tops[0].sum(), 1),
                    "seed_agreement": mean,
                    "seed_agreement_low": low,
                    "seed_agreement_high": high,
                }
            seed_ranks = []
            for unit in have:
                mine = subjects[
                    (subjects["seed"] == unit.seed)
                    & (subjects["fold"] == fold)
                    & (subjects["condition"] == condition)
                    & (subjects["checkpoint"] == name)
                    & (subjects["method"] == method)
                ]
                shares = mine.groupby("lobe")["top_share"].mean().reindex(LOBE_NAMES)
                ranked = rb.descending_ranks(shares.to_numpy())[0]
                seed_ranks.append(ranked)
                rank_rows += [
                    {
                        "condition": condition,
                        "fold": fold,
                        "checkpoint": name,
                        "method": method,
                        "seed": unit.seed,
                        "lobe": lobe,
                        "top_share": shares[lobe],
                        "rank": rank,
                    }
                    for lobe, rank in zip(LOBE_NAMES, ranked, strict=True)
                ]
            w, p = rb.kendall_w(np.array(seed_ranks)) if len(seed_ranks) > 1 else (np.nan,) * 2
            rows.append(row | {"kendall_w": w, "kendall_p": p})
            if name == BEST and method == config.methods[0]:
                per_seed += [
                    {
                        "condition": condition,
                        "augment": augment,
                        "register": register,
                        "seed": u.seed,
                        "fold": fold,
                        "agreement": a,
                    }
                    for u, a in zip(have, shared, strict=True)
                ]
    return (
        pd.DataFrame(rows),
        pd.DataFrame(rank_rows),
        pd.DataFrame(per_seed, columns=KEYS + ["agreement"]),
    )


def _checkpoint_order(name: str) -> tuple[int, str]:
    return (0, name) if name.startswith("phase") else (1 if name == BEST else 2, name)


def _scores(profile, subjects: pd.DataFrame, sensitivity: pd.DataFrame) -> pd.DataFrame:
    """Per unit, at the best checkpoint and for the first method: the lobe importance's
    Spearman ρ across age groups × lobes with the model's own |s_k| (faithfulness) and with the
    ideal observer's shares (correctness), step 07's scoring; NaN without a planted truth."""
    out = subjects[KEYS].drop_duplicates().assign(faithfulness=np.nan, correctness=np.nan)
    if profile.data or sensitivity.empty:
        return out
    config = profile.robustness
    layout = RunLayout(profile.run_path)
    expected = pd.read_csv(layout.synthetic.expected_importance)
    fisher = expected[expected["definition"] == IMPORTANCE_DEFINITIONS[0]]
    method = config.methods[0]
    rows = []
    for key, part in subjects[
        (subjects["checkpoint"] == BEST) & (subjects["method"] == method)
    ].groupby(KEYS, sort=False):
        mine = sensitivity.set_index(KEYS).loc[key].reset_index()
        truth = mine.assign(cue=mine["lobe"], kind=MATURATION, value=mine["s_chain"])
        faithful = faithfulness.faithfulness_scores(
            part,
            truth,
            edges=profile.age_group_edges,
            n_resamples=config.bootstrap,
            seed=profile.seed,
            per_voxel=(),
        )
        correct = scoring.lobe_scores(
            part, fisher, profile.age_group_edges, config.bootstrap, profile.seed
        )
        rows.append(
            dict(zip(KEYS, key, strict=True))
            | {
                "faithfulness": _metric(faithful, "spearman_rho"),
                "faithfulness_subject": _metric(faithful, "subject_rho"),
                "correctness": _metric(pd.DataFrame(correct), "spearman_rho"),
            }
        )
    return pd.DataFrame(rows)


def _metric(scores: pd.DataFrame, name: str) -> float:
    return float(scores.loc[scores["metric"] == name, "value"].iloc[0])


def _table1(profile, units: list[Unit], perturbation: pd.DataFrame):
    """Table 1 per condition and seed (every tested fold's children together) and, per
    condition and cell, the share of seeds in which the cell is significant and in which its
    mean ΔAE keeps the sign of the reference training's (augment off, register off, seed 0)."""
    cells = []
    for (condition, augment, register, seed), part in perturbation.groupby(
        ["condition", "augment", "register", "seed"], sort=False
    ):
        table = table1_tests(profile, part)
        cells.append(
            table.assign(condition=condition, augment=augment, register=register, seed=seed)
        )
    cells = pd.concat(cells, ignore_index=True)
    augment, register, seed = REFERENCE
    reference = cells[
        (cells["augment"] == augment) & (cells["register"] == register) & (cells["seed"] == seed)
    ]
    sign = reference.set_index(["group", "lobe"])["mean_delta_ae"].apply(np.sign)
    cells["reference_sign"] = [
        sign.get((g, lobe), np.nan) for g, lobe in zip(cells["group"], cells["lobe"], strict=True)
    ]
    cells["sign_kept"] = np.sign(cells["mean_delta_ae"]) == cells["reference_sign"]
    share = (
        cells.groupby(["condition", "group", "lobe"], sort=False)
        .agg(
            seeds=("seed", "size"),
            significant_share=("significant", "mean"),
            sign_kept_share=("sign_kept", "mean"),
            mean_delta_ae=("mean_delta_ae", "mean"),
            reference_sign=("reference_sign", "first"),
        )
        .reset_index()
    )
    return cells, share


def _summary(runs: pd.DataFrame, agreement: pd.DataFrame, config) -> pd.DataFrame:
    """One row per condition: each per-seed metric's mean with its 95 % CI over seeds, the
    phases' mean epoch and seeds reaching them, agreeing voxels and Kendall's W (best)."""
    rows = []
    for key, part in runs.groupby(CONDITION_KEYS, sort=False):
        row = dict(zip(CONDITION_KEYS, key, strict=True)) | {"seeds": len(part)}
        for metric in METRICS:
            mean, low, high = rb.mean_ci(part[metric], config.bootstrap, 0)
            row |= {metric: mean, f"{metric}_low": low, f"{metric}_high": high}
        for column in [c for c in part if c.startswith("epoch_phase")]:
            row[column] = part[column].mean()
            row[column.replace("epoch_", "reached_")] = int(part[column].notna().sum())
        best = agreement[
            (agreement["condition"] == key[0])
            & (agreement["checkpoint"] == BEST)
            & (agreement["method"] == config.methods[0])
        ]
        row |= {
            "agreeing_voxels": best["agreeing_voxels"].mean(),
            "kendall_w": best["kendall_w"].mean(),
        }
        rows.append(row)
    return pd.DataFrame(rows)


def _agreement_tests(runs: pd.DataFrame) -> pd.DataFrame:
    """Across every seed of every condition: Spearman's ρ of its agreement with its
    faithfulness and with its correctness (two-sided p)."""
    from scipy import stats

    rows = []
    for target in ("faithfulness", "correctness"):
        both = runs[["agreement", target]].dropna()
        rho, p = (
            stats.spearmanr(both["agreement"], both[target]) if len(both) > 2 else (np.nan, np.nan)
        )
        rows.append({"target": target, "n": len(both), "rho": float(rho), "p": float(p)})
    return pd.DataFrame(rows)
