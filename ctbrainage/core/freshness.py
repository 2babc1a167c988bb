"""One freshness mechanism for every result of a run: a record of what it was made from.

A record (JSON, written atomically after the result) holds a hash of the settings that made the
result, the version of the code that made it, a fingerprint of every input file and the result's
own summary. The result is *fresh* when its outputs exist and all three are unchanged. Input
fingerprints are content hashes (SHA-256); the size and modification time stored beside each
hash let an unchanged file be recognised without reading it, while a file that was touched or
rewritten is hashed again, so identical content still counts as unchanged. Steps use records at
two grains: one per step (``records/<step>.json``) and one per subject inside a step, so a
killed step resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ctbrainage.core.atomic import atomic_write_json

_CHUNK = 1 << 20


def settings_hash(settings: Any) -> str:
    """SHA-256 of the settings as canonical JSON."""
    text = json.dumps(settings, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _files(path: Path) -> list[Path]:
    """A file, or every file below a folder (a DICOM series), in a fixed order."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(path: str | os.PathLike, known: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{"size", "mtime_ns", "sha256"}`` of a file (for a folder: of its files together); the
    hash in ``known`` is reused when size and modification time are those recorded there."""
    files = _files(Path(path))
    if not files or not all(f.exists() for f in files):
        return {"missing": True}
    stats = [f.stat() for f in files]
    size = sum(s.st_size for s in stats)
    mtime = max(s.st_mtime_ns for s in stats)
    if known and known.get("size") == size and known.get("mtime_ns") == mtime:
        return dict(known)
    if len(files) == 1:
        sha = _sha256(files[0])
    else:
        digest = hashlib.sha256()
        for f in files:
            digest.update(f"{f.relative_to(path)}\0{_sha256(f)}\n".encode())
        sha = digest.hexdigest()
    return {"size": size, "mtime_ns": mtime, "sha256": sha}


class Record:
    """What one result was made from; ``root`` makes input names independent of where the run
    directory lies (inputs outside it keep their absolute path)."""

    def __init__(self, path: str | os.PathLike, root: str | os.PathLike) -> None:
        self.path, self.root = Path(path), Path(root)

    def _key(self, path: Path) -> str:
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return str(Path(path).resolve())

    def _stored(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def fresh(
        self,
        settings: Any,
        version: int,
        inputs: Iterable[str | os.PathLike] = (),
        outputs: Iterable[str | os.PathLike] = (),
    ) -> dict[str, Any] | None:
        """The stored result when every output exists and settings, code version and inputs
        are those recorded; else None (the result must be made again)."""
        inputs = list(dict.fromkeys(Path(p) for p in inputs))  # each file once
        stored = self._stored()
        if (
            stored is None
            or stored.get("settings") != settings_hash(settings)
            or stored.get("version") != version
            or not all(Path(p).exists() for p in outputs)
        ):
            return None
        recorded = stored.get("inputs", {})
        keys = [self._key(Path(p)) for p in inputs]
        if sorted(keys) != sorted(recorded):
            return None
        for path, key in zip(inputs, keys, strict=True):
            known = recorded[key]
            if fingerprint(path, known).get("sha256") != known.get("sha256"):
                return None  # changed, appeared or disappeared
        return stored.get("result", {})

    def fingerprints(self, inputs: Iterable[str | os.PathLike]) -> dict[str, Any]:
        """The inputs' fingerprints now (take them before reading the inputs)."""
        stored = (self._stored() or {}).get("inputs", {})
        inputs = list(dict.fromkeys(Path(p) for p in inputs))
        return {self._key(Path(p)): fingerprint(p, stored.get(self._key(Path(p)))) for p in inputs}

    def write(
        self,
        settings: Any,
        version: int,
        fingerprints: Mapping[str, Any],
        result: Mapping[str, Any] | None = None,
    ) -> None:
        """Mark the result made (call after every output is written)."""
        record = {
            "settings": settings_hash(settings),
            "settings_used": settings,
            "version": version,
            "inputs": dict(fingerprints),
            "result": dict(result or {}),
        }
        atomic_write_json(self.path, record, default=str)
