"""Run notebooks 01–06 end to end with papermill: checked parameters, folds in parallel,
resumable, recorded in ``<run>/manifest.json``. ``run_all.py`` is its command line.

Steps: 01 → 02 → 03 once per fold (in parallel: one per GPU, or bounded by cores on CPU, or as
SLURM jobs through submitit) → 04 → 05 → 06. Executed notebooks go to ``<run>/notebooks/``,
their HTML to ``<run>/html/`` and a page of the run to ``<run>/index.html`` (``report``).
Every parameter is checked against the notebook's ``parameters`` cell, and the profile with its
overrides is loaded, before anything runs. A step whose executed notebook exists and whose
manifest entry says done with identical parameters is skipped (unless ``force``, or an earlier
step ran in this invocation). Exit codes: 0 done, 1 a step failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures as cf
import contextlib
import dataclasses
import datetime as dt
import difflib
import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import nbformat
import yaml
from tqdm.auto import tqdm

from ctbrainage import io, report
from ctbrainage.config import REPO_ROOT, Profile, ProfileError, load_profile

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = {
    1: "01_preprocess",
    2: "02_lobes",
    3: "03_train",
    4: "04_evaluate",
    5: "05_perturbation",
    6: "06_stats_figures",
}
FOLD_STEP = 3
# set by the driver from its options; never through -p
DRIVER_PARAMETERS = {
    "profile": "--profile",
    "run_dir": "--run-dir",
    "data": "--data",
    "fold": "--folds",
    "gpu": "--gpus",
    "figures_dir": "--figures",
}
VERSIONED = (
    "ctbrainage",
    "torch",
    "monai",
    "pytorch-lightning",
    "torchio",
    "SimpleITK",
    "numpy",
    "pandas",
    "papermill",
    "nbclient",
    "ipykernel",
    "submitit",
)
USAGE, FAILED = 2, 1


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
    first: int = 1  # first notebook to run (1–6)
    last: int = 6  # last notebook to run
    executor: Literal["local", "slurm"] = "local"  # where the per-fold notebooks run
    jobs: int = 0  # folds at once; 0 = one per GPU, or max(1, cores // 4) on CPU
    figures: str = ""  # 04 and 06 also save their figures here
    parameters: dict[str, Any] = field(default_factory=dict)  # notebook parameters, profile keys
    force: bool = False  # rerun steps that are already done
    timeout: float | None = None  # seconds per cell
    progress: bool = True
    submitit_cluster: str = "slurm"  # "local" runs the jobs on this machine (tests)
    submitit_parameters: dict[str, Any] = field(default_factory=dict)  # e.g. slurm_partition


@dataclass(frozen=True)
class Step:
    """One notebook execution."""

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
    phases: list[list[Step]]
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
    def steps(self) -> list[Step]:
        return [step for phase in self.phases for step in phase]


# ---------------------------------------------------------------- checking the options


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


def _nearest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


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


def _convert(value: Any, like: Any) -> Any:
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
            notebook[name] = _convert(value, like)
        elif "." in name or name in profile_tree:
            overrides[name] = _convert(value, _lookup(profile_tree, name))
        else:
            valid = notebook_names + _profile_keys(profile_tree)
            raise UsageError(
                f"unknown parameter {name!r}{_nearest(name, valid)}; notebook parameters: "
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
    if not 1 <= options.first <= options.last <= len(NOTEBOOKS):
        raise UsageError(f"--from/--to must satisfy 1 <= from <= to <= {len(NOTEBOOKS)}")
    if options.executor not in ("local", "slurm"):
        raise UsageError(f"unknown executor {options.executor!r}; use local or slurm")
    if options.data and not Path(options.data).expanduser().is_file():
        raise UsageError(f"--data: no such file {options.data!r}")
    numbers = range(options.first, options.last + 1)
    declared = {n: declared_parameters(NOTEBOOK_DIR / f"{NOTEBOOKS[n]}.ipynb") for n in numbers}
    base = load_profile(_profile_arg(options.profile))
    notebook_params, overrides = _route(options.parameters, declared, base.to_dict())
    data, run_dir = _absolute(options.data), _absolute(options.run_dir)
    profile = load_profile(
        _profile_arg(options.profile), {**overrides, "data": data, "run_dir": run_dir}
    )
    profile = dataclasses.replace(profile, run_dir=str(profile.run_path))
    folds = tuple(range(profile.train.folds)) if options.folds is None else options.folds
    bad = [k for k in folds if not 0 <= k < profile.train.folds]
    if bad or not folds:
        raise UsageError(
            f"--folds {bad or '(none)'}: the profile has folds 0-{profile.train.folds - 1}"
        )
    profile_yaml = _profile_yaml(profile) if overrides else ""
    common = {
        "profile": str(profile.run_path / "profile.yaml")
        if overrides
        else _profile_arg(options.profile),
        "run_dir": profile.run_dir,
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
            output = profile.run_path / "notebooks" / f"{name}.ipynb"
            source = NOTEBOOK_DIR / f"{NOTEBOOKS[n]}.ipynb"
            steps.append(Step(name, n, source, output, params, fold))
        phases.append(steps)
    return Plan(options, profile, profile_yaml, phases, _default_jobs(options, profile.train.folds))


def _profile_arg(profile: str) -> str:
    return _absolute(profile) if Path(profile).suffix in (".yaml", ".yml") else profile


def _profile_yaml(profile: Profile) -> str:
    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return [plain(v) for v in value] if isinstance(value, list | tuple) else value

    header = "# written by run_all.py: the profile with its -p overrides\n"
    return header + yaml.safe_dump(plain(profile.to_dict()), sort_keys=False)


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
    if n == 5:
        own["gpu"] = gpus[0] if gpus else -1
    if n in (4, 6):
        own["figures_dir"] = _absolute(options.figures)
    return [(NOTEBOOKS[n], None, own)]


def _check_declared(notebook: str, params: dict[str, Any], declared: dict[str, Any]) -> None:
    for name, value in params.items():
        if name not in declared:
            raise UsageError(
                f"{notebook}.ipynb has no parameter {name!r}{_nearest(name, list(declared))};"
                f" its parameters: {', '.join(declared)}"
            )
        if not _type_ok(value, declared[name]):
            raise UsageError(
                f"{notebook}.ipynb parameter {name!r}: {value!r} is not like its default"
                f" {declared[name]!r} ({type(declared[name]).__name__})"
            )


# ---------------------------------------------------------------- executing one notebook


class _QuietPapermill(logging.Filter):
    """Drop papermill's own parameter-cell warnings: its line parser misreads commented
    defaults, and the driver has checked every name against the cell already."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not text.startswith(("Passed unknown parameter", "Unable to parse line"))


