"""The documentation: result tables come from a run's files (ctbrainage.views.docs), every
relative link and every ctbrainage module named in README.md and docs/ exists, and the README
stays one screen long."""

import ast
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ctbrainage.core.config import REPO_ROOT
from ctbrainage.core.labels import LOBES
from ctbrainage.core.layout import RunLayout
from ctbrainage.stats import evaluate, table1
from ctbrainage.steps.contract import write_table
from ctbrainage.views import docs

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]

# ---- a hand-made run directory, in the formats the steps write ----------------------------------

METRICS_CSV = """\
,rmse,mae,r,r2,spearman,n
fold 0,4.5,3.25,0.95,0.9,0.94,6.0
fold 1,5.5,4.75,0.93,0.86,0.92,6.0
mean,5.0,4.0,0.94,0.88,0.93,
sd,0.70710678,1.06066017,0.01414214,0.02828427,0.01414214,
pooled,5.05,4.0,0.941,0.877,0.93,12.0
"""


def _perturbation(fill: str, values: dict[str, list[float]]) -> pd.DataFrame:
    rows = [
        {"subject_id": f"s{i}", "fold": 0, "age_months": 6.0 + i, "lobe": lobe, "repeat": 0,
         "fill": fill, "pred_whole": 7.0, "pred_masked": 8.0, "delta_ae": v,
         "signed_change": 1.0, "lobe_mean": 0.4, "fill_mean": 0.5}
        for lobe, vs in values.items()
        for i, v in enumerate(vs)
    ]  # fmt: skip
    return pd.DataFrame(rows)


def _table1_long() -> pd.DataFrame:
    """Two cells of ``stats.lobe_tests.lobe_age_table``'s output."""
    long = pd.DataFrame(
        {
            "group": ["0-11", "0-11"],
            "lobe": ["frontal", "temporal"],
            "mean_delta_ae": [1.2345, -0.0004],
            "p": [0.0002, 0.4321],
            "test": ["t-test", "wilcoxon"],
            "cohen_d": [0.9, 0.05],
            "marker": ["*,§", ""],
        }
    )
    long.attrs["alpha"] = 0.05
    return long


