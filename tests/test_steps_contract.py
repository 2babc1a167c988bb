"""The step contract's subject flow: exclusions listed once, with step and reason; later steps
work on the subjects no earlier step excluded."""

import errno
import json
from concurrent.futures.process import BrokenProcessPool

import pandas as pd
import pytest

from ctbrainage.core import workers
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


# ---- the step base: the view, freshness, the record, the error policy ---------------------------
def _toy_step(name="05_toy", **kwargs) -> contract.Step:
    """A step over the layout's cohort that writes one table; its subjects' work is ``work``."""
    step = contract.Step(name, settings=("seed", "perturb.fill"), version="1", **kwargs)

    @step.inputs
    def inputs(cfg):
        return [RunLayout(cfg.run_path).cohort]

    @step.outputs
    def outputs(cfg):
        return [RunLayout(cfg.run_path).root / "toy.csv"]

    return step


def _compute_with(work):
    """A compute that runs ``work(sid)`` for every cohort subject, as map_subjects would."""

    def compute(cfg):
        layout = RunLayout(cfg.run_path)
        ids = pd.read_csv(layout.cohort, dtype={"subject_id": str})["subject_id"]
        done = workers.map_subjects(work, [{"subject_id": s} for s in ids], 1, progress=False)
        contract.write_table(layout.root / "toy.csv", pd.DataFrame(done.results))
        return contract.Outcome(failures=done.errors)

    return compute


def test_a_step_that_reads_an_undeclared_setting_fails(layout):
    profile = load_profile("tiny", {"run_dir": str(layout.root)})
    step = _toy_step()

    def compute(cfg):
        assert cfg.seed == profile.seed and cfg.perturb.fill == profile.perturb.fill
        cfg.train.epochs  # noqa: B018 - not declared by the toy step
        return None

    with pytest.raises(contract.UndeclaredSettingError, match=r"05_toy reads .*'train'"):
        step.run(profile, compute)
    view = step.view(profile)
    with pytest.raises(contract.UndeclaredSettingError, match=r"'perturb.repeats'"):
        view.perturb.repeats  # noqa: B018 - a sibling of a declared setting
    assert view.run_path == profile.run_path  # where the run lies is not a setting
    assert not step.record(layout).path.exists()  # nothing recorded


def test_a_bug_in_a_subjects_work_fails_the_step_and_is_never_recorded(layout):
    profile = load_profile("tiny", {"run_dir": str(layout.root)})

    def work(item):
        if item["subject_id"] == "b":
            return {}["age"]  # a KeyError: a bug, not a problem of b's data
        return {"subject_id": item["subject_id"]}

    step = _toy_step()
    with pytest.raises(KeyError, match="age"):
        step.run(profile, _compute_with(work))
    assert not step.record(layout).path.exists()
    assert not layout.exclusions.exists()


def test_a_bug_in_a_worker_process_stops_the_job_with_its_traceback():
    items = [{"subject_id": s} for s in "abcd"]
    with pytest.raises(KeyError) as raised:
        workers.map_subjects(_key_error_for_c, items, workers=2, progress=False)
    assert "_key_error_for_c" in str(raised.value.__cause__)  # the worker's traceback


def _key_error_for_c(item):
    if item["subject_id"] == "c":
        return {}["missing"]
    return {"subject_id": item["subject_id"]}


