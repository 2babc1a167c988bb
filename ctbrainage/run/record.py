"""``<run>/manifest.json``: what a run was asked to do, with which profile, package versions and
commit, and each notebook run's status, times, parameters and error; rewritten atomically after
every change, so an interrupted run leaves a readable record.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import platform
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from ctbrainage.core.atomic import atomic_write_json
from ctbrainage.core.config import REPO_ROOT
from ctbrainage.core.versions import package_versions
from ctbrainage.run.plan import Plan


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
            "created": old.get("created", iso(time.time())),
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
        atomic_write_json(self.path, self.data, default=str)


def sha256(value: Any) -> str:
    """SHA-256 of ``value`` as canonical JSON (keys sorted)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def plain(value: Any) -> Any:
    """``value`` as it reads back from the manifest (JSON types; anything else as text)."""
    return json.loads(json.dumps(value, default=str))


def git_info() -> dict[str, Any]:
    """The repository's commit and whether tracked files differ from it (None: unknown)."""

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


def run_header(plan: Plan) -> dict[str, Any]:
    """The manifest's record of the invocation: options, profile, versions, commit, host."""
    options = dataclasses.asdict(plan.options)
    return {
        "options": plain({**options, "jobs": plan.jobs, "threads_per_fold": plan.threads}),
        "profile": plain(plan.profile.to_dict()),
        "versions": package_versions(),
        "git": git_info(),
        "host": platform.node(),
    }


def iso(seconds: float) -> str:
    """Seconds since the epoch as ISO 8601 UTC (such times compare correctly as text)."""
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds")
