"""Score pipeline outputs against the synthetic cohort's ground truth: preprocessing, lobes,
age cues, and the lobe importance of perturbation (step 06) and attribution (step 07), the
latter two with one measure of recovery (:func:`lobe_recovery`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, NamedTuple

import nibabel as nib
import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.transform import Rotation
from scipy.stats import spearmanr

from ctbrainage.core.cohort import age_group
from ctbrainage.core.labels import LOBES
from ctbrainage.core.layout import RunLayout, SyntheticLayout
from ctbrainage.imaging.preprocess import map_to_grid
from ctbrainage.synth.generate import measure_lobe_wm_hu
from ctbrainage.synth.schedule import MaturationSchedule


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def brain_mask_dice(mask_path: str | Path, truth_path: str | Path) -> float:
    """Dice of a brain mask (any grid) against the true mask, on the truth's native grid."""
    truth = sitk.ReadImage(str(truth_path))
    ours = sitk.Resample(
        sitk.Cast(sitk.ReadImage(str(mask_path)), sitk.sitkFloat32),
        truth,
        sitk.Transform(),
        sitk.sitkLinear,
        0.0,
    )
    return dice(sitk.GetArrayViewFromImage(ours) >= 0.5, sitk.GetArrayViewFromImage(truth))


def true_axes_in_grid(affine: np.ndarray, truth: dict) -> np.ndarray:
    """The subject's true anatomical axes (template axes under the planted pose) expressed in
    the axes of a preprocessed grid (RAS ``affine``): a rotation matrix."""
    found = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    pose = Rotation.from_euler("xyz", truth["rotation_deg"], degrees=True).as_matrix()
    return found.T @ pose


def orientation_spread_deg(rotations: list[np.ndarray]) -> np.ndarray:
    """Angle (degrees) of each rotation from the cohort's mean rotation."""
    stack = Rotation.from_matrix(np.array(rotations))
    mean = stack.mean()
    return np.degrees((stack * mean.inv()).magnitude())


def score_preprocessing(layout: RunLayout) -> pd.DataFrame:
    """Per subject of a synthetic run: brain-mask Dice, orientation error, and measured / true
    brain volume."""
    cohort = layout.synthetic
    table = pd.read_csv(layout.preprocess_table, dtype={"subject_id": str})
    rows, rotations = [], []
    for rec in table.itertuples():
        truth = json.loads(cohort.truth(rec.subject_id).read_text())
        affine = nib.load(layout.preprocessed(rec.subject_id)).affine
        rotations.append(true_axes_in_grid(affine, truth))
        rows.append(
            {
                "subject_id": rec.subject_id,
                "age_months": truth["age_months"],
                "site": truth["site"],
                "dice": brain_mask_dice(
                    layout.brain_native(rec.subject_id), cohort.truth_brain(rec.subject_id)
                ),
                "volume_ratio": rec.brain_volume_ml / truth["brain_volume_ml"],
            }
        )
    scores = pd.DataFrame(rows)
    scores["orientation_error_deg"] = orientation_spread_deg(rotations)
    return scores


def score_lobes(layout: RunLayout) -> pd.DataFrame:
    """Dice of every subject's lobe labels in a synthetic run against the true lobes (carried
    from the native grid into the preprocessed grid): one row per subject and lobe."""
    cohort, rows = layout.synthetic, []
    for rec in pd.read_csv(layout.lobes_table, dtype={"subject_id": str}).itertuples():
        sid = rec.subject_id
        reference = sitk.ReadImage(str(layout.preprocessed(sid)))
        truth = map_to_grid(sitk.ReadImage(str(cohort.truth_lobes(sid))), reference)
        ours = np.asarray(nib.load(layout.lobes(sid)).dataobj)
        age = json.loads(cohort.truth(sid).read_text())["age_months"]
        for idx, name in LOBES.items():
            rows.append(
                {
                    "subject_id": rec.subject_id,
                    "age_months": age,
                    "lobe": name,
                    "dice": dice(ours == idx, truth == idx),
                }
            )
    return pd.DataFrame(rows)


