"""Step 08 (on request): two encoders and linear stacking — Jomsky et al. 2025, in CT.

Per fold of step 03's ``folds.csv`` (resumable, one record each):

1. a synthesis U-Net (:mod:`ctbrainage.learn.maturity_net`) is fitted on the fold's *training*
subjects
   to map the CT input to the planted white-matter maturity (synthetic cohorts only: the target
   is their truth) and synthesises every subject's second channel; the test subjects' maps go
   to ``stacking/synthesised/`` with their synthesis MAE and SSIM;
2. three encoders (``stacking.model``, VGG8 by default) are trained like a step-03 fold but with
   Adam, the ``stacking.loss`` and early stopping on the inner validation: **T** on the CT
   input, **A** on the synthesised map, and **T2** on the CT input with another seed (the
   control: stacking T with T2 shows what ensembling alone gains);
3. Grad-CAM of T and A on the test subjects: the overlap of their top ``gradcam_top`` voxel
   sets and each set's share per lobe.

When every fold is done, the encoders' out-of-fold predictions are stacked by linear
regression (:mod:`ctbrainage.stats.evaluate`: T, A, TA, TA + sex, T + T2; cross-fitted over the
folds) → ``stacking.csv``, ``stacking_anova.csv`` and ``stacking/`` (coefficients, MAE per age
group and site, synthesis quality, Grad-CAM overlap, group-mean maps).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ctbrainage.core.atomic import atomic_path, atomic_write_npz
from ctbrainage.core.cohort import age_group
from ctbrainage.core.config import (
    PreprocessConfig,
    Profile,
    TrainConfig,
    encoder_size,
    stacking_size_problem,
)
from ctbrainage.core.labels import LOBES
from ctbrainage.core.layout import RunLayout
from ctbrainage.stats import stacking
from ctbrainage.steps import s03_train
from ctbrainage.steps.contract import Settings, Step, kept_subjects, up_to_date, write_table

STEP = Step(
    "08_stacking",
    settings=(
        "seed",
        "data",
        "age_range_months",
        "age_group_edges",
        "preprocess.size",
        "train.folds",
        "stacking",
    ),
    version="3",  # 3: stacking.seeds, the gain per seed (stacking/seeds.csv)
)
ENCODER_INPUTS = {"T": "ct", "A": "synthesised", "T2": "ct"}
SEED_STRIDE = 10_000  # encoder T@i / A@i trains with the profile's seed + SEED_STRIDE × i
RESULTS = (
    "seeds",
    "predictions",
    "coefficients",
    "by_age_group",
    "by_site",
    "synthesis",
    "gradcam",
    "encoders",
    "maps",
)


COUNT = "count"  # a fold's subjects per age group, beside its map sums


@dataclass(frozen=True)
class Result:
    """Step 08's tables (see the module docstring) and the group-mean maps."""

    table: pd.DataFrame
    anova: pd.DataFrame
    coefficients: pd.DataFrame
    predictions: pd.DataFrame
    by_age_group: pd.DataFrame
    by_site: pd.DataFrame
    synthesis: pd.DataFrame
    gradcam: pd.DataFrame
    encoders: pd.DataFrame
    maps: dict[str, np.ndarray]
    seeds: pd.DataFrame  # the stacking gain per seed of T and A (stacking.seeds)

    def gain_summary(self) -> pd.DataFrame:
        """Each gain (T − TA, T − TT) as a mean over seeds with its 95 % t interval."""
        return stacking.gain_summary(self.seeds)

    def sex_coefficient(self) -> pd.Series:
        """The TAS model's sex term (coef, se, t, p, CI; months for a boy)."""
        rows = self.coefficients
        return rows[(rows["model"] == "TAS") & (rows["term"] == "male")].iloc[0]


def _check(profile: Profile) -> None:
    if profile.data:
        raise ValueError(
            "step 08 trains its synthesis U-Net on the planted white-matter maturity of the "
            "embedded synthetic cohort; a real cohort has no such target (docs/stacking.md)"
        )
    problem = stacking_size_problem(profile)
    if problem:
        raise ValueError(problem)