def _quiet_papermill() -> None:
    for name in ("papermill", "papermill.translators"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _QuietPapermill) for f in logger.filters):
            logger.addFilter(_QuietPapermill())


def execute_step(
    source: str, output: str, parameters: dict[str, Any], timeout: float | None = None
) -> dict[str, Any]:
    """Execute one notebook with papermill; never raises. Returns status (done/failed),
    start/end/duration and, on failure, an error summary. Module level: submitit pickles it."""
    import papermill as pm

    _quiet_papermill()
    started = time.time()
    error = None
    try:
        pm.execute_notebook(
            source,
            output,
            parameters=parameters,
            cwd=str(NOTEBOOK_DIR),
            progress_bar=False,
            log_output=False,
            execution_timeout=timeout,
        )
    except Exception as err:  # a failed notebook is a result, reported by the caller
        error = _error_summary(err, Path(output))
    ended = time.time()
    return {
        "status": "failed" if error else "done",
        "started": _iso(started),
        "ended": _iso(ended),
        "duration_s": round(ended - started, 2),
        "error": error,
    }


def _error_summary(err: Exception, output: Path) -> dict[str, Any]:
    """Which cell failed and why, from papermill's error or the partly executed notebook."""
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    if isinstance(err, PapermillExecutionError):
        kind, index, count = "cell error", err.cell_index, err.exec_count
        source, why = err.source, f"{err.ename}: {err.evalue}"
    else:
        kind = (
            "timeout"
            if isinstance(err, TimeoutError)
            else "dead kernel"
            if isinstance(err, DeadKernelError)
            else "error"
        )
        index, count, source = _last_started_cell(output)
        why = (
            f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        )
    return {
        "kind": kind,
        "cell_index": index,
        "execution_count": count,
        "cell_source": (source or "").strip().splitlines()[0] if (source or "").strip() else "",
        "why": why,
    }


def _last_started_cell(output: Path) -> tuple[int | None, int | None, str]:
    try:
        nb = nbformat.read(output, as_version=4)
    except Exception:  # not written: the kernel never started
        return None, None, ""
    started = [
        (i, c)
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and c.get("metadata", {}).get("papermill", {}).get("start_time")
    ]
    if not started:
        return None, None, ""
    index, cell = started[-1]
    return index, cell.get("execution_count"), cell.source


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------- executors

Launcher = Callable[[Step], dict[str, Any]]


