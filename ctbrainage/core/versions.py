"""The versions of Python and of the packages a result depends on (recorded by runs and bundles)."""

from __future__ import annotations

import platform
from importlib import metadata

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


def package_versions() -> dict[str, str | None]:
    """Python's version and each of ``VERSIONED``'s (None: not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
