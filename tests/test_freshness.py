"""freshness.Record: a result is fresh while its settings, code version and input contents are
those recorded and its outputs exist; input names are relative to the record's root."""

from __future__ import annotations

import os
import shutil

import pytest

from ctbrainage.core.freshness import Record

SETTINGS = {"size": 32, "fill": "noise", "edges": [0, 12, 24]}
VERSION = 3


@pytest.fixture
def made(tmp_path):
    """A run directory with two file inputs, a DICOM-like folder input and one output, and the
    record of the output written after them."""
    run = tmp_path / "run"
    (run / "dicom").mkdir(parents=True)
    (run / "a.txt").write_text("alpha")
    (run / "b.txt").write_text("beta")
    for i in range(3):
        (run / "dicom" / f"IM{i:04d}").write_bytes(bytes([i]) * 64)
    (run / "out.csv").write_text("result")
    record = Record(run / "records" / "step.json", run)
    inputs = [run / "a.txt", run / "b.txt", run / "dicom"]
    record.write(SETTINGS, VERSION, record.fingerprints(inputs), {"rows": 7})
    return run, record, inputs, [run / "out.csv"]


def fresh(record, inputs, outputs, settings=SETTINGS, version=VERSION):
    return record.fresh(settings, version, inputs, outputs)


def later(path) -> None:
    """Move ``path``'s modification time one second on (a touch that certainly registers)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_fresh_after_write_returns_the_stored_result(made):
    run, record, inputs, outputs = made
    assert fresh(record, inputs, outputs) == {"rows": 7}
    assert fresh(record, list(reversed(inputs)), outputs) == {"rows": 7}  # order is irrelevant


def test_no_record_is_not_fresh(made, tmp_path):
    run, _, inputs, outputs = made
    assert fresh(Record(run / "records" / "other.json", run), inputs, outputs) is None
    (run / "records" / "broken.json").write_text("{ not json")
    assert fresh(Record(run / "records" / "broken.json", run), inputs, outputs) is None


def test_stale_when_a_setting_changes(made):
    _, record, inputs, outputs = made
    assert fresh(record, inputs, outputs, settings={**SETTINGS, "size": 24}) is None
    assert fresh(record, inputs, outputs, settings={**SETTINGS, "edges": [0, 12]}) is None
    assert fresh(record, inputs, outputs, settings={**SETTINGS, "extra": 1}) is None
    # the same settings in another key order are the same settings
    assert fresh(record, inputs, outputs, settings=dict(reversed(SETTINGS.items()))) is not None


def test_stale_when_the_code_version_changes(made):
    _, record, inputs, outputs = made
    assert fresh(record, inputs, outputs, version=VERSION + 1) is None


def test_stale_when_an_input_content_changes(made):
    run, record, inputs, outputs = made
    (run / "a.txt").write_text("alphA")  # same size: only the hash tells
    later(run / "a.txt")
    assert fresh(record, inputs, outputs) is None


def test_stale_when_an_input_grows_with_the_same_mtime(made):
    run, record, inputs, outputs = made
    st = (run / "b.txt").stat()
    (run / "b.txt").write_text("beta and more")
    os.utime(run / "b.txt", ns=(st.st_atime_ns, st.st_mtime_ns))  # size alone gives it away
    assert fresh(record, inputs, outputs) is None


def test_stale_when_an_output_is_missing(made):
    run, record, inputs, outputs = made
    (run / "out.csv").unlink()
    assert fresh(record, inputs, outputs) is None
    assert fresh(record, inputs, outputs=[]) is not None  # only the outputs named count


def test_stale_when_an_input_disappears(made):
    run, record, inputs, outputs = made
    (run / "b.txt").unlink()
    assert fresh(record, inputs, outputs) is None  # the same names, one of them gone
    assert fresh(record, inputs[:1] + inputs[2:], outputs) is None  # one name fewer


def test_stale_when_an_input_appears(made):
    run, record, inputs, outputs = made
    (run / "c.txt").write_text("gamma")
    assert fresh(record, [*inputs, run / "c.txt"], outputs) is None  # one name more


def test_a_missing_input_that_stays_missing_is_fresh_and_one_that_appears_is_not(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "there.txt").write_text("x")
    record = Record(run / "records" / "r.json", run)
    inputs = [run / "there.txt", run / "absent.txt"]
    record.write(SETTINGS, VERSION, record.fingerprints(inputs))
    assert fresh(record, inputs, []) == {}
    (run / "absent.txt").write_text("now here")
    assert fresh(record, inputs, []) is None


def test_fresh_when_an_input_is_rewritten_or_touched_with_identical_content(made):
    run, record, inputs, outputs = made
    later(run / "a.txt")  # touched
    (run / "b.txt").unlink()
    (run / "b.txt").write_text("beta")  # rewritten: a new file, the same bytes
    later(run / "b.txt")
    assert fresh(record, inputs, outputs) == {"rows": 7}
    # refreshing the fingerprints (as a rerun that rewrites the record does) keeps it fresh
    record.write(SETTINGS, VERSION, record.fingerprints(inputs), {"rows": 7})
    assert fresh(record, inputs, outputs) == {"rows": 7}


def test_fresh_when_a_folder_input_is_unchanged_or_only_touched(made):
    run, record, inputs, outputs = made
    assert fresh(record, [run / "dicom"], []) is None  # a different set of inputs
    for path in (run / "dicom").iterdir():
        later(path)
    assert fresh(record, inputs, outputs) == {"rows": 7}


def test_stale_when_one_file_of_a_folder_input_changes(made):
    run, record, inputs, outputs = made
    (run / "dicom" / "IM0001").write_bytes(b"\x07" * 64)  # same size, new content
    later(run / "dicom" / "IM0001")
    assert fresh(record, inputs, outputs) is None


def test_stale_when_a_file_is_added_to_or_removed_from_a_folder_input(made):
    run, record, inputs, outputs = made
    (run / "dicom" / "IM0003").write_bytes(b"\x03" * 64)
    assert fresh(record, inputs, outputs) is None
    (run / "dicom" / "IM0003").unlink()
    assert fresh(record, inputs, outputs) == {"rows": 7}
    (run / "dicom" / "IM0000").unlink()
    assert fresh(record, inputs, outputs) is None


def test_input_keys_are_relative_to_the_root_so_a_moved_run_stays_fresh(made, tmp_path):
    run, record, inputs, outputs = made
    keys = set(record.fingerprints(inputs))
    assert keys == {"a.txt", "b.txt", "dicom"}
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(run, moved)  # copy2: the mtimes travel too
    shutil.rmtree(run)
    again = Record(moved / "records" / "step.json", moved)
    moved_inputs = [moved / p.relative_to(run) for p in inputs]
    assert fresh(again, moved_inputs, [moved / "out.csv"]) == {"rows": 7}
    # a move that does not keep mtimes is still fresh: the contents are hashed again
    for path in moved.rglob("*"):
        if path.is_file():
            later(path)
    assert fresh(again, moved_inputs, [moved / "out.csv"]) == {"rows": 7}


def test_inputs_outside_the_root_keep_their_absolute_path(tmp_path):
    run, outside = tmp_path / "run", tmp_path / "data" / "scan.nii.gz"
    run.mkdir()
    outside.parent.mkdir()
    outside.write_bytes(b"scan")
    record = Record(run / "records" / "r.json", run)
    prints = record.fingerprints([outside])
    assert list(prints) == [str(outside.resolve())]
    record.write(SETTINGS, VERSION, prints)
    assert fresh(record, [outside], []) == {}
    outside.write_bytes(b"SCAN!")
    assert fresh(record, [outside], []) is None
