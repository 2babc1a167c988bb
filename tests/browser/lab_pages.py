"""Playwright helpers of the browser tests: driving a notebook in JupyterLab (run all, find a
cell and its ipywidgets controls by their labels) and checking an exported page offline."""

from __future__ import annotations

import json
import re
from pathlib import Path

from playwright.sync_api import Locator, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeout

# what a page must never show: a widget's repr, a widget without its model, a tqdm bar
FORBIDDEN_TEXT = ("VBox(children", "Error displaying widget", "model not found", "%|")
LOCAL_SCHEMES = ("file:", "data:", "blob:")

# the open notebook's kernel status and code cells still without an execution count / in error;
# needs --LabApp.expose_app_in_browser
NOTEBOOK_STATE = """() => {
  const panel = window.jupyterapp?.shell.currentWidget;
  const kernel = panel?.sessionContext?.session?.kernel;
  if (!kernel || !panel.content) return null;
  const cells = panel.content.widgets.filter(c => c.model.type === 'code');
  const errors = cells.flatMap(c => c.model.outputs.toJSON())
    .filter(o => o.output_type === 'error').map(o => `${o.ename}: ${o.evalue}`);
  return {kernel: kernel.status, pending: cells.filter(c => c.model.executionCount === null).length,
          errors};
}"""


def open_notebook(page: Page, lab, path: str, timeout_s: float = 90) -> None:
    """Open the notebook at ``path`` (from the server's root) in JupyterLab, alone (``?reset``:
    no tab restored from the workspace), and wait until its kernel is idle."""
    page.goto(lab.url(f"lab/tree/{path}?reset"))
    page.wait_for_function(
        f"() => ({NOTEBOOK_STATE})()?.kernel === 'idle'", timeout=timeout_s * 1000
    )


def run_all_cells(page: Page, timeout_s: float = 240) -> None:
    """Clear the outputs (and execution counts), run every cell (the command behind Run > Run
    All Cells) and wait until the kernel is idle with every code cell executed; fails on the
    first error output."""
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs')")
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function(
        f"""() => {{ const s = ({NOTEBOOK_STATE})();
                     return s && (s.errors.length || (s.kernel === 'idle' && !s.pending)); }}""",
        timeout=timeout_s * 1000,
        polling=500,
    )
    state = page.evaluate(NOTEBOOK_STATE)
    assert not state["errors"], f"a cell failed: {state['errors']}"


def code_cell(page: Page, marker: str) -> Locator:
    """The shown notebook's code cell whose source contains ``marker``."""
    shown = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")  # not a restored hidden tab
    source = page.locator(".jp-InputArea", has_text=marker)
    cell = shown.locator(".jp-CodeCell").filter(has=source)
    expect(cell).to_have_count(1)
    return cell


def control(scope: Locator, kind: str, label: str) -> Locator:
    """The ipywidgets control of class ``widget-<kind>`` (slider, dropdown, ...) whose
    description label is ``label``."""
    return scope.locator(
        f"xpath=.//div[contains(@class, 'widget-{kind}')]"
        f"[./label[contains(@class, 'widget-label')][normalize-space() = '{label}']]"
    )


def titled_image(scope: Locator, title: str) -> Locator:
    """The ``Image`` widget in the box whose HTML title (e.g. ``<b>original</b>``) is ``title``."""
    return scope.locator(
        "xpath=.//div[contains(@class, 'widget-vbox')]"
        f"[./div[contains(@class, 'widget-html')]"
        f"[./div[contains(@class, 'widget-html-content')][normalize-space() = '{title}']]]"
        "/img[contains(@class, 'widget-image')]"
    )


def step_slider(slider: Locator) -> int:
    """Move an ``IntSlider`` one step right with the keyboard (its noUiSlider handle takes
    arrow keys) and return the new value."""
    handle = slider.locator(".noUi-handle")
    value = round(float(handle.get_attribute("aria-valuenow")))
    handle.focus()
    handle.press("ArrowRight")
    expect(handle).to_have_attribute("aria-valuenow", re.compile(rf"^{value + 1}(\.0*)?$"))
    return value + 1


def wait_src_changed(image: Locator, before: str, timeout_s: float = 30) -> str:
    """Wait until ``image`` shows a new picture (a new ``src``: ipywidgets makes a blob URL per
    value) and return it."""
    expect(image).not_to_have_attribute("src", before, timeout=timeout_s * 1000)
    return image.get_attribute("src")


def shows_picture(image: Locator) -> bool:
    """Whether an ``<img>`` has loaded a picture."""
    return image.evaluate("img => img.complete && img.naturalWidth > 0")


def forbidden(text: str) -> list[str]:
    """The :data:`FORBIDDEN_TEXT` found in ``text``."""
    return [bad for bad in FORBIDDEN_TEXT if bad in text]


def cell_id(notebook: Path, marker: str) -> str:
    """The id of the notebook's code cell whose source contains ``marker`` (exported pages
    carry it as ``id="cell-id=<id>"``)."""
    cells = json.loads(notebook.read_text())["cells"]
    found = [c["id"] for c in cells if c["cell_type"] == "code" and marker in "".join(c["source"])]
    assert len(found) == 1, f"{notebook.name}: {len(found)} code cells contain {marker!r}"
    return found[0]


class OfflinePage:
    """A page opened in its own browser context where every request that is not ``file:``,
    ``data:`` or ``blob:`` is aborted and recorded, as are JavaScript errors."""

    def __init__(self, browser, url: str, timeout_s: float = 60):
        self.blocked: list[str] = []
        self.js_errors: list[str] = []
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.context.set_default_timeout(timeout_s * 1000)
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda error: self.js_errors.append(str(error)))
        self.page.on("websocket", lambda socket: self.blocked.append(socket.url))
        self.page.goto(url, wait_until="load")

    def _route(self, route) -> None:
        if route.request.url.startswith(LOCAL_SCHEMES):
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()

    def load_images(self, timeout_s: float = 30) -> list[str]:
        """Load every ``<img>`` now (lazy ones too) and return those that show no picture."""
        self.page.evaluate("() => { for (const i of document.images) i.loading = 'eager'; }")
        try:
            self.page.wait_for_function(
                "() => [...document.images].every(i => i.complete)", timeout=timeout_s * 1000
            )
        except PlaywrightTimeout:
            pass  # reported below
        return self.page.evaluate(
            """() => [...document.images].filter(i => !(i.complete && i.naturalWidth > 0))
                       .map(i => i.src.slice(0, 80))"""
        )

    def close(self) -> None:
        self.context.close()
