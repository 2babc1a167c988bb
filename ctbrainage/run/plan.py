"""Checking ``run_all``'s options and laying out the notebook runs, before anything runs.

Every parameter is checked against the ``parameters`` cell of the notebook it goes to, or routed
to the profile as an override (dotted, e.g. ``train.epochs``), and the profile with its overrides
is loaded; a problem raises ``UsageError`` (or ``ProfileError``), naming the nearest valid name
when one is close.
"""

from __future__ import annotations

import ast
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import nbformat
import yaml

from ctbrainage.core.config import (
    Profile,
    did_you_mean,
    load_profile,
    repo_relative,
    stacking_size_problem,
)
from ctbrainage.core.config import profile_yaml as profile_yaml_text
from ctbrainage.core.layout import NOTEBOOK_SOURCES, RunLayout
from ctbrainage.core.sections import Range
from ctbrainage.imaging.cohort_manifest import user_files_inside

NOTEBOOK_DIR = NOTEBOOK_SOURCES
NOTEBOOKS = {  # the steps' names (ctbrainage.steps): notebook NN runs step NN
    1: "01_preprocess",
    2: "02_lobes",
    3: "03_train",
    4: "04_evaluate",
    5: "05_perturbation",
    6: "06_stats_figures",
    7: "07_attribution",
    8: "08_stacking",  # on request (--to 8): two encoders and linear stacking
    9: "09_new_scans",  # on request (--to 9): brain age of new scans with the run's bundle
    10: "10_robustness",  # on request (--from 10): explanations across seeds (multi-seed paper)
    11: "11_multitask",  # on request (--from 11): input conditions, multi-task (infant MRI paper)
}
FOLD_STEP = 3
# notebook parameters that are numbers, with the values they may take
PARAMETER_RANGES = {
    "workers": Range(minimum=0),  # 0 = every core
    "new_subjects": Range(minimum=1),
    "level": Range(above=0, below=1),
}
# set by the driver from its options; never through -p
DRIVER_PARAMETERS = {
    "profile": "--profile",
    "run_dir": "--run-dir",
    "data": "--data",
    "fold": "--folds",
    "gpu": "--gpus",
    "figures_dir": "--figures",
}


class UsageError(ValueError):
    """Options that cannot run: refused before any notebook starts."""


class Text(str):
    """A value as typed on the command line; converted by the type of the setting it sets."""


@dataclass(frozen=True)
class Options:
    """What ``run_all.py`` accepts (relative paths are taken from the working directory)."""

    profile: str = "demo"  # name in configs/ or a profile YAML
    data: str = ""  # manifest CSV; empty = the embedded synthetic cohort
    run_dir: str = ""  # empty = the profile's (runs/<profile>)
    gpus: tuple[int, ...] = ()  # fold k trains on gpus[k % len(gpus)]; empty = CPU
    folds: tuple[int, ...] | None = None  # None = every fold of the profile
    first: int = 1  # first notebook to run (1–7)
    last: int = 7  # last notebook to run (08 stacking and 09 new scans run only when asked)
    executor: Literal["local", "slurm"] = "local"  # where the per-fold notebooks run
    jobs: int = 0  # folds at once; 0 = one per GPU, or max(1, cores // 4) on CPU
    figures: str = ""  # 04, 06 and 07 also save their figures here
    parameters: dict[str, Any] = field(default_factory=dict)  # notebook parameters, profile keys
    force: bool = False  # rerun steps that are already done
    timeout: float | None = None  # seconds per cell
    progress: bool = True
    submitit_cluster: str = "slurm"  # "local" runs the jobs on this machine (tests)
    submitit_parameters: dict[str, Any] = field(default_factory=dict)  # e.g. slurm_partition


@dataclass(frozen=True)
class NotebookRun:
    """One execution of a notebook (03 runs once per fold)."""

    name: str  # 01_preprocess, 03_train_fold2, ...
    number: int
    source: Path
    output: Path
    parameters: dict[str, Any]
    fold: int | None = None


