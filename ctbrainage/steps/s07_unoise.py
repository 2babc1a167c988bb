"""U-Noise in step 07 (:mod:`ctbrainage.steps.s07_attribution`): each fold's noise model trained
on the fold's training subjects, less an age-stratified inner validation share that decides
when to stop; the noise settings (r, v_min, v_max) chosen once, on fold 0's inner validation,
and used by every fold. Curves become ``unoise_training.csv`` rows (``role``: ``candidate`` for
the choice on fold 0, ``fold`` for each fold's own training).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from ctbrainage.core.config import Profile
from ctbrainage.core.layout import RunLayout
from ctbrainage.learn.datasets import AgeScaler
from ctbrainage.steps import s03_train, s05_perturbation
from ctbrainage.steps.contract import Step
from ctbrainage.steps.s07_fold import SubjectInputs, evenly

VERSION = "1"  # of the choice's record
DEPENDS_ON = ("seed", "data", "age_range_months", "preprocess", "model", "train")

CURVE_COLUMNS = [
    "role", "fold", "r", "v_min", "v_max", "phase", "epoch", "train_loss", "val_loss",
    "val_mae_months", "clean_mae_months", "mask_mean", "mask_sd", "floor_share", "best",
    "plateaued", "chosen",
]  # fmt: skip


def inner_split(profile: Profile, fold: int, data: SubjectInputs):
    """(train, validation) :class:`unoise.Volumes` of the fold's readable training subjects
    (all, or ``train_subjects`` of them evenly over age); every ``1 / val_fraction``-th by age
    validates."""
    from ctbrainage.interpret import unoise

    config = profile.attribution.unoise
    everyone = s05_perturbation.subjects(profile)
    train = everyone[everyone["fold"] != fold].sort_values("age_months", kind="stable")
    if config.train_subjects > 0:
        train = evenly(train, config.train_subjects)
    train = train[[readable(data, s) for s in train["subject_id"]]]
    n_val = max(1, round(config.val_fraction * len(train)))
    if len(train) - n_val < 1:
        raise ValueError(
            f"fold {fold}: U-Noise needs at least 2 readable training subjects, has {len(train)}"
        )
    val = evenly(train, n_val)
    scaler = AgeScaler(*profile.age_range_months)

    def volumes(table: pd.DataFrame):
        ids = table["subject_id"]
        return unoise.Volumes(
            torch.from_numpy(np.stack([data.volume(s) for s in ids])[:, None]),
            torch.from_numpy(np.stack([data.brain(s) for s in ids])[:, None]),
            torch.from_numpy(scaler.to_unit(table["age_months"])),
        )

    return volumes(train.drop(val.index)), volumes(val)


def readable(data: SubjectInputs, sid: str) -> bool:
    try:
        data.volume(sid), data.brain(sid)
        return True
    except ValueError:
        return False


def _train(profile, fold, model, data, noise, progress, desc):
    from ctbrainage.interpret import unoise

    train, val = inner_split(profile, fold, data)
    scaler = AgeScaler(*profile.age_range_months)
    return unoise.train_noise_model(
        model, train, val, scaler.hi - scaler.lo, profile.attribution.unoise, noise,
        seed=profile.seed + fold, progress=progress, desc=desc,
    )  # fmt: skip


def choose_noise(step: Step, profile: Profile, data: SubjectInputs, device, progress: bool):
    """(the chosen :class:`unoise.NoiseRange`, its curve rows): every candidate of the grid
    trained on fold 0's inner split with fold 0's model, chosen by :func:`unoise.choose`; one
    candidate: itself, untrained. Kept in ``step``'s record while its settings and inputs hold."""
    from ctbrainage.interpret import perturb, unoise

    config = profile.attribution.unoise
    candidates = unoise.grid(config)
    if len(candidates) == 1:
        return candidates[0], []
    layout = RunLayout(profile.run_path)
    record = step.record(layout, "_unoise_choice")
    everyone = s05_perturbation.subjects(profile)
    ids = list(everyone.loc[everyone["fold"] != 0, "subject_id"])
    every = step.settings_of(profile, trained_on=ids)
    settings = {k: every[k] for k in DEPENDS_ON + ("trained_on",)}
    settings["unoise"] = every["attribution"]["unoise"]
    sources = [layout.model(0)] + [
        p for s in ids for p in (layout.preprocessed(s), layout.brain(s))
    ]
    done = record.fresh(settings, VERSION, sources)
    if done is not None:
        return unoise.NoiseRange(**done["chosen"]), done["rows"]
    prints = record.fingerprints(sources)
    model = perturb.prepare_model(s03_train.load_model(profile, 0), device)
    trainings = [
        _train(
            profile, 0, model, data, noise, progress, f"U-Noise candidate {i + 1}/{len(candidates)}"
        )
        for i, noise in enumerate(candidates)
    ]
    chosen = unoise.choose(trainings, config.max_error_increase_months)
    rows = [r for t in trainings for r in curve_rows(t, "candidate", 0, t is chosen)]
    record.write(settings, VERSION, prints, {"chosen": vars(chosen.noise), "rows": rows})
    return chosen.noise, rows


def train_fold(profile: Profile, fold: int, model, data: SubjectInputs, noise, progress: bool):
    """(the fold's noise model, its curve rows, seconds)."""
    started = time.perf_counter()
    training = _train(
        profile, fold, model, data, noise, progress, f"U-Noise training (fold {fold})"
    )
    rows = curve_rows(training, "fold", fold, True)
    return training.model, rows, time.perf_counter() - started


def curve_rows(training, role: str, fold: int, chosen: bool) -> list[dict]:
    """``unoise_training.csv`` rows of one training."""
    noise = training.noise
    return [
        {
            "role": role,
            "fold": fold,
            "r": noise.r,
            "v_min": noise.v_min,
            "v_max": noise.v_max,
            **row,
            "clean_mae_months": training.clean_mae_months,
            "best": row["phase"] == "noise" and row["epoch"] == training.best_epoch,
            "plateaued": training.plateaued,
            "chosen": chosen,
        }  # fmt: skip
        for row in training.curve
    ]


def training_table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)
