"""A DICOM export tree → a cohort manifest (``ctbrainage.apps.dicom_index``): the series chosen per
study, the reason of every series and file skipped, ages, pseudonyms, the series digest that
picks one series of a flat folder (reader, validation, step 01) and that no header value that
identifies anyone reaches an output."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pandas as pd
import pydicom
import pytest
from helpers import assert_no_identifiers, dicom_identifiers, tilted_affine

from ctbrainage.apps import dicom_index as mf
from ctbrainage.core.workers import Mapped
from ctbrainage.imaging import cohort_manifest, ctio
from ctbrainage.synth.dicom import write_ct_dicom_series

KEY = "correct-horse-battery"
STUDY_DATE = "20230115"
AXIAL = np.diag([0.7, 0.7, 5.0, 1.0])
CORONAL = np.array(  # rows along x, columns along z, slices stacked along y
    [[0.7, 0.0, 0.0, -11.0], [0.0, 0.0, 1.0, -24.0], [0.0, 0.7, 0.0, 3.0], [0.0, 0.0, 0.0, 1.0]]
)
NOT_AXIAL = "not axial (slice normal 90° from the patient's z axis)"
NO_AGE = "no age: neither birth and study dates nor PatientAge"
PATIENT_D = "PID-D-5150"  # two studies of one child, in one flat folder


def _hu(n: int) -> np.ndarray:
    """A small CT-like volume: air, a soft-tissue block with a bone rim."""
    hu = np.full((32, 32, n), -1000, np.int16)
    hu[6:26, 6:26] = 1000
    hu[8:24, 8:24] = 35
    return hu


def _write(folder, n, affine=AXIAL, *, seed, desc="axial", age=18.7, sex="F", pid="PID-A-4417"):
    write_ct_dicom_series(
        folder,
        _hu(n),
        affine,
        age_months=age,
        sex=sex,
        patient_name=f"Testperson^{seed}child",
        patient_id=pid,
        study_date=STUDY_DATE,
        uid_seed=f"study-{seed}",
        series_description=desc,
    )
    return folder


def _edit(folder, change) -> None:
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path)


def _series_uid(folder, prefix="") -> str:
    first = sorted(folder.glob(f"{prefix}*.dcm"))[0]
    return str(pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID)


def _drop(*tags):
    def change(ds):
        for tag in tags:
            delattr(ds, tag)

    return change


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A DICOM export: study A (axial 40 = chosen, coronal 48, thick axial 24, localiser 3),
    B (gantry-tilted axial), C (MR only), E (PatientAge only), F (no age), D1 and D2 (one
    child's two studies in one flat folder), and a folder of junk (text, truncated copies)."""
    base = tmp_path_factory.mktemp("manifest")
    root = base / "tree"
    _write(root / "A" / "axial", 40, seed="A")
    _write(root / "A" / "coronal", 48, CORONAL, seed="A", desc="coronal")
    _write(root / "A" / "thick", 24, np.diag([0.7, 0.7, 8.0, 1.0]), seed="A", desc="thick")
    _write(root / "A" / "scout", 3, seed="A", desc="scout")
    _edit(root / "A" / "scout", _as_localiser)
    _write(
        root / "B" / "tilted",
        30,
        tilted_affine(15.0, 2.5),
        seed="B",
        age=7.25,
        sex="M",
        pid="PID-B-9032",
    )
    _edit(_write(root / "C" / "mr", 20, seed="C", pid="PID-C-1212"), _as_mr)
    _edit(
        _write(root / "E" / "axial", 12, seed="E", age=30.0, pid="PID-E-3434"),
        _drop("PatientBirthDate"),
    )
    _edit(
        _write(root / "F" / "axial", 12, seed="F", pid="PID-F-5656"),
        _drop("PatientBirthDate", "PatientAge"),
    )
    flat = root / "flat"
    flat.mkdir()
    for name, n, age in (("d1", 20, 40.5), ("d2", 12, 44.0)):
        staged = _write(base / "staging" / name, n, seed=name, age=age, sex="M", pid=PATIENT_D)
        for path in sorted(staged.iterdir()):
            path.rename(flat / f"{name}_{path.name}")
    junk = root / "misc"
    junk.mkdir()
    (junk / "notes.txt").write_text("exported by the PACS, see the cover sheet\n")
    data = (root / "A" / "axial" / "IM0001.dcm").read_bytes()
    pixels = data.index(b"\xe0\x7f\x10\x00OW")  # the PixelData element, explicit VR
    (junk / "cut_header.dcm").write_bytes(data[: pixels - 40])
    (junk / "cut_pixels.dcm").write_bytes(data[:-1000])

    out = base / "out" / "cohort.csv"
    manifest, skipped = mf.build_manifest(root, out, KEY, site="north", progress=False)
    folders = (
        "A/axial",
        "A/coronal",
        "A/thick",
        "A/scout",
        "B/tilted",
        "C/mr",
        "E/axial",
        "F/axial",
    )
    digests = {name: ctio.series_digest(_series_uid(root / name)) for name in folders}
    digests |= {name: ctio.series_digest(_series_uid(flat, f"{name}_")) for name in ("d1", "d2")}
    return {
        "base": base,
        "root": root,
        "out": out,
        "manifest": manifest,
        "skipped": skipped,
        "digests": digests,
    }