@dataclass(frozen=True)
class Plan:
    """Checked options: the profile, the steps in order, grouped in phases that run in turn."""

    options: Options
    profile: Profile
    profile_yaml: str  # the profile with its overrides, written as <run>/profile.yaml; or ""
    phases: list[list[NotebookRun]]
    jobs: int  # folds at once

    @property
    def threads(self) -> int | None:
        """torch/BLAS threads per fold kernel when folds share the CPU (None: torch's default).
        Fixed by ``jobs``, not by how many folds are left, so a resumed run computes the same
        numbers as an uninterrupted one (the thread count changes the last digits)."""
        return max(1, (os.cpu_count() or 1) // self.jobs) if self.jobs > 1 else None

    @property
    def run_path(self) -> Path:
        return self.profile.run_path

    @property
    def steps(self) -> list[NotebookRun]:
        return [step for phase in self.phases for step in phase]


def declared_parameters(notebook: Path) -> dict[str, Any]:
    """Name → default of the assignments in ``notebook``'s cell tagged ``parameters``
    (None where the default is not a literal)."""
    nb = nbformat.read(notebook, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        raise UsageError(f"{notebook.name} has no cell tagged 'parameters'")
    return assignments(cells[0].source)


def assignments(source: str) -> dict[str, Any]:
    """Name → value of the top-level assignments in a cell's code (None if not a literal)."""
    declared: dict[str, Any] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign):
            targets, value = [node.target], node.value
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Name):
                declared[target.id] = _literal(value)
    return declared


def _literal(node: ast.expr | None) -> Any:
    try:
        return ast.literal_eval(node) if node is not None else None
    except ValueError:
        return None


def _profile_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        keys.append(prefix + key)
        if isinstance(value, dict):
            keys += _profile_keys(value, f"{prefix}{key}.")
    return keys


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def convert(value: Any, like: Any) -> Any:
    """A command-line ``Text`` as the type of ``like`` (text stays text; else YAML)."""
    if not isinstance(value, Text):
        return value
    if isinstance(like, str):
        return str(value)
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return str(value)
    return "" if parsed is None else parsed


def _type_ok(value: Any, default: Any) -> bool:
    if default is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, int | float)
    if isinstance(default, list | tuple):
        return isinstance(value, list | tuple)
    return isinstance(value, type(default))


