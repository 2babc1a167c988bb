"""The interventional model truth: shift_lobe, the regenerated child, the chain rule, and the
faithfulness and model ↔ ideal-observer scores."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from ctbrainage.core.labels import LOBES
from ctbrainage.interpret import attribution
from ctbrainage.interpret.model_truth import sensitivities
from ctbrainage.learn.datasets import AgeScaler
from ctbrainage.synth import faithfulness
from ctbrainage.synth.head import SubjectSpec, simulate_head
from ctbrainage.synth.interventions import CONTENT, MATURATION, Interventions, Variant
from ctbrainage.synth.schedule import MaturationSchedule

STAGGERED = MaturationSchedule.parse("staggered")
LOBE_NAMES = list(LOBES.values())


@pytest.mark.parametrize("lobe", ["frontal", "occipital"])
def test_shift_lobe_moves_one_curve_in_age_and_no_other(lobe):
    shifted = STAGGERED.shift_lobe(lobe, 2.0)
    ages = np.linspace(0, 47, 48)
    for name in LOBE_NAMES:
        moved = ages + 2.0 if name == lobe else ages
        np.testing.assert_allclose(shifted.wm_hu(name, ages), STAGGERED.wm_hu(name, moved))
    nulled = MaturationSchedule.parse("null=temporal").shift_lobe("temporal", 5.0)
    np.testing.assert_array_equal(nulled.wm_hu("temporal", ages), 18.0 + 12.5 / 2)
    with pytest.raises(ValueError, match="unknown lobe 'insula'"):
        STAGGERED.shift_lobe("insula", 1.0)


def test_a_regenerated_child_with_one_lobe_shifted_differs_only_in_that_lobes_white_matter():
    """Same seed, parietal maturation 2 months ahead: the image changes only where the parietal
    white matter reaches (its response map), by ΔHU × the response up to int16 rounding."""
    spec = SubjectSpec("s", 18.0, "M", "B", 21)
    head = simulate_head(spec, STAGGERED, "quick", cues="lobar", responses=True)
    moved = simulate_head(spec, STAGGERED.shift_lobe("parietal", 2.0), "quick", cues="lobar")
    change = moved.hu.astype(np.float64) - head.hu
    response = head.responses[..., list(LOBES.values()).index("parietal")]
    bio = head.truth["biological_age_months"]
    step = STAGGERED.wm_hu("parietal", bio + 2.0) - STAGGERED.wm_hu("parietal", bio)
    assert step > 1.5  # the parietal lobe matures at 18 months: a large change
    assert np.count_nonzero(change) > 1000
    assert not change[response == 0].any()  # nothing changes beyond the lobe's reach
    assert np.abs(change - step * response).max() <= 1.0 + 1e-4  # int16 rounding
    # the response is the lobe's white matter: most of it lies in its white-matter core's reach
    parietal = [k for k, n in LOBES.items() if n == "parietal"][0]
    assert np.median(response[head.wm_core == parietal]) > 0.5


class Linear(torch.nn.Module):
    """f(x) = Σ w·x + b (a 'model' whose chain rule is exact)."""

    def __init__(self, weights: np.ndarray):
        super().__init__()
        self.w = torch.nn.Parameter(torch.from_numpy(weights)[None, None])

    def forward(self, x):
        return (x * self.w).sum(dim=(1, 2, 3, 4))[:, None] + 0.25


HALF_SIGN = np.where(np.indices((6, 6, 6)).sum(axis=0) < 6, 1.0, -1.0).astype(np.float32)


def test_the_chain_rule_equals_the_finite_differences_on_a_linear_model():
    rng = np.random.default_rng(0)
    shape = (6, 6, 6)
    weights = rng.normal(size=shape).astype(np.float32) * 1e-3
    base = rng.uniform(size=shape).astype(np.float32)
    responses = rng.uniform(size=(4, *shape)).astype(np.float32) * 0.1
    slopes = dict(zip(LOBE_NAMES, [0.0, 1.2, 0.3, -0.5], strict=True))
    variants = []
    for i, lobe in enumerate(LOBE_NAMES):
        for step in (1.5, -1.5):
            image = base + step * slopes[lobe] * responses[i]
            variants.append(Variant(lobe, MATURATION, step, image))
        variants.append(Variant(lobe, CONTENT, 2.0, base + 2.0 * responses[i]))
    every = sum(slopes[n] * responses[i] for i, n in enumerate(LOBE_NAMES))
    extra = rng.uniform(size=shape).astype(np.float32) * 0.1  # a non-lobar cue
    for step in (1.5, -1.0):
        variants.append(Variant("all", MATURATION, step, base + step * (every + extra)))
    found = Interventions(base, np.ones(shape, np.uint8), responses, slopes, variants)
    scaler = AgeScaler(0, 48)
    model = Linear(weights).eval()
    maps = {  # the model's own gradient, and a map that is its negative outside one corner
        "saliency": lambda x: attribution.saliency(model, x),
        "half_wrong": lambda x: torch.from_numpy(weights * HALF_SIGN)[None],
    }
    rows = sensitivities(model, found, scaler, gradient_maps=maps)
    value = pd.DataFrame(rows).set_index(["cue", "kind"])["value"]
    for i, lobe in enumerate(LOBE_NAMES):
        weight = 48 * float(np.sum(weights.astype(np.float64) * responses[i]))
        # finite differences of float32 predictions: to ~1e-3; the backward pass: exact
        assert value[(lobe, "content")] == pytest.approx(weight, rel=2e-3)
        assert value[(lobe, "chain_content")] == pytest.approx(weight, rel=1e-5)
        assert value[(lobe, "maturation")] == pytest.approx(weight * slopes[lobe], abs=2e-5)
        assert value[(lobe, "chain_maturation")] == pytest.approx(weight * slopes[lobe], rel=1e-5)
        # the saliency map's signed projection on the lobe's signal map is the chain rule
        chained = value[(lobe, "chain_maturation")]
        assert value[(lobe, "projection:saliency")] == pytest.approx(chained, rel=1e-5)
        wrong = 48 * float(np.sum(weights * HALF_SIGN * responses[i])) * slopes[lobe]
        assert value[(lobe, "projection:half_wrong")] == pytest.approx(wrong, rel=1e-5, abs=1e-9)
    lobar = sum(value[(n, "maturation")] for n in LOBE_NAMES)
    non_lobar = 48 * float(np.sum(weights.astype(np.float64) * extra))
    assert value[("all", "maturation")] == pytest.approx(lobar + non_lobar, rel=2e-3)
    assert value[("non_lobar", "maturation")] == pytest.approx(non_lobar, rel=2e-2)


def _model_truth(sensitivity: dict[str, list[float]], ages) -> pd.DataFrame:
    rows = []
    for i, age in enumerate(ages):
        for lobe in LOBE_NAMES:
            rows.append((f"s{i}", age, lobe, "maturation", sensitivity[lobe][i]))
        rows.append((f"s{i}", age, "non_lobar", "maturation", 0.1))
    columns = ["subject_id", "age_months", "cue", "kind", "value"]
    return pd.DataFrame(rows, columns=columns).assign(fold=0)


AGES = [3, 6, 9, 15, 18, 21, 27, 30, 33, 39, 42, 45]
# the model uses the lobe of each group most: occipital, parietal, frontal, temporal
TOP = ["occipital"] * 3 + ["parietal"] * 3 + ["frontal"] * 3 + ["temporal"] * 3
SENSITIVITY = {
    lobe: [0.6 if TOP[i] == lobe else 0.1 + 0.01 * j for i in range(12)]
    for j, lobe in enumerate(LOBE_NAMES)
}


def _method(name: str, values) -> pd.DataFrame:
    rows = []
    for i, age in enumerate(AGES):
        for lobe in LOBE_NAMES:
            rows.append((name, f"s{i}", 0, age, lobe, values(i, lobe), 0.25, 0.0))
    return pd.DataFrame(rows, columns=[
        "method", "subject_id", "fold", "age_months", "lobe", "importance", "reference", "tested"
    ])  # fmt: skip


def test_faithfulness_rewards_the_model_truth_and_punishes_its_reverse():
    truth = _model_truth(SENSITIVITY, AGES)
    faithful = _method("faithful", lambda i, lobe: SENSITIVITY[lobe][i])
    reverse = _method("reverse", lambda i, lobe: -SENSITIVITY[lobe][i])
    table = pd.concat([faithful, reverse])
    scores = faithfulness.faithfulness_scores(
        table, truth, edges=(0, 12, 24, 36, 48), n_resamples=50, seed=0, per_voxel=["faithful"]
    ).set_index(["method", "metric"])
    assert scores.loc[("faithful", "subject_rho"), "value"] == pytest.approx(1.0)
    assert scores.loc[("reverse", "subject_rho"), "value"] == pytest.approx(-1.0)
    assert scores.loc[("faithful", "subject_top_lobe"), "value"] == 1.0
    assert scores.loc[("reverse", "subject_top_lobe"), "value"] == 0.0
    assert scores.loc[("faithful", "subject_top_lobe"), "chance"] == 0.25
    assert scores.loc[("faithful", "top_lobe_matches"), "value"] == 4
    assert scores.loc[("faithful", "top_lobe_matches"), "chance"] == 1.0  # a quarter of 4 groups
    assert scores.loc[("faithful", "spearman_rho"), "value"] == pytest.approx(1.0)
    # voxel method: its share on the model's top lobe, against that lobe's share of the brain
    assert scores.loc[("faithful", "top_lobe_mass"), "value"] == pytest.approx(0.6)
    assert scores.loc[("faithful", "top_lobe_mass"), "chance"] == pytest.approx(0.25)
    # lobe method: the share of |importance| on the model's top lobe
    shares = [0.6 / sum(SENSITIVITY[lobe][i] for lobe in LOBE_NAMES) for i in range(12)]
    assert scores.loc[("reverse", "top_lobe_mass"), "value"] == pytest.approx(np.mean(shares))


def test_the_projections_are_scored_as_lobe_methods():
    """A projection equal to s_k is faithful; one with the lobes' order reversed is not."""
    truth = _model_truth(SENSITIVITY, AGES)
    order = {lobe: LOBE_NAMES[::-1][j] for j, lobe in enumerate(LOBE_NAMES)}
    projected = pd.concat(
        [
            truth[truth["kind"] == "maturation"].assign(kind="projection:exact"),
            truth[truth["kind"] == "maturation"].assign(
                kind="projection:swapped", cue=lambda t: t["cue"].map(order).fillna(t["cue"])
            ),
        ]
    )
    truth = pd.concat([truth, projected.assign(value=lambda t: -t["value"])])  # sign: |ŝ|
    rows = faithfulness.projection_rows(truth)
    assert set(rows["method"]) == {"exact (projection)", "swapped (projection)"}
    assert (rows["importance"] >= 0).all() and len(rows) == 2 * 4 * len(AGES)
    scores = faithfulness.faithfulness_scores(
        _method("faithful", lambda i, lobe: SENSITIVITY[lobe][i]), truth,
        edges=(0, 12, 24, 36, 48), n_resamples=20, seed=0, per_voxel=[],
    ).set_index(["method", "metric"])["value"]  # fmt: skip
    assert scores[("exact (projection)", "subject_rho")] == pytest.approx(1.0)
    assert scores[("exact (projection)", "top_lobe_matches")] == 4
    assert scores[("swapped (projection)", "subject_rho")] < 0.5