def _make_run(root: Path) -> RunLayout:
    layout = RunLayout(root)
    root.mkdir(parents=True)
    layout.metrics.write_text(METRICS_CSV)
    write_table(
        layout.perturbation("noise", "noise"),
        _perturbation("noise", {"frontal": [1.0, 2.0], "occipital": [0.5, 0.25]}),
    )
    write_table(
        layout.perturbation("zero", "noise"),
        _perturbation("zero", {"frontal": [8.0, 9.0], "occipital": [3.0, 3.5]}),
    )
    for suffix, text in table1.render(table1.table1(_table1_long())).items():
        layout.table1(suffix).write_text(text)
    recovery = {
        "definition": "fisher",
        "by_fill": [
            {"fill": "noise", "readout": "ΔAE", "definition": "fisher", "spearman_rho": -0.0234,
             "within_group_rho": 0.25, "top_lobe": "1/4", "signal_rho": -0.0234,
             "signal_within_group_rho": 0.25, "signal_top_lobe": "1/4", "significant_cells": 9},
            {"fill": "noise", "readout": "|Δprediction|", "definition": "fisher",
             "spearman_rho": 0.456, "within_group_rho": 0.6, "top_lobe": "3/4",
             "signal_rho": 0.456, "signal_within_group_rho": 0.6, "signal_top_lobe": "3/4",
             "significant_cells": None},
        ],
    }  # fmt: skip
    layout.recovery.write_text(json.dumps(recovery, indent=1))
    scores = [
        ("occlusion", "lobe", "spearman_rho", 0.64, 0.52, 0.69, 0.0),
        ("occlusion", "lobe", "top_lobe_matches", 3, 2, 4, 1.0),
        ("occlusion", "lobe", "groups", 4, np.nan, np.nan, np.nan),
        ("occlusion", "lobe_per_voxel", "spearman_rho", 0.65, 0.51, 0.70, 0.0),
        ("occlusion", "lobe_per_voxel", "top_lobe_matches", 4, 3, 4, 1.0),
        ("occlusion", "lobe_per_voxel", "groups", 4, np.nan, np.nan, np.nan),
        ("occlusion", "voxel", "auroc", 0.62, 0.60, 0.64, 0.5),
        ("occlusion", "voxel", "mass_accuracy", 0.18, 0.16, 0.20, 0.12),
        ("occlusion", "cost", "seconds_per_subject", 0.25, np.nan, np.nan, np.nan),
        ("lobe_shapley", "lobe", "spearman_rho", 0.76, 0.65, 0.83, 0.0),
        ("lobe_shapley", "lobe", "top_lobe_matches", 3, 2, 4, 1.0),
        ("lobe_shapley", "lobe", "groups", 4, np.nan, np.nan, np.nan),
        ("lobe_shapley", "faithfulness", "subject_rho", 0.9, 0.8, 0.95, 0.0),
        ("lobe_shapley", "faithfulness", "subject_top_lobe", 0.75, 0.5, 1.0, 0.25),
        ("lobe_shapley", "faithfulness", "top_lobe_mass", 0.6, 0.5, 0.7, 0.25),
        ("lobe_shapley", "faithfulness", "spearman_rho", 0.93, 0.9, 0.96, 0.0),
        ("lobe_shapley", "faithfulness", "top_lobe_matches", 4, 3, 4, 1.0),
        ("lobe_shapley", "faithfulness", "groups", 4, np.nan, np.nan, np.nan),
    ]
    write_table(layout.attribution_scores, pd.DataFrame(scores, columns=_SCORE_COLUMNS))
    columns = ["subject_id", "fold", "age_months", "cue", "kind", "value"]
    write_table(layout.model_truth, pd.DataFrame(columns=columns))  # measured: the scores say
    sanity = [
        ("occlusion", "cascade", 1, 0.9, np.nan, True),
        ("occlusion", "cascade", 2, 0.1, np.nan, False),
        ("occlusion", "random_labels", 0, 0.2, np.nan, False),
        ("lobe_shapley", "cascade", 1, np.nan, 0.7, True),
        ("lobe_shapley", "random_labels", 0, np.nan, 0.6, True),
    ]
    columns = ["method", "model", "step", "voxel_rho", "lobe_rho", "survives"]
    write_table(layout.attribution_sanity, pd.DataFrame(sanity, columns=columns))
    return layout


_SCORE_COLUMNS = ["method", "level", "metric", "value", "ci_low", "ci_high", "chance"]


def _page(blocks: list[str]) -> str:
    body = "\n\n".join(f"<!-- results:{b} -->\nold text\n<!-- /results:{b} -->" for b in blocks)
    return f"# Results\n\n{body}\n\nThe end.\n"


def _block(text: str, name: str) -> str:
    found = re.search(rf"<!-- results:{re.escape(name)} -->\n(.*?)<!-- /results:", text, re.S)
    assert found, name
    return found[1]


@pytest.fixture
def filled(tmp_path):
    _make_run(tmp_path / "runs" / "demo")
    _make_run(tmp_path / "runs" / "bench")
    (tmp_path / "docs").mkdir()
    names = ["metrics", "perturbation", "table1", "recovery", "attribution", "faithfulness"]
    names += ["stacked"]
    names += ["f-tests", "new-scans", "planted", "metrics@bench", "attribution@missing"]
    page = tmp_path / "docs" / "results.md"
    page.write_text(_page(names))
    (tmp_path / "README.md").write_text(_page(["metrics"]))
    changed = docs.fill_docs(tmp_path / "runs" / "demo", tmp_path / "docs")
    return tmp_path, page, changed


def test_the_hand_made_files_have_the_steps_formats(tmp_path):
    """The literal metrics.csv above has the columns and rows step 04 writes."""
    predictions = pd.DataFrame(
        {"subject_id": [f"s{i}" for i in range(6)], "fold": [0, 1] * 3,
         "age_months": [1.0, 5.0, 9.0, 20.0, 30.0, 40.0],
         "predicted_months": [2.0, 4.0, 12.0, 18.0, 33.0, 39.0]}
    )  # fmt: skip
    write_table(tmp_path / "m.csv", evaluate.fold_metrics(predictions).reset_index(names=""))
    made = pd.read_csv(tmp_path / "m.csv", index_col=0)
    ours = pd.read_csv(__import__("io").StringIO(METRICS_CSV), index_col=0)
    assert list(made.columns) == list(ours.columns)
    assert list(made.index) == list(ours.index)


