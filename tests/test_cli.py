"""The synthetic-cohort command line and the subject specifications behind it."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ctbrainage.synth.__main__ import main
from ctbrainage.synth.generate import CohortError, cohort_specs


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n", "-3"], "positive"),
        (["--age-max", "60"], "0-47"),
        (["--schedule", "null=front"], "unknown lobe 'front'"),
        (["--tilt-fraction", "1.5"], "tilt fraction"),
        (["--profile", "nonexistent"], "unknown profile 'nonexistent'"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(tmp_path, capsys, args, message):
    out = tmp_path / "cohort"
    assert main([*args, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and message in captured.err
    assert captured.out == ""
    assert not out.exists()  # refused before anything is written


def test_small_cohort_is_written(tmp_path, capsys):
    out = tmp_path / "cohort"
    args = [
        "--n",
        "2",
        "--seed",
        "3",
        "--workers",
        "1",
        "--quiet",
        "--out",
        str(out),
        "--schedule",
        "null=temporal",
        "--quick-res",
    ]
    assert main(args) == 0
    assert "2 subjects in" in capsys.readouterr().out
    manifest = pd.read_csv(out / "cohort.csv")
    assert list(manifest.columns) == ["subject_id", "age_months", "sex", "site", "image"]
    assert len(manifest) == 2 and all((out / image).exists() for image in manifest["image"])
    assert len(pd.read_csv(out / "truth.csv")) == 2
    assert json.loads((out / "truth" / "syn0001.json").read_text())["mode"] == "quick"
    assert nib.load(out / manifest["image"][0]).header.get_zooms()[2] == 4.0  # 4 mm slices
    assert json.loads((out / "schedule.json").read_text())["lobes"]["temporal"]["null"] is True
    importance = pd.read_csv(out / "expected_importance.csv")
    assert len(importance) == 32  # 2 definitions x 4 paper age groups x 4 lobes
    assert importance.groupby("definition").size().to_dict() == {
        "fisher": 16,
        "hu_slope_x_wm_share": 16,
    }
    assert (importance.loc[importance["lobe"] == "temporal", "importance"] == 0).all()


def _ages(specs):
    return np.array([s.age_months for s in specs])


def test_cohort_specs_are_deterministic_stratified_and_balanced():
    first, again, other = cohort_specs(8, 1), cohort_specs(8, 1), cohort_specs(8, 2)
    assert first == again and first != other
    assert [s.subject_id for s in first] == [f"syn{i:04d}" for i in range(1, 9)]
    assert len({s.seed for s in first}) == 8
    for seed in range(4):
        specs = cohort_specs(8, seed)
        assert np.histogram(_ages(specs), [0, 12, 24, 36, 48])[0].tolist() == [2, 2, 2, 2]
        assert sorted(s.sex for s in specs) == ["F"] * 4 + ["M"] * 4
        assert {s.site for s in specs} == {"A", "B"}
    ages = _ages(cohort_specs(50, 3, age_range=(6.0, 18.0)))
    assert ages.min() >= 6.0 and ages.max() < 18.0


def test_gantry_tilt_fraction():
    tilts = np.array([s.gantry_tilt_deg for s in cohort_specs(20, 0, tilt_fraction=1.0)])
    assert np.all((tilts >= 10.0) & (tilts <= 20.0))
    assert all(s.gantry_tilt_deg == 0.0 for s in cohort_specs(20, 0, tilt_fraction=0.0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "positive integer"),
        ({"n": 2.5}, "positive integer"),
        ({"n": 4, "tilt_fraction": -0.1}, "tilt fraction"),
        ({"n": 4, "age_range": (30.0, 20.0)}, "0-47"),
    ],
)
def test_cohort_specs_refuse_bad_arguments(kwargs, message):
    with pytest.raises(CohortError, match=message):
        cohort_specs(seed=0, **kwargs)


def test_rounding_keeps_ages_in_their_stratum_and_range():
    # seed 5: an age just below 36 rounds to 36.0 and moves into the 36-48 group
    assert np.histogram(_ages(cohort_specs(8, 5)), [0, 12, 24, 36, 48])[0].tolist() == [2] * 4
    # seed 26: an age just above 3.333 rounds to 3.33, below the requested minimum
    assert _ages(cohort_specs(200, 26, age_range=(3.333, 7.777))).min() >= 3.333


def test_help_lists_every_profile_and_every_step(capsys):
    from ctbrainage.core.config import available_profiles
    from ctbrainage.run.cli import _parser
    from ctbrainage.run.plan import NOTEBOOKS

    text = " ".join(_parser().format_help().split())  # argparse wraps lines
    assert available_profiles() == ["benchmark", "demo", "multiseed", "paper", "tiny"]
    assert "benchmark | demo | multiseed | paper | tiny, or a profile YAML" in text
    for name in NOTEBOOKS.values():
        assert name in text, name
    assert "on request (--from NN --to NN): 08_stacking, 09_new_scans" in text


@pytest.mark.integration  # starts a kernel and executes a notebook
def test_notebook_kernels_talk_over_ipc_without_the_tcp_warning(tmp_path, capfd):
    import nbformat

    from ctbrainage.run.execute import IPCKernelManager, execute_notebook

    assert IPCKernelManager().transport == "ipc"
    spec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell("print(6 * 7)")
    nbformat.write(
        nbformat.v4.new_notebook(cells=[cell], metadata={"kernelspec": spec}), tmp_path / "in.ipynb"
    )
    done = execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), {})
    assert done["status"] == "done", done
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert out.cells[0].outputs[0]["text"] == "42\n"
    assert "without encryption" not in capfd.readouterr().err