def test_model_vs_ideal_sets_the_models_shares_beside_the_fisher_shares():
    truth = _model_truth(SENSITIVITY, AGES)
    expected = STAGGERED.expected_importance((0, 12, 24, 36, 48))
    table = faithfulness.model_vs_ideal(truth, expected, (0, 12, 24, 36, 48))
    first = table[(table["group"] == "0-11") & (table["lobe"] == "occipital")].iloc[0]
    assert first.model_s == pytest.approx(0.6)
    assert first.model_share == pytest.approx(0.6 / (0.6 + 0.11 + 0.12 + 0.10))
    assert first.ideal_share > 0.9  # the staggered schedule: occipital alone in the first year
    rest = table[table["lobe"] == "non_lobar"]
    assert rest["model_s"].tolist() == pytest.approx([0.1] * 4)
    scores = faithfulness.model_vs_ideal_scores(table)
    assert scores["top_lobe_matches"] == 4 and scores["groups"] == 4
    flipped = truth.assign(value=np.where(truth["cue"] == "non_lobar", 0.1, 1 - truth["value"]))
    worse = faithfulness.model_vs_ideal_scores(
        faithfulness.model_vs_ideal(flipped, expected, (0, 12, 24, 36, 48))
    )
    assert worse["top_lobe_matches"] == 0
    assert worse["spearman_rho"] < scores["spearman_rho"]