def test_each_block_gets_the_runs_numbers(filled):
    root, page, changed = filled
    text = page.read_text()
    assert set(changed) == {page, (root / "README.md").resolve()}
    metrics = _block(text, "metrics")
    assert (
        "| mean ± SD over 2 folds | 5.00 ± 0.71 | 4.00 ± 1.06 | 0.940 ± 0.014 | 0.880 ± 0.028 |"
        in metrics
    )
    assert "| pooled, 12 subjects | 5.05 | 4.00 | 0.941 | 0.877 |" in metrics
    assert "| Sawa et al. 2025, mean over folds | 5.205 | 4.007 | 0.925 | – |" in metrics
    assert "*From `metrics.csv` of the `demo` run, by `make docs`.*" in metrics
    perturbation = _block(text, "perturbation")
    assert "| fill | frontal | parietal | temporal | occipital |" in perturbation
    assert "| `noise` | 1.50 | – | – | 0.38 |" in perturbation
    assert "| `zero` | 8.50 | – | – | 3.25 |" in perturbation
    assert _block(text, "table1").startswith(table1.table1_markdown(table1.table1(_table1_long())))
    assert "1.234\\*,§" in _block(text, "table1") and "p < 0.001" in _block(text, "table1")
    recovery = _block(text, "recovery")
    assert "| `noise` | ΔAE | fisher | -0.02 | 0.25 | 1/4 | 9 |" in recovery
    assert "| `noise` | \\|Δprediction\\| | fisher | 0.46 | 0.60 | 3/4 | – |" in recovery
    attribution = _block(text, "attribution")
    lines = [line for line in attribution.splitlines() if line.startswith("| `")]
    assert lines == [
        "| `lobe_shapley` | 0.76 [0.65, 0.83] | – | 3/4 | – | – | – | – | –"
        " | fails (0.70 / 0.60) | – | – + – |",
        "| `occlusion` | 0.64 [0.52, 0.69] | – | 3/4 | 0.65 [0.51, 0.70] | 4/4 | 0.62 [0.60, 0.64]"
        " | 0.18 [0.16, 0.20] | – | passes (0.10 / 0.20) | 0.250 | – + – |",
    ]
    assert "relevance mass (chance 0.12)" in attribution and "AUROC (chance 0.50)" in attribution
    faithful = _block(text, "faithfulness")
    assert "| `lobe_shapley` | 0.93 [0.90, 0.96] | 4/4 | 0.90 [0.80, 0.95] | 0.75 [0.50, 1.00]" in (
        faithful
    )
    assert "(chance 0.25)" in faithful and "`occlusion`" not in faithful
    assert "*From `metrics.csv` of the `bench` run" in _block(text, "metrics@bench")


def test_absent_sources_leave_a_note(filled):
    _, page, _ = filled
    text = page.read_text()
    assert _block(text, "stacked") == "(run step 08 to fill this table)\n"
    assert _block(text, "f-tests") == "(run step 08 to fill this table)\n"
    assert _block(text, "new-scans") == "(run step 09 to fill this table)\n"
    assert _block(text, "planted") == "(run step 01 to fill this table)\n"
    missing = _block(text, "attribution@missing")
    assert missing == "(run step 07 of the `missing` run to fill this table)\n"
    assert "old text" not in text and text.endswith("\n\nThe end.\n")


def test_filling_twice_changes_nothing(filled):
    root, page, _ = filled
    first = page.read_text()
    assert docs.fill_docs(root / "runs" / "demo", root / "docs") == []
    assert page.read_text() == first


