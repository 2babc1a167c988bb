"""One training of step 10 (:mod:`ctbrainage.steps.s10_robustness`): a condition (augmentation,
registration), a seed and a test fold — the model trained with early stopping and its
checkpoints at the phases, then per checkpoint its test error and maps, and at the best
checkpoint the lobe ΔAE of Table 1 and the model's own chain-rule s_k.

The arrays every training shares (:class:`Arrays`) are read once: the model inputs, brain masks
and lobes on the subject's own grid or warped onto step 02's atlas with step 02's warp, and the
test children's planted signal maps (synthetic cohorts), warped likewise.
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pandas as pd
import torch

from ctbrainage.core.atomic import atomic_write_npz
from ctbrainage.core.config import Profile
from ctbrainage.core.labels import LOBES
from ctbrainage.core.layout import RunLayout
from ctbrainage.core.workers import map_subjects
from ctbrainage.interpret import attribution, perturb
from ctbrainage.learn import train
from ctbrainage.learn.datasets import AgeScaler, load_volumes
from ctbrainage.steps.contract import write_table
from ctbrainage.steps.s07_fold import map_settings

SEED_STRIDE = 1000  # seed i of a condition trains with the profile's seed + SEED_STRIDE × i
BEST, LAST = "best", "last"
LOBE_NAMES = list(LOBES.values())


@dataclasses.dataclass(frozen=True)
class Unit:
    """One training: condition (augment, register), seed index and test fold."""

    augment: bool
    register: bool
    seed: int
    fold: int

    @property
    def condition(self) -> str:
        return condition_name(self.augment, self.register)

    @property
    def name(self) -> str:
        return f"{self.condition}_seed{self.seed}_fold{self.fold}"


def condition_name(augment: bool, register: bool) -> str:
    """``aug_reg``, ``aug_noreg``, ``noaug_reg`` or ``noaug_noreg``."""
    return f"{'' if augment else 'no'}aug_{'' if register else 'no'}reg"


def phase_name(index: int) -> str:
    return f"phase{index + 1}"


def seed_profile(profile: Profile, unit: Unit) -> Profile:
    """The profile a unit trains with: the profile's model and training, its seed moved by
    ``SEED_STRIDE × seed`` (inner split and initial weights), ``robustness.epochs`` at most, its
    inner validation split and the condition's augmentation."""
    config = profile.robustness
    training = dataclasses.replace(
        profile.train, epochs=config.epochs, augment=unit.augment, val_fraction=config.val_fraction
    )
    return Profile(
        name=profile.name,
        run_dir=profile.run_dir,
        seed=profile.seed + SEED_STRIDE * unit.seed,
        age_range_months=profile.age_range_months,
        preprocess=profile.preprocess,
        model=profile.model,
        train=training,
    )


class Arrays:
    """Every subject's model input, brain mask and lobes, native or on the atlas; the test
    children's signal maps (synthetic cohorts)."""

    def __init__(self, profile: Profile, folds: pd.DataFrame, tested: list[str], progress: bool):
        layout = RunLayout(profile.run_path)
        self.ids = folds["subject_id"].tolist()
        self.row = {sid: i for i, sid in enumerate(self.ids)}
        self.native = {
            "x": load_volumes([layout.preprocessed(s) for s in self.ids]),
            "brain": load_volumes([layout.brain(s) for s in self.ids])[:, 0] >= 0.5,
            "labels": load_volumes([layout.lobes(s) for s in self.ids])[:, 0].astype(np.uint8),
        }
        self.signal = _signals(profile, tested, progress) if not profile.data else None
        self.registered = None
        if True in profile.robustness.register:
            self.registered = self._register(profile, layout)

    def _register(self, profile: Profile, layout: RunLayout) -> dict:
        import SimpleITK as sitk

        from ctbrainage.lobes.segment import build_atlas, to_atlas

        missing = [s for s in self.ids if not layout.atlas_warp(s).exists()]
        if missing:
            raise ValueError(
                f"registration on needs step 02's atlas warp; {missing[0]} has none (step 02 "
                f"with lobes.method: atlas keeps it; run it again: run_all.py --from 2 --to 2)"
            )
        warps = {s: sitk.ReadImage(str(layout.atlas_warp(s))) for s in self.ids}
        pre = profile.preprocess
        _, _, atlas_lobes = build_atlas(pre.spacing_mm, pre.size)
        brain = np.stack(
            [
                to_atlas(b.astype(np.float32), warps[s]) >= 0.5
                for s, b in zip(self.ids, self.native["brain"], strict=True)
            ]
        )
        x = np.stack(
            [to_atlas(v[0], warps[s]) for s, v in zip(self.ids, self.native["x"], strict=True)]
        )
        out = {
            "x": (x * brain)[:, None].astype(np.float32),
            "brain": brain,
            "labels": np.where(brain, atlas_lobes[None], 0).astype(np.uint8),
        }
        if self.signal is not None:
            out["signal"] = {
                s: np.stack([to_atlas(m, warps[s]) for m in maps])
                for s, maps in self.signal.items()
            }
        return out

    def of(self, register: bool) -> dict:
        source = self.registered if register else self.native
        return source | ({} if register else {"signal": self.signal})

    def rows(self, ids) -> list[int]:
        return [self.row[s] for s in ids]


