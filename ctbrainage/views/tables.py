"""Tables as a paper prints them, for the notebooks and the run's index page.

:func:`readable` turns a table into text cells: counts and other whole-number columns as
integers, other numbers to a fixed number of decimals, missing values as "–", age-group
intervals as "12-23"; :func:`show` displays it, or a sentence for an empty table.
"""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd

from ctbrainage.core.cohort import window_label

MISSING = "–"
HEADERS = {  # column and index names of the tables → their printed heading
    "subject_id": "subject",
    "age_months": "age (months)",
    "age_group": "age group",
    "predicted_months": "predicted (months)",
    "mae": "MAE",
    "rmse": "RMSE",
    "mse": "MSE",
    "r2": "R²",
    "spearman": "Spearman",
    "hu": "HU",
    "ptile": "P-tile",
    "delta_ae": "ΔAE",
    "ci_low": "CI low",
    "ci_high": "CI high",
}


def _cell(value, digits: int, whole: bool) -> str:
    if isinstance(value, pd.Interval):
        return window_label(value.left, value.right)
    if value is None or (isinstance(value, float | np.floating) and np.isnan(value)):
        return MISSING
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral) or (whole and isinstance(value, numbers.Real)):
        return f"{int(value):,}" if abs(value) >= 10_000 else str(int(value))
    if isinstance(value, numbers.Real):
        return f"{value:.{digits}f}"
    return str(value)


def _column(values: pd.Series, digits: int) -> list[str]:
    numeric = pd.to_numeric(values, errors="coerce") if values.dtype != object else None
    whole = numeric is not None and bool(
        np.all(np.isnan(numeric) | (np.mod(numeric.fillna(0), 1) == 0))
    )
    return [_cell(v, digits, whole) for v in values]


UNITS = {"_months": " (months)", "_ml": " (ml)", "_deg": " (°)", "_hu": " (HU)", "_s": " (s)"}


def header(name: str) -> str:
    """The printed heading of a column name: :data:`HEADERS`, else the unit suffix of
    :data:`UNITS` in brackets and spaces for underscores ("brain_volume_ml" → "brain volume
    (ml)")."""
    if name in HEADERS:
        return HEADERS[name]
    unit = next((u for u in UNITS if name.endswith(u)), None)
    stem = name.removesuffix(unit) if unit else name
    words = " ".join(HEADERS.get(w, w) for w in stem.split("_"))
    return words + (UNITS[unit] if unit else "")


def _labels(index: pd.Index, columns: bool) -> pd.Index:
    """Column labels get :func:`header`; row labels are data (a method's or a lobe's name) and
    keep their spelling, except the metric abbreviations of :data:`HEADERS`."""

    def label(value) -> str:
        if not isinstance(value, str):
            return _cell(value, 3, False)
        return header(value) if columns else HEADERS.get(value, value)

    names = [header(n) if isinstance(n, str) else n for n in index.names]
    if isinstance(index, pd.MultiIndex):
        return pd.MultiIndex.from_tuples([tuple(map(label, key)) for key in index], names=names)
    return pd.Index([label(v) for v in index], name=names[0])


def readable(table: pd.DataFrame | pd.Series, digits: int = 3) -> pd.DataFrame:
    """``table`` (a Series becomes one column) with every cell as the text a paper would print:
    a column of whole numbers as integers, other numbers to ``digits`` decimals, missing values
    as "–", yes/no for booleans, intervals of months as "12-23" (also in the index), headings
    by :func:`header`, and no row numbers (a default index is left blank)."""
    if isinstance(table, pd.Series):
        table = table.to_frame(table.name if table.name is not None else "value")
    numbered = isinstance(table.index, pd.RangeIndex) and table.index.name is None
    text = pd.DataFrame(
        {i: _column(table.iloc[:, i], digits) for i in range(table.shape[1])},
        index=pd.Index([""] * len(table)) if numbered else _labels(table.index, columns=False),
    )
    text.columns = _labels(table.columns, columns=True)
    return text


def show(table: pd.DataFrame | pd.Series, digits: int = 3, empty: str = "none") -> None:
    """Display :func:`readable` ``table`` in a notebook, or the sentence ``empty`` (for example
    "no exclusions") when it has no rows."""
    from IPython.display import Markdown, display

    display(Markdown(empty) if len(table) == 0 else readable(table, digits))
