"""Step 10 (the multi-seed paper): agreement counting with known answers, Kendall's W and the
Welch tests against SciPy, the augmentation's units and per-batch choice, seeds that change the
inner split and the initial weights but never the test fold, and the step on the tiny run."""

import dataclasses
import shutil

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from scipy import stats

from ctbrainage.core.config import ProfileError, load_profile
from ctbrainage.core.layout import RunLayout
from ctbrainage.interpret.attribution import top_set
from ctbrainage.learn import train
from ctbrainage.learn.datasets import BatchAugmentation, load_volumes
from ctbrainage.stats import robustness as rb
from ctbrainage.steps import s10_robustness, s10_seed
from ctbrainage.steps.contract import up_to_date


# ---- agreement ---------------------------------------------------------------------------------
def _maps_with_known_tops():
    """Three seeds' maps over 100 voxels whose top 10 % are known: voxels 0-9 for seeds 0 and
    1; voxels 5-14 for seed 2. Agreeing (in more than half, i.e. 2 of 3): 0-9."""
    maps = np.zeros((3, 100))
    maps[0, :10] = np.arange(10, 0, -1)
    maps[1, :10] = np.arange(1, 11)
    maps[2, 5:15] = 1.0
    return torch.from_numpy(maps)


def test_agreeing_voxels_are_those_in_more_than_half_of_the_top_sets():
    maps = _maps_with_known_tops()
    tops = top_set(maps, torch.ones_like(maps, dtype=torch.bool), 0.10).numpy()
    assert tops.sum(1).tolist() == [10, 10, 10]
    agreeing = rb.agreeing_voxels(tops)
    assert np.flatnonzero(agreeing).tolist() == list(range(10))
    # each seed's top set shared with each other seed's, averaged: (1 + 0.5) / 2, …, 0.5
    assert rb.seed_agreement(tops).tolist() == [0.75, 0.75, 0.5]


def test_agreement_with_two_seeds_needs_both_and_an_even_split_does_not_agree():
    tops = np.zeros((4, 6), bool)
    tops[:2, 0] = True  # half of four seeds: not more than half
    tops[:3, 1] = True
    tops[:, 2] = True
    assert np.flatnonzero(rb.agreeing_voxels(tops)).tolist() == [1, 2]
    assert np.isnan(rb.seed_agreement(tops[:1])).all()


def test_kendall_w_is_one_for_identical_ranks_and_matches_friedman():
    same = np.tile([1.0, 2.0, 3.0, 4.0], (5, 1))
    w, p = rb.kendall_w(same)
    assert w == pytest.approx(1.0) and p < 0.01
    rng = np.random.default_rng(3)
    ranks = rb.descending_ranks(rng.normal(size=(6, 4)).round(1))
    w, p = rb.kendall_w(ranks)
    chi2, friedman_p = stats.friedmanchisquare(*ranks.T)
    assert w == pytest.approx(chi2 / (6 * 3))
    assert p == pytest.approx(friedman_p)


def test_kendall_w_of_reversed_pairs_is_zero():
    w, _ = rb.kendall_w(np.array([[1, 2, 3, 4], [4, 3, 2, 1]], float))
    assert w == pytest.approx(0.0)


def test_condition_test_is_welchs_t_with_a_signed_d():
    off, on = np.array([3.1, 2.8, 3.5, 3.0]), np.array([2.0, 2.4, 2.2, 1.9, 2.5])
    found = rb.condition_test(off, on)
    reference = stats.ttest_ind(on, off, equal_var=False)
    assert found["t"] == pytest.approx(reference.statistic)
    assert found["p"] == pytest.approx(reference.pvalue)
    pooled = np.sqrt(((3 * off.var(ddof=1)) + 4 * on.var(ddof=1)) / 7)
    assert found["cohen_d"] == pytest.approx((on.mean() - off.mean()) / pooled, rel=1e-3)
    assert found["cohen_d"] < 0  # on is lower
    assert np.isnan(rb.condition_test([1.0], on)["p"])


def test_factor_tests_compare_within_the_other_factor():
    runs = pd.DataFrame(
        {"augment": [0, 0, 1, 1, 0, 0, 1, 1], "register": [0, 0, 0, 0, 1, 1, 1, 1],
         "mae_best": [5.0, 5.2, 4.0, 4.1, 3.0, 3.3, 2.0, 2.2]}
    )  # fmt: skip
    table = rb.factor_tests(runs, ["mae_best"])
    row = table[(table["factor"] == "augment") & (table["within"] == "register on")].iloc[0]
    assert (row["mean_off"], row["mean_on"]) == pytest.approx((3.15, 2.1))
    assert len(table) == 4