def _signals(profile: Profile, ids: list[str], progress: bool) -> dict[str, np.ndarray]:
    """Each test child's planted signal maps [lobe, X, Y, Z] (:func:`interventions.signal`)."""
    from ctbrainage.synth.schedule import MaturationSchedule

    cohort = RunLayout(profile.run_path).synthetic
    schedule = MaturationSchedule.from_dict(json.loads(cohort.schedule.read_text()))
    pre = profile.preprocess
    items = [
        {
            "subject_id": s,
            "planted": json.loads(cohort.truth(s).read_text()),
            "schedule": schedule,
            "preprocess": (pre.spacing_mm, pre.size, (pre.ptile_low, pre.ptile_high)),
        }
        for s in ids
    ]
    mapped = map_subjects(
        _signal, items, profile.synth.workers, desc="planted signal", progress=progress
    )
    if mapped.errors:
        sid, error = next(iter(mapped.errors.items()))
        raise RuntimeError(f"the planted signal of {sid} failed: {error}") from error
    return {done["subject_id"]: done["maps"] for done in mapped.results}


def _signal(item: dict) -> dict:
    from ctbrainage.synth.head import SubjectSpec
    from ctbrainage.synth.interventions import signal

    planted = item["planted"]
    spec = SubjectSpec.from_truth(planted)
    found = signal(spec, item["schedule"], planted["mode"], planted["cues"], item["preprocess"])
    return {"subject_id": item["subject_id"], "maps": found.maps}


def chance_mae(profile: Profile, folds: pd.DataFrame, fold: int) -> float:
    """The inner validation children's mean distance from the training children's mean age:
    the top of the phases' range, from the unit's own split (never the test fold)."""
    rest = folds[folds["fold"] != fold].reset_index(drop=True)
    held = train.inner_validation(rest, profile.train.val_fraction, profile.seed + fold)
    ages = rest["age_months"].to_numpy(float)
    return float(np.abs(ages[held] - ages[~held].mean()).mean())


@dataclasses.dataclass(frozen=True)
class Point:
    """One checkpoint of a training: its weights, epoch, validation MAE and phase threshold."""

    state: dict
    epoch: int
    val_mae_months: float
    threshold_months: float = np.nan


def train_unit(profile: Profile, unit: Unit, folds: pd.DataFrame, x: np.ndarray, rows, gpu):
    """Fit one unit on the inputs ``x`` (rows of the subjects by id: ``rows(ids)``); returns
    its checkpoints by name (the phases reached, best, last) and the validation curve."""
    layout, config = RunLayout(profile.run_path), profile.robustness
    trained = seed_profile(profile, unit)
    chance = chance_mae(trained, folds, unit.fold)
    thresholds = [share * chance for share in config.phases]
    scaler = AgeScaler(*profile.age_range_months)
    keep = train.Checkpoints(thresholds, scaler.hi - scaler.lo)
    fitted = train.fit_fold(
        trained, folds, unit.fold, lambda ids: x[rows(ids)], log_dir=layout.logs_dir,
        log_name=layout.robustness_log_name(unit.name), gpu=gpu, progress=False,
        patience=config.patience, callbacks=[keep],
    )  # fmt: skip
    curve = keep.curve
    points = {
        phase_name(p): Point(state, epoch, mae, thresholds[p])
        for p, (epoch, mae, state) in sorted(keep.reached.items())
    }
    best = {k: v.clone() for k, v in fitted.trainer.lightning_module.state_dict().items()}
    points[BEST] = Point(best, fitted.best_epoch, curve[fitted.best_epoch]["val_mae_months"])
    points[LAST] = Point(keep.last, len(curve) - 1, curve[-1]["val_mae_months"])
    return fitted.trainer.lightning_module.model, points, pd.DataFrame(curve)


