"""Step 01 end to end: manifest validation + preprocessing of a small cohort with bad subjects.

One module-scoped run of ``s01_preprocess.run`` over a mixed cohort (NIfTI, DICOM, a
gantry-tilted DICOM series and every kind of bad input) checks the exclusions, the outputs,
privacy, skipping on a rerun (the step's record and each subject's), recomputing after a
parameter change and that an interrupted write leaves nothing half-written.
"""

import gzip
import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest

from ctbrainage.core.config import load_profile
from ctbrainage.core.layout import RunLayout
from ctbrainage.imaging import ctio
from ctbrainage.steps import s01_preprocess
from ctbrainage.steps.s01_preprocess import STEP
from ctbrainage.synth import generate_cohort

pytestmark = pytest.mark.integration  # generates cohorts and runs step 01 on them

GOOD = ["nii1", "nii2", "nii3", "dcm1", "tilted1"]
# bad subject id -> substrings expected in its exclusion reason (all of them, case-insensitive)
BAD = {
    "corrupt1": ["unreadable"],
    "mr1": ["mr1:", "modality mr", "not ct"],
    "nohead1": ["nohead1:", "no head"],
    "trunc1": ["trunc1:", "missing", "slices"],
    "dup1": ["duplicate"],
    "negage1": ["negative"],
}
PREPROCESS_FAILS = {"mr1", "nohead1", "trunc1"}  # pass validation, fail in preprocessing
IDENTIFYING_TAGS = ("PatientName", "PatientID", "InstitutionName", "AccessionNumber")
SIZE = 32  # the tiny profile's output cube


def _no_head_volume() -> tuple[np.ndarray, np.ndarray]:
    """CT-like HU (air, bone) with a 40 mm soft-tissue cube (64 mL): too small for a brain."""
    hu = np.full((100, 100, 100), -1000, np.int16)  # 2 mm voxels: 200 mm field of view
    hu[40:60, 40:60, 40:60] = 40
    hu[40:60, 40:60, 60:63] = 1000  # a 6 mm bone slab: the 99.9th percentile is bone
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -100.0
    return hu, affine


