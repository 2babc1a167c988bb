"""Age-stratified folds."""

import numpy as np
import pytest

from ctbrainage.core.cohort import stratified_folds


def test_folds_are_balanced_in_size_and_age():
    ages = np.random.default_rng(0).uniform(0, 48, 201)  # the paper's cohort size
    folds = stratified_folds(ages, k=5, seed=42)
    counts = np.bincount(folds)
    assert counts.sum() == 201 and counts.max() - counts.min() <= 1
    means = [ages[folds == f].mean() for f in range(5)]
    assert max(means) - min(means) < 2.0  # months
    for lo in (0, 12, 24, 36):  # every paper age group is spread over all folds
        in_group = (ages >= lo) & (ages < lo + 12)
        per_fold = np.bincount(folds[in_group], minlength=5)
        assert per_fold.max() - per_fold.min() <= 2


def test_folds_are_deterministic_for_a_seed():
    ages = np.linspace(0, 47, 60)
    assert np.array_equal(stratified_folds(ages, 5, 1), stratified_folds(ages, 5, 1))
    assert not np.array_equal(stratified_folds(ages, 5, 1), stratified_folds(ages, 5, 2))
    with pytest.raises(ValueError, match="folds"):
        stratified_folds(ages, 1, 0)
