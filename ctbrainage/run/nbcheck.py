"""Check executed notebooks with nbval: run them again into a fresh run directory and compare
every output with the stored one.

The stored notebooks (a run's ``notebooks/``, or the committed ``notebooks/`` of the reference
demo run) are copied with their injected parameters pointing at the new run directory, then
executed cell by cell by nbval. Outputs are compared after the sanitising rules of
``nbval.cfg`` (paths, run directories, memory addresses, progress-bar times); images and widget
state are not compared (nbval's defaults), nor are cells tagged ``nbval-ignore-output`` (the
interactive viewers, and the training cell of 03 with Lightning's progress bar in JupyterLab).
Folds without a stored 03 notebook are trained with ``run_all`` before 04, so the check also works
from the committed notebooks, which hold fold 0 only.

Command line: ``python -m ctbrainage.run.nbcheck NOTEBOOK_DIR --run-dir DIR [pytest options]``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat

from ctbrainage import run
from ctbrainage.core.config import REPO_ROOT, load_profile
from ctbrainage.core.layout import NOTEBOOK_SOURCES, RunLayout
from ctbrainage.run import stored

SANITIZE = Path(__file__).parents[1] / "nbval.cfg"
INJECTED = "injected-parameters"


def injected_parameters(notebook: nbformat.NotebookNode) -> dict[str, Any]:
    """The parameters papermill injected into an executed notebook (empty if none)."""
    for cell in notebook.cells:
        if INJECTED in cell.metadata.get("tags", []):
            return run.assignments(cell.source)
    return {}


def store_reference(executed_dir: str | Path, dest: Path = NOTEBOOK_SOURCES) -> list[Path]:
    """Make a run's executed notebooks the committed ones (fold 0 for 03), as
    :func:`ctbrainage.run.stored.store` keeps them: static outputs, no path of the build
    machine."""
    executed_dir = Path(executed_dir)
    written = []
    for source in sorted(executed_dir.glob("[0-9][0-9]_*.ipynb")):
        fold = source.stem.startswith("03_train")
        if fold and source.stem != "03_train_fold0":
            continue  # one fold's notebook is committed
        name = "03_train.ipynb" if fold else source.name
        written.append(stored.store(source, dest / name))
    return written


def retarget(
    notebook: str | Path, run_dir: str | Path, out_dir: str | Path
) -> tuple[Path, dict[str, Any]]:
    """Copy an executed notebook into ``out_dir`` with its injected ``run_dir`` replaced (and its
    ``figures_dir``, if any, moved into the new run); returns the copy's path and the stored
    notebook's injected parameters."""
    node = nbformat.read(notebook, as_version=4)
    stored = injected_parameters(node)
    if not stored:
        raise ValueError(f"{notebook}: no injected-parameters cell; is it an executed notebook?")
    parameters = {**stored, "run_dir": str(run_dir)}
    if parameters.get("figures_dir"):  # keep the figures (each is shown once per folder)
        parameters["figures_dir"] = str(Path(run_dir) / "extra_figures")
    source = "# Parameters\n" + "".join(f"{k} = {v!r}\n" for k, v in parameters.items())
    for cell in node.cells:
        if INJECTED in cell.metadata.get("tags", []):
            cell.source = source
    out = Path(out_dir) / Path(notebook).name
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(node, out)
    return out, stored


def sanitize_file(stored_run_dirs: set[str], run_dir: Path, out: Path) -> Path:
    """Rules that map the stored and the new run directory to one name (first: nbval applies
    rules in order, and the generic path rules of ``nbval.cfg`` would match them too)."""
    rules = [
        f"[run_dir_{i}]\nregex: {re.escape(path)}\nreplace: <RUN>\n"
        for i, path in enumerate(sorted(stored_run_dirs | {str(run_dir)}, key=len, reverse=True))
    ]
    # the repository's paths as stored (ctbrainage.run.stored: relative to it)
    rules.append(f"[repository]\nregex: {re.escape(str(REPO_ROOT))}/\nreplace: \n")
    rules.append(f"[repository_root]\nregex: {re.escape(str(REPO_ROOT))}\nreplace: .\n")
    out.write_text("\n".join([*rules, SANITIZE.read_text()]))
    return out


