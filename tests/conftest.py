"""Shared fixtures: small synthetic cohorts and the tiny run, each built once per test session,
also when pytest-xdist runs the suite in several workers (the first worker to need one builds it
under a file lock; the others wait and read it), and the two tiers: a test that builds or reads a
run (one of ``RUN_FIXTURES``), trains a model or executes notebooks is an ``integration`` test;
``make test-fast`` runs the others."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

from ctbrainage.synth import generate_cohort


def pytest_configure(config):
    """Under pytest-xdist, each worker's share of the cores as its torch/BLAS threads, also for
    the kernels and worker processes it starts (a value set in the environment wins): two
    workers with two threads each on two cores spend their time in OpenMP's spin-waits."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(name, threads)
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def _built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """``build(folder)`` once per test session, shared by every xdist worker: the folder is
    complete when its ``.done`` marker exists (a failed build leaves none and fails loudly)."""
    root = tmp_path_factory.getbasetemp()
    if root.name.startswith("popen-gw"):  # an xdist worker: the session's folder is the parent
        root = root.parent
    folder = root / name
    with FileLock(str(root / f"{name}.lock")):
        if not (folder / ".done").exists():
            folder.mkdir(exist_ok=True)
            build(folder)
            (folder / ".done").touch()
    return folder


@pytest.fixture(scope="session")
def cohort_dir(tmp_path_factory):
    """16 demo-resolution subjects, physiological schedule, two sites."""
    return _built_once(
        tmp_path_factory,
        "cohort",
        lambda out: generate_cohort(out, n=16, seed=7, workers=2, progress=False),
    )


@pytest.fixture(scope="session")
def null_cohort_dir(tmp_path_factory):
    """10 subjects whose temporal white matter carries no age signal."""
    return _built_once(
        tmp_path_factory,
        "null_cohort",
        lambda out: generate_cohort(
            out, n=10, seed=11, schedule="null=temporal", workers=2, progress=False
        ),
    )


def _tiny_profile(run_dir: Path):
    from ctbrainage.core.config import load_profile

    return load_profile("tiny", {"run_dir": str(run_dir)})


def _build_tiny_run(run_dir: Path) -> None:
    from ctbrainage.core.layout import RunLayout
    from ctbrainage.steps import s01_preprocess, s02_lobes, s03_train

    profile = _tiny_profile(run_dir)
    s01_preprocess.run(profile, progress=False)
    s02_lobes.run(profile, progress=False)
    for fold in range(profile.train.folds):
        s03_train.run(profile, fold, progress=False)
    assert RunLayout(profile.run_path).predictions.exists()  # the last fold finalised step 03


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny profile run through steps 01–03: preprocessed, lobes, both folds trained, with
    out-of-fold predictions. Shared by every test (and worker): tests read it, or copy the run
    directory with ``shutil.copytree`` before changing or adding anything."""
    folder = _built_once(tmp_path_factory, "tiny_run", lambda out: _build_tiny_run(out / "run"))
    return _tiny_profile(folder / "run")


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run, tmp_path_factory):
    """The tiny run exported as a bundle (tests that change it work on a copy)."""
    from ctbrainage.apps.bundle import export_bundle

    folder = _built_once(
        tmp_path_factory,
        "bundle",
        lambda out: export_bundle(tiny_run, out / "tiny", progress=False),
    )
    return folder / "tiny"


# fixtures that build a run (or a cohort to run on): their tests form the integration tier
RUN_FIXTURES = {"tiny_run", "tiny_bundle", "cohort_dir", "null_cohort_dir"}


# the modules that take longest (``make test`` prints the slowest tests), first: pytest-xdist
# hands modules to its workers in collection order (``--no-loadscope-reorder``), so the long ones
# start early and the short ones fill in at the end, and both workers finish together
LONGEST_FIRST = (
    "test_run_all",
    "test_benchmark_cohort",
    "test_user_cohort",
    "test_predict",
    "test_synth_generate",
    "test_step_preprocess",
    "test_localization",
    "test_step_attribution",
    "test_robustness",
    "test_multitask",
    "test_stacking",
    "test_lobes_atlas",
)


def _module_rank(item) -> int:
    name = item.path.stem
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(items):
    for item in items:
        if RUN_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
    items.sort(key=_module_rank)  # stable: a module's tests keep their order