def local_launcher(timeout: float | None) -> Launcher:
    """Run the notebook here (papermill starts its own kernel process)."""

    def launch(step: Step) -> dict[str, Any]:
        return execute_step(str(step.source), str(step.output), step.parameters, timeout)

    return launch


def submitit_launcher(plan: Plan) -> Launcher:
    """Run the notebook as a job through submitit (SLURM, or "local" for tests); blocks until
    the job ends, so callers treat it like the local launcher."""
    import submitit

    options = plan.options
    executor = submitit.AutoExecutor(
        folder=plan.run_path / "slurm", cluster=options.submitit_cluster
    )
    parameters = {"timeout_min": 24 * 60, "name": f"ctbrainage-{plan.profile.name}"}
    if options.gpus:
        parameters["gpus_per_node"] = 1
    executor.update_parameters(**{**parameters, **options.submitit_parameters})
    lock = threading.Lock()

    def launch(step: Step) -> dict[str, Any]:
        args = (str(step.source), str(step.output), step.parameters, options.timeout)
        with lock:
            job = executor.submit(execute_step, *args)
        try:
            return {**job.result(), "job_id": job.job_id}
        except Exception as err:  # the job itself died (preempted, out of memory, ...)
            now = _iso(time.time())
            why = f"{type(err).__name__}: {str(err).strip()[-500:]}"
            error = {"kind": "job failed", "cell_index": None, "execution_count": None}
            return {
                "status": "failed",
                "started": now,
                "ended": now,
                "duration_s": 0.0,
                "job_id": job.job_id,
                "error": {**error, "cell_source": "", "why": why, "log": str(job.paths.stderr)},
            }

    return launch


@contextlib.contextmanager
def _threads_per_kernel(n: int | None) -> Iterator[None]:
    """Cap torch/BLAS threads of the kernels started meanwhile (concurrent folds on one CPU);
    a value the user set in the environment wins."""
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    added = [name for name in names if n and name not in os.environ]
    for name in added:
        os.environ[name] = str(n)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


# ---------------------------------------------------------------- the manifest


