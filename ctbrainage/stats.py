"""Paired statistics of lobe-wise perturbation per lobe × age group, and the paper's Table 1.

For every lobe and age group the per-subject absolute errors of the whole and the lobe-masked
input are compared as in Sawa et al. 2025 (sections 3.5 and 4.3): Shapiro–Wilk on the differences
ΔAE = |e_masked| − |e_whole|; a paired t-test when normality is not rejected at ``alpha``, else a
Wilcoxon signed-rank test; Cohen's d; and Table 1's markers (``*`` significant, ``†`` / ``‡`` /
``§`` small / medium / large effect). Extras beyond the paper: a bootstrap CI of the mean ΔAE,
sliding age windows, and optional Benjamini–Hochberg correction across all tests of a table.

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
import os
import re
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from ctbrainage import io
from ctbrainage.cohort import PAPER_AGE_EDGES, age_group, sliding_windows
from ctbrainage.lobes import LOBES as LOBE_LABELS

__all__ = [
    "EFFECT_MARKERS",
    "LOBES",
    "MIN_SUBJECTS",
    "PAPER_TABLE1",
    "PAPER_TABLE1_LONG",
    "TABLE1_COLUMNS",
    "PairedTest",
    "bh_qvalues",
    "effect_size_class",
    "lobe_age_table",
    "lobe_age_table_for",
    "mean_ci",
    "paired_test",
    "subject_lobe_errors",
    "table1",
    "table1_marker",
    "write_table1",
]

LOBES = tuple(LOBE_LABELS.values())  # Table 1's row order: frontal, parietal, temporal, occipital
MIN_SUBJECTS = 3  # fewest subjects a group needs to be tested (Shapiro–Wilk needs 3)
SIGNIFICANCE_MARKER = "*"
EFFECT_MARKERS = {"small": "†", "medium": "‡", "large": "§"}
_EFFECT_BOUNDS = ((0.8, "large"), (0.5, "medium"), (0.2, "small"))
NOT_TESTED = "n<3"
MISSING = "—"
TABLE1_COLUMNS = ("Age group", "Mask type", "ΔAE_lobe", "p-values", "Cohen's d")
_Q_COLUMN = "q-values"
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
    errors = subject_lobe_errors(perturbation)
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


def lobe_age_table_for(profile, perturbation: pd.DataFrame, windows=None) -> pd.DataFrame:
    """``lobe_age_table`` with a profile's age-group edges, ``stats.alpha``, ``stats.fdr``, seed."""
    return lobe_age_table(
        perturbation,
        edges=profile.age_group_edges,
        windows=windows,
        alpha=profile.stats.alpha,
        fdr=profile.stats.fdr,
        seed=profile.seed,
    )


# ---- Table 1 ------------------------------------------------------------------------------------


def _number(x: float) -> str:
    text = f"{x:.3f}"
    return "0.000" if text == "-0.000" else text


def _p_text(p: float, test: str, name: str = "p") -> str:
    if test == NOT_TESTED or not math.isfinite(p):
        return NOT_TESTED
    return f"{name} < 0.001" if p < 0.001 else _number(p)


def _group_label(group: str) -> str:
    return f"{group} months"


def _lobe_label(lobe: str) -> str:
    return f"{lobe.replace('_', ' ').title()} Lobe"


_LEGEND = {
    False: (
        "ΔAE_lobe: mean change (months) of the absolute prediction error when the lobe is replaced"
        " by noise. * significant ({criterion}); † small (0.2 ≤ |d| < 0.5), ‡ medium"
        " (0.5 ≤ |d| < 0.8), § large (|d| ≥ 0.8) {d_name}. n<3: too few subjects to test."
    ),
    True: (
        r"$\Delta AE_{{lobe}}$: mean change (months) of the absolute prediction error when the lobe"
        r" is replaced by noise. $^*$ significant ({criterion}); $\dagger$ small"
        r" ($0.2 \le |d| < 0.5$), $\ddagger$ medium ($0.5 \le |d| < 0.8$), \S{{}} large"
        r" ($|d| \ge 0.8$) {d_name}. $n<3$: too few subjects to test."
    ),
}


