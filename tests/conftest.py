"""Shared fixtures: small synthetic cohorts generated once per test session."""

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
