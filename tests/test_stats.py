"""Paired statistics per lobe × age group, checked against SciPy, pingouin and statsmodels on the
same numbers (Table 1's text and the paper's own Table 1: test_table1.py)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pingouin as pg
import pytest
from helpers import planted_perturbation
from scipy import stats as ss
from statsmodels.stats.multitest import multipletests

from ctbrainage.stats import lobe_tests as st


def _pairs(diff, seed=0):
    """|e_whole| (positive, arbitrary) and |e_masked| = |e_whole| + diff."""
    diff = np.asarray(diff, float)
    whole = np.random.default_rng(seed).uniform(1.0, 5.0, diff.size)
    return whole, whole + diff


def test_normal_differences_use_the_paired_t_test_of_scipy_and_pingouin():
    whole, masked = _pairs(np.random.default_rng(1).normal(0.6, 1.0, 40))
    r = st.paired_test(whole, masked)
    assert r.shapiro_p == pytest.approx(ss.shapiro(masked - whole).pvalue)
    assert r.shapiro_p >= 0.05 and r.test == "paired t" and r.n == 40
    ref = ss.ttest_rel(masked, whole)
    assert r.statistic == pytest.approx(ref.statistic) and r.p == pytest.approx(ref.pvalue)
    ping = pg.ttest(masked, whole, paired=True)
    assert r.statistic == pytest.approx(ping["T"].iloc[0])
    assert r.p == pytest.approx(ping["p_val"].iloc[0])
    # d is the paired d_z: mean of the differences over their SD (n - 1), so t = d_z * sqrt(n);
    # pingouin gives d_z through compute_effsize(eftype="cohen_dz") ...
    diff = masked - whole
    hand = diff.sum() / 40 / math.sqrt(((diff - diff.mean()) ** 2).sum() / 39)
    assert r.cohen_d == pytest.approx(hand)
    assert r.cohen_d == pytest.approx(pg.compute_effsize(masked, whole, True, "cohen_dz"))
    assert r.cohen_d * math.sqrt(40) == pytest.approx(r.statistic)
    assert r.mean_delta_ae == pytest.approx(diff.mean())
    assert r.sd_delta_ae == pytest.approx(diff.std(ddof=1))
    # ... while its paired ttest reports d_av (mean over the average SD of the two conditions)
    d_av = diff.mean() / math.sqrt((whole.var(ddof=1) + masked.var(ddof=1)) / 2)
    assert ping["cohen_d"].iloc[0] == pytest.approx(abs(d_av))
    assert abs(ping["cohen_d"].iloc[0] - r.cohen_d) > 0.05


def test_skewed_differences_use_wilcoxon_of_scipy_and_pingouin():
    whole, masked = _pairs(np.random.default_rng(2).lognormal(0.0, 1.2, 30) - 0.5)
    r = st.paired_test(whole, masked)
    assert r.shapiro_p < 0.05 and r.test == "Wilcoxon"
    ref = ss.wilcoxon(masked, whole)
    assert r.statistic == pytest.approx(ref.statistic) and r.p == pytest.approx(ref.pvalue)
    ping = pg.wilcoxon(masked, whole, correction=False)  # pingouin adds a continuity correction
    assert r.statistic == pytest.approx(ping["W_val"].iloc[0])
    assert r.p == pytest.approx(ping["p_val"].iloc[0])
    assert r.note == ""


@pytest.mark.parametrize("n", [10, 24])  # 10: SciPy's exact permutation; 24: normal approximation
def test_wilcoxon_drops_zero_differences_and_handles_ties(n):
    base = [0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 6.0]
    diff = np.resize(base, n) * np.resize([1, 1, 1, 1, -1], n)
    whole, masked = _pairs(diff, seed=n)
    r = st.paired_test(whole, masked)
    assert r.test == "Wilcoxon" and r.n == n
    zeros = int(np.sum(diff == 0))
    assert f"{zeros} zero differences dropped" in r.note
    ref = ss.wilcoxon(masked, whole, zero_method="wilcox")
    assert r.p == pytest.approx(ref.pvalue) and r.statistic == pytest.approx(ref.statistic)
    ping = pg.wilcoxon(masked, whole, correction=False)
    assert r.p == pytest.approx(ping["p_val"].iloc[0])
    # the zero method matters here, so the choice is a real one
    assert r.p != pytest.approx(ss.wilcoxon(masked, whole, zero_method="pratt").pvalue)


def test_all_zero_differences_give_p_one_with_a_note_and_no_warning():
    whole = np.array([2.0, 3.0, 1.5, 4.0, 2.5])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = st.paired_test(whole, whole.copy())
    assert (r.p, r.statistic, r.cohen_d, r.mean_delta_ae) == (1.0, 0.0, 0.0, 0.0)
    assert r.effect == "negligible" and r.marker == "" and not r.significant
    assert "all 5 differences are zero" in r.note


def test_constant_nonzero_differences_are_tested_with_an_undefined_d():
    whole, masked = _pairs(np.full(6, 0.5))
    r = st.paired_test(whole, masked)
    assert r.test == "Wilcoxon" and r.p == pytest.approx(ss.wilcoxon(masked, whole).pvalue)
    assert math.isnan(r.cohen_d) and r.effect == "undefined"
    assert r.marker == "*" and "constant differences" in r.note


@pytest.mark.parametrize("n", [0, 1, 2])
def test_groups_with_fewer_than_three_subjects_are_reported_not_tested(n):
    whole, masked = _pairs(np.arange(n) + 1.0)
    r = st.paired_test(whole, masked)
    assert r.n == n and r.test == "n<3" and math.isnan(r.p) and not r.significant
    assert r.marker == "" and "fewer than 3" in r.note
    expected = float(np.mean(np.arange(n) + 1.0)) if n else math.nan
    assert r.mean_delta_ae == pytest.approx(expected, nan_ok=True)


def test_bad_pairs_are_refused():
    with pytest.raises(ValueError, match="differ in length"):
        st.paired_test([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        st.paired_test([1.0, 2.0, np.nan], [1.0, 2.0, 3.0])


# ---- effect sizes and markers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("d", "effect", "marker"),
    [
        (0.0, "negligible", ""),
        (0.1999, "negligible", ""),
        (0.2, "small", "†"),
        (-0.2, "small", "†"),
        (0.4999, "small", "†"),
        (0.5, "medium", "‡"),
        (-0.7999, "medium", "‡"),
        (0.8, "large", "§"),
        (-2.304, "large", "§"),
        (math.nan, "undefined", ""),
    ],
)
def test_effect_classes_and_markers_at_the_boundaries(d, effect, marker):
    assert st.effect_size_class(d) == effect
    assert st.table1_marker(False, d) == marker
    assert st.table1_marker(True, d) == ("*," + marker if marker else "*")


# ---- bootstrap and multiple comparisons ---------------------------------------------------------


def test_bootstrap_ci_is_seeded_scipy_bca_and_brackets_the_mean():
    values = np.random.default_rng(3).normal(1.0, 2.0, 25)
    first, again = st.mean_ci(values, seed=7), st.mean_ci(values, seed=7)
    assert first == again and st.mean_ci(values, seed=8) != first
    assert first[0] < values.mean() < first[1]
    ref = ss.bootstrap((values,), np.mean, method="BCa", rng=np.random.default_rng(7))
    assert first == pytest.approx(tuple(ref.confidence_interval))
    assert all(math.isnan(x) for x in st.mean_ci([1.0, 2.0]))
    assert st.mean_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)


def test_bh_q_values_match_statsmodels_and_keep_untested_cells_nan():
    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan, 0.2])
    q = st.bh_qvalues(p)
    finite = np.isfinite(p)
    np.testing.assert_allclose(q[finite], multipletests(p[finite], method="fdr_bh")[1])
    np.testing.assert_allclose(q, [0.025, 0.05, 0.05, 0.025, np.nan, 0.2])  # by hand, m = 5
    assert np.isnan(st.bh_qvalues([np.nan, np.nan])).all()


def test_fdr_uses_q_for_significance_and_markers():
    # 12 subjects per group; masking the parietal lobe adds 0.72 + N(0, 1)-quantile months
    # (t = 2.49, p ≈ 0.03 in each group), masking any other lobe changes nothing (p = 1): BH over
    # the 16 cells lifts the parietal q values to ≈ 0.12
    ages = np.repeat([3.0, 15.0, 27.0, 39.0], 12)
    shape = ss.norm.ppf((np.arange(12) + 0.5) / 12)
    shifts = {lobe: np.zeros(48) for lobe in st.LOBES} | {"parietal": np.tile(0.72 + shape, 4)}
    rows = [
        {
            "subject_id": f"s{i:02d}",
            "age_months": age,
            "lobe": lobe,
            "pred_whole": age + 2.0,
            "pred_masked": age + 2.0 + shift[i],
        }
        for lobe, shift in shifts.items()
        for i, age in enumerate(ages)
    ]
    data = pd.DataFrame(rows)
    plain = st.lobe_age_table(data, n_resamples=199)
    fdr = st.lobe_age_table(data, fdr=True, n_resamples=199)
    assert "q" not in plain and list(fdr.columns).index("q") == list(fdr.columns).index("p") + 1
    np.testing.assert_allclose(fdr["q"], st.bh_qvalues(plain["p"]))
    assert (plain["significant"] == (plain["p"] < 0.05)).all()
    assert (fdr["significant"] == (fdr["q"] < 0.05)).all()
    parietal = plain["lobe"] == "parietal"
    assert (plain.loc[parietal, "test"] == "paired t").all()
    assert plain.loc[parietal, "p"].between(0.02, 0.04).all()
    assert (plain.loc[parietal, "marker"] == "*,‡").all()  # d = 0.72
    assert (fdr.loc[parietal, "marker"] == "‡").all() and not fdr["significant"].any()
    assert fdr.attrs == {"alpha": 0.05, "fdr": True}


# ---- per lobe × age group ------------------------------------------------------------------------


def test_repeats_are_averaged_per_subject_and_lobe_before_testing():
    ages = np.random.default_rng(5).uniform(0, 48, 30)
    data = planted_perturbation(ages, repeats=3, seed=5)
    errors = st.subject_lobe_errors(data)
    assert len(errors) == 30 * 4 and (errors["repeats"] == 3).all()
    one = data[(data["subject_id"] == "s007") & (data["lobe"] == "temporal")]
    row = errors[(errors["subject_id"] == "s007") & (errors["lobe"] == "temporal")].iloc[0]
    masked = (one["pred_masked"] - one["age_months"]).abs().mean()
    assert row["abs_err_masked"] == pytest.approx(masked)
    assert row["delta_ae"] == pytest.approx(one["delta_ae"].mean())
    table = st.lobe_age_table(data, n_resamples=199)
    cell = table[(table["group"] == "24-35") & (table["lobe"] == "temporal")].iloc[0]
    members = errors[(errors["lobe"] == "temporal") & errors["age_months"].between(24, 36 - 1e-9)]
    assert cell["n"] == len(members)
    assert cell["mean_delta_ae"] == pytest.approx(members["delta_ae"].mean())


def test_planted_effects_are_found_in_the_right_cells():
    ages = np.random.default_rng(6).uniform(0, 48, 120)
    table = st.lobe_age_table(planted_perturbation(ages, seed=6), n_resamples=199)
    assert list(table["group"].unique()) == ["0-11", "12-23", "24-35", "36-47"]
    assert list(table["lobe"].iloc[:4]) == list(st.LOBES)
    cells = table.set_index(["group", "lobe"])
    assert cells.loc[("36-47", "temporal"), "marker"] == "*,§"
    assert cells.loc[("0-11", "occipital"), "significant"]
    assert not cells.loc[("36-47", "occipital"), "significant"]
    assert (table["ci_low"] <= table["mean_delta_ae"]).all()
    assert (table["mean_delta_ae"] <= table["ci_high"]).all()


def test_sliding_windows_overlap_and_are_labelled_like_the_paper():
    ages = np.random.default_rng(7).uniform(0, 48, 60)
    table = st.lobe_age_table(planted_perturbation(ages, seed=7), windows=(12, 6), n_resamples=199)
    labels = ["0-11", "6-17", "12-23", "18-29", "24-35", "30-41", "36-47"]
    assert list(table["group"].unique()) == labels
    window = table[(table["group"] == "6-17") & (table["lobe"] == "frontal")].iloc[0]
    assert window["n"] == int(((ages >= 6) & (ages < 18)).sum())
    assert (window["start"], window["end"]) == (6.0, 18.0)


def test_the_same_seed_gives_identical_tables():
    ages = np.random.default_rng(8).uniform(0, 48, 40)
    data = planted_perturbation(ages, seed=8)
    first = st.lobe_age_table(data, seed=3, n_resamples=499)
    pd.testing.assert_frame_equal(first, st.lobe_age_table(data, seed=3, n_resamples=499))
    other = st.lobe_age_table(data, seed=4, n_resamples=499)
    assert not np.allclose(first["ci_low"], other["ci_low"])


def test_bad_perturbation_tables_name_the_problem():
    data = planted_perturbation([5.0, 20.0, 30.0])
    with pytest.raises(ValueError, match="pred_masked"):
        st.lobe_age_table(data.drop(columns="pred_masked"))
    broken = data.copy()
    broken.loc[broken["subject_id"] == "s001", "pred_whole"] = np.nan
    with pytest.raises(ValueError, match="s001"):
        st.lobe_age_table(broken)


# ---- fill contrast ------------------------------------------------------------------------------


def test_fill_contrast_finds_a_model_that_reads_intensity_as_age():
    rng = np.random.default_rng(3)
    rows = []
    for i in range(30):
        for lobe, mean in (("frontal", 0.2), ("occipital", 0.45)):
            lobe_mean = mean + rng.normal(0, 0.05)
            fill_mean = 0.5 + rng.normal(0, 0.002)
            change = 20 * (fill_mean - lobe_mean) + rng.normal(0, 0.3)  # brighter reads older
            rows.append(
                {
                    "subject_id": f"s{i}",
                    "lobe": lobe,
                    "lobe_mean": lobe_mean,
                    "fill_mean": fill_mean,
                    "signed_change": change,
                }
            )
    table = pd.DataFrame(rows)
    found = st.fill_contrast(table)
    assert found["all"]["rho"] > 0.8 and found["all"]["n"] == 60
    assert set(found["by_lobe"]) == {"frontal", "occipital"}
    assert found["by_lobe"]["frontal"]["rho"] > 0.5
    shuffled = table.assign(signed_change=rng.permutation(table["signed_change"].to_numpy()))
    assert abs(st.fill_contrast(shuffled)["all"]["rho"]) < 0.3
    with pytest.raises(ValueError, match="rerun step 05"):
        st.fill_contrast(table.drop(columns="lobe_mean"))


def test_mean_abs_change_is_the_size_of_the_prediction_change_per_group_and_lobe():
    table = planted_perturbation(np.linspace(1, 46, 40), repeats=2, seed=3)
    cells = st.mean_abs_change(table, (0, 12, 24, 36, 48))
    assert list(cells.columns) == ["group", "lobe", "mean_abs_change", "n"]
    assert len(cells) == 16 and (cells.groupby("lobe")["n"].sum() == 40).all()
    # by hand for one cell: repeats averaged per subject, then the mean over the group
    part = table[(table["age_months"] < 12) & (table["lobe"] == table["lobe"].iloc[0])]
    per_subject = (part["pred_masked"] - part["pred_whole"]).abs().groupby(part["subject_id"])
    cell = cells[(cells["group"] == "0-11") & (cells["lobe"] == table["lobe"].iloc[0])]
    assert float(cell["mean_abs_change"].iloc[0]) == pytest.approx(per_subject.mean().mean())
    # a change of either sign counts by its size; ΔAE of opposite-signed errors cancels
    flipped = table.assign(pred_masked=2 * table["pred_whole"] - table["pred_masked"])
    again = st.mean_abs_change(flipped, (0, 12, 24, 36, 48))
    np.testing.assert_allclose(again["mean_abs_change"], cells["mean_abs_change"])
