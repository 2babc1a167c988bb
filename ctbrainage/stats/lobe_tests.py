"""Paired statistics of lobe-wise perturbation per lobe × age group (Sawa et al. 2025, 3.5, 4.3).

For every lobe and age group the per-subject absolute errors of the whole and the lobe-masked
input are compared: Shapiro–Wilk on the differences ΔAE = |e_masked| − |e_whole|; a paired t-test
when normality is not rejected at ``alpha``, else a Wilcoxon signed-rank test; Cohen's d; and
Table 1's markers (``*`` significant, ``†`` / ``‡`` / ``§`` small / medium / large effect), which
every result carries. Extras beyond the paper: a bootstrap CI of the mean ΔAE, sliding age
windows, optional Benjamini–Hochberg correction across all tests of a table, and the fill-contrast
check. Pure functions of data frames: no file I/O, no profiles (Table 1's text is ``table1``).

Choices the paper leaves open, made here:

* **Cohen's d is the paired d_z = mean(ΔAE) / SD(ΔAE)** (SD with n − 1). The paper only says
  "Cohen's d", but its published numbers fit d_z: solving d_z = t / √n for n from each row's p
  and d gives, within rounding, one group size per age group (≈ 33, 57, 55 and 56 subjects, 201
  in all, the paper's cohort). A d over the SDs of the two conditions (d_av) would not give this,
  since it depends on how strongly |e_whole| and |e_masked| correlate. pingouin's
  ``ttest(paired=True)`` reports d_av; its ``compute_effsize(eftype="cohen_dz")`` matches ours.
* **Wilcoxon zeros: ``zero_method="wilcox"``** (zero differences are dropped before ranking), the
  default of SciPy (which the paper used), pingouin and R. SciPy chooses the exact, permutation or
  normal-approximation null distribution itself (``method="auto"``), with tie correction and
  without continuity correction (SciPy's default). All-zero differences are not tested: p = 1.
* Normality is rejected when the Shapiro–Wilk p < ``alpha``; significance is p < ``alpha``
  (strict, as the paper's caption says), or q < ``alpha`` with Benjamini–Hochberg.
* Repeats of the noise fill are averaged per subject × lobe (mean |e_masked|) before testing.
* Groups with fewer than 3 subjects are listed with test ``"n<3"`` and no p-value.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from itertools import pairwise

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from ctbrainage.core.cohort import MIN_GROUP, PAPER_AGE_EDGES, age_group, sliding_windows
from ctbrainage.core.labels import LOBES as LOBE_LABELS

__all__ = [
    "EFFECT_MARKERS",
    "LOBES",
    "MIN_SUBJECTS",
    "NOT_TESTED",
    "SIGNIFICANCE_MARKER",
    "PairedTest",
    "bh_qvalues",
    "effect_size_class",
    "fill_contrast",
    "fill_contrast_points",
    "lobe_age_table",
    "mean_ci",
    "paired_test",
    "subject_lobe_errors",
    "table1_marker",
]

LOBES = tuple(LOBE_LABELS.values())  # Table 1's row order: frontal, parietal, temporal, occipital
MIN_SUBJECTS = MIN_GROUP  # fewest subjects a group needs to be tested (Shapiro–Wilk needs 3)
# Table 1's markers live here because every PairedTest (and lobe_age_table row) carries them.
SIGNIFICANCE_MARKER = "*"
EFFECT_MARKERS = {"small": "†", "medium": "‡", "large": "§"}
_EFFECT_BOUNDS = ((0.8, "large"), (0.5, "medium"), (0.2, "small"))
NOT_TESTED = "n<3"  # the test name (and Table 1's cell) of a group too small to test
_REQUIRED = ("subject_id", "age_months", "lobe", "pred_whole", "pred_masked")


# ---- one paired comparison ----------------------------------------------------------------------


@dataclass(frozen=True)
class PairedTest:
    """The outcome of comparing |e_masked| with |e_whole| over the subjects of one group."""

    n: int
    mean_delta_ae: float  # mean of |e_masked| − |e_whole|, months
    sd_delta_ae: float  # its SD (n − 1)
    shapiro_p: float  # Shapiro–Wilk p of the differences (NaN when not computable)
    test: str  # "paired t", "Wilcoxon" or "n<3"
    statistic: float  # t, or SciPy's two-sided Wilcoxon W = min(W+, W−)
    p: float
    cohen_d: float  # paired d_z = mean / SD of the differences
    effect: str  # "negligible", "small", "medium", "large" or "undefined"
    significant: bool  # p < alpha
    marker: str  # Table 1's markers, e.g. "*,†"
    note: str  # why a group is untested or special; empty otherwise


def effect_size_class(d: float) -> str:
    """Cohen's class of |d|: negligible < 0.2 ≤ small < 0.5 ≤ medium < 0.8 ≤ large."""
    if not math.isfinite(d):
        return "undefined"
    return next((name for bound, name in _EFFECT_BOUNDS if abs(d) >= bound), "negligible")


