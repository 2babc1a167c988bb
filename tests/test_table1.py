"""Table 1 as text (CSV cells, Markdown, LaTeX) from ``stats.lobe_age_table``, and the paper's
own Table 1 shipped as data."""

from __future__ import annotations

import io
import re
from importlib import resources

import numpy as np
import pandas as pd
import pytest
from helpers import planted_perturbation

from ctbrainage.stats import lobe_tests as st
from ctbrainage.stats import table1 as t1

# The paper's Table 1 as printed (Sawa et al. 2025), in this package's CSV layout.
PAPER_CSV = """\
Age group,Mask type,ΔAE_lobe,p-values,Cohen's d
0-11 months,Frontal Lobe,-0.207†,0.233,-0.211
0-11 months,Parietal Lobe,-0.281,0.357,-0.163
0-11 months,Temporal Lobe,-0.049,0.838,-0.036
0-11 months,Occipital Lobe,-0.007,0.957,-0.009
12-23 months,Frontal Lobe,-0.575†,0.058,-0.256
12-23 months,Parietal Lobe,-0.203,0.717,-0.048
12-23 months,Temporal Lobe,-0.045,0.916,-0.014
12-23 months,Occipital Lobe,"0.588*,†",0.009,0.361
24-35 months,Frontal Lobe,0.142,0.763,0.041
24-35 months,Parietal Lobe,"2.443*,‡",p < 0.001,0.552
24-35 months,Temporal Lobe,1.143†,0.074,0.246
24-35 months,Occipital Lobe,0.291†,0.133,0.206
36-47 months,Frontal Lobe,"4.151*,§",p < 0.001,1.705
36-47 months,Parietal Lobe,"7.724*,§",p < 0.001,2.304
36-47 months,Temporal Lobe,"5.555*,§",p < 0.001,1.750
36-47 months,Occipital Lobe,-0.318†,0.067,-0.249
"""


@pytest.fixture
def sparse_table():
    """Groups with many, two and no subjects: 0-11 has 20, 12-23 has 2, 24-35 none, 36-47 has 12;
    in 36-47 masking the frontal lobe changes nothing at all."""
    rng = np.random.default_rng(10)
    ages = np.concatenate([rng.uniform(0, 12, 20), [14.0, 20.0], rng.uniform(36, 48, 12)])
    data = planted_perturbation(ages, seed=10)
    frontal_late = (data["lobe"] == "frontal") & (data["age_months"] >= 36)
    data.loc[frontal_late, "pred_masked"] = data.loc[frontal_late, "pred_whole"]
    return st.lobe_age_table(data, n_resamples=199)


def _no_nan(table):
    cells = table.to_numpy().ravel()
    return not table.isna().any().any() and not any("nan" in c.lower() for c in cells)


def _md_rows(text):
    rows = [line for line in text.splitlines() if line.startswith("|")]
    split = [re.split(r"(?<!\\)\|", line)[1:-1] for line in rows]
    return [[re.sub(r"\\(.)", r"\1", c.strip()) for c in row] for row in split]


# ---- our Table 1 --------------------------------------------------------------------------------


def test_table1_has_the_papers_layout_and_no_nan(sparse_table):
    table = t1.table1(sparse_table)
    assert list(table.columns) == list(t1.TABLE1_COLUMNS) == list(t1.PAPER_TABLE1.columns)
    pd.testing.assert_frame_equal(
        table[["Age group", "Mask type"]], t1.PAPER_TABLE1[["Age group", "Mask type"]]
    )
    assert _no_nan(table) and _no_nan(t1.PAPER_TABLE1)
    cells = table.set_index(["Age group", "Mask type"])
    assert cells.loc[("12-23 months", "Frontal Lobe"), "p-values"] == "n<3"
    assert cells.loc[("12-23 months", "Frontal Lobe"), "Cohen's d"] == "—"
    assert cells.loc[("24-35 months", "Parietal Lobe")].tolist() == ["—", "n<3", "—"]
    assert cells.loc[("36-47 months", "Frontal Lobe")].tolist() == ["0.000", "1.000", "0.000"]
    assert all(re.fullmatch(r"-?\d+\.\d{3}([*†‡§,]*)|—", c) for c in table["ΔAE_lobe"])
    assert all(re.fullmatch(r"-?\d+\.\d{3}|p < 0\.001|n<3", c) for c in table["p-values"])
    long = sparse_table.set_index(["group", "lobe"])
    assert long.loc[("24-35", "parietal"), "n"] == 0
    assert long.loc[("12-23", "parietal"), "n"] == 2
    assert table.attrs == {"alpha": 0.05, "fdr": False}


def test_table1_with_fdr_adds_q_values():
    ages = np.random.default_rng(11).uniform(0, 48, 40)
    long = st.lobe_age_table(planted_perturbation(ages, seed=11), fdr=True, n_resamples=199)
    table = t1.table1(long)
    assert list(table.columns) == [*t1.TABLE1_COLUMNS[:4], "q-values", t1.TABLE1_COLUMNS[4]]
    assert _no_nan(table) and "Benjamini" in t1.table1_markdown(table)


