"""One fold of step 07 (:mod:`ctbrainage.steps.s07_attribution`): every attribution method on the
fold's subjects with the fold's out-of-fold model — their lobe rows, voxel scores against the
planted signal, cost and group-map sums — and the part file that lets a killed step resume.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from ctbrainage.core.atomic import atomic_write_npz
from ctbrainage.core.cohort import MIN_GROUP, age_group, thin_group_note
from ctbrainage.core.config import Profile
from ctbrainage.core.labels import LOBES
from ctbrainage.core.layout import RunLayout
from ctbrainage.core.workers import progress_bar
from ctbrainage.imaging import run_arrays
from ctbrainage.interpret import attribution, perturb
from ctbrainage.interpret.methods import METHODS, PassCounter
from ctbrainage.learn.datasets import AgeScaler
from ctbrainage.steps import s03_train
from ctbrainage.synth import scoring


@dataclass
class FoldPart:
    """One fold's results: lobe rows, voxel score rows and cost rows of every method, the sums
    and counts of the normalised maps per group-map key, and the subjects that failed."""

    rows: list[dict]
    scores: list[dict]
    cost: list[dict]
    sums: dict[str, np.ndarray]
    counts: dict[str, int]
    errors: dict[str, BaseException] = field(default_factory=dict)
    training: list[dict] = field(default_factory=list)  # trained methods' curves (U-Noise)


def evenly(table: pd.DataFrame, n: int) -> pd.DataFrame:
    """``n`` rows of ``table`` (every one if it has fewer), evenly spread over its order."""
    at = np.linspace(0, len(table) - 1, min(n, len(table))).round().astype(int)
    return table.iloc[np.unique(at)]


def synthetic(profile: Profile) -> bool:
    return not profile.data


class SubjectInputs:
    """Volumes, brains, labels and baselines of a run's subjects, read once."""

    def __init__(self, profile: Profile, levels: pd.DataFrame):
        self.profile, self.layout, self.levels = profile, RunLayout(profile.run_path), levels
        self.edges = profile.age_group_edges
        self._brains: dict[str, np.ndarray] = {}
        self.group_means: dict[str, np.ndarray] = {}

    def volume(self, sid: str) -> np.ndarray:
        return run_arrays.subject_arrays(self.layout, sid)[0]

    def labels(self, sid: str) -> np.ndarray:
        return run_arrays.subject_arrays(self.layout, sid)[1]

    def brain(self, sid: str) -> np.ndarray:
        if sid not in self._brains:
            path = self.layout.brain(sid)
            try:
                self._brains[sid] = (np.asarray(nib.load(path).dataobj) > 0).astype(np.float32)
            except Exception as err:  # nibabel and gzip raise many types
                raise ValueError(f"{sid}: unreadable brain mask {path.name} ({err})") from None
        return self._brains[sid]

    def fit_group_means(self, table: pd.DataFrame) -> None:
        """The mean input of each age group over ``table``'s readable subjects; a group of
        fewer than ``MIN_GROUP`` children gets the whole cohort's mean input (and says so)."""
        groups = age_group(table["age_months"], self.edges)
        sums, counts = {}, {}
        for group, part in table.groupby(groups, observed=True):
            volumes = []
            for sid in part["subject_id"]:
                try:
                    volumes.append(self.volume(sid))
                except ValueError:
                    continue  # reported when the subject itself is attributed
            if volumes:
                sums[str(group)] = np.sum(volumes, axis=0, dtype=np.float64)
                counts[str(group)] = len(volumes)
        self.group_means = {g: sums[g] / counts[g] for g in sums}
        thin = {g: n for g, n in counts.items() if n < MIN_GROUP}
        if thin:  # a group of one or two: its mean would be (nearly) the input itself
            cohort_mean = sum(sums.values()) / sum(counts.values())
            self.group_means.update(dict.fromkeys(thin, cohort_mean))
            warnings.warn(
                thin_group_note(thin, "their baseline is the mean input of the whole cohort"),
                stacklevel=2,
            )

    def group(self, age: float) -> str:
        return str(age_group(pd.Series([age]), self.edges).iloc[0])

    def baseline(self, sid: str, age: float) -> np.ndarray:
        """Integrated gradients' and occlusion's baseline of one subject."""
        if self.profile.attribution.baseline == "zeros":
            return np.zeros_like(self.volume(sid))
        return self.group_means[self.group(age)].astype(np.float32)

    def shapley_baseline(self, sid: str) -> torch.Tensor:
        fill = self.profile.attribution.shapley_baseline
        levels = run_arrays.group_levels(self.levels, sid) if fill == "group_level" else {}
        return perturb.fill_baseline(
            self.volume(sid),
            self.labels(sid),
            0,
            subject_id=sid,
            seed=self.profile.seed,
            fill=fill,
            levels=levels,
        )


