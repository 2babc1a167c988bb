"""A user's own cohort never crashes the pipeline and never loses their files: settings checked
against their ranges before anything runs, the run directory kept away from the user's data,
one run_all per run directory, a failed fold reported as a failed step, an empty cohort stopped
with one sentence, and standard JSON only."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from helpers import parameter_notebook

from ctbrainage import run
from ctbrainage.core.atomic import strict_json
from ctbrainage.core.config import ProfileError, load_profile
from ctbrainage.core.layout import RunLayout
from ctbrainage.imaging.cohort_manifest import user_files_inside
from ctbrainage.run import execute, guard
from ctbrainage.steps import s01_preprocess


def _run(**options) -> tuple[int, str]:
    """``run.run_all`` quietly; returns (exit code, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = run.run_all(progress=False, **options)
    return code, err.getvalue()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train.epochs": -1}, "train.epochs: -1 is out of range; allowed: >= 1"),
        ({"train.lr": -1}, "train.lr: -1 is out of range; allowed: > 0"),
        ({"train.folds": 1}, "train.folds: 1 is out of range; allowed: >= 2"),
        ({"train.folds": 50}, "50 folds need at least as many children; the synthetic cohort "),
        ({"preprocess.size": 0}, "preprocess.size: 0 is out of range; allowed: >= 16"),
        ({"preprocess.spacing_mm": 0}, "preprocess.spacing_mm: 0 is out of range; allowed: > 0"),
        ({"stats.alpha": 1.5}, "stats.alpha: 1.5 is out of range; allowed: > 0 and < 1"),
        ({"age_range_months": [48, 0]}, "age_range_months: [48.0, 0.0] must be increasing"),
        ({"age_group_edges": [0, 12, 60]}, "must lie inside age_range_months [0.0, 48.0]"),
        ({"age_group_edges": [0, 24, 12]}, "must be at least 2 increasing values"),
        ({"preprocess.ptile_low": 99.9}, "ptile_low 99.9 must be below ptile_high 99.5"),
        ({"model.arch": "sfcn", "preprocess.size": 48}, "48 is not a multiple of 32"),
        ({"stacking.synthesis.channels": [4, 0]}, "is out of range; allowed: >= 1 (each value)"),
        ({"synth.gantry_tilt_fraction": 2}, "allowed: >= 0 and <= 1"),
    ],
)
def test_a_setting_out_of_its_range_is_refused_with_the_allowed_values(overrides, message):
    with pytest.raises(ProfileError) as refused:
        load_profile("tiny", overrides)
    assert message in str(refused.value)


def test_every_shipped_profile_is_within_range():
    from ctbrainage.core.config import stacking_size_problem

    for name in ("tiny", "demo", "paper", "benchmark"):
        assert load_profile(name).name == name
        assert stacking_size_problem(load_profile(name)) == ""
    # a size step 08 cannot use is refused only when step 08 is asked (see below)
    assert load_profile("tiny", {"preprocess.size": 48}).preprocess.size == 48


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(parameters={"train.epochs": run.Text("-1")}), "train.epochs: -1 is out of range"),
        (dict(parameters={"workers": run.Text("-1")}), "parameter workers: -1 is out of range"),
        (dict(jobs=-1), "--jobs -1: allowed >= 1, or 0 for the default"),
        (
            dict(first=8, last=8, parameters={"preprocess.size": run.Text("48")}),
            "preprocess.size: 48 is not a multiple of 32, which step 08 needs",
        ),
        (
            dict(first=8, last=8, parameters={"stacking.size": run.Text("64")}),
            "stacking.size: 64 is larger than preprocess.size 32",
        ),
        (
            dict(first=8, last=8, parameters={"stacking.size": run.Text("24")}),
            "stacking.size: 24 is not a multiple of 32, which step 08 needs",
        ),
        (dict(gpus=(-1,)), "--gpus -1: device numbers are >= 0"),
        (
            dict(first=9, last=9, parameters={"new_subjects": run.Text("0")}),
            "parameter new_subjects: 0 is out of range; allowed: >= 1",
        ),
    ],
)
def test_run_all_refuses_bad_values_before_anything_runs(tmp_path, options, message):
    run_dir = tmp_path / "run"
    code, err = _run(profile="tiny", run_dir=str(run_dir), **options)
    assert code == run.USAGE and message in err, err
    assert not run_dir.exists()


def test_gpus_that_cuda_does_not_see_are_refused(tmp_path):
    import torch

    count = torch.cuda.device_count()
    code, err = _run(profile="tiny", run_dir=str(tmp_path / "run"), gpus=(count,))
    seen = f"devices 0-{count - 1}" if count else "no CUDA device"
    assert code == run.USAGE and f"--gpus {count}: this machine has {seen}" in err
    assert not (tmp_path / "run").exists()


