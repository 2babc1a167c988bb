"""One job over many subjects: in worker processes, with a progress bar, turning one subject's
failure into a reason instead of a stopped run."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed

from tqdm.auto import tqdm


def map_subjects(
    job: Callable[[dict], dict],
    items: list[dict],
    workers: int = 0,
    desc: str = "subjects",
    progress: bool = True,
) -> tuple[list[dict], dict[str, Exception]]:
    """Apply ``job`` to every item (each a dict with ``subject_id``); returns (results, errors)
    where errors maps subject_id → the exception (:func:`reason` words it). ``workers`` 0 = all
    cores; 1 = in this process."""
    workers = min(len(items), workers or os.cpu_count() or 1)
    results, errors = [], {}
    bar = progress_bar(total=len(items), desc=desc, progress=progress and bool(items))

    def collect(item, outcome):
        if isinstance(outcome, BaseException):
            errors[item["subject_id"]] = outcome
        else:
            results.append(outcome)
        bar.update()

    if workers <= 1:
        for item in items:
            collect(item, _guarded(job, item))
    else:
        with ProcessPoolExecutor(max_workers=workers, initializer=_one_thread_each) as pool:
            futures = {pool.submit(_guarded, job, item): item for item in items}
            for future in as_completed(futures):
                collect(futures[future], future.result())
    bar.close()
    order = {item["subject_id"]: i for i, item in enumerate(items)}
    results.sort(key=lambda r: order[r["subject_id"]])
    return results, errors


def progress_shown(progress: bool = True) -> bool:
    """Whether to show a progress bar: ``progress`` and the environment variable
    ``TQDM_DISABLE`` unset (run_all.py sets it for the notebooks it executes; tqdm's notebook
    bars and Lightning's would not read it themselves)."""
    return progress and os.environ.get("TQDM_DISABLE", "0") in ("", "0")


def progress_bar(iterable=None, *, desc: str, progress: bool = True, **kwargs) -> tqdm:
    """A progress bar over subjects (``unit`` may say otherwise), when :func:`progress_shown`."""
    hidden = not progress_shown(progress)
    return tqdm(iterable, desc=desc, disable=hidden, **{"unit": "subject", **kwargs})


def _one_thread_each() -> None:
    """Worker processes already use every core between them: no nested threading."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _guarded(job, item):
    try:
        return job(item)
    except Exception as err:  # one bad subject never stops the others
        return err


def reason(subject_id: str, err: BaseException) -> str:
    """``"<id>: <what went wrong>"``; a problem of the data (ValueError) in its own words, any
    other error with its type."""
    text = str(err) or type(err).__name__
    text = text if isinstance(err, ValueError) else f"{type(err).__name__}: {text}"
    return text if text.startswith(f"{subject_id}:") else f"{subject_id}: {text}"


def transient(err: BaseException) -> bool:
    """An error that may pass on a retry (a full disk, a killed worker), unlike a problem of the
    data, which our code raises as ValueError."""
    return not isinstance(err, ValueError)