def nbval(notebooks: list[Path], sanitize: Path, pytest_args: list[str]) -> int:
    """Run nbval on ``notebooks`` in order, in this Python environment; returns pytest's code.
    The kernels show no progress bars, as under run_all.py."""
    if not notebooks:
        return 0
    command = [
        sys.executable,
        "-m",
        "pytest",
        "--nbval",
        "--nbval-current-env",
        f"--nbval-sanitize-with={sanitize}",
        "-p",
        "no:cacheprovider",
        f"--rootdir={notebooks[0].parent}",
        *pytest_args,
        *map(str, notebooks),
    ]
    return subprocess.call(command, env={**os.environ, "TQDM_DISABLE": "1"})


# on-request notebooks committed from another profile's run (their own grid of trainings)
OWN_PROFILE = {"10_robustness": "benchmark"}


def same_profile(notebooks: list[Path]) -> list[Path]:
    """The notebooks executed on the first one's profile; each other is named and left out
    (it needs its own run: e.g. 10_robustness, from the benchmark's)."""
    profiles = {nb: injected_parameters(nbformat.read(nb, as_version=4)).get("profile")
                for nb in notebooks}  # fmt: skip
    first = profiles[notebooks[0]] if notebooks else None
    for nb, profile in profiles.items():
        if profile != first:
            print(f"{nb.name}: executed on profile {profile!r}, not {first!r}: not checked here")
    return [nb for nb in notebooks if profiles[nb] == first]


def check(notebook_dir: str | Path, run_dir: str | Path, pytest_args: list[str] = ()) -> int:
    """Re-execute the executed notebooks of ``notebook_dir`` into ``run_dir`` and compare their
    outputs with nbval; returns 0 when every cell reproduced its stored output."""
    run_dir = Path(run_dir).resolve()
    if run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(
            f"{run_dir} is not empty: the check needs a fresh run directory (finished steps "
            "would be skipped, and their outputs would differ)"
        )
    stored = same_profile(sorted(Path(notebook_dir).glob("[0-9][0-9]_*.ipynb")))
    if not stored:
        raise FileNotFoundError(f"no numbered notebooks in {notebook_dir}")
    work = RunLayout(run_dir).nbval_dir
    copies = dict(retarget(nb, run_dir, work) for nb in stored)
    originals = {p["run_dir"] for p in copies.values() if p.get("run_dir")}
    sanitize = sanitize_file(originals, run_dir, work / "nbval.cfg")
    before = [c for c in copies if int(c.name[:2]) <= run.FOLD_STEP]
    after = [c for c in copies if int(c.name[:2]) > run.FOLD_STEP]
    code = nbval(before, sanitize, list(pytest_args))
    if code == 0 and after:
        trained = [p for c, p in copies.items() if int(c.name[:2]) == run.FOLD_STEP]
        code = _train_missing_folds(trained, run_dir)
    return code or nbval(after, sanitize, list(pytest_args))


def _train_missing_folds(trained: list[dict[str, Any]], run_dir: Path) -> int:
    """Train, with run_all, the folds that have no stored 03 notebook (04 needs all folds);
    ``trained``: the injected parameters of the stored 03 notebooks."""
    if not trained:
        return 0
    parameters = trained[0]
    folds = load_profile(parameters.get("profile", "demo")).train.folds
    present = {p["fold"] for p in trained}
    missing = tuple(k for k in range(folds) if k not in present)
    if not missing:
        return 0
    print(f"nbcheck: training folds {list(missing)} with run_all (no stored notebook to check)")
    return run.run_all(
        profile=parameters.get("profile", "demo"),
        data=parameters.get("data", ""),
        run_dir=str(run_dir),
        first=run.FOLD_STEP,
        last=run.FOLD_STEP,
        folds=missing,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ctbrainage.run.nbcheck",
        description="Re-execute executed notebooks into a fresh run directory with nbval and "
        "compare every output with the stored one.",
    )
    parser.add_argument("notebook_dir", help="folder of executed notebooks (e.g. notebooks/)")
    parser.add_argument("--run-dir", required=True, help="fresh run directory for the re-run")
    args, pytest_args = parser.parse_known_args(argv)
    return check(args.notebook_dir, args.run_dir, pytest_args)


if __name__ == "__main__":
    sys.exit(main())
