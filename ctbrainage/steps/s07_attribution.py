"""Step 07: every attribution family on the same out-of-fold models, scored against the truth.

For the subjects of ``predictions.csv`` (every one, or ``attribution.subjects_per_group`` per
fold and age group, age-stratified), each method of ``attribution.methods`` runs with the
subject's out-of-fold model (:mod:`ctbrainage.interpret.attribution`,
:mod:`ctbrainage.interpret.unoise`: one noise
model per fold, trained on that fold's training subjects). Step 05's fills join as methods
``fill_<fill>`` (importance: ΔAE). Writes

- ``attribution.csv``: ``method, subject_id, fold, age_months, lobe, importance`` (voxel maps:
  the lobe's share of the brain's |attribution|; lobe Shapley: |φ| in months; fills: ΔAE), and
  the pair each method's Table-1 test compares (``reference``, ``tested``);
- ``attribution_tests.csv``: per method, the lobe × age-group tests in Table 1's form;
- ``attribution_maps.npz``: per method and age group the mean normalised |map| (top 10 %,
  Gaussian-smoothed) and the group's mean input;
- ``attribution_sanity.csv``: cascading model randomisation and a label-randomised model
  (Adebayo et al. 2018) on ``attribution.sanity_subjects`` of fold 0;
- synthetic runs: ``attribution_scores.csv`` (``method, level, metric, value, ci_low,
  ci_high``): lobe level against the planted importance, voxel level against
  ``truth/<id>_signal.nii.gz``, and the cost of each method.

Folds are resumable units (each has its record); a fold whose subjects fail is excluded from
nothing: a subject that cannot be read is listed in ``exclusions.csv`` and the others go on.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from ctbrainage.core.atomic import atomic_write_npz
from ctbrainage.core.cohort import age_group
from ctbrainage.core.config import Profile
from ctbrainage.core.labels import LOBES
from ctbrainage.core.layout import RunLayout
from ctbrainage.core.workers import progress_bar
from ctbrainage.imaging import run_arrays
from ctbrainage.interpret import attribution, perturb
from ctbrainage.learn.datasets import AgeScaler
from ctbrainage.stats import lobe_tests
from ctbrainage.steps import s03_train, s05_perturbation
from ctbrainage.steps.contract import (
    Step,
    failures,
    kept_subjects,
    read_exclusions,
    up_to_date,
    write_exclusions,
    write_table,
)

STEP = Step(
    "07_attribution",
    settings=(
        "seed",
        "age_range_months",
        "age_group_edges",
        "model",
        "perturb",
        "stats",
        "attribution",
    ),
    version="1",
)
COLUMNS = [
    "method",
    "subject_id",
    "fold",
    "age_months",
    "lobe",
    "importance",
    "reference",
    "tested",
]
SCORE_COLUMNS = ["method", "level", "metric", "value", "ci_low", "ci_high"]
FILL_PREFIX = "fill_"
TOP_SHARE = 0.10  # group maps keep their top 10 % of voxels (Bintsi et al.)
SMOOTH_VOXELS = 1.0  # Gaussian sigma of the group maps
SURVIVES = 0.5  # a map this similar (Spearman) to a randomised model's fails the sanity check


@dataclass(frozen=True)
class Result:
    table: pd.DataFrame  # attribution.csv
    tests: pd.DataFrame  # attribution_tests.csv
    sanity: pd.DataFrame  # attribution_sanity.csv
    scores: pd.DataFrame | None  # attribution_scores.csv (synthetic runs)
    maps: dict[str, np.ndarray]  # "<method>/<group>" and "input/<group>"
    excluded: pd.DataFrame


def methods(profile: Profile) -> list[str]:
    """Every method of the run: the profile's, then step 05's fills."""
    fills = [FILL_PREFIX + f for f in profile.perturb.fills]
    return list(profile.attribution.methods) + fills


def subjects(profile: Profile) -> pd.DataFrame:
    """The subjects attributed: step 05's (less its exclusions), all or
    ``subjects_per_group`` per fold and age group, evenly spread over each cell's ages."""
    layout = RunLayout(profile.run_path)
    table = s05_perturbation.subjects(profile)
    if table.empty:
        return table
    table = table[table["subject_id"].isin(kept_subjects(layout, STEP))]
    per_cell = profile.attribution.subjects_per_group
    if per_cell <= 0:
        return table.reset_index(drop=True)
    table = table.assign(group=age_group(table["age_months"], profile.age_group_edges))
    picked = []
    for _, cell in table.sort_values("age_months", kind="stable").groupby(
        ["fold", "group"], observed=True, sort=True
    ):
        at = np.unique(np.linspace(0, len(cell) - 1, min(per_cell, len(cell))).round().astype(int))
        picked.append(cell.iloc[at])
    chosen = pd.concat(picked).drop(columns="group")
    return chosen.sort_values("subject_id", ignore_index=True)


