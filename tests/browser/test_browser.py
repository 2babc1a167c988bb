"""Real-browser tests (``make test-browser``): the interactive viewers of notebooks 02 and 05
in JupyterLab, the stored picture of a committed notebook, and the exported pages offline.

Needs Debian's Chromium, Playwright and JupyterLab; runs only with ``CTBRAINAGE_BROWSER=1``::

    CTBRAINAGE_BROWSER=1 .venv/bin/python -m pytest tests/browser -v

Builds (or reuses) the tiny run ``runs/browser-test`` through step 05 and saves screenshots in
``runs/browser-test/screenshots/``.
"""

from __future__ import annotations

import os

import pytest

if os.environ.get("CTBRAINAGE_BROWSER") != "1":
    pytest.skip(
        "real-browser tests: set CTBRAINAGE_BROWSER=1 (make test-browser)", allow_module_level=True
    )
pytest.importorskip("playwright.sync_api", reason="playwright not installed")
pytest.importorskip("jupyterlab", reason="jupyterlab not installed")

from lab_pages import (  # noqa: E402
    OfflinePage,
    cell_id,
    code_cell,
    control,
    forbidden,
    open_notebook,
    run_all_cells,
    shows_picture,
    step_slider,
    titled_image,
    wait_src_changed,
)
from playwright.sync_api import expect  # noqa: E402

LOBE_NAMES = ("frontal", "parietal", "temporal", "occipital")
expect.set_options(timeout=30_000)  # a widget renders some seconds after its cell ran


def _run_notebook(page, lab, name: str, marker: str):
    """Open the run's executed notebook ``name``, run all its cells and return the output area
    of the cell whose source contains ``marker``, once its widget shows a picture."""
    open_notebook(page, lab, f"runs/browser-test/notebooks/{name}.ipynb")
    run_all_cells(page)
    viewer = code_cell(page, marker).locator(".jp-OutputArea")
    viewer.scroll_into_view_if_needed()
    expect(viewer.locator("img.widget-image").first).to_be_visible()
    return viewer


def test_slice_viewer_in_jupyterlab(page, lab, shots):
    """02: the SliceViewer's picture changes with its slice slider, a lobe checkbox and its
    subject picker, which lists only subjects (each with its age)."""
    viewer = _run_notebook(page, lab, "02_lobes", "SliceViewer")
    for name in LOBE_NAMES:
        expect(viewer.get_by_role("checkbox", name=name)).to_be_checked()
    image = viewer.locator("img.widget-image")
    expect(image).to_have_count(1)
    src = image.get_attribute("src")
    page.screenshot(path=shots / "02_viewer_before.png")

    step_slider(control(viewer, "slider", "slice"))
    src = wait_src_changed(image, src)
    page.screenshot(path=shots / "02_viewer_after_slice.png")

    viewer.get_by_role("checkbox", name="frontal").click()
    expect(viewer.get_by_role("checkbox", name="frontal")).not_to_be_checked()
    src = wait_src_changed(image, src)
    page.screenshot(path=shots / "02_viewer_after_lobe.png")

    subject = control(viewer, "dropdown", "subject").locator("select")
    subject.select_option(index=1)
    wait_src_changed(image, src)
    page.screenshot(path=shots / "02_viewer_after_subject.png")
    ageless = [o for o in subject.locator("option").all_inner_texts() if "months" not in o]
    assert not ageless, f"the subject picker lists {len(ageless)} entries without an age: {ageless}"


def test_perturbation_viewer_in_jupyterlab(page, lab, shots):
    """05: both panels change with the slice; the filled panel changes with the lobe."""
    viewer = _run_notebook(page, lab, "05_perturbation", "PerturbationViewer")
    original, filled = titled_image(viewer, "original"), titled_image(viewer, "lobe filled")
    expect(original).to_have_count(1)
    expect(filled).to_have_count(1)
    before = original.get_attribute("src"), filled.get_attribute("src")
    page.screenshot(path=shots / "05_viewer_before.png")

    step_slider(control(viewer, "slider", "slice"))
    after = wait_src_changed(original, before[0]), wait_src_changed(filled, before[1])
    page.screenshot(path=shots / "05_viewer_after_slice.png")

    lobe = control(viewer, "dropdown", "lobe").locator("select")
    current = lobe.input_value()
    other = next(name for name in LOBE_NAMES if name != current)
    lobe.select_option(other)
    wait_src_changed(filled, after[1])
    page.screenshot(path=shots / "05_viewer_after_lobe.png")


def test_committed_notebook_shows_stored_picture(page, lab, shots):
    """The committed notebooks/02_lobes.ipynb, opened but not run: the viewer cell shows its
    stored picture, and no widget repr or missing-model error."""
    open_notebook(page, lab, "notebooks/02_lobes.ipynb")
    output = code_cell(page, "SliceViewer").locator(".jp-OutputArea")
    output.scroll_into_view_if_needed()
    page.wait_for_timeout(2000)  # the widget manager renders (or fails to) after the kernel
    page.screenshot(path=shots / "committed_02_viewer.png")
    text = page.locator(".jp-NotebookPanel").text_content()
    assert not forbidden(text), (
        f"the committed notebook shows {forbidden(text)}; viewer output: "
        f"{output.text_content()[:300]!r}"
    )
    images = output.locator("img")
    assert images.count() and shows_picture(images.first), (
        f"no picture in the viewer's stored output: {output.text_content()[:300]!r}"
    )


@pytest.mark.parametrize(
    ("page_name", "viewer_of"),
    [
        ("index.html", None),
        ("html/02_lobes.noinput.html", ("02_lobes", "SliceViewer")),
        ("html/05_perturbation.html", ("05_perturbation", "PerturbationViewer")),
    ],
)
def test_exported_page_offline(browser, browser_run, shots, page_name, viewer_of):
    """An exported page works from disk with no network: nothing requested off the machine,
    no JavaScript error, every image shown, no widget repr or progress bar text, and the
    viewer cell shows its picture."""
    shown = OfflinePage(browser, (browser_run / page_name).as_uri())
    try:
        broken = shown.load_images()
        text = shown.page.locator("body").inner_text()
        viewer_images = []
        if viewer_of:
            notebook, marker = viewer_of
            cell = cell_id(browser_run / "notebooks" / f"{notebook}.ipynb", marker)
            viewer_images = shown.page.locator(f'[id="cell-id={cell}"] .jp-OutputArea img').all()
        shot = shots / f"offline_{page_name.replace('/', '_').removesuffix('.html')}.png"
        shown.page.screenshot(path=shot, full_page=True)
        problems = {
            "requests off the machine (aborted)": shown.blocked,
            "JavaScript errors": shown.js_errors,
            "images not shown": broken,
            "forbidden text": forbidden(text),
        }
        if viewer_of:
            problems["viewer cell without a picture"] = (
                [] if any(shows_picture(i) for i in viewer_images) else [viewer_of[1]]
            )
        problems = {what: found for what, found in problems.items() if found}
        assert not problems, f"{page_name}: {problems}"
    finally:
        shown.close()