def run_unit(profile: Profile, unit: Unit, folds: pd.DataFrame, arrays: Arrays, gpu) -> None:
    """Train one unit, measure every checkpoint and write its files
    (``RunLayout.robustness_unit``)."""
    layout, config = RunLayout(profile.run_path), profile.robustness
    data = arrays.of(unit.register)
    model, points, curve = train_unit(profile, unit, folds, data["x"], arrays.rows, gpu)
    device = "cpu" if gpu is None else f"cuda:{gpu}"
    scaler = AgeScaler(*profile.age_range_months)
    test = folds[folds["fold"] == unit.fold].reset_index(drop=True)
    rows = arrays.rows(test["subject_id"])
    x = torch.from_numpy(data["x"][rows])
    brain = torch.from_numpy(data["brain"][rows])
    lobes = torch.from_numpy(data["labels"][rows].astype(np.int64))
    settings = map_settings(profile, profile.preprocess.spacing_mm)
    summary, subjects, maps = [], [], {}
    for name, point in points.items():
        model.load_state_dict({k.removeprefix("model."): v for k, v in point.state.items()})
        model.eval().to(device)
        predicted = scaler.to_months(_predict(model, x, device))
        error = float(np.abs(predicted - test["age_months"]).mean())
        summary.append({"checkpoint": name, "epoch": point.epoch, "val_mae_months":
                        point.val_mae_months, "test_mae_months": error,
                        "threshold_months": point.threshold_months})  # fmt: skip
        for method in config.methods:
            torch.manual_seed(profile.seed + SEED_STRIDE * unit.seed + unit.fold)  # SmoothGrad
            z = _zscored(_signed_maps(model, x, method, settings, device), brain)
            maps[f"{name}/{method}"] = z.mean(0).float().numpy()
            tables = {
                "importance": attribution.lobe_shares(z, lobes, brain, list(LOBES)),
                "top_share": attribution.lobe_shares(
                    attribution.top_set(z, brain, config.rank_top).double(), lobes, brain,
                    list(LOBES),
                ),
                "reference": attribution.lobe_shares(brain.double(), lobes, brain, list(LOBES)),
            }  # fmt: skip
            for i, subject in test.iterrows():
                subjects += [
                    {"checkpoint": name, "method": method, "subject_id": subject.subject_id,
                     "age_months": subject.age_months, "predicted_months": predicted[i],
                     "lobe": lobe, **{k: v[i, j] for k, v in tables.items()}}
                    for j, lobe in enumerate(LOBE_NAMES)
                ]  # fmt: skip
    best = points[BEST].state
    model.load_state_dict({k.removeprefix("model."): v for k, v in best.items()})
    model.eval().to(device)
    files = {
        "checkpoints": pd.DataFrame(summary),
        "curve": curve,
        "subjects": pd.DataFrame(subjects),
        "perturbation": _perturbation(profile, model, test, x, lobes, scaler, device),
        "sensitivity": _chain_rule(model, test, x, data.get("signal"), scaler, device),
    }
    for part, table in files.items():
        write_table(layout.robustness_unit(unit.name, part), table)
    mean_brain = data["brain"][rows].mean(0)
    atomic_write_npz(layout.robustness_unit(unit.name, "maps"), mean_brain=mean_brain, **maps)


def _signed_maps(model, x: torch.Tensor, method: str, settings, device) -> torch.Tensor:
    """``method``'s signed maps of the volumes ``x`` [n, 1, X, Y, Z], in batches."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        parts = [
            attribution.voxel_map(model, part.to(device), method, settings).cpu()
            for part in x.split(settings.batch_size)
        ]
    return torch.cat(parts).double()


def _predict(model, x: torch.Tensor, device) -> np.ndarray:
    with torch.no_grad():
        out = [model(part.to(device)).float().cpu()[:, 0] for part in x.split(8)]
    return torch.cat(out).numpy()


def _zscored(maps: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
    """Each map z-scored over its brain voxels, 0 outside (the paper's z-normalisation)."""
    mask = brain.bool()
    out = torch.zeros_like(maps)
    for i, (m, b) in enumerate(zip(maps, mask, strict=True)):
        inside = m[b]
        out[i][b] = (inside - inside.mean()) / inside.std().clamp_min(1e-12)
    return out


def _perturbation(profile, model, test, x, lobes, scaler, device) -> pd.DataFrame:
    """The paper's lobe perturbation of the test children (the profile's fill; ``noise`` or
    ``zero``, which need no group levels), as step 05's rows."""
    fill = profile.perturb.fill if profile.perturb.fill in ("noise", "zero") else "noise"
    parts = []
    for i, subject in test.iterrows():
        found = perturb.perturb_subject(
            model,
            x[i],
            lobes[i],
            subject_id=subject.subject_id,
            seed=profile.seed,
            repeats=profile.perturb.repeats,
            fill=fill,
            device=device,
        )
        parts.append(perturb.subject_rows(found, subject, fill, scaler))
    return pd.concat(parts, ignore_index=True)


def _chain_rule(model, test, x, signal, scaler, device) -> pd.DataFrame:
    """The model's own s_k per test child (months of predicted age per month of lobe k's
    maturation): Σ_v ∂f/∂x_v · ∂x_v/∂age_k, one backward pass (synthetic cohorts)."""
    from ctbrainage.interpret.model_truth import input_gradient

    rows = []
    if signal is None:
        return pd.DataFrame(rows, columns=["subject_id", "age_months", "lobe", "s_chain"])
    for i, subject in test.iterrows():
        gradient = input_gradient(model, x[i, 0].numpy(), scaler)
        for j, lobe in enumerate(LOBE_NAMES):
            value = float(np.sum(gradient * signal[subject.subject_id][j]))
            rows.append(
                {
                    "subject_id": subject.subject_id,
                    "age_months": subject.age_months,
                    "lobe": lobe,
                    "s_chain": value,
                }
            )
    return pd.DataFrame(rows)
