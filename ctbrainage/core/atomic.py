"""Atomic file writes: a file (or folder) appears complete under its name, or not at all.

Standard library only (numpy is imported by the one function that needs it), so that every
module can write results safely without image libraries.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_npz",
    "atomic_write_text",
    "strict_json",
]


def _sibling(path: Path, tag: str) -> Path:
    return path.with_name(f".{tag}-{secrets.token_hex(6)}-{path.name}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _replace(tmp: Path, path: Path) -> None:
    if tmp.is_dir() and path.is_dir() and not path.is_symlink():
        old = _sibling(path, "old")
        os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            os.rename(old, path)
            raise
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary sibling of ``path`` (same suffix); move it onto ``path`` on success.

    The temporary may be a file or a directory. If the body raises, the temporary is removed and
    an existing ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    try:
        yield tmp
        _replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_npz(path: str | os.PathLike, **arrays) -> None:
    """``arrays`` as a compressed ``.npz`` file, written atomically."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def strict_json(value: Any, **dumps: Any) -> str:
    """``value`` as standard JSON: NaN and ±infinity (which ``json.dumps`` writes as the
    non-standard tokens NaN and Infinity) become null."""
    return json.dumps(_finite(value), allow_nan=False, **dumps)


def atomic_write_json(path: str | os.PathLike, value: Any, **dumps: Any) -> None:
    """``value`` as standard JSON (:func:`strict_json`, indent 1 unless given), atomically."""
    atomic_write_text(path, strict_json(value, **{"indent": 1, **dumps}) + "\n")
