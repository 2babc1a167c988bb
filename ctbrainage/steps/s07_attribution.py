"""Step 07: every attribution family on the same out-of-fold models, scored against the truth.

For the subjects of ``predictions.csv`` (every one, or ``attribution.subjects_per_group`` per
fold and age group, age-stratified), each method of ``attribution.methods`` runs with the
subject's out-of-fold model (the registry :mod:`ctbrainage.interpret.methods`; U-Noise: one
noise model per fold, trained on that fold's training subjects by
:mod:`ctbrainage.steps.s07_unoise`). Step 05's fills join as methods ``fill_<fill>``
(importance: ΔAE). The checks are those of
:mod:`ctbrainage.interpret.sanity`, the scores those of :mod:`ctbrainage.synth.scoring`, the
summary that of :mod:`ctbrainage.views.attribution_tables`. Writes

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
  ``truth/<id>_signal.nii.gz``, and the cost of each method;
- runs with U-Noise: ``unoise_training.csv``, its loss curves (:mod:`~.s07_unoise`).

Folds are resumable units (each has its record); a fold whose subjects fail is excluded from
nothing: a subject that cannot be read is listed in ``exclusions.csv`` and the others go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ctbrainage.core.cohort import age_group
from ctbrainage.core.config import Profile
from ctbrainage.core.layout import RunLayout
from ctbrainage.imaging import run_arrays
from ctbrainage.interpret import perturb, sanity
from ctbrainage.interpret.methods import METHODS, names
from ctbrainage.interpret.sanity import sanity_verdict
from ctbrainage.learn.datasets import AgeScaler
from ctbrainage.stats import lobe_tests
from ctbrainage.steps import s03_train, s05_perturbation, s07_model_truth, s07_unoise
from ctbrainage.steps.contract import (
    Outcome,
    Settings,
    Step,
    kept_subjects,
    read_exclusions,
    write_table,
)
from ctbrainage.steps.s07_fold import (
    SubjectInputs,
    evenly,
    fold_part,
    load_part,
    lobe_values,
    map_settings,
    maps_of,
    save_part,
    shapley_rows,
    synthetic,
    write_maps,
)
from ctbrainage.synth import faithfulness, scoring
from ctbrainage.synth.schedule import IMPORTANCE_DEFINITIONS
from ctbrainage.views import attribution_tables

STEP = Step(
    "07_attribution",
    settings=(
        "seed",
        "data",
        "age_range_months",
        "age_group_edges",
        "preprocess",
        "model",
        "train",
        "perturb",
        "stats",
        "attribution",
    ),
    version="1",
    requires=(s05_perturbation.STEP,),
    runtime=("synth.workers",),
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
SCORE_COLUMNS = scoring.SCORE_COLUMNS
FILL_PREFIX = "fill_"


@dataclass(frozen=True)
class Result:
    table: pd.DataFrame  # attribution.csv
    tests: pd.DataFrame  # attribution_tests.csv
    sanity: pd.DataFrame  # attribution_sanity.csv
    scores: pd.DataFrame | None  # attribution_scores.csv (synthetic runs)
    maps: dict[str, np.ndarray]  # attribution.group_map_key(method or MEAN_INPUT, group)
    excluded: pd.DataFrame
    unoise: pd.DataFrame | None  # unoise_training.csv (runs with U-Noise)


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
        picked.append(evenly(cell, per_cell))
    chosen = pd.concat(picked).drop(columns="group")
    return chosen.sort_values("subject_id", ignore_index=True)


@STEP.inputs
def inputs(profile: Settings) -> list[Path]:
    layout = RunLayout(profile.run_path)
    ids = list(subjects(profile)["subject_id"])
    every = list(s05_perturbation.subjects(profile)["subject_id"])  # group means, U-Noise
    files = [layout.predictions, layout.lobe_levels]
    files += [layout.model(k) for k in range(profile.train.folds)]
    files += [s05_perturbation.perturbation_path(profile, f) for f in profile.perturb.fills]
    files += [p for s in every for p in (layout.preprocessed(s), layout.brain(s), layout.lobes(s))]
    if synthetic(profile):
        files += [layout.synthetic.expected_importance] + [layout.signal(s) for s in ids]
    if measures_model_truth(profile):
        measured = s07_model_truth.chosen(profile, subjects(profile))["subject_id"]
        files += [layout.synthetic.schedule] + [layout.synthetic.truth(s) for s in measured]
    return files


@STEP.outputs
def outputs(profile: Settings) -> list[Path]:
    layout = RunLayout(profile.run_path)
    files = [
        layout.attribution,
        layout.attribution_tests,
        layout.attribution_maps,
        layout.attribution_sanity,
    ]
    files += [layout.attribution_scores] if synthetic(profile) else []
    files += [layout.unoise_training] if trains_unoise(profile) else []
    return files + ([layout.model_truth] if measures_model_truth(profile) else [])


def trains_unoise(profile: Profile | Settings) -> bool:
    return "unoise" in profile.attribution.methods


def measures_model_truth(profile: Profile | Settings) -> bool:
    """Whether the run measures the interventional model truth (synthetic runs that ask)."""
    return synthetic(profile) and profile.attribution.model_truth.subjects > 0


def _work_settings(profile: Profile, fills: bool = False, **extra) -> dict:
    """What a fold's (or, with ``fills``, the sanity check's) results depend on: not the tests'
    settings, and a fold's not the fills of step 05."""
    settings = STEP.settings_of(profile, **extra)
    del settings["stats"]
    if not fills:
        del settings["perturb"]
    settings["attribution"] = {k: v for k, v in settings["attribution"].items() if k != "bootstrap"}
    return settings