def _as_mr(ds) -> None:
    ds.Modality = "MR"


def _as_localiser(ds) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]


def _rows(tree) -> dict[str, dict]:
    """The manifest's rows by series name."""
    by_digest = {d: name for name, d in tree["digests"].items()}
    return {by_digest[r["series"]]: r for r in tree["manifest"].to_dict("records")}


def test_the_head_ct_series_of_each_study_is_chosen(tree):
    rows = _rows(tree)
    assert sorted(rows) == ["A/axial", "B/tilted", "E/axial", "d1", "d2"]
    expected = {  # series -> (image, slices)
        "A/axial": ("../tree/A/axial", 40),
        "B/tilted": ("../tree/B/tilted", 30),
        "E/axial": ("../tree/E/axial", 12),
        "d1": ("../tree/flat", 20),
        "d2": ("../tree/flat", 12),
    }
    assert {k: (r["image"], r["n_slices"]) for k, r in rows.items()} == expected
    assert list(tree["manifest"].columns) == mf.MANIFEST_COLUMNS
    assert (tree["manifest"]["site"] == "north").all()
    written = pd.read_csv(tree["out"], dtype=str, keep_default_na=False)
    assert written["series"].tolist() == tree["manifest"]["series"].tolist()


def test_every_other_series_and_file_is_skipped_with_its_reason(tree):
    skipped = tree["skipped"]
    assert list(skipped.columns) == mf.SKIPPED_COLUMNS
    found = {(r["path"], r["reason"]) for r in skipped.to_dict("records")}
    truncated = {(p, r) for p, r in found if p.startswith("misc/cut_")}
    assert found - truncated == {
        ("A/coronal", NOT_AXIAL),
        ("A/thick", "fewer slices (24) than the chosen series (40)"),
        ("A/scout", "localiser"),
        ("C/mr", "modality MR"),
        ("C/mr", mf.NO_SERIES),
        ("F/axial", NO_AGE),
        ("misc/notes.txt", "not a DICOM file"),
    }
    assert {p for p, _ in truncated} == {"misc/cut_header.dcm", "misc/cut_pixels.dcm"}
    for _, reason in truncated:
        assert reason.startswith("unreadable DICOM: truncated"), reason
    digests, rows = tree["digests"], skipped.set_index(["path", "reason"])
    assert rows.loc[("A/coronal", NOT_AXIAL), "series"] == digests["A/coronal"]
    assert rows.loc[("A/coronal", NOT_AXIAL), "files"] == 48
    assert rows.loc[("A/scout", "localiser"), "files"] == 3
    assert rows.loc[("C/mr", "modality MR"), "modality"] == "MR"
    assert rows.loc[("C/mr", mf.NO_SERIES), "series"] == ""
    assert rows.loc[("F/axial", NO_AGE), "series"] == digests["F/axial"]
    # a study's series are listed under the study's pseudonym; loose files under none
    study_a = _rows(tree)["A/axial"]["subject_id"]
    assert set(skipped[skipped.path.str.startswith("A/")].subject_id) == {study_a}
    assert set(skipped[skipped.path.str.startswith("misc/")].subject_id) == {""}
    assert skipped.equals(skipped.sort_values(["path", "subject_id", "series", "reason"]))