def map_settings(profile: Profile, spacing_mm: float) -> attribution.MapSettings:
    config = profile.attribution
    return attribution.MapSettings(
        ig_steps=config.ig_steps,
        smoothgrad_samples=config.smoothgrad_samples,
        smoothgrad_sd=config.smoothgrad_sd,
        occlusion_voxels=max(1, round(config.occlusion_mm / spacing_mm)),
        occlusion_stride=max(1, round(config.occlusion_stride_mm / spacing_mm)),
        batch_size=config.batch_size,
        gradcam_layer=config.gradcam_layer,
    )


# ---- one fold ------------------------------------------------------------------------------


def subject_rows(method, subject, values, reference, tested) -> list[dict]:
    return [
        {
            "method": method,
            "subject_id": subject.subject_id,
            "fold": int(subject.fold),
            "age_months": float(subject.age_months),
            "lobe": lobe,
            "importance": float(values[i]),
            "reference": float(reference[i]),
            "tested": float(tested[i]),
        }
        for i, lobe in enumerate(LOBES.values())
    ]


def maps_of(model, method, batch, data: SubjectInputs, settings) -> torch.Tensor:
    """One voxel method's maps of the subjects ``batch`` (rows of the subject table); ``model``:
    the age model, or the method's own trained model (U-Noise's noise model)."""
    ids, device = list(batch["subject_id"]), next(model.parameters()).device
    x = torch.from_numpy(np.stack([data.volume(s) for s in ids])[:, None]).to(device)
    brain = torch.from_numpy(np.stack([data.brain(s) for s in ids])[:, None]).to(device)
    base = torch.from_numpy(
        np.stack([data.baseline(s, a) for s, a in zip(ids, batch["age_months"], strict=True)])
    )[:, None].to(device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        return METHODS[method].compute(model, x, settings, base, brain)


def lobe_values(attribution_map, labels, brain) -> tuple[np.ndarray, np.ndarray]:
    """(each lobe's share of one map's |attribution| in the brain, its share of the brain's
    voxels)."""
    shares = attribution.lobe_shares(
        attribution_map[None], torch.from_numpy(labels[None]), torch.from_numpy(brain[None]), LOBES
    )[0]
    return shares, np.array([(labels == k).sum() for k in LOBES]) / brain.sum()


def voxel_rows(method, batch, maps, data: SubjectInputs, sums, counts, scores) -> list[dict]:
    """Lobe rows of a batch's maps; adds each normalised |map| to its group's sum and, in a
    synthetic run, its voxel scores to ``scores``."""
    rows = []
    for i, subject in enumerate(batch.itertuples(index=False)):
        sid = subject.subject_id
        brain = data.brain(sid)
        shares, sizes = lobe_values(maps[i], data.labels(sid), brain)
        rows += subject_rows(method, subject, shares, sizes, shares)
        key = attribution.group_map_key(method, data.group(subject.age_months))
        sums[key] = sums.get(key, 0) + attribution.normalised_magnitude(maps[i], brain)
        counts[key] = counts.get(key, 0) + 1
        if synthetic(data.profile):
            signal = np.asarray(nib.load(data.layout.signal(sid)).dataobj, np.float32)
            voxel = scoring.voxel_scores(maps[i], signal, brain)
            scores.append({"method": method, "subject_id": sid, **voxel})
    return rows


def shapley_rows(model, batch, data: SubjectInputs, scaler: AgeScaler, method: str) -> list[dict]:
    """The lobe method's rows: |φ| in months; Table 1's pair: |e| of the whole input and |e|
    less the lobe's Shapley share of it."""
    rows, device = [], next(model.parameters()).device
    for subject in batch.itertuples(index=False):
        sid = subject.subject_id
        values = METHODS[method].compute(
            model,
            torch.from_numpy(data.volume(sid)[None]).to(device),
            torch.from_numpy(data.labels(sid)).to(device),
            data.shapley_baseline(sid).to(device),
            list(LOBES),
            data.profile.attribution.batch_size,
        )
        months = torch.from_numpy(scaler.to_months(values.numpy()))
        phi = attribution.lobe_shapley(months).numpy()
        abs_error = (months - subject.age_months).abs()
        phi_error = attribution.lobe_shapley(abs_error).numpy()
        whole = float(abs_error[-1])
        rows += subject_rows(method, subject, np.abs(phi), [whole] * 4, whole - phi_error)
    return rows


def fold_part(
    profile, fold, table, data: SubjectInputs, device, progress, trained=None
) -> FoldPart:
    """Every method on one fold's subjects; ``trained``: per trained method (U-Noise) its model
    for this fold and the seconds its training took."""
    config = profile.attribution
    scaler = AgeScaler(*profile.age_range_months)
    spacing = profile.preprocess.spacing_mm
    settings = map_settings(profile, spacing)
    model = perturb.prepare_model(s03_train.load_model(profile, fold), device)
    readable, errors = [], {}
    for row in table.itertuples(index=False):
        try:
            data.volume(row.subject_id), data.brain(row.subject_id), data.labels(row.subject_id)
            readable.append(row.subject_id)
        except ValueError as err:
            errors[row.subject_id] = err
    table = table[table["subject_id"].isin(readable)]
    rows, scores, cost, sums, counts = [], [], [], {}, {}
    batches = [
        table.iloc[i : i + config.batch_size] for i in range(0, len(table), config.batch_size)
    ]
    for method in config.methods:
        spec, runs_on, trained_s = METHODS[method], model, 0.0
        if spec.trained:  # the age model's passes while training are not counted
            runs_on, trained_s = trained[method]
        counter, started = PassCounter(model), time.perf_counter()
        for batch in progress_bar(batches, desc=f"{method} (fold {fold})", progress=progress):
            torch.manual_seed(profile.seed + fold)  # SmoothGrad's noise
            if spec.kind == "lobe":
                rows += shapley_rows(model, batch, data, scaler, method)
                continue
            maps = maps_of(runs_on, method, batch, data, settings).cpu()
            rows += voxel_rows(method, batch, maps, data, sums, counts, scores)
        counter.remove()
        n = max(len(table), 1)
        cost.append(
            {
                "method": method,
                "fold": fold,
                "subjects": len(table),
                "forward_passes": counter.forward / n,
                "backward_passes": counter.backward / n,
                "seconds_per_subject": (time.perf_counter() - started) / n,
                "training_seconds": trained_s,
            }
        )
    return FoldPart(rows, scores, cost, sums, counts, errors)


def write_maps(layout: RunLayout, sums, counts, data: SubjectInputs) -> None:
    """Group maps (:func:`attribution.group_map`) and the groups' mean inputs."""
    key = attribution.group_map_key
    maps = {
        key(attribution.MEAN_INPUT, g): m.astype(np.float32) for g, m in data.group_means.items()
    }
    maps |= {k: attribution.group_map(total, counts[k]) for k, total in sums.items()}
    atomic_write_npz(layout.attribution_maps, **maps)


def save_part(path: Path, part: FoldPart) -> None:
    """The part as one .npz (resumable): its map sums, and its tables as JSON."""
    arrays = {f"sum:{k}": v.astype(np.float32) for k, v in part.sums.items()}
    meta = {
        "rows": part.rows,
        "scores": part.scores,
        "cost": part.cost,
        "counts": part.counts,
        "training": part.training,
    }
    atomic_write_npz(path, meta=np.array(json.dumps(meta)), **arrays)


def load_part(path: Path) -> FoldPart:
    """A part saved by :func:`save_part`."""
    with np.load(path) as stored:
        meta = json.loads(str(stored["meta"]))
        sums = {k.removeprefix("sum:"): stored[k].astype(np.float64) for k in stored if k != "meta"}
    return FoldPart(
        meta["rows"], meta["scores"], meta["cost"], sums, meta["counts"], {}, meta["training"]
    )