@STEP.recorded
def recorded(profile: Settings) -> dict:
    return {"subjects": list(subjects(profile)["subject_id"])}


is_fresh = STEP.is_fresh


# ---- the whole step ------------------------------------------------------------------------


def run(profile: Profile, gpu: int | None = None, progress: bool = True) -> Result:
    """Every method on every selected subject; see the module docstring."""
    device = torch.device("cpu" if gpu is None else f"cuda:{gpu}")
    STEP.run(profile, lambda cfg: _attribute(cfg, device, progress))
    return load(profile)


def _attribute(profile: Settings, device, progress: bool) -> Outcome:
    layout = RunLayout(profile.run_path)
    table = subjects(profile)
    data = SubjectInputs(profile, pd.read_csv(layout.lobe_levels, dtype={"subject_id": str}))
    data.fit_group_means(s05_perturbation.subjects(profile))
    rows, scores, cost, sums, counts, errors = [], [], [], {}, {}, {}
    noise, curves = None, []
    if trains_unoise(profile):
        noise, curves = s07_unoise.choose_noise(STEP, profile, data, device, progress)
    for fold, part in table.groupby("fold", sort=True):
        done = _fold(profile, int(fold), part, data, device, progress, noise)
        rows, scores, cost = rows + done.rows, scores + done.scores, cost + done.cost
        curves += done.training
        for key, value in done.sums.items():
            sums[key] = sums.get(key, 0) + value
            counts[key] = counts.get(key, 0) + done.counts[key]
        errors.update(done.errors)
    kept = table[~table["subject_id"].isin(errors)]
    long = pd.concat([pd.DataFrame(rows, columns=COLUMNS), _fill_rows(profile, kept)])
    long = long.reset_index(drop=True)
    write_table(layout.attribution, long)
    write_table(layout.attribution_tests, method_tests(profile, long))
    if trains_unoise(profile):
        write_table(layout.unoise_training, s07_unoise.training_table(curves))
    write_maps(layout, sums, counts, data)
    sanity = _sanity(profile, kept, data, device, progress)
    write_table(layout.attribution_sanity, sanity)
    if synthetic(profile):
        truth = None
        if measures_model_truth(profile):
            truth, failed = s07_model_truth.measure(STEP, profile, kept, device, progress)
            errors.update(failed)
        score_table = score_methods(profile, long, pd.DataFrame(scores), pd.DataFrame(cost), truth)
        write_table(layout.attribution_scores, score_table)
    return Outcome(failures=errors)


def load(profile: Profile | Settings) -> Result:
    """The step's tables as written."""
    profile = STEP.view(profile)
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
        pd.read_csv(layout.attribution_scores) if synthetic(profile) else None,
        maps,
        excluded[excluded["step"] == STEP.name].reset_index(drop=True),
        pd.read_csv(layout.unoise_training) if trains_unoise(profile) else None,
    )


def _fold(profile, fold, part, data, device, progress, noise):
    """One fold's part, from its record when its inputs and settings are unchanged (``noise``:
    U-Noise's chosen settings, or None)."""
    layout = RunLayout(profile.run_path)
    record = STEP.record(layout, f"_fold{fold}")
    ids = list(part["subject_id"])
    train = s05_perturbation.subjects(profile)
    train_ids = list(train.loc[train["fold"] != fold, "subject_id"])
    settings = _work_settings(profile, fold=fold, subjects=ids, trained_on=train_ids)
    settings["unoise_chosen"] = vars(noise) if noise else None
    sources = [layout.model(fold), layout.lobe_levels]
    sources += [p for s in ids + train_ids for p in (layout.preprocessed(s), layout.brain(s))]
    sources += [layout.lobes(s) for s in ids]
    if synthetic(profile):
        sources += [layout.signal(s) for s in ids]
    target = layout.attribution_part(fold)
    if record.fresh(settings, STEP.version, sources, [target]) is not None:
        return load_part(target)
    prints = record.fingerprints(sources)
    trained, curves = {}, []
    if noise is not None:
        model = perturb.prepare_model(s03_train.load_model(profile, fold), device)
        noise_model, curves, seconds = s07_unoise.train_fold(
            profile, fold, model, data, noise, progress
        )
        trained["unoise"] = (noise_model, seconds)
    done = fold_part(profile, fold, part, data, device, progress, trained)
    done.training = curves
    save_part(target, done)
    if not done.errors:
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


