"""Evaluation: metrics against scikit-learn/SciPy, bootstrap CIs, bias correction fitted only
outside the test fold, and baselines refitted per fold."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn import metrics as skm

from ctbrainage.core.labels import LOBES
from ctbrainage.core.layout import RunLayout
from ctbrainage.imaging import run_arrays
from ctbrainage.stats import evaluate as ev


def _predictions(n=100, folds=5, slope=0.7, intercept=7.0, noise=2.0, seed=0):
    """Predictions with a known linear age bias (regression to the mean)."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(0, 48, n)
    return pd.DataFrame(
        {
            "subject_id": [f"s{i:03d}" for i in range(n)],
            "fold": np.arange(n) % folds,
            "age_months": age,
            "predicted_months": slope * age + intercept + rng.normal(0, noise, n),
        }
    )


def test_metrics_match_scikit_learn_and_scipy():
    data = _predictions()
    age, pred = data["age_months"], data["predicted_months"]
    got = ev.regression_metrics(age, pred)
    assert got["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(age, pred)))
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(age, pred))
    assert got["r2"] == pytest.approx(skm.r2_score(age, pred))
    assert got["r"] == pytest.approx(stats.pearsonr(age, pred)[0])
    assert got["spearman"] == pytest.approx(stats.spearmanr(age, pred)[0])
    constant = ev.regression_metrics(age, np.full(len(age), 24.0))
    assert np.isnan(constant["r"]) and constant["mae"] > 0  # no correlation of a constant


def test_metrics_of_a_stack_of_resamples_equal_scipys_one_by_one():
    """The bootstrap evaluates every resample in one call: row by row the same numbers as
    SciPy's pearsonr and spearmanr (ties included) on each resample alone."""
    data = _predictions(n=30)
    rng = np.random.default_rng(3)
    rows = rng.integers(0, 30, size=(50, 30))  # resamples with replacement: tied ranks
    age = data["age_months"].round().to_numpy()[rows]
    pred = data["predicted_months"].to_numpy()[rows]
    pred[0] = 24.0  # a constant resample
    stacked = ev.regression_metrics(age, pred)
    for i in range(1, 50):
        one = ev.regression_metrics(age[i], pred[i])
        assert one["r"] == pytest.approx(stats.pearsonr(age[i], pred[i])[0], abs=1e-12)
        assert one["spearman"] == pytest.approx(stats.spearmanr(age[i], pred[i])[0], abs=1e-12)
        assert all(stacked[k][i] == pytest.approx(one[k], abs=1e-12) for k in ev.METRICS)
    assert np.isnan(stacked["r"][0]) and np.isnan(stacked["spearman"][0])
    assert stacked["n"] == 30


def test_fold_metrics_report_each_fold_mean_sd_and_pooled():
    data = _predictions()
    table = ev.fold_metrics(data)
    assert list(table.index) == [f"fold {k}" for k in range(5)] + ["mean", "sd", "pooled"]
    folds = table.loc[[f"fold {k}" for k in range(5)], "mae"]
    assert table.loc["mean", "mae"] == pytest.approx(folds.mean())
    assert table.loc["sd", "mae"] == pytest.approx(folds.std(ddof=1))
    assert table.loc["pooled", "n"] == 100


def test_bootstrap_ci_brackets_the_estimate_is_seeded_and_shrinks_with_n():
    small, large = _predictions(n=40), _predictions(n=400)
    ci = ev.bootstrap_ci(small, n_resamples=500, seed=1)
    assert (ci["low"] <= ci["value"]).all() and (ci["value"] <= ci["high"]).all()
    assert ci.equals(ev.bootstrap_ci(small, n_resamples=500, seed=1))
    wide = ci.loc["mae", "high"] - ci.loc["mae", "low"]
    narrow = ev.bootstrap_ci(large, n_resamples=500, seed=1).loc["mae"]
    assert narrow["high"] - narrow["low"] < wide


def test_error_by_age_group_uses_the_paper_bins():
    data = _predictions()
    table = ev.error_by_age_group(data, (0, 12, 24, 36, 48))
    assert list(table.index) == ["0-11", "12-23", "24-35", "36-47"]
    assert table["n"].sum() == 100
    young = data[data["age_months"] < 12]
    expected = (young["predicted_months"] - young["age_months"]).abs().mean()
    assert table.loc["0-11", "mae"] == pytest.approx(expected)
    # regression to the mean: the youngest are over-, the oldest under-estimated
    assert table.loc["0-11", "mean_error"] > 0 > table.loc["36-47", "mean_error"]