def _caption(table: pd.DataFrame, tex: bool) -> str:
    """The legend of a Table 1 from its ``attrs`` (``alpha``, ``fdr``, ``paper``)."""
    alpha, fdr = table.attrs.get("alpha", 0.05), table.attrs.get("fdr", False)
    paper = table.attrs.get("paper", False)
    math_ = "${}$" if tex else "{}"
    criterion = math_.format(f"{'q' if fdr else 'p'} < {alpha:g}")
    if fdr:
        criterion = ("Benjamini--Hochberg " if tex else "Benjamini–Hochberg ") + criterion
    d_name = "Cohen's " + math_.format("d")
    if not paper:
        d_name += " (paired " + math_.format("d_z") + ")"
    title = "Sawa et al. 2025, Table 1, as published. " if paper else ""
    return title + _LEGEND[tex].format(criterion=criterion, d_name=d_name)


def table1(long_table: pd.DataFrame) -> pd.DataFrame:
    """Table 1 of the paper from ``lobe_age_table``: Age group, Mask type, ΔAE_lobe with markers,
    p-values (``p < 0.001`` below 0.001), Cohen's d; three decimals, ``—``/``n<3`` instead of
    NaN. With a ``q`` column (FDR) a ``q-values`` column follows the p-values. Every row names
    its age group (the Markdown and LaTeX files print it once per block, as the paper does)."""
    has_q = "q" in long_table.columns
    rows = []
    for rec in long_table.to_dict("records"):
        delta = rec["mean_delta_ae"]
        row = {
            "Age group": _group_label(rec["group"]),
            "Mask type": _lobe_label(rec["lobe"]),
            "ΔAE_lobe": _number(delta) + rec["marker"] if math.isfinite(delta) else MISSING,
            "p-values": _p_text(rec["p"], rec["test"]),
        }
        if has_q:
            row[_Q_COLUMN] = _p_text(rec["q"], rec["test"], "q")
        row["Cohen's d"] = _number(rec["cohen_d"]) if math.isfinite(rec["cohen_d"]) else MISSING
        rows.append(row)
    columns = [*TABLE1_COLUMNS[:4], *([_Q_COLUMN] if has_q else []), TABLE1_COLUMNS[4]]
    table = pd.DataFrame(rows, columns=columns, dtype=str)
    table.attrs.update(alpha=long_table.attrs.get("alpha", 0.05), fdr=has_q)
    return table


def _blank_repeated_groups(table: pd.DataFrame) -> pd.DataFrame:
    shown = table.copy()
    shown.loc[shown["Age group"].eq(shown["Age group"].shift()), "Age group"] = ""
    return shown


def _md_cell(text: str) -> str:
    return re.sub(r"([\\*_|])", r"\\\1", text)


def table1_markdown(table: pd.DataFrame) -> str:
    """A pipe table (Markdown special characters escaped) followed by the caption."""
    shown = _blank_repeated_groups(table)
    lines = ["| " + " | ".join(_md_cell(c) for c in shown.columns) + " |"]
    lines.append("|" + "|".join(":---" if i < 2 else "---:" for i in range(shown.shape[1])) + "|")
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in shown.to_numpy()]
    return "\n".join(lines) + "\n\n" + _md_cell(_caption(table, tex=False)) + "\n"


_TEX_MARKERS = {"*": "*", "†": r"\dagger", "‡": r"\ddagger", "§": r"\S"}
_TEX_SPECIAL = {c: "\\" + c for c in "&%$#_{}"} | {
    "~": r"\textasciitilde{}",
    "\\": r"\textbackslash{}",
}
_TEX_TEXT = {
    "—": "---",
    "p-values": "$p$-values",
    "q-values": "$q$-values",
    "ΔAE_lobe": r"$\Delta AE_{lobe}$",
    "Cohen's d": r"Cohen's $d$",
}
_NUMBER_MARKERS = re.compile(r"(-?\d+\.\d+)([*,†‡§]*)")


def _tex_cell(text: str) -> str:
    if text in _TEX_TEXT:
        return _TEX_TEXT[text]
    if text.startswith(("p < ", "q < ", "n<")):
        return f"${text}$"
    number = _NUMBER_MARKERS.fullmatch(text)
    if number:
        value, marks = number.groups()
        sup = ",".join(_TEX_MARKERS[m] for m in marks.split(",")) if marks else ""
        return f"${value}^{{{sup}}}$" if sup else f"${value}$"
    text = "".join(_TEX_SPECIAL.get(c, c) for c in text)
    return re.sub(r"(\d+)-(\d+) months", r"\1--\2 months", text)


