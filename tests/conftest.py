"""Shared fixtures: small synthetic cohorts and the tiny run, each built once per test session,
and the two tiers: a test that builds or reads a run (one of ``RUN_FIXTURES``) or executes
notebooks is an ``integration`` test; ``make test-fast`` runs the others."""

import pytest

from ctbrainage.synth import generate_cohort


@pytest.fixture(scope="session")
def cohort_dir(tmp_path_factory):
    """16 demo-resolution subjects, physiological schedule, two sites."""
    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(out, n=16, seed=7, workers=2, progress=False)
    return out


@pytest.fixture(scope="session")
def null_cohort_dir(tmp_path_factory):
    """16 subjects whose temporal white matter carries no age signal."""
    out = tmp_path_factory.mktemp("null_cohort")
    generate_cohort(out, n=16, seed=11, schedule="null=temporal", workers=2, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny profile run through steps 01–03: preprocessed, lobes, both folds trained, with
    out-of-fold predictions. Tests may add outputs but must leave these as they found them
    (copy the run directory with ``shutil.copytree`` before changing anything in it)."""
    from ctbrainage.core.config import load_profile
    from ctbrainage.core.layout import RunLayout
    from ctbrainage.steps import s01_preprocess, s02_lobes, s03_train

    profile = load_profile("tiny", {"run_dir": str(tmp_path_factory.mktemp("tiny_run"))})
    s01_preprocess.run(profile, progress=False)
    s02_lobes.run(profile, progress=False)
    for fold in range(profile.train.folds):
        s03_train.run(profile, fold, progress=False)
    assert RunLayout(profile.run_path).predictions.exists()  # the last fold finalised step 03
    return profile


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run, tmp_path_factory):
    """The tiny run exported as a bundle (tests that change it work on a copy)."""
    from ctbrainage.apps.bundle import export_bundle

    return export_bundle(tiny_run, tmp_path_factory.mktemp("bundle") / "tiny", progress=False)


# fixtures that build a run (or a cohort to run on): their tests form the integration tier
RUN_FIXTURES = {"tiny_run", "tiny_bundle", "cohort_dir", "null_cohort_dir"}


def pytest_collection_modifyitems(items):
    for item in items:
        if RUN_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
