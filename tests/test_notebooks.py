"""The notebooks execute end to end (papermill) at the tiny profile."""

import json
from pathlib import Path

import nbformat
import pandas as pd
import papermill as pm

ROOT = Path(__file__).resolve().parent.parent


def _run(name: str, run: Path, out: Path, **parameters) -> str:
    """Execute one notebook on the run directory ``run``; returns its printed text."""
    pm.execute_notebook(
        ROOT / "notebooks" / name,
        out,
        parameters={"profile": "tiny", "run_dir": str(run), **parameters},
        progress_bar=False,
        cwd=str(ROOT / "notebooks"),
    )
    executed = nbformat.read(out, as_version=4)
    return "".join(str(o.get("text", "")) for c in executed.cells for o in c.get("outputs", []))


def test_notebooks_01_to_06_run_and_write_the_run_directory(tmp_path):
    run = tmp_path / "run"
    assert "minimum Dice" in _run("01_preprocess.ipynb", run, tmp_path / "01.ipynb", workers=2)
    cohort = pd.read_csv(run / "cohort.csv")
    table = pd.read_csv(run / "preprocess.csv")
    assert len(cohort) == 12 and set(table["subject_id"]) == set(cohort["subject_id"])
    for sid in cohort["subject_id"]:
        assert (run / "preprocessed" / f"{sid}.nii.gz").exists()
        assert (run / "qc" / f"{sid}.png").exists()

    assert "mean Dice per lobe" in _run("02_lobes.ipynb", run, tmp_path / "02.ipynb", workers=2)
    lobes = pd.read_csv(run / "lobes.csv")
    assert set(lobes["subject_id"]) == set(cohort["subject_id"])
    assert lobes["method"].str.startswith("atlas").all()
    for sid in cohort["subject_id"]:
        assert (run / "lobes" / f"{sid}.nii.gz").exists()

    for fold in (0, 1):
        text = _run("03_train.ipynb", run, tmp_path / f"03_{fold}.ipynb", fold=fold)
        assert f"fold {fold}: n 6" in text and "parameters" in text
        assert (run / "models" / f"fold{fold}.ckpt").exists()

    text = _run("04_evaluate.ipynb", run, tmp_path / "04.ipynb", figures_dir=str(tmp_path / "fig"))
    assert "mean |gap| raw" in text
    predictions = pd.read_csv(run / "predictions.csv")
    assert len(predictions) == 12 and predictions["gap_corrected"].notna().all()
    metrics = pd.read_csv(run / "metrics.csv", index_col=0)
    assert {"fold 0", "fold 1", "mean", "sd", "pooled"} <= set(metrics.index)
    assert (tmp_path / "fig" / "evaluation.png").exists()
    assert (run / "figures" / "evaluation.png").exists()

    text = _run("05_perturbation.ipynb", run, tmp_path / "05.ipynb", compare_fills=["zero"])
    perturbation = pd.read_csv(run / "perturbation.csv")
    assert len(perturbation) == 12 * 4 and (perturbation["fill"] == "noise").all()
    assert (run / "perturbation_zero.csv").exists()

    text = _run(
        "06_stats_figures.ipynb", run, tmp_path / "06.ipynb", figures_dir=str(tmp_path / "fig")
    )
    assert "top lobe right in" in text
    table = pd.read_csv(run / "table1.csv")
    assert len(table) == 16 and not table.isna().any().any()
    assert (run / "table1.md").exists() and (run / "table1.tex").exists()
    recovery = json.loads((run / "recovery.json").read_text())
    assert recovery["groups"] == 4 and -1 <= recovery["spearman_rho"] <= 1
    for name in ("table1_heatmap", "importance_trajectory", "importance_on_brain"):
        assert (tmp_path / "fig" / f"{name}.png").exists()