def test_table1_cells_survive_a_csv_round_trip(sparse_table):
    table = t1.table1(sparse_table)
    text = table.to_csv(index=False, lineterminator="\n")
    back = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(back, table, check_dtype=False)
    assert not pd.read_csv(io.StringIO(text)).isna().any().any()  # default NA parsing finds none


def test_markdown_is_a_parseable_pipe_table(sparse_table):
    table = t1.table1(sparse_table)
    rows = _md_rows(t1.table1_markdown(table))
    assert rows[0] == list(table.columns) and set(rows[1][0]) <= set(":-")
    body = rows[2:]
    assert len(body) == len(table) and all(len(r) == table.shape[1] for r in body)
    assert [r[1:] for r in body] == table.iloc[:, 1:].to_numpy().tolist()
    assert [r[0] for r in body][:5] == ["0-11 months", "", "", "", "12-23 months"]


def test_latex_is_a_balanced_plain_tabular(sparse_table):
    table = t1.table1(sparse_table)
    tex = t1.table1_latex(table)
    assert tex.count(r"\begin{tabular}{llrrr}") == 1 and tex.count(r"\end{tabular}") == 1
    assert tex.count("{") == tex.count("}")
    lines = [line for line in tex.splitlines() if line.endswith(r"\\")]
    assert len(lines) == 1 + len(table)
    assert all(len(re.findall(r"(?<!\\)&", line)) == 4 for line in lines)
    assert all(line.count("$") % 2 == 0 for line in tex.splitlines())
    assert "$-" in tex or "$0." in tex
    assert "nan" not in tex.lower() and "$n<3$" in tex and "---" in tex


# ---- the paper's Table 1 ------------------------------------------------------------------------


def test_markers_reproduce_every_row_of_the_papers_table1():
    paper = t1.PAPER_TABLE1_LONG
    assert len(paper) == 16 and paper["p_upper_bound"].sum() == 4
    for row in paper.itertuples():
        assert t1.table1_marker(row.p < 0.05, row.cohen_d) == row.marker, row


def test_paper_table1_is_the_published_table_cell_by_cell():
    assert t1.PAPER_TABLE1.to_csv(index=False, lineterminator="\n") == PAPER_CSV
    assert t1.PAPER_TABLE1.attrs == {"alpha": 0.05, "fdr": False, "paper": True}
    long = t1.PAPER_TABLE1_LONG
    assert list(long.columns) == [
        "group",
        "lobe",
        "mean_delta_ae",
        "p",
        "p_upper_bound",
        "cohen_d",
        "marker",
    ]
    assert list(long["lobe"].iloc[:4]) == list(st.LOBES)
    assert long["p_upper_bound"].dtype == bool
    bounded = long[long["p_upper_bound"]]
    assert (bounded["p"] == 0.001).all() and set(bounded["group"]) == {"24-35", "36-47"}
    row = long.set_index(["group", "lobe"]).loc[("36-47", "parietal")]
    assert (row["mean_delta_ae"], row["cohen_d"], row["marker"]) == (7.724, 2.304, "*,§")


def test_paper_table1_comes_from_the_packaged_csv_and_is_a_fresh_copy():
    csv = resources.files("ctbrainage") / "reference" / "paper_table1.csv"
    assert csv.is_file() and csv.read_text("utf-8").startswith("# Sawa et al. 2025")
    first = t1.paper_table1()
    pd.testing.assert_frame_equal(first, t1.PAPER_TABLE1)
    pd.testing.assert_frame_equal(t1.paper_table1_long(), t1.PAPER_TABLE1_LONG)
    first.loc[0, "Cohen's d"] = "changed"
    assert t1.paper_table1().loc[0, "Cohen's d"] == "-0.211"
    assert t1.PAPER_TABLE1.loc[0, "Cohen's d"] == "-0.211"


def test_paper_table1_renders_with_its_markers():
    md, tex = t1.table1_markdown(t1.PAPER_TABLE1), t1.table1_latex(t1.PAPER_TABLE1)
    assert r"7.724\*,§" in md and "Sawa et al. 2025" in md
    assert r"$7.724^{*,\S}$" in tex and r"$0.588^{*,\dagger}$" in tex
    assert r"$2.443^{*,\ddagger}$" in tex and r"$p < 0.001$" in tex
    assert md.splitlines()[-1] == (
        r"Sawa et al. 2025, Table 1, as published. ΔAE\_lobe: mean change (months) of the"
        r" absolute prediction error when the lobe is replaced by noise. \* significant"
        r" (p < 0.05); † small (0.2 ≤ \|d\| < 0.5), ‡ medium (0.5 ≤ \|d\| < 0.8), § large"
        r" (\|d\| ≥ 0.8) Cohen's d. n<3: too few subjects to test."
    )
