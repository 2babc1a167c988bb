"""run_all: the tiny pipeline end to end through ctbrainage.run; resuming; refusing bad
parameters before anything runs; failure summaries; the submitit path."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import nbformat
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import parameter_notebook

from ctbrainage import run
from ctbrainage.core.config import REPO_ROOT, load_profile, repo_relative
from ctbrainage.core.labels import LOBES
from ctbrainage.core.layout import RunLayout
from ctbrainage.learn.train import MESSAGES
from ctbrainage.run import nbcheck

pytestmark = pytest.mark.integration  # every test here executes notebooks or plans a run of them

ROOT = Path(__file__).resolve().parent.parent
STEPS = [
    "01_preprocess",
    "02_lobes",
    "03_train_fold0",
    "03_train_fold1",
    "04_evaluate",
    "05_perturbation",
    "06_stats_figures",
    "07_attribution",
]


def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def _statuses(run_dir: Path) -> dict[str, str]:
    return {name: entry["status"] for name, entry in _manifest(run_dir)["steps"].items()}


def _mtimes(run_dir: Path) -> dict[str, int]:
    files = [*run_dir.glob("notebooks/*.ipynb"), *run_dir.glob("*.csv"), *run_dir.glob("models/*")]
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in files}


def _run(**options) -> tuple[int, str, str]:
    """``run.run_all`` quietly; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run.run_all(progress=False, **options)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def tiny(tiny_run, tmp_path_factory):
    """The tiny profile in two invocations: 01–03 (as if stopped after training), then all.
    The run starts as a copy of the session's ``tiny_run`` (steps 01–03 made by the step
    functions): the notebooks of 01–03 run, and their steps find their work up to date (the
    nbval test below executes notebook 01 from nothing)."""
    base = tmp_path_factory.mktemp("run_all")
    run_dir, figures = base / "run", base / "figures"
    shutil.copytree(tiny_run.run_path, run_dir)
    options = dict(profile="tiny", run_dir=str(run_dir), parameters={"workers": 2})
    first = _run(**options, last=3)
    after_first = _mtimes(run_dir)
    fold_predictions = {
        p.name: p.read_bytes() for p in run_dir.glob("models/fold*_predictions.csv")
    }
    second = _run(**options, figures=str(figures))
    return SimpleNamespace(
        run_dir=run_dir,
        figures=figures,
        options=options,
        first=first,
        second=second,
        after_first=after_first,
        fold_predictions=fold_predictions,
        manifest=_manifest(run_dir),
    )


