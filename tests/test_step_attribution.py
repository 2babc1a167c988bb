"""Step 07 on the tiny run: every method on every subject, the tables it writes, its freshness,
determinism and a bad subject."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from ctbrainage.core.cohort import age_group
from ctbrainage.core.labels import LOBES
from ctbrainage.core.layout import RunLayout
from ctbrainage.core.sections import AttributionConfig, ModelTruthConfig
from ctbrainage.interpret import attribution
from ctbrainage.interpret.methods import METHODS as REGISTRY
from ctbrainage.stats import lobe_tests
from ctbrainage.steps import s05_perturbation, s07_attribution, s07_model_truth
from ctbrainage.synth.schedule import MaturationSchedule
from ctbrainage.views.attribution_tables import faithfulness_table

METHODS = list(AttributionConfig().methods)  # every method, in the profile's order
FILLS = ["fill_noise", "fill_zero", "fill_mean", "fill_group_level"]


@pytest.fixture(scope="module")
def attributed(tiny_run, tmp_path_factory):
    dest = tmp_path_factory.mktemp("attribution") / "run"
    shutil.copytree(tiny_run.run_path, dest)
    # the model truth of the youngest and the oldest child (the tiny profile measures none: it
    # is step 07's costliest part), and two U-Noise candidates (the tiny profile has one)
    truth = ModelTruthConfig(subjects=2)
    noise = dataclasses.replace(tiny_run.attribution.unoise, r=(0.1, 1.0))  # a choice to make
    attributing = dataclasses.replace(tiny_run.attribution, model_truth=truth, unoise=noise)
    profile = dataclasses.replace(tiny_run, run_dir=str(dest), attribution=attributing)
    s05_perturbation.run(profile, progress=False)
    return profile, s07_attribution.run(profile, progress=False)


def test_every_method_attributes_every_subject(attributed):
    profile, result = attributed
    table = result.table
    assert list(table.columns) == s07_attribution.COLUMNS
    assert list(table["method"].unique()) == METHODS + FILLS
    predictions = pd.read_csv(RunLayout(profile.run_path).predictions, dtype={"subject_id": str})
    for _, rows in table.groupby("method"):
        assert len(rows) == len(predictions) * 4  # every subject, four lobes
        folds = rows.drop_duplicates("subject_id").set_index("subject_id")["fold"]
        assert folds.to_dict() == predictions.set_index("subject_id")["fold"].to_dict()
    shares = table[table["method"].isin(METHODS[:6] + ["unoise"])]
    undefined = shares[shares["importance"].isna()]  # a map with no mass in the brain:
    assert set(undefined["method"]) <= {"gradcam"}  # Grad-CAM's ReLU can zero all of it
    shares = shares.dropna(subset=["importance"])
    assert shares["importance"].between(0, 1).all()
    assert (shares.groupby(["method", "subject_id"])["importance"].sum() <= 1 + 1e-9).all()


def _planted(profile) -> pd.DataFrame:
    truths = pd.read_csv(RunLayout(profile.run_path).synthetic.expected_importance)
    return truths[truths["definition"] == "fisher"]


def _recovery(rows: pd.DataFrame, planted: pd.DataFrame, edges) -> tuple[float, int]:
    """Spearman ρ (SciPy) between the planted importance and the group-mean importance over
    every (group, lobe) cell, and the groups whose top lobe is the planted one (by hand)."""
    groups = age_group(rows["age_months"], edges).astype(str)
    means = rows.assign(group=groups).groupby(["group", "lobe"])["importance"].mean()
    cells = planted.set_index(["group", "lobe"])["importance"].to_frame("planted")
    cells = cells.join(means.rename("measured"), how="inner")
    rho = stats.spearmanr(cells["planted"], cells["measured"]).statistic
    matches = sum(
        part["planted"].idxmax() == part["measured"].idxmax()
        for _, part in cells.groupby(level="group")
    )
    return float(rho), int(matches)


def test_fills_are_step_05s_delta_ae(attributed):
    profile, result = attributed
    errors = lobe_tests.subject_lobe_errors(s05_perturbation.run(profile, progress=False).table)
    ours = result.table[result.table["method"] == "fill_noise"]
    merged = ours.merge(errors, on=["subject_id", "lobe"])
    assert len(merged) == len(ours) and np.allclose(merged["importance"], merged["delta_ae"])


def test_scores_tests_maps_and_sanity_are_written(attributed):
    profile, result = attributed
    scores = result.scores
    assert list(scores.columns) == s07_attribution.SCORE_COLUMNS
    planted = _planted(profile)
    for method in METHODS + FILLS:
        mine = scores[scores["method"] == method]
        lobe = mine[mine["level"] == "lobe"].set_index("metric")["value"]
        rows = result.table[result.table["method"] == method]
        rho, matches = _recovery(rows, planted, profile.age_group_edges)
        assert lobe["spearman_rho"] == pytest.approx(rho, abs=1e-12), method
        assert lobe["top_lobe_matches"] == matches, method
        if method in METHODS and method != "lobe_shapley":
            per_voxel = mine[mine["level"] == "lobe_per_voxel"].set_index("metric")["value"]
            size = rows.assign(importance=rows["importance"] / rows["reference"])
            assert (
                per_voxel["top_lobe_matches"]
                == _recovery(size, planted, profile.age_group_edges)[1]
            )
            voxel = mine[mine["level"] == "voxel"].set_index("metric")
            for metric in ("auroc", "mass_accuracy"):  # the mean of the subjects, inside its CI
                value, low, high = voxel.loc[metric, ["value", "ci_low", "ci_high"]]
                assert low <= value <= high, (method, metric)
        if method in METHODS:
            cost = mine[mine["level"] == "cost"].set_index("metric")["value"]
            assert cost["seconds_per_subject"] > 0
            passes = 0 if method == "unoise" or REGISTRY[method].reference else 1  # own U-Net
            assert cost["forward_passes"] >= passes
    cost = scores[scores["level"] == "cost"].set_index(["method", "metric"])["value"]
    assert cost[("lobe_shapley", "forward_passes")] == 16  # 2^4 coalitions
    assert cost[("lobe_shapley", "backward_passes")] == 0
    assert cost[("integrated_gradients", "forward_passes")] == profile.attribution.ig_steps
    assert cost[("unoise", "training_seconds")] > 0
    assert set(result.tests["method"]) == set(METHODS + FILLS)
    assert len(result.tests) == len(METHODS + FILLS) * 16  # lobe × age-group cells per method
    keys = [attribution.split_group_map_key(k) for k in result.maps]
    groups = {g for name, g in keys if name == attribution.MEAN_INPUT}
    assert groups and all(
        attribution.group_map_key(m, g) in result.maps
        for m in ("saliency", "unoise")
        for g in groups
    )
    sanity = result.sanity
    assert set(sanity["method"]) == set(METHODS + FILLS)
    assert set(sanity.loc[sanity["method"] == "unoise", "model"]) == {"conv1", "random_labels"}
    assert set(sanity.loc[sanity["method"] == "saliency", "model"]) == {
        "fc", "layer4", "layer3", "layer2", "layer1", "bn1", "conv1", "random_labels",
    }  # fmt: skip
    verdict = s07_attribution.sanity_verdict(sanity).set_index("method")["sanity"]
    assert len(verdict) == len(METHODS + FILLS)
    assert verdict["edges"] == verdict["intensity"] == "fails"  # no model: survive everything
    for method, rows in sanity.groupby("method"):  # fails: survives full or label randomisation
        cascade = rows[rows["model"] != "random_labels"]
        final = rows[(rows["step"] == cascade["step"].max()) | (rows["model"] == "random_labels")]
        assert verdict[method] == ("fails" if final["survives"].any() else "passes"), method
    summary = s07_attribution.summary_table(result)
    assert list(summary.index[:1]) and set(summary.index) == set(METHODS + FILLS)


def test_the_model_truth_is_measured_and_scores_every_method_for_faithfulness(attributed):
    profile, result = attributed
    layout = RunLayout(profile.run_path)
    truth = pd.read_csv(layout.model_truth, dtype={"subject_id": str})
    assert list(truth.columns) == s07_model_truth.COLUMNS
    ages = result.table.drop_duplicates("subject_id")["age_months"]
    assert sorted(truth["age_months"].unique()) == [ages.min(), ages.max()]  # evenly over age
    lobes = list(LOBES.values())
    for sid, rows in truth.groupby("subject_id"):
        value = rows.set_index(["cue", "kind"])["value"]
        # 4 lobes × (4 kinds + 3 projections), all, rest
        assert len(value) == 4 * 7 + 2 and value.notna().all()
        lobar = sum(value[(lobe, "maturation")] for lobe in lobes)
        assert value[("non_lobar", "maturation")] == pytest.approx(
            value[("all", "maturation")] - lobar
        )
        # the chain rule's maturation is its content weight × the lobe's planted d HU / d age
        schedule = MaturationSchedule.from_dict(json.loads(layout.synthetic.schedule.read_text()))
        bio = json.loads(layout.synthetic.truth(sid).read_text())["biological_age_months"]
        span = schedule.mature_hu - schedule.unmyelinated_hu
        for lobe in lobes:
            slope = span * float(schedule.lobes[lobe].slope(bio))
            assert value[(lobe, "chain_maturation")] == pytest.approx(
                value[(lobe, "chain_content")] * slope
            )
            # saliency (Captum) projected on the lobe's signal map: the chain rule itself
            assert value[(lobe, "projection:saliency")] == pytest.approx(
                value[(lobe, "chain_maturation")], rel=1e-4, abs=1e-9
            )
    faithful = result.scores[result.scores["level"] == "faithfulness"]
    projections = [f"{m} (projection)" for m in ("saliency", "smoothgrad", "guided_backprop")]
    assert set(faithful["method"]) == set(METHODS + FILLS + projections)
    per_subject = faithful[faithful["metric"] == "subject_top_lobe"].set_index("method")
    assert (per_subject["chance"] == 0.25).all()
    assert per_subject["value"].isin([0.0, 0.5, 1.0]).all()  # two subjects
    table = faithfulness_table(result.scores)
    assert set(table.index) == set(METHODS + FILLS + projections)
    shares = s07_model_truth.model_vs_ideal(profile)
    lobar = shares[shares["lobe"] != "non_lobar"]
    assert lobar.groupby("group")["model_share"].sum().to_numpy() == pytest.approx(1.0)


def test_unoise_is_trained_to_its_validation_loss_with_the_chosen_noise(attributed):
    """Two candidates (the fixture's r 0.1 and 1.0) trained on fold 0's inner split, the one
    :func:`unoise.choose` picks used by every fold; each training's best epoch is its lowest
    validation loss (within the improvement that counts); the summary says whether it plateaued."""
    from ctbrainage.interpret import unoise
    from ctbrainage.steps import s07_unoise
    from ctbrainage.steps.s07_fold import SubjectInputs

    profile, result = attributed
    training = result.unoise
    assert list(training.columns) == s07_unoise.CURVE_COLUMNS
    noise = training[training["phase"] == "noise"]
    candidates = noise[noise["role"] == "candidate"]
    assert sorted(candidates["r"].unique()) == [0.1, 1.0]
    best = candidates[candidates["best"]]
    assert len(best) == 2 and best["chosen"].sum() == 1
    outcomes = [
        unoise.Training(None, unoise.NoiseRange(b.r, b.v_min, b.v_max),
                        [{"phase": "noise", "epoch": b.epoch, "val_mae_months": b.val_mae_months,
                          "mask_mean": b.mask_mean}], b.epoch, b.plateaued, b.clean_mae_months)
        for b in best.itertuples()
    ]  # fmt: skip
    chosen = unoise.choose(outcomes, profile.attribution.unoise.max_error_increase_months).noise
    assert best.loc[best["chosen"], "r"].item() == chosen.r
    folds = noise[noise["role"] == "fold"]
    assert sorted(folds["fold"].unique()) == list(range(profile.train.folds))
    assert (folds["r"] == chosen.r).all()
    for _, curve in noise.groupby(["role", "fold", "r"]):
        assert curve["best"].sum() == 1
        lowest, improvement = curve["val_loss"].min(), profile.attribution.unoise.min_improvement
        assert lowest <= curve.loc[curve["best"], "val_loss"].item() <= lowest * (1 + improvement)
        assert len(curve) <= profile.attribution.unoise.max_epochs
    # fold 0's own training repeats the chosen candidate's (same seed, same split)
    same = candidates[candidates["r"] == chosen.r].drop(columns=["role", "chosen"])
    mine = folds[folds["fold"] == 0].drop(columns=["role", "chosen"])
    assert same.reset_index(drop=True).equals(mine.reset_index(drop=True))
    summary = s07_attribution.summary_table(result, cost=False)
    plateaued = folds["plateaued"].all()
    cell = summary.loc["unoise", "sanity (ρ random / labels)"]
    assert cell.startswith("not converged") != plateaued
    # the inner split: disjoint, a fifth of the fold's training subjects, spread over age
    data = SubjectInputs(profile, pd.read_csv(RunLayout(profile.run_path).lobe_levels,
                                              dtype={"subject_id": str}))  # fmt: skip
    train, val = s07_unoise.inner_split(profile, 0, data)
    assert len(val.x) == max(1, round(0.2 * (len(train.x) + len(val.x))))
    assert not any(torch.equal(v, t) for v in val.x for t in train.x)


def test_a_rerun_computes_nothing_and_a_changed_setting_is_not_reused(attributed, tmp_path):
    profile, result = attributed
    layout = RunLayout(profile.run_path)
    assert s07_attribution.is_fresh(profile)
    stamps = {p: p.stat().st_mtime_ns for p in s07_attribution.outputs(profile)}
    s07_attribution.run(profile, progress=False)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # a copy computed from nothing gives the same numbers (seeded), a changed setting new ones
    copy = tmp_path / "run"
    shutil.copytree(profile.run_path, copy)
    for path in [RunLayout(copy).attribution_part(k) for k in range(2)]:
        path.unlink()
    for path in RunLayout(copy).records_dir.glob("07_attribution*.json"):
        if "model_truth" not in path.name:  # (the model truth's folds: kept, they cost most)
            path.unlink()  # the step's records: nothing else of it is known
    again = dataclasses.replace(profile, run_dir=str(copy))
    assert not s07_attribution.is_fresh(again)
    rerun = s07_attribution.run(again, progress=False)
    assert RunLayout(copy).attribution.read_bytes() == layout.attribution.read_bytes()
    fewer = dataclasses.replace(  # (integrated gradients only: the one that reads ig_steps)
        again,
        attribution=dataclasses.replace(
            again.attribution, ig_steps=3, methods=("integrated_gradients",)
        ),
    )
    assert not s07_attribution.is_fresh(fewer)
    changed = s07_attribution.run(fewer, progress=False).table
    ig = lambda t: t[t["method"] == "integrated_gradients"]["importance"].to_numpy()  # noqa: E731
    assert not np.allclose(ig(changed), ig(rerun.table))


def test_an_unreadable_subject_is_excluded_and_the_others_go_on(attributed, tmp_path):
    profile, _ = attributed
    copy = tmp_path / "run"
    shutil.copytree(profile.run_path, copy)
    layout = RunLayout(copy)
    layout.brain("syn0003").write_bytes(b"not a nifti file")
    broken = dataclasses.replace(  # (one method: what is tested is who is attributed)
        profile,
        run_dir=str(copy),
        attribution=dataclasses.replace(profile.attribution, methods=("saliency",)),
    )
    result = s07_attribution.run(broken, progress=False)
    assert list(result.excluded["subject_id"]) == ["syn0003"]
    assert "syn0003" in result.excluded["reason"].iloc[0]
    assert "brain mask" in result.excluded["reason"].iloc[0]
    kept = result.table[result.table["method"] == "saliency"]["subject_id"].nunique()
    assert kept == 11