def test_ages_sex_and_gantry_tilt_come_from_the_headers(tree):
    rows = _rows(tree)
    planted = {"A/axial": 18.7, "B/tilted": 7.25, "E/axial": 30.0, "d1": 40.5, "d2": 44.0}
    for name, age in planted.items():
        assert rows[name]["age_months"] == pytest.approx(age, abs=0.1), name
    assert {k: r["age_from"] for k, r in rows.items()} == {
        **dict.fromkeys(planted, "birth and study dates"),
        "E/axial": "PatientAge",
    }
    assert {k: r["sex"] for k, r in rows.items()} == {
        "A/axial": "F",
        "B/tilted": "M",
        "E/axial": "F",
        "d1": "M",
        "d2": "M",
    }
    assert rows["B/tilted"]["gantry_tilt_deg"] == pytest.approx(15.0, abs=0.05)
    assert all(rows[k]["gantry_tilt_deg"] == 0 for k in rows if k != "B/tilted")


def test_ids_are_keyed_pseudonyms(tree, tmp_path):
    table = tree["manifest"]
    assert table["subject_id"].str.fullmatch(r"s[0-9a-f]{12}").all()
    assert table["patient"].str.fullmatch(r"p[0-9a-f]{12}").all()
    assert table["subject_id"].is_unique
    rows = _rows(tree)
    assert rows["d1"]["patient"] == rows["d2"]["patient"]  # one child's two studies
    assert len({rows[k]["patient"] for k in ("A/axial", "B/tilted", "E/axial", "d1")}) == 4

    before = tree["out"].read_bytes()
    same, _ = mf.build_manifest(tree["root"], tree["out"], KEY, site="north", progress=False)
    assert tree["out"].read_bytes() == before  # deterministic
    pd.testing.assert_frame_equal(same, table)
    other, _ = mf.build_manifest(tree["root"], tmp_path / "o.csv", KEY + "!", progress=False)
    assert set(other["subject_id"]).isdisjoint(table["subject_id"])
    assert set(other["patient"]).isdisjoint(table["patient"])
    assert sorted(other["series"]) == sorted(table["series"])  # a digest, not keyed


def test_the_series_digest_picks_one_series_of_a_flat_folder(tree):
    flat, digests = tree["root"] / "flat", tree["digests"]
    assert ctio.read_ct(flat).image.GetSize()[2] == 20  # the most slices, without a digest
    assert ctio.read_ct(flat, series=digests["d2"]).image.GetSize()[2] == 12
    assert ctio.read_ct(flat, series=digests["d1"]).image.GetSize()[2] == 20
    with pytest.raises(ctio.ImageError, match="no series 0000000000000000 in the folder"):
        ctio.read_ct(flat, series="0" * 16)
    assert ctio.read_dicom_age_sex(flat, series=digests["d2"]) == (44.0, "M")
    assert ctio.read_dicom_age_sex(flat, series=digests["d1"]) == (40.0, "M")
    with pytest.raises(ctio.ImageError, match="no series"):
        ctio.read_dicom_age_sex(flat, series="0" * 16)
    with pytest.raises(ctio.ImageError, match="DICOM folder only"):
        ctio.read_ct(tree["out"], series=digests["d1"])


def test_the_manifest_validates_with_its_series(tree):
    valid, excluded = cohort_manifest.validate_manifest(tree["out"])
    assert excluded.empty
    assert sorted(valid["subject_id"]) == sorted(tree["manifest"]["subject_id"])
    assert all(os.path.isdir(p) for p in valid["image_path"])
    # the DICOM fallback for an empty age reads the row's own series of the flat folder
    table = pd.read_csv(tree["out"], dtype=str, keep_default_na=False)
    table["age_months"] = ""
    blank = tree["out"].with_name("blank.csv")
    table.to_csv(blank, index=False)
    valid, _ = cohort_manifest.validate_manifest(blank)
    ages = dict(zip(valid["series"], valid["age_months"], strict=True))
    assert ages[tree["digests"]["d1"]] == 40.0 and ages[tree["digests"]["d2"]] == 44.0


