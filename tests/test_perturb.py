"""Lobe-wise perturbation: fills, seeding, batching, the Captum cross-check, perturbation.csv."""

from __future__ import annotations

import dataclasses
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from captum.attr import FeatureAblation

from ctbrainage import ctio
from ctbrainage.cohort import age_group
from ctbrainage.config import ModelConfig, PerturbConfig
from ctbrainage.data import load_volumes
from ctbrainage.labels import LOBES
from ctbrainage.models import build_model
from ctbrainage.perturb import (
    COLUMNS,
    delta_ae,
    fill_baseline,
    noise_seed,
    perturb_cohort,
    perturb_subject,
    perturbation_path,
)
from ctbrainage.train import load_fold_model

SIZE = 32


def phantom(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A [1, 32, 32, 32] volume in [0, 1] inside a ball, and four lobes: the ball's quadrants."""
    rng = np.random.default_rng(seed)
    grid = np.indices((SIZE,) * 3) - (SIZE - 1) / 2
    ball = (grid**2).sum(0) < 13**2
    volume = np.where(ball, rng.uniform(0.2, 0.9, (SIZE,) * 3), 0).astype(np.float32)
    labels = np.where(ball, 1 + (grid[0] > 0) + 2 * (grid[1] > 0), 0).astype(np.uint8)
    return volume[None], labels


class Recorder(torch.nn.Module):
    """Keeps every input it sees; returns a fixed per-sample weighted mean."""

    def __init__(self):
        super().__init__()
        self.inputs: list[torch.Tensor] = []
        self.weight = torch.linspace(0, 1, SIZE**3)
        self.eval()

    def forward(self, x):
        self.inputs.append(x.clone())
        return (x.reshape(len(x), -1) * self.weight).mean(1, keepdim=True)


LEVELS = {k: 0.2 + 0.15 * k for k in LOBES}  # group_level targets, away from the lobes' means


def recorded_variants(fill: str, batch_size: int, lobes=tuple(LOBES), repeats: int = 2):
    volume, labels = phantom()
    model = Recorder()
    kwargs = {"subject_id": "s01", "seed": 42, "fill": fill, "repeats": repeats, "lobes": lobes}
    kwargs["levels"] = LEVELS
    result = perturb_subject(model, volume, labels, batch_size=batch_size, **kwargs)
    return volume, labels, torch.cat(model.inputs)[:, 0].numpy(), result


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return build_model(ModelConfig(arch="resnet10", width=8)).eval()


def test_noise_seed_depends_on_every_part_of_its_key():
    keys = {
        noise_seed(s, sid, lobe, r)
        for s in (1, 2)
        for sid in ("a", "b")
        for lobe in LOBES
        for r in range(3)
    }
    assert len(keys) == 2 * 2 * 4 * 3
    assert noise_seed(42, "a", 1, 0) == noise_seed(42, "a", 1, 0)
    assert all(0 <= k < 2**63 for k in keys)


@pytest.mark.parametrize("fill", ["noise", "zero", "mean", "group_level"])
def test_each_variant_changes_only_its_lobe(fill):
    volume, labels, inputs, _ = recorded_variants(fill, batch_size=4)
    assert len(inputs) == 1 + 4 * 2
    assert np.array_equal(inputs[0], volume[0])  # the whole volume comes first
    for i, (lobe, repeat) in enumerate((k, r) for k in LOBES for r in range(2)):
        variant, inside = inputs[1 + i], labels == lobe
        assert np.array_equal(variant[~inside], volume[0][~inside]), (lobe, repeat)
        values = variant[inside]
        if fill == "zero":
            assert not values.any()
        elif fill == "mean":
            assert np.allclose(values, volume[0][inside].mean(), atol=1e-6)
            assert np.ptp(values) == 0
        elif fill == "group_level":  # the lobe's own voxels, moved as one to the target level
            assert values.mean() == pytest.approx(LEVELS[lobe], abs=1e-5)
            shift = values - volume[0][inside]
            assert np.ptp(shift) < 1e-5 and abs(shift[0]) > 0.01
        else:
            assert values.min() >= 0 and values.max() <= 1
            assert abs(values.mean() - 0.5) < 0.05 and values.std() > 0.25  # uniform, not a copy
    if fill == "noise":  # repeats draw fresh noise; zero and mean fills repeat exactly
        assert not np.array_equal(inputs[1], inputs[2])
    else:
        assert np.array_equal(inputs[1], inputs[2])


@pytest.mark.parametrize("fill", ["noise", "zero", "mean", "group_level"])
def test_the_lobe_and_fill_means_are_those_of_the_inputs(fill):
    volume, labels, inputs, result = recorded_variants(fill, batch_size=3)
    for j, lobe in enumerate(LOBES):
        inside = labels == lobe
        assert result.lobe_mean[j] == pytest.approx(volume[0][inside].mean(), abs=1e-6)
        for r in range(2):
            variant = inputs[1 + 2 * j + r]
            assert result.fill_mean[j, r] == pytest.approx(variant[inside].mean(), abs=1e-6)
    if fill == "mean":  # the mean fill has no contrast: it keeps the lobe's level
        assert np.allclose(result.fill_mean, result.lobe_mean[:, None], atol=1e-6)


def test_variants_do_not_depend_on_batching_or_order():
    _, labels, one, first = recorded_variants("noise", batch_size=1)
    _, _, many, second = recorded_variants("noise", batch_size=9)
    _, _, uneven, third = recorded_variants("noise", batch_size=4)
    assert np.array_equal(one, many) and np.array_equal(one, uneven)  # bit for bit
    assert first.whole == second.whole == third.whole
    assert np.array_equal(first.masked, second.masked)
    assert np.array_equal(first.masked, third.masked)
    # lobes in reverse order: the same draws for each (lobe, repeat)
    _, _, backwards, reverse = recorded_variants("noise", batch_size=3, lobes=(4, 3, 2, 1))
    reordered = backwards[1:].reshape(4, 2, -1)[::-1].reshape(8, -1)
    assert np.array_equal(reordered, one[1:].reshape(8, -1))
    assert np.array_equal(reverse.masked[::-1], first.masked)


def test_conv_network_batch_sizes_agree_and_each_is_reproducible(small_model):
    volume, labels = phantom(1)
    run = lambda b: perturb_subject(  # noqa: E731
        small_model, volume, labels, subject_id="s02", seed=7, repeats=3, batch_size=b
    )
    single, batched = run(1), run(13)  # 1 + 4 x 3 variants: one batch
    # convolution kernels sum in a batch-size-dependent order: equal to float32 rounding
    assert single.whole == pytest.approx(batched.whole, abs=1e-6)
    np.testing.assert_allclose(single.masked, batched.masked, rtol=0, atol=1e-6)
    again = run(13)
    assert again.whole == batched.whole and np.array_equal(again.masked, batched.masked)
    assert np.abs(batched.masked - batched.whole).max() > 1e-4  # the check is not vacuous


def captum_masked(model, volume, labels, repeat, seed, subject_id, fill="noise"):
    """Masked predictions [lobe] by Captum's FeatureAblation: f(x) − attribution."""
    x = torch.as_tensor(volume)[None]
    baseline = fill_baseline(
        volume, labels, repeat, subject_id=subject_id, seed=seed, fill=fill, levels=LEVELS
    )
    mask = torch.as_tensor(labels.astype(np.int64))[None, None]
    attr = FeatureAblation(model).attribute(
        x, baselines=baseline[None], feature_mask=mask, target=0, perturbations_per_eval=1
    )
    with torch.inference_mode():
        whole = model(x)[0, 0].item()
    return np.array([whole - attr[mask == k][0].item() for k in LOBES])


@pytest.mark.parametrize("fill", ["noise", "mean", "group_level"])
def test_captum_feature_ablation_reproduces_masked_predictions(small_model, fill):
    volume, labels = phantom(2)
    ours = perturb_subject(
        small_model,
        volume,
        labels,
        subject_id="s03",
        seed=5,
        repeats=2,
        fill=fill,
        batch_size=9,
        levels=LEVELS,
    )
    for repeat in range(2):
        theirs = captum_masked(small_model, volume, labels, repeat, 5, "s03", fill)
        np.testing.assert_allclose(ours.masked[:, repeat], theirs, rtol=0, atol=1e-6)
    assert np.abs(ours.masked - ours.whole).min() > 1e-5


def test_bad_inputs_are_named():
    volume, labels = phantom()
    with pytest.raises(ValueError, match="empty lobe.*occipital"):
        perturb_subject(
            Recorder(), volume, np.where(labels == 4, 0, labels), subject_id="x", seed=1
        )
    with pytest.raises(ValueError, match="do not match"):
        perturb_subject(Recorder(), volume, labels[:-1], subject_id="x", seed=1)
    with pytest.raises(ValueError, match="unknown fill"):
        perturb_subject(Recorder(), volume, labels, subject_id="x", seed=1, fill="blur")
    with pytest.raises(ValueError, match="group_level fill needs a target level for: parietal"):
        levels = {k: v for k, v in LEVELS.items() if k != 2}
        perturb_subject(
            Recorder(), volume, labels, subject_id="x", seed=1, fill="group_level", levels=levels
        )
    with pytest.raises(ValueError, match="training mode"):
        perturb_subject(Recorder().train(), volume, labels, subject_id="x", seed=1)


def test_delta_ae_and_signed_change_arithmetic():
    # age 10: whole 12 (error 2); masked 7 (error 3) → ΔAE +1; masked 11 (error 1) → ΔAE −1
    np.testing.assert_allclose(delta_ae(10.0, 12.0, np.array([7.0, 11.0, 12.0])), [1, -1, 0])
    assert delta_ae(30.0, 25.0, 36.0) == pytest.approx(1.0)


# ---- the cohort step on the tiny run ------------------------------------------------------------
def copy_run(profile, dest, **perturb):
    """The inputs of step 05 of ``profile``'s run, copied to ``dest`` (the fixture stays intact)."""
    src = profile.run_path
    for name in ("preprocessed", "lobes", "models"):
        shutil.copytree(src / name, dest / name)
    for name in ("predictions.csv", "folds.csv", "exclusions.csv"):
        if (src / name).exists():
            shutil.copy2(src / name, dest / name)
    settings = dataclasses.replace(profile.perturb, **perturb) if perturb else profile.perturb
    return dataclasses.replace(profile, run_dir=str(dest), perturb=settings)


@pytest.fixture(scope="module")
def tiny_copy(tiny_run, tmp_path_factory):
    profile = copy_run(tiny_run, tmp_path_factory.mktemp("perturb"), repeats=2)
    table, failures = perturb_cohort(profile, progress=False)
    return profile, table, failures


def test_cohort_table_columns_rows_and_out_of_fold_models(tiny_copy):
    profile, table, failures = tiny_copy
    assert failures.empty
    written = pd.read_csv(profile.run_path / "perturbation.csv", dtype={"subject_id": str})
    assert list(written.columns) == COLUMNS
    predictions = pd.read_csv(profile.run_path / "predictions.csv", dtype={"subject_id": str})
    assert len(written) == len(predictions) * len(LOBES) * 2
    assert set(written["lobe"]) == set(LOBES.values()) and set(written["repeat"]) == {0, 1}
    assert (written["fill"] == "noise").all()
    folds = pd.read_csv(profile.run_path / "folds.csv", dtype={"subject_id": str})
    merged = written.merge(folds[["subject_id", "fold"]], on="subject_id", suffixes=("", "_cv"))
    assert len(merged) == len(written) and (merged["fold"] == merged["fold_cv"]).all()
    # the whole prediction is the out-of-fold one of step 03 (the other fold's model differs)
    whole = written.groupby("subject_id")["pred_whole"].first()
    expected = predictions.set_index("subject_id")["predicted_months"].loc[whole.index]
    np.testing.assert_allclose(whole, expected, atol=1e-4)
    age, pw, pm = written["age_months"], written["pred_whole"], written["pred_masked"]
    np.testing.assert_allclose(written["delta_ae"], (pm - age).abs() - (pw - age).abs())
    np.testing.assert_allclose(written["signed_change"], pm - pw)
    assert written[COLUMNS[-4:]].notna().all().all()


def test_cohort_agrees_with_captum_on_the_trained_model(tiny_copy):
    profile, table, _ = tiny_copy
    row = table.iloc[0]
    model = load_fold_model(profile, int(row["fold"]))
    volume = load_volumes(profile.run_path, [row["subject_id"]])[0]
    labels = np.asarray(
        nib.load(profile.run_path / "lobes" / f"{row['subject_id']}.nii.gz").dataobj
    )
    theirs = captum_masked(model, volume, labels, 1, profile.seed, row["subject_id"])
    ours = table[(table["subject_id"] == row["subject_id"]) & (table["repeat"] == 1)]
    span = profile.age_range_months[1] - profile.age_range_months[0]
    lo = profile.age_range_months[0]
    np.testing.assert_allclose(ours["pred_masked"], lo + theirs * span, atol=1e-4)


def test_rerun_skips_and_a_changed_setting_reruns(tiny_copy, tmp_path):
    profile, table, _ = tiny_copy
    out = profile.run_path / "perturbation.csv"
    before = out.stat().st_mtime_ns
    again, failures = perturb_cohort(profile, progress=False)
    assert out.stat().st_mtime_ns == before and failures.empty
    pd.testing.assert_frame_equal(again, table)
    shutil.copytree(profile.run_path, tmp_path / "run")  # the module's run stays as it is
    moved = dataclasses.replace(profile, run_dir=str(tmp_path / "run"))
    zero = dataclasses.replace(moved, perturb=PerturbConfig(repeats=1, fill="zero"))
    redone, _ = perturb_cohort(zero, progress=False)
    assert (redone["fill"] == "zero").all() and len(redone) == len(table) // 2


def test_another_fill_is_written_beside_the_main_analysis(tiny_copy):
    profile, table, _ = tiny_copy
    main = profile.run_path / "perturbation.csv"
    before = main.stat().st_mtime_ns
    zero, _ = perturb_cohort(profile, progress=False, fill="zero")
    assert perturbation_path(profile, "zero").name == "perturbation_zero.csv"
    written = pd.read_csv(profile.run_path / "perturbation_zero.csv")
    assert (written["fill"] == "zero").all() and len(written) == len(table)
    assert main.stat().st_mtime_ns == before  # the noise analysis is left alone
    assert not np.allclose(zero["pred_masked"], table["pred_masked"])
    with pytest.raises(ValueError, match="unknown fill"):
        perturb_cohort(profile, progress=False, fill="blur")


def test_group_level_fill_moves_each_lobe_to_its_age_groups_mean(tiny_copy):
    profile, _, _ = tiny_copy
    table, failures = perturb_cohort(profile, progress=False, fill="group_level")
    assert failures.empty and (table["fill"] == "group_level").all()
    table["group"] = age_group(table["age_months"], profile.age_group_edges).astype(str)
    levels = table[table["repeat"] == 0].groupby(["group", "lobe"])["lobe_mean"].mean()
    expected = levels.loc[list(zip(table["group"], table["lobe"], strict=True))].to_numpy()
    np.testing.assert_allclose(table["fill_mean"], expected, atol=1e-5)
    assert (table["fill_mean"] - table["lobe_mean"]).abs().max() > 1e-3  # it moved something
    # repeats agree (to float rounding across batch positions): the fill is deterministic
    pivot = table.pivot_table(index=["subject_id", "lobe"], columns="repeat", values="pred_masked")
    np.testing.assert_allclose(pivot[0], pivot[1], atol=1e-4)


def test_bad_lobe_files_fail_their_subject_only(tiny_run, tmp_path):
    profile = copy_run(tiny_run, tmp_path)
    ids = sorted(pd.read_csv(profile.run_path / "predictions.csv")["subject_id"].astype(str))
    lobes = profile.run_path / "lobes"
    (lobes / f"{ids[0]}.nii.gz").unlink()
    (lobes / f"{ids[1]}.nii.gz").write_bytes(b"\x1f\x8b not a NIfTI")
    image = nib.load(lobes / f"{ids[2]}.nii.gz")
    labels = np.asarray(image.dataobj)
    ctio.write_nifti(lobes / f"{ids[2]}.nii.gz", np.where(labels == 3, 0, labels), image.affine)
    table, failures = perturb_cohort(profile, progress=False)
    reasons = dict(zip(failures["subject_id"], failures["reason"], strict=True))
    assert set(reasons) == set(ids[:3])
    assert reasons[ids[0]].startswith(f"perturbation: {ids[0]}: lobe labels missing")
    assert reasons[ids[1]].startswith(f"perturbation: {ids[1]}: unreadable lobe labels")
    assert reasons[ids[2]] == f"perturbation: {ids[2]}: empty lobe(s) in the label map: temporal"
    assert sorted(table["subject_id"].unique()) == ids[3:]
    assert len(table) == (len(ids) - 3) * len(LOBES)
    excluded = pd.read_csv(profile.run_path / "exclusions.csv", dtype=str)
    assert set(
        excluded.loc[excluded["reason"].str.startswith("perturbation:"), "subject_id"]
    ) == set(ids[:3])
    # rerun with the same broken inputs: skipped, the same failures reported
    again, failures_again = perturb_cohort(profile, progress=False)
    pd.testing.assert_frame_equal(failures_again, failures)
    assert len(again) == len(table)
