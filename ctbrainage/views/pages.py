"""The readable side of a run: executed notebooks as HTML and one index page.

``<run>/html/NN_name.html`` shows code and outputs; ``NN_name.noinput.html`` only prose, tables
and figures, for reviewers. The pages are self-contained and work offline: images are embedded
and nothing is loaded from the web (the ``offline`` template; the viewers appear as the static
pictures stored with the notebook). ``<run>/index.html`` links them and shows the run at a
glance: step status and timings, metrics, Table 1, ground-truth recovery, figures and the QC
images.
Every page uses paths relative to the run directory, so the run can be moved or shared as is.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import nbformat
import pandas as pd
from nbconvert import HTMLExporter

from ctbrainage.core.atomic import atomic_write_text
from ctbrainage.core.layout import RunLayout
from ctbrainage.views.tables import readable

VARIANTS = {".html": False, ".noinput.html": True}  # suffix -> exclude the code
TEMPLATES = Path(__file__).parents[1] / "templates"  # offline: the pages load nothing from the web


def export_notebook(notebook: str | Path, html_dir: str | Path) -> list[Path]:
    """Write ``<stem>.html`` and ``<stem>.noinput.html`` for one executed notebook."""
    notebook, html_dir = Path(notebook), Path(html_dir)
    node = nbformat.read(notebook, as_version=4)
    written = []
    for suffix, no_input in VARIANTS.items():
        exporter = HTMLExporter(
            template_name="offline",
            extra_template_basedirs=[str(TEMPLATES)],
            exclude_input=no_input,
            exclude_input_prompt=no_input,
            exclude_output_prompt=no_input,
        )
        body, _ = exporter.from_notebook_node(node)
        out = html_dir / f"{notebook.stem}{suffix}"
        atomic_write_text(out, body)
        written.append(out)
    return written


def export_notebooks(run_dir: str | Path) -> list[Path]:
    """Export every executed notebook of the run whose HTML is missing or older than it."""
    layout = RunLayout(run_dir)
    written = []
    for notebook in sorted(layout.notebooks_dir.glob("*.ipynb")):
        targets = [layout.html(notebook.stem, suffix) for suffix in VARIANTS]
        mtime = notebook.stat().st_mtime
        if all(t.exists() and t.stat().st_mtime >= mtime for t in targets):
            continue
        written += export_notebook(notebook, layout.html_dir)
    return written


def write_report(run_dir: str | Path) -> Path:
    """Export the notebooks that changed and (re)write ``index.html``; returns its path."""
    export_notebooks(run_dir)
    return write_index(run_dir)


# ---------------------------------------------------------------- index page

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f4f4f4; } td.failed { color: #b00; font-weight: bold; }
.meta { color: #555; } figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure { max-width: 100%; } figure img { max-width: 100%; }
.qc img { width: 9em; } .qc figure { margin: 0.2em; }
figcaption { font-size: 0.8em; color: #555; text-align: center; }
"""


def write_index(run_dir: str | Path) -> Path:
    """Write ``<run>/index.html`` from what the run directory holds (absent parts are skipped)."""
    layout = RunLayout(run_dir)
    manifest = _read_json(layout.manifest)
    sections = [
        _header(layout, manifest),
        _steps(layout, manifest),
        _csv_section(layout.metrics, "Age prediction (months), per fold and pooled"),
        _csv_section(layout.table1(".csv"), "Table 1: ΔAE per lobe and age group", index=False),
        _recovery(layout.recovery),
        _new_scans(layout),
        _figures(layout),
        _exclusions(layout.exclusions),
        _qc(layout),
    ]
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>ctbrainage run {_e(layout.root.name)}</title><style>{STYLE}</style></head>"
        "<body>\n" + "\n".join(s for s in sections if s) + "\n</body></html>\n"
    )
    atomic_write_text(layout.index, page)
    return layout.index


def _e(value) -> str:
    return html.escape(str(value))


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _href(layout: RunLayout, path: Path) -> str:
    """A link from the index page to a file of the run (relative: the run can be moved)."""
    return _e(path.relative_to(layout.root).as_posix())


def _header(layout: RunLayout, manifest: dict) -> str:
    profile = manifest.get("profile", {})
    git = manifest.get("git") or {}
    runs = manifest.get("invocations") or [{}]
    facts = [
        ("profile", profile.get("name", "?")),
        ("status", manifest.get("status", "?")),
        ("last invocation", f"{runs[-1].get('started', '?')}, {runs[-1].get('duration_s', '?')} s"),
        ("git commit", (git.get("commit") or "?")[:12] + (" (dirty)" if git.get("dirty") else "")),
        ("seed", profile.get("seed", "?")),
    ]
    meta = " · ".join(f"{_e(k)}: <b>{_e(v)}</b>" for k, v in facts)
    return (
        f"<h1>ctbrainage run <code>{_e(layout.root.name)}</code></h1><p class='meta'>{meta}</p>"
        f"<p class='meta'>Full record: <a href='{_href(layout, layout.manifest)}'>"
        f"{_e(layout.manifest.name)}</a>.</p>"
    )