def _user_data(root):
    """A user's folder: a manifest beside a NIfTI file and a DICOM series folder."""
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.nii.gz").write_bytes(b"not read")
    (root / "dicom" / "b").mkdir(parents=True)
    manifest = root / "cohort.csv"
    manifest.write_text(
        "subject_id,age_months,sex,site,image\na,3,F,A,images/a.nii.gz\nb,5,M,A,dicom/b\n"
        "c,7,F,A,images/a.nii.gz\n"
    )
    return manifest


@pytest.mark.parametrize(
    ("inside", "why"),
    [
        ("", "it holds the manifest"),
        ("images", "it holds the image"),
        ("dicom/b/run", "it lies inside the image folder"),
    ],
)
def test_a_run_directory_over_the_users_files_is_refused(tmp_path, inside, why):
    manifest = _user_data(tmp_path / "data")
    before = {p: p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file()}
    run_dir = tmp_path / "data" / inside
    code, err = _run(profile="tiny", data=str(manifest), run_dir=str(run_dir))
    assert code == run.USAGE and why in err and "never writes the user's files" in err, err
    after = {p: p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file()}
    assert after == before


def test_a_run_directory_beside_the_users_files_is_accepted(tmp_path):
    manifest = _user_data(tmp_path / "data")
    assert user_files_inside(tmp_path / "data" / "run", manifest) is None
    plan = run.make_plan(
        run.Options(profile="tiny", data=str(manifest), run_dir=str(tmp_path / "r"))
    )
    assert plan.profile.data == str(manifest)


def test_a_manifest_with_fewer_rows_than_folds_is_refused(tmp_path):
    manifest = _user_data(tmp_path / "data")
    code, err = _run(
        profile="tiny", data=str(manifest), run_dir=str(tmp_path / "run"),
        parameters={"train.folds": run.Text("4")},
    )  # fmt: skip
    assert code == run.USAGE
    assert f"train.folds: 4 folds need at least as many children; the manifest {manifest}" in err


def test_a_cohort_left_empty_by_validation_stops_with_one_sentence(tmp_path):
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(
        "subject_id,age_months,sex,site,image\nA,3,F,X,missing.nii.gz\nB,60,M,X,other.nii.gz\n"
    )
    profile = load_profile("tiny", {"run_dir": str(tmp_path / "run"), "data": str(manifest)})
    with pytest.raises(s01_preprocess.EmptyCohortError) as stopped:
        s01_preprocess.run(profile, progress=False)
    layout = RunLayout(profile.run_path)
    assert str(stopped.value) == (
        f"no subject of {manifest} is left to analyse: all 2 were excluded (the first: A, image "
        f"not found: missing.nii.gz); every reason is in {layout.exclusions}"
    )
    excluded = pd.read_csv(layout.exclusions)
    assert list(excluded["subject_id"]) == ["A", "B"] and "outside" in excluded["reason"][1]