def encoders(profile: Profile | Settings) -> dict[str, tuple[str, int]]:
    """Every encoder of a fold: name → (its input, its seed offset): T, A, T2 (the control),
    then T@i and A@i for each further seed i of ``stacking.seeds``."""
    cfg = STEP.view(profile).stacking
    found = {n: (source, cfg.control_seed_offset if n == "T2" else 0)
             for n, source in ENCODER_INPUTS.items()}  # fmt: skip
    for i in range(1, cfg.seeds):
        found |= {f"{n}@{i}": (ENCODER_INPUTS[n], SEED_STRIDE * i) for n in ("T", "A")}
    return found


def networks(profile: Profile | Settings) -> list[str]:
    """The networks fitted per fold: the U-Net, then the encoders."""
    return ["unet", *encoders(profile)]


def folds(profile: Profile) -> pd.DataFrame:
    """Step 03's folds over the subjects that no earlier step excluded."""
    kept = set(kept_subjects(RunLayout(profile.run_path), STEP))
    table = s03_train.make_folds(profile)
    return table[table["subject_id"].isin(kept)].reset_index(drop=True)


def inputs(profile: Profile) -> list[Path]:
    layout = RunLayout(profile.run_path)
    truth = layout.synthetic
    paths = [layout.folds, truth.schedule]
    for sid in folds(profile)["subject_id"]:
        paths += [layout.preprocessed(sid), layout.brain(sid), layout.lobes(sid)]
        paths += [truth.truth_wm(sid), truth.truth(sid)]
    return paths


def fold_outputs(profile: Profile, fold: int) -> list[Path]:
    layout = RunLayout(profile.run_path)
    table = folds(profile)
    tested = table.loc[table["fold"] == fold, "subject_id"]
    models = [layout.stacking_model(name, fold) for name in networks(profile)]
    parts = [layout.stacking_fold(fold, part) for part in ("subjects", "encoders", "maps")]
    return models + parts + [layout.synthesised(sid) for sid in tested]


def outputs(profile: Profile) -> list[Path]:
    layout = RunLayout(profile.run_path)
    finals = [layout.stacking_table, layout.stacking_anova]
    return finals + [layout.stacking_result(name) for name in RESULTS]


def _fold_check(profile: Profile, fold: int):
    layout = RunLayout(profile.run_path)
    ids = folds(profile)["subject_id"].tolist()
    settings = STEP.settings_of(profile, subjects=ids, fold=fold)
    return STEP.record(layout, f"_fold{fold}"), settings


def _final_check(profile: Profile):
    layout = RunLayout(profile.run_path)
    parts = [
        layout.stacking_fold(k, p)
        for k in range(profile.train.folds)
        for p in ("subjects", "encoders", "maps")
    ]
    return STEP.record(layout, "_final"), STEP.settings_of(profile), parts


def is_fresh(profile: Profile | Settings, fold: int | None = None) -> bool:
    """True when fold ``fold`` (default: every fold and the stacked tables) is up to date."""
    profile = STEP.view(profile)
    _check(profile)
    files = inputs(profile)
    for k in range(profile.train.folds) if fold is None else [fold]:
        record, settings = _fold_check(profile, k)
        if not up_to_date(record, settings, STEP.version, files, fold_outputs(profile, k)):
            return False
    if fold is not None:
        return True
    record, settings, parts = _final_check(profile)
    return up_to_date(record, settings, STEP.version, parts, outputs(profile))


def encoder_profile(profile: Profile | Settings, seed_offset: int = 0) -> Profile:
    """The profile a step-08 encoder trains with: ``stacking.model`` on the encoder grid, Adam
    at a constant rate, the stacking loss, batch, epochs and inner validation split."""
    cfg = STEP.view(profile)
    stack = cfg.stacking
    train = TrainConfig(
        folds=cfg.train.folds,
        epochs=stack.epochs,
        batch_size=stack.batch_size,
        lr=stack.lr,
        optimizer="adam",
        schedule="constant",
        loss=stack.loss,
        augment=False,
        val_fraction=stack.val_fraction,
    )
    return Profile(
        name=cfg.name,
        run_dir=cfg.run_dir,
        seed=cfg.seed + seed_offset,
        age_range_months=cfg.age_range_months,
        model=stack.model,
        train=train,
        preprocess=PreprocessConfig(size=encoder_size(cfg)),
    )