def test_a_spec_regenerates_identically():
    spec = SubjectSpec("s", 7.0, "F", "A", 5)
    one = simulate_head(spec, STAGGERED, "quick", cues="lobar")
    two = simulate_head(replace(spec), STAGGERED, "quick", cues="lobar", responses=True)
    np.testing.assert_array_equal(one.hu, two.hu)
    np.testing.assert_array_equal(one.signal, two.signal)
    # the lobes' responses weighted by their planted slopes are the signal map
    span = STAGGERED.mature_hu - STAGGERED.unmyelinated_hu
    bio = one.truth["biological_age_months"]
    slopes = [span * float(STAGGERED.lobes[n].slope(bio)) for n in LOBE_NAMES]
    np.testing.assert_allclose(two.responses @ np.array(slopes), one.signal, atol=1e-4)


def test_chain_rule_agreement_is_one_where_the_chain_rule_is_exact_and_less_where_not():
    rows = []
    rng = np.random.default_rng(1)
    for i in range(10):
        for lobe in LOBE_NAMES:
            value = float(rng.normal())
            for kind in ("maturation", "chain_maturation", "content"):
                rows.append((f"s{i}", 12.0, lobe, kind, value))
            rows.append((f"s{i}", 12.0, lobe, "chain_content", 2 * value + rng.normal()))
    truth = pd.DataFrame(rows, columns=["subject_id", "age_months", "cue", "kind", "value"])
    table = faithfulness.chain_rule_agreement(truth).set_index("interventional")
    assert table.loc["maturation", "pearson_r"] == pytest.approx(1.0)
    assert table.loc["maturation", "slope"] == pytest.approx(1.0)
    assert table.loc["maturation", "pairs"] == 40
    assert 0.5 < table.loc["content", "pearson_r"] < 0.99
    assert table.loc["content", "slope"] == pytest.approx(2.0, abs=0.3)