def _profile(run, manifest, **overrides):
    settings = {"run_dir": str(run), "data": str(manifest), "synth.workers": 1}
    return load_profile("tiny", {**settings, **overrides})


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Data folder with a manifest of good and bad subjects, and one step-01 run over it."""
    data = tmp_path_factory.mktemp("data")
    kw = {"workers": 1, "progress": False, "mode": "quick"}  # (coarse heads: the tiny profile's)
    nifti = generate_cohort(data / "nifti", n=3, seed=21, fmt="nifti", **kw)
    dicom = generate_cohort(data / "dicom", n=1, seed=22, fmt="dicom", tilt_fraction=0.0, **kw)
    tilted = generate_cohort(data / "tilted", n=1, seed=23, fmt="dicom", tilt_fraction=1.0, **kw)
    series = data / "dicom" / dicom.image[0]

    (data / "bad.nii.gz").write_bytes(np.random.default_rng(0).bytes(4096))
    shutil.copytree(series, data / "mr")
    for path in sorted((data / "mr").iterdir()):
        ds = pydicom.dcmread(path)
        ds.Modality = "MR"
        ds.save_as(path)
    shutil.copytree(series, data / "truncated")
    slices = sorted((data / "truncated").iterdir())
    slices[len(slices) // 2].unlink()
    ctio.write_nifti(data / "nohead.nii.gz", *_no_head_volume())

    def row(sid, source, folder, image=None):
        return {
            "subject_id": sid,
            "age_months": f"{source.age_months:.3f}",
            "sex": source.sex,
            "site": source.site,
            "image": image or f"{folder}/{source.image}",
        }

    n0, d0, t0 = nifti.iloc[0], dicom.iloc[0], tilted.iloc[0]
    rows = [row(f"nii{i + 1}", r, "nifti") for i, r in enumerate(nifti.itertuples())]
    rows += [
        row("dcm1", d0, "dicom"),
        row("tilted1", t0, "tilted"),
        row("corrupt1", n0, "", "bad.nii.gz"),
        row("mr1", d0, "", "mr"),
        row("nohead1", n0, "", "nohead.nii.gz"),
        row("trunc1", d0, "", "truncated"),
        row("dup1", n0, "nifti"),
        row("dup1", nifti.iloc[1], "nifti"),
        {**row("negage1", n0, "nifti"), "age_months": "-3"},
    ]
    manifest = data / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)

    run = tmp_path_factory.mktemp("run")
    # two worker processes: exercises the parallel path of map_subjects
    result = s01_preprocess.run(_profile(run, manifest, **{"synth.workers": 2}), progress=False)
    profile = _profile(run, manifest)  # reruns below go through the in-process path
    dicom_dirs = [series, data / "tilted" / t0.image, data / "mr", data / "truncated"]
    return {
        "data": data,
        "manifest": manifest,
        "run": run,
        "profile": profile,
        "result": result,
        "cohort": result.cohort,
        "table": result.table,
        "failed": _preprocessing_failures(result),
        "tilt_planted": json.loads((data / "tilted" / "truth" / "syn0001.json").read_text())[
            "gantry_tilt_deg"
        ],
        "dicom_dirs": dicom_dirs,
    }


def _preprocessing_failures(result) -> pd.DataFrame:
    """The exclusions of subjects that passed validation (they failed in preprocessing)."""
    failed = result.excluded["subject_id"].isin(result.cohort["subject_id"])
    return result.excluded[failed].reset_index(drop=True)


def preprocessed_paths(run, sid) -> dict:
    layout = RunLayout(run)
    return {
        "image": layout.preprocessed(sid),
        "brain": layout.brain(sid),
        "brain_native": layout.brain_native(sid),
        "qc": layout.qc(sid),
        "record": layout.subject_record(STEP.name, sid),
    }


def _exclusions(run) -> pd.DataFrame:
    return pd.read_csv(RunLayout(run).exclusions, dtype=str, keep_default_na=False)


def _output_mtimes(run, sids) -> dict:
    return {
        (sid, kind): path.stat().st_mtime_ns
        for sid in sids
        for kind, path in preprocessed_paths(run, sid).items()
    }


def _record_size(run, sid) -> int:
    record = json.loads(preprocessed_paths(run, sid)["record"].read_text())
    return record["settings_used"]["preprocess"]["size"]


def _assert_no_temporaries(folder):
    leftovers = [p for p in folder.rglob("*") if p.name.startswith((".tmp-", ".old-"))]
    assert leftovers == []


def test_validation_keeps_only_rows_with_usable_manifest_entries(pipeline):
    cohort = pipeline["cohort"]
    assert sorted(cohort.subject_id) == sorted(GOOD + list(PREPROCESS_FAILS))
    written = pd.read_csv(RunLayout(pipeline["run"]).cohort, dtype=str, keep_default_na=False)
    assert list(written.subject_id) == list(cohort.subject_id)
    assert cohort.image_path.map(lambda p: p.startswith("/")).all()


def test_every_bad_subject_is_excluded_once_with_its_reason(pipeline):
    excl = _exclusions(pipeline["run"])
    counts = excl.subject_id.value_counts().to_dict()
    # one row per bad manifest row: the duplicate id has two rows, each excluded
    assert counts == {**dict.fromkeys(BAD, 1), "dup1": 2}
    assert list(excl.columns[:3]) == ["subject_id", "step", "reason"]
    assert (excl.step == "01_preprocess").all()
    pd.testing.assert_frame_equal(pipeline["result"].excluded[list(excl.columns)], excl)
    for sid, needles in BAD.items():
        for reason in excl.loc[excl.subject_id == sid, "reason"]:
            for needle in needles:
                assert needle in reason.lower(), (sid, reason)
    assert "rows 11, 12" in excl.loc[excl.subject_id == "dup1", "reason"].iloc[0]
    assert set(pipeline["failed"].subject_id) == PREPROCESS_FAILS
    assert not set(excl.subject_id) & set(GOOD)
    # the rows of subjects that failed in preprocessing keep the manifest's columns
    failed = excl[excl.subject_id.isin(PREPROCESS_FAILS)].set_index("subject_id")
    manifest = pipeline["cohort"].set_index("subject_id").loc[failed.index]
    for column in ("age_months", "sex", "site", "image"):
        assert (failed[column] == manifest[column].astype(str)).all(), column


def test_good_subjects_are_preprocessed_with_all_outputs(pipeline):
    run, table = pipeline["run"], pipeline["table"]
    assert list(table.subject_id) == GOOD
    written = pd.read_csv(RunLayout(run).preprocess_table)
    assert list(written.subject_id) == GOOD
    expected_cols = {
        "age_months",
        "brain_volume_ml",
        "roll_deg",
        "pitch_deg",
        "yaw_deg",
        "ptile_low_hu",
        "ptile_high_hu",
        "gantry_tilt_deg",
        "seconds",
    }
    assert expected_cols <= set(written.columns)
    assert written[sorted(expected_cols)].notna().all().all()
    assert (written.brain_volume_ml > 100).all()
    assert (written.ptile_high_hu > written.ptile_low_hu).all()
    for sid in GOOD:
        paths = preprocessed_paths(run, sid)
        assert all(p.is_file() for p in paths.values()), sid
        img = nib.load(paths["image"])
        assert img.shape == (SIZE, SIZE, SIZE)
        assert img.get_data_dtype() == np.float32
        np.testing.assert_allclose(np.linalg.norm(img.affine[:3, :3], axis=0), 6.0, rtol=1e-5)
        data = np.asanyarray(img.dataobj)
        assert data.dtype == np.float32
        assert data.min() >= 0.0 and data.max() <= 1.0
        assert data.max() > 0.1  # 1 mm intensities in [0, 1], averaged over 6 mm voxels
        brain = np.asanyarray(nib.load(paths["brain"]).dataobj)
        assert brain.shape == (SIZE, SIZE, SIZE)
        assert set(np.unique(brain)) == {0, 1}
        assert np.all(data[brain == 0] == 0)
        assert paths["qc"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        record = json.loads(paths["record"].read_text())
        assert record["settings_used"]["preprocess"]["size"] == SIZE
        assert record["result"]["subject_id"] == sid
    for sid in BAD:
        assert not any(p.exists() for p in preprocessed_paths(run, sid).values())


def test_tilted_series_is_preprocessed_with_its_tilt(pipeline):
    tilt = pipeline["table"].set_index("subject_id").gantry_tilt_deg
    assert 10.0 <= tilt["tilted1"] <= 20.0
    assert tilt["tilted1"] == pytest.approx(pipeline["tilt_planted"], abs=0.05)
    assert (tilt.drop("tilted1") == 0).all()


def test_no_identifier_reaches_any_output(pipeline):
    secrets = set()
    for folder in pipeline["dicom_dirs"]:
        for path in folder.iterdir():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            found = {str(ds.get(tag, "")) for tag in IDENTIFYING_TAGS}
            date = str(ds.get("StudyDate", ""))
            if len(date) == 8 and date.isdigit():
                found.add(date)
            found.discard("")
            raw = path.read_bytes()
            assert all(s.encode() in raw for s in found)  # the byte search can find them
            secrets |= found
    # two subjects' names, ids, dates and accession numbers, and the institution
    assert len(secrets) >= 9
    files = [p for p in pipeline["run"].rglob("*") if p.is_file()]
    assert len(files) > 4 * len(GOOD)
    for path in files:
        blobs = [path.read_bytes()]
        if path.name.endswith(".gz"):
            blobs.append(gzip.decompress(blobs[0]))
        for blob in blobs:
            for secret in secrets:
                for encoding in ("utf-8", "utf-16-le"):
                    assert secret.encode(encoding) not in blob, (path, secret)


def _rerun_is_a_no_op(pipeline):
    run, profile = pipeline["run"], pipeline["profile"]
    before = _output_mtimes(run, GOOD)
    csv_before = RunLayout(run).preprocess_table.read_bytes()
    result = s01_preprocess.run(profile, progress=False)
    assert _output_mtimes(run, GOOD) == before
    pd.testing.assert_frame_equal(result.table, pipeline["table"])
    assert RunLayout(run).preprocess_table.read_bytes() == csv_before
    assert set(_preprocessing_failures(result).subject_id) == PREPROCESS_FAILS
    counts = _exclusions(run).subject_id.value_counts().to_dict()
    assert counts == {**dict.fromkeys(BAD, 1), "dup1": 2}  # failures replaced, not appended


def test_rerun_of_a_finished_step_computes_nothing(pipeline):
    assert s01_preprocess.is_fresh(pipeline["profile"])
    table_mtime = RunLayout(pipeline["run"]).preprocess_table.stat().st_mtime_ns
    _rerun_is_a_no_op(pipeline)
    assert RunLayout(pipeline["run"]).preprocess_table.stat().st_mtime_ns == table_mtime


def test_rerun_skips_finished_subjects(pipeline):
    # without the step's record (a killed step) the subjects' own records skip them
    RunLayout(pipeline["run"]).record(STEP.name).unlink()
    assert not s01_preprocess.is_fresh(pipeline["profile"])
    _rerun_is_a_no_op(pipeline)
    assert s01_preprocess.is_fresh(pipeline["profile"])


def test_changed_parameter_recomputes(pipeline, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(pipeline["run"], run)  # copy2 keeps mtimes: skipping still applies
    old = _output_mtimes(run, GOOD)
    manifest = pipeline["manifest"]

    assert s01_preprocess.is_fresh(_profile(run, manifest))  # a moved run stays fresh
    result = s01_preprocess.run(_profile(run, manifest), progress=False)
    assert set(_preprocessing_failures(result).subject_id) == PREPROCESS_FAILS
    assert _output_mtimes(run, GOOD) == old

    # a setting of the step that no subject's preprocessing reads: the step reruns, the
    # subjects are skipped
    edges = {"age_group_edges": [0, 24, 48]}
    assert not s01_preprocess.is_fresh(_profile(run, manifest, **edges))
    result = s01_preprocess.run(_profile(run, manifest, **edges), progress=False)
    assert set(result.cohort.age_group.astype(str)) <= {"0-23", "24-47"}
    assert _output_mtimes(run, GOOD) == old

    # a subject whose outputs went missing is recomputed, the others are not
    layout = RunLayout(run)
    layout.qc("nii1").unlink()
    layout.record(STEP.name).unlink()
    s01_preprocess.run(_profile(run, manifest, **edges), progress=False)
    new = _output_mtimes(run, ["nii1"])
    assert all(new[key] != old[key] for key in new)
    assert _output_mtimes(run, ["dcm1"]) == {k: v for k, v in old.items() if k[0] == "dcm1"}
    _assert_no_temporaries(run)


class _FullDisk(gzip.GzipFile):
    """Writes part of nii2's data, then fails as a full disk would (other files are written)."""

    def write(self, data):
        if not self.fileobj.name.endswith("-nii2.nii.gz"):
            return super().write(data)
        super().write(bytes(data)[:100])
        raise OSError(28, "No space left on device")