def test_stacking_and_new_scans_blocks(tmp_path):
    layout = RunLayout(tmp_path / "run")
    layout.root.mkdir()
    stacked = pd.DataFrame(
        [["T encoder", "–", 120, 4.2612, 30.44, 0.8421, np.nan],
         ["TAS", "T + A + sex", 120, 4.0049, 25.61, 0.8673, 3.7512]],
        columns=["model", "features", "n", "mae", "mse", "r2", "mae_in_sample"],
    )  # fmt: skip
    write_table(layout.stacking_table, stacked)
    anova = pd.DataFrame(
        [["T vs TA", 1, 50.0, 16.8, 7.6e-5], ["T vs TT2", 1, 0.1, 0.012, 0.9123]],
        columns=["comparison", "df_diff", "ss_diff", "f", "p"],
    )
    write_table(layout.stacking_anova, anova)
    new = RunLayout(layout.new_scans_dir)
    new.root.mkdir()
    write_table(
        new.predictions,
        pd.DataFrame(
            {"subject_id": ["n1", "n2"], "age_months": [10.0, 20.0],
             "brain_age_months": [12.0, 19.0], "corrected_months": [13.0, 18.0],
             "interval_high": [22.5, 27.5], "level": [0.9, 0.9],
             "age_in_interval": [True, False]}
        ),
    )  # fmt: skip
    assert "| T encoder | – | 120 | 4.26 | 30.4 | 0.842 | – |" in docs.render(
        "stacked", layout.root
    )
    assert "| TAS | T + A + sex | 120 | 4.00 | 25.6 | 0.867 | 3.75 |" in docs.render(
        "stacked", layout.root
    )
    tests = docs.render("f-tests", layout.root)
    assert "| T vs TA | 16.800 | < 0.001 |" in tests and "| T vs TT2 | 0.012 | 0.912 |" in tests
    scans = docs.render("new-scans", layout.root)
    assert "| MAE of the ensemble's brain age (months) | 1.50 |" in scans
    assert "| MAE of the bias-corrected brain age (months) | 2.50 |" in scans
    assert "| 90% interval half-width (months) | 9.5 |" in scans
    assert "| ages inside their interval | 1 of 2 (50.0%) |" in scans