def table1_marker(significant: bool, d: float) -> str:
    """Table 1's markers: ``*`` when significant, then ``†``/``‡``/``§`` for a small/medium/large
    effect, joined by a comma as the paper prints them (``"*,†"``, ``"†"``, ``"*"`` or ``""``)."""
    effect = EFFECT_MARKERS.get(effect_size_class(d), "")
    return ",".join(m for m in (SIGNIFICANCE_MARKER if significant else "", effect) if m)


def _as_pairs(whole, masked) -> tuple[np.ndarray, np.ndarray]:
    whole, masked = np.asarray(whole, float).ravel(), np.asarray(masked, float).ravel()
    if whole.shape != masked.shape:
        raise ValueError(f"paired samples differ in length: {whole.size} vs {masked.size}")
    if not (np.isfinite(whole).all() and np.isfinite(masked).all()):
        raise ValueError("paired samples contain NaN or infinite values")
    return whole, masked


def _result(n, mean, sd, shapiro_p, test, statistic, p, d, alpha, notes=()) -> PairedTest:
    significant = bool(p < alpha)  # False for NaN
    return PairedTest(
        n=n,
        mean_delta_ae=mean,
        sd_delta_ae=sd,
        shapiro_p=shapiro_p,
        test=test,
        statistic=statistic,
        p=p,
        cohen_d=d,
        effect=effect_size_class(d),
        significant=significant,
        marker=table1_marker(significant, d),
        note="; ".join(notes),
    )


def paired_test(abs_err_whole, abs_err_masked, alpha: float = 0.05) -> PairedTest:
    """Shapiro–Wilk on ΔAE, then a paired t-test (normal) or Wilcoxon signed-rank test.

    Never raises for small or degenerate groups: fewer than 3 subjects → test ``"n<3"``; all
    differences zero → p = 1 with a note; constant non-zero differences → Wilcoxon, d undefined.
    """
    whole, masked = _as_pairs(abs_err_whole, abs_err_masked)
    diff = masked - whole
    n, nan = diff.size, math.nan
    mean = float(diff.mean()) if n else nan
    sd = float(diff.std(ddof=1)) if n > 1 else nan
    if n < MIN_SUBJECTS:
        note = f"{n} subject{'s' * (n != 1)}: fewer than {MIN_SUBJECTS}, not tested"
        return _result(n, mean, sd, nan, NOT_TESTED, nan, nan, nan, alpha, [note])
    if not diff.any():
        note = f"all {n} differences are zero: nothing to rank, p = 1"
        return _result(n, mean, sd, nan, "Wilcoxon", 0.0, 1.0, 0.0, alpha, [note])

    notes = []
    shapiro_p = float(stats.shapiro(diff).pvalue) if sd > 0 else nan
    if shapiro_p >= alpha:
        test, result = "paired t", stats.ttest_rel(masked, whole)
    else:
        test, result = "Wilcoxon", stats.wilcoxon(masked, whole, zero_method="wilcox")
        zeros = int(np.count_nonzero(diff == 0))
        if zeros:
            notes.append(f"{zeros} zero difference{'s' * (zeros != 1)} dropped (wilcox)")
    if sd == 0:
        notes.append("constant differences: Shapiro–Wilk and d undefined")
    d = mean / sd if sd > 0 else nan
    statistic, p = float(result.statistic), float(result.pvalue)
    return _result(n, mean, sd, shapiro_p, test, statistic, p, d, alpha, notes)