class _Data:
    """Every subject's arrays on the encoder grid ([n, 1, X, Y, Z]): CT input, brain mask,
    planted maturity (the synthesis target) and lobe labels."""

    def __init__(self, profile: Profile, table: pd.DataFrame, progress: bool):
        import nibabel as nib

        from ctbrainage.core.workers import progress_bar
        from ctbrainage.learn.datasets import load_volumes
        from ctbrainage.learn.maturity_net import nearest_index, to_grid
        from ctbrainage.synth.scoring import planted_maturity

        layout, size = RunLayout(profile.run_path), encoder_size(profile)
        f = profile.preprocess.size / size  # input voxels per encoder voxel along an axis
        ids = table["subject_id"].tolist()
        self.row = {sid: i for i, sid in enumerate(ids)}
        self.ct = to_grid(load_volumes([layout.preprocessed(s) for s in ids]), size)
        self.brain = to_grid(load_volumes([layout.brain(s) for s in ids]), size) >= 0.5
        self.brain = self.brain.astype(np.float32)
        targets = [
            planted_maturity(layout, s)
            for s in progress_bar(ids, desc="planted maturity", progress=progress)
        ]
        self.target = to_grid(np.stack(targets)[:, None], size) * self.brain
        lobes = np.stack([np.asarray(nib.load(layout.lobes(s)).dataobj) for s in ids])
        pick = nearest_index(profile.preprocess.size, size)
        self.lobes = lobes[:, pick][:, :, pick][:, :, :, pick]
        scale = np.diag([f, f, f, 1.0])
        scale[:3, 3] = (f - 1) / 2
        self.affines = {s: nib.load(layout.preprocessed(s)).affine @ scale for s in ids}

    def rows(self, ids) -> list[int]:
        return [self.row[s] for s in ids]


def run(profile: Profile, gpu: int | None = None, progress: bool = True) -> Result:
    """Every fold that is not up to date, then the stacked tables; returns them."""
    from ctbrainage.core.workers import progress_bar

    profile = STEP.view(profile)
    _check(profile)
    table, files, data = folds(profile), inputs(profile), None
    todo = []
    for k in range(profile.train.folds):
        record, settings = _fold_check(profile, k)
        if not up_to_date(record, settings, STEP.version, files, fold_outputs(profile, k)):
            todo.append((k, record, settings))
    # one bar over the networks to fit (U-Net, T, A, T2 per fold); Lightning's own are off
    with progress_bar(
        total=len(networks(profile)) * len(todo),
        desc="step 08",
        progress=progress,
        unit="network",
    ) as bar:
        for k, record, settings in todo:
            prints = record.fingerprints(files)
            data = data or _Data(profile, table, progress)
            _run_fold(profile, k, table, data, gpu, bar)
            record.write(settings, STEP.version, prints)
    record, settings, parts = _final_check(profile)
    if not up_to_date(record, settings, STEP.version, parts, outputs(profile)):
        prints = record.fingerprints(parts)
        _finalise(profile)
        record.write(settings, STEP.version, prints)
    return load(profile)