def test_a_data_problem_excludes_the_subject_and_the_step_is_fresh(layout):
    profile = load_profile("tiny", {"run_dir": str(layout.root)})

    def work(item):
        if item["subject_id"] == "b":
            raise ValueError("b: empty lobe")
        return {"subject_id": item["subject_id"]}

    step = _toy_step()
    outcome = step.run(profile, _compute_with(work))
    assert list(outcome.failures) == ["b"]
    excluded = contract.read_exclusions(layout)
    assert excluded[["subject_id", "step", "reason"]].values.tolist() == [
        ["b", "05_toy", "b: empty lobe"]
    ]
    assert step.is_fresh(profile)
    assert step.run(profile, _compute_with(work)) is None  # fresh: nothing computed
    changed = load_profile("tiny", {"run_dir": str(layout.root), "perturb.fill": "zero"})
    assert not step.is_fresh(changed)
    undeclared = load_profile("tiny", {"run_dir": str(layout.root), "train.epochs": 9})
    assert step.is_fresh(undeclared)


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        BrokenProcessPool("a worker was killed"),
        TimeoutError("timed out"),
    ],
    ids=["disk full", "killed worker", "timeout"],
)
def test_a_transient_failure_excludes_for_now_and_is_retried(layout, error):
    profile = load_profile("tiny", {"run_dir": str(layout.root)})
    calls = []

    def work(item):
        calls.append(item["subject_id"])
        if item["subject_id"] == "c" and calls.count("c") == 1:
            raise error
        return {"subject_id": item["subject_id"]}

    step = _toy_step()
    step.run(profile, _compute_with(work))
    assert contract.read_exclusions(layout)["subject_id"].tolist() == ["c"]
    assert json.loads(step.record(layout).path.read_text())["result"]["retry"] == ["c"]
    assert not step.is_fresh(profile)  # waits for the retry
    step.run(profile, _compute_with(work))
    assert contract.read_exclusions(layout).empty and step.is_fresh(profile)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ValueError("bad data"), "data"),
        (OSError(errno.ENOSPC, "full"), "transient"),
        (OSError(errno.EACCES, "denied"), "bug"),
        (BrokenProcessPool("killed"), "transient"),
        (TimeoutError(), "transient"),
        (KeyError("x"), "bug"),
        (TypeError("x"), "bug"),
    ],
)
def test_the_error_policy_classifies_each_kind(error, kind):
    assert workers.transient(error) == (kind == "transient")
    assert workers.set_aside(error) == (kind != "bug")
    if kind == "bug":
        with pytest.raises(type(error)):
            workers.failures({"a": error})
    else:
        reasons, retry = workers.failures({"a": error})
        assert reasons["a"].startswith("a: ") and retry == (["a"] if kind == "transient" else [])


def test_a_required_step_that_is_not_fresh_stops_the_step(layout):
    profile = load_profile("tiny", {"run_dir": str(layout.root)})
    upstream = _toy_step("04_upstream")
    step = _toy_step("05_toy", requires=(upstream,))
    with pytest.raises(contract.StaleInputError, match=r"04_upstream.*--from 4 --to 4"):
        step.run(profile, _compute_with(lambda item: item))
    upstream.run(profile, _compute_with(lambda item: item))
    assert step.run(profile, _compute_with(lambda item: item)) is not None


def test_version_has_one_type():
    with pytest.raises(TypeError, match="version must be a string"):
        contract.Step("05_x", settings=(), version=1)
    from ctbrainage.run.steps import MODULES, step_module

    assert all(isinstance(step_module(n).STEP.version, str) for n in MODULES)


def test_the_runner_does_not_take_a_bug_for_a_stale_step(layout, monkeypatch):
    from ctbrainage.run import steps

    profile = load_profile("tiny", {"run_dir": str(layout.root)})
    module = steps.step_module(4)
    monkeypatch.setattr(module, "is_fresh", lambda profile: {}["a bug"])
    with pytest.raises(KeyError, match="a bug"):
        steps.is_fresh(4, profile)
    monkeypatch.setattr(
        module, "is_fresh", lambda profile: contract.kept_subjects(layout, module.STEP)
    )
    layout.cohort.unlink()
    assert steps.is_fresh(4, profile) is False  # an upstream file is missing: not fresh


def test_an_on_request_step_read_before_it_ran_names_the_file_and_the_command(tmp_path):
    from ctbrainage.core.config import load_profile
    from ctbrainage.steps import s10_robustness

    profile = load_profile("tiny", {"run_dir": str(tmp_path / "run")})
    with pytest.raises(FileNotFoundError, match=r"step 10 has not run for run: robustness\.csv "
                       r"is missing \(python run_all\.py --from 10 --to 10\)"):  # fmt: skip
        s10_robustness.load(profile)