def test_step_01_reads_the_series_of_its_row(tree, tmp_path, monkeypatch):
    from ctbrainage.core.config import load_profile
    from ctbrainage.steps import s01_preprocess

    profile = load_profile("tiny", {"run_dir": str(tmp_path / "run"), "data": str(tree["out"])})
    valid, _ = cohort_manifest.validate_manifest(tree["out"])
    valid.loc[valid["n_slices"] == "40", "series"] = ""  # a row without one
    captured: list[dict] = []
    monkeypatch.setattr(
        s01_preprocess,
        "map_subjects",
        lambda job, items, *a, **k: captured.extend(items) or Mapped([]),
    )
    s01_preprocess._preprocess(profile, valid, progress=False)
    by_id = {item["subject_id"]: item for item in captured}
    for row in valid.itertuples():
        item = by_id[row.subject_id]
        if row.series:
            assert item["series"] == row.series == item["settings"]["series"]
        else:
            assert item["series"] is None and "series" not in item["settings"]

    calls = []

    def fake_read_ct(path, series=None):
        calls.append(series)
        raise ctio.ImageError("stop here")

    monkeypatch.setattr(ctio, "read_ct", fake_read_ct)
    item = next(i for i in captured if i["series"])
    with pytest.raises(ValueError, match="stop here"):
        s01_preprocess._preprocess_subject(item)
    assert calls == [item["series"]]


