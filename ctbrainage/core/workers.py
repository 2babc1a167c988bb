"""One job over many subjects: in worker processes, with a progress bar, and the one error
policy of the pipeline.

A ``ValueError`` is a problem of one subject's data: that subject is set aside with its reason
and the others go on. A transient failure (:func:`transient`: out of disk space, a killed or
broken worker process, a timeout) is set aside too, to be retried on the next run. Any other
exception is a bug: it stops the job at once, with its traceback (from the worker process
where it happened), and is never retried.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

from tqdm.auto import tqdm

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def transient(err: BaseException) -> bool:
    """A failure that may pass on a retry, and only these: out of disk space, a killed or broken
    worker process, a timeout."""
    if isinstance(err, OSError) and err.errno in DISK_FULL:
        return True
    return isinstance(err, BrokenProcessPool | TimeoutError | FutureTimeout)


def set_aside(err: BaseException) -> bool:
    """Whether one subject's failure sets that subject aside (a data problem or a transient
    failure) rather than stopping the job (a bug)."""
    return isinstance(err, ValueError) or transient(err)


def failures(errors: Mapping[str, BaseException]) -> tuple[dict[str, str], list[str]]:
    """Subject → reason of every data problem and transient failure, and the subjects to retry
    (the transient ones); a bug among ``errors`` is raised, traceback and all."""
    for err in errors.values():
        if not set_aside(err):
            raise err
    reasons = {sid: reason(sid, err) for sid, err in errors.items()}
    return reasons, [sid for sid, err in errors.items() if transient(err)]


@dataclass(frozen=True)
class Mapped:
    """The results of :func:`map_subjects` in the items' order, and the exceptions of the
    subjects set aside (subject_id → exception)."""

    results: list[dict]
    errors: dict[str, BaseException] = field(default_factory=dict)


def map_subjects(
    job: Callable[[dict], dict],
    items: list[dict],
    workers: int = 0,
    desc: str = "subjects",
    progress: bool = True,
) -> Mapped:
    """Apply ``job`` to every item (each a dict with ``subject_id``). A subject whose job raises
    a data problem or a transient failure is set aside (:class:`Mapped` ``errors``); a bug stops
    the job and is raised. ``workers`` 0 = all cores; 1 = in this process."""
    workers = min(len(items), workers or os.cpu_count() or 1)
    results, errors = [], {}
    bar = progress_bar(total=len(items), desc=desc, progress=progress and bool(items))

    def collect(item, outcome):
        if isinstance(outcome, BaseException):
            errors[item["subject_id"]] = outcome
        else:
            results.append(outcome)
        bar.update()

    try:
        if workers <= 1:
            for item in items:
                collect(item, _guarded(job, item))
        else:
            _in_workers(job, items, workers, collect)
    finally:
        bar.close()
    order = {item["subject_id"]: i for i, item in enumerate(items)}
    results.sort(key=lambda r: order[r["subject_id"]])
    return Mapped(results, errors)


def _in_workers(job, items: list[dict], workers: int, collect) -> None:
    """Run the items in a pool; a bug cancels what has not started and is raised."""
    pool = ProcessPoolExecutor(
        max_workers=workers, initializer=_worker_start, initargs=(os.getpid(),)
    )
    try:
        futures = {pool.submit(_guarded, job, item): item for item in items}
        for future in as_completed(futures):
            try:
                outcome = future.result()
            except BrokenProcessPool as err:  # a worker was killed: this subject may pass later
                outcome = err
            collect(futures[future], outcome)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def progress_shown(progress: bool = True) -> bool:
    """Whether to show a progress bar: ``progress`` and the environment variable
    ``TQDM_DISABLE`` unset (run_all.py sets it for the notebooks it executes; tqdm's notebook
    bars and Lightning's would not read it themselves)."""
    return progress and os.environ.get("TQDM_DISABLE", "0") in ("", "0")


def progress_bar(iterable=None, *, desc: str, progress: bool = True, **kwargs) -> tqdm:
    """A progress bar over subjects (``unit`` may say otherwise), when :func:`progress_shown`."""
    hidden = not progress_shown(progress)
    return tqdm(iterable, desc=desc, disable=hidden, **{"unit": "subject", **kwargs})


def _worker_start(parent: int) -> None:
    """A worker dies with the process that started it (e.g. a notebook's kernel stopped by
    run_all's death: no orphan goes on writing), and uses one thread: the workers already use
    every core between them."""
    import SimpleITK as sitk

    die_with_parent(parent)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when its parent ``parent`` exits (prctl
    PR_SET_PDEATHSIG); exit now if it has already gone. Elsewhere: nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request
        os._exit(1)


def _guarded(job, item):
    """The job's result, or the exception of a subject to set aside (one bad subject never stops
    the others); a bug propagates."""
    try:
        return job(item)
    except Exception as err:
        if set_aside(err):
            return err
        raise


def reason(subject_id: str, err: BaseException) -> str:
    """``"<id>: <what went wrong>"``; a problem of the data (ValueError) in its own words, any
    other error with its type."""
    text = str(err) or type(err).__name__
    text = text if isinstance(err, ValueError) else f"{type(err).__name__}: {text}"
    return text if text.startswith(f"{subject_id}:") else f"{subject_id}: {text}"
