"""Lobe-wise perturbation: fills, seeding, batching, the Captum cross-check (``perturb``), and
step 05 on a run (``s05_perturbation``): perturbation tables, lobe levels, exclusions, resuming."""

from __future__ import annotations

import dataclasses
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from captum.attr import FeatureAblation

from ctbrainage.core.cohort import age_group
from ctbrainage.core.config import ModelConfig, ProfileError, load_profile
from ctbrainage.core.labels import LOBES
from ctbrainage.core.layout import RunLayout
from ctbrainage.imaging import ctio
from ctbrainage.interpret.perturb import (
    COLUMNS,
    delta_ae,
    fill_baseline,
    noise_seed,
    perturb_subject,
)
from ctbrainage.learn.datasets import load_volumes
from ctbrainage.learn.networks import build_model
from ctbrainage.steps import s03_train, s05_perturbation
from ctbrainage.steps.s05_perturbation import perturbation_path

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


# ---- step 05 on the tiny run ---------------------------------------------------------------------
def copy_run(profile, dest, **perturb_settings):
    """``profile`` on a copy of its run directory (the source stays intact), with ``perturb.*``
    settings replaced (default here: the profile's fill alone, no comparison fills)."""
    shutil.copytree(profile.run_path, dest)
    settings = {"compare_fills": (), **perturb_settings}
    return dataclasses.replace(
        profile,
        run_dir=str(dest),
        perturb=dataclasses.replace(profile.perturb, **settings),
    )


def read(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"subject_id": str})


def mtimes(folder) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def tiny_copy(tiny_run, tmp_path_factory):
    profile = copy_run(tiny_run, tmp_path_factory.mktemp("perturb") / "run", repeats=2)
    return profile, s05_perturbation.run(profile, progress=False)


@pytest.fixture(scope="module")
def more_fills(tiny_copy, tmp_path_factory):
    """A copy of ``tiny_copy``'s run, rerun with the zero and group_level fills to compare."""
    profile, first = tiny_copy
    dest = tmp_path_factory.mktemp("more_fills") / "run"
    shutil.copytree(profile.run_path, dest)
    moved = dataclasses.replace(profile, run_dir=str(dest))
    layout = RunLayout(dest)
    before = {
        "main": perturbation_path(moved, "noise").read_bytes(),
        "records": mtimes(layout.records_dir / "05_perturbation_noise"),
    }
    more = dataclasses.replace(
        moved, perturb=dataclasses.replace(profile.perturb, compare_fills=("zero", "group_level"))
    )
    return more, first, s05_perturbation.run(more, progress=False), before


def test_cohort_table_columns_rows_and_out_of_fold_models(tiny_copy):
    profile, result = tiny_copy
    layout = RunLayout(profile.run_path)
    assert result.excluded.empty
    assert list(result.tables) == ["noise"]
    written = read(layout.perturbation("noise", "noise"))
    assert layout.perturbation("noise", "noise").name == "perturbation.csv"
    pd.testing.assert_frame_equal(result.table, written)
    assert list(written.columns) == COLUMNS
    predictions = read(layout.predictions)
    assert len(written) == len(predictions) * len(LOBES) * 2
    assert set(written["lobe"]) == set(LOBES.values()) and set(written["repeat"]) == {0, 1}
    assert (written["fill"] == "noise").all()
    folds = read(layout.folds)
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
    assert s05_perturbation.is_fresh(profile)


def test_cohort_agrees_with_captum_on_the_trained_model(tiny_copy):
    profile, result = tiny_copy
    table, layout = result.table, RunLayout(profile.run_path)
    row = table.iloc[0]
    model = s03_train.load_model(profile, int(row["fold"]))
    volume = load_volumes([layout.preprocessed(row["subject_id"])])[0]
    labels = np.asarray(nib.load(layout.lobes(row["subject_id"])).dataobj)
    theirs = captum_masked(model, volume, labels, 1, profile.seed, row["subject_id"])
    ours = table[(table["subject_id"] == row["subject_id"]) & (table["repeat"] == 1)]
    span = profile.age_range_months[1] - profile.age_range_months[0]
    lo = profile.age_range_months[0]
    np.testing.assert_allclose(ours["pred_masked"], lo + theirs * span, atol=1e-4)