def table1_latex(table: pd.DataFrame) -> str:
    """A ``table`` environment (plain ``tabular`` with ``\\hline``, no extra packages)."""
    shown = _blank_repeated_groups(table)
    spec = "ll" + "r" * (shown.shape[1] - 2)
    lines = [r"\begin{table}[t]", r"\centering", rf"\begin{{tabular}}{{{spec}}}", r"\hline"]
    lines.append(" & ".join(_tex_cell(c) for c in shown.columns) + r" \\")
    lines.append(r"\hline")
    lines += [" & ".join(_tex_cell(c) for c in row) + r" \\" for row in shown.to_numpy()]
    caption = _caption(table, tex=True)
    lines += [r"\hline", r"\end{tabular}", rf"\caption{{{caption}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_table1(table: pd.DataFrame, out_dir: str | os.PathLike) -> tuple[Path, Path, Path]:
    """Write ``table1.csv``, ``table1.md`` and ``table1.tex`` into ``out_dir``, each atomically."""
    out = Path(out_dir)
    paths = out / "table1.csv", out / "table1.md", out / "table1.tex"
    texts = table.to_csv(index=False, lineterminator="\n"), table1_markdown(table)
    for path, text in zip(paths, (*texts, table1_latex(table)), strict=True):
        io.atomic_write_text(path, text)
    return paths


# ---- the paper's Table 1 as published -----------------------------------------------------------

# Sawa et al. 2025, "Perturbation-based deep learning reveals dynamic spatiotemporal shifts in
# pediatric brain development from CT imaging", Table 1, transcribed cell by cell:
# (age group, lobe, ΔAE_lobe with markers, p-value, Cohen's d).
_PAPER_ROWS = (
    ("0-11", "frontal", "-0.207†", "0.233", "-0.211"),
    ("0-11", "parietal", "-0.281", "0.357", "-0.163"),
    ("0-11", "temporal", "-0.049", "0.838", "-0.036"),
    ("0-11", "occipital", "-0.007", "0.957", "-0.009"),
    ("12-23", "frontal", "-0.575†", "0.058", "-0.256"),
    ("12-23", "parietal", "-0.203", "0.717", "-0.048"),
    ("12-23", "temporal", "-0.045", "0.916", "-0.014"),
    ("12-23", "occipital", "0.588*,†", "0.009", "0.361"),
    ("24-35", "frontal", "0.142", "0.763", "0.041"),
    ("24-35", "parietal", "2.443*,‡", "p < 0.001", "0.552"),
    ("24-35", "temporal", "1.143†", "0.074", "0.246"),
    ("24-35", "occipital", "0.291†", "0.133", "0.206"),
    ("36-47", "frontal", "4.151*,§", "p < 0.001", "1.705"),
    ("36-47", "parietal", "7.724*,§", "p < 0.001", "2.304"),
    ("36-47", "temporal", "5.555*,§", "p < 0.001", "1.750"),
    ("36-47", "occipital", "-0.318†", "0.067", "-0.249"),
)


def _paper_table1() -> pd.DataFrame:
    rows = [(_group_label(g), _lobe_label(lobe), *cells) for g, lobe, *cells in _PAPER_ROWS]
    table = pd.DataFrame(rows, columns=list(TABLE1_COLUMNS), dtype=str)
    table.attrs.update(alpha=0.05, fdr=False, paper=True)
    return table


def _paper_table1_long() -> pd.DataFrame:
    rows = []
    for group, lobe, delta, p, d in _PAPER_ROWS:
        value, marker = _NUMBER_MARKERS.fullmatch(delta).groups()
        bound = p.startswith("p < ")
        rows.append(
            {
                "group": group,
                "lobe": lobe,
                "mean_delta_ae": float(value),
                "p": float(p.removeprefix("p < ")),
                "p_upper_bound": bound,
                "cohen_d": float(d),
                "marker": marker,
            }
        )
    return pd.DataFrame(rows)


PAPER_TABLE1 = _paper_table1()  # Table 1's layout, cells as printed
# The same numbers per row; where the paper prints "p < 0.001", p is that bound (p_upper_bound).
PAPER_TABLE1_LONG = _paper_table1_long()