def mean_ci(
    values, seed: int = 42, confidence: float = 0.95, n_resamples: int = 9999
) -> tuple[float, float]:
    """BCa bootstrap CI of the mean (``scipy.stats.bootstrap``, a fresh RNG from ``seed``).

    NaN for fewer than 3 values; a constant sample gives the point itself (nothing to resample).
    """
    values = np.asarray(values, float)
    if values.size < MIN_SUBJECTS:
        return math.nan, math.nan
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    ci = stats.bootstrap(
        (values,),
        np.mean,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="BCa",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    return float(ci.low), float(ci.high)


def bh_qvalues(p) -> np.ndarray:
    """Benjamini–Hochberg q values (statsmodels ``fdr_bh``) over the finite p values; NaN stays."""
    p = np.asarray(p, float)
    q = np.full(p.shape, math.nan)
    tested = np.isfinite(p)
    if tested.any():
        q[tested] = multipletests(p[tested], method="fdr_bh")[1]
    return q


# ---- per lobe × age group ------------------------------------------------------------------------


def _check_perturbation(perturbation: pd.DataFrame) -> None:
    missing = [c for c in _REQUIRED if c not in perturbation.columns]
    if missing:
        raise ValueError(f"perturbation table lacks columns: {', '.join(missing)}")
    numbers = perturbation[["age_months", "pred_whole", "pred_masked"]].astype(float)
    bad = perturbation.loc[~np.isfinite(numbers).all(axis=1), "subject_id"].unique()
    if len(bad):
        raise ValueError(f"non-finite age or prediction for subjects: {', '.join(map(str, bad))}")
    ages = perturbation.groupby("subject_id")["age_months"].nunique()
    if (ages > 1).any():
        raise ValueError(f"subjects with several ages: {', '.join(map(str, ages.index[ages > 1]))}")


def subject_lobe_errors(perturbation: pd.DataFrame) -> pd.DataFrame:
    """One row per subject × lobe: age, |e_whole|, |e_masked| averaged over noise repeats, ΔAE.

    Columns ``subject_id, lobe, age_months, abs_err_whole, abs_err_masked, delta_ae, repeats``.
    """
    _check_perturbation(perturbation)
    age = perturbation["age_months"].astype(float)
    errors = perturbation.assign(
        abs_err_whole=(perturbation["pred_whole"].astype(float) - age).abs(),
        abs_err_masked=(perturbation["pred_masked"].astype(float) - age).abs(),
    )
    table = (
        errors.groupby(["subject_id", "lobe"], sort=False)
        .agg(
            age_months=("age_months", "first"),
            abs_err_whole=("abs_err_whole", "mean"),
            abs_err_masked=("abs_err_masked", "mean"),
            repeats=("abs_err_masked", "size"),
        )
        .reset_index()
    )
    table.insert(5, "delta_ae", table["abs_err_masked"] - table["abs_err_whole"])
    return table


def mean_abs_change(perturbation: pd.DataFrame, edges=PAPER_AGE_EDGES) -> pd.DataFrame:
    """The size of the prediction change, a readout that ΔAE's sign cannot cancel: per age
    group and lobe, the mean over subjects of |pred_masked − pred_whole| (repeats averaged per
    subject first). Untested. Columns ``group, lobe, mean_abs_change, n``."""
    _check_perturbation(perturbation)
    change = perturbation.assign(
        change=(perturbation["pred_masked"] - perturbation["pred_whole"]).abs()
    )
    per_subject = change.groupby(["subject_id", "lobe"], sort=False).agg(
        age_months=("age_months", "first"), change=("change", "mean")
    )
    per_subject = per_subject.reset_index()
    per_subject["group"] = age_group(per_subject["age_months"], edges)  # NaN outside the edges
    cells = per_subject.dropna(subset=["group"]).groupby(["group", "lobe"], observed=True)
    table = cells["change"].agg(mean_abs_change="mean", n="size").reset_index()
    return table.astype({"group": str})


def fill_contrast_points(perturbation: pd.DataFrame) -> pd.DataFrame:
    """One row per subject × lobe (repeats averaged): ``subject_id, lobe, contrast`` (fill mean −
    lobe mean, model-input units) and ``signed_change`` (months)."""
    missing = {"lobe_mean", "fill_mean"} - set(perturbation.columns)
    if missing:
        raise ValueError(f"perturbation table lacks {sorted(missing)}: rerun step 05")
    return (
        perturbation.assign(contrast=perturbation["fill_mean"] - perturbation["lobe_mean"])
        .groupby(["subject_id", "lobe"], sort=False)[["contrast", "signed_change"]]
        .mean()
        .reset_index()
    )


def fill_contrast(perturbation: pd.DataFrame) -> dict:
    """Does the prediction move with the fill's contrast, the fill's mean minus the mean input
    intensity of the lobe it replaced (``perturbation.csv``'s ``fill_mean − lobe_mean``)?

    A model that reads a lobe's intensity as maturity predicts older when a fill is brighter
    than the tissue it replaced and younger when darker, whatever age information the lobe
    holds. Returns Spearman ρ (and p) between contrast and signed change over all subject-lobes
    (repeats averaged), and per lobe.
    """
    from scipy.stats import spearmanr

    pairs = fill_contrast_points(perturbation)

    def rho(part: pd.DataFrame) -> dict:
        if len(part) < 3 or part["contrast"].nunique() < 2:
            return {"rho": float("nan"), "p": float("nan"), "n": len(part)}
        r = spearmanr(part["contrast"], part["signed_change"])
        return {"rho": float(r.statistic), "p": float(r.pvalue), "n": len(part)}

    by_lobe = {lobe: rho(pairs[pairs["lobe"] == lobe]) for lobe in _lobe_order(pairs["lobe"])}
    return {"all": rho(pairs), "by_lobe": by_lobe}


def _lobe_order(lobes) -> list[str]:
    """The paper's four lobes first (in Table 1's order), then any others as they appear."""
    present = list(dict.fromkeys(lobes))
    return [lobe for lobe in LOBES if lobe in present] + [x for x in present if x not in LOBES]


def _age_groups(ages: pd.Series, edges, windows) -> list[tuple[str, float, float, pd.Index]]:
    """(label, start, end, member index) per group: fixed bins, or sliding (width, step) windows
    spanning ``edges[0]..edges[-1]``. Every bin is listed, empty ones too; an empty window is not
    (``cohort.sliding_windows`` lists memberships only)."""
    if windows is None:
        labels = age_group(ages, edges)
        bounds = pairwise(float(e) for e in edges)
        return [
            (str(label), lo, hi, ages.index[(labels == label).to_numpy()])
            for label, (lo, hi) in zip(labels.cat.categories, bounds, strict=True)
        ]
    width, step = windows
    members = sliding_windows(ages, width, step, float(edges[0]), float(edges[-1]))
    return [
        (label, float(rows["start"].iloc[0]), float(rows["end"].iloc[0]), pd.Index(rows["index"]))
        for label, rows in members.groupby("window", sort=False)
    ]


def lobe_age_table(
    perturbation: pd.DataFrame,
    edges=PAPER_AGE_EDGES,
    windows: tuple[float, float] | None = None,
    alpha: float = 0.05,
    fdr: bool = False,
    seed: int = 42,
    n_resamples: int = 9999,
) -> pd.DataFrame:
    """One row per age group × lobe (group-major, as Table 1) with the fields of ``PairedTest``
    plus ``group, start, end, lobe, ci_low, ci_high`` (bootstrap CI of the mean ΔAE).

    Groups are the bins ``[edges[i], edges[i+1])`` (labels like ``"0-11"``), or with ``windows =
    (width, step)`` overlapping windows over ``[edges[0], edges[-1]]`` (labels like ``"6-17"``).
    Subjects outside every group are left out. With ``fdr`` a column ``q`` holds
    Benjamini–Hochberg q values across all tested cells, and significance and markers use q.
    ``alpha`` and ``fdr`` are kept in ``DataFrame.attrs``.
    """
    return paired_lobe_table(
        subject_lobe_errors(perturbation), edges, windows, alpha, fdr, seed, n_resamples
    )


def paired_lobe_table(
    errors: pd.DataFrame,
    edges=PAPER_AGE_EDGES,
    windows: tuple[float, float] | None = None,
    alpha: float = 0.05,
    fdr: bool = False,
    seed: int = 42,
    n_resamples: int = 9999,
) -> pd.DataFrame:
    """:func:`lobe_age_table` from paired values per subject and lobe: ``errors`` has
    ``subject_id, lobe, age_months``, the pair ``abs_err_whole`` (the reference) and
    ``abs_err_masked`` (the value tested against it), and their difference ``delta_ae``."""
    ages = errors.drop_duplicates("subject_id").set_index("subject_id")["age_months"].astype(float)
    by_lobe = {lobe: rows.set_index("subject_id") for lobe, rows in errors.groupby("lobe")}
    rows = []
    for label, start, end, members in _age_groups(ages, edges, windows):
        for lobe in _lobe_order(errors["lobe"]):
            cell = by_lobe[lobe][by_lobe[lobe].index.isin(members)]
            result = paired_test(cell["abs_err_whole"], cell["abs_err_masked"], alpha)
            low, high = mean_ci(cell["delta_ae"], seed=seed, n_resamples=n_resamples)
            rows.append(
                {
                    "group": label,
                    "start": start,
                    "end": end,
                    "lobe": lobe,
                    **asdict(result),
                    "ci_low": low,
                    "ci_high": high,
                }
            )
    columns = [
        "group",
        "start",
        "end",
        "lobe",
        *PairedTest.__dataclass_fields__,
        "ci_low",
        "ci_high",
    ]
    table = pd.DataFrame(rows, columns=columns)
    if fdr:
        table.insert(table.columns.get_loc("p") + 1, "q", bh_qvalues(table["p"]))
        table["significant"] = (table["q"] < alpha).to_numpy(bool)
        table["marker"] = [
            table1_marker(s, d) for s, d in zip(table["significant"], table["cohen_d"], strict=True)
        ]
    table.attrs.update(alpha=alpha, fdr=fdr)
    return table
