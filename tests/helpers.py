"""Small synthetic inputs shared by several test modules (``import helpers``)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def affine(lin, origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    """A 4x4 affine from a 3x3 linear part and an origin."""
    a = np.eye(4)
    a[:3, :3] = lin
    a[:3, 3] = origin
    return a


def tilted_affine(deg=15.0, dk=1.25) -> np.ndarray:
    """The grid of a gantry-tilted series: slices stacked along a direction tilted by ``deg``."""
    t = math.radians(deg)
    lin = np.array([[-0.5, 0.0, 0.0], [0.0, 0.5, dk * math.sin(t)], [0.0, 0.0, dk * math.cos(t)]])
    return affine(lin)


def random_hu(shape=(20, 16, 6), seed=0) -> np.ndarray:
    """int16 HU values over the whole CT range."""
    return np.random.default_rng(seed).integers(-1024, 3072, size=shape).astype(np.int16)


PLANTED = {  # frontal: none; parietal: grows with age; temporal: strong late; occipital: early
    "frontal": lambda a: 0.0,
    "parietal": lambda a: a / 24,
    "temporal": lambda a: 2.0 if a >= 24 else 0.0,
    "occipital": lambda a: 1.0 if a < 24 else 0.0,
}


def planted_perturbation(ages, effects=PLANTED, repeats=1, noise=0.8, seed=0) -> pd.DataFrame:
    """A perturbation table: masking lobe L adds ``effects[L](age)`` months of error (plus noise)
    to a whole-brain prediction that errs by a few months."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, age in enumerate(ages):
        sign = rng.choice([-1.0, 1.0])
        whole = age + sign * rng.uniform(1.0, 4.0)
        for lobe, effect in effects.items():
            for r in range(repeats):
                masked = whole + sign * (effect(age) + rng.normal(0.0, noise))
                rows.append(
                    {
                        "subject_id": f"s{i:03d}",
                        "fold": i % 5,
                        "age_months": age,
                        "lobe": lobe,
                        "repeat": r,
                        "pred_whole": whole,
                        "pred_masked": masked,
                    }
                )
    table = pd.DataFrame(rows)
    err = (table["pred_masked"] - table["age_months"]).abs()
    table["delta_ae"] = err - (table["pred_whole"] - table["age_months"]).abs()
    return table
