"""Steps 04 and 06 run directly: their files hold numbers recomputed here from their inputs with
NumPy and SciPy (known answers), not just files that exist."""

import dataclasses
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ctbrainage.core.config import load_profile
from ctbrainage.core.layout import RunLayout
from ctbrainage.steps import s04_evaluate, s05_perturbation, s06_stats
from tests.helpers import planted_perturbation


def _read(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"subject_id": str})


@pytest.mark.integration
def test_step_04_metrics_and_bias_lines_are_recomputed_from_the_predictions(tiny_run, tmp_path):
    shutil.copytree(tiny_run.run_path, tmp_path / "run")
    profile = dataclasses.replace(tiny_run, run_dir=str(tmp_path / "run"))
    layout = RunLayout(profile.run_path)
    result = s04_evaluate.run(profile)
    predictions = _read(layout.predictions)
    error = predictions["predicted_months"] - predictions["age_months"]

    metrics = pd.read_csv(layout.metrics, index_col=0)
    assert metrics.loc["pooled", "mae"] == pytest.approx(error.abs().mean(), rel=1e-12)
    for k, part in predictions.groupby("fold"):
        fold_error = part["predicted_months"] - part["age_months"]
        assert metrics.loc[f"fold {k}", "mae"] == pytest.approx(fold_error.abs().mean())
    folds = [f"fold {k}" for k in sorted(predictions["fold"].unique())]
    assert metrics.loc["mean", "mae"] == pytest.approx(metrics.loc[folds, "mae"].mean())

    lines = _read(layout.bias_lines).set_index("fold")
    gaps = _read(layout.brain_age_gaps).set_index("subject_id")
    for k in lines.index:
        others = predictions[predictions["fold"] != k]
        slope, intercept = np.polyfit(others["age_months"], others["predicted_months"], 1)
        assert lines.loc[k, ["slope", "intercept"]].tolist() == pytest.approx([slope, intercept])
        mine = predictions[predictions["fold"] == k].set_index("subject_id")
        corrected = (mine["predicted_months"] - intercept) / slope
        expected = corrected - mine["age_months"]
        assert gaps.loc[mine.index, "gap_corrected"].to_numpy() == pytest.approx(expected)
    assert result.metrics.loc["pooled", "mae"] == metrics.loc["pooled", "mae"]
    assert s04_evaluate.is_fresh(profile)


@pytest.fixture
def planted_run(tmp_path, monkeypatch):
    """A real-cohort run directory holding only step 05's table: the planted perturbation of
    ``tests.helpers`` over 60 children (step 05 taken as done)."""
    profile = load_profile(
        "tiny",
        {"run_dir": str(tmp_path / "run"), "data": "cohort.csv", "perturb.compare_fills": []},
    )
    ages = np.random.default_rng(3).uniform(0, 48, 60)
    table = planted_perturbation(ages, noise=0.8, seed=4)
    layout = RunLayout(profile.run_path)
    layout.root.mkdir(parents=True)
    table.to_csv(layout.perturbation("noise", "noise"), index=False)
    monkeypatch.setattr(s05_perturbation.STEP, "is_fresh", lambda profile, part=None: True)
    return profile, table


def test_step_06_tests_each_cell_as_scipy_does(planted_run):
    profile, table = planted_run
    result = s06_stats.run(profile)
    written = _read(RunLayout(profile.run_path).lobe_age_table)
    assert len(written) == 16 and written["p"].tolist() == pytest.approx(result.tests["p"].tolist())
    for row in written.itertuples():
        cell = table[(table["lobe"] == row.lobe) & (table["age_months"] >= row.start)]
        cell = cell[cell["age_months"] < row.end]
        whole = (cell["pred_whole"] - cell["age_months"]).abs().to_numpy()
        masked = (cell["pred_masked"] - cell["age_months"]).abs().to_numpy()
        normal = stats.shapiro(masked - whole).pvalue >= profile.stats.alpha
        expected = stats.ttest_rel(masked, whole) if normal else stats.wilcoxon(masked, whole)
        assert row.test == ("paired t" if normal else "Wilcoxon"), (row.group, row.lobe)
        assert row.p == pytest.approx(expected.pvalue, rel=1e-9), (row.group, row.lobe)
        assert row.n == len(cell)
    cells = written.set_index(["group", "lobe"])
    assert cells.loc[("36-47", "temporal"), "p"] < 1e-3  # planted +2 months from 24 on: 3.4e-5
    assert cells.loc[("0-11", "temporal"), "p"] > 0.01  # planted: nothing before 24
    assert s06_stats.is_fresh(profile)
