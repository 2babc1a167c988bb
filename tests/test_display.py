"""Tables as a paper prints them: integers, "–" for missing values, age groups, headers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ctbrainage.core.cohort import age_group
from ctbrainage.views.tables import MISSING, readable, show


def test_counts_are_integers_and_missing_values_a_dash():
    table = pd.DataFrame(
        {"count": [24.0, 24.0], "mean": [23.8123, np.nan], "n": [3, 40_000], "ok": [True, False]},
        index=["fold 0", "fold 1"],
    )
    text = readable(table, digits=2)
    assert text.loc["fold 0"].tolist() == ["24", "23.81", "3", "yes"]
    assert text.loc["fold 1"].tolist() == ["24", MISSING, "40,000", "no"]
    assert text.to_string().count("NaN") == 0 and ".0" not in text["count"].str.cat()


def test_a_whole_number_among_fractions_keeps_its_decimals():
    assert readable(pd.DataFrame({"mae": [4.0, 4.26]}))["MAE"].tolist() == ["4.000", "4.260"]


def test_age_groups_headers_and_series():
    ages = pd.Series([3.0, 30.0, 47.9])
    table = pd.DataFrame({"age_months": ages, "age_group": age_group(ages, (0, 12, 24, 36, 48))})
    table["cut"] = pd.cut(ages, [0, 12, 24, 36, 48], right=False)  # pandas' own intervals
    text = readable(table, digits=1)
    assert list(text.columns) == ["age (months)", "age group", "cut"]
    assert text["age group"].tolist() == text["cut"].tolist() == ["0-11", "24-35", "36-47"]
    series = readable(pd.Series([120], index=pd.Index(["atlas"], name="method"), name="subjects"))
    assert series.to_dict() == {"subjects": {"atlas": "120"}} and series.index.name == "method"
    multi = readable(
        pd.DataFrame({("mean", "frontal"): [0.91234]}, index=pd.Index(["0-11"], name="age_group"))
    )
    assert multi.iloc[0, 0] == "0.912" and multi.index.name == "age group"


@pytest.mark.parametrize("rows", [0, 2])
def test_show_says_so_for_an_empty_table(rows, monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", shown.append)
    show(pd.DataFrame({"subject_id": ["a", "b"][:rows]}), empty="no exclusions")
    if rows:
        assert shown[0].to_dict("list") == {"subject": ["a", "b"]}
    else:
        assert shown[0].data == "no exclusions"


def test_headings_name_their_units_and_row_numbers_are_blank():
    table = pd.DataFrame({"brain_volume_ml": [310.0], "roll_deg": [1.5], "ptile_low_hu": [15.0]})
    text = readable(table, digits=1)
    assert list(text.columns) == ["brain volume (ml)", "roll (°)", "P-tile low (HU)"]
    assert list(text.index) == [""]
    named = readable(table.rename_axis("subject_id").rename(index={0: "syn0001"}))
    assert list(named.index) == ["syn0001"] and named.index.name == "subject"


def test_row_labels_keep_their_spelling():
    table = pd.DataFrame({"s_per_subject": [0.3]}, index=pd.Index(["integrated_gradients"]))
    text = readable(table.rename_axis("method"))
    assert list(text.index) == ["integrated_gradients"] and list(text.columns) == ["s per subject"]
    assert list(readable(pd.DataFrame({"value": [1.5]}, index=["mae"])).index) == ["MAE"]