@pytest.fixture(scope="module")
def interrupted(pipeline, tmp_path_factory):
    """A copy of the run where recomputing the subjects (new size) first fails while writing
    nii2's image (full disk), then runs again."""
    run = tmp_path_factory.mktemp("interrupted") / "run"
    shutil.copytree(pipeline["run"], run)
    paths = preprocessed_paths(run, "nii2")
    profile = _profile(run, pipeline["manifest"], **{"preprocess.size": 24})
    state = {"run": run, "paths": paths, "before": {k: p.read_bytes() for k, p in paths.items()}}
    state["mtimes"] = _output_mtimes(run, GOOD)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ctio.gzip, "GzipFile", _FullDisk)
        state["failing"] = s01_preprocess.run(profile, progress=False)
    state["after_failure"] = {k: p.read_bytes() for k, p in paths.items()}
    state["leftovers"] = [p for p in run.rglob("*") if p.name.startswith((".tmp-", ".old-"))]
    state["mtimes_after_failure"] = _output_mtimes(run, GOOD)
    state["rerun"] = s01_preprocess.run(profile, progress=False)
    return state


def test_interrupted_write_leaves_previous_outputs(interrupted):
    result = interrupted["failing"]
    failed = _preprocessing_failures(result)
    assert list(result.table.subject_id) == [s for s in GOOD if s != "nii2"]  # the others go on
    assert set(failed.subject_id) == PREPROCESS_FAILS | {"nii2"}
    assert "No space left on device" in failed.set_index("subject_id").reason["nii2"]
    assert interrupted["after_failure"] == interrupted["before"]  # old outputs and record intact
    assert interrupted["leftovers"] == []


