"""Brain age for new scans: a bundle of the tiny run applied to another synthetic cohort."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ctbrainage.apps import predict as predicting
from ctbrainage.apps.bundle import load_bundle
from ctbrainage.apps.dicom_index import BuildError
from ctbrainage.apps.predict import PredictError, predict
from ctbrainage.core.labels import LOBES
from ctbrainage.core.layout import RunLayout


@pytest.fixture(scope="module")
def new_scans(cohort_dir, tmp_path_factory):
    """Every second child by age of the session cohort (seed 7; the tiny run's is 42): 8."""
    cohort = pd.read_csv(cohort_dir / "cohort.csv", dtype=str, keep_default_na=False)
    cohort = cohort.sort_values("age_months", key=lambda a: a.astype(float)).iloc[::2]
    cohort["image"] = [str(cohort_dir / p) for p in cohort["image"]]
    manifest = tmp_path_factory.mktemp("new_scans") / "cohort.csv"
    cohort.to_csv(manifest, index=False)
    return manifest


@pytest.fixture(scope="module")
def predicted(tiny_bundle, new_scans, tmp_path_factory):
    """The tiny run's bundle on ``new_scans``."""
    out = tmp_path_factory.mktemp("predict") / "new"
    return predict(tiny_bundle, new_scans, out, level=0.8, progress=False)


def test_round_trip_predicts_every_new_subject(predicted, tiny_run, new_scans):
    table = predicted.table
    cohort = pd.read_csv(new_scans, dtype={"subject_id": str})
    assert len(cohort) == 8
    assert sorted(table["subject_id"]) == sorted(cohort["subject_id"])
    assert predicted.excluded.empty
    oof = pd.read_csv(RunLayout(tiny_run.run_path).predictions)
    oof_mae = (oof["predicted_months"] - oof["age_months"]).abs().mean()
    new_mae = (table["brain_age_months"] - table["age_months"]).abs().mean()
    assert new_mae <= 1.5 * oof_mae, (new_mae, oof_mae)


def test_each_number_follows_from_the_fold_models(predicted, tiny_bundle):
    bundle, table = load_bundle(tiny_bundle), predicted.table
    folds = table[[f"fold{k}_months" for k in range(bundle.folds)]]
    assert np.allclose(table["brain_age_months"], folds.mean(axis=1))
    assert np.allclose(table["ensemble_sd_months"], folds.std(axis=1, ddof=1))
    slope, intercept = bundle.bias
    assert np.allclose(table["corrected_months"], (table["brain_age_months"] - intercept) / slope)
    assert np.allclose(
        table["gap_corrected_months"], table["corrected_months"] - table["age_months"]
    )
    radius = bundle.radius(0.8)
    assert np.allclose(table["interval_high"] - table["corrected_months"], radius)
    inside = (table["age_months"] - table["corrected_months"]).abs() <= radius
    assert (table["age_in_interval"] == inside).all()
    assert (table["interval_low"] >= 0).all()  # clipped: no age is below 0 (docs/new-scans.md)
    # the tiny run's models barely follow age: each row says that its correction is unstable
    assert abs(slope) < 0.2 and bundle.info["bias"]["unstable"].startswith("bias-correction slope")
    expected = f"multiplies prediction errors by {1 / abs(slope):.3g}"
    assert table["flags"].str.contains(expected, regex=False).all()
    low = (table["corrected_months"] - radius).clip(lower=0)
    assert np.allclose(table["interval_low"], low)
    lobes = table[[f"delta_ae_{name}" for name in LOBES.values()]]
    assert np.isfinite(lobes.to_numpy()).all()  # every age lies in an age group
    summary = json.loads(predicted.layout.prediction_summary.read_text())
    assert summary["predicted"] == len(table) and summary["level"] == 0.8


def test_fold_predictions_and_lobe_delta_ae_are_the_models_outputs(predicted, tiny_bundle):
    import torch

    from ctbrainage.imaging.run_arrays import subject_arrays
    from ctbrainage.interpret.perturb import fill_baseline

    bundle, table = load_bundle(tiny_bundle), predicted.table
    row = table.iloc[0]
    volume, labels = subject_arrays(predicted.layout, row["subject_id"])
    x = torch.from_numpy(volume)[None, None]
    models = bundle.models()
    with torch.inference_mode():
        whole = [float(bundle.scaler.to_months(float(m(x)))) for m in models]
    assert np.allclose([row[f"fold{k}_months"] for k in range(len(models))], whole, atol=1e-3)
    # frontal set to its age group's training level, through every model: ΔAE of the mean
    levels = bundle.levels_for(row["age_months"])
    filled = fill_baseline(
        volume,
        labels,
        0,
        subject_id=row["subject_id"],
        seed=bundle.profile.seed,
        fill="group_level",
        lobes=(1,),
        levels=levels,
    )
    frontal = torch.where(torch.from_numpy(labels == 1), filled[0], torch.from_numpy(volume))
    with torch.inference_mode():
        masked = np.mean(
            [float(bundle.scaler.to_months(float(m(frontal[None, None])))) for m in models]
        )
    age, mean = row["age_months"], np.mean(whole)
    assert row["delta_ae_frontal"] == pytest.approx(abs(masked - age) - abs(mean - age), abs=1e-3)


def test_pages_and_index_link_every_subject(predicted):
    layout = predicted.layout
    index = layout.index.read_text()
    for sid in predicted.table["subject_id"]:
        assert f"pages/{sid}.html" in index
        page = layout.subject_page(sid).read_text()
        assert f"{sid}.png" in page and f"../qc/{sid}.png" in page
        assert layout.subject_figure(sid).stat().st_size > 10_000
    assert str(layout.root) not in index  # relative links: the folder can be moved
    assert str(predicted.layout.root.parent.parent) not in index  # nor the bundle's path


def test_a_rerun_gives_the_same_numbers_without_preprocessing_again(
    predicted, tiny_bundle, new_scans
):
    layout = predicted.layout
    stamp = layout.preprocessed(predicted.table["subject_id"][0]).stat().st_mtime_ns
    again = predict(tiny_bundle, new_scans, layout.root, level=0.8, progress=False)
    pd.testing.assert_frame_equal(again.table, predicted.table)
    assert layout.preprocessed(predicted.table["subject_id"][0]).stat().st_mtime_ns == stamp


def test_bad_scans_are_listed_and_others_go_on(tiny_bundle, cohort_dir, tmp_path):
    cohort = pd.read_csv(cohort_dir / "cohort.csv", dtype=str, keep_default_na=False).head(3)
    cohort["image"] = [str(cohort_dir / p) for p in cohort["image"]]
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti file")
    extra = [
        {
            **cohort.iloc[0].to_dict(),
            "subject_id": "broken",
            "image": str(tmp_path / "broken.nii.gz"),
        },
        {**cohort.iloc[1].to_dict(), "subject_id": "older", "age_months": "60"},
        {**cohort.iloc[2].to_dict(), "subject_id": "negative", "age_months": "-1"},
    ]
    manifest = tmp_path / "new.csv"
    pd.concat([cohort, pd.DataFrame(extra)]).to_csv(manifest, index=False)
    result = predict(tiny_bundle, manifest, tmp_path / "out", progress=False)
    assert sorted(result.table["subject_id"]) == sorted([*cohort["subject_id"], "older"])
    reasons = result.excluded.set_index("subject_id")["reason"]
    assert "image unreadable" in reasons["broken"] and "negative" in reasons["negative"]
    older = result.table.set_index("subject_id").loc["older"]
    assert "age outside the training ages" in older["flags"] and not older["in_training_ages"]
    assert np.isnan(older["delta_ae_frontal"])  # no age group: no group level to fill with


def test_refusals(tiny_bundle, tmp_path, capsys):
    manifest = tmp_path / "none.csv"
    manifest.write_text("subject_id,age_months,sex,site,image\na,12,F,A,missing.nii.gz\n")
    with pytest.raises(PredictError, match="no scan could be predicted"):
        predict(tiny_bundle, manifest, tmp_path / "out", progress=False)
    assert "image not found" in (tmp_path / "out" / "exclusions.csv").read_text()
    with pytest.raises(PredictError, match="it holds the manifest .*the user's files are never"):
        predict(tiny_bundle, tmp_path / "out" / "cohort.csv", tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="level"):
        predict(tiny_bundle, manifest, tmp_path / "out2", level=1.5, progress=False)
    code = predicting.main(
        ["--bundle", str(tmp_path), "--data", str(manifest), "--out", str(tmp_path / "o")]
    )
    assert code == 2 and "no bundle.json" in capsys.readouterr().err
    code = predicting.main(
        [
            "--bundle",
            str(tiny_bundle),
            "--data",
            str(tmp_path / "nope.csv"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2 and "no such manifest file or DICOM folder" in capsys.readouterr().err


def test_a_dicom_tree_is_predicted_under_pseudonyms_only(tiny_bundle, tmp_path):
    from helpers import assert_no_identifiers, dicom_identifiers

    from ctbrainage.synth import generate_cohort

    export = tmp_path / "export"
    generate_cohort(export, n=2, seed=5, mode="quick", fmt="dicom", workers=2, progress=False)
    truth = pd.read_csv(tmp_path / "export" / "cohort.csv")
    out = tmp_path / "out"
    result = predict(
        tiny_bundle, tmp_path / "export" / "dicom", out, key="a-secret-key", progress=False
    )
    table = result.table
    assert len(table) == 2 and table["subject_id"].str.fullmatch(r"s[0-9a-f]{12}").all()
    assert np.allclose(sorted(table["age_months"]), sorted(truth["age_months"]), atol=0.1)
    assert result.skipped is not None and result.skipped.empty
    # no name, id, date or UID of the headers in any output, compressed images included
    values = dicom_identifiers(tmp_path / "export" / "dicom")
    values.discard("Synthetic")  # the referrer "Synthetic^Referrer": also our word for the cohort
    assert_no_identifiers([out], values)
    with pytest.raises(BuildError, match="secret key is needed"):
        predict(tiny_bundle, tmp_path / "export" / "dicom", tmp_path / "o2", progress=False)


def test_step_09_exports_the_bundle_and_predicts_a_new_synthetic_cohort(tiny_run, tmp_path):
    import dataclasses
    import shutil

    from ctbrainage.apps import new_scans
    from ctbrainage.core.layout import BundleLayout

    run_dir = shutil.copytree(tiny_run.run_path, tmp_path / "run")
    profile = dataclasses.replace(tiny_run, run_dir=str(run_dir))
    assert not new_scans.is_fresh(profile, new_subjects=2)
    result = new_scans.run(profile, new_subjects=2, progress=False)
    layout = RunLayout(run_dir)
    assert BundleLayout(layout.bundle_dir).manifest.exists() and result.synthetic
    new = pd.read_csv(RunLayout(layout.new_scans_dir).synthetic.manifest)
    assert len(new) == 2 and set(result.prediction.table["subject_id"]) == set(new["subject_id"])
    ours = pd.read_csv(layout.cohort)
    assert not set(new["age_months"]) & set(ours["age_months"])  # another seed: other children
    accuracy = result.accuracy()
    table = result.prediction.table
    assert accuracy["mae_months"] == pytest.approx(table["gap_months"].abs().mean())
    assert accuracy["coverage"] == table["age_in_interval"].mean() and accuracy["level"] == 0.9
    assert new_scans.is_fresh(profile, new_subjects=2)
    assert not new_scans.is_fresh(profile, new_subjects=2, level=0.8)
    from ctbrainage.views.pages import write_index

    page = write_index(run_dir).read_text()  # the run's index links the new scans' pages
    assert "href='new_scans/index.html'" in page and "href='bundle/MODEL_CARD.md'" in page