def _run_fold(profile, fold, table, data: _Data, gpu, bar) -> None:
    import torch

    from ctbrainage.imaging import ctio
    from ctbrainage.interpret import attribution
    from ctbrainage.learn import maturity_net, train

    layout, cfg = RunLayout(profile.run_path), profile.stacking
    device = "cpu" if gpu is None else f"cuda:{gpu}"
    test = (table["fold"] == fold).to_numpy()
    train_rows = data.rows(table.loc[~test, "subject_id"])
    test_ids = table.loc[test, "subject_id"].tolist()
    test_rows = data.rows(test_ids)
    unet = maturity_net.train_unet(
        data.ct[train_rows],
        data.target[train_rows],
        data.brain[train_rows],
        cfg.synthesis,
        seed=profile.seed + fold,
        device=device,
    )
    bar.update()
    with atomic_path(layout.stacking_model("unet", fold)) as tmp:
        torch.save(unet.cpu().state_dict(), tmp)
    maps = maturity_net.synthesise(unet, data.ct, data.brain, device)
    for sid, row in zip(test_ids, test_rows, strict=True):
        ctio.write_nifti(layout.synthesised(sid), maps[row, 0], data.affines[sid])
    sources = {"ct": data.ct, "synthesised": maps}

    subjects = table.loc[test, ["subject_id", "fold", "age_months"]].reset_index(drop=True)
    quality = maturity_net.synthesis_quality(
        maps[test_rows], data.target[test_rows], data.brain[test_rows]
    )
    subjects = subjects.assign(synthesis_mae=quality["mae"], synthesis_ssim=quality["ssim"])
    fitted_models, trained = {}, []
    for name, (source, offset) in encoders(profile).items():
        volumes = sources[source]
        fitted = train.fit_fold(
            encoder_profile(profile, offset),
            table,
            fold,
            lambda ids, volumes=volumes: volumes[data.rows(ids)],
            log_dir=layout.logs_dir,
            log_name=layout.stacking_log_name(name, fold),
            gpu=gpu,
            progress=False,
            patience=cfg.patience,
        )
        bar.update()
        fitted.save_model(layout.stacking_model(name, fold))
        subjects[name] = fitted.predictions["predicted_months"].to_numpy()
        fitted_models[name] = fitted.trainer.lightning_module.model.cpu().eval()
        trained.append(
            {
                "encoder": name,
                "fold": fold,
                "best_epoch": fitted.best_epoch,
                "epochs_run": fitted.trainer.current_epoch,
            }
        )

    cams = {  # in batches of 8 volumes: a whole test fold at 128³ would not fit in memory
        name: torch.cat([
            attribution.voxel_map(fitted_models[name], batch, "gradcam")
            for batch in torch.from_numpy(sources[ENCODER_INPUTS[name]][test_rows]).split(8)
        ])
        for name in ("T", "A")
    }  # fmt: skip
    brain = torch.from_numpy(data.brain[test_rows, 0]).bool()
    tops = {name: attribution.top_set(cam, brain, cfg.gradcam_top) for name, cam in cams.items()}
    subjects["gradcam_jaccard"] = attribution.jaccard(tops["T"], tops["A"])
    # baseline: T's set against A's set of the next test subject (overlap that is not specific)
    subjects["gradcam_jaccard_other"] = attribution.jaccard(tops["T"], tops["A"].roll(1, 0))
    lobes = torch.from_numpy(data.lobes[test_rows])
    for name, top in tops.items():
        shares = attribution.lobe_shares(top.float(), lobes, brain, list(LOBES))
        for column, lobe in enumerate(LOBES.values()):
            subjects[f"gradcam_{name}_{lobe}"] = shares[:, column]
    write_table(layout.stacking_fold(fold, "subjects"), subjects)
    write_table(layout.stacking_fold(fold, "encoders"), pd.DataFrame(trained))
    groups = age_group(subjects["age_months"], profile.age_group_edges).astype(str).to_numpy()
    layers = {
        "ct": data.ct[test_rows, 0],
        "maturity": data.target[test_rows, 0],
        "synthesised": maps[test_rows, 0],
        "gradcam_T": cams["T"].numpy(),
        "gradcam_A": cams["A"].numpy(),
    }
    key = attribution.group_map_key
    sums = {
        key(name, group): layer[groups == group].sum(0)
        for group in np.unique(groups)
        for name, layer in layers.items()
    }
    counts = {key(COUNT, group): np.array((groups == group).sum()) for group in np.unique(groups)}
    atomic_write_npz(layout.stacking_fold(fold, "maps"), **sums, **counts)