def measure_age_cues(cohort: SyntheticLayout) -> pd.DataFrame:
    """Age cues measured in each generated image (not taken from the planted parameters):
    brain volume (true brain mask), skull volume and mean attenuation (bone, > 400 HU, inside the
    head), cortical grey-matter HU (the brain mask's outermost voxel layer, site offset removed)
    and each lobe's white-matter HU (``wm_hu_<lobe>``, white-matter cores, offset removed);
    one row per subject, with its age and biological age."""
    truth = pd.read_csv(cohort.truth_table, dtype={"subject_id": str})
    rows = []
    for rec in truth.itertuples():
        sid = rec.subject_id
        image = nib.load(cohort.root / json.loads(cohort.truth(sid).read_text())["image"])
        hu = np.asarray(image.dataobj, dtype=np.float32) - rec.site_offset_hu
        brain = np.asarray(nib.load(cohort.truth_brain(sid)).dataobj) > 0
        wm = np.asarray(nib.load(cohort.truth_wm(sid)).dataobj)
        voxel_ml = float(abs(np.linalg.det(image.affine[:3, :3]))) / 1000.0
        filled = ndimage.binary_fill_holes(ndimage.binary_closing(hu > -300, iterations=2))
        head = ndimage.label(filled)[0]
        largest = np.argmax(np.bincount(head[brain]))  # the component holding the brain
        skull = (head == largest) & (hu > 400) & ~brain
        cortex = brain & ~ndimage.binary_erosion(brain)
        rows.append(
            {
                "subject_id": sid,
                "age_months": rec.age_months,
                "biological_age_months": rec.biological_age_months,
                "brain_volume_ml": float(brain.sum()) * voxel_ml,
                "skull_volume_ml": float(skull.sum()) * voxel_ml,
                "skull_hu": float(hu[skull].mean()),
                "cortex_hu": float(hu[cortex].mean()),
                **{f"wm_hu_{k}": v for k, v in measure_lobe_wm_hu(hu, wm).items()},
            }
        )
    return pd.DataFrame(rows)


class Recovery(NamedTuple):
    """:func:`lobe_recovery`'s result."""

    rho: Rho | None  # Spearman's ρ over all cells (statistic, pvalue); None below 3 cells
    within_rho: float  # mean over groups of the within-group Spearman ρ; NaN without a group
    tops: list[tuple[Any, int | None, int | None]]  # (group, planted top cell, measured top cell)

    @property
    def top_matches(self) -> int:
        """Groups whose planted and measured top cells agree."""
        return sum(p is not None and p == m for _, p, m in self.tops)


def _top(values: np.ndarray, at: np.ndarray) -> int | None:
    """The position (of ``at``) of the first largest finite value; None without one."""
    part = values[at]
    return int(at[np.nanargmax(part)]) if np.isfinite(part).any() else None


class Rho(NamedTuple):
    """Spearman's ρ and its p-value (NaN where it was not asked for)."""

    statistic: float
    pvalue: float


def spearman_rho(x, y) -> float:
    """Spearman's ρ exactly as ``scipy.stats.spearmanr`` computes it (Pearson's r of the
    average ranks, the same calls), NaN where a side is constant or holds a NaN, without its
    p-value and warnings: a third of the time (0.14 against 0.47 ms on 16 cells), for the
    bootstrap's thousands of calls."""
    pair = np.column_stack((np.asarray(x, float), np.asarray(y, float)))
    if len(pair) < 2 or np.isnan(pair).any() or (pair == pair[0]).all(axis=0).any():
        return np.nan
    ranked = np.column_stack([_average_ranks(pair[:, 0]), _average_ranks(pair[:, 1])])
    return float(np.corrcoef(ranked, rowvar=False)[1, 0])


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank (``scipy.stats.rankdata``'s default; ranks
    are exact halves, so any correct algorithm gives the same array)."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return ranks


def lobe_recovery(planted, measured, groups, pvalue: bool = True) -> Recovery:
    """How well ``measured`` lobe importance recovers the ``planted`` one, over cells of an age
    group and a lobe (``groups``: each cell's group): Spearman ρ over all cells (the planted
    first), the mean over groups of the within-group ρ (groups in order of appearance, where
    both sides vary: a group with a NaN cell is left out) and each group's top cell on either
    side (the first of equal values; NaN ignored). Steps 06 and 07 score with it; without
    ``pvalue`` (a bootstrap's resamples) the overall ρ's p-value is NaN."""
    planted, measured = np.asarray(planted, float), np.asarray(measured, float)
    groups = np.asarray(groups)
    labels, first = np.unique(groups, return_index=True)
    rho = None
    if len(planted) > 2:
        rho = (
            Rho(*spearmanr(planted, measured))
            if pvalue
            else Rho(spearman_rho(planted, measured), np.nan)
        )
    within, tops = [], []
    for label in labels[np.argsort(first)]:
        at = np.flatnonzero(groups == label)
        t, m = planted[at], measured[at]
        if np.ptp(t) > 0 and np.ptp(m) > 0:
            within.append(spearman_rho(t, m))
        tops.append((label, _top(planted, at), _top(measured, at)))
    return Recovery(rho, float(np.mean(within)) if within else np.nan, tops)