class Manifest:
    """``<run>/manifest.json``, rewritten atomically after every change (thread-safe)."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = {}
        self.data = {
            "created": old.get("created", _iso(time.time())),
            **header,
            "status": "running",
            "steps": old.get("steps", {}),
            "invocations": old.get("invocations", []),
        }

    def entry(self, name: str) -> dict[str, Any] | None:
        return self.data["steps"].get(name)

    def set_step(self, name: str, entry: dict[str, Any]) -> None:
        with self._lock:
            self.data["steps"][name] = entry
            self._write()

    def finish(self, status: str, invocation: dict[str, Any]) -> None:
        with self._lock:
            self.data["status"] = status
            self.data["invocations"].append(invocation)
            self._write()

    def write(self) -> None:
        with self._lock:
            self._write()

    def _write(self) -> None:
        io.atomic_write_text(self.path, json.dumps(self.data, indent=1, default=str) + "\n")


def _sha256(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=20
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit or "unknown", "dirty": bool(status) if status is not None else None}


def _header(plan: Plan) -> dict[str, Any]:
    options = dataclasses.asdict(plan.options)
    return {
        "options": _plain({**options, "jobs": plan.jobs, "threads_per_fold": plan.threads}),
        "profile": _plain(plan.profile.to_dict()),
        "versions": _versions(),
        "git": _git(),
        "host": platform.node(),
    }


# ---------------------------------------------------------------- running the plan


def _is_finished(
    entry: dict[str, Any] | None, step: Step, profile_sha: str, upstream_end: str
) -> bool:
    """Done with these parameters and this profile, the notebook is there, and it started after
    every earlier step last ended (ISO UTC times compare as text)."""
    return (
        entry is not None
        and entry.get("status") in ("done", "skipped")
        and entry.get("parameters") == _plain(step.parameters)
        and entry.get("profile_sha256") == profile_sha
        and str(entry.get("started", "")) >= upstream_end
        and step.output.exists()
    )


def _upstream_end(steps: dict[str, dict[str, Any]], number: int) -> str:
    """When the latest finished step of an earlier notebook ended ("" if none)."""
    ends = [
        str(entry.get("ended", ""))
        for name, entry in steps.items()
        if name[:2].isdigit()
        and int(name[:2]) < number
        and entry.get("status") in ("done", "skipped")
    ]
    return max(ends, default="")


def _entry(step: Step, profile_sha: str, **fields: Any) -> dict[str, Any]:
    return {
        "notebook": str(step.source.relative_to(REPO_ROOT)),
        "output": str(step.output),
        "parameters": _plain(step.parameters),
        "profile_sha256": profile_sha,
        **fields,
    }


class _Runner:
    """Runs a plan's phases in turn, the steps of a phase concurrently."""

    def __init__(self, plan: Plan, manifest: Manifest, bar: tqdm) -> None:
        self.plan, self.manifest, self.bar = plan, manifest, bar
        self.profile_sha = _sha256(plan.profile.to_dict())
        self.local = local_launcher(plan.options.timeout)
        self.remote = submitit_launcher(plan) if plan.options.executor == "slurm" else None
        self.ran = False  # a step executed in this invocation: later ones cannot be skipped
        self.failed: list[str] = []

    def run(self) -> None:
        for index, phase in enumerate(self.plan.phases):
            if self.failed:
                self._not_run([s for p in self.plan.phases[index:] for s in p])
                return
            todo = [step for step in phase if not self._skip(step)]
            if todo:
                self._run_phase(todo)

    def _skip(self, step: Step) -> bool:
        entry = self.manifest.entry(step.name)
        upstream = _upstream_end(self.manifest.data["steps"], step.number)
        finished = _is_finished(entry, step, self.profile_sha, upstream)
        if self.plan.options.force or self.ran or not finished:
            return False
        self.manifest.set_step(step.name, {**entry, "status": "skipped"})
        self.bar.update()
        return True

    def _run_phase(self, steps: list[Step]) -> None:
        folds = steps[0].number == FOLD_STEP
        launch = self.remote if folds and self.remote else self.local
        workers = len(steps) if launch is self.remote else min(self.plan.jobs, len(steps))
        cap = self.plan.threads if folds and launch is self.local else None
        with _threads_per_kernel(cap), cf.ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(self._run_step, launch, step): step for step in steps}
            for future in cf.as_completed(futures):
                if future.result() == "failed":
                    for other in futures:
                        other.cancel()
        cancelled = [step for future, step in futures.items() if future.cancelled()]
        self._not_run(cancelled)
        self.ran = True

    def _run_step(self, launch: Launcher, step: Step) -> str:
        step.output.parent.mkdir(parents=True, exist_ok=True)
        self.manifest.set_step(
            step.name, _entry(step, self.profile_sha, status="running", started=_iso(time.time()))
        )
        self.bar.set_postfix_str(step.name)
        outcome = launch(step)
        self.manifest.set_step(step.name, _entry(step, self.profile_sha, **outcome))
        if outcome["status"] == "failed":
            self.failed.append(step.name)
        tqdm.write(f"{step.name}: {outcome['status']} in {outcome['duration_s']:.1f} s")
        self.bar.update()
        return outcome["status"]

    def _not_run(self, steps: list[Step]) -> None:
        reason = f"after {', '.join(self.failed)} failed"
        for step in steps:
            entry = _entry(step, self.profile_sha, status="not run", reason=reason)
            self.manifest.set_step(step.name, entry)


def execute(plan: Plan) -> int:
    """Run a checked plan; returns the exit code (0 done, 1 a step failed)."""
    run = plan.run_path
    (run / "notebooks").mkdir(parents=True, exist_ok=True)
    if plan.profile_yaml:
        io.atomic_write_text(run / "profile.yaml", plan.profile_yaml)
    manifest = Manifest(run / "manifest.json", _header(plan))
    manifest.write()
    started = time.time()
    bar = tqdm(
        total=len(plan.steps), desc="run_all", unit="step", disable=not plan.options.progress
    )
    runner = _Runner(plan, manifest, bar)
    try:
        runner.run()
    except BaseException:
        manifest.finish("interrupted", _invocation(started, "interrupted"))
        raise
    finally:
        bar.close()
    status = "failed" if runner.failed else "done"
    manifest.finish(status, _invocation(started, status))
    print(timing_table(plan, manifest))
    index = _report(run)
    if runner.failed:
        print(failure_summary(plan, manifest), file=sys.stderr)
        return FAILED
    if index is None:
        return FAILED
    print(f"done in {time.time() - started:.0f} s: {run} (manifest.json, notebooks/, {index.name})")
    return 0


def _report(run: Path) -> Path | None:
    """HTML of the executed notebooks and the run's index page; None (and why) if it failed."""
    try:
        index = report.write_report(run)
    except Exception as err:  # the run's results stand; say clearly that its report does not
        print(f"run_all: error: the HTML report of {run} failed: {err!r}", file=sys.stderr)
        return None
    print(f"report: {index}")
    return index


def _invocation(started: float, status: str) -> dict[str, Any]:
    ended = time.time()
    return {
        "argv": sys.argv,
        "started": _iso(started),
        "ended": _iso(ended),
        "duration_s": round(ended - started, 2),
        "status": status,
    }