def _finalise(profile: Profile) -> None:
    layout = RunLayout(profile.run_path)
    k = range(profile.train.folds)
    subjects = pd.concat(
        [pd.read_csv(layout.stacking_fold(f, "subjects"), dtype={"subject_id": str}) for f in k],
        ignore_index=True,
    ).sort_values("subject_id")
    cohort = pd.read_csv(layout.cohort, dtype={"subject_id": str, "sex": str, "site": str})
    subjects = subjects.merge(cohort[["subject_id", "sex", "site"]], on="subject_id")
    subjects = subjects.reset_index(drop=True)
    design = stacking.stacking_design(subjects)
    stacked = stacking.stack_out_of_fold(design)
    write_table(layout.stacking_table, stacking.stacking_table(design, stacked))
    write_table(layout.stacking_anova, stacking.stacking_anova(design))
    write_table(layout.stacking_result("coefficients"), stacking.stacking_coefficients(design))
    models = list(stacking.STACKED_MODELS)
    predictions = subjects.merge(
        stacked[["subject_id", *models]].rename(columns={m: f"stacked_{m}" for m in models}),
        on="subject_id",
    )
    write_table(layout.stacking_result("predictions"), predictions)
    both = design[["age_months"]].assign(
        **{f"{e} encoder": design[e] for e in stacking.ENCODERS}, **{m: stacked[m] for m in models}
    )
    columns = [c for c in both if c != "age_months"]
    groups = age_group(design["age_months"], profile.age_group_edges)
    for name, by in (("by_age_group", groups), ("by_site", design["site"])):
        mae = stacking.mae_by(both, by, columns).rename_axis(name.removeprefix("by_"))
        write_table(layout.stacking_result(name), mae.reset_index())
    synthesis = subjects.groupby("fold").agg(
        n=("subject_id", "size"), mae=("synthesis_mae", "mean"), ssim=("synthesis_ssim", "mean")
    )
    write_table(layout.stacking_result("synthesis"), synthesis.reset_index())
    write_table(layout.stacking_result("gradcam"), _gradcam_summary(profile, subjects, groups))
    trainings = pd.concat([pd.read_csv(layout.stacking_fold(f, "encoders")) for f in k])
    write_table(layout.stacking_result("encoders"), trainings)
    _write_maps(layout, profile)
    write_table(
        layout.stacking_result("seeds"), stacking.seed_gains(design, profile.stacking.seeds)
    )


def _gradcam_summary(profile: Profile, subjects: pd.DataFrame, groups) -> pd.DataFrame:
    """Per age group and overall: mean Jaccard overlap of T's and A's top sets (with the
    overlap two independent random sets of that share would have) and each set's lobe shares."""
    share = profile.stacking.gradcam_top
    columns = [c for c in subjects if c.startswith("gradcam_")]
    by_group = subjects[columns].groupby(groups.to_numpy(), observed=False).mean()
    overall = subjects[columns].mean().to_frame("all").T
    table = pd.concat([by_group, overall]).rename_axis("age_group").reset_index()
    table.insert(
        1,
        "n",
        [*groups.value_counts().reindex(by_group.index).fillna(0).astype(int), len(subjects)],
    )
    table.insert(4, "jaccard_if_random", share**2 / (2 * share - share**2))
    return table


def _write_maps(layout: RunLayout, profile: Profile) -> None:
    """The folds' map sums → each age group's mean CT input, planted and synthesised maturity
    and Grad-CAM of T and A (``stacking/maps.npz``, keys ``group_map_key(layer, group)``)."""
    from ctbrainage.interpret.attribution import group_map_key, split_group_map_key

    sums: dict[str, np.ndarray] = {}
    for k in range(profile.train.folds):
        with np.load(layout.stacking_fold(k, "maps")) as part:
            for key in part.files:
                sums[key] = sums.get(key, 0) + part[key]
    means = {}
    for key, value in sums.items():
        name, group = split_group_map_key(key)
        if name != COUNT:
            means[key] = (value / sums[group_map_key(COUNT, group)]).astype(np.float32)
    atomic_write_npz(layout.stacking_result("maps"), **means)


def load(profile: Profile | Settings) -> Result:
    """The step's outputs (a clear error when the step has not run)."""
    profile = STEP.view(profile)
    layout = RunLayout(profile.run_path)
    STEP.check_outputs(layout, outputs(profile))

    def read(path):
        return pd.read_csv(path, dtype={"subject_id": str, "site": str})

    with np.load(layout.stacking_result("maps")) as maps:
        arrays = {key: maps[key] for key in maps.files}
    r = layout.stacking_result
    return Result(
        read(layout.stacking_table),
        read(layout.stacking_anova),
        read(r("coefficients")),
        read(r("predictions")),
        read(r("by_age_group")),
        read(r("by_site")),
        read(r("synthesis")),
        read(r("gradcam")),
        read(r("encoders")),
        arrays,
        read(r("seeds")),
    )
