"""How good is the brain-age model: metrics per fold and pooled, bootstrap confidence intervals,
error per age group, the bias-corrected brain-age gap, and baselines that show what the CNN adds.

Nothing here fits anything on the ages of the subjects it is applied to: bias correction of a
test fold is fitted on other data (inner validation or the other folds' out-of-fold
predictions), and the baselines are refitted per fold on that fold's training subjects only.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy import stats

from ctbrainage.core.cohort import age_group
from ctbrainage.core.labels import LOBES

# Sawa et al. 2025, section 4.1: five-fold cross-validation, averaged across folds (months).
PAPER_METRICS = {"rmse": 5.205, "mae": 4.007, "r": 0.925}
METRICS = ("rmse", "mae", "r", "r2", "spearman")


def regression_metrics(age, predicted) -> dict:
    """RMSE and MAE (months), Pearson r, R² (1 − SSE/SST) and Spearman ρ (Pearson r of the
    ranks), over the last axis: floats for one set of subjects, arrays for a stack of them
    (e.g. bootstrap resamples). r and ρ are NaN where either side is constant."""
    age, predicted = np.asarray(age, float), np.asarray(predicted, float)
    error = predicted - age
    constant = (np.ptp(predicted, axis=-1) == 0) | (np.ptp(age, axis=-1) == 0)
    ranks = stats.rankdata(age, axis=-1), stats.rankdata(predicted, axis=-1)
    with warnings.catch_warnings():  # (constant input: NaN, as documented)
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        r = np.where(constant, np.nan, stats.pearsonr(age, predicted, axis=-1).statistic)
        rho = np.where(constant, np.nan, stats.pearsonr(*ranks, axis=-1).statistic)
    sst = np.sum((age - age.mean(axis=-1, keepdims=True)) ** 2, axis=-1)
    metrics = {
        "rmse": np.sqrt(np.mean(error**2, axis=-1)),
        "mae": np.mean(np.abs(error), axis=-1),
        "r": r,
        "r2": 1 - np.sum(error**2, axis=-1) / sst,
        "spearman": rho,
    }
    if age.ndim == 1:
        metrics = {name: float(value) for name, value in metrics.items()}
    return {**metrics, "n": age.shape[-1]}


def fold_metrics(predictions: pd.DataFrame, column: str = "predicted_months") -> pd.DataFrame:
    """One row of metrics per fold, then ``mean`` and ``sd`` across folds (the paper's form)
    and ``pooled`` over all out-of-fold predictions."""
    rows = {
        f"fold {k}": regression_metrics(part["age_months"], part[column])
        for k, part in predictions.groupby("fold")
    }
    table = pd.DataFrame(rows).T
    summary = pd.DataFrame(
        {"mean": table[list(METRICS)].mean(), "sd": table[list(METRICS)].std(ddof=1)}
    ).T
    pooled = pd.DataFrame(
        {"pooled": regression_metrics(predictions["age_months"], predictions[column])}
    ).T
    return pd.concat([table, summary, pooled])


def bootstrap_ci(
    predictions: pd.DataFrame,
    column: str = "predicted_months",
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 42,
) -> pd.DataFrame:
    """Pooled metrics with percentile bootstrap CIs (subjects resampled with replacement,
    ``scipy.stats.bootstrap``, paired, seeded)."""
    age = predictions["age_months"].to_numpy(float)
    predicted = predictions[column].to_numpy(float)
    point = regression_metrics(age, predicted)
    rows = []
    for name in METRICS:
        result = stats.bootstrap(
            (age, predicted),
            lambda a, p, axis=-1, name=name: regression_metrics(a, p)[name],
            paired=True,
            vectorized=True,  # all resamples in one call (see regression_metrics)
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        ci = result.confidence_interval
        rows.append({"metric": name, "value": point[name], "low": ci.low, "high": ci.high})
    return pd.DataFrame(rows).set_index("metric")


def error_by_age_group(
    predictions: pd.DataFrame, edges, column: str = "predicted_months"
) -> pd.DataFrame:
    """MAE, mean signed error (bias) and n per age group."""
    error = predictions[column] - predictions["age_months"]
    groups = age_group(predictions["age_months"], edges)
    table = pd.DataFrame({"group": groups, "abs_error": error.abs(), "error": error})
    out = table.groupby("group", observed=False).agg(
        n=("error", "size"), mae=("abs_error", "mean"), mean_error=("error", "mean")
    )
    return out


# ---- brain-age gap ------------------------------------------------------------------------------
def fit_bias(age, predicted) -> tuple[float, float]:
    """The linear age bias of predictions, ``predicted ≈ slope · age + intercept`` (least
    squares), to be fitted on data other than those it corrects."""
    age, predicted = np.asarray(age, float), np.asarray(predicted, float)
    if len(age) < 3 or np.ptp(age) == 0:
        raise ValueError(
            f"bias correction needs at least 3 subjects of different ages, got {len(age)}"
        )
    slope, intercept = np.polyfit(age, predicted, 1)
    if abs(slope) < 1e-6:
        raise ValueError("predictions do not depend on age: the bias cannot be inverted")
    return float(slope), float(intercept)


# below this slope the corrected brain age (predicted − intercept) / slope multiplies every
# prediction error by more than 1 / 0.2 = 5: reported, not hidden
UNSTABLE_SLOPE = 0.2


def unstable_slope(slope: float) -> str:
    """Why the bias correction with ``slope`` is not to be trusted, or ""."""
    if slope >= UNSTABLE_SLOPE:
        return ""
    return (
        f"bias-correction slope {slope:.2g} is below {UNSTABLE_SLOPE}: the corrected brain age "
        f"multiplies prediction errors by {1 / abs(slope):.3g}; read brain_age_months"
    )


def correct_bias(predicted, slope: float, intercept: float) -> np.ndarray:
    """Predictions with the linear bias removed, ``(predicted − intercept) / slope`` (Cole et
    al.; de Lange & Cole 2020): uses only the fitted line, never the subjects' ages."""
    return (np.asarray(predicted, float) - intercept) / slope


def brain_age_gap(
    predictions: pd.DataFrame, validation: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Brain-age gap (predicted − age) before and after bias correction, per subject, and the
    line fitted for each fold.

    The correction of fold *k* is fitted on the out-of-fold predictions of the other folds
    (``source = other folds``, the default), or, when ``validation`` is given, on the
    inner-validation predictions of fold *k*'s own model (``source = validation``); never on
    fold *k*'s ages.
    """
    parts, lines = [], []
    for k, test in predictions.groupby("fold"):
        if validation is None:
            fit_on, source = predictions[predictions["fold"] != k], "other folds"
        else:
            fit_on, source = validation[validation["fold"] == k], "validation"
        slope, intercept = fit_bias(fit_on["age_months"], fit_on["predicted_months"])
        corrected = correct_bias(test["predicted_months"], slope, intercept)
        parts.append(
            test.assign(
                gap=test["predicted_months"] - test["age_months"],
                corrected_months=corrected,
                gap_corrected=corrected - test["age_months"],
            )
        )
        lines.append(
            {"fold": k, "slope": slope, "intercept": intercept, "source": source, "n": len(fit_on)}
        )
    return pd.concat(parts).sort_index(), pd.DataFrame(lines)


# ---- baselines ----------------------------------------------------------------------------------
def image_features(
    preprocess: pd.DataFrame,
    lobes: pd.DataFrame,
    arrays: Mapping[str, tuple[np.ndarray, np.ndarray]],
) -> pd.DataFrame:
    """Simple per-subject features a radiologist could measure: brain volume, the HU levels of
    the P-tile normalisation (brain density), and per lobe its volume and mean normalised
    intensity. From step 01's and step 02's tables and, per subject, (model input, lobe labels)."""
    table = preprocess[["subject_id", "brain_volume_ml", "ptile_low_hu", "ptile_high_hu"]]
    table = table[table["subject_id"].isin(list(arrays))].reset_index(drop=True)
    table = table.merge(lobes[["subject_id", *(f"{n}_ml" for n in LOBES.values())]])
    intensity = []
    for sid in table["subject_id"]:
        image, labels = arrays[sid]
        intensity.append(
            {f"{name}_intensity": float(image[labels == i].mean()) for i, name in LOBES.items()}
        )
    return pd.concat([table, pd.DataFrame(intensity)], axis=1)


def baseline_predictions(features: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    """Out-of-fold predictions of two baselines on the CNN's folds: the training fold's mean age
    (``age_mean``) and a ridge regression on :func:`image_features` (``ridge``; standardised
    features, penalty chosen by efficient leave-one-out on the training fold only)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = folds[["subject_id", "fold", "age_months"]].merge(features, on="subject_id")
    columns = [c for c in features.columns if c != "subject_id"]
    parts = []
    for k in sorted(data["fold"].unique()):
        train, test = data[data["fold"] != k], data[data["fold"] == k]
        ridge = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
        ridge.fit(train[columns], train["age_months"])
        parts.append(
            test[["subject_id", "fold", "age_months"]].assign(
                age_mean=train["age_months"].mean(), ridge=ridge.predict(test[columns])
            )
        )
    return pd.concat(parts).sort_values("subject_id", ignore_index=True)


def compare_with_baselines(predictions: pd.DataFrame, baselines: pd.DataFrame) -> pd.DataFrame:
    """Mean ± SD across folds of each metric for the CNN and the baselines, on the same
    subjects and folds."""
    data = predictions.merge(baselines[["subject_id", "age_mean", "ridge"]], on="subject_id")
    rows = {}
    for label, column in (
        ("3D ResNet (ours)", "predicted_months"),
        ("ridge on image features", "ridge"),
        ("age-mean predictor", "age_mean"),
    ):
        table = fold_metrics(data, column)
        rows[label] = {
            **{f"{m}_mean": table.loc["mean", m] for m in METRICS},
            **{f"{m}_sd": table.loc["sd", m] for m in METRICS},
        }
    return pd.DataFrame(rows).T


# ---- prediction intervals -----------------------------------------------------------------------
def conformal_radius(residuals, level: float) -> float:
    """Split-conformal half-width: the ⌈(n + 1)·level⌉-th smallest |residual| of n calibration
    residuals (Vovk et al.; Lei et al. 2018), so that a new subject exchangeable with them lies
    within ± radius with probability ≥ ``level``; inf when n is too small for the level."""
    if not 0 < level < 1:
        raise ValueError(f"the interval's level must lie in (0, 1), got {level}")
    scores = np.sort(np.abs(np.asarray(residuals, float)))
    rank = int(np.ceil((len(scores) + 1) * level))
    return float(scores[rank - 1]) if rank <= len(scores) else float("inf")


def cross_fold_coverage(out_of_fold: pd.DataFrame, level: float, column: str) -> dict[str, float]:
    """How often each fold's ages lie within ``column`` ± the radius calibrated on the other
    folds' residuals: the interval's coverage measured on the run itself (and mean width)."""
    covered, widths = [], []
    for k, test in out_of_fold.groupby("fold"):
        rest = out_of_fold[out_of_fold["fold"] != k]
        radius = conformal_radius(rest["age_months"] - rest[column], level)
        covered += list((test["age_months"] - test[column]).abs() <= radius)
        widths += [2 * radius] * len(test)
    return {"coverage": float(np.mean(covered)), "width_months": float(np.mean(widths))}
