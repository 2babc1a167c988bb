"""The bundle of a trained run: what it holds, that its models are the run's, and its refusals."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from ctbrainage.apps import bundle as bundles
from ctbrainage.apps.bundle import BundleError, export_bundle, load_bundle
from ctbrainage.core.cohort import age_group
from ctbrainage.core.config import profile_yaml
from ctbrainage.core.labels import LOBES
from ctbrainage.core.layout import BundleLayout, RunLayout
from ctbrainage.imaging.run_arrays import subject_arrays
from ctbrainage.interpret.perturb import lobe_means
from ctbrainage.stats import evaluate
from ctbrainage.steps import s03_train


def copy(bundle_dir, tmp_path):
    return shutil.copytree(bundle_dir, tmp_path / "bundle")


def test_the_bundle_holds_the_runs_models_line_and_residuals(tiny_run, tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    predictions = pd.read_csv(RunLayout(tiny_run.run_path).predictions)
    # no subject ids; one row per out-of-fold prediction, ages to 0.1 month
    assert "subject_id" not in bundle.out_of_fold.columns
    assert len(bundle.out_of_fold) == len(predictions)
    assert np.allclose(
        np.sort(bundle.out_of_fold["age_months"]), np.sort(predictions["age_months"]), atol=0.05
    )
    slope, intercept = evaluate.fit_bias(predictions["age_months"], predictions["predicted_months"])
    assert bundle.bias == pytest.approx((slope, intercept))
    assert bundle.profile.run_dir == "" and bundle.profile.data == ""  # no machine paths
    # every fold model is the run's, weight for weight and output for output
    volume, _ = subject_arrays(RunLayout(tiny_run.run_path), predictions["subject_id"][0])
    x = torch.from_numpy(volume)[None, None]
    for k, model in enumerate(bundle.models()):
        with torch.inference_mode():
            assert torch.equal(model(x), s03_train.load_model(tiny_run, k)(x))
    # the interval radius is the conformal rank of the corrected residuals
    residuals = (bundle.out_of_fold["age_months"] - bundle.out_of_fold["corrected_months"]).abs()
    rank = int(np.ceil((len(residuals) + 1) * 0.5))
    assert bundle.radius(0.5) == np.sort(residuals)[rank - 1]
    card = BundleLayout(tiny_bundle).model_card.read_text()
    assert (
        "Intended use" in card
        and "Limits" in card
        and f"{bundle.info['metrics']['mae']['value']:.2f}" in card
    )


def test_group_levels_are_the_training_groups_lobe_means(tiny_run, tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    layout = RunLayout(tiny_run.run_path)
    predictions = pd.read_csv(layout.predictions, dtype={"subject_id": str})
    groups = age_group(predictions["age_months"], tiny_run.age_group_edges)
    first = groups.dropna().iloc[0]
    members = predictions["subject_id"][groups == first]
    means = [lobe_means(*subject_arrays(layout, sid)) for sid in members]
    age = float(predictions["age_months"][groups == first].iloc[0])
    expected = {k: np.mean([m[k] for m in means]) for k in LOBES}
    assert bundle.levels_for(age) == pytest.approx(expected)
    assert bundle.levels_for(70.0) == {}  # outside every age group


def test_conformal_radius_and_coverage():
    residuals = np.arange(1.0, 10.0)  # 9 residuals: rank ceil(10 * 0.8) = 8
    assert evaluate.conformal_radius(residuals, 0.8) == 8.0
    assert evaluate.conformal_radius(-residuals, 0.8) == 8.0  # absolute values
    assert evaluate.conformal_radius(residuals, 0.95) == np.inf  # too few for the level
    with pytest.raises(ValueError, match="level"):
        evaluate.conformal_radius(residuals, 1.0)
    oof = pd.DataFrame(
        {"fold": [0, 0, 1, 1], "age_months": [1.0, 2.0, 3.0, 4.0], "p": [1.0, 2.5, 3.0, 8.0]}
    )
    # fold 0 calibrated on |0|, |4| at level 0.5 → radius 4: both of fold 0 covered;
    # fold 1 on |0|, |0.5| → radius 0.5: 3 covered, 4 (error 4) not
    result = evaluate.cross_fold_coverage(oof, 0.5, "p")
    assert result["coverage"] == 0.75 and result["width_months"] == pytest.approx(4.5)


def test_a_bundle_of_other_code_versions_is_refused(tiny_bundle, tmp_path):
    root = copy(tiny_bundle, tmp_path)
    path = BundleLayout(root).manifest
    info = json.loads(path.read_text())
    info["versions"]["preprocess"] = "preprocess0"
    info["digest"] = bundles._digest(info)  # a consistent record from another version
    path.write_text(json.dumps(info))
    with pytest.raises(BundleError, match="preprocess: bundle preprocess0, installed preprocess"):
        load_bundle(root)


def test_an_edited_record_and_an_impossible_level_are_refused(tiny_bundle, tmp_path):
    root = copy(tiny_bundle, tmp_path)
    bundle = load_bundle(root)
    n = len(bundle.out_of_fold)  # 12 subjects: a 95 % interval needs at least 19
    assert "0.95" not in bundle.info["intervals"] and "0.8" in bundle.info["intervals"]
    with pytest.raises(BundleError, match=f"the highest level they allow is {n / (n + 1):.0%}"):
        bundle.radius(0.95)
    path = BundleLayout(root).manifest
    info = json.loads(path.read_text())
    info["bias"]["intercept"] += 1.0
    path.write_text(json.dumps(info))
    with pytest.raises(BundleError, match="bundle.json does not match its checksum"):
        load_bundle(root)


def test_a_run_with_stale_lobe_labels_is_not_exported(tiny_run, tmp_path):
    # the lobes would be made otherwise for new scans than for the run's group levels
    lobes = dataclasses.replace(tiny_run.lobes, method="auto")
    profile = dataclasses.replace(tiny_run, lobes=lobes)
    with pytest.raises(BundleError, match="02_lobes is out of date"):
        export_bundle(profile, tmp_path / "bundle", progress=False)


def test_a_corrupt_or_missing_file_is_refused(tiny_bundle, tmp_path):
    root = copy(tiny_bundle, tmp_path)
    weights = BundleLayout(root).model(1)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="models/fold1.pt does not match its checksum"):
        load_bundle(root)
    weights.unlink()
    with pytest.raises(BundleError, match="models/fold1.pt is missing"):
        load_bundle(root)
    BundleLayout(root).manifest.write_text("{not json")
    with pytest.raises(BundleError, match="bundle.json is unreadable"):
        load_bundle(root)


def test_empty_missing_and_foreign_folders_are_refused(tiny_run, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="is an empty folder"):
        load_bundle(tmp_path / "empty")
    with pytest.raises(BundleError, match="not a folder"):
        load_bundle(tmp_path / "nowhere")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="no bundle.json"):
        load_bundle(tmp_path / "other")
    with pytest.raises(BundleError, match="is not a bundle: choose an empty or new folder"):
        export_bundle(tiny_run, tmp_path / "other", progress=False)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"  # nothing lost


def test_a_run_without_every_fold_is_refused(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run.run_path, tmp_path / "run")
    RunLayout(run).model(1).unlink()
    profile = dataclasses.replace(tiny_run, run_dir=str(run))
    with pytest.raises(BundleError, match=r"fold\(s\) \[1\] need step 03"):
        export_bundle(profile, tmp_path / "bundle", progress=False)
    assert not (tmp_path / "bundle").exists()


def test_command_line_export_and_check(tiny_run, tmp_path, capsys):
    run = shutil.copytree(tiny_run.run_path, tmp_path / "run")
    RunLayout(run).profile.write_text(profile_yaml(tiny_run))
    assert bundles.main(["export", str(run), str(tmp_path / "b"), "--no-progress"]) == 0
    assert "out-of-fold MAE" in capsys.readouterr().out
    assert bundles.main(["check", str(tmp_path / "b")]) == 0
    (tmp_path / "empty").mkdir()
    assert bundles.main(["check", str(tmp_path / "empty")]) == 2
    assert "empty folder" in capsys.readouterr().err