def test_rerun_skips_and_a_changed_setting_reruns(tiny_copy, tmp_path, monkeypatch):
    profile, result = tiny_copy
    table = result.table
    out = perturbation_path(profile, "noise")
    before = out.stat().st_mtime_ns
    with monkeypatch.context() as mp:  # a fresh step does not even load a model
        mp.setattr(s03_train, "load_model", _no_model)
        again = s05_perturbation.run(profile, progress=False)
    assert out.stat().st_mtime_ns == before and again.excluded.empty
    pd.testing.assert_frame_equal(again.table, table)
    dest = tmp_path / "run"
    shutil.copytree(profile.run_path, dest)  # the module's run stays as it is
    zero = dataclasses.replace(
        profile,
        run_dir=str(dest),
        perturb=dataclasses.replace(profile.perturb, repeats=1, fill="zero"),
    )
    assert not s05_perturbation.is_fresh(zero)
    redone = s05_perturbation.run(zero, progress=False).table
    assert (redone["fill"] == "zero").all() and len(redone) == len(table) // 2
    pd.testing.assert_frame_equal(read(perturbation_path(zero, "zero")), redone)
    assert perturbation_path(zero, "zero").name == "perturbation.csv"  # the main fill now


def test_an_unknown_fill_is_refused_by_the_profile():
    with pytest.raises(ProfileError, match="perturb.fill: 'blur' is not one of"):
        load_profile("tiny", {"perturb.fill": "blur"})
    with pytest.raises(ProfileError, match="perturb.compare_fills: 'blur' is not one of"):
        load_profile("tiny", {"perturb.compare_fills": ["zero", "blur"]})


def test_another_fill_is_written_beside_the_main_analysis(more_fills):
    profile, first, result, before = more_fills
    layout = RunLayout(profile.run_path)
    assert list(result.tables) == ["noise", "zero", "group_level"] and result.excluded.empty
    assert perturbation_path(profile, "zero").name == "perturbation_zero.csv"
    written = read(layout.root / "perturbation_zero.csv")
    assert (written["fill"] == "zero").all() and len(written) == len(first.table)
    pd.testing.assert_frame_equal(result.tables["zero"], written)
    # the noise analysis is left alone: the same bytes, its subjects not perturbed again
    assert perturbation_path(profile, "noise").read_bytes() == before["main"]
    assert mtimes(layout.records_dir / "05_perturbation_noise") == before["records"]
    pd.testing.assert_frame_equal(result.table, first.table)
    assert not np.allclose(written["pred_masked"], first.table["pred_masked"])


def test_group_level_fill_moves_each_lobe_to_its_age_groups_mean(more_fills):
    profile, _, result, _ = more_fills
    table = result.tables["group_level"].copy()
    assert (table["fill"] == "group_level").all()
    assert read(perturbation_path(profile, "group_level")).equals(result.tables["group_level"])
    table["group"] = age_group(table["age_months"], profile.age_group_edges).astype(str)
    levels = table[table["repeat"] == 0].groupby(["group", "lobe"])["lobe_mean"].mean()
    expected = levels.loc[list(zip(table["group"], table["lobe"], strict=True))].to_numpy()
    np.testing.assert_allclose(table["fill_mean"], expected, atol=1e-5)
    assert (table["fill_mean"] - table["lobe_mean"]).abs().max() > 1e-3  # it moved something
    # repeats agree (to float rounding across batch positions): the fill is deterministic
    pivot = table.pivot_table(index=["subject_id", "lobe"], columns="repeat", values="pred_masked")
    np.testing.assert_allclose(pivot[0], pivot[1], atol=1e-4)
    # lobe_levels.csv holds each subject's lobe means and those targets
    stored = read(RunLayout(profile.run_path).lobe_levels)
    assert list(stored.columns) == ["subject_id", "lobe", "lobe_mean", "group_level"]
    first = table[table["repeat"] == 0].merge(stored, on=["subject_id", "lobe"])
    assert len(first) == len(stored) == table["subject_id"].nunique() * len(LOBES)
    np.testing.assert_allclose(first["lobe_mean_y"], first["lobe_mean_x"], atol=1e-6)
    np.testing.assert_allclose(first["group_level"], first["fill_mean"], atol=1e-5)
    np.testing.assert_allclose(first["group_level"], expected[table["repeat"] == 0], atol=1e-6)


