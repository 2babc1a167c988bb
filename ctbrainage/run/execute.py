"""Executing a checked plan: each notebook with papermill, then the run's HTML report.

Phases run in turn, the notebook runs of a phase at once: 01 → 02 → 03 once per fold (one per
GPU, bounded by cores on CPU, or as SLURM jobs through submitit) → 04 → 05 → 06 → 07. A notebook run
is skipped (unless ``force``) when the manifest records it as done with the same notebook
(its source's SHA-256) and parameters, its executed notebook exists, and its step's record
shows that nothing the step reads has changed (:func:`ctbrainage.run.steps.is_fresh`), checked
when its phase comes.
Exit codes: 0 done, 1 a notebook failed, 2 usage error.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client import AsyncKernelManager
from tqdm.auto import tqdm
from traitlets import default

from ctbrainage.core.atomic import atomic_write_text
from ctbrainage.core.config import REPO_ROOT, Profile, ProfileError
from ctbrainage.core.freshness import fingerprint
from ctbrainage.core.layout import RunLayout
from ctbrainage.run import stored
from ctbrainage.run.guard import WRITE_ERRORS, RunBusyError, disk_space, one_run_per_directory
from ctbrainage.run.plan import (
    FOLD_STEP,
    NOTEBOOK_DIR,
    NotebookRun,
    Options,
    Plan,
    UsageError,
    make_plan,
)
from ctbrainage.run.record import Manifest, iso, plain, run_header
from ctbrainage.run.steps import is_fresh
from ctbrainage.views import pages

USAGE, FAILED = 2, 1
# a kernel on a busy machine (folds training beside it, 2 cores) can take more than papermill's
# default 60 s to start; a slow start is not a failed step
KERNEL_START_S = 300


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


class IPCKernelManager(AsyncKernelManager):
    """Kernels that talk over local IPC sockets (files beside the kernel's connection file in
    Jupyter's runtime directory, readable by this user only) instead of TCP ports on localhost:
    nothing of a notebook's code or outputs can be reached over the network, and ipykernel has
    no reason to print its warning about unencrypted TCP on run_all's terminal."""

    @default("transport")
    def _default_transport(self) -> str:
        return "ipc"

    @default("ip")
    def _default_ip(self) -> str:
        """A socket name of this kernel's own in Jupyter's (private) runtime directory.
        jupyter_client's default, ``kernel-ipc`` in the working directory, is shared by every
        kernel started there: two kernels starting at once (folds side by side, test workers)
        took the same sockets, and one never answered."""
        from jupyter_core.paths import jupyter_runtime_dir

        runtime = Path(jupyter_runtime_dir())
        runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
        return str(runtime / f"ctbrainage-{uuid.uuid4().hex[:16]}-ipc")


def execute_notebook(
    source: str, output: str, parameters: dict[str, Any], timeout: float | None = None
) -> dict[str, Any]:
    """Execute one notebook with papermill and keep its outputs static
    (:func:`ctbrainage.run.stored.store`); never raises. Returns status (done/failed),
    start/end/duration and, on failure, an error summary. Module level: submitit pickles it."""
    import papermill as pm

    _quiet_papermill()
    started = time.time()
    error = None
    final = Path(output)
    # papermill writes the notebook as it runs: into a sibling, which replaces the output only
    # once complete, so a full disk or a kill never leaves a truncated notebook in its place
    partial = final.with_name(f".partial-{final.name}")
    try:
        pm.execute_notebook(
            source,
            str(partial),
            parameters=parameters,
            cwd=str(NOTEBOOK_DIR),
            progress_bar=False,
            log_output=False,
            execution_timeout=timeout,
            start_timeout=KERNEL_START_S,
            kernel_manager_class=IPCKernelManager,
        )
    except Exception as err:  # a failed notebook is a result, reported by the caller
        error = _error_summary(err, partial)
    if partial.exists():  # also a failed one: its outputs say where it stopped
        try:
            stored.store(partial, final)
        except Exception as err:  # an unwritable notebook: the first error is the one to report
            error = error or _error_summary(err, partial)
        partial.unlink(missing_ok=True)
    ended = time.time()
    return {
        "status": "failed" if error else "done",
        "started": iso(started),
        "ended": iso(ended),
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
    if "No space left on device" in why or "Read-only file system" in why:
        why += f" ({disk_space(output)})"
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


# ---------------------------------------------------------------- executors

Launcher = Callable[[NotebookRun], dict[str, Any]]


def local_launcher(timeout: float | None) -> Launcher:
    """Run the notebook here (papermill starts its own kernel process)."""

    def launch(step: NotebookRun) -> dict[str, Any]:
        return execute_notebook(str(step.source), str(step.output), step.parameters, timeout)

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

    def launch(step: NotebookRun) -> dict[str, Any]:
        args = (str(step.source), str(step.output), step.parameters, options.timeout)
        with lock:
            job = executor.submit(execute_notebook, *args)
        try:
            return {**job.result(), "job_id": job.job_id}
        except Exception as err:  # the job itself died (preempted, out of memory, ...)
            now = iso(time.time())
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
def _kernel_environment(threads: int | None) -> Iterator[None]:
    """The environment of the kernels started meanwhile: torch/BLAS threads capped at
    ``threads`` (concurrent folds on one CPU), and no progress bars inside the executed
    notebooks (the driver shows its own; a finished bar is noise in a stored notebook). A value
    the user set in the environment wins."""
    values = {"TQDM_DISABLE": "1"}
    if threads:
        values |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    added = [name for name in values if name not in os.environ]
    for name in added:
        os.environ[name] = values[name]
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


# ---------------------------------------------------------------- running the plan


def _notebook_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """The parameters that decide a notebook's output beside its step's record (the profile's
    settings are in the record, whichever file or name passed them)."""
    return {k: v for k, v in plain(parameters).items() if k != "profile"}


def _is_finished(entry: dict[str, Any] | None, step: NotebookRun, profile: Profile) -> bool:
    """The notebook ran to the end, as it is now, with these parameters, its executed copy is
    there, and its step's record says that nothing the step reads has changed since
    (``ctbrainage.steps``)."""
    return (
        entry is not None
        and entry.get("status") in ("done", "skipped")
        and entry.get("notebook_sha256") == fingerprint(step.source)["sha256"]
        and _notebook_parameters(entry.get("parameters", {}))
        == _notebook_parameters(step.parameters)
        and step.output.exists()
        and is_fresh(step.number, profile, step.fold)
    )


def _entry(step: NotebookRun, **fields: Any) -> dict[str, Any]:
    return {
        "notebook": str(step.source.relative_to(REPO_ROOT)),
        "notebook_sha256": fingerprint(step.source)["sha256"],
        "output": str(step.output),
        "parameters": plain(step.parameters),
        **fields,
    }


class _PhaseExecutor:
    """Runs a plan's phases in turn, the steps of a phase concurrently."""

    def __init__(self, plan: Plan, manifest: Manifest, bar: tqdm) -> None:
        self.plan, self.manifest, self.bar = plan, manifest, bar
        self.local = local_launcher(plan.options.timeout)
        self.remote = submitit_launcher(plan) if plan.options.executor == "slurm" else None
        self.failed: list[str] = []

    def run(self) -> None:
        for index, phase in enumerate(self.plan.phases):
            if self.failed:
                self._not_run([s for p in self.plan.phases[index:] for s in p])
                return
            todo = [step for step in phase if not self._skip(step)]  # after the phases before
            if todo:
                self._run_phase(todo)

    def _skip(self, step: NotebookRun) -> bool:
        entry = self.manifest.entry(step.name)
        if self.plan.options.force or not _is_finished(entry, step, self.plan.profile):
            return False
        self.manifest.set_step(step.name, {**entry, "status": "skipped"})
        self.bar.update()
        return True

    def _run_phase(self, steps: list[NotebookRun]) -> None:
        folds = steps[0].number == FOLD_STEP
        launch = self.remote if folds and self.remote else self.local
        workers = len(steps) if launch is self.remote else min(self.plan.jobs, len(steps))
        cap = self.plan.threads if folds and launch is self.local else None
        # every step of the phase runs, also after one has failed (a fold that fails leaves the
        # others to finish: a rerun redoes only the failed one); the next phases do not
        with _kernel_environment(cap), cf.ThreadPoolExecutor(max_workers=workers) as pool:
            for future in [pool.submit(self._run_step, launch, step) for step in steps]:
                future.result()  # an exception of the driver itself is raised here

    def _run_step(self, launch: Launcher, step: NotebookRun) -> str:
        step.output.parent.mkdir(parents=True, exist_ok=True)
        self.manifest.set_step(step.name, _entry(step, status="running", started=iso(time.time())))
        self.bar.set_postfix_str(step.name)
        outcome = launch(step)
        self.manifest.set_step(step.name, _entry(step, **outcome))
        if outcome["status"] == "failed":
            self.failed.append(step.name)
        tqdm.write(f"{step.name}: {outcome['status']} in {outcome['duration_s']:.1f} s")
        self.bar.update()
        return outcome["status"]

    def _not_run(self, steps: list[NotebookRun]) -> None:
        reason = f"after {', '.join(self.failed)} failed"
        for step in steps:
            entry = _entry(step, status="not run", reason=reason)
            self.manifest.set_step(step.name, entry)


def execute(plan: Plan) -> int:
    """Run a checked plan, holding its run directory; returns the exit code (0 done, 1 a step
    failed, 2 the run directory is in use)."""
    layout = RunLayout(plan.run_path)
    layout.notebooks_dir.mkdir(parents=True, exist_ok=True)
    try:
        with one_run_per_directory(layout):
            return _execute(plan, layout)
    except RunBusyError as err:
        print(f"run_all: error: {err}", file=sys.stderr)
        return USAGE
    except OSError as err:
        if err.errno not in WRITE_ERRORS:
            raise
        where = err.filename or layout.root
        print(
            f"run_all: error: cannot write {where}: {err.strerror} ({disk_space(where)}); "
            "free space or choose another --run-dir, then run again (finished steps are kept)",
            file=sys.stderr,
        )
        return FAILED


def _execute(plan: Plan, layout: RunLayout) -> int:
    if plan.profile_yaml:
        atomic_write_text(layout.profile, plan.profile_yaml)
    manifest = Manifest(layout.manifest, run_header(plan))
    manifest.write()
    started = time.time()
    bar = tqdm(
        total=len(plan.steps), desc="run_all", unit="step", disable=not plan.options.progress
    )
    phases = _PhaseExecutor(plan, manifest, bar)
    try:
        phases.run()
    except BaseException as err:
        status = "failed" if isinstance(err, OSError) else "interrupted"
        with contextlib.suppress(OSError):  # the disk may be full: the first error is reported
            manifest.finish(status, _invocation(started, status))
        raise
    finally:
        bar.close()
    status = "failed" if phases.failed else "done"
    manifest.finish(status, _invocation(started, status))
    print(timing_table(plan, manifest))
    index = _report(layout.root)
    if phases.failed:
        print(failure_summary(plan, manifest), file=sys.stderr)
        return FAILED
    if index is None:
        return FAILED
    print(f"done in {time.time() - started:.0f} s: {layout.root} (see {index})")
    return 0


def _report(run: Path) -> Path | None:
    """HTML of the executed notebooks and the run's index page; None (and why) if it failed."""
    try:
        index = pages.write_report(run)
    except Exception as err:  # the run's results stand; say clearly that its report does not
        print(f"run_all: error: the HTML report of {run} failed: {err!r}", file=sys.stderr)
        return None
    print(f"report: {index}")
    return index


def _invocation(started: float, status: str) -> dict[str, Any]:
    ended = time.time()
    return {
        "argv": sys.argv,
        "started": iso(started),
        "ended": iso(ended),
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