def score_importance(
    measured: pd.DataFrame,
    expected: pd.DataFrame,
    min_signal: float = 0.1,
    value: str = "mean_delta_ae",
) -> dict:
    """Does the perturbation analysis recover the planted maturation schedule?

    ``measured``: one row per (group, lobe) with the readout ``value`` (default
    ``mean_delta_ae``) and, when it was tested, ``significant`` (a ``stats.lobe_age_table``;
    ``stats.mean_abs_change`` is untested: its significance entries are None); ``expected``:
    the schedule's ``expected_importance`` over the same groups, one definition. Returns
    Spearman ρ between planted importance and the measured readout over all cells, the mean
    within-group Spearman ρ of the lobe ranking (the overall ρ is helped by every lobe's
    importance falling with age; the within-group one tests the order alone), the top lobe per
    group (planted vs measured), and, for lobes planted with no age signal, the groups where
    masking them was significant (should be none); all by :func:`lobe_recovery`.

    Groups whose summed planted signal (``hu_per_month``) is below ``min_signal`` × the largest
    group's hold no planted lobe signal (e.g. a schedule complete by 30 months): ranking their
    lobes ranks noise. The same numbers are therefore also given over the groups with a
    signal (``signal_*``), and significant cells in groups without one are listed
    (``significant_without_signal``: effects the schedule did not plant).
    """
    if "definition" in expected and expected["definition"].nunique() > 1:
        raise ValueError("expected importance holds several definitions: choose one")
    columns = ["group", "lobe", "hu_per_month", "importance"]
    cells = measured.merge(expected[columns], on=["group", "lobe"])
    if cells.empty:
        raise ValueError("measured and planted importance share no (group, lobe) cell")
    scored = lobe_recovery(cells["importance"], cells[value], cells["group"])
    lobe = {None: None, **dict(enumerate(cells["lobe"]))}  # a cell's lobe; no top cell: None
    top = {
        group: {"planted": lobe[p], "measured": lobe[m], "match": p is not None and p == m}
        for group, p, m in scored.tops
    }
    totals = expected.groupby("lobe")["importance"].sum()
    null_lobes = totals[totals <= 0].index
    tested = "significant" in cells
    significant_null = (
        {
            lobe: cells.loc[(cells["lobe"] == lobe) & cells["significant"], "group"].tolist()
            for lobe in null_lobes
        }
        if tested
        else None
    )
    totals_by_group = cells.groupby("group", sort=False)["hu_per_month"].sum()
    signal = totals_by_group[totals_by_group >= min_signal * totals_by_group.max()].index
    in_signal = cells["group"].isin(signal)
    part = cells[in_signal]
    signal_scored = lobe_recovery(part["importance"], part[value], part["group"])
    return {
        "signal_groups": list(signal),
        "signal_spearman_rho": (
            float(signal_scored.rho.statistic) if signal_scored.rho else float("nan")
        ),
        "signal_within_group_spearman_rho": signal_scored.within_rho,
        "signal_top_lobe_matches": sum(top[g]["match"] for g in signal),
        "significant_without_signal": (
            [f"{r.group}: {r.lobe}" for r in cells[~in_signal & cells["significant"]].itertuples()]
            if tested
            else None
        ),
        "spearman_rho": float(scored.rho.statistic) if scored.rho else float("nan"),
        "spearman_p": float(scored.rho.pvalue) if scored.rho else float("nan"),
        "within_group_spearman_rho": scored.within_rho,
        "cells": len(cells),
        "top_lobe": top,
        "top_lobe_matches": sum(t["match"] for t in top.values()),
        "groups": len(top),
        "null_lobes_significant_in": significant_null,
    }


READOUTS = {"mean_delta_ae": "ΔAE", "mean_abs_change": "|Δprediction|"}