def timing_table(plan: Plan, manifest: Manifest) -> str:
    """Per-step status and duration (of the run that produced the notebook, when skipped)."""
    rows = [("step", "status", "seconds")]
    for step in plan.steps:
        entry = manifest.entry(step.name) or {}
        seconds = entry.get("duration_s")
        rows.append(
            (step.name, entry.get("status", "?"), "" if seconds is None else f"{seconds:.1f}")
        )
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}" for a, b, c in rows]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def failure_summary(plan: Plan, manifest: Manifest) -> str:
    """Which notebook and cell failed, why, and where the executed notebook is."""
    lines = []
    for step in plan.steps:
        entry = manifest.entry(step.name) or {}
        error = entry.get("error")
        if entry.get("status") != "failed" or not error:
            continue
        cell = (
            f"cell {error['cell_index']} (In [{error['execution_count']}]): {error['cell_source']}"
            if error.get("cell_index") is not None
            else "before any cell ran"
        )
        lines += [
            f"FAILED {step.name} ({error['kind']})",
            f"  notebook: {entry['notebook']}, {cell}",
            f"  why: {error['why']}",
            f"  executed notebook with the traceback: {entry['output']}",
        ]
        if error.get("log"):
            lines.append(f"  job log: {error['log']}")
    not_run = [
        s.name for s in plan.steps if (manifest.entry(s.name) or {}).get("status") == "not run"
    ]
    if not_run:
        lines.append(f"not run: {', '.join(not_run)}")
    lines.append(f"manifest: {manifest.path}")
    return "\n".join(lines)


def run_all(options: Options | None = None, **changes: Any) -> int:
    """Check, then run; returns the exit code (0 done, 1 a step failed, 2 usage error).
    Keyword arguments replace fields of ``options`` (see ``Options``)."""
    options = dataclasses.replace(options or Options(), **changes)
    try:
        plan = make_plan(options)
    except (UsageError, ProfileError) as err:
        print(f"run_all: error: {err}", file=sys.stderr)
        return USAGE
    return execute(plan)


# ---------------------------------------------------------------- command line


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _assignment(text: str) -> tuple[str, Text]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), Text(value)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python run_all.py",
        description="Run notebooks 01-06 with papermill into the run directory: 01 -> 02 -> 03 "
        "once per fold (in parallel) -> 04 -> 05 -> 06. Resumes: finished steps are skipped. "
        "Without arguments: the demo profile on the embedded synthetic cohort.",
    )
    p.add_argument("--profile", default="demo", help="tiny | demo | paper, or a profile YAML")
    p.add_argument("--data", default="", help="manifest CSV of your cohort (default: synthetic)")
    p.add_argument("--run-dir", default="", help="run directory (default: runs/<profile>)")
    p.add_argument("--gpus", type=_int_list, default=(), help="e.g. 0,1: one fold per GPU")
    p.add_argument("--folds", type=_int_list, default=None, help="e.g. 0,2 (default: all)")
    p.add_argument("--from", dest="first", type=int, default=1, metavar="NN", help="first step")
    p.add_argument("--to", dest="last", type=int, default=6, metavar="NN", help="last step")
    p.add_argument(
        "--executor",
        choices=["local", "slurm"],
        default="local",
        help="where the per-fold notebooks run: here, or as SLURM jobs through submitit",
    )
    p.add_argument(
        "--jobs", type=int, default=0, help="folds at once (default: one per GPU; CPU: cores/4)"
    )
    p.add_argument("--figures", default="", help="04 and 06 also save their figures here")
    p.add_argument(
        "-p",
        "--parameter",
        dest="parameters",
        type=_assignment,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a notebook parameter (e.g. workers=2) or a profile setting (e.g. train.epochs=3)",
    )
    p.add_argument("--force", action="store_true", help="rerun steps that are already done")
    p.add_argument("--timeout", type=float, default=None, help="seconds per cell (default: none)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument(
        "--submitit-cluster", default="slurm", help="submitit cluster for --executor slurm"
    )
    p.add_argument(
        "--slurm",
        dest="submitit_parameters",
        type=_assignment,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="submitit parameter, e.g. slurm_partition=gpu or timeout_min=600",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """``run_all.py``: parse the command line and run; returns the exit code."""
    args = _parser().parse_args(argv)
    fields = vars(args)
    fields["parameters"] = dict(args.parameters)
    fields["submitit_parameters"] = {k: _convert(v, None) for k, v in args.submitit_parameters}
    return run_all(Options(**fields))


if __name__ == "__main__":
    sys.exit(main())
