"""The cohort's ages: age groups and their labels, sliding windows, age-stratified folds (the
manifest's schema and validation: :mod:`ctbrainage.imaging.cohort_manifest`)."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pandas as pd

PAPER_AGE_EDGES = (0, 12, 24, 36, 48)


def window_label(lo: float, hi: float) -> str:
    """Label "12-23" for integer edges (lower edge to upper - 1 months), else "[6.5, 12)"."""
    if float(lo).is_integer() and float(hi).is_integer():
        return f"{int(lo)}-{int(hi) - 1}"
    return f"[{lo:g}, {hi:g})"


def age_group(ages, edges=PAPER_AGE_EDGES) -> pd.Series:
    """Age-group label of each age (months) for bins ``[edges[i], edges[i+1])``; NaN outside."""
    edges = [float(e) for e in edges]
    if len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"age group edges must increase, got {edges}")
    ages = ages if isinstance(ages, pd.Series) else pd.Series(ages)
    labels = [window_label(lo, hi) for lo, hi in pairwise(edges)]
    return pd.cut(ages.astype(float), edges, right=False, labels=labels)


MIN_GROUP = 3  # children: the smallest age group that is tested, or whose mean is a baseline


def thin_groups(groups: pd.Series) -> dict[str, int]:
    """Age group → number of children, for every group (of ``age_group``'s categories) with
    fewer than ``MIN_GROUP``, empty ones included."""
    counts = groups.value_counts(sort=False)
    return {str(g): int(n) for g, n in counts.items() if n < MIN_GROUP}


def thin_group_note(thin: dict[str, int], instead: str) -> str:
    """One sentence for the notebooks: which groups are too small, and what is used instead."""
    listed = ", ".join(
        f"{g} months ({n} {'child' if n == 1 else 'children'})" for g, n in thin.items()
    )
    return f"too few children (fewer than {MIN_GROUP}) in age group {listed}: {instead}"


def sliding_windows(ages, width: float, step: float, lo: float, hi: float) -> pd.DataFrame:
    """Memberships in windows ``[lo + n*step, lo + n*step + width)`` that fit in ``[lo, hi]``.

    One row per (window, member): columns ``window`` (label), ``start``, ``end`` and ``index``
    (the age's index label). Windows may overlap.
    """
    if width <= 0 or step <= 0 or hi - lo < width:
        raise ValueError(f"need width > 0, step > 0 and width <= hi - lo; got {width}, {step}")
    ages = (ages if isinstance(ages, pd.Series) else pd.Series(ages)).astype(float)
    rows = []
    for n in range(int(math.floor((hi - lo - width) / step + 1e-9)) + 1):
        start = lo + n * step
        members = ages.index[(ages >= start) & (ages < start + width)]
        label = window_label(start, start + width)
        rows += [(label, start, start + width, idx) for idx in members]
    return pd.DataFrame(rows, columns=["window", "start", "end", "index"])


def stratified_folds(ages, k: int, seed: int) -> np.ndarray:
    """Age-stratified K-fold assignment (fold index per subject, in input order).

    Subjects sorted by age are cut into consecutive blocks of ``k``; each block's members go to
    the ``k`` folds in a random (seeded) order, so every fold spans the whole age range evenly.
    """
    ages = np.asarray(ages, dtype=float)
    if k < 2 or k > len(ages):
        raise ValueError(
            f"train.folds = {k} needs 2 to {len(ages)} folds: {len(ages)} subjects are left"
        )
    rng = np.random.default_rng(seed)
    order = np.argsort(ages, kind="stable")
    folds = np.empty(len(ages), dtype=int)
    for start in range(0, len(ages), k):
        block = order[start : start + k]
        folds[block] = rng.permutation(k)[: len(block)]
    return folds