def _steps(layout: RunLayout, manifest: dict) -> str:
    steps = manifest.get("steps") or {}
    if not steps:
        return ""
    rows = []
    for name, entry in steps.items():
        status = entry.get("status", "?")
        seconds = entry.get("duration_s")
        links = [
            f"<a href='{_href(layout, path)}'>{label}</a>"
            for path, label in (
                (layout.html(name, ".noinput.html"), "results"),
                (layout.html(name, ".html"), "with code"),
                (layout.notebook(name), "ipynb"),
            )
            if path.exists()
        ]
        why = (entry.get("error") or {}).get("why") or entry.get("reason") or ""
        rows.append(
            f"<tr><td style='text-align:left'>{_e(name)}</td>"
            f"<td class='{_e(status)}'>{_e(status)}</td>"
            f"<td>{'' if seconds is None else f'{seconds:.1f}'}</td>"
            f"<td style='text-align:left'>{' · '.join(links)}</td>"
            f"<td style='text-align:left'>{_e(why)}</td></tr>"
        )
    head = "<tr><th>step</th><th>status</th><th>seconds</th><th>notebook</th><th>note</th></tr>"
    return f"<h2>Steps</h2><table>{head}{''.join(rows)}</table>"


def _csv_section(path: Path, title: str, index: bool = True) -> str:
    if not path.exists():
        return ""
    table = pd.read_csv(path, index_col=0 if index else None)
    return f"<h2>{_e(title)}</h2>" + readable(table).to_html(index=index)


def _recovery(path: Path) -> str:
    recovery = _read_json(path)
    if not recovery:
        return ""
    rows = "".join(
        f"<tr><td>{_e(group)}</td><td>{_e(top['planted'])}</td><td>{_e(top['measured'])}</td>"
        f"<td>{'yes' if top['match'] else 'no'}</td></tr>"
        for group, top in recovery.get("top_lobe", {}).items()
    )
    numbers = {k: v for k, v in recovery.items() if isinstance(v, int | float)}
    facts = " · ".join(f"{_e(k)}: <b>{v:.3g}</b>" for k, v in numbers.items())
    return (
        "<h2>Ground truth: planted vs measured lobe importance</h2>"
        f"<p>{facts}</p><table><tr><th>group</th><th>planted top lobe</th>"
        f"<th>measured top lobe</th><th>match</th></tr>{rows}</table>"
    )


def _new_scans(layout: RunLayout) -> str:
    """Links to step 09's bundle and its brain-age pages of new scans, when made."""
    from ctbrainage.core.layout import BundleLayout

    pages, card = RunLayout(layout.new_scans_dir).index, BundleLayout(layout.bundle_dir).model_card
    links = [
        f"<a href='{_href(layout, path)}'>{label}</a>"
        for path, label in ((pages, "brain age of new scans"), (card, "the bundle's model card"))
        if path.exists()
    ]
    return f"<h2>New scans (step 09)</h2><p>{' · '.join(links)}</p>" if links else ""


def _gallery(layout: RunLayout, folder: Path) -> tuple[int, str]:
    """Linked images of ``folder/*.png`` (loaded lazily), captioned by file name."""
    images = sorted(folder.glob("*.png"))
    items = "".join(
        f"<figure><a href='{_href(layout, p)}'><img loading='lazy' src='{_href(layout, p)}' "
        f"alt='{_e(p.stem)}'></a><figcaption>{_e(p.stem)}</figcaption></figure>"
        for p in images
    )
    return len(images), items


def _figures(layout: RunLayout) -> str:
    count, items = _gallery(layout, layout.figures_dir)
    return f"<h2>Figures</h2>{items}" if count else ""


def _exclusions(path: Path) -> str:
    if not path.exists():
        return ""
    table = pd.read_csv(path)
    if table.empty:
        return "<h2>Exclusions</h2><p>None: every subject went through.</p>"
    return f"<h2>Exclusions ({len(table)})</h2>" + readable(table).to_html(index=False)


def _qc(layout: RunLayout) -> str:
    count, items = _gallery(layout, layout.qc_dir)
    if not count:
        return ""
    return (
        f"<h2>Preprocessing QC ({count} subjects)</h2>"
        "<p>Before and after, brain mask and lobes for every subject; click for full size.</p>"
        f"<div class='qc'>{items}</div>"
    )


# ---------------------------------------------------------------- new scans
# (ctbrainage.apps.predict)

PREDICTION_COLUMNS = {  # predictions.csv column → heading on the index page
    "age_months": "age",
    "corrected_months": "brain age",
    "interval_low": "interval from",
    "interval_high": "to",
    "gap_corrected_months": "gap",
    "ensemble_sd_months": "fold spread (SD)",
    "flags": "flags",
}


