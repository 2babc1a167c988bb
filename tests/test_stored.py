"""What an executed notebook keeps, and its pages: static pictures of widgets, no progress
bars, no widget state, no path of the build machine, nothing loaded from the web."""

from __future__ import annotations

import base64

import nbformat
import numpy as np
from nbformat.v4 import new_code_cell, new_notebook, new_output

from ctbrainage.core.config import REPO_ROOT
from ctbrainage.run import stored
from ctbrainage.views import pages, widgets

VIEW = stored.WIDGET_VIEW


def executed_notebook(path):
    """A notebook as papermill stores it: a viewer, a progress bar, an empty display, a path
    of this machine in a warning, and the widget state in the metadata."""
    viewer = widgets.SliceViewer(np.linspace(0, 1, 8 * 8 * 8).reshape(8, 8, 8))
    bundle = viewer._repr_mimebundle_()
    bar = {VIEW: {"model_id": "ab"}, "text/plain": "fold 0:  40%|####      | 2/5"}
    warning = f"{REPO_ROOT}/ctbrainage/x.py:3: a warning\n"
    cells = [
        new_code_cell("viewer", outputs=[new_output("execute_result", bundle, execution_count=1)]),
        new_code_cell("bar", outputs=[new_output("display_data", bar)]),
        new_code_cell(
            "empty", outputs=[new_output("display_data", {"text/html": "", "text/plain": ""})]
        ),
        new_code_cell("warn", outputs=[new_output("stream", name="stderr", text=warning)]),
    ]
    node = new_notebook(cells=cells, metadata={"widgets": {"state": {"ab": {}}}})
    nbformat.write(node, path)
    return viewer


def test_a_stored_notebook_keeps_pictures_and_drops_what_needs_a_kernel(tmp_path):
    viewer = executed_notebook(tmp_path / "nb.ipynb")
    node = nbformat.read(stored.store(tmp_path / "nb.ipynb", tmp_path / "out.ipynb"), 4)
    assert "widgets" not in node.metadata
    (shown,), bar, empty, (warning,) = (c.outputs for c in node.cells)
    assert set(shown.data) == {"image/png", "text/plain"}
    assert base64.b64decode(shown.data["image/png"]) == viewer.picture()
    assert shown.data["text/plain"] == f"SliceViewer: {viewer.text}"
    assert bar == [] and empty == []
    assert warning.text == "ctbrainage/x.py:3: a warning\n"


def test_the_picture_follows_the_viewer():
    viewer = widgets.SliceViewer(np.random.default_rng(0).random((8, 8, 8)), title="phantom")
    before = viewer._repr_mimebundle_()
    viewer.slice.value = 1
    after = viewer._repr_mimebundle_()
    assert before["image/png"] != after["image/png"]
    assert "axial slice 1 of 7" in after["text/plain"] and VIEW in after


def test_exported_pages_are_self_contained(tmp_path):
    executed_notebook(tmp_path / "02_lobes.ipynb")
    stored.store(tmp_path / "02_lobes.ipynb")
    for page in pages.export_notebook(tmp_path / "02_lobes.ipynb", tmp_path):
        text = page.read_text()
        assert "<script src=" not in text and "<link href=" not in text and "cdn" not in text
        assert "data:image/png;base64," in text and "VBox(" not in text


def test_the_committed_notebooks_are_static_and_portable():
    """What a reader opens first: no widget reference or state, no raw widget repr, no
    progress-bar text and no absolute path, and the viewers' pictures are there."""
    pictures = 0
    for notebook in sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        text = notebook.read_text()
        for needle in (str(REPO_ROOT), "/home/", "/root/", "/tmp/", VIEW, "VBox(", "%|"):
            assert needle not in text, f"{notebook.name}: {needle!r}"
        node = nbformat.reads(text, as_version=4)
        assert "widgets" not in node.metadata, notebook.name
        for cell in node.cells:
            for output in cell.get("outputs", []):
                plain = output.get("data", {}).get("text/plain", "")
                if plain.startswith(("SliceViewer: ", "PerturbationViewer: ")):
                    pictures += bool(output["data"]["image/png"])
    assert pictures == 2  # 02's SliceViewer and 05's PerturbationViewer
