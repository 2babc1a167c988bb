"""The notebooks execute end to end (papermill) at the tiny profile."""

from pathlib import Path

import nbformat
import pandas as pd
import papermill as pm

ROOT = Path(__file__).resolve().parent.parent


def test_01_preprocess_runs_and_writes_the_run_directory(tmp_path):
    run = tmp_path / "run"
    out = tmp_path / "01.ipynb"
    pm.execute_notebook(
        ROOT / "notebooks" / "01_preprocess.ipynb",
        out,
        parameters={"profile": "tiny", "run_dir": str(run), "workers": 2},
        progress_bar=False,
        cwd=str(ROOT / "notebooks"),
    )
    executed = nbformat.read(out, as_version=4)
    text = "".join(str(o.get("text", "")) for c in executed.cells for o in c.get("outputs", []))
    assert "minimum Dice" in text
    cohort = pd.read_csv(run / "cohort.csv")
    table = pd.read_csv(run / "preprocess.csv")
    assert len(cohort) == 12 and set(table["subject_id"]) == set(cohort["subject_id"])
    for sid in cohort["subject_id"]:
        assert (run / "preprocessed" / f"{sid}.nii.gz").exists()
        assert (run / "qc" / f"{sid}.png").exists()