HOLDER = """
import sys, time
from ctbrainage.core.layout import RunLayout
from ctbrainage.run.guard import one_run_per_directory
with one_run_per_directory(RunLayout(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def test_one_run_all_per_run_directory_and_a_killed_holder_frees_it(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = _run(profile="tiny", run_dir=str(run_dir), first=4, last=4)
        assert code == run.USAGE
        assert f"is in use by another run_all.py (pid {holder.pid}, started " in err, err
        assert not (run_dir / "manifest.json").exists()  # the refused one wrote nothing
    finally:
        holder.kill()  # SIGKILL: no cleanup of its own
        holder.wait()
    layout = RunLayout(run_dir)
    started = time.perf_counter()
    with guard.one_run_per_directory(layout):  # the stale lock is taken over at once
        owner = json.loads(layout.run_owner.read_text())
    assert owner["pid"] != holder.pid and time.perf_counter() - started < 5
    assert not layout.run_owner.exists()


def test_strict_json_writes_no_nan_or_infinity_tokens():
    text = strict_json({"a": float("nan"), "b": [1.5, float("inf")], "c": {"d": -float("inf")}})
    assert json.loads(text, parse_constant=lambda token: pytest.fail(token)) == {
        "a": None,
        "b": [1.5, None],
        "c": {"d": None},
    }


@pytest.mark.integration
def test_every_json_of_a_run_and_its_bundle_is_standard(tiny_run, tiny_bundle):
    files = [*tiny_run.run_path.rglob("*.json"), *tiny_bundle.rglob("*.json")]
    assert len(files) > 20
    for path in files:
        json.loads(
            path.read_text(), parse_constant=lambda token, p=path: pytest.fail(f"{p}: {token}")
        )


@pytest.mark.integration
def test_a_failed_fold_with_folds_queued_is_a_failed_step(tmp_path):
    """One fold at a time, and the folds fail (no step 01 yet): the queued fold still runs (a
    fold that fails leaves the others to finish), the driver reports both failures, stops before
    step 04 and writes its pages instead of crashing."""
    run_dir = tmp_path / "run"
    code, err = _run(profile="tiny", run_dir=str(run_dir), first=3, last=4, jobs=1)
    assert code == run.FAILED
    for fold in (0, 1):
        assert f"FAILED 03_train_fold{fold} (cell error)" in err, err
    assert "no validated cohort" in err and "not run: 04_evaluate" in err
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    assert manifest["invocations"][-1]["status"] == "failed"
    steps = manifest["steps"]
    assert [steps[f"03_train_fold{k}"]["status"] for k in (0, 1)] == ["failed", "failed"]
    assert steps["03_train_fold0"]["error"]["cell_index"] == 5
    assert steps["04_evaluate"]["status"] == "not run"
    assert "<td class='failed'>failed</td>" in (run_dir / "index.html").read_text()


def test_the_profile_check_knows_what_the_pooled_networks_need():
    from ctbrainage.core.config import ModelConfig
    from ctbrainage.learn.networks import POOLINGS

    for arch in ("vgg8", "sfcn"):
        assert ModelConfig(arch=arch).grid_multiple == 2**POOLINGS
    assert ModelConfig(arch="resnet34").grid_multiple == 1


@pytest.mark.integration
def test_no_process_of_a_killed_run_survives_it(tmp_path):
    """SIGKILL to run_all's process group during step 01, while the kernel's workers run: the
    kernel (its own session) stops when its parent is gone, and its workers die with it."""
    import os
    import signal
    from pathlib import Path

    import psutil

    root = Path(__file__).resolve().parents[1]
    driver = subprocess.Popen(
        [sys.executable, str(root / "run_all.py"), "--profile", "tiny", "--to", "1",
         "--run-dir", str(tmp_path / "run"), "-p", "workers=2", "--no-progress"],
        cwd=root, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline, family = time.time() + 120, []
    while time.time() < deadline:
        family = psutil.Process(driver.pid).children(recursive=True)
        if sum(1 for p in family if p.ppid() != driver.pid) >= 2:  # the kernel's workers
            break
        time.sleep(0.2)
    assert len(family) >= 3, family  # the kernel and two workers (and maybe more)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    gone, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, [(p.pid, p.name()) for p in alive]


@pytest.mark.integration
def test_the_pipeline_runs_on_a_cohort_with_a_one_child_group_and_an_empty_group(
    tiny_run, tmp_path
):
    """The tiny run's scans less five children: 24-35 months empty, one child at 36-47. Every
    step and figure runs (01-03 by their functions, as in the session's tiny run; 05-07, where
    the group means are used, through the driver and their notebooks); Table 1 reports the two
    groups as too small; group-mean baselines of the one-child group come from the whole
    cohort, and the notebooks say so."""
    import nbformat

    from ctbrainage.core.config import load_profile
    from ctbrainage.steps import s01_preprocess, s02_lobes, s03_train

    synthetic = RunLayout(tiny_run.run_path).synthetic
    cohort = pd.read_csv(synthetic.manifest)
    dropped = cohort["age_months"].between(24, 48) & (
        cohort["age_months"] < cohort["age_months"].max()
    )
    thin = cohort[~dropped].assign(image=lambda t: [str(synthetic.root / p) for p in t["image"]])
    assert (thin["age_months"] >= 36).sum() == 1 and not thin["age_months"].between(24, 36).any()
    manifest = tmp_path / "thin.csv"
    thin.to_csv(manifest, index=False)
    run_dir = tmp_path / "run"
    cheaper = {  # (integrated gradients: a method with a group-mean baseline)
        "attribution.methods": run.Text("[integrated_gradients]"),
        "perturb.compare_fills": run.Text("[group_level]"),
    }
    profile = load_profile("tiny", {"run_dir": str(run_dir), "data": str(manifest)})
    s01_preprocess.run(profile, progress=False)
    s02_lobes.run(profile, progress=False)
    for fold in range(profile.train.folds):
        s03_train.run(profile, fold, progress=False)
    code, err = _run(
        profile="tiny", data=str(manifest), run_dir=str(run_dir), parameters=cheaper, first=5
    )
    assert code == 0, err
    table1 = pd.read_csv(run_dir / "table1.csv", dtype=str, keep_default_na=False)
    small = table1[table1["Age group"].isin(["24-35 months", "36-47 months"])]
    assert len(small) == 8 and (small["p-values"] == "n<3").all()
    assert (small["Cohen's d"] == "—").all()
    note = "too few children (fewer than 3) in age group 36-47 months (1 child)"
    for step, instead in [
        ("05_perturbation", "its lobe levels are the whole cohort's"),
        ("07_attribution", "their baseline is the mean input of the whole cohort"),
    ]:
        node = nbformat.read(run_dir / "notebooks" / f"{step}.ipynb", as_version=4)
        shown = "".join(str(o.get("text", "")) for c in node.cells for o in c.get("outputs", []))
        assert f"{note}: {instead}" in shown, step
    levels = pd.read_csv(run_dir / "perturbation_group_level.csv")
    assert levels[["pred_masked", "delta_ae", "fill_mean"]].notna().all().all()
    oldest = levels[levels["age_months"] >= 36].drop_duplicates("lobe").set_index("lobe")
    cohort_means = (
        levels.drop_duplicates(["subject_id", "lobe"]).groupby("lobe")["lobe_mean"].mean()
    )
    assert np.allclose(oldest["fill_mean"], cohort_means.loc[oldest.index], atol=1e-3)


def _disk_full(path):
    import errno

    return OSError(errno.ENOSPC, "No space left on device", str(path))


def test_a_full_disk_before_the_first_step_is_one_clear_message(tmp_path, monkeypatch):
    from ctbrainage.run import record

    def full(path, *args, **kwargs):
        raise _disk_full(path)

    monkeypatch.setattr(record, "atomic_write_json", full)
    run_dir = tmp_path / "run"
    code, err = _run(profile="tiny", run_dir=str(run_dir), first=4, last=4)
    assert code == run.FAILED
    assert err.startswith(f"run_all: error: cannot write {run_dir / 'manifest.json'}: No space")
    assert "MiB free of" in err and "Traceback" not in err
    assert "free space or choose another --run-dir" in err


def test_a_full_disk_during_a_step_leaves_the_manifest_failed_not_running(tmp_path, monkeypatch):
    def full(self):
        raise _disk_full(tmp_path / "run" / "notebooks" / "04_evaluate.ipynb")

    monkeypatch.setattr(execute._PhaseExecutor, "run", full)
    code, err = _run(profile="tiny", run_dir=str(tmp_path / "run"), first=4, last=4)
    assert code == run.FAILED and "04_evaluate.ipynb: No space left on device" in err
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    assert manifest["invocations"][-1]["status"] == "failed"


@pytest.mark.integration
def test_an_executed_notebook_that_cannot_be_written_keeps_the_good_one(tmp_path, monkeypatch):

    from ctbrainage.run import stored

    source = parameter_notebook(tmp_path / "step.ipynb", "print(x)")
    output = tmp_path / "out.ipynb"
    assert execute.execute_notebook(str(source), str(output), {"x": 2})["status"] == "done"
    good = output.read_bytes()

    def full(notebook, out=None):
        raise _disk_full(out)

    monkeypatch.setattr(stored, "store", full)
    outcome = execute.execute_notebook(str(source), str(output), {"x": 3})
    assert outcome["status"] == "failed"
    assert outcome["error"]["why"].startswith("OSError: [Errno 28] No space left on device")
    assert "MiB free of" in outcome["error"]["why"]
    assert output.read_bytes() == good  # not replaced by a partial notebook
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ipynb", "step.ipynb"]


@pytest.mark.integration
def test_kernels_started_at_once_each_get_their_own_sockets(tmp_path):
    """Folds side by side start their kernels at the same moment: each must answer (they used
    to share jupyter_client's ``kernel-ipc-N`` sockets in the working directory)."""
    from concurrent.futures import ThreadPoolExecutor

    from ctbrainage.run.plan import NOTEBOOK_DIR

    source = parameter_notebook(tmp_path / "step.ipynb", "print(x)")
    with ThreadPoolExecutor(3) as pool:
        outcomes = list(
            pool.map(
                lambda k: execute.execute_notebook(
                    str(source), str(tmp_path / f"{k}.ipynb"), {"x": k}
                ),
                range(3),
            )
        )
    assert [o["status"] for o in outcomes] == ["done"] * 3, outcomes
    assert not list(NOTEBOOK_DIR.glob("kernel-ipc*"))  # nothing left in the repository
