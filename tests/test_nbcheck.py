"""nbcheck's pieces: retargeting executed notebooks, the sanitising rules, the committed
notebooks being checkable; and the index page of a run with nothing in it yet."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbval.plugin import get_sanitize_patterns

from ctbrainage.run import nbcheck
from ctbrainage.views import pages

ROOT = Path(__file__).resolve().parent.parent


def _executed(path: Path, injected: str) -> Path:
    nb = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell('profile = "demo"\nrun_dir = ""')
    parameters.metadata["tags"] = ["parameters"]
    cell = nbformat.v4.new_code_cell(injected)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells = [parameters, cell, nbformat.v4.new_code_cell("print(run_dir)")]
    nbformat.write(nb, path)
    return path


def test_retarget_points_the_copy_and_its_figures_at_the_new_run(tmp_path):
    source = _executed(
        tmp_path / "06_x.ipynb",
        '# Parameters\nprofile = "tiny"\nrun_dir = "/old/run"\nfigures_dir = "/repo/figures"\n',
    )
    copy, stored = nbcheck.retarget(source, tmp_path / "new", tmp_path / "out")
    assert copy == tmp_path / "out" / "06_x.ipynb"
    assert stored["run_dir"] == "/old/run" and stored["figures_dir"] == "/repo/figures"
    assert nbcheck.injected_parameters(nbformat.read(copy, as_version=4)) == {
        "profile": "tiny",
        "run_dir": str(tmp_path / "new"),
        "figures_dir": str(tmp_path / "new" / "extra_figures"),
    }
    assert "/old/run" in source.read_text()  # the stored notebook is untouched


def test_a_notebook_that_was_never_executed_is_refused(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1")]
    nbformat.write(nb, tmp_path / "01_raw.ipynb")
    with pytest.raises(ValueError, match="no injected-parameters cell"):
        nbcheck.retarget(tmp_path / "01_raw.ipynb", tmp_path / "run", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no numbered notebooks"):
        nbcheck.check(tmp_path / "empty", tmp_path / "run")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "manifest.json").write_text("{}")
    with pytest.raises(FileExistsError, match="needs a fresh run directory"):
        nbcheck.check(tmp_path, tmp_path / "used")


def _apply(rules_file: Path, text: str) -> str:
    """What nbval does with a sanitize file."""
    for regex, replace in get_sanitize_patterns(rules_file.read_text()):
        text = re.sub(regex, replace, text)
    return text


def test_sanitising_maps_run_directories_times_and_addresses_to_one_form(tmp_path):
    rules = nbcheck.sanitize_file({"/work/a/runs/demo"}, tmp_path / "check", tmp_path / "s.cfg")
    stored = "wrote /work/a/runs/demo/table1.csv; <obj at 0x7f3a2c> 12/12 [00:03<00:00, 3.9it/s]"
    fresh = f"wrote {tmp_path}/check/table1.csv; <obj at 0x55e0aa> 12/12 [00:05<00:00, 2.1it/s]"
    assert _apply(rules, stored) == _apply(rules, fresh)
    # numbers that are results are left alone
    assert _apply(rules, "MAE 4.64 months, r 0.897") == "MAE 4.64 months, r 0.897"
    assert "650x420" in _apply(rules, "<Figure size 650x420 with 1 Axes>")


def test_the_committed_notebooks_are_executed_and_checkable():
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        node = nbformat.read(path, as_version=4)
        parameters = nbcheck.injected_parameters(node)
        profile = nbcheck.OWN_PROFILE.get(path.stem, "demo")  # step 10: the benchmark's grid
        assert parameters.get("profile") == profile, path.name
        assert parameters.get("run_dir", f"runs/{profile}") == f"runs/{profile}", path.name
        assert not Path(parameters.get("figures_dir", "figures")).is_absolute(), path.name
        papermill = node.metadata.get("papermill", {})
        for key in ("input_path", "output_path"):
            assert not Path(papermill.get(key) or ".").is_absolute(), (path.name, key)
        assert any(c.get("outputs") for c in node.cells if c.cell_type == "code"), path.name


def test_a_notebook_of_another_profile_is_left_out_of_the_check(tmp_path, capsys):
    demo = _executed(tmp_path / "04_evaluate.ipynb", 'profile = "demo"\nrun_dir = "runs/demo"')
    other = _executed(tmp_path / "10_robustness.ipynb",
                      'profile = "benchmark"\nrun_dir = "runs/benchmark"')  # fmt: skip
    kept = nbcheck.same_profile([demo, other])
    assert kept == [demo]
    assert "10_robustness.ipynb: executed on profile 'benchmark'" in capsys.readouterr().out


def test_the_index_page_of_an_empty_run_is_still_a_page(tmp_path):
    run = tmp_path / "run <1>"
    run.mkdir()
    page = pages.write_index(run).read_text()
    assert page.startswith("<!DOCTYPE html>") and "run <code>run &lt;1&gt;</code>" in page


def test_a_figure_is_drawn_once_and_saved_to_every_folder(tmp_path):
    import matplotlib.pyplot as plt

    from ctbrainage.views.plots.common import save

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    targets = [tmp_path / "run" / "f.png", tmp_path / "figures" / "f.png"]
    assert save(fig, targets) is fig
    assert targets[0].read_bytes()[:4] == b"\x89PNG" and targets[1].exists()
    save(fig, tmp_path / "single.pdf")
    assert (tmp_path / "single.pdf").read_bytes()[:4] == b"%PDF"
    plt.close(fig)