def recovery_row(
    fill: str, measured: pd.DataFrame, expected: pd.DataFrame, value: str = "mean_delta_ae"
) -> dict:
    """One fill's and readout's :func:`score_importance` in brief (a row of the by-fill
    comparison): overall and signal-group scores and the number of significant cells of
    ``measured`` (None for an untested readout)."""
    score = score_importance(measured, expected, value=value)
    return {
        "fill": fill,
        "readout": READOUTS[value],
        "definition": expected["definition"].iloc[0],
        "spearman_rho": score["spearman_rho"],
        "within_group_rho": score["within_group_spearman_rho"],
        "top_lobe": f"{score['top_lobe_matches']}/{score['groups']}",
        "signal_rho": score["signal_spearman_rho"],
        "signal_within_group_rho": score["signal_within_group_spearman_rho"],
        "signal_top_lobe": f"{score['signal_top_lobe_matches']}/{len(score['signal_groups'])}",
        "significant_cells": (
            int(measured["significant"].sum()) if "significant" in measured else None
        ),
    }


def voxel_scores(attribution_map, signal, brain, level: float = 0.25) -> dict[str, float]:
    """A voxel map against the planted signal of one subject (same grid): the true region is
    the brain's voxels whose |signal| reaches ``level`` × its maximum. Returns the AUROC of
    |map| for that region over the brain's voxels, the relevance-mass accuracy (Arras et al.
    2022: the share of the brain's |map| inside the region), the relevance-rank accuracy (the
    share of the region among the brain's top-|region| voxels of |map|) and the chance level of
    both, the region's share of the brain's voxels (``region_share``); NaN without a planted
    signal. Both accuracies equal Quantus' (tests/test_quantus.py)."""
    from sklearn.metrics import roc_auc_score

    inside = np.asarray(brain) > 0
    score = np.abs(np.asarray(attribution_map, np.float64))[inside]
    planted = np.abs(np.asarray(signal, np.float64))[inside]
    if planted.size == 0 or planted.max() <= 0:
        return dict.fromkeys(VOXEL_SCORES, float("nan"))
    region = planted >= level * planted.max()
    total = score.sum()
    top = np.argsort(-score, kind="stable")[: region.sum()]
    return {
        "auroc": float(roc_auc_score(region, score)) if 0 < region.sum() < region.size else np.nan,
        "mass_accuracy": float(score[region].sum() / total) if total > 0 else float("nan"),
        "rank_accuracy": float(region[top].mean()) if total > 0 else float("nan"),
        "region_share": float(region.mean()),
    }


VOXEL_SCORES = ("auroc", "mass_accuracy", "rank_accuracy", "region_share")


#: a score, its bootstrap CI, and what it would be by chance (NaN where that is not defined)
SCORE_COLUMNS = ["method", "level", "metric", "value", "ci_low", "ci_high", "chance"]
#: the chance level of a score of :func:`lobe_scores` (ρ; top lobes: a share of the groups)
LOBE_CHANCE = {"spearman_rho": 0.0, "within_group_rho": 0.0, "top_lobe_matches": 0.25}