def write_prediction_report(
    layout: RunLayout,
    bundle,
    description: str,
    table: pd.DataFrame,
    summary: dict,
    skipped: pd.DataFrame | None = None,
    progress: bool = True,
) -> Path:
    """One page per predicted scan (its figure, QC image and numbers) and ``index.html``
    listing every scan, the exclusions and (``skipped``) the DICOM series and files left out;
    pages of scans not in ``table`` (an earlier run's) are removed. ``description``: the
    bundle's summary (:func:`ctbrainage.apps.bundle.describe`). Returns the index."""
    import matplotlib.pyplot as plt

    from ctbrainage.core.labels import LOBES
    from ctbrainage.core.workers import progress_bar
    from ctbrainage.views.plots import new_scan_figure

    level = f"{summary['level']:.0%}"
    current = {
        p
        for sid in table["subject_id"]
        for p in (layout.subject_page(sid), layout.subject_figure(sid))
    }
    for old in set(layout.pages_dir.glob("*")) - current if layout.pages_dir.exists() else ():
        old.unlink()
    for row in progress_bar(table.to_dict("records"), desc="report pages", progress=progress):
        sid = row["subject_id"]
        lobes = {name: row[f"delta_ae_{name}"] for name in LOBES.values()}
        interval = (row["interval_low"], row["interval_high"])
        fig = new_scan_figure(
            bundle.out_of_fold,
            row["age_months"],
            row["corrected_months"],
            interval,
            lobes,
            title=sid,
            out=layout.subject_figure(sid),
        )
        plt.close(fig)
        atomic_write_text(layout.subject_page(sid), _subject_page(layout, row, level))
    head = "".join(f"<th>{_e(h)}</th>" for h in ["scan", *PREDICTION_COLUMNS.values()])
    rows = "".join(
        f"<tr><td><a href='{_href(layout, layout.subject_page(r['subject_id']))}'>"
        f"{_e(r['subject_id'])}</a></td>"
        + "".join(f"<td>{_cell(r[c])}</td>" for c in PREDICTION_COLUMNS)
        + "</tr>"
        for r in table.to_dict("records")
    )
    sections = [
        "<h1>Brain age of new scans</h1>",
        f"<pre class='meta'>{_e(description)}</pre>",
        f"<p>{summary['predicted']} scans predicted in {summary['seconds']} s. Ages and brain "
        f"ages in months; the brain age is bias-corrected; the interval is the {level} "
        f"split-conformal interval (its coverage on the training run: "
        f"{summary['coverage_on_training_run']:.1%}). Full table: "
        f"<a href='{_href(layout, layout.predictions)}'>predictions.csv</a>.</p>",
        f"<table><tr>{head}</tr>{rows}</table>" if len(table) else "<p>No scan predicted.</p>",
        _exclusions(layout.exclusions),
        _skipped(skipped),
    ]
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>Brain age of new scans</title><style>{STYLE}</style></head><body>\n"
        + "\n".join(s for s in sections if s)
        + "\n</body></html>\n"
    )
    atomic_write_text(layout.index, page)
    return layout.index


def _cell(value) -> str:
    if isinstance(value, float):
        return "–" if pd.isna(value) else f"{value:.1f}"
    return _e(value)


def _subject_page(layout: RunLayout, row: dict, level: str) -> str:
    """One scan's page; links are relative to ``pages/``."""
    sid = row["subject_id"]
    up = "../"
    facts = [
        ("chronological age", f"{row['age_months']:.1f} months"),
        ("brain age (bias-corrected)", f"{row['corrected_months']:.1f} months"),
        (
            f"chronological ages consistent with this scan ({level} interval)",
            f"{row['interval_low']:.1f} – {row['interval_high']:.1f} months",
        ),
        ("brain-age gap (corrected)", f"{row['gap_corrected_months']:+.1f} months"),
        ("age within the interval", "yes" if row["age_in_interval"] else "no"),
        ("raw ensemble brain age", f"{row['brain_age_months']:.1f} months"),
        ("fold models' spread (SD)", f"{row['ensemble_sd_months']:.2f} months"),
        ("flags", row["flags"] or "none"),
    ]
    items = "".join(
        f"<tr><th style='text-align:left'>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts
    )
    qc = layout.qc(sid)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(sid)}: brain age</title><style>{STYLE}</style></head><body>\n"
        f"<p><a href='{up}{_href(layout, layout.index)}'>all scans</a></p>"
        f"<h1>{_e(sid)}</h1><table>{items}</table>"
        f"<h2>Brain age and lobe importance</h2><img style='max-width:100%' "
        f"src='{_e(layout.subject_figure(sid).name)}' alt='brain age of {_e(sid)}'>"
        "<p>Left: the child (red) on the training cohort's out-of-fold brain ages; the grey "
        "band is the interval's half-width. Right: how much the ensemble's absolute error grows "
        "when a lobe's level is set to its age group's level in the training cohort (ΔAE).</p>"
        + (
            f"<h2>Preprocessing QC</h2><img style='max-width:100%' src='{up}"
            f"{_href(layout, qc)}' alt='QC of {_e(sid)}'>"
            if qc.exists()
            else ""
        )
        + "\n</body></html>\n"
    )


def _skipped(table: pd.DataFrame | None) -> str:
    if table is None or table.empty:
        return ""
    return f"<h2>DICOM series and files not used ({len(table)})</h2>" + table.to_html(index=False)