def test_a_changed_preprocessing_setting_preprocesses_every_subject_again(interrupted):
    run, old, new = interrupted["run"], interrupted["mtimes"], interrupted["mtimes_after_failure"]
    assert all(new[key] != old[key] for key in new if key[0] != "nii2")  # (nii2: the full disk)
    for sid in ("nii1", "dcm1"):
        paths = preprocessed_paths(run, sid)
        assert nib.load(paths["image"]).shape == (24, 24, 24)
        assert nib.load(paths["brain"]).shape == (24, 24, 24)
        assert _record_size(run, sid) == 24


def test_interrupted_subject_is_recomputed_on_the_next_run(interrupted):
    result = interrupted["rerun"]
    assert set(_preprocessing_failures(result).subject_id) == PREPROCESS_FAILS
    assert list(result.table.subject_id) == GOOD
    paths = interrupted["paths"]
    assert nib.load(paths["image"]).shape == (24, 24, 24)
    assert _record_size(interrupted["run"], "nii2") == 24
    _assert_no_temporaries(interrupted["run"])


def test_subject_that_succeeds_on_rerun_is_no_longer_excluded(interrupted):
    excluded = set(_exclusions(interrupted["run"]).subject_id)
    done = set(pd.read_csv(RunLayout(interrupted["run"]).preprocess_table).subject_id)
    assert done == set(GOOD)
    assert not excluded & done


def test_no_temporary_files_remain(pipeline):
    _assert_no_temporaries(pipeline["run"])
    _assert_no_temporaries(pipeline["data"])