def test_tiny_profile_runs_end_to_end_and_records_the_manifest(tiny):
    code, out, err = tiny.second
    assert tiny.first[0] == 0 and code == 0, tiny.first[2] + err
    manifest = tiny.manifest
    assert manifest["status"] == "done" and list(manifest["steps"]) == STEPS
    assert [i["status"] for i in manifest["invocations"]] == ["done", "done"]
    assert manifest["profile"]["name"] == "tiny"
    assert manifest["profile"]["run_dir"] == str(tiny.run_dir)
    assert manifest["git"]["commit"] and manifest["versions"]["python"].startswith("3.11")
    for package in ("torch", "monai", "pytorch-lightning", "papermill", "submitit"):
        assert manifest["versions"][package], package
    for name, entry in manifest["steps"].items():
        assert entry["status"] in ("done", "skipped") and entry["duration_s"] > 0, name
        assert entry["started"] <= entry["ended"]
        assert Path(entry["output"]) == tiny.run_dir / "notebooks" / f"{name}.ipynb"
        assert Path(entry["output"]).exists()
        assert entry["parameters"]["profile"] == "tiny"
        assert entry["parameters"]["run_dir"] == str(tiny.run_dir)
        assert name in out  # the timing table
    steps = manifest["steps"]
    assert steps["01_preprocess"]["parameters"]["workers"] == 2  # -p goes where it is declared
    assert "workers" not in steps["03_train_fold1"]["parameters"]
    fold1 = steps["03_train_fold1"]["parameters"]
    assert (fold1["fold"], fold1["gpu"], fold1["data"]) == (1, -1, "")
    assert steps["04_evaluate"]["parameters"]["figures_dir"] == str(tiny.figures)
    executed = nbformat.read(tiny.run_dir / "notebooks" / "03_train_fold1.ipynb", as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert "fold = 1" in injected[0].source
    for name in ("predictions.csv", "perturbation.csv", "table1.csv", "recovery.json"):
        assert (tiny.run_dir / name).stat().st_size > 0, name
    for name in ("evaluation", "table1_heatmap"):  # --figures: the figures, also here
        _assert_a_figure(tiny.figures / f"{name}.png")
        _assert_a_figure(tiny.run_dir / "figures" / f"{name}.png")


def test_the_run_directory_holds_every_step_output(tiny):
    import nibabel as nib
    import torch
    from PIL import Image
    from scipy import stats

    from ctbrainage.stats import table1 as t1
    from ctbrainage.steps import s03_train

    run_dir = tiny.run_dir
    size = load_profile("tiny").preprocess.size
    cohort = pd.read_csv(run_dir / "cohort.csv")
    assert len(cohort) == 12
    for sid in cohort["subject_id"]:
        volume = np.asarray(nib.load(run_dir / "preprocessed" / f"{sid}.nii.gz").dataobj)
        labels = np.asarray(nib.load(run_dir / "lobes" / f"{sid}.nii.gz").dataobj)
        assert volume.shape == labels.shape == (size,) * 3
        assert 0.0 <= volume.min() and volume.max() <= 1.0 and volume.std() > 0.05
        assert set(np.unique(labels)) == {0, 1, 2, 3, 4}, sid  # every lobe labelled
        with Image.open(run_dir / "qc" / f"{sid}.png") as qc:
            assert min(qc.size) >= 200 and len(np.unique(np.asarray(qc.convert("L")))) > 50
    assert set(pd.read_csv(run_dir / "preprocess.csv")["subject_id"]) == set(cohort["subject_id"])
    assert pd.read_csv(run_dir / "lobes.csv")["method"].str.startswith("atlas").all()
    predictions = pd.read_csv(run_dir / "predictions.csv")
    assert list(predictions.columns) == ["subject_id", "fold", "age_months", "predicted_months"]
    profile = load_profile("tiny", {"run_dir": str(run_dir)})
    for k in (0, 1):  # each checkpoint is the model whose predictions the fold wrote
        model = s03_train.load_model(profile, k)
        fold = predictions[predictions["fold"] == k]
        inputs = np.stack(
            [
                nib.load(run_dir / "preprocessed" / f"{s}.nii.gz").get_fdata()
                for s in fold.subject_id
            ]
        )
        with torch.no_grad():
            unit = model(torch.as_tensor(inputs[:, None], dtype=torch.float32)).squeeze(1)
        lo, hi = profile.age_range_months
        assert (lo + unit.numpy() * (hi - lo)) == pytest.approx(fold.predicted_months, abs=1e-3)
    gaps = pd.read_csv(run_dir / "brain_age_gap.csv")
    assert len(gaps) == 12 and gaps["gap_corrected"].notna().all()
    metrics = pd.read_csv(run_dir / "metrics.csv", index_col=0)
    error = (predictions["predicted_months"] - predictions["age_months"]).abs()
    assert metrics.loc["pooled", "mae"] == pytest.approx(error.mean())
    perturbation = pd.read_csv(run_dir / "perturbation.csv")
    assert len(perturbation) == 12 * 4 and (perturbation["fill"] == "noise").all()
    table = pd.read_csv(run_dir / "table1.csv")
    assert len(table) == 16 and not table.isna().any().any()
    rendered = t1.render(pd.read_csv(run_dir / "table1.csv", dtype=str, keep_default_na=False))
    assert (run_dir / "table1.md").read_text() == rendered[".md"]
    assert (run_dir / "table1.tex").read_text() == rendered[".tex"]
    recovery = json.loads((run_dir / "recovery.json").read_text())
    tests = pd.read_csv(run_dir / "lobe_age_tests.csv")
    planted = pd.read_csv(RunLayout(run_dir).synthetic.expected_importance)
    cells = tests.merge(planted[planted["definition"] == "fisher"], on=["group", "lobe"])
    rho = stats.spearmanr(cells["importance"], cells["mean_delta_ae"]).statistic
    assert recovery["groups"] == 4 and recovery["spearman_rho"] == pytest.approx(rho)
    assert recovery["definition"] == "fisher"
    fills = ["noise", "zero", "mean", "group_level"]
    assert [(row["definition"], row["readout"], row["fill"]) for row in recovery["by_fill"]] == [
        (truth, readout, fill)
        for truth in ("fisher", "hu_slope_x_wm_share")
        for readout in ("ΔAE", "|Δprediction|")
        for fill in fills
    ]
    for sid in cohort["subject_id"]:  # the voxel truth of a synthetic run, on the model grid
        signal = nib.load(run_dir / "truth" / f"{sid}_signal.nii.gz")
        assert signal.shape == (size,) * 3 and np.abs(signal.get_fdata()).max() > 0
    group_level = pd.read_csv(run_dir / "perturbation_group_level.csv")
    assert len(group_level) == 12 * 4 and (group_level["fill"] == "group_level").all()
    for name in ("evaluation", "table1_heatmap", "importance_trajectory", "importance_on_brain"):
        _assert_a_figure(run_dir / "figures" / f"{name}.png")
    attribution = pd.read_csv(run_dir / "attribution.csv")
    assert attribution["method"].nunique() == 16 and attribution["subject_id"].nunique() == 12
    for name in ("attribution_scores.csv", "attribution_sanity.csv", "attribution_tests.csv"):
        assert len(pd.read_csv(run_dir / name)) > 0, name
    for name in ("attribution_group_maps", "attribution_lobes", "attribution_sanity"):
        _assert_a_figure(run_dir / "figures" / f"{name}.png")


def _assert_a_figure(path: Path) -> None:
    """A PNG of a real figure: readable, figure-sized, and drawn (many grey levels), not blank."""
    from PIL import Image

    with Image.open(path) as image:
        assert min(image.size) >= 200, path
        assert len(np.unique(np.asarray(image.convert("L")))) > 20, path


def test_every_executed_notebook_is_exported_to_html_with_an_index_page(tiny):
    run_dir = tiny.run_dir
    index = (run_dir / "index.html").read_text()
    for name in STEPS:
        full = (run_dir / "html" / f"{name}.html").read_text()
        reviewer = (run_dir / "html" / f"{name}.noinput.html").read_text()
        code = 'class="highlight hl-ipython3"'  # a code cell's input
        assert code in full and code not in reviewer, name
        assert f"href='html/{name}.noinput.html'" in index and f"href='html/{name}.html'" in index
    reviewer = (run_dir / "html" / "06_stats_figures.noinput.html").read_text()
    assert "Table 1" in reviewer and "data:image/png;base64" in reviewer  # prose and figures
    for needle in (
        "Age prediction (months)",
        "Table 1: ΔAE per lobe and age group",
        "Frontal Lobe",
        "planted top lobe",
        "src='figures/table1_heatmap.png'",
        "href='qc/",
        "profile: <b>tiny</b>",
    ):
        assert needle in index, needle
    assert str(run_dir) not in index  # relative links: the run can be moved


def test_stored_notebooks_and_pages_work_without_a_kernel_or_the_web(tiny):
    """No widget reference, widget state, build-machine path or Lightning message is stored;
    the viewers keep their picture; the pages load nothing from the web."""
    run_dir = tiny.run_dir
    for name in STEPS:
        text = (run_dir / "notebooks" / f"{name}.ipynb").read_text()
        assert str(REPO_ROOT) not in text, name
        node = nbformat.reads(text, as_version=4)
        assert "widgets" not in node.metadata, name
        outputs = [o for c in node.cells for o in c.get("outputs", [])]
        assert not [
            o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
        ]
        assert not [o for o in outputs if "GPU available" in str(o.get("text", ""))], name
        for suffix in (".html", ".noinput.html"):
            page = (run_dir / "html" / f"{name}{suffix}").read_text()
            assert "<script src=" not in page and "<link href=" not in page, name
            assert "VBox(" not in page and str(REPO_ROOT) not in page, name
    for name, viewer in (
        ("02_lobes", "SliceViewer: "),
        ("05_perturbation", "PerturbationViewer: "),
    ):
        node = nbformat.read(run_dir / "notebooks" / f"{name}.ipynb", as_version=4)
        shown = [
            o["data"] for c in node.cells for o in c.get("outputs", [])
            if o.get("data", {}).get("text/plain", "").startswith(viewer)
        ]  # fmt: skip
        assert len(shown) == 1 and shown[0]["image/png"], name
    layout = RunLayout(run_dir)
    messages = Path(layout.logs_dir, layout.fold_log_name(0), MESSAGES)
    assert "GPU available" in messages.read_text()


def test_nbval_reruns_an_executed_notebook_and_catches_a_changed_output(tmp_path):
    # notebook 01 of a four-child tiny run, executed by the driver, then re-executed from nothing
    # by nbval (make check-notebooks does the same with every notebook of the demo)
    first = tmp_path / "first"
    code, _, err = _run(
        profile="tiny", run_dir=str(first), parameters={"synth.n": 4, "workers": 2}, last=1
    )
    assert code == 0, err
    rerun = tmp_path / "rerun"
    assert nbcheck.check(first / "notebooks", rerun, ["-q"]) == 0
    for sid in ("syn0001", "syn0004"):
        assert RunLayout(rerun).preprocessed(sid).read_bytes() == (
            RunLayout(first).preprocessed(sid).read_bytes()
        )
    # a stored number that the notebook no longer reproduces fails its cell
    copy = rerun / "nbval" / "01_preprocess.ipynb"
    node = nbformat.read(copy, as_version=4)
    tampered = next(
        o
        for c in node.cells
        for o in c.get("outputs", [])
        if "minimum Dice 0." in str(o.get("text", ""))
    )
    tampered["text"] = tampered["text"].replace("minimum Dice 0.", "minimum Dice 1.")
    nbformat.write(node, copy)
    sanitize = rerun / "nbval" / "nbval.cfg"
    assert nbcheck.nbval([copy], sanitize, ["-q"]) == 1


def test_rerun_skips_finished_steps_and_resumes_after_a_kill(tiny):
    run_dir, options = tiny.run_dir, tiny.options
    # 01–03 of the first invocation were not redone by the second
    steps = tiny.manifest["steps"]
    assert [steps[n]["status"] for n in STEPS] == ["skipped"] * 4 + ["done"] * 4
    for name in STEPS[:4]:
        key = f"notebooks/{name}.ipynb"
        assert _mtimes(run_dir)[key] == tiny.after_first[key], name
    for name, data in tiny.fold_predictions.items():
        assert (run_dir / "models" / name).read_bytes() == data

    # a third invocation has nothing to do, and says so quickly
    before = _mtimes(run_dir)
    started = time.perf_counter()
    code, out, _ = _run(**options, figures=str(tiny.figures))
    assert time.perf_counter() - started < 20
    assert code == 0 and set(_statuses(run_dir).values()) == {"skipped"}
    assert _mtimes(run_dir) == before
    assert "skipped" in out

    # killed during 05: its entry still says running, so its notebook runs again; it makes the
    # same tables (same seed, same numbers), so 06 and 07, whose inputs did not change, are
    # skipped
    perturbation = (run_dir / "perturbation.csv").read_bytes()
    table1 = (run_dir / "table1.csv").read_bytes()
    manifest = _manifest(run_dir)
    manifest["steps"]["05_perturbation"]["status"] = "running"
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = _run(**options, figures=str(tiny.figures))
    assert code == 0, err
    statuses = _statuses(run_dir)
    assert [statuses[n] for n in STEPS] == ["skipped"] * 5 + ["done", "skipped", "skipped"]
    assert (run_dir / "perturbation.csv").read_bytes() == perturbation
    assert (run_dir / "table1.csv").read_bytes() == table1


def test_a_changed_notebook_is_run_again(tiny, tmp_path):
    """A step whose record is fresh is skipped only while its notebook is the one that ran."""
    from ctbrainage.run.execute import _is_finished
    from ctbrainage.run.plan import NotebookRun

    entry = _manifest(tiny.run_dir)["steps"]["04_evaluate"]
    profile = load_profile("tiny", {"run_dir": str(tiny.run_dir), "synth": {"workers": 2}})
    source = tmp_path / "04_evaluate.ipynb"
    source.write_bytes((REPO_ROOT / entry["notebook"]).read_bytes())
    step = NotebookRun("04_evaluate", 4, source, Path(entry["output"]), entry["parameters"])
    assert _is_finished(entry, step, profile)
    source.write_bytes(source.read_bytes().replace(b"# 04", b"# 04 (edited)", 1))
    assert not _is_finished(entry, step, profile)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(parameters={"worker": 2}), "unknown parameter 'worker' (did you mean 'workers'?)"),
        (dict(parameters={"epochs": 2}), "(did you mean 'train.epochs'?)"),
        (dict(parameters={"train.epoch": 2}), "'train.epoch' (did you mean 'train.epochs'?)"),
        (dict(parameters={"train.epochs": run.Text("two")}), "expected an integer, got 'two'"),
        (dict(parameters={"lobes.method": "atlass"}), "(did you mean 'atlas'?)"),
        (dict(parameters={"compare_fills": "zero"}), "(did you mean 'perturb.compare_fills'?)"),
        (
            dict(parameters={"perturb.compare_fills": run.Text("[zeros]")}),
            "'zeros' is not one of 'noise', 'zero', 'mean', 'group_level'",
        ),
        (dict(parameters={"fold": 1}), "set by the driver: use --folds"),
        (dict(profile="tinny"), "unknown profile 'tinny' (did you mean 'tiny'?)"),
        (dict(folds=(0, 2)), "--folds [2]: the profile has folds 0-1"),
        (dict(first=4, last=2), "--from/--to"),
        (dict(data="no_such_cohort.csv"), "--data: no such file"),
    ],
)
def test_bad_options_are_refused_before_anything_runs(tmp_path, options, message):
    run_dir = tmp_path / "run"
    code, _, err = _run(**{"profile": "tiny", "run_dir": str(run_dir), **options})
    assert code == run.USAGE
    assert message in err
    assert not run_dir.exists()


