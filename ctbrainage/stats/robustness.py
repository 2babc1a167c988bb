"""Agreement of attribution maps across training seeds (the multi-seed paper) and the tests
between training conditions: arrays and tables in, numbers out (step 10 handles the files).

- a voxel **agrees** when it is in the top ``share`` of the brain's voxels of more than half of
  the seeds' maps (:func:`agreeing_voxels`); each seed's own agreement is the share of its top
  set that another seed's also holds, averaged over the other seeds (:func:`seed_agreement`), a
  per-seed number that can be averaged, given a CI and set against that seed's faithfulness;
- **Kendall's W** of the lobe ranks across seeds (:func:`kendall_w`), with the Friedman test;
- Welch's two-sample t test across seeds between two conditions, with Cohen's d
  (:func:`condition_test`, pingouin).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


def top_sets(maps: np.ndarray, mask: np.ndarray, share: float) -> np.ndarray:
    """Per map of ``maps`` [s, X, Y, Z]: its top ``share`` of the voxels in ``mask`` (ties at
    the threshold included), False outside ``mask``."""
    inside = maps[:, mask]
    count = max(1, round(share * inside.shape[1]))
    thresholds = -np.partition(-inside, count - 1, axis=1)[:, count - 1]
    out = np.zeros(maps.shape, bool)
    out[:, mask] = inside >= thresholds[:, None]
    return out


def agreeing_voxels(tops: np.ndarray) -> np.ndarray:
    """The voxels in more than half of the top sets ``tops`` [s, ...] (bool)."""
    return tops.sum(0) * 2 > len(tops)


def seed_agreement(tops: np.ndarray) -> np.ndarray:
    """Per seed: the share of its top set that another seed's top set also holds, averaged over
    the other seeds (chance: the top share itself)."""
    if len(tops) < 2:
        return np.full(len(tops), np.nan)
    flat = tops.reshape(len(tops), -1).astype(np.int64)
    shared = flat @ flat.T  # |T_s ∩ T_t|
    sizes = np.maximum(np.diag(shared), 1)
    others = (shared.sum(1) - np.diag(shared)) / (len(tops) - 1)
    return others / sizes


def kendall_w(ranks: np.ndarray) -> tuple[float, float]:
    """Kendall's coefficient of concordance of ``ranks`` [raters, items] (average ranks for
    ties, with the tie correction) and the p value of Friedman's χ² = m (n − 1) W."""
    ranks = np.asarray(ranks, float)
    m, n = ranks.shape
    if m < 2 or n < 2:
        return np.nan, np.nan
    totals = ranks.sum(0)
    spread = ((totals - totals.mean()) ** 2).sum()
    ties = sum((c**3 - c).sum() for c in (np.unique(r, return_counts=True)[1] for r in ranks))
    denominator = m**2 * (n**3 - n) - m * ties
    if denominator <= 0:
        return np.nan, np.nan
    w = 12 * spread / denominator
    chi2 = m * (n - 1) * w
    return float(w), float(stats.chi2.sf(chi2, n - 1))


def descending_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks per row, 1 = the largest (average ranks for ties)."""
    return np.vstack([stats.rankdata(-np.asarray(row, float)) for row in np.atleast_2d(values)])


def mean_ci(values, n_resamples: int, seed: int) -> tuple[float, float, float]:
    """Mean of the finite ``values`` and its bootstrap percentile 95 % CI."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return np.nan, np.nan, np.nan
    rng = np.random.default_rng(seed)
    draws = rng.choice(values, (n_resamples, values.size)).mean(1)
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(values.mean()), float(low), float(high)


TEST_COLUMNS = [
    "metric",
    "factor",
    "within",
    "n_off",
    "n_on",
    "mean_off",
    "mean_on",
    "t",
    "dof",
    "p",
    "cohen_d",
    "ci_low",
    "ci_high",
]


def condition_test(off, on) -> dict:
    """Welch's t test of ``on`` against ``off`` (values across seeds; pingouin), Cohen's d and
    the 95 % CI of the difference on − off; NaN where a side has fewer than 2 values."""
    import pingouin as pg

    off = np.asarray(off, float)[np.isfinite(np.asarray(off, float))]
    on = np.asarray(on, float)[np.isfinite(np.asarray(on, float))]
    out = {"n_off": len(off), "n_on": len(on), "mean_off": np.nan, "mean_on": np.nan}
    out |= dict.fromkeys(("t", "dof", "p", "cohen_d", "ci_low", "ci_high"), np.nan)
    if len(off):
        out["mean_off"] = float(off.mean())
    if len(on):
        out["mean_on"] = float(on.mean())
    if len(off) < 2 or len(on) < 2 or (np.ptp(off) == 0 and np.ptp(on) == 0):
        return out
    result = pg.ttest(on, off, correction=True).iloc[0]
    low, high = result["CI95"]
    sign = np.sign(on.mean() - off.mean())  # pingouin's d is unsigned
    return out | {
        "t": float(result["T"]),
        "dof": float(result["dof"]),
        "p": float(result["p_val"]),
        "cohen_d": float(sign * abs(result["cohen_d"])),
        "ci_low": float(low),
        "ci_high": float(high),
    }


def factor_tests(runs: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per metric: augmentation on vs off within each registration setting, and registration
    on vs off within each augmentation setting (``runs``: one row per seed with boolean
    ``augment``, ``register`` and the metric columns)."""
    rows = []
    for metric in metrics:
        for factor, other in (("augment", "register"), ("register", "augment")):
            for level, part in runs.groupby(other):
                off = part.loc[~part[factor].astype(bool), metric]
                on = part.loc[part[factor].astype(bool), metric]
                if len(off) and len(on):
                    within = f"{other} {'on' if level else 'off'}"
                    rows.append(
                        {
                            "metric": metric,
                            "factor": factor,
                            "within": within,
                            **condition_test(off, on),
                        }
                    )
    return pd.DataFrame(rows, columns=TEST_COLUMNS)