def percentile_ci(values, confidence: float = 0.95) -> tuple[float, float]:
    """The percentile interval of the finite ``values`` (bootstrap draws); NaN without one."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return np.nan, np.nan
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def lobe_scores(
    rows: pd.DataFrame,
    expected: pd.DataFrame,
    edges,
    n_resamples: int,
    seed: int,
    level: str = "lobe",
) -> list[dict]:
    """One method's lobe importance per subject (``rows``: ``subject_id, age_months, lobe,
    importance``) against the planted importance (one definition): :func:`lobe_recovery` of the
    age groups' mean importance, with percentile CIs from resampling subjects within their
    groups. Rows of :data:`SCORE_COLUMNS` but ``method``."""
    groups = age_group(rows["age_months"], edges).astype(str)
    wide = rows.assign(group=groups).pivot_table(
        index=["group", "subject_id"], columns="lobe", values="importance"
    )
    truth = expected.pivot(index="group", columns="lobe", values="importance")
    truth = truth.loc[[g for g in truth.index if g in wide.index.get_level_values(0)]]
    wide = wide[list(truth.columns)]
    members = [wide.loc[g].to_numpy() for g in truth.index]
    planted = truth.to_numpy().ravel()
    cell_groups = np.repeat(np.arange(len(members)), truth.shape[1])

    def metrics(cells: list[np.ndarray]) -> tuple[float, float, int]:
        scored = lobe_recovery(planted, np.array(cells).ravel(), cell_groups, pvalue=False)
        return float(scored.rho.statistic), scored.within_rho, scored.top_matches

    point = metrics([m.mean(0) for m in members])
    rng = np.random.default_rng(seed)
    draws = [
        metrics([m[rng.integers(0, len(m), len(m))].mean(0) for m in members])
        for _ in range(n_resamples)
    ]
    draws = np.array(draws) if draws else np.full((0, 3), np.nan)
    names = ("spearman_rho", "within_group_rho", "top_lobe_matches")
    scale = {"top_lobe_matches": len(members)}  # chance: a quarter of the groups
    scores = [
        {"level": level, "metric": name, "value": value,
         **dict(zip(("ci_low", "ci_high"), percentile_ci(draws[:, i]), strict=True)),
         "chance": LOBE_CHANCE[name] * scale.get(name, 1)}
        for i, (name, value) in enumerate(zip(names, point, strict=True))
    ]  # fmt: skip
    no_ci = {"ci_low": np.nan, "ci_high": np.nan, "chance": np.nan}
    return scores + [{"level": level, "metric": "groups", "value": len(members), **no_ci}]


def attribution_scores(
    table: pd.DataFrame,
    expected: pd.DataFrame,
    voxel: pd.DataFrame,
    cost: pd.DataFrame,
    *,
    edges,
    n_resamples: int,
    seed: int,
    per_voxel: Collection[str],
    mean_ci: Callable[..., tuple[float, float]],
) -> pd.DataFrame:
    """Step 07's ``attribution_scores.csv``: per method of its long ``table`` the
    :func:`lobe_scores` against ``expected`` (for the ``per_voxel`` methods also per voxel:
    share ÷ the lobe's share of the brain), the mean of its subjects' :func:`voxel_scores`
    (``voxel``) with ``mean_ci``'s interval (``mean_ci(values, seed=, n_resamples=)``) and its
    cost (``cost``: per fold, passes and seconds per subject and training seconds)."""
    rows = []
    for method, part in table.groupby("method", sort=False):
        levels = {"lobe": part}
        if method in per_voxel:  # per voxel: share ÷ size
            levels["lobe_per_voxel"] = part.assign(
                importance=part["importance"] / part["reference"]
            )
        for level, cells in levels.items():
            scores = lobe_scores(cells, expected, edges, n_resamples, seed, level)
            rows += [{"method": method, **score} for score in scores]
        mine = voxel[voxel["method"] == method] if len(voxel) else voxel
        shares = mine["region_share"] if "region_share" in mine else pd.Series(dtype=float)
        chance = {"auroc": 0.5, "mass_accuracy": shares.mean(), "rank_accuracy": shares.mean()}
        for metric in [m for m in chance if m in mine] if len(mine) else ():
            values = mine[metric].dropna()
            low, high = mean_ci(values, seed=seed, n_resamples=n_resamples)
            rows.append(
                {"method": method, "level": "voxel", "metric": metric,
                 "value": float(values.mean()), "ci_low": low, "ci_high": high,
                 "chance": float(chance[metric])}
            )  # fmt: skip
        spent = cost[cost["method"] == method] if len(cost) else cost
        if len(spent):
            n = spent["subjects"].sum()
            for metric in ("forward_passes", "backward_passes", "seconds_per_subject"):
                value = float((spent[metric] * spent["subjects"]).sum() / max(n, 1))
                rows.append({"method": method, "level": "cost", "metric": metric, "value": value})
            rows.append(
                {"method": method, "level": "cost", "metric": "training_seconds",
                 "value": float(spent["training_seconds"].sum())}
            )  # fmt: skip
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def planted_maturity(layout: RunLayout, subject_id: str) -> np.ndarray:
    """The planted white-matter maturity of one subject of a synthetic run, in its model grid:
    each lobe's maturity fraction at the child's biological age (the schedule's curve, in
    [0, 1]) on that lobe's white-matter core, 0 elsewhere; carried from the native grid like
    the lobes (linear interpolation)."""
    cohort = layout.synthetic
    schedule = MaturationSchedule.from_dict(json.loads(cohort.schedule.read_text()))
    age = json.loads(cohort.truth(subject_id).read_text())["biological_age_months"]
    lookup = np.zeros(max(LOBES) + 1, np.float32)
    for idx, name in LOBES.items():
        lookup[idx] = float(schedule.lobes[name].fraction(age))
    wm = sitk.ReadImage(str(cohort.truth_wm(subject_id)))
    native = sitk.GetImageFromArray(lookup[sitk.GetArrayFromImage(wm)])
    native.CopyInformation(wm)
    reference = sitk.ReadImage(str(layout.preprocessed(subject_id)))
    return map_to_grid(native, reference, labels=False).astype(np.float32)