def test_the_notebooks_verdict_names_the_faithful_methods_and_the_papers_fill():
    from ctbrainage.views.attribution_tables import two_truths_text

    truth = _model_truth(SENSITIVITY, AGES)
    table = pd.concat([
        _method("faithful", lambda i, lobe: SENSITIVITY[lobe][i]),
        _method("fill_noise", lambda i, lobe: -SENSITIVITY[lobe][i]),
    ])  # fmt: skip
    scores = faithfulness.faithfulness_scores(
        table, truth, edges=(0, 12, 24, 36, 48), n_resamples=10, seed=0, per_voxel=[]
    )
    correct = pd.DataFrame([["fill_noise", "lobe", "spearman_rho", 0.12, 0, 0.3, 0.0]],
                           columns=scores.columns)  # fmt: skip
    ideal = {"spearman_rho": 0.8, "top_lobe_matches": 3, "groups": 4}
    text = two_truths_text(pd.concat([scores, correct]), ideal, "fill_noise")
    assert "(ρ ≥ 0.9 with its |s_k| and its top lobe in every group): `faithful`;" in text
    assert "ρ 0.80, the same top lobe in 3/4 groups" in text
    assert "**The paper's fill** (`fill_noise`): ρ -1.00 with the model, top lobe in 0/4" in text
    assert "against the data ρ 0.12" in text
