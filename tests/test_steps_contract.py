"""The step contract's subject flow: exclusions listed once, with step and reason; later steps
work on the subjects no earlier step excluded."""

import pandas as pd
import pytest

from ctbrainage.core.config import load_profile
from ctbrainage.core.layout import RunLayout
from ctbrainage.steps import contract, s01_preprocess, s02_lobes, s05_perturbation


@pytest.fixture
def layout(tmp_path):
    layout = RunLayout(tmp_path)
    cohort = pd.DataFrame({"subject_id": ["a", "b", "c", "d"], "age_months": [1, 2, 3, 4]})
    cohort.to_csv(layout.cohort, index=False)
    return layout


def test_no_exclusions_gives_a_header_only_table(layout):
    mine = contract.write_exclusions(layout, s01_preprocess.STEP, {})
    assert mine.empty
    assert layout.exclusions.read_text().strip() == "subject_id,step,reason"
    assert contract.kept_subjects(layout, s02_lobes.STEP) == ["a", "b", "c", "d"]


def test_exclusions_flow_downstream_and_each_subject_is_listed_once(layout):
    invalid = pd.DataFrame({"subject_id": ["a"], "reason": ["age missing"], "site": ["X"]})
    contract.write_exclusions(layout, s01_preprocess.STEP, invalid)
    contract.write_exclusions(layout, s02_lobes.STEP, {"b": "b: empty lobe"})
    contract.write_exclusions(layout, s05_perturbation.STEP, {"c": "c: unreadable"})
    table = contract.read_exclusions(layout)
    assert table[["subject_id", "step"]].values.tolist() == [
        ["a", "01_preprocess"],
        ["b", "02_lobes"],
        ["c", "05_perturbation"],
    ]
    assert table.loc[0, "site"] == "X"  # the manifest's columns of an invalid row are kept
    assert contract.kept_subjects(layout, s02_lobes.STEP) == ["b", "c", "d"]
    assert contract.kept_subjects(layout, s05_perturbation.STEP) == ["c", "d"]

    # step 02 reruns: b is fine now, c fails there; c's later exclusion is no longer listed
    contract.write_exclusions(layout, s02_lobes.STEP, {"c": "c: registration failed"})
    table = contract.read_exclusions(layout)
    assert table[["subject_id", "step"]].values.tolist() == [
        ["a", "01_preprocess"],
        ["c", "02_lobes"],
    ]
    assert table["subject_id"].is_unique
    assert contract.kept_subjects(layout, s05_perturbation.STEP) == ["b", "d"]


def test_a_step_reads_only_the_settings_it_declares(tmp_path):
    base = load_profile("tiny", {"run_dir": str(tmp_path)})
    changed = load_profile("tiny", {"run_dir": str(tmp_path), "stats.alpha": 0.1})
    for step in (s01_preprocess.STEP, s02_lobes.STEP, s05_perturbation.STEP):
        assert step.settings_of(base) == step.settings_of(changed)
    assert s01_preprocess.STEP.settings_of(base) != s01_preprocess.STEP.settings_of(
        load_profile("tiny", {"run_dir": str(tmp_path), "preprocess.ptile_low": 5.0})
    )


def test_kept_subjects_needs_a_validated_cohort(tmp_path):
    with pytest.raises(FileNotFoundError, match="run step 01"):
        contract.kept_subjects(RunLayout(tmp_path), s02_lobes.STEP)
