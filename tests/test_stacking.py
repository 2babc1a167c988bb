"""Step 08: VGG8 and SFCN in the factory, the synthesised channel, cross-fitted stacking that is
exactly a statsmodels OLS, and a synthesis U-Net that never sees its test fold."""

import dataclasses
import shutil

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import torch

from ctbrainage.core.config import ModelConfig, load_profile
from ctbrainage.core.layout import RunLayout
from ctbrainage.interpret import attribution
from ctbrainage.learn import maturity_net
from ctbrainage.learn.networks import build_model, count_parameters
from ctbrainage.stats import stacking
from ctbrainage.steps import s08_stacking


# ---- the factory ---------------------------------------------------------------------------------
def _conv_bn(c_in: int, c_out: int, k: int = 3) -> int:
    return c_in * c_out * k**3 + c_out + 2 * c_out  # weights, bias, batch-norm scale and shift


def test_vgg8_is_the_papers_five_blocks_and_three_dense_layers():
    model = build_model(load_profile("paper").stacking.model, size=128)
    shapes, hooks = [], []
    for block in model.features:
        assert [type(m).__name__ for m in block] == ["Conv3d", "BatchNorm3d", "ReLU", "MaxPool3d"]
        hooks.append(block.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape))))
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 1, 128, 128, 128))
    assert out.shape == (1, 1)
    channels = [16, 32, 64, 128, 256]
    assert shapes == [(1, c, *[128 // 2 ** (i + 1)] * 3) for i, c in enumerate(channels)]
    dense = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in dense] == [
        (256 * 4**3, 512), (512, 128), (128, 1)
    ]  # fmt: skip
    convs = sum(_conv_bn(a, b) for a, b in zip([1, *channels], channels, strict=False))
    linear = 256 * 4**3 * 512 + 512 + 512 * 128 + 128 + 128 + 1
    assert count_parameters(model) == convs + linear == 9_631_873


def test_vgg8_needs_an_input_size_that_halves_five_times():
    with pytest.raises(ValueError, match="needs the input size"):
        build_model(ModelConfig(arch="vgg8", width=16))
    with pytest.raises(ValueError, match="multiple of 32"):
        build_model(ModelConfig(arch="sfcn", width=32), size=48)


@pytest.mark.parametrize("size", [64, 128])  # the demo's and the paper's model grid
def test_sfcn_maps_a_volume_of_the_demo_and_paper_sizes_to_one_age(size):
    model = build_model(ModelConfig(arch="sfcn", width=32), size=size).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 1, size, size, size, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (1, 1) and torch.isfinite(out).all()
    # Peng et al. 2021: ~3 M parameters (here one output instead of 40 age bins)
    blocks = [1, 32, 64, 128, 256, 256]
    expected = sum(_conv_bn(a, b) for a, b in zip(blocks, blocks[1:], strict=False))
    expected += _conv_bn(256, 64, k=1) + 64 + 1
    assert count_parameters(model) == expected == 2_950_401
    assert model.gradcam_layer is model.features[-1]


def test_a_section_with_its_own_model_keeps_its_defaults_under_overrides():
    profile = load_profile("demo", {"stacking.model.width": 8})
    assert profile.stacking.model == ModelConfig(arch="vgg8", width=8)
    assert profile.model.arch == "resnet10"


# ---- stacking = statsmodels OLS ------------------------------------------------------------------
@pytest.fixture
def design():
    rng = np.random.default_rng(3)
    n = 60
    age = rng.uniform(0, 48, n)
    table = pd.DataFrame(
        {
            "subject_id": [f"s{i}" for i in range(n)],
            "fold": np.arange(n) % 5,
            "age_months": age,
            "T": age + rng.normal(0, 4, n),
            "A": 0.8 * age + 5 + rng.normal(0, 6, n),
            "T2": age + rng.normal(0, 4, n),
            "sex": rng.choice(["F", "M"], n),
        }
    )
    return stacking.stacking_design(table)


def _ols(rows: pd.DataFrame, features):
    return sm.OLS(rows["age_months"].to_numpy(), sm.add_constant(rows[list(features)].to_numpy()))


def test_cross_fitted_stacking_is_an_ols_fit_on_the_other_folds(design):
    stacked = stacking.stack_out_of_fold(design)
    for name, features in stacking.STACKED_MODELS.items():
        for fold in range(5):
            test = design["fold"] == fold
            fit = _ols(design[~test], features).fit()
            expected = sm.add_constant(design.loc[test, list(features)].to_numpy()) @ fit.params
            np.testing.assert_allclose(stacked.loc[test, name], expected, rtol=1e-10)


def test_coefficients_and_nested_f_tests_match_statsmodels_and_their_definition(design):
    coefficients = stacking.stacking_coefficients(design).set_index(["model", "term"])
    fits = {m: _ols(design, f).fit() for m, f in stacking.STACKED_MODELS.items()}
    tas = coefficients.loc["TAS"]
    np.testing.assert_allclose(tas["coef"], fits["TAS"].params, rtol=1e-10)
    np.testing.assert_allclose(tas["p"], fits["TAS"].pvalues, rtol=1e-8)
    assert list(tas.index) == ["Intercept", "T", "A", "male"]
    anova = stacking.stacking_anova(design).set_index("comparison")
    for small, large in stacking.NESTED_PAIRS:
        s, big = fits[small], fits[large]
        df = s.df_resid - big.df_resid
        f = ((s.ssr - big.ssr) / df) / (big.ssr / big.df_resid)
        row = anova.loc[f"{small} vs {large}"]
        assert row["df_diff"] == df
        np.testing.assert_allclose(row["f"], f, rtol=1e-10)
    table = stacking.stacking_table(design, stacking.stack_out_of_fold(design)).set_index("model")
    np.testing.assert_allclose(
        table.loc["TA", "mae_in_sample"],
        np.mean(np.abs(fits["TA"].fittedvalues - design["age_months"])),
    )
    assert table.loc["T encoder", "mae"] == pytest.approx(
        np.mean(np.abs(design["T"] - design["age_months"]))
    )


def test_stacking_with_sex_refuses_a_subject_without_it(design):
    with pytest.raises(ValueError, match="F or M"):
        stacking.stacking_design(design.assign(sex=["F"] * 59 + [""]))


# ---- Grad-CAM sets and the synthesis helpers -----------------------------------------------------
def test_top_sets_hold_exactly_their_share_of_the_brain_and_jaccard_counts_overlap():
    brain = torch.zeros(1, 4, 5, 5, dtype=torch.bool)
    brain[:, :2] = True  # 50 voxels
    maps = torch.arange(100, dtype=torch.float32).view(1, 4, 5, 5)
    top = attribution.top_set(maps, brain, 0.2)
    assert top.sum() == 10 and (top & ~brain).sum() == 0
    assert top[0, 1].flatten()[-10:].all()  # the highest values inside the brain
    other = attribution.top_set(-maps, brain, 0.2)
    assert attribution.jaccard(top, other)[0] == 0
    assert attribution.jaccard(top, top)[0] == 1


def test_the_encoder_grid_averages_blocks_and_overlapping_windows():
    volume = np.arange(64, dtype=np.float32).reshape(1, 1, 4, 4, 4)
    out = maturity_net.to_grid(volume, 2)  # an integer ratio: block means
    blocks = volume.reshape(1, 1, 2, 2, 2, 2, 2, 2).mean(axis=(3, 5, 7))
    np.testing.assert_allclose(out, blocks)
    assert maturity_net.to_grid(volume, 4) is volume
    # 6 -> 4 voxels (the demo's 48 -> 32): output voxel i averages input voxels
    # floor(1.5 i) .. ceil(1.5 (i + 1)) - 1, i.e. (0, 1), (1, 2), (3, 4), (4, 5) per axis
    ramp = np.broadcast_to(np.arange(6, dtype=np.float32)[:, None, None], (6, 6, 6))
    out = maturity_net.to_grid(np.ascontiguousarray(ramp)[None, None], 4)
    np.testing.assert_allclose(out[0, 0, :, 0, 0], [0.5, 1.5, 3.5, 4.5])
    np.testing.assert_array_equal(maturity_net.nearest_index(6, 4), [0, 2, 3, 5])
    np.testing.assert_array_equal(maturity_net.nearest_index(64, 32), np.arange(32) * 2 + 1)
    with pytest.raises(ValueError, match="onto a 8\\^3 grid"):
        maturity_net.to_grid(volume, 8)


# ---- the step on the tiny run --------------------------------------------------------------------
@pytest.fixture(scope="module")
def stacked_run(tiny_run, tmp_path_factory):
    """Step 08 on a copy of the tiny run with two seeds of T and A, with the training calls of
    the U-Net recorded."""
    root = tmp_path_factory.mktemp("stacking") / "run"
    shutil.copytree(tiny_run.run_path, root)
    two = dataclasses.replace(tiny_run.stacking, seeds=2)
    profile = dataclasses.replace(tiny_run, run_dir=str(root), stacking=two)
    seen = []
    original = maturity_net.train_unet
    with pytest.MonkeyPatch.context() as patch:

        def spy(volumes, *args, **kwargs):
            seen.append(volumes.copy())
            return original(volumes, *args, **kwargs)

        patch.setattr(maturity_net, "train_unet", spy)
        result = s08_stacking.run(profile, progress=False)
    return profile, result, seen


def test_the_synthesis_unet_never_sees_a_subject_of_its_test_fold(stacked_run):
    profile, result, seen = stacked_run
    layout = RunLayout(profile.run_path)
    folds = pd.read_csv(layout.folds, dtype={"subject_id": str})
    assert len(seen) == profile.train.folds
    inputs = s08_stacking._Data(profile, folds, progress=False)
    for fold, volumes in enumerate(seen):
        rows = inputs.ct[inputs.rows(folds["subject_id"])]
        used = [any(np.array_equal(v, r) for v in volumes) for r in rows]
        assert used == list(folds["fold"] != fold)  # every training subject, no test subject


def test_the_step_writes_every_table_and_stacks_its_own_out_of_fold_predictions(stacked_run):
    profile, result, _ = stacked_run
    n = len(result.predictions)
    assert n == 12 and set(result.predictions["fold"]) == {0, 1}
    assert list(result.table["model"]) == [
        "T encoder", "A encoder", "T2 encoder", "T", "A", "TA", "TAS", "TT2"
    ]  # fmt: skip
    assert list(result.anova["comparison"]) == ["T vs TA", "A vs TA", "TA vs TAS", "T vs TT2"]
    design = stacking.stacking_design(result.predictions)
    restacked = stacking.stack_out_of_fold(design)
    np.testing.assert_allclose(result.predictions["stacked_TA"], restacked["TA"], rtol=1e-9)
    assert result.sex_coefficient()["term"] == "male"
    assert result.synthesis["n"].sum() == n
    assert result.synthesis[["mae", "ssim"]].notna().all().all()
    layout = RunLayout(profile.run_path)
    for row in result.encoders.itertuples():  # the epochs the table reports are the logged ones
        log = layout.logs_dir / layout.stacking_log_name(row.encoder, row.fold) / "version_0"
        curve = pd.read_csv(log / "metrics.csv").dropna(subset=["val_loss"])
        assert row.epochs_run == len(curve)
        assert row.best_epoch == curve.loc[curve["val_loss"].idxmin(), "epoch"]
    overall = result.gradcam.set_index("age_group").loc["all"]
    per_subject = pd.concat(  # each test subject's overlap of T's and A's top sets
        pd.read_csv(layout.stacking_fold(k, "subjects")) for k in range(profile.train.folds)
    )
    assert overall["n"] == n == len(per_subject)
    assert overall["gradcam_jaccard"] == pytest.approx(per_subject["gradcam_jaccard"].mean())
    top = profile.stacking.gradcam_top  # two random sets of that share overlap by s²/(2s - s²)
    assert overall["jaccard_if_random"] == pytest.approx(top**2 / (2 * top - top**2))
    shares = [c for c in result.gradcam if c.startswith("gradcam_T_")]
    assert overall[shares].sum() <= 1 + 1e-9
    assert {"synthesised/0-11", "gradcam_A/36-47"} <= set(result.maps)
    assert all(layout.synthesised(s).exists() for s in result.predictions["subject_id"])


def test_the_gain_is_measured_once_per_seed_of_t_and_a(stacked_run):
    profile, result, _ = stacked_run
    assert list(result.seeds["seed"]) == [0, 1] and list(result.seeds["other_T"]) == ["T@1", "T"]
    table = result.table.set_index("model")["mae"]
    first = result.seeds.iloc[0]  # seed 0 is the step's own T and A
    assert first["gain_TA"] == pytest.approx(table["T"] - table["TA"])
    design = stacking.stacking_design(result.predictions)
    second = design.assign(T=design["T@1"], A=design["A@1"], T2=design["T"])
    again = stacking.stack_out_of_fold(second, {"T": ("T",), "TA": ("T", "A")})
    mae = lambda c: (again[c] - design["age_months"]).abs().mean()  # noqa: E731
    assert result.seeds.iloc[1]["gain_TA"] == pytest.approx(mae("T") - mae("TA"))
    summary = result.gain_summary().set_index("gain")
    values = result.seeds["gain_TA"]
    assert summary.loc["TA", "mean_months"] == pytest.approx(values.mean())
    half = 12.706 * values.std(ddof=1) / np.sqrt(2)  # t(0.975, 1 df)
    assert summary.loc["TA", "ci_high"] == pytest.approx(values.mean() + half, rel=1e-3)
    assert not (result.predictions["T@1"] == result.predictions["T"]).all()  # another seed


def test_the_planted_maturity_grows_with_age_inside_the_brain(stacked_run):
    profile, result, _ = stacked_run
    folds = pd.read_csv(RunLayout(profile.run_path).folds, dtype={"subject_id": str})
    data = s08_stacking._Data(profile, folds, progress=False)
    assert data.target.min() >= 0 and data.target.max() <= 1
    assert (data.target * (1 - data.brain)).max() == 0
    mean = data.target.sum((1, 2, 3, 4)) / data.brain.sum((1, 2, 3, 4))
    assert np.corrcoef(mean, folds["age_months"])[0, 1] > 0.8


def test_a_finished_step_is_fresh_and_a_changed_setting_is_not(stacked_run):
    profile, _, _ = stacked_run
    assert s08_stacking.is_fresh(profile)
    changed = dataclasses.replace(
        profile, stacking=dataclasses.replace(profile.stacking, gradcam_top=0.1)
    )
    assert not s08_stacking.is_fresh(changed)
    assert s08_stacking.is_fresh(profile, fold=0)


def test_a_real_cohort_is_refused_with_the_reason(tiny_run):
    with pytest.raises(ValueError, match="planted white-matter maturity"):
        s08_stacking.run(dataclasses.replace(tiny_run, data="cohort.csv"), progress=False)


def test_early_stopping_needs_an_inner_validation_split(tiny_run):
    from ctbrainage.learn import train

    profile = s08_stacking.encoder_profile(tiny_run)
    profile = dataclasses.replace(profile, train=dataclasses.replace(profile.train, val_fraction=0))
    folds = pd.DataFrame({"subject_id": ["a", "b"], "age_months": [1.0, 2.0], "fold": [0, 1]})
    with pytest.raises(ValueError, match="inner validation"):
        train.fit_fold(profile, folds, 0, lambda ids: None, log_dir=None, log_name="x", patience=2)


def test_early_stopping_keeps_the_weights_of_the_best_validation_epoch(tiny_run, tmp_path, capfd):
    from ctbrainage.learn import train
    from ctbrainage.learn.datasets import AgeScaler, load_volumes

    layout = RunLayout(tiny_run.run_path)
    profile = s08_stacking.encoder_profile(tiny_run)  # tiny: VGG8 width 4, 3 epochs, MAE loss
    folds = pd.read_csv(layout.folds, dtype={"subject_id": str})
    fitted = train.fit_fold(
        profile, folds, 0, lambda ids: load_volumes([layout.preprocessed(s) for s in ids]),
        log_dir=tmp_path, log_name="encoder", progress=False, patience=1,
    )  # fmt: skip
    messages = (tmp_path / "encoder" / train.MESSAGES).read_text()
    assert "GPU available" in messages and "GPU available" not in capfd.readouterr().err
    curve = pd.read_csv(tmp_path / "encoder" / "version_0" / "metrics.csv")
    curve = curve.dropna(subset=["val_loss"])
    scaler = AgeScaler(*profile.age_range_months)
    val = fitted.validation
    kept = np.mean(
        np.abs(scaler.to_unit(val["predicted_months"]) - scaler.to_unit(val["age_months"]))
    )
    assert kept == pytest.approx(curve["val_loss"].min(), rel=1e-4)
    assert fitted.best_epoch == curve.loc[curve["val_loss"].idxmin(), "epoch"]


def test_lightning_messages_go_to_the_file_only_inside_the_context(tmp_path, capfd):
    import logging
    import warnings

    from ctbrainage.learn.train import lightning_messages_to

    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    handlers = logging.getLogger("pytorch_lightning").handlers
    with lightning_messages_to(tmp_path / "fit.log"):
        logger.info("GPU available: False")
        warnings.warn("a library warning", UserWarning, stacklevel=1)
    text = (tmp_path / "fit.log").read_text()
    assert "GPU available: False" in text and "a library warning" in text
    assert "GPU available" not in capfd.readouterr().err
    assert logging.getLogger("pytorch_lightning").handlers == handlers
