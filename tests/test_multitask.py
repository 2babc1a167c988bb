"""Step 11's parts: the input channels, the multi-task network, delayed subjects, the step."""

import shutil

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
from scipy import stats

from ctbrainage.core.config import load_profile
from ctbrainage.core.layout import RunLayout
from ctbrainage.imaging import channels
from ctbrainage.imaging.channels import Contrast
from ctbrainage.learn import train
from ctbrainage.learn.multitask import SEGMENT_CLASSES, MultiTaskNet, MultiTaskRegressor
from ctbrainage.stats import multitask as mt
from ctbrainage.steps import s11_inputs, s11_multitask


def _phantom(offset_hu: float = 0.0):
    """A 40³ mm brain (1 mm voxels): grey-matter shell 36 HU around white matter 22 HU, with a
    CSF rim of 5 HU outside; ``offset_hu`` added everywhere (a scanner's calibration)."""
    grid = np.indices((40, 40, 40)) - 19.5
    radius = np.sqrt((grid**2).sum(0))
    brain = radius < 15
    hu = np.where(brain, np.where(radius < 10, 22.0, 36.0), 5.0) + offset_hu
    return hu.astype(np.float32), brain


def test_windows_map_their_limits_to_0_and_1_and_clip():
    hu = np.array([-20.0, 0.0, 40.0, 80.0, 200.0, 15.0, 23.5, 32.0, 40.0])
    np.testing.assert_allclose(channels.window(hu[:5], (0.0, 80.0)), [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(channels.window(hu[5:], (15.0, 32.0)), [0, 0.5, 1, 1])
    with pytest.raises(ValueError, match="low < high"):
        channels.window(hu, (32.0, 15.0))


def test_every_channel_on_a_phantom_with_known_hu():
    hu, brain = _phantom()
    grey = channels.grey_matter_hu(hu, brain, 1.0)
    assert grey == pytest.approx(36.0)  # the ribbon 1-4 mm inside the surface is grey matter
    made = channels.hu_channels(hu, brain, grey, Contrast(gm_scale_hu=10.0))
    white = (slice(18, 22),) * 3
    np.testing.assert_allclose(made["brain"][white], 22.0 / 80.0, rtol=1e-6)
    np.testing.assert_allclose(made["myelin"][white], (22.0 - 15.0) / 17.0, rtol=1e-6)
    np.testing.assert_allclose(made["gmref"][white], (22.0 - 36.0) / 10.0, rtol=1e-6)
    for image in made.values():
        assert not image[~brain].any()  # 0 outside the brain


def test_the_grey_matter_reference_cancels_a_constant_offset():
    (hu, brain), (shifted, _) = _phantom(), _phantom(offset_hu=3.0)
    contrast = Contrast()
    plain = channels.hu_channels(hu, brain, channels.grey_matter_hu(hu, brain, 1.0), contrast)
    site_b = channels.hu_channels(
        shifted, brain, channels.grey_matter_hu(shifted, brain, 1.0), contrast
    )
    np.testing.assert_allclose(site_b["gmref"], plain["gmref"], atol=1e-6)
    assert not np.allclose(site_b["myelin"], plain["myelin"])  # an absolute window moves


def test_slopes_are_the_channels_derivatives_where_they_do_not_clip():
    hu, brain = _phantom()
    contrast = Contrast()
    grey = channels.grey_matter_hu(hu, brain, 1.0)
    step = 0.01
    before = channels.hu_channels(hu, brain, grey, contrast)
    after = channels.hu_channels(hu + step, brain, grey, contrast)
    found = channels.slopes(hu, brain, (0.0, 40.0), contrast)
    for name in ("brain", "myelin", "gmref"):
        np.testing.assert_allclose((after[name] - before[name]) / step, found[name], atol=1e-3)
    assert found["myelin"][brain].min() == 0.0  # grey matter (36 HU) is above the window
    np.testing.assert_allclose(found["ptile"][brain], 1 / 40.0)


def test_scan_on_grid_samples_hu_and_keeps_the_skull_out_of_the_brain():
    hu, brain = _phantom()
    hu[~brain & (np.sqrt(((np.indices(hu.shape) - 19.5) ** 2).sum(0)) > 17)] = 1000.0  # skull
    native = sitk.GetImageFromArray(hu)
    mask = sitk.GetImageFromArray(brain.astype(np.uint8))
    grid = sitk.Image([10, 10, 10], sitk.sitkUInt8)
    grid.SetSpacing([4.0] * 3)
    grid.SetOrigin([1.5] * 3)
    sampled, grey = channels.scan_on_grid(native, grid, mask)
    assert grey == pytest.approx(36.0)
    assert sampled.max() <= 36.0 + 1e-3  # brain and CSF only: no bone bled in
    assert sampled[5, 5, 5] == pytest.approx(22.0, abs=0.5)


@pytest.mark.parametrize("bad", ["t1w", "brain+brain", "myelin+"])
def test_a_condition_names_known_channels_once(bad):
    with pytest.raises(ValueError, match="channels are ptile, brain, myelin, gmref"):
        channels.parse_condition(bad)
    assert channels.parse_condition("ptile+gmref") == ("ptile", "gmref")


# ---- the network ---------------------------------------------------------------------------------
@pytest.mark.parametrize("multiscale", [True, False])
def test_the_heads_output_shapes(multiscale):
    net = MultiTaskNet(2, width=4, levels=3, segment_classes=5, reconstruct=True,
                       multiscale=multiscale)  # fmt: skip
    out = net.heads(torch.zeros(3, 2, 16, 16, 16))
    assert out["age"].shape == (3, 1)
    assert out["segment"].shape == (3, 5, 16, 16, 16)
    assert out["reconstruct"].shape == (3, 2, 16, 16, 16)
    assert net(torch.zeros(3, 2, 16, 16, 16)).shape == (3, 1)  # forward: the age alone
    pooled = net.age[0].in_features
    assert pooled == (4 + 8 + 16 if multiscale else 16)  # every level's channels, or the deepest


def test_without_labels_there_is_no_segmentation_head():
    net = MultiTaskNet(1, width=4, levels=2, segment_classes=0, reconstruct=True)
    assert net.segment is None and set(net.heads(torch.zeros(1, 1, 8, 8, 8))) == {
        "age",
        "reconstruct",
    }
    every = ["age", "age+segment", "age+reconstruct", "age+segment+reconstruct"]
    real = load_profile("tiny", {"data": "cohort.csv", "multitask.ablation": every})
    units = s11_multitask.units(real)
    assert {u.target for u in units} == {"chronological"}  # no biological age without a truth
    assert not any("segment" in u.heads for u in units)  # no white-matter labels
    assert {u.heads for u in units} == {"age", "age+reconstruct"}


def _toy_cohort(n=12, edge=16, seed=0):
    """Volumes whose white-matter core brightens with age; labels = the core."""
    rng = np.random.default_rng(seed)
    ages = rng.uniform(0, 48, n)
    grid = np.sqrt(((np.indices((edge,) * 3) - (edge - 1) / 2) ** 2).sum(0))
    core = grid < edge / 4
    x = rng.normal(0.5, 0.05, (n, 1, edge, edge, edge)).astype(np.float32)
    x[:, 0][:, core] += (ages[:, None] / 48.0).astype(np.float32)
    labels = np.broadcast_to(core.astype(np.uint8), (n, edge, edge, edge)).copy()
    folds = pd.DataFrame({"subject_id": [f"s{i}" for i in range(n)], "age_months": ages,
                          "fold": np.arange(n) % 2})  # fmt: skip
    return folds, x, labels


def test_the_multi_task_loss_falls_on_a_tiny_cohort(tmp_path):
    folds, x, labels = _toy_cohort()
    rows = {sid: i for i, sid in enumerate(folds["subject_id"])}
    profile = load_profile("tiny", {"train.epochs": 8, "train.lr": 0.01,
                                    "preprocess.size": 16})  # fmt: skip

    def module():  # built after fit_fold seeds: the same weights every time
        net = MultiTaskNet(1, width=4, levels=2, segment_classes=SEGMENT_CLASSES, reconstruct=True)
        return MultiTaskRegressor(profile, net, 1.0, 1.0)

    fitted = train.fit_fold(
        profile, folds, 0, lambda ids: x[[rows[s] for s in ids]], tmp_path, "toy", progress=False,
        module=module,
        labels=lambda ids: labels[[rows[s] for s in ids]],
    )  # fmt: skip
    log = pd.read_csv(tmp_path / "toy" / "version_0" / "metrics.csv")
    epochs = log.dropna(subset=["train_loss"])
    for name in ("train_loss", "train_segment_loss", "train_reconstruct_loss"):
        assert epochs[name].iloc[-1] < 0.8 * epochs[name].iloc[0], name
    assert len(fitted.predictions) == 6


# ---- statistics -------------------------------------------------------------------------------
def test_the_paired_comparison_is_scipys_paired_t_and_mann_whitney():
    rng = np.random.default_rng(3)
    reference = rng.normal(5, 1, 10)
    other = reference - 0.6 + rng.normal(0, 0.3, 10)
    found = mt.paired_comparison(reference, other)
    t = stats.ttest_rel(other, reference)
    assert found["t"] == pytest.approx(t.statistic) and found["p"] == pytest.approx(t.pvalue)
    low, high = t.confidence_interval()
    assert (found["ci_low"], found["ci_high"]) == (pytest.approx(low, abs=0.006),
                                                   pytest.approx(high, abs=0.006))  # fmt: skip
    assert found["difference"] == pytest.approx(np.mean(other - reference))
    assert found["cohen_d"] < 0  # signed: the other condition's values are lower
    u = stats.mannwhitneyu(other, reference)
    assert found["mannwhitney_p"] == pytest.approx(u.pvalue)


def test_the_anova_is_scipys_one_way_anova():
    rng = np.random.default_rng(4)
    groups = {"a": rng.normal(0, 1, 5), "b": rng.normal(1, 1, 5), "c": rng.normal(2, 1, 5)}
    table = pd.DataFrame([{"condition": g, "mae": v} for g, vs in groups.items() for v in vs])
    found = mt.anova(table, "condition", "mae")
    expected = stats.f_oneway(*groups.values())
    assert found["F"] == pytest.approx(expected.statistic)
    assert found["p"] == pytest.approx(expected.pvalue)


def test_fold_metrics_against_both_ages():
    table = pd.DataFrame({"condition": "x", "fold": [0, 0, 0, 1, 1, 1],
                          "age_months": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                          "biological_age_months": [2.0, 2.0, 2.0, 5.0, 5.0, 5.0],
                          "predicted_months": [1.5, 2.0, 4.0, 4.0, 5.0, 9.0]})  # fmt: skip
    found = mt.fold_metrics(table, "age_months", ["condition", "fold"]).set_index("fold")
    assert found.loc[0, "mae"] == pytest.approx(0.5)
    assert found.loc[1, "rmse"] == pytest.approx(np.sqrt(3.0))
    assert found.loc[0, "mae_vs_biological_age"] == pytest.approx((0.5 + 0 + 2) / 3)
    assert found.loc[1, "rho"] == pytest.approx(1.0)


def test_delayed_children_come_with_on_time_twins():
    profile = load_profile("tiny", {"multitask.delays_months": [6.0, 40.0]})
    table = s11_inputs.delayed_subjects(profile)
    assert len(table) == 2 * 2 * 2  # delays × lobes, each with its twin
    delayed = table[table["planted_delay_months"] > 0]
    twins = table[table["planted_delay_months"] == 0].set_index("twin")
    assert (twins.loc[delayed["subject_id"], "age_months"].to_numpy()
            == delayed["age_months"].to_numpy()).all()  # fmt: skip
    assert (twins.loc[delayed["subject_id"], "seed"].to_numpy() == delayed["seed"].to_numpy()).all()
    # the earlier age stays >= 6 months where the age range allows it, else within the range
    assert (delayed["age_months"] - delayed["planted_delay_months"]).iloc[:2].min() >= 6.0
    assert (delayed["age_months"] < 48.0).all()


# ---- the step on the tiny run ------------------------------------------------------------------
@pytest.fixture(scope="module")
def multitask_run(tiny_run, tmp_path_factory):
    """The tiny run copied, step 11 run on it (tiny.yaml's test-scale grid)."""
    root = tmp_path_factory.mktemp("multitask") / "run"
    shutil.copytree(tiny_run.run_path, root)
    profile = load_profile("tiny", {"run_dir": str(root)})
    return profile, s11_multitask.run(profile, progress=False)


def test_every_training_keeps_its_predictions_and_the_tables_agree(multitask_run):
    profile, result = multitask_run
    units = s11_multitask.units(profile)
    config = profile.multitask
    assert len(result.conditions) == len(config.conditions) * 2 * profile.train.folds
    layout = RunLayout(profile.run_path)
    unit = next(u for u in units if u.target == "biological" and u.fold == 1)
    test = pd.read_csv(layout.multitask_unit(unit.name, "test"), dtype={"subject_id": str})
    row = result.conditions.set_index(["condition", "target", "fold"]).loc[
        (unit.condition, "biological", 1)
    ]
    mae = np.abs(test["predicted_months"] - test["biological_age_months"]).mean()
    assert row["mae"] == pytest.approx(mae)
    assert row["mae_vs_age"] == pytest.approx(
        np.abs(test["predicted_months"] - test["age_months"]).mean()
    )
    assert set(result.ablation["heads"]) == set(config.ablation)
    assert set(result.site["training"]) == {"site A only", "cross-validation"}
    out_of_site = next(u for u in units if u.fold == s11_multitask.OUT_OF_SITE)
    tested = pd.read_csv(layout.multitask_unit(out_of_site.name, "test"))
    assert set(tested["site"]) == {"B"}  # trained on site A, tested on site B only


def test_a_delayed_childs_gap_is_its_prediction_minus_its_age_beside_its_twins(multitask_run):
    profile, result = multitask_run
    delayed = result.delayed
    assert list(delayed.columns[:4]) == ["subject_id", "planted_delay_months", "lobe", "gap_months"]
    one = delayed.iloc[0]
    np.testing.assert_allclose(one["gap_months"], one["predicted_months"] - one["age_months"])
    np.testing.assert_allclose(one["gap_vs_twin_months"],
                               one["gap_months"] - one["twin_gap_months"])  # fmt: skip
    layout = RunLayout(profile.run_path)
    model = (one.condition, one.target, one.heads)
    units = [
        u for u in s11_multitask.units(profile)
        if u.fold >= 0 and (u.condition, u.target, u.heads) == model
    ]  # fmt: skip
    predicted = [
        pd.read_csv(layout.multitask_unit(u.name, "delayed")).set_index("subject_id").loc[
            one.subject_id, "predicted_months"]
        for u in units
    ]  # fmt: skip
    assert one["predicted_months"] == pytest.approx(np.mean(predicted))
    assert set(delayed["lobe"]) == {"all", "frontal"}


def test_grad_cam_is_scored_against_both_truths(multitask_run):
    profile, result = multitask_run
    scored = result.gradcam.set_index(["condition", "target"])
    assert len(scored) == len(profile.multitask.conditions) * 2
    assert scored["faithfulness"].notna().all() and scored["correctness"].notna().all()
    layout = RunLayout(profile.run_path)
    condition = profile.multitask.conditions[-1]  # two channels: Grad-CAM on a layer
    units = [u for u in s11_multitask.units(profile) if u.fold >= 0 and u.heads == "age"
             and (u.condition, u.target) == (condition, "biological")]  # fmt: skip
    rows = pd.concat([pd.read_csv(layout.multitask_unit(u.name, "lobe_shares")) for u in units])
    expected = rows.groupby("lobe")["importance"].mean()
    found = scored.loc[(condition, "biological")]
    for lobe, share in expected.items():
        assert found[f"share_{lobe}"] == pytest.approx(share)
    assert 0 < expected.sum() < 1  # the rest of |map| lies outside the four lobes


def test_adding_a_condition_trains_only_its_units(multitask_run):
    profile, _ = multitask_run
    assert s11_multitask.is_fresh(profile)
    conditions = [*profile.multitask.conditions, "brain"]
    more = load_profile(
        "tiny", {"run_dir": str(profile.run_path), "multitask.conditions": conditions}
    )
    assert not s11_multitask.is_fresh(more)
    stale = s11_multitask._stale(more, s11_multitask.subjects(more))
    assert {s.unit.condition for s in stale} == {"brain"}
    assert len(stale) == 2 * more.train.folds + 1  # both targets, every fold; out of site


def test_a_wrong_condition_or_head_is_refused_with_its_name():
    with pytest.raises(ValueError, match="condition 't2w'"):
        s11_multitask._check(load_profile("tiny", {"multitask.conditions": ["t2w"]}))
    with pytest.raises(ValueError, match="multitask.ablation: 'age\\+depth'"):
        s11_multitask._check(load_profile("tiny", {"multitask.ablation": ["age+depth"]}))
    with pytest.raises(ValueError, match="multitask.delay_lobes"):
        s11_multitask._check(load_profile("tiny", {"multitask.delay_lobes": ["insula"]}))


def test_grad_cam_takes_several_input_channels_and_the_gradients_refuse_them():
    from ctbrainage.interpret import attribution

    net = MultiTaskNet(3, width=4, levels=2).eval()
    x = torch.rand(2, 3, 8, 8, 8)
    assert attribution.voxel_map(net, x, "gradcam").shape == (2, 8, 8, 8)
    with pytest.raises(ValueError, match=r"inputs must be \[batch, 1, X, Y, Z\]"):
        attribution.voxel_map(net, x, "saliency")


def test_a_later_repeat_draws_its_own_stratified_folds_and_out_of_site_tests_site_b():
    profile = load_profile("tiny", {"train.folds": 3})
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"subject_id": [f"s{i}" for i in range(30)],
                          "age_months": rng.uniform(0, 48, 30), "fold": np.arange(30) % 3,
                          "site": ["A", "B"] * 15})  # fmt: skip
    table["biological_age_months"] = table["age_months"] + 1.0

    def folds(**unit):
        fields = {"condition": "ptile", "target": "chronological", "heads": "age"} | unit
        return s11_multitask.unit_folds(profile, s11_multitask.Unit(**fields), table)

    first, later = folds(repeat=0, fold=0), folds(repeat=1, fold=0)
    np.testing.assert_array_equal(first["fold"], table["fold"])  # repeat 0: step 03's folds
    assert not np.array_equal(later["fold"], table["fold"])
    np.testing.assert_array_equal(later["fold"], folds(repeat=1, fold=2)["fold"])  # per repeat
    assert sorted(np.bincount(later["fold"])) == [10, 10, 10]
    by_third = pd.cut(table["age_months"], [0, 16, 32, 48]).cat.codes  # age-stratified
    assert (pd.crosstab(by_third, later["fold"]).max(axis=1)
            - pd.crosstab(by_third, later["fold"]).min(axis=1)).max() <= 1  # fmt: skip
    site = folds(repeat=0, fold=s11_multitask.OUT_OF_SITE)
    assert set(table.loc[site["fold"] == 1, "site"]) == {"B"}
    bio = folds(repeat=0, fold=0, target="biological")
    np.testing.assert_allclose(bio["age_months"], table["biological_age_months"])
