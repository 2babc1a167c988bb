"""The benchmark cohort, checked in the generated images: a staggered schedule with the lobar white
matter as the only age cue, its truth in the model's grid, and the recorded biological age."""

import json
from dataclasses import replace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import stats

from ctbrainage.core.cohort import age_group
from ctbrainage.core.config import load_profile
from ctbrainage.core.labels import LOBES
from ctbrainage.core.layout import RunLayout
from ctbrainage.imaging import ctio
from ctbrainage.imaging.preprocess import input_derivative, map_to_grid, preprocess_scan
from ctbrainage.steps import s01_preprocess
from ctbrainage.synth import MaturationSchedule, SubjectSpec, simulate_head
from ctbrainage.synth.invariance import cue_correlations, input_age_cues
from ctbrainage.synth.scoring import measure_age_cues

pytestmark = pytest.mark.integration  # generates a cohort and preprocesses part of one

EDGES = (0.0, 12.0, 24.0, 36.0, 48.0)
STAGGERED = MaturationSchedule.parse("staggered", EDGES)


def _profile(root, n: int):
    return load_profile(
        "tiny",
        {
            "run_dir": str(root),
            "synth.n": n,
            "synth.mode": "demo",  # the benchmark's heads (the tiny profile's are coarser)
            "synth.schedule": "staggered",
            "synth.cues": "lobar",
        },
    )


@pytest.fixture(scope="module")
def benchmark_cohort(tmp_path_factory):
    """24 staggered heads whose only age cue is lobar, as the profile generates them."""
    profile = _profile(tmp_path_factory.mktemp("benchmark_cohort"), 24)
    s01_preprocess.generate_synthetic(profile, progress=False)
    return RunLayout(profile.run_path).synthetic


@pytest.fixture(scope="module")
def benchmark_run(tmp_path_factory):
    """Step 01 of the tiny profile on 4 such heads (the signal maps on the model grid)."""
    profile = _profile(tmp_path_factory.mktemp("benchmark_run"), 4)
    s01_preprocess.run(profile, progress=False)
    return RunLayout(profile.run_path)


@pytest.fixture(scope="module")
def cues(benchmark_cohort):
    return measure_age_cues(benchmark_cohort)


def test_lobar_cues_change_only_the_lobar_white_matter():
    """The same child at 2 and at 46 months: with cues=lobar only lobar voxels differ."""
    young, old = (SubjectSpec("s", age, "M", "B", seed=3) for age in (2.0, 46.0))
    a, b = (simulate_head(s, STAGGERED, cues="lobar") for s in (young, old))
    assert np.array_equal(a.affine, b.affine) and np.array_equal(a.brain, b.brain)
    changed = a.hu != b.hu
    assert changed.sum() > 10_000  # the white matter did mature
    planted = (a.signal > 0) | (b.signal > 0)  # lobar white matter, with the scanner's blur
    assert not changed[~planted].any()
    assert a.signal[a.lobes > 0].sum() > 0.9 * a.signal.sum()  # the signal is lobar
    for key in ("brain_volume_planted_ml", "bone_thickness_mm", "grey_matter_hu", "scalp_mm"):
        assert a.truth[key] == b.truth[key], key
    assert a.truth["wm_hu"] != b.truth["wm_hu"]
    # with every cue, the same child differs in size, skull and grey matter
    c, d = (simulate_head(s, STAGGERED, cues="all") for s in (young, old))
    assert d.truth["brain_volume_planted_ml"] > 1.5 * c.truth["brain_volume_planted_ml"]
    assert d.truth["grey_matter_hu"] > c.truth["grey_matter_hu"] + 3
    with pytest.raises(ValueError, match="unknown cues 'some'"):
        simulate_head(young, STAGGERED, cues="some")


def test_without_cues_the_same_child_is_the_same_image_at_every_age():
    """cues=none, the negative control: nothing in the image, nor the planted signal, follows
    age; the same random draws as cues=lobar (only the lobar white matter differs)."""
    young, old = (SubjectSpec("s", age, "F", "A", seed=3) for age in (2.0, 46.0))
    a, b = (simulate_head(s, STAGGERED, mode="quick", cues="none") for s in (young, old))
    assert np.array_equal(a.hu, b.hu) and not a.signal.any()
    lobar = simulate_head(young, STAGGERED, mode="quick", cues="lobar")
    differs = a.hu != lobar.hu
    assert differs.any() and not differs[lobar.signal == 0].any()


def test_non_lobar_cues_do_not_follow_age_in_the_images(cues):
    for column in ("brain_volume_ml", "skull_volume_ml", "skull_hu", "cortex_hu"):
        r = stats.pearsonr(cues["age_months"], cues[column]).statistic
        # 24 children: |r| ≥ 0.5 has p < 0.02 under no association; with every cue r > 0.8
        assert abs(r) < 0.5, (column, r)


