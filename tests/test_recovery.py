"""Scoring the recovery of the planted schedule from perturbation statistics."""

import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata, spearmanr

from ctbrainage.synth import MaturationSchedule
from ctbrainage.synth.schedule import PHYSIOLOGICAL
from ctbrainage.synth.scoring import _average_ranks, recovery_row, score_importance, spearman_rho

EDGES = (0, 12, 24, 36, 48)


def _measured(expected: pd.DataFrame, scale=2.0, significant=True) -> pd.DataFrame:
    return expected.assign(mean_delta_ae=expected["importance"] * scale, significant=significant)[
        ["group", "lobe", "mean_delta_ae", "significant"]
    ]


def test_perfect_recovery_scores_one_and_all_top_lobes():
    expected = MaturationSchedule().expected_importance(EDGES)
    score = score_importance(_measured(expected), expected)
    assert score["spearman_rho"] == pytest.approx(1.0)
    assert score["within_group_spearman_rho"] == pytest.approx(1.0)
    assert score["top_lobe_matches"] == score["groups"] == 4 and score["cells"] == 16
    assert score["top_lobe"]["0-11"] == {
        "planted": "occipital",
        "measured": "occipital",
        "match": True,
    }
    assert score["null_lobes_significant_in"] == {}


def test_a_different_order_is_not_recovered_by_the_physiological_one():
    physiological = MaturationSchedule().expected_importance(EDGES)
    reversed_truth = MaturationSchedule.parse("reversed").expected_importance(EDGES)
    score = score_importance(_measured(physiological), reversed_truth)
    assert score["within_group_spearman_rho"] < 0 and score["top_lobe_matches"] < 3
    # the overall ρ stays high: every lobe's importance falls with age whatever the order
    assert score["spearman_rho"] > 0.5


def test_a_significant_null_lobe_is_reported():
    expected = MaturationSchedule.parse("null=temporal").expected_importance(EDGES)
    measured = _measured(expected)
    score = score_importance(measured, expected)
    assert score["null_lobes_significant_in"] == {"temporal": ["0-11", "12-23", "24-35", "36-47"]}
    quiet = measured.assign(significant=measured["lobe"] != "temporal")
    assert score_importance(quiet, expected)["null_lobes_significant_in"] == {"temporal": []}
    with pytest.raises(ValueError, match="share no"):
        score_importance(measured.assign(group="x"), expected)


def test_several_definitions_at_once_are_refused():
    schedule = MaturationSchedule()
    both = pd.concat(
        [
            schedule.expected_importance(EDGES, definition=d)
            for d in ("fisher", "hu_slope_x_wm_share")
        ]
    )
    with pytest.raises(ValueError, match="several definitions"):
        score_importance(_measured(both), both)


def test_groups_without_planted_signal_are_scored_apart():
    # the myelination phase alone: complete by about 30 months
    early = MaturationSchedule({n: replace(c, late_share=0.0) for n, c in PHYSIOLOGICAL.items()})
    expected = early.expected_importance(EDGES)
    totals = expected.groupby("group")["hu_per_month"].sum()
    measured = _measured(expected, significant=False)
    measured.loc[
        (measured["group"] == "36-47") & (measured["lobe"] == "frontal"), "significant"
    ] = True
    score = score_importance(measured, expected)
    assert score["signal_groups"] == [g for g in totals.index if totals[g] >= 0.1 * totals.max()]
    assert "0-11" in score["signal_groups"] and "36-47" not in score["signal_groups"]
    assert score["signal_spearman_rho"] == pytest.approx(1.0)
    assert score["signal_top_lobe_matches"] == len(score["signal_groups"])
    assert score["significant_without_signal"] == ["36-47: frontal"]
    # noise in the groups without signal does not touch the signal-group scores
    scrambled = measured.copy()
    late = scrambled["group"] == "36-47"
    scrambled.loc[late, "mean_delta_ae"] = scrambled.loc[late, "mean_delta_ae"].to_numpy()[::-1] + 5
    again = score_importance(scrambled, expected)
    assert again["signal_spearman_rho"] == pytest.approx(1.0) and again["spearman_rho"] < 1


def test_an_untested_readout_is_scored_without_significance():
    expected = MaturationSchedule().expected_importance(EDGES)
    measured = expected.assign(mean_abs_change=expected["importance"] * 3)[
        ["group", "lobe", "mean_abs_change"]
    ]
    score = score_importance(measured, expected, value="mean_abs_change")
    assert score["spearman_rho"] == pytest.approx(1.0) and score["top_lobe_matches"] == 4
    assert score["null_lobes_significant_in"] is None
    assert score["significant_without_signal"] is None
    row = recovery_row("group_level", measured, expected, "mean_abs_change")
    assert row["readout"] == "|Δprediction|" and row["significant_cells"] is None
    assert row["definition"] == "fisher" and row["top_lobe"] == "4/4"


def test_spearman_rho_is_scipys_statistic_to_the_last_bit():
    """The bootstrap's ρ: the same float as scipy.stats.spearmanr, ties, constant and NaN
    inputs included."""
    rng = np.random.default_rng(0)
    for n in (2, 3, 4, 16, 40):
        for case in range(60):
            x = rng.integers(0, 4, n).astype(float)  # many ties
            y = rng.random(n) if case % 3 else x * 2 + rng.integers(0, 2, n)
            if case % 10 == 0:
                y[0] = np.nan
            if case % 10 == 1:
                y[:] = 1.0  # constant
            assert np.array_equal(_average_ranks(x), rankdata(x))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # scipy warns on a constant input
                expected = spearmanr(x, y).statistic
            ours = spearman_rho(x, y)
            assert (np.isnan(ours) and np.isnan(expected)) or ours == expected, (x, y)