# ---- augmentation ------------------------------------------------------------------------------
def test_elastic_deformation_moves_voxels_at_most_its_maximum_in_mm():
    """A linear ramp in mm along each axis, deformed: the change of its value is the
    displacement in mm (linear interpolation is exact on a ramp); it stays within 7.5 mm
    along every axis, and a random draw comes near it (so the unit really is mm, not voxels
    of 3 mm, which would allow 22.5 mm)."""
    spacing, size = 3.0, 48
    augment = BatchAugmentation(spacing)
    elastic = augment.transforms[2]
    grid = np.stack(np.meshgrid(*[np.arange(size) * spacing] * 3, indexing="ij"))
    torch.manual_seed(0)
    largest = 0.0
    for axis in range(3):
        ramp = torch.from_numpy(grid[axis][None].astype(np.float32))
        import torchio as tio

        image = tio.ScalarImage(tensor=ramp, affine=augment.affine)
        moved = elastic(image).data[0].numpy() - ramp[0].numpy()
        inner = moved[8:-8, 8:-8, 8:-8]  # away from the borders (padding)
        largest = max(largest, float(np.abs(inner).max()))
    assert largest <= 7.5 + 1e-3
    assert largest > 3.0


def test_one_transform_per_batch_and_the_flip_is_left_right():
    volume = torch.zeros(1, 24, 24, 24)
    volume[0, :6] = 1.0  # one side only
    batch = volume.expand(3, 1, 24, 24, 24).clone()
    augment = BatchAugmentation(8.0)
    kinds = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out = augment(batch)
        flipped = [bool(torch.equal(v, batch[0].flip(1))) for v in out]
        assert all(flipped) or not any(flipped)  # never mixed within a batch
        kinds.add(flipped[0])
    assert kinds == {True, False}


def test_registration_needs_the_warp_that_step_02_keeps():
    with pytest.raises(ValueError, match="lobes.keep_warp: true"):
        s10_robustness._check(load_profile("tiny", {"lobes.keep_warp": False}))
    s10_robustness._check(load_profile("tiny", {"lobes.keep_warp": False,
                                                "robustness.register": [False]}))  # fmt: skip


def test_robustness_folds_outside_the_folds_are_refused():
    with pytest.raises(ProfileError, match="robustness.folds"):
        load_profile("tiny", {"robustness.folds": [2]})


# ---- phases ------------------------------------------------------------------------------------
class _Trainer:
    def __init__(self):
        self.callback_metrics, self.current_epoch = {}, 0


def test_a_phase_keeps_the_weights_of_the_first_epoch_that_reaches_it():
    module = torch.nn.Linear(1, 1)
    keep = train.Checkpoints([10.0, 6.0, 1.0], months_per_unit=48.0)
    trainer = _Trainer()
    for epoch, mae_unit in enumerate([0.30, 0.20, 0.12, 0.15, 0.11]):  # months: 14.4 … 5.28
        trainer.current_epoch = epoch
        trainer.callback_metrics["val_mae"] = torch.tensor(mae_unit)
        with torch.no_grad():
            module.weight.fill_(epoch)
        keep.on_validation_end(trainer, module)
    keep.on_train_end(trainer, module)
    assert [round(r["val_mae_months"], 2) for r in keep.curve] == [14.4, 9.6, 5.76, 7.2, 5.28]
    assert {p: r[0] for p, r in keep.reached.items()} == {0: 1, 1: 2}  # 1.0 never reached
    assert keep.reached[0][2]["weight"].item() == 1.0  # a copy, not the live weights
    assert keep.reached[1][2]["weight"].item() == 2.0 and keep.last["weight"].item() == 4.0


# ---- seeds -------------------------------------------------------------------------------------
class _Initial(pl.Callback):
    def on_train_start(self, trainer, module):
        self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_a_seed_changes_the_inner_split_and_initial_weights_never_the_test_fold(tiny_run):
    profile = dataclasses.replace(tiny_run, robustness=dataclasses.replace(
        tiny_run.robustness, epochs=1))  # fmt: skip
    folds = s10_robustness.folds(profile)
    layout = RunLayout(profile.run_path)
    volumes = dict(zip(folds["subject_id"], load_volumes(
        [layout.preprocessed(s) for s in folds["subject_id"]]), strict=True))  # fmt: skip
    fits, starts = [], []
    for seed in (0, 1):
        unit = s10_seed.Unit(augment=False, register=False, seed=seed, fold=0)
        start = _Initial()
        fits.append(train.fit_fold(
            s10_seed.seed_profile(profile, unit), folds, 0,
            lambda ids: np.stack([volumes[s] for s in ids]), log_dir=layout.logs_dir,
            log_name=f"seedtest{seed}", progress=False, callbacks=[start],
        ))  # fmt: skip
        starts.append(start.state)
    tested = [set(f.predictions["subject_id"]) for f in fits]
    assert tested[0] == tested[1] == set(folds.loc[folds["fold"] == 0, "subject_id"])
    held = [set(f.validation["subject_id"]) for f in fits]
    assert held[0] != held[1] and not (held[0] | held[1]) & tested[0]
    weights = [s["model.conv1.weight"] for s in starts]
    assert not torch.equal(weights[0], weights[1])