def _synthetic(profile: Profile) -> bool:
    return not profile.data


def inputs(profile: Profile) -> list[Path]:
    layout = RunLayout(profile.run_path)
    ids = list(subjects(profile)["subject_id"])
    every = list(s05_perturbation.subjects(profile)["subject_id"])  # group means, U-Noise
    files = [layout.predictions, layout.lobe_levels]
    files += [layout.model(k) for k in range(profile.train.folds)]
    files += [s05_perturbation.perturbation_path(profile, f) for f in profile.perturb.fills]
    files += [p for s in every for p in (layout.preprocessed(s), layout.brain(s), layout.lobes(s))]
    if _synthetic(profile):
        files += [layout.synthetic.expected_importance] + [layout.signal(s) for s in ids]
    return files


def outputs(profile: Profile) -> list[Path]:
    layout = RunLayout(profile.run_path)
    files = [
        layout.attribution,
        layout.attribution_tests,
        layout.attribution_maps,
        layout.attribution_sanity,
    ]
    return files + ([layout.attribution_scores] if _synthetic(profile) else [])


def _work_settings(profile: Profile, fills: bool = False, **extra) -> dict:
    """What a fold's (or, with ``fills``, the sanity check's) results depend on: not the tests'
    settings, and a fold's not the fills of step 05."""
    settings = STEP.settings_of(profile, **extra)
    del settings["stats"]
    if not fills:
        del settings["perturb"]
    settings["attribution"] = {k: v for k, v in settings["attribution"].items() if k != "bootstrap"}
    return settings


def _settings(profile: Profile) -> dict:
    return STEP.settings_of(profile, subjects=list(subjects(profile)["subject_id"]))


def is_fresh(profile: Profile) -> bool:
    record = STEP.record(RunLayout(profile.run_path))
    return up_to_date(record, _settings(profile), STEP.version, inputs(profile), outputs(profile))


# ---- inputs of one subject -----------------------------------------------------------------


class _Inputs:
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
        """The mean input of each age group over ``table``'s readable subjects."""
        groups = age_group(table["age_months"], self.edges)
        for group, part in table.groupby(groups, observed=True):
            volumes = []
            for sid in part["subject_id"]:
                try:
                    volumes.append(self.volume(sid))
                except ValueError:
                    continue  # reported when the subject itself is attributed
            if volumes:
                self.group_means[str(group)] = np.mean(volumes, axis=0, dtype=np.float64)

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


def _map_settings(profile: Profile, spacing_mm: float) -> attribution.MapSettings:
    config = profile.attribution
    return attribution.MapSettings(
        ig_steps=config.ig_steps,
        smoothgrad_samples=config.smoothgrad_samples,
        smoothgrad_sd=config.smoothgrad_sd,
        occlusion_voxels=max(1, round(config.occlusion_mm / spacing_mm)),
        occlusion_stride=max(1, round(config.occlusion_stride_mm / spacing_mm)),
        batch_size=config.batch_size,
    )


class PassCounter:
    """Counts the inputs a model sees forward and the gradients it passes backward."""

    def __init__(self, model: torch.nn.Module):
        self.forward = self.backward = 0
        self._hook = model.register_forward_hook(self._seen)

    def _seen(self, _module, args, output):
        self.forward += len(args[0])
        if output.requires_grad:
            output.register_hook(self._back)

    def _back(self, grad):
        self.backward += len(grad)

    def remove(self) -> None:
        self._hook.remove()


# ---- one fold ------------------------------------------------------------------------------


def _subject_rows(method, subject, values, reference, tested) -> list[dict]:
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