def test_no_identifier_reaches_any_output(tree, tmp_path, capsys, monkeypatch):
    values = dicom_identifiers(tree["root"])
    uids = {v for v in values if re.fullmatch(r"[0-9.]{20,}", v)}
    assert len(uids) > 200  # every file's own UID, the series', studies' and frames'
    assert {"PID-A-4417", PATIENT_D, STUDY_DATE, "Synthetic Children's Hospital"} <= values
    raw = b"".join(p.read_bytes() for p in (tree["root"] / "A" / "axial").iterdir())
    assert all(v.encode() in raw for v in ("PID-A-4417", STUDY_DATE, "SYNTHCT01"))

    monkeypatch.setenv(mf.KEY_ENV, KEY)
    out = tmp_path / "cli" / "cohort.csv"
    assert mf.main([str(tree["root"]), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    console = tmp_path / "console.txt"
    console.write_text(printed.out + printed.err)
    outputs = [tree["out"], mf.skipped_path(tree["out"]), out, mf.skipped_path(out), console]
    assert_no_identifiers(outputs, values)


def test_the_identifier_scan_finds_values_in_any_encoding_and_archive(tmp_path):
    secret = "Testperson^Bchild"
    (tmp_path / "plain.txt").write_text("nothing here")
    assert_no_identifiers([tmp_path], [secret])
    (tmp_path / "data.bin").write_bytes(gzip.compress(secret.upper().encode()))
    with pytest.raises(AssertionError, match="gunzipped"):
        assert_no_identifiers([tmp_path], [secret])
    (tmp_path / "data.bin").unlink()
    with zipfile.ZipFile(tmp_path / "bundle.zip", "w") as archive:
        archive.writestr("inner/table.csv.gz", gzip.compress(secret.encode("utf-16-le")))
    with pytest.raises(AssertionError, match=r"bundle\.zip/inner/table\.csv\.gz"):
        assert_no_identifiers([tmp_path], [secret])
    (tmp_path / "bundle.zip").unlink()
    uid = "1.2.826.0.1.3680043.8.498.12345"  # digits and dots: looked up in runs of them
    for blob in (b"\xff\x01" + uid.encode() + b".7\x00", ("x" + uid + "7").encode("utf-16-le")):
        (tmp_path / "volume.bin").write_bytes(blob)
        assert_no_identifiers([tmp_path], ["1.2.826.0.1.3680043.8.498.99"])
        with pytest.raises(AssertionError, match="volume.bin"):
            assert_no_identifiers([tmp_path], [uid])
    with pytest.raises(AssertionError, match="too short"):
        assert_no_identifiers([tmp_path], ["F"])


def test_the_command_line_summary_and_exit_codes(tree, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(mf.KEY_ENV, raising=False)
    out = tmp_path / "cohort.csv"
    argv = [str(tree["root"]), "--out", str(out), "--no-progress"]
    assert mf.main(argv) == 2
    assert mf.KEY_ENV in capsys.readouterr().err and not out.exists()
    assert mf.main([*argv, "--key", "short"]) == 2
    assert "too short (5 characters; at least 8)" in capsys.readouterr().err
    assert mf.main([*argv, "--key", KEY, "--site", "south"]) == 0
    summary = capsys.readouterr().out.strip()
    assert summary == (
        f"7 studies → 5 subjects in {out}; 9 series/files skipped"
        f" (see {tmp_path / 'cohort_skipped.csv'})"
    )
    assert (pd.read_csv(out)["site"] == "south").all()

    monkeypatch.setenv(mf.KEY_ENV, KEY)
    assert mf.main([str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "DICOM folder not found" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert mf.main([str(empty), "--out", str(out)]) == 2
    (empty / "readme.txt").write_text("no scans")
    assert mf.main([str(empty), "--out", str(out)]) == 2
    assert capsys.readouterr().err.count("no DICOM files under") == 2


def test_a_tree_without_a_head_ct_fails_with_its_skipped_table(tree, tmp_path, capsys):
    root = tmp_path / "mr_only"
    shutil.copytree(tree["root"] / "C", root / "C")
    out = root / "cohort.csv"  # inside the tree: not read as input on a rerun
    for _ in range(2):
        assert mf.main([str(root), "--out", str(out), "--key", KEY, "--no-progress"]) == 1
        assert "1 study → 0 subjects" in capsys.readouterr().out
        assert pd.read_csv(out).empty
        skipped = pd.read_csv(mf.skipped_path(out), dtype=str, keep_default_na=False)
        assert skipped["reason"].tolist() == [mf.NO_SERIES, "modality MR"]  # study, series


def test_refusals_raise_before_writing(tree, tmp_path):
    out = tmp_path / "cohort.csv"
    for key, message in ((None, "secret key is needed"), ("", "secret key"), ("1234567", "short")):
        with pytest.raises(mf.BuildError, match=message):
            mf.build_manifest(tree["root"], out, key, progress=False)
    with pytest.raises(mf.BuildError, match="a folder"):
        mf.build_manifest(tree["root"], tmp_path, KEY, progress=False)
    assert not out.exists() and not mf.skipped_path(out).exists()


def test_error_messages_lose_values_that_may_come_from_headers():
    err = ValueError("invalid value '1.2.840.99.1' for DA 20230115 of PID-A-4417 at byte 12")
    assert mf._scrub(err) == "invalid value '…' for DA # of # at byte #"


def test_python_dash_m_runs_the_command(tree):
    out = tree["base"] / "out_cli" / "cohort.csv"  # as deep as the fixture's: the same paths
    env = {**os.environ, mf.KEY_ENV: KEY}
    command = [
        sys.executable,
        "-m",
        "ctbrainage.apps.dicom_index",
        str(tree["root"]),
        "--out",
        str(out),
    ]
    done = subprocess.run(
        [*command, "--site", "north"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "5 subjects" in done.stdout
    assert out.read_bytes() == tree["out"].read_bytes()


def test_paths_that_show_identifiers_are_refused_or_withheld(tmp_path):
    root = tmp_path / "export"
    _write(root / "study1" / "ct", 12, seed="P1", pid="MRN-778812")
    (root / "junk").mkdir()
    (root / "junk" / "1.2.840.113619.2.55.3.2831.dcm").write_bytes(b"not a DICOM file at all")
    manifest, skipped = mf.build_manifest(root, tmp_path / "ok.csv", KEY, progress=False)
    assert len(manifest) == 1
    assert list(skipped["path"]) == [mf.WITHHELD]  # the UID-named junk file
    assert "113619" not in (tmp_path / "ok_skipped.csv").read_text()
    _write(root / "MRN-778812" / "ct", 12, seed="P2", pid="MRN-778812")  # a folder named by ID
    with pytest.raises(mf.BuildError, match=r"1 series folder\(s\) .* are named with header"):
        mf.build_manifest(root, tmp_path / "bad.csv", KEY, progress=False)
    assert not (tmp_path / "bad.csv").exists()