def test_bias_correction_recovers_a_known_bias_and_removes_the_age_trend():
    data = _predictions(n=300, noise=1.0)
    slope, intercept = ev.fit_bias(data["age_months"], data["predicted_months"])
    assert slope == pytest.approx(0.7, abs=0.02) and intercept == pytest.approx(7.0, abs=0.6)
    gaps, lines = ev.brain_age_gap(data)
    assert set(lines["source"]) == {"other folds"} and (lines["n"] == 240).all()
    trend_before = stats.linregress(gaps["age_months"], gaps["gap"]).slope
    trend_after = stats.linregress(gaps["age_months"], gaps["gap_corrected"]).slope
    assert trend_before == pytest.approx(-0.3, abs=0.03) and abs(trend_after) < 0.03
    assert gaps["gap_corrected"].abs().mean() < gaps["gap"].abs().mean()
    with pytest.raises(ValueError, match="do not depend on age"):
        ev.fit_bias([1, 2, 3, 4], [5, 5, 5, 5])


def test_bias_correction_never_uses_the_test_folds_ages():
    data = _predictions()
    changed = data.copy()
    in_fold0 = changed["fold"] == 0
    changed.loc[in_fold0, "age_months"] = changed.loc[in_fold0, "age_months"][::-1].to_numpy()
    before, lines_before = ev.brain_age_gap(data)
    after, lines_after = ev.brain_age_gap(changed)
    assert lines_before.loc[0].equals(lines_after.loc[0])  # fold 0's line: no fold-0 ages used
    assert np.allclose(
        before.loc[in_fold0, "corrected_months"], after.loc[in_fold0, "corrected_months"]
    )


def test_bias_correction_from_inner_validation():
    data = _predictions()
    validation = _predictions(n=50, seed=3, slope=0.5, intercept=12.0, noise=0.1)
    gaps, lines = ev.brain_age_gap(data, validation)
    assert set(lines["source"]) == {"validation"}
    assert lines["slope"].to_numpy() == pytest.approx(0.5, abs=0.02)


def test_baselines_are_refitted_per_fold_on_training_subjects_only():
    data = _predictions(n=60)
    rng = np.random.default_rng(5)
    features = pd.DataFrame(
        {
            "subject_id": data["subject_id"],
            "size": data["age_months"] * 2 + rng.normal(0, 0.5, 60),
            "junk": rng.normal(size=60),
        }
    )
    folds = data[["subject_id", "fold", "age_months"]]
    base = ev.baseline_predictions(features, folds)
    for k in range(5):
        train_mean = folds.loc[folds["fold"] != k, "age_months"].mean()
        assert np.allclose(base.loc[base["fold"] == k, "age_mean"], train_mean)
    assert ev.regression_metrics(base["age_months"], base["ridge"])["mae"] < 1.0
    leaked = folds.copy()
    leaked.loc[leaked["fold"] == 0, "age_months"] = 0.0  # change only the test fold's ages
    again = ev.baseline_predictions(features, leaked)
    assert np.allclose(again.loc[again["fold"] == 0, "ridge"], base.loc[base["fold"] == 0, "ridge"])
    table = ev.compare_with_baselines(data, base)
    assert (
        table.loc["ridge on image features", "mae_mean"]
        < table.loc["age-mean predictor", "mae_mean"]
    )


def test_image_features_of_a_run(tiny_run):
    layout = RunLayout(tiny_run.run_path)
    preprocess = pd.read_csv(layout.preprocess_table, dtype={"subject_id": str})
    lobes = pd.read_csv(layout.lobes_table, dtype={"subject_id": str})
    ids = list(pd.read_csv(layout.predictions, dtype={"subject_id": str})["subject_id"])
    arrays = {sid: run_arrays.subject_arrays(layout, sid) for sid in ids}
    features = ev.image_features(preprocess, lobes, arrays)
    assert len(features) == 12 and not features.isna().any().any()
    assert {"brain_volume_ml", "ptile_high_hu", "frontal_ml", "occipital_intensity"} <= set(
        features.columns
    )
    intensities = features[[c for c in features.columns if c.endswith("_intensity")]]
    assert ((intensities > 0) & (intensities < 1)).all().all()
    # each intensity is the lobe's mean model input; only the subjects given are featured
    sid = features["subject_id"].iloc[3]
    volume, labels = arrays[sid]
    for k, name in LOBES.items():
        row = features.set_index("subject_id").loc[sid]
        assert row[f"{name}_intensity"] == pytest.approx(float(volume[labels == k].mean()))
    some = ev.image_features(preprocess, lobes, {s: arrays[s] for s in ids[:5]})
    assert sorted(some["subject_id"]) == sorted(ids[:5])