def _maps_of(model, method, batch, data: _Inputs, settings, noise_model=None) -> torch.Tensor:
    """One method's voxel maps of the subjects ``batch`` (rows of the subject table)."""
    ids, device = list(batch["subject_id"]), next(model.parameters()).device
    x = torch.from_numpy(np.stack([data.volume(s) for s in ids])[:, None]).to(device)
    brain = torch.from_numpy(np.stack([data.brain(s) for s in ids])[:, None]).to(device)
    if method == "unoise":
        from ctbrainage.interpret import unoise

        return unoise.importance_map(noise_model, x, brain)
    base = torch.from_numpy(
        np.stack([data.baseline(s, a) for s, a in zip(ids, batch["age_months"], strict=True)])
    )[:, None].to(device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        return attribution.voxel_map(model, x, method, settings, base, brain)


def _voxel_rows(method, batch, maps, data: _Inputs, sums, counts, scores) -> list[dict]:
    """Lobe rows of a batch's maps; adds each normalised |map| to its group's sum and, in a
    synthetic run, its voxel scores to ``scores``."""
    from ctbrainage.synth.scoring import voxel_scores

    rows = []
    for i, subject in enumerate(batch.itertuples(index=False)):
        sid = subject.subject_id
        labels, brain = data.labels(sid), data.brain(sid)
        shares = attribution.lobe_shares(
            maps[i : i + 1], torch.from_numpy(labels[None]), torch.from_numpy(brain[None]), LOBES
        )[0]
        sizes = np.array([(labels == k).sum() for k in LOBES]) / brain.sum()
        rows += _subject_rows(method, subject, shares, sizes, shares)
        magnitude = maps[i].abs().double().numpy() * brain
        key = f"{method}/{data.group(subject.age_months)}"
        sums[key] = sums.get(key, 0) + magnitude / max(magnitude.sum(), 1e-30)
        counts[key] = counts.get(key, 0) + 1
        if _synthetic(data.profile):
            signal = np.asarray(nib.load(data.layout.signal(sid)).dataobj, np.float32)
            scores.append(
                {"method": method, "subject_id": sid, **voxel_scores(maps[i], signal, brain)}
            )
    return rows


def _shapley_rows(model, batch, data: _Inputs, scaler: AgeScaler) -> list[dict]:
    rows, device = [], next(model.parameters()).device
    for subject in batch.itertuples(index=False):
        sid = subject.subject_id
        values = attribution.coalition_values(
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
        # Table 1's pair: |e| of the whole input and |e| less the lobe's share of it
        rows += _subject_rows("lobe_shapley", subject, np.abs(phi), [whole] * 4, whole - phi_error)
    return rows


def _fold_part(profile, fold, table, data: _Inputs, device, progress):
    """Every method on one fold's subjects: (lobe rows, voxel score rows, cost rows, group map
    sums, counts, failures)."""
    config = profile.attribution
    scaler = AgeScaler(*profile.age_range_months)
    spacing = profile.preprocess.spacing_mm
    settings = _map_settings(profile, spacing)
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
        noise_model, trained_s = None, 0.0
        if method == "unoise":  # the age model's passes while training are not counted
            noise_model, trained_s = _train_unoise(profile, fold, model, data, progress)
        counter, started = PassCounter(model), time.perf_counter()
        for batch in progress_bar(batches, desc=f"{method} (fold {fold})", progress=progress):
            torch.manual_seed(profile.seed + fold)  # SmoothGrad's noise
            if method == "lobe_shapley":
                rows += _shapley_rows(model, batch, data, scaler)
                continue
            maps = _maps_of(model, method, batch, data, settings, noise_model).cpu()
            rows += _voxel_rows(method, batch, maps, data, sums, counts, scores)
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
    return rows, scores, cost, sums, counts, errors


def _train_unoise(profile, fold, model, data: _Inputs, progress):
    """The fold's noise model, trained on its training subjects (or an age-stratified
    ``unoise.train_subjects`` of them); (model, seconds)."""
    from ctbrainage.interpret import unoise

    started = time.perf_counter()
    config = profile.attribution.unoise
    everyone = s05_perturbation.subjects(profile)
    train = everyone[everyone["fold"] != fold].sort_values("age_months", kind="stable")
    if 0 < config.train_subjects < len(train):
        at = np.linspace(0, len(train) - 1, config.train_subjects).round().astype(int)
        train = train.iloc[np.unique(at)]
    train = train[[_readable(data, s) for s in train["subject_id"]]]
    volumes = torch.from_numpy(np.stack([data.volume(s) for s in train["subject_id"]])[:, None])
    brains = torch.from_numpy(np.stack([data.brain(s) for s in train["subject_id"]])[:, None])
    scaler = AgeScaler(*profile.age_range_months)
    ages = torch.from_numpy(scaler.to_unit(train["age_months"]))
    noise_model = unoise.train_noise_model(
        model,
        volumes,
        brains,
        ages,
        scaler.hi - scaler.lo,
        config,
        seed=profile.seed + fold,
        progress=progress,
        desc=f"U-Noise training (fold {fold})",
    )
    return noise_model, time.perf_counter() - started


def _readable(data: _Inputs, sid: str) -> bool:
    try:
        data.volume(sid), data.brain(sid)
        return True
    except ValueError:
        return False


def _save_part(path: Path, part) -> None:
    rows, scores, cost, sums, counts, _ = part
    arrays = {f"sum:{k}": v.astype(np.float32) for k, v in sums.items()}
    meta = {"rows": rows, "scores": scores, "cost": cost, "counts": counts}
    atomic_write_npz(path, meta=np.array(json.dumps(meta)), **arrays)


def _load_part(path: Path):
    with np.load(path) as stored:
        meta = json.loads(str(stored["meta"]))
        sums = {k.removeprefix("sum:"): stored[k].astype(np.float64) for k in stored if k != "meta"}
    return meta["rows"], meta["scores"], meta["cost"], sums, meta["counts"], {}


# ---- the whole step ------------------------------------------------------------------------


def run(profile: Profile, gpu: int | None = None, progress: bool = True) -> Result:
    """Every method on every selected subject; see the module docstring."""
    layout = RunLayout(profile.run_path)
    s03_train.predictions(profile)  # a clear error when a fold is missing or out of date
    record, settings, files = STEP.record(layout), _settings(profile), inputs(profile)
    if not up_to_date(record, settings, STEP.version, files, outputs(profile)):
        prints = record.fingerprints(files)
        device = torch.device("cpu" if gpu is None else f"cuda:{gpu}")
        table = subjects(profile)
        data = _Inputs(profile, pd.read_csv(layout.lobe_levels, dtype={"subject_id": str}))
        data.fit_group_means(s05_perturbation.subjects(profile))
        rows, scores, cost, sums, counts, errors = [], [], [], {}, {}, {}
        for fold, part in table.groupby("fold", sort=True):
            done = _fold(profile, int(fold), part, data, device, progress)
            rows += done[0]
            scores += done[1]
            cost += done[2]
            for key, value in done[3].items():
                sums[key] = sums.get(key, 0) + value
                counts[key] = counts.get(key, 0) + done[4][key]
            errors.update(done[5])
        kept = table[~table["subject_id"].isin(errors)]
        long = pd.concat([pd.DataFrame(rows, columns=COLUMNS), _fill_rows(profile, kept)])
        long = long.reset_index(drop=True)
        write_table(layout.attribution, long)
        write_table(layout.attribution_tests, method_tests(profile, long))
        _write_maps(layout, sums, counts, data)
        sanity = _sanity(profile, kept, data, device, progress)
        write_table(layout.attribution_sanity, sanity)
        if _synthetic(profile):
            score_table = score_methods(profile, long, pd.DataFrame(scores), pd.DataFrame(cost))
            write_table(layout.attribution_scores, score_table)
        reasons, retry = failures(errors)
        write_exclusions(layout, STEP, reasons)
        record.write(settings, STEP.version, prints, {"retry": retry})
    return load(profile)


def load(profile: Profile) -> Result:
    """The step's tables as written."""
    layout = RunLayout(profile.run_path)
    read = lambda path: pd.read_csv(path, dtype={"subject_id": str})  # noqa: E731
    with np.load(layout.attribution_maps) as stored:
        maps = {k: stored[k] for k in stored}
    excluded = read_exclusions(layout)
    tests = pd.read_csv(layout.attribution_tests)
    tests["marker"] = tests["marker"].fillna("")  # an empty marker reads back as NaN
    return Result(
        read(layout.attribution),
        tests,
        pd.read_csv(layout.attribution_sanity),
        pd.read_csv(layout.attribution_scores) if _synthetic(profile) else None,
        maps,
        excluded[excluded["step"] == STEP.name].reset_index(drop=True),
    )


def _fold(profile, fold, part, data, device, progress):
    """One fold's part, from its record when its inputs and settings are unchanged."""
    layout = RunLayout(profile.run_path)
    record = STEP.record(layout, f"_fold{fold}")
    ids = list(part["subject_id"])
    train = s05_perturbation.subjects(profile)
    train_ids = list(train.loc[train["fold"] != fold, "subject_id"])
    settings = _work_settings(profile, fold=fold, subjects=ids, trained_on=train_ids)
    sources = [layout.model(fold), layout.lobe_levels]
    sources += [p for s in ids + train_ids for p in (layout.preprocessed(s), layout.brain(s))]
    sources += [layout.lobes(s) for s in ids]
    if _synthetic(profile):
        sources += [layout.signal(s) for s in ids]
    target = layout.attribution_part(fold)
    if record.fresh(settings, STEP.version, sources, [target]) is not None:
        return _load_part(target)
    prints = record.fingerprints(sources)
    done = _fold_part(profile, fold, part, data, device, progress)
    _save_part(target, done)
    if not done[5]:
        record.write(settings, STEP.version, prints)
    return done


def _fill_rows(profile: Profile, table: pd.DataFrame) -> pd.DataFrame:
    """Step 05's fills as methods: importance ΔAE; Table 1's pair |e_whole|, |e_masked|."""
    parts = []
    for fill in profile.perturb.fills:
        errors = lobe_tests.subject_lobe_errors(run_arrays.perturbation(profile, fill))
        errors = errors[errors["subject_id"].isin(table["subject_id"])]
        folds = table.set_index("subject_id")["fold"]
        parts.append(
            pd.DataFrame(
                {
                    "method": FILL_PREFIX + fill,
                    "subject_id": errors["subject_id"],
                    "fold": errors["subject_id"].map(folds).astype(int),
                    "age_months": errors["age_months"],
                    "lobe": errors["lobe"],
                    "importance": errors["delta_ae"],
                    "reference": errors["abs_err_whole"],
                    "tested": errors["abs_err_masked"],
                }
            )
        )
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)


def method_tests(profile: Profile, table: pd.DataFrame) -> pd.DataFrame:
    """Every method's lobe × age-group paired tests (``lobe_tests.paired_lobe_table``: ``tested``
    against ``reference``; voxel maps: the lobe's share against its share of the brain's
    voxels; lobe Shapley: |e| less the lobe's Shapley share of it against |e|; fills: ΔAE).
    Subjects whose map has no mass in the brain (importance NaN) are left out."""
    parts = []
    for method, rows in table.groupby("method", sort=False):
        rows = rows.dropna(subset=["reference", "tested"])  # a map with no mass in the brain
        pairs = rows.assign(
            abs_err_whole=rows["reference"],
            abs_err_masked=rows["tested"],
            delta_ae=rows["tested"] - rows["reference"],
        )
        tests = lobe_tests.paired_lobe_table(
            pairs,
            profile.age_group_edges,
            alpha=profile.stats.alpha,
            fdr=profile.stats.fdr,
            seed=profile.seed,
            n_resamples=profile.attribution.bootstrap,
        )
        parts.append(tests.assign(method=method))
    tests = pd.concat(parts, ignore_index=True)
    return tests[["method", *[c for c in tests.columns if c != "method"]]]


def _write_maps(layout: RunLayout, sums, counts, data: _Inputs) -> None:
    """Group maps: mean normalised |map|, its top 10 % kept, Gaussian-smoothed; and the
    groups' mean inputs."""
    from scipy import ndimage

    maps = {f"input/{g}": m.astype(np.float32) for g, m in data.group_means.items()}
    for key, total in sums.items():
        mean = total / counts[key]
        cut = np.quantile(mean[mean > 0], 1 - TOP_SHARE) if (mean > 0).any() else 0.0
        kept = np.where(mean >= cut, mean, 0.0)
        maps[key] = ndimage.gaussian_filter(kept, SMOOTH_VOXELS).astype(np.float32)
    atomic_write_npz(layout.attribution_maps, **maps)


# ---- sanity checks -------------------------------------------------------------------------


def _random_label_model(profile: Profile, progress: bool) -> torch.nn.Module:
    """Fold 0's model trained as step 03 trains it, on ages shuffled between subjects."""
    from ctbrainage.learn import train
    from ctbrainage.learn.datasets import load_volumes
    from ctbrainage.learn.networks import load_weights

    layout = RunLayout(profile.run_path)
    folds = s03_train.make_folds(profile)
    record = STEP.record(layout, "_random_labels")
    settings = s03_train.STEP.settings_of(profile, folds=folds.to_dict("list"))
    sources = [layout.preprocessed(s) for s in folds.loc[folds["fold"] != 0, "subject_id"]]
    if record.fresh(settings, STEP.version, sources, [layout.random_label_model]) is None:
        prints = record.fingerprints(sources)
        rng = np.random.default_rng(profile.seed)
        shuffled = folds.assign(age_months=rng.permutation(folds["age_months"].to_numpy()))
        fitted = train.fit_fold(
            profile,
            shuffled,
            0,
            lambda ids: load_volumes([layout.preprocessed(s) for s in ids]),
            log_dir=layout.logs_dir,
            log_name=layout.random_label_log_name,
            progress=False,  # Lightning's bar would differ between runs of the notebook
        )
        fitted.save_model(layout.random_label_model)
        record.write(settings, STEP.version, prints)
    return load_weights(profile.model, layout.random_label_model, profile.preprocess.size)


def _values(profile, model, method, part, data: _Inputs, device, progress):
    """(voxel maps [n, X, Y, Z] or None, lobe importances [n, lobes]) of ``part``."""
    scaler = AgeScaler(*profile.age_range_months)
    if method == "lobe_shapley":
        rows = _shapley_rows(model, part, data, scaler)
        return None, np.array([r["importance"] for r in rows]).reshape(len(part), -1)
    if method.startswith(FILL_PREFIX):
        fill, out = method.removeprefix(FILL_PREFIX), []
        for subject in part.itertuples(index=False):
            sid = subject.subject_id
            levels = run_arrays.group_levels(data.levels, sid) if fill == "group_level" else {}
            result = perturb.perturb_subject(
                model, data.volume(sid), data.labels(sid), subject_id=sid,
                seed=profile.seed, fill=fill, levels=levels, device=device,
            )  # fmt: skip
            whole, masked = scaler.to_months(result.whole), scaler.to_months(result.masked[:, 0])
            out.append(perturb.delta_ae(subject.age_months, whole, masked))
        return None, np.array(out)
    noise_model = None
    if method == "unoise":
        noise_model = _train_unoise(profile, 0, model, data, progress=False)[0]
    settings = _map_settings(profile, profile.preprocess.spacing_mm)
    maps = _maps_of(model, method, part, data, settings, noise_model).cpu()
    rows = _voxel_rows(method, part, maps, data, {}, {}, [])  # share above the lobe's size:
    beyond_size = [r["importance"] - r["reference"] for r in rows]  # shares track lobe size
    return maps, np.array(beyond_size).reshape(len(part), -1)


def _similarity(reference, other, part, data: _Inputs) -> tuple[float, float]:
    """(mean over subjects of the voxel maps' Spearman ρ of |map| in the brain, Spearman ρ of
    the lobe importances over subjects × lobes; voxel maps: their shares less the lobes' shares
    of the brain). A voxel map is judged by the first, a lobe method by the second."""
    from scipy.stats import spearmanr

    voxel = np.nan
    if reference[0] is not None:
        per_subject = []
        for i, sid in enumerate(part["subject_id"]):
            inside = data.brain(sid) > 0
            a, b = reference[0][i].abs().numpy()[inside], other[0][i].abs().numpy()[inside]
            varies = np.ptp(a) > 0 and np.ptp(b) > 0  # std > 0 can be rounding on a constant
            per_subject.append(spearmanr(a, b).statistic if varies else np.nan)
        voxel = float(np.nanmean(per_subject)) if np.isfinite(per_subject).any() else np.nan
    a, b = reference[1].ravel(), other[1].ravel()
    lobe = float(spearmanr(a, b).statistic) if np.ptp(a) > 0 and np.ptp(b) > 0 else np.nan
    return voxel, lobe


def _sanity(profile, table, data: _Inputs, device, progress) -> pd.DataFrame:
    """Cascading randomisation (top stage first) and the label-randomised model against the
    trained fold-0 model on ``sanity_subjects`` of fold 0 (U-Noise: the fully randomised and
    the label-randomised model only, each with its own noise model)."""
    layout = RunLayout(profile.run_path)
    columns = ["method", "model", "step", "voxel_rho", "lobe_rho", "survives"]
    part = table[table["fold"] == 0].sort_values("age_months", kind="stable")
    n = min(profile.attribution.sanity_subjects, len(part))
    if n == 0:
        return pd.DataFrame(columns=columns)
    part = part.iloc[np.unique(np.linspace(0, len(part) - 1, n).round().astype(int))]
    record = STEP.record(layout, "_sanity")
    random_labels = _random_label_model(profile, progress)
    ids = list(part["subject_id"])
    settings = _work_settings(profile, fills=True, subjects=ids)
    sources = [layout.model(0), layout.random_label_model, layout.lobe_levels]
    sources += [p for s in ids for p in (layout.preprocessed(s), layout.brain(s), layout.lobes(s))]
    done = record.fresh(settings, STEP.version, sources)
    if done is not None:
        return pd.DataFrame(done["rows"], columns=columns)
    prints = record.fingerprints(sources)
    trained = perturb.prepare_model(s03_train.load_model(profile, 0), device)
    stages = list(attribution.randomised_cascade(trained, profile.seed))
    models = stages + [("random_labels", random_labels)]
    everything = methods(profile)
    bar = progress_bar(total=len(everything) * (len(models) + 1), desc="sanity", progress=progress)
    reference = {}
    for method in everything:
        reference[method] = _values(profile, trained, method, part, data, device, progress)
        bar.update()
    rows = []
    for step, (name, model) in enumerate(models, start=1):
        model = perturb.prepare_model(model, device)
        for method in everything:
            bar.update()
            if method == "unoise" and name not in (stages[-1][0], "random_labels"):
                continue
            values = _values(profile, model, method, part, data, device, progress)
            voxel, lobe = _similarity(reference[method], values, part, data)
            rows.append(
                {
                    "method": method,
                    "model": name,
                    "step": step if name != "random_labels" else 0,
                    "voxel_rho": voxel,
                    "lobe_rho": lobe,
                    "survives": bool((lobe if np.isnan(voxel) else voxel) >= SURVIVES),
                }
            )
    bar.close()
    record.write(settings, STEP.version, prints, {"rows": rows})
    return pd.DataFrame(rows, columns=columns)


def sanity_verdict(sanity: pd.DataFrame) -> pd.DataFrame:
    """Per method: whether its maps survive full randomisation or label randomisation (then the
    method fails the check: its maps do not depend on what the model learned)."""
    shuffled = sanity["model"] == "random_labels"
    last = sanity["method"].map(sanity[~shuffled].groupby("method")["step"].max())
    final = sanity[(sanity["step"] == last) | shuffled]
    verdict = final.groupby("method", sort=False)["survives"].any()
    return verdict.map({True: "fails", False: "passes"}).rename("sanity").reset_index()


# ---- scores against the truth --------------------------------------------------------------


def _lobe_metrics(cells: np.ndarray, truth: np.ndarray) -> tuple[float, float, int]:
    """(Spearman ρ over all cells, mean within-group ρ, groups whose top lobe matches) of
    measured against planted importance, both [groups, lobes]."""
    from scipy.stats import spearmanr

    overall = spearmanr(truth.ravel(), cells.ravel()).statistic
    within = [
        spearmanr(t, c).statistic
        for t, c in zip(truth, cells, strict=True)
        if np.ptp(t) > 0 and np.ptp(c) > 0
    ]
    top = int((truth.argmax(1) == cells.argmax(1)).sum())
    return float(overall), float(np.mean(within)) if within else np.nan, top


def _ci(values, confidence: float = 0.95) -> tuple[float, float]:
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return np.nan, np.nan
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def lobe_scores(
    rows: pd.DataFrame,
    expected: pd.DataFrame,
    edges,
    n_resamples: int,
    seed: int,
    level: str = "lobe",
) -> list[dict]:
    """One method's lobe-level scores against the planted importance (one definition), with
    percentile CIs from resampling subjects within their age groups."""
    groups = age_group(rows["age_months"], edges).astype(str)
    wide = rows.assign(group=groups).pivot_table(
        index=["group", "subject_id"], columns="lobe", values="importance"
    )
    truth = expected.pivot(index="group", columns="lobe", values="importance")
    truth = truth.loc[[g for g in truth.index if g in wide.index.get_level_values(0)]]
    wide = wide[list(truth.columns)]
    members = [wide.loc[g].to_numpy() for g in truth.index]
    point = _lobe_metrics(np.array([m.mean(0) for m in members]), truth.to_numpy())
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_resamples):
        cells = [m[rng.integers(0, len(m), len(m))].mean(0) for m in members]
        draws.append(_lobe_metrics(np.array(cells), truth.to_numpy()))
    draws = np.array(draws) if draws else np.full((0, 3), np.nan)
    names = ("spearman_rho", "within_group_rho", "top_lobe_matches")
    return [
        {
            "level": level,
            "metric": name,
            "value": value,
            **dict(
                zip(
                    ("ci_low", "ci_high"),
                    _ci(draws[:, i]) if len(draws) else (np.nan, np.nan),
                    strict=True,
                )
            ),
        }
        for i, (name, value) in enumerate(zip(names, point, strict=True))
    ] + [
        {
            "level": level,
            "metric": "groups",
            "value": len(members),
            "ci_low": np.nan,
            "ci_high": np.nan,
        }
    ]


