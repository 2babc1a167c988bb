"""The paper's Table 1 as text, from ``stats.lobe_age_table``, and the published Table 1 as data.

``table1`` gives the paper's layout (three decimals, markers, ``p < 0.001``, ``—``/``n<3`` for
untested cells), ``table1_markdown`` / ``table1_latex`` the same with its legend.
``paper_table1()`` / ``PAPER_TABLE1`` is Table 1 of Sawa et al. 2025, "Perturbation-based deep
learning reveals dynamic spatiotemporal shifts in pediatric brain development from CT imaging",
as printed; ``paper_table1_long()`` / ``PAPER_TABLE1_LONG`` its numbers, both read from
``reference/paper_table1.csv``. No file writing here.
"""

from __future__ import annotations

import functools
import math
import re
from importlib import resources

import pandas as pd

# table1_marker is defined in stats (every PairedTest carries its marker) and re-exported here.
from ctbrainage.stats.lobe_tests import NOT_TESTED, table1_marker

__all__ = [
    "MISSING",
    "PAPER_TABLE1",
    "PAPER_TABLE1_LONG",
    "TABLE1_COLUMNS",
    "paper_table1",
    "paper_table1_long",
    "SUFFIXES",
    "render",
    "table1",
    "table1_latex",
    "table1_markdown",
    "table1_marker",
]

MISSING = "—"
TABLE1_COLUMNS = ("Age group", "Mask type", "ΔAE_lobe", "p-values", "Cohen's d")
_Q_COLUMN = "q-values"
_PAPER_CSV = "paper_table1.csv"


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


SUFFIXES = (".csv", ".md", ".tex")


def render(table: pd.DataFrame) -> dict[str, str]:
    """Table 1 as the text of each file: ``.csv``, ``.md`` and ``.tex``."""
    texts = (table.to_csv(index=False, lineterminator="\n"), table1_markdown(table))
    return dict(zip(SUFFIXES, (*texts, table1_latex(table)), strict=True))


# ---- the paper's Table 1 as published -----------------------------------------------------------


@functools.cache
def _paper_rows() -> pd.DataFrame:
    """The CSV as printed: every cell a string (``"0.009"`` stays ``"0.009"``)."""
    with (resources.files("ctbrainage") / "reference" / _PAPER_CSV).open(encoding="utf-8") as f:
        return pd.read_csv(f, comment="#", dtype=str, keep_default_na=False)


def paper_table1() -> pd.DataFrame:
    """Table 1 of the paper in ``table1``'s layout, cells as printed (``attrs["paper"]``)."""
    rows = [
        (
            _group_label(r.group),
            _lobe_label(r.lobe),
            r.mean_delta_ae + r.marker,
            f"p < {r.p}" if r.p_upper_bound == "True" else r.p,
            r.cohen_d,
        )
        for r in _paper_rows().itertuples()
    ]
    table = pd.DataFrame(rows, columns=list(TABLE1_COLUMNS), dtype=str)
    table.attrs.update(alpha=0.05, fdr=False, paper=True)
    return table


def paper_table1_long() -> pd.DataFrame:
    """The paper's numbers, one row per age group × lobe: ``group, lobe, mean_delta_ae, p,
    p_upper_bound, cohen_d, marker``; where the paper prints ``p < 0.001``, p is that bound."""
    rows = _paper_rows()
    return pd.DataFrame(
        {
            "group": rows["group"],
            "lobe": rows["lobe"],
            "mean_delta_ae": rows["mean_delta_ae"].astype(float),
            "p": rows["p"].astype(float),
            "p_upper_bound": rows["p_upper_bound"].map({"True": True, "False": False}),
            "cohen_d": rows["cohen_d"].astype(float),
            "marker": rows["marker"],
        }
    )


PAPER_TABLE1 = paper_table1()  # Table 1's layout, cells as printed
PAPER_TABLE1_LONG = paper_table1_long()  # the same numbers per row