def _no_model(profile, fold):
    raise AssertionError(f"fold {fold}'s model was loaded")


def test_a_killed_perturbation_resumes_from_its_subjects(tiny_copy, tmp_path, monkeypatch):
    profile, result = tiny_copy
    dest = tmp_path / "run"
    shutil.copytree(profile.run_path, dest)
    killed = dataclasses.replace(profile, run_dir=str(dest))
    layout, table = RunLayout(dest), perturbation_path(killed, "noise")
    done = table.read_bytes()
    # killed after every subject was perturbed, before the table and the step's record
    table.unlink()
    layout.record(s05_perturbation.STEP.name).unlink()
    assert not s05_perturbation.is_fresh(killed)
    with monkeypatch.context() as mp:
        mp.setattr(s03_train, "load_model", _no_model)
        again = s05_perturbation.run(killed, progress=False)
    assert again.excluded.empty
    assert table.read_bytes() == done
    assert s05_perturbation.is_fresh(killed)
    # killed half-way: only the subjects without a record are perturbed, with their own model
    last = result.table.drop_duplicates("subject_id").iloc[-1]
    table.unlink()
    layout.record(s05_perturbation.STEP.name).unlink()
    s05_perturbation.STEP.subject_record(layout, last["subject_id"], "_noise").path.unlink()
    loaded, load_model = [], s03_train.load_model

    def spy(profile, fold):
        loaded.append(fold)
        return load_model(profile, fold)

    with monkeypatch.context() as mp:
        mp.setattr(s03_train, "load_model", spy)
        resumed = s05_perturbation.run(killed, progress=False)
    assert loaded == [int(last["fold"])]
    assert resumed.excluded.empty
    assert table.read_bytes() == done


def test_bad_lobe_files_fail_their_subject_only(tiny_run, tmp_path):
    profile = copy_run(tiny_run, tmp_path / "run")
    layout = RunLayout(profile.run_path)
    ids = sorted(read(layout.predictions)["subject_id"])
    layout.lobes(ids[0]).unlink()
    layout.lobes(ids[1]).write_bytes(b"\x1f\x8b not a NIfTI")
    image = nib.load(layout.lobes(ids[2]))
    labels = np.asarray(image.dataobj)
    ctio.write_nifti(layout.lobes(ids[2]), np.where(labels == 3, 0, labels), image.affine)
    result = s05_perturbation.run(profile, progress=False)
    table, failures = result.table, result.excluded
    assert (failures["step"] == "05_perturbation").all()
    reasons = dict(zip(failures["subject_id"], failures["reason"], strict=True))
    assert set(reasons) == set(ids[:3])
    assert reasons[ids[0]].startswith(f"{ids[0]}: lobe labels missing")
    assert reasons[ids[1]].startswith(f"{ids[1]}: unreadable")
    assert str(layout.lobes(ids[1]).relative_to(layout.root)) in reasons[ids[1]]  # which file
    assert reasons[ids[2]] == f"{ids[2]}: empty lobe(s) in the label map: temporal"
    assert sorted(table["subject_id"].unique()) == ids[3:]
    assert len(table) == (len(ids) - 3) * len(LOBES)
    excluded = pd.read_csv(layout.exclusions, dtype=str, keep_default_na=False)
    mine = excluded[excluded["step"] == "05_perturbation"]
    assert set(mine["subject_id"]) == set(ids[:3])
    assert dict(zip(mine["subject_id"], mine["reason"], strict=True)) == reasons
    # the later steps' subjects: the failed ones are no longer kept
    assert set(s05_perturbation.subjects(profile)["subject_id"]) == set(ids)
    # rerun with the same broken inputs: skipped, the same failures reported
    assert s05_perturbation.is_fresh(profile)
    again = s05_perturbation.run(profile, progress=False)
    pd.testing.assert_frame_equal(again.excluded, failures)
    pd.testing.assert_frame_equal(again.table, table)