def test_bad_pages_are_refused(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "a.md"
    page.write_text(_page(["no-such-table"]))
    assert docs.main([str(tmp_path / "run"), "--docs", str(tmp_path / "docs")]) == 2
    assert "unknown results block 'no-such-table'" in capsys.readouterr().err
    page.write_text("<!-- results:metrics -->\nnever closed\n")
    assert docs.main([str(tmp_path / "run"), "--docs", str(tmp_path / "docs")]) == 2
    assert "not closed" in capsys.readouterr().err
    page.write_text("- a list\n  <!-- results:metrics -->\n  x\n  <!-- /results:metrics -->\n")
    assert docs.main([str(tmp_path / "run"), "--docs", str(tmp_path / "docs")]) == 2
    assert "indented" in capsys.readouterr().err
    assert docs.main([str(tmp_path / "nowhere"), "--docs", str(tmp_path / "docs")]) == 2


# ---- the repository's own pages ---------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
MODULE = re.compile(r"\bctbrainage(?:\.\w+)+")
FILE = re.compile(r"\bctbrainage/[\w./-]*\w/?")


def test_the_readme_is_one_screen():
    assert len((REPO_ROOT / "README.md").read_text().splitlines()) <= 250


def test_there_are_docs_pages():
    names = {p.name for p in PAGES}
    for page in ("architecture.md", "run-directory.md", "synthetic-cohort.md", "testing.md"):
        assert page in names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_points_to_a_file(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        if "#" in target or not (page.parent / target).exists():
            broken.append(target)
    assert not broken, f"{page.name}: links to no file (or with an anchor): {broken}"


def _top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def _resolves(dotted: str) -> bool:
    """``ctbrainage.a.b[.Name]``: a module or package of the repository, then at most one
    name defined at the top of that module."""
    parts = dotted.split(".")
    for cut in range(len(parts), 1, -1):
        base = REPO_ROOT.joinpath(*parts[:cut])
        module = (
            base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__init__.py"
        )
        if module.exists():
            rest = parts[cut:]
            return not rest or (len(rest) == 1 and rest[0] in _top_level_names(module))
    return False


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_module_named_exists(page):
    text = page.read_text()
    missing = sorted({m for m in MODULE.findall(text) if not _resolves(m)})
    missing += sorted({f for f in FILE.findall(text) if not (REPO_ROOT / f).exists()})
    assert not missing, f"{page.name} names what the package does not hold: {missing}"


def test_the_checks_see_a_renamed_module():
    assert _resolves("ctbrainage.core.layout.RunLayout")
    assert _resolves("ctbrainage.views.plots")
    assert not _resolves("ctbrainage.manifest")
    assert not _resolves("ctbrainage.core.layout.NoSuchThing")


def test_every_results_block_of_the_pages_is_known(tmp_path):
    for page in PAGES:
        for name in docs.BLOCK.findall(page.read_text()):
            assert docs.render(name[1], tmp_path).startswith("(run step "), (page.name, name)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_the_pages_fill_the_same_way_twice(page, tmp_path):
    once = docs.fill_text(page.read_text(), tmp_path)
    assert docs.fill_text(once, tmp_path) == once


def test_the_wall_time_block_sums_the_default_steps_of_the_manifest(tmp_path):
    layout = RunLayout(tmp_path / "runs" / "demo")
    layout.root.mkdir(parents=True)
    steps = {
        "01_preprocess": {"status": "done", "duration_s": 100.0},
        "03_train_fold0": {"status": "skipped", "duration_s": 20.5},
        "03_train_fold1": {"status": "failed", "duration_s": 3.0},
        "08_stacking": {"status": "done", "duration_s": 300.0},
    }
    layout.manifest.write_text(json.dumps({"steps": steps}))
    rows = docs.render("wall-time", layout.root).splitlines()
    assert rows[2:5] == ["| 01_preprocess | 100.0 |", "| 03_train_fold0 | 20.5 |",
                         "| 08_stacking | 300.0 |"]  # fmt: skip
    assert rows[5] == "| steps 01-07 (`run_all.py` by default) | 120.5 (2.0 min) |"


def test_the_baselines_block_shows_step_04s_comparison(tmp_path):
    """baselines.csv as step 04 writes it (the CNN, the ridge, the training mean age), rendered
    with mean ± SD over folds."""
    predictions = pd.DataFrame(
        {"subject_id": [f"s{i}" for i in range(6)], "fold": [0, 1] * 3,
         "age_months": [1.0, 5.0, 9.0, 20.0, 30.0, 40.0],
         "predicted_months": [2.0, 4.0, 12.0, 18.0, 33.0, 39.0]}
    )  # fmt: skip
    baselines = predictions[["subject_id"]].assign(age_mean=[20.0] * 6, ridge=[3.0] * 6)
    table = evaluate.compare_with_baselines(predictions, baselines)
    layout = RunLayout(tmp_path / "runs" / "demo")
    layout.root.mkdir(parents=True)
    write_table(layout.baselines, table.reset_index(names="model"))
    text = docs.render("baselines", layout.root)
    for label, predicted in (
        ("3D ResNet (ours)", predictions.predicted_months),
        ("age-mean predictor", 20.0),
    ):
        m = evaluate.fold_metrics(predictions.assign(predicted_months=predicted))
        assert f"| {label} | {m.at['mean', 'mae']:.2f} ± {m.at['sd', 'mae']:.2f} |" in text
    assert text.count("| age-mean predictor |") == 1 and "| – |" in text  # a constant has no r


def test_the_model_vs_ideal_block_sets_the_models_shares_beside_the_ideal_observers(tmp_path):
    from ctbrainage.synth.schedule import MaturationSchedule

    layout = RunLayout(tmp_path / "run")
    layout.synthetic.root.mkdir(parents=True)
    expected = MaturationSchedule.parse("staggered").expected_importance((0, 12, 24, 36, 48))
    write_table(layout.synthetic.expected_importance, expected)
    tops = {6.0: "occipital", 18.0: "parietal", 30.0: "frontal", 42.0: "temporal"}
    rows = []
    for i, (age, top) in enumerate(tops.items()):
        for lobe in LOBES.values():
            rows.append((f"s{i}", 0, age, lobe, "maturation", 0.4 if lobe == top else 0.05))
        rows.append((f"s{i}", 0, age, "non_lobar", "maturation", 0.02))
    columns = ["subject_id", "fold", "age_months", "cue", "kind", "value"]
    write_table(layout.model_truth, pd.DataFrame(rows, columns=columns))
    text = docs.render("model-vs-ideal", layout.root)
    assert "| 0-11 | occipital | 1 | 0.400 | 0.73 | 0.98 |" in text
    assert "| 0-11 | non_lobar | 1 | 0.020 | – | – |" in text
    assert "top lobe in 4/4 groups" in text
    rows = []
    for i, value in enumerate([0.1, 0.5, -0.2]):  # the chain rule at twice the interventions
        for kind, times in (("content", 1), ("chain_content", 2)):
            for lobe in LOBES.values():
                rows.append((f"s{i}", 0, 6.0, lobe, kind, times * value * (1 + len(lobe) / 10)))
    write_table(layout.model_truth, pd.DataFrame(rows, columns=columns))
    chain = docs.render("chain-rule", layout.root)
    assert "| `content` | `chain_content` | 1.00 | 1.00 | 2.00 | 12 |" in chain


def test_the_unoise_block_shows_each_training_and_an_unconverged_one_has_no_verdict(tmp_path):
    from ctbrainage.steps.s07_unoise import CURVE_COLUMNS
    from ctbrainage.views.attribution_tables import not_converged, sanity_cells

    layout = RunLayout(tmp_path / "run")
    layout.root.mkdir(parents=True)
    rows = []
    for role, fold, r, losses, plateaued, chosen in (
        ("candidate", 0, 0.1, [0.5, 0.3, 0.35], True, False),
        ("candidate", 0, 0.3, [0.6, 0.4, 0.45], True, True),
        ("fold", 1, 0.3, [0.7, 0.6, 0.5], False, True),
    ):
        best = int(np.argmin(losses)) + 1
        rows.append(dict(role=role, fold=fold, r=r, v_min=1.0, v_max=5.0, phase="autoencoder",
                         epoch=1, train_loss=0.01))  # fmt: skip
        for epoch, loss in enumerate(losses, start=1):
            rows.append(dict(
                role=role, fold=fold, r=r, v_min=1.0, v_max=5.0, phase="noise", epoch=epoch,
                train_loss=loss, val_loss=loss, val_mae_months=3.0 + r, clean_mae_months=1.5,
                mask_mean=0.25, mask_sd=0.1, floor_share=0.02, best=epoch == best,
                plateaued=plateaued, chosen=chosen,
            ))  # fmt: skip
    training = pd.DataFrame(rows, columns=CURVE_COLUMNS)
    write_table(layout.unoise_training, training)
    text = docs.render("unoise", layout.root)
    header = [c.strip() for c in text.splitlines()[0].strip("|").split("|")]
    assert header[:6] == ["training", "r", "v_min", "v_max", "epochs", "best epoch"]
    lines = [line for line in text.splitlines() if line.startswith("| `")]
    assert lines[0].startswith("| `candidate (fold 0)` | 0.1 | 1.0 | 5.0 | 3 | 2 | yes |")
    assert "| 2.00 |" in lines[0]  # noise SD: 1 + 4 × 0.25 σ
    assert lines[1].endswith("| ✓ |") and not lines[0].endswith("| ✓ |")
    assert lines[2].startswith("| `fold 1` | 0.3 | 1.0 | 5.0 | 3 | 3 | no (max_epochs) |")
    assert not_converged(training) == ["unoise"]
    assert not_converged(training.assign(plateaued=True)) == [] == not_converged(None)
    candidate_only = training.assign(plateaued=training["role"] == "fold")  # unused: no maps
    assert not_converged(candidate_only) == []
    verdict = pd.DataFrame(
        {"method": ["unoise", "saliency"], "sanity": ["fails", "passes"],
         "rho_randomised": [0.8, 0.1], "rho_random_labels": [0.7, 0.2]}
    )  # fmt: skip
    cells = sanity_cells(verdict, not_converged(training))
    assert cells["unoise"] == "not converged (0.80 / 0.70)"
    assert cells["saliency"] == "passes (0.10 / 0.20)"