def score_methods(
    profile: Profile, table: pd.DataFrame, voxel: pd.DataFrame, cost: pd.DataFrame
) -> pd.DataFrame:
    """``attribution_scores.csv``: per method its lobe-level scores (planted Fisher
    importance), voxel-level scores (mean over subjects, bootstrap CI) and cost."""
    from ctbrainage.synth.schedule import IMPORTANCE_DEFINITIONS

    layout = RunLayout(profile.run_path)
    truths = pd.read_csv(layout.synthetic.expected_importance)
    expected = truths[truths["definition"] == IMPORTANCE_DEFINITIONS[0]]
    n_resamples, seed = profile.attribution.bootstrap, profile.seed
    rows = []
    for method, part in table.groupby("method", sort=False):
        for score in lobe_scores(part, expected, profile.age_group_edges, n_resamples, seed):
            rows.append({"method": method, **score})
        if method in attribution.VOXEL_METHODS or method == "unoise":  # per voxel: share ÷ size
            density = part.assign(importance=part["importance"] / part["reference"])
            edges = profile.age_group_edges
            for score in lobe_scores(density, expected, edges, n_resamples, seed, "lobe_per_voxel"):
                rows.append({"method": method, **score})
        mine = voxel[voxel["method"] == method] if len(voxel) else voxel
        for metric in ("auroc", "mass_accuracy") if len(mine) else ():
            values = mine[metric].dropna()
            low, high = lobe_tests.mean_ci(values, seed=seed, n_resamples=n_resamples)
            rows.append(
                {"method": method, "level": "voxel", "metric": metric,
                 "value": float(values.mean()), "ci_low": low, "ci_high": high}
            )  # fmt: skip
        spent = cost[cost["method"] == method] if len(cost) else cost
        if len(spent):
            n = spent["subjects"].sum()
            for metric in ("forward_passes", "backward_passes", "seconds_per_subject"):
                value = float((spent[metric] * spent["subjects"]).sum() / max(n, 1))
                rows.append({"method": method, "level": "cost", "metric": metric, "value": value})
            rows.append(
                {"method": method, "level": "cost", "metric": "training_seconds",
                 "value": float(spent["training_seconds"].sum())}
            )  # fmt: skip
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def summary_table(result: Result, cost: bool = True) -> pd.DataFrame:
    """One row per method, ranked by lobe ρ (synthetic runs; else in order): lobe ρ,
    within-group ρ, top lobe, voxel AUROC, relevance mass (95 % CIs), sanity and, with
    ``cost``, seconds and passes per subject."""
    verdict = sanity_verdict(result.sanity).set_index("method")["sanity"]
    scores = result.scores if result.scores is not None else pd.DataFrame(columns=SCORE_COLUMNS)
    cell = scores.assign(
        metric=np.where(
            scores["level"] == "lobe_per_voxel", scores["metric"] + "/voxel", scores["metric"]
        )
    ).set_index(["method", "metric"])

    def with_ci(method, metric):
        if (method, metric) not in cell.index:
            return "–"
        row = cell.loc[(method, metric)]
        ci = "" if pd.isna(row["ci_low"]) else f" [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
        return f"{row['value']:.2f}{ci}"

    def value(method, metric, fmt="{:.2f}"):
        found = (method, metric) in cell.index
        return fmt.format(cell.loc[(method, metric), "value"]) if found else "–"

    def fraction(method, metric):
        found = (method, metric) in cell.index
        return (
            f"{value(method, metric, '{:.0f}')}/{value(method, 'groups', '{:.0f}')}"
            if found
            else "–"
        )

    rows = []
    for method in result.table["method"].unique():
        rows.append(
            {
                "method": method,
                "lobe ρ": with_ci(method, "spearman_rho"),
                "within-group ρ": with_ci(method, "within_group_rho"),
                "top lobe": fraction(method, "top_lobe_matches"),
                "per voxel: ρ": with_ci(method, "spearman_rho/voxel"),
                "per voxel: top lobe": fraction(method, "top_lobe_matches/voxel"),
                "voxel AUROC": with_ci(method, "auroc"),
                "relevance mass": with_ci(method, "mass_accuracy"),
                "sanity": verdict.get(method, "–"),
                "s / subject": value(method, "seconds_per_subject", "{:.3f}"),
                "passes / subject": f"{value(method, 'forward_passes', '{:.0f}')} + "
                f"{value(method, 'backward_passes', '{:.0f}')}",
                "_rank": cell["value"].get((method, "spearman_rho"), np.nan),
            }
        )
    table = pd.DataFrame(rows).sort_values("_rank", ascending=False, na_position="last")
    table = table.drop(columns="_rank").set_index("method")
    return table if cost else table.drop(columns=["s / subject", "passes / subject"])