def test_command_line_refuses_an_unknown_parameter(tmp_path):
    run_dir = tmp_path / "run"
    args = ["--profile", "tiny", "--run-dir", str(run_dir), "-p", "stats.window_month=6"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "run_all.py"), *args], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 2
    assert "(did you mean 'stats.window_months'?)" in done.stderr
    assert not run_dir.exists()


def test_plan_routes_parameters_gpus_and_profile_overrides(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # as on a machine with two GPUs
    options = run.Options(
        profile="demo",
        run_dir=str(tmp_path / "run"),
        gpus=(0, 1),
        figures="figs",
        parameters={"train.epochs": run.Text("3"), "method": run.Text("atlas")},
    )
    plan = run.make_plan(options)
    assert [s.name for s in plan.steps][2:7] == [f"03_train_fold{k}" for k in range(5)]
    assert [s.parameters["gpu"] for s in plan.steps[2:7]] == [0, 1, 0, 1, 0]
    assert plan.steps[7].parameters["figures_dir"] == repo_relative("figs")
    assert plan.steps[8].parameters["gpu"] == 0 and plan.jobs == 2
    assert (
        plan.steps[1].parameters["method"] == "atlas" and "method" not in plan.steps[0].parameters
    )
    # the override reaches the notebooks through a written profile that loads to the same profile
    assert plan.profile.train.epochs == 3
    assert plan.steps[0].parameters["profile"] == str(tmp_path / "run" / "profile.yaml")
    written = tmp_path / "profile.yaml"
    written.write_text(plan.profile_yaml)
    assert yaml.safe_load(plan.profile_yaml)["name"] == "demo"
    assert load_profile(written) == plan.profile
    assert not (tmp_path / "run").exists()  # planning writes nothing


def test_a_failing_notebook_stops_its_dependants_with_a_clear_summary(tmp_path):
    bad = tmp_path / "cohort.csv"
    bad.write_text("subject_id,age\nA,3\nB,4\n")  # rows for both folds, columns missing
    run_dir = tmp_path / "run"
    code, _, err = _run(profile="tiny", run_dir=str(run_dir), data=str(bad))
    assert code == run.FAILED
    executed = run_dir / "notebooks" / "01_preprocess.ipynb"
    assert "FAILED 01_preprocess (cell error)" in err
    assert "notebooks/01_preprocess.ipynb, cell 5 (In [4]): result = s01_preprocess.run(cfg)" in err
    assert "ManifestError" in err and "lacks required columns" in err
    assert f"executed notebook with the traceback: {executed}" in err
    assert sorted(p.name for p in (run_dir / "notebooks").iterdir()) == ["01_preprocess.ipynb"]
    manifest = _manifest(run_dir)
    assert manifest["status"] == "failed"
    assert manifest["steps"]["01_preprocess"]["error"]["cell_index"] == 5
    assert {manifest["steps"][n]["status"] for n in STEPS[1:]} == {"not run"}
    index = (run_dir / "index.html").read_text()
    assert "<td class='failed'>failed</td>" in index and "ManifestError" in index
    cells = nbformat.read(executed, as_version=4).cells
    errors = [o for c in cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert [o["ename"] for o in errors] == ["ManifestError"]  # the traceback is kept


def test_submitit_executor_runs_a_fold_as_a_job(tiny, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny.run_dir, run_dir)
    code, _, err = _run(
        profile="tiny",
        run_dir=str(run_dir),
        first=3,
        last=3,
        folds=(0,),
        force=True,
        executor="slurm",
        submitit_cluster="local",
    )
    assert code == 0, err
    entry = _manifest(run_dir)["steps"]["03_train_fold0"]
    assert entry["status"] == "done" and entry["job_id"]
    assert entry["parameters"]["run_dir"] == str(run_dir)
    assert (run_dir / "slurm" / f"{entry['job_id']}_0_result.pkl").exists()
    executed = nbformat.read(run_dir / "notebooks" / "03_train_fold0.ipynb", as_version=4)
    assert any(
        "fold 0: n 6" in str(o.get("text", ""))
        for c in executed.cells
        for o in c.get("outputs", [])
    )
    name = "fold0_predictions.csv"
    assert (run_dir / "models" / name).read_bytes() == tiny.fold_predictions[name]


@pytest.mark.parametrize(
    ("code", "kind", "why"),
    [
        ("import time\ntime.sleep(60)", "timeout", "CellTimeoutError: A cell timed out"),
        ("import os\nos._exit(1)", "dead kernel", "DeadKernelError: Kernel died"),
    ],
)
def test_timeouts_and_dead_kernels_are_reported_with_their_cell(tmp_path, code, kind, why):
    source = parameter_notebook(tmp_path / "step.ipynb", code)
    outcome = run.execute_notebook(str(source), str(tmp_path / "out.ipynb"), {"x": 2}, timeout=3)
    assert outcome["status"] == "failed"
    error = outcome["error"]
    assert error["kind"] == kind and error["why"].startswith(why)
    assert error["cell_index"] == 2  # after papermill's injected-parameters cell
    assert error["cell_source"] == code.splitlines()[0]


# ---- freshness: what a changed setting makes stale (the driver reruns exactly the steps that
# are not fresh: the test above), shown with the step functions on copies of the run ---------


def _copy(tiny, tmp_path, **overrides):
    """The tiny profile with ``overrides`` on a copy of the module's run."""
    shutil.copytree(tiny.run_dir, tmp_path / "run")
    return load_profile("tiny", {"run_dir": str(tmp_path / "run"), **overrides})


def test_a_changed_statistics_setting_makes_only_06_and_07_stale(tiny, tmp_path):
    from ctbrainage.run.steps import is_fresh
    from ctbrainage.steps import s06_stats, s07_attribution

    profile = _copy(tiny, tmp_path, **{"stats.alpha": 0.9})
    layout = RunLayout(profile.run_path)
    assert [is_fresh(n, profile) for n in range(1, 8)] == [True] * 5 + [False] * 2
    table1 = layout.table1(".csv").read_bytes()
    tests = layout.attribution_tests.stat().st_mtime_ns
    records = {p: p.stat().st_mtime_ns for p in layout.records_dir.glob("07_attribution_*.json")}
    s06_stats.run(profile)
    s07_attribution.run(profile, progress=False)
    assert layout.table1(".csv").read_bytes() != table1  # more cells significant at 0.9
    # 07 redid its tests only: its folds' and its sanity check's records were still fresh
    assert layout.attribution_tests.stat().st_mtime_ns != tests
    assert records and {p: p.stat().st_mtime_ns for p in records} == records
    assert is_fresh(6, profile) and is_fresh(7, profile)


def test_a_changed_preprocessing_setting_makes_every_later_step_stale(tiny, tmp_path):
    """After a preprocessing change step 01 is stale; once it has rerun, every later step that
    reads its volumes is, and step 06, which reads only step 05's tables, refuses to run on them
    until 05 has rerun."""
    from ctbrainage.run.steps import is_fresh
    from ctbrainage.steps import s01_preprocess, s06_stats
    from ctbrainage.steps.contract import StaleInputError

    profile = _copy(tiny, tmp_path)
    assert all(is_fresh(n, profile) for n in range(1, 8))
    changed = load_profile("tiny", {"run_dir": profile.run_dir, "preprocess.ptile_low": 5.0})
    assert not is_fresh(1, changed) and is_fresh(2, changed)  # 02 reads no preprocess setting
    inputs = RunLayout(profile.run_path).preprocessed("syn0001").read_bytes()
    s01_preprocess.run(changed, progress=False)
    assert RunLayout(profile.run_path).preprocessed("syn0001").read_bytes() != inputs
    assert is_fresh(1, changed)
    assert [is_fresh(n, changed) for n in (2, 3, 4, 5, 7)] == [False] * 5
    with pytest.raises(StaleInputError, match="05_perturbation"):
        s06_stats.run(changed)


def test_perturbation_and_statistics_with_another_fill(tiny, tmp_path):
    """The profile's fill (noise in the module's run) changed to group_level: 05 and what
    reads it rerun; its table, the filled volumes the notebook draws, and the recovery."""
    from ctbrainage.interpret import perturb
    from ctbrainage.run.steps import is_fresh
    from ctbrainage.steps import s05_perturbation, s06_stats

    fill = "group_level"
    profile = _copy(tiny, tmp_path, **{"perturb.fill": fill})
    assert [is_fresh(n, profile) for n in range(1, 8)] == [True] * 4 + [False] * 3
    s05_perturbation.run(profile, progress=False)
    s06_stats.run(profile)
    layout = RunLayout(profile.run_path)
    table = pd.read_csv(layout.perturbation(fill, fill), dtype={"subject_id": str})
    assert len(table) == 12 * 4 and (table["fill"] == fill).all()
    labels = nib.load(layout.lobes("syn0001")).get_fdata()
    filled = perturb.filled_volumes(profile, "syn0001")
    rows = table[table["subject_id"] == "syn0001"].set_index("lobe")
    for k, name in LOBES.items():  # each lobe brought to its age group's level
        assert filled[name][labels == k].mean() == pytest.approx(
            rows.loc[name, "fill_mean"], abs=1e-4
        ), name
    recovery = json.loads(layout.recovery.read_text())
    assert recovery["by_fill"][0]["fill"] == fill


def test_steps_08_and_09_run_only_when_asked(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    base = {"profile": "demo", "run_dir": str(tmp_path / "run")}
    default = [s.name for s in run.make_plan(run.Options(**base)).steps]
    assert "08_stacking" not in default and "09_new_scans" not in default
    asked = run.Options(
        **base, first=9, last=9, gpus=(1,), parameters={"new_subjects": run.Text("4")}
    )
    plan = run.make_plan(asked)
    assert [s.name for s in plan.steps] == ["09_new_scans"]
    assert plan.steps[0].parameters["gpu"] == 1 and plan.steps[0].parameters["new_subjects"] == 4
    stacking = run.make_plan(run.Options(**base, first=8, last=8, gpus=(0,), figures="figs"))
    assert [s.name for s in stacking.steps] == ["08_stacking"]
    assert stacking.steps[0].parameters["gpu"] == 0
    assert stacking.steps[0].parameters["figures_dir"].endswith("figs")