# ---- the step on the tiny run ------------------------------------------------------------------
@pytest.fixture(scope="module")
def robustness_run(tiny_run, tmp_path_factory):
    """The tiny run copied, step 10 run on 2 seeds × registration off/on (no augmentation)."""
    root = tmp_path_factory.mktemp("robustness") / "run"
    shutil.copytree(tiny_run.run_path, root)
    profile = load_profile("tiny", {"run_dir": str(root), "robustness.augment": [False]})
    return profile, s10_robustness.run(profile, progress=False)


def test_every_seed_keeps_its_raw_numbers_and_the_tables_agree_with_them(robustness_run):
    profile, result = robustness_run
    units = s10_robustness.units(profile)
    assert len(units) == 4 and len(result.runs) == 4
    assert set(result.table["condition"]) == {"noaug_noreg", "noaug_reg"}
    layout = RunLayout(profile.run_path)
    for unit in units:
        checkpoints = pd.read_csv(layout.robustness_unit(unit.name, "checkpoints"))
        row = result.runs[(result.runs["condition"] == unit.condition)
                          & (result.runs["seed"] == unit.seed)].iloc[0]  # fmt: skip
        best = checkpoints.set_index("checkpoint").loc["best", "test_mae_months"]
        assert row["mae_best"] == pytest.approx(best)
        subjects = pd.read_csv(layout.robustness_unit(unit.name, "subjects"))
        if not unit.register:  # the lobes' share of the brain, from step 01's and 02's files
            sid = subjects["subject_id"].iloc[0]
            brain = load_volumes([layout.brain(sid)])[0, 0] >= 0.5
            lobes = load_volumes([layout.lobes(sid)])[0, 0] > 0
            mine = subjects[(subjects["subject_id"] == sid) & (subjects["checkpoint"] == "best")]
            assert mine["reference"].sum() == pytest.approx((lobes & brain).sum() / brain.sum())
    reference = result.table1_cells[(result.table1_cells["condition"] == "noaug_noreg")
                                    & (result.table1_cells["seed"] == 0)]  # fmt: skip
    assert reference["sign_kept"].all()  # the reference keeps its own sign
    agreement = result.agreement[result.agreement["checkpoint"] == "best"]
    assert (agreement["seeds_reaching"] == 2).all()


def test_registered_units_see_the_atlas_grid(robustness_run):
    profile, _ = robustness_run
    from ctbrainage.lobes.segment import build_atlas

    layout = RunLayout(profile.run_path)
    unit = next(u for u in s10_robustness.units(profile) if u.register)
    with np.load(layout.robustness_unit(unit.name, "maps")) as maps:
        mean_brain = maps["mean_brain"]
    _, atlas_brain, _ = build_atlas(profile.preprocess.spacing_mm, profile.preprocess.size)
    inside = mean_brain >= 0.5
    dice = 2 * (inside & (atlas_brain > 0)).sum() / (inside.sum() + (atlas_brain > 0).sum())
    assert dice >= 0.9


def test_a_second_run_computes_nothing_and_a_new_seed_trains_only_itself(robustness_run):
    profile, _ = robustness_run
    assert s10_robustness.is_fresh(profile)
    more = load_profile(
        "tiny",
        {"run_dir": profile.run_dir, "robustness.augment": [False],
         "robustness.register": [False], "robustness.seeds": 3},
    )  # fmt: skip
    assert not s10_robustness.is_fresh(more)
    table = s10_robustness.folds(more)
    stale = []
    for unit in s10_robustness.units(more):
        record, settings = s10_robustness._unit_check(more, unit, table)
        files = s10_robustness.unit_inputs(more, unit, table)
        made = s10_robustness.unit_outputs(more, unit)
        if not up_to_date(record, settings, s10_robustness.STEP.version, files, made):
            stale.append(unit.name)
    assert stale == ["noaug_noreg_seed2_fold0"]  # the new seed only
