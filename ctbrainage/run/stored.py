"""What an executed notebook keeps: outputs a reader can open anywhere, without a kernel.

Papermill stores each widget as a ``widget-view`` reference to a model that only the live
kernel holds, and nbclient adds the widgets' state to the metadata. Opened later (JupyterLab
without running, an exported page) such an output shows a raw repr, an error or nothing. So a
stored notebook keeps, of a widget output, only its static picture and text when it has them
(the viewers of :mod:`ctbrainage.views.widgets`), and drops widgets that have none (progress bars);
and every path under the repository is written relative to it.
"""

from __future__ import annotations

from pathlib import Path

import nbformat

from ctbrainage.core.atomic import atomic_write_text
from ctbrainage.core.config import REPO_ROOT

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "widgets"  # the notebook metadata key of the stored widget state


def relative_to_repository(text: str) -> str:
    """``text`` with every path under the repository written relative to it."""
    return text.replace(f"{REPO_ROOT}/", "").replace(str(REPO_ROOT), ".")


def static_outputs(outputs: list) -> list:
    """``outputs`` with widgets replaced by their static picture and text, or dropped when they
    have none; empty displays are dropped too."""
    kept = []
    for output in outputs:
        data = output.get("data")
        if data is not None and WIDGET_VIEW in data:
            del data[WIDGET_VIEW]
            if not set(data) - {"text/plain"}:
                continue  # a widget with nothing but its repr: a progress bar, an Output area
        if data is not None and not any(str(value).strip() for value in data.values()):
            continue
        kept.append(output)
    return kept


def store(notebook: str | Path, out: str | Path | None = None) -> Path:
    """Rewrite an executed ``notebook`` (to ``out``, default in place, atomically) with static
    outputs, no widget state and repository-relative paths; returns the written path."""
    node = nbformat.reads(relative_to_repository(Path(notebook).read_text()), as_version=4)
    node.metadata.pop(WIDGET_STATE, None)
    for cell in node.cells:
        if cell.cell_type == "code":
            cell.outputs = static_outputs(cell.outputs)
    out = Path(out or notebook)
    atomic_write_text(out, nbformat.writes(node) + "\n")
    return out
