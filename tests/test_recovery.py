"""Scoring the recovery of the planted schedule from perturbation statistics."""

import pandas as pd
import pytest

from ctbrainage.synth import MaturationSchedule
from ctbrainage.synth.scoring import score_importance

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
