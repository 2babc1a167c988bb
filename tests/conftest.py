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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny profile run through steps 01–03: preprocessed, lobes, both folds trained, with
    out-of-fold predictions. Tests may add outputs but must leave these as they found them."""
    from ctbrainage.config import load_profile
    from ctbrainage.pipeline import lobes_cohort, prepare_cohort, preprocess_cohort
    from ctbrainage.train import collect_predictions, fit_fold

    profile = load_profile("tiny", {"run_dir": str(tmp_path_factory.mktemp("tiny_run"))})
    cohort = prepare_cohort(profile, progress=False)
    preprocess_cohort(profile, cohort, progress=False)
    lobes_cohort(profile, cohort, progress=False)
    for fold in range(profile.train.folds):
        fit_fold(profile, fold, progress=False)
    collect_predictions(profile)
    return profile