def test_lobe_white_matter_follows_its_planted_curve(cues, benchmark_cohort):
    truth = pd.read_csv(benchmark_cohort.truth_table)
    for name in LOBES.values():
        curve = STAGGERED.wm_hu(name, cues["biological_age_months"])
        residual = cues[f"wm_hu_{name}"] - curve  # the child's own 0.7 HU and image noise
        assert residual.abs().mean() < 1.5, name
        # per child: the image holds the planted value (immature white matter beside mature
        # cortex reads up to ~2 HU high: partial volume), which lies on the curve ± 5 SD
        planted = truth[f"wm_hu_planted_{name}"]
        assert (cues[f"wm_hu_{name}"] - planted).abs().max() < 2.0, name
        assert (planted - curve).abs().max() < 5 * 0.7, name


def test_each_age_group_fastest_changing_lobe_is_the_planted_one(cues):
    groups = age_group(cues["age_months"], EDGES)
    planted = dict(zip(["0-11", "12-23", "24-35", "36-47"], STAGGERED._ranked(), strict=True))
    for group, part in cues.groupby(groups, observed=True):
        slopes = {
            name: stats.linregress(part["age_months"], part[f"wm_hu_{name}"]).slope
            for name in LOBES.values()
        }
        assert max(slopes, key=slopes.get) == planted[str(group)], (group, slopes)


def test_truth_table_records_the_biological_age(benchmark_cohort):
    truth = pd.read_csv(benchmark_cohort.truth_table)
    offset = truth["biological_age_months"] - truth["age_months"]
    clamped = truth["biological_age_months"] == 0.0
    assert np.allclose(offset[~clamped], truth.loc[~clamped, "maturity_offset_months"])
    assert 0.8 < truth["maturity_offset_months"].std() < 2.5  # drawn with SD 1.5 months
    assert (truth["cues"] == "lobar").all()
    record = json.loads(benchmark_cohort.truth("syn0001").read_text())
    assert record["biological_age_months"] == pytest.approx(truth["biological_age_months"][0])


def test_signal_lies_in_the_lobar_white_matter_of_the_grid(benchmark_run):
    table = pd.read_csv(benchmark_run.preprocess_table, dtype={"subject_id": str})
    inside_lobes, core_density = [], []
    for sid in table["subject_id"]:
        signal = np.asarray(nib.load(benchmark_run.signal(sid)).dataobj)
        assert signal.dtype == np.float32 and signal.sum() > 0
        assert signal.min() > -1e-3 * signal.max()  # only the anti-aliasing filter's ripple
        reference = sitk.ReadImage(str(benchmark_run.preprocessed(sid)))
        synthetic = benchmark_run.synthetic
        lobes = map_to_grid(sitk.ReadImage(str(synthetic.truth_lobes(sid))), reference)
        cores = map_to_grid(sitk.ReadImage(str(synthetic.truth_wm(sid))), reference) > 0
        inside_lobes.append(signal[lobes > 0].sum() / signal.sum())
        rest = (lobes > 0) & ~cores
        core_density.append(signal[cores].mean() / signal[rest].mean())
    assert np.median(inside_lobes) >= 0.9, inside_lobes
    # at 6 mm voxels partial volume spreads it, but it is densest in the white-matter cores
    assert np.median(core_density) >= 1.5, core_density


def test_signal_is_the_derivative_of_the_model_input():
    """A finite difference of the preprocessed input of one child at two ages (same noise)
    matches the signal map written for the earlier age."""
    spec = SubjectSpec("s", 17.0, "F", "A", seed=21)
    step = 2.0
    heads = [
        simulate_head(replace(spec, age_months=a), STAGGERED, cues="lobar")
        for a in (17.0, 17.0 + step)
    ]
    results = [
        preprocess_scan(ctio.ras_to_sitk(h.hu, h.affine), 3.0, 64, (0.5, 99.5)) for h in heads
    ]
    first = results[0]
    grid = ctio.ras_to_sitk(first.image, first.affine)
    signal = input_derivative(
        ctio.ras_to_sitk(heads[0].signal, heads[0].affine), grid, first.brain, first.ptile_hu
    )
    difference = (results[1].image - first.image) / step
    both = (first.brain > 0) & (results[1].brain > 0)
    r = stats.pearsonr(signal[both], difference[both]).statistic
    assert r > 0.8, r
    ratio = difference[both].sum() / signal[both].sum()
    assert 0.7 < ratio < 1.3, ratio


def test_age_cues_are_read_in_the_model_input(benchmark_run):
    """Each lobe's white matter, read in the model input, is its planted HU through the
    subject's P-tile levels (16 lobes of 4 children at 2-46 months, 18-30.5 HU); a lobe read in
    another lobe's place would break the relation."""
    cues = input_age_cues(benchmark_run)
    truth = pd.read_csv(benchmark_run.synthetic.truth_table, dtype={"subject_id": str})
    data = cues.merge(truth, on="subject_id", suffixes=("", "_truth"))
    read, expected = [], []
    for name in LOBES.values():
        planted = data[f"wm_hu_measured_{name}"] + data["site_offset_hu"]
        expected += list((planted - data.ptile_low_hu) / (data.ptile_high_hu - data.ptile_low_hu))
        read += list(data[f"input_wm_{name}"])
    assert stats.pearsonr(read, expected).statistic > 0.9
    assert np.mean(np.abs(np.subtract(read, expected))) < 0.08
    table = cue_correlations(cues)
    assert set(table.cue) >= {"mask_ml", "ptile_low_hu", "input_outside_lobes"}
    assert (table.n == len(cues)).all()