def _values(profile, model, method, part, data: SubjectInputs, device) -> sanity.Values:
    """(voxel maps [n, X, Y, Z] or None, lobe importances [n, lobes]) of ``part``; voxel maps'
    lobe importances: their shares less the lobes' shares of the brain (shares track size)."""
    scaler = AgeScaler(*profile.age_range_months)
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
    if METHODS[method].kind == "lobe":
        rows = shapley_rows(model, part, data, scaler, method)
        return None, np.array([r["importance"] for r in rows]).reshape(len(part), -1)
    runs_on = model
    if METHODS[method].trained:
        noise = s07_unoise.choose_noise(STEP, profile, data, device, False)[0]
        runs_on = s07_unoise.train_fold(profile, 0, model, data, noise, False)[0]
    settings = map_settings(profile, profile.preprocess.spacing_mm)
    maps = maps_of(runs_on, method, part, data, settings).cpu()
    ids = part["subject_id"]
    lobes = [lobe_values(maps[i], data.labels(s), data.brain(s)) for i, s in enumerate(ids)]
    return maps, np.array([shares - sizes for shares, sizes in lobes])


def _sanity(profile, table, data: SubjectInputs, device, progress) -> pd.DataFrame:
    """:func:`sanity.checks` of every method on ``sanity_subjects`` of fold 0: the trained
    fold-0 model against its cascading randomisation (top stage first) and the label-randomised
    model (U-Noise: the fully randomised and the label-randomised model only, each with its own
    noise model)."""
    layout = RunLayout(profile.run_path)
    part = table[table["fold"] == 0].sort_values("age_months", kind="stable")
    n = min(profile.attribution.sanity_subjects, len(part))
    if n == 0:
        return sanity.table([])
    part = evenly(part, n)
    record = STEP.record(layout, "_sanity")
    random_labels = _random_label_model(profile, progress)
    ids = list(part["subject_id"])
    settings = _work_settings(profile, fills=True, subjects=ids)
    sources = [layout.model(0), layout.random_label_model, layout.lobe_levels]
    sources += [p for s in ids for p in (layout.preprocessed(s), layout.brain(s), layout.lobes(s))]
    done = record.fresh(settings, STEP.version, sources)
    if done is not None:
        return sanity.table(done["rows"])
    prints = record.fingerprints(sources)
    trained = perturb.prepare_model(s03_train.load_model(profile, 0), device)
    cascade = [
        (name, perturb.prepare_model(model, device))
        for name, model in sanity.randomised_cascade(trained, profile.seed)
    ]
    everything = methods(profile)
    rows = sanity.checks(
        trained,
        cascade,
        perturb.prepare_model(random_labels, device),
        everything,
        lambda model, method: _values(profile, model, method, part, data, device),
        [data.brain(s) for s in ids],
        final_only=[m for m in everything if m in METHODS and METHODS[m].trained],
        progress=progress,
    )
    record.write(settings, STEP.version, prints, {"rows": rows})
    return sanity.table(rows)


# ---- scores against the truth, the summary -------------------------------------------------


def score_methods(
    profile: Profile,
    table: pd.DataFrame,
    voxel: pd.DataFrame,
    cost: pd.DataFrame,
    model_truth: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """``attribution_scores.csv``: correctness (:func:`scoring.attribution_scores`, against the
    planted importance of the first definition, Fisher) and, with a ``model_truth``,
    faithfulness (:func:`faithfulness.faithfulness_scores`)."""
    truths = pd.read_csv(RunLayout(profile.run_path).synthetic.expected_importance)
    common = dict(
        edges=profile.age_group_edges,
        n_resamples=profile.attribution.bootstrap,
        seed=profile.seed,
        per_voxel=names("voxel"),
    )
    fisher = truths[truths["definition"] == IMPORTANCE_DEFINITIONS[0]]
    correct = scoring.attribution_scores(
        table, fisher, voxel, cost, mean_ci=lobe_tests.mean_ci, **common
    )
    if model_truth is None or model_truth.empty:
        return correct
    faithful = faithfulness.faithfulness_scores(table, model_truth, **common)
    return pd.concat([correct, faithful], ignore_index=True)


def summary_table(result: Result, cost: bool = True) -> pd.DataFrame:
    """:func:`attribution_tables.summary_table` of the step's result (sanity: its
    :func:`sanity_verdict`; U-Noise "not converged" where a fold's training ran out of epochs)."""
    verdict = attribution_tables.sanity_cells(
        sanity_verdict(result.sanity), attribution_tables.not_converged(result.unoise)
    )
    methods_run = result.table["method"].unique()
    return attribution_tables.summary_table(methods_run, result.scores, verdict, cost)
