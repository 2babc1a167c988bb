"""What keeps a run directory safe: one run_all.py at a time, and a clear message when the
directory cannot be written (full disk, quota, read-only)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ctbrainage.core.atomic import atomic_write_json
from ctbrainage.core.layout import RunLayout
from ctbrainage.run.record import iso

# a run directory that cannot be written: full, over quota, read-only or not ours
WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


class RunBusyError(RuntimeError):
    """Another run_all.py holds the run directory."""


@contextlib.contextmanager
def one_run_per_directory(layout: RunLayout) -> Iterator[None]:
    """Hold the run directory's lock for this invocation (refuse when another run_all.py holds
    it). The operating system releases the lock of a killed process, so a stale one is taken
    over; the owner file (pid, start, command) only names the holder in the refusal."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(layout.run_lock))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            owner = json.loads(layout.run_owner.read_text())
            who = f"pid {owner['pid']}, started {owner['started']}: {' '.join(owner['argv'])}"
        except (OSError, ValueError, KeyError):
            who = "owner unknown"
        raise RunBusyError(
            f"run directory {layout.root} is in use by another run_all.py ({who}); wait for it "
            "to finish or choose another --run-dir"
        ) from None
    try:
        owner = {"pid": os.getpid(), "started": iso(time.time()), "argv": sys.argv}
        atomic_write_json(layout.run_owner, owner)
        yield
    finally:
        layout.run_owner.unlink(missing_ok=True)
        lock.release()


def disk_space(path: str | Path) -> str:
    """The free space on ``path``'s file system, in words (for messages about a full disk)."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    usage = shutil.disk_usage(folder)
    return f"{usage.free / 2**20:,.0f} MiB free of {usage.total / 2**30:,.1f} GiB on {folder}"