def _route(
    parameters: dict[str, Any], declared: dict[int, dict[str, Any]], profile_tree: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split user parameters into (notebook parameters, profile overrides)."""
    notebook_names = sorted({n for d in declared.values() for n in d} - set(DRIVER_PARAMETERS))
    notebook, overrides = {}, {}
    for name, value in parameters.items():
        if name in DRIVER_PARAMETERS:
            raise UsageError(
                f"parameter {name!r} is set by the driver: use {DRIVER_PARAMETERS[name]}"
            )
        if name in notebook_names:
            like = next(d[name] for d in declared.values() if name in d)
            notebook[name] = convert(value, like)
        elif "." in name or name in profile_tree:
            overrides[name] = convert(value, _lookup(profile_tree, name))
        else:
            valid = notebook_names + _profile_keys(profile_tree)
            raise UsageError(
                f"unknown parameter {name!r}{did_you_mean(name, valid)}; notebook parameters: "
                f"{', '.join(notebook_names)}; profile settings are dotted, e.g. train.epochs"
            )
    return notebook, overrides


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve()) if path else ""


def _default_jobs(options: Options, folds: int) -> int:
    if options.jobs:
        return options.jobs
    if options.gpus:
        return len(options.gpus)
    return max(1, min(folds, (os.cpu_count() or 1) // 4))


def make_plan(options: Options) -> Plan:
    """Check everything (raises UsageError / ProfileError) and lay out the steps."""
    if not 1 <= options.first <= options.last <= max(NOTEBOOKS):
        raise UsageError(f"--from/--to must satisfy 1 <= from <= to <= {max(NOTEBOOKS)}")
    if options.executor not in ("local", "slurm"):
        raise UsageError(f"unknown executor {options.executor!r}; use local or slurm")
    if options.data and not Path(options.data).expanduser().is_file():
        raise UsageError(f"--data: no such file {options.data!r}")
    if options.jobs < 0:
        raise UsageError(f"--jobs {options.jobs}: allowed >= 1, or 0 for the default")
    _check_gpus(options)
    numbers = [n for n in NOTEBOOKS if options.first <= n <= options.last]
    if not numbers:
        raise UsageError(
            f"no step from {options.first} to {options.last}; steps: {list(NOTEBOOKS)}"
        )
    declared = {n: declared_parameters(NOTEBOOK_DIR / f"{NOTEBOOKS[n]}.ipynb") for n in numbers}
    base = load_profile(_profile_arg(options.profile))
    notebook_params, overrides = _route(options.parameters, declared, base.to_dict())
    data, run_dir = _absolute(options.data), _absolute(options.run_dir)
    profile = load_profile(
        _profile_arg(options.profile), {**overrides, "data": data, "run_dir": run_dir}
    )
    profile = dataclasses.replace(profile, run_dir=str(profile.run_path))
    if data:
        _check_user_cohort(data, profile)
    if 8 in numbers and stacking_size_problem(profile):
        raise UsageError(stacking_size_problem(profile))
    folds = tuple(range(profile.train.folds)) if options.folds is None else options.folds
    bad = [k for k in folds if not 0 <= k < profile.train.folds]
    if bad or not folds:
        raise UsageError(
            f"--folds {bad or '(none)'}: the profile has folds 0-{profile.train.folds - 1}"
        )
    profile_yaml = (
        profile_yaml_text(profile, "written by run_all.py: the profile with its -p overrides")
        if overrides
        else ""
    )
    layout = RunLayout(profile.run_path)
    common = {
        "profile": repo_relative(layout.profile) if overrides else _profile_arg(options.profile),
        "run_dir": repo_relative(profile.run_path),
        "data": data,
    }
    phases = []
    for n in numbers:
        specs = _step_parameters(n, options, folds, profile)
        steps = []
        for name, fold, own in specs:
            params = {**common, **own}
            params.update({k: v for k, v in notebook_params.items() if k in declared[n]})
            _check_declared(NOTEBOOKS[n], params, declared[n])
            output = layout.notebook(name)
            source = NOTEBOOK_DIR / f"{NOTEBOOKS[n]}.ipynb"
            steps.append(NotebookRun(name, n, source, output, params, fold))
        phases.append(steps)
    return Plan(options, profile, profile_yaml, phases, _default_jobs(options, profile.train.folds))


def _check_gpus(options: Options) -> None:
    """``--gpus`` names devices that CUDA sees here (SLURM jobs: on their nodes, unchecked)."""
    if not options.gpus:
        return
    if min(options.gpus) < 0:
        raise UsageError(f"--gpus {_listed(options.gpus)}: device numbers are >= 0")
    if options.executor == "slurm":
        return
    import torch

    count = torch.cuda.device_count()
    if max(options.gpus) >= count:
        seen = f"devices 0-{count - 1}" if count else "no CUDA device"
        raise UsageError(
            f"--gpus {_listed(options.gpus)}: this machine has {seen}; leave --gpus out to "
            "run on the CPU"
        )


def _listed(numbers: tuple[int, ...]) -> str:
    return ",".join(map(str, numbers))


def _check_user_cohort(data: str, profile: Profile) -> None:
    """The run directory never holds the user's files; the manifest has rows for every fold."""
    overlap = user_files_inside(profile.run_path, data)
    if overlap:
        raise UsageError(
            f"--run-dir {profile.run_path}: {overlap}; choose a run directory outside your data "
            "(run_all never writes the user's files)"
        )
    with open(data, encoding="utf-8-sig") as manifest:
        rows = max(0, sum(1 for line in manifest if line.strip()) - 1)
    if rows < profile.train.folds:
        raise UsageError(
            f"train.folds: {profile.train.folds} folds need at least as many children; the "
            f"manifest {data} has {rows} rows"
        )


def _profile_arg(profile: str) -> str:
    return repo_relative(profile) if Path(profile).suffix in (".yaml", ".yml") else profile


def _step_parameters(
    n: int, options: Options, folds: tuple[int, ...], profile: Profile
) -> list[tuple[str, int | None, dict[str, Any]]]:
    """(step name, fold, driver parameters) of notebook ``n``."""
    gpus = options.gpus
    if n == FOLD_STEP:
        slurm_gpu = options.executor == "slurm" and gpus  # each job gets its own GPU 0
        return [
            (
                f"{NOTEBOOKS[n]}_fold{k}",
                k,
                {"fold": k, "gpu": 0 if slurm_gpu else (gpus[k % len(gpus)] if gpus else -1)},
            )
            for k in folds
        ]
    own: dict[str, Any] = {}
    if n in (5, 7, 8, 9, 10, 11):
        own["gpu"] = gpus[0] if gpus else -1
    if n in (4, 6, 7, 8, 10, 11):
        own["figures_dir"] = repo_relative(options.figures) if options.figures else ""
    return [(NOTEBOOKS[n], None, own)]


def _check_declared(notebook: str, params: dict[str, Any], declared: dict[str, Any]) -> None:
    for name, value in params.items():
        if name not in declared:
            raise UsageError(
                f"{notebook}.ipynb has no parameter {name!r}{did_you_mean(name, list(declared))};"
                f" its parameters: {', '.join(declared)}"
            )
        if not _type_ok(value, declared[name]):
            raise UsageError(
                f"{notebook}.ipynb parameter {name!r}: {value!r} is not like its default"
                f" {declared[name]!r} ({type(declared[name]).__name__})"
            )
        allowed = PARAMETER_RANGES.get(name)
        if allowed is not None and not allowed.allows(value):
            raise UsageError(f"parameter {name}: {value!r} is out of range; allowed: {allowed}")
