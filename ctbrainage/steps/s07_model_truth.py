"""Step 07's interventional model truth (synthetic runs): what each out-of-fold model really
uses, per subject, lobe and cue (:mod:`ctbrainage.interpret.model_truth`).

``attribution.model_truth.subjects`` of the attributed subjects, evenly spread over age, are
each regenerated with one thing changed and run through step 01's preprocessing
(:mod:`ctbrainage.synth.interventions`, in worker processes); their fold's model predicts them.
Each fold is a resumable unit with its record (``model_truth_parts/fold<k>.csv``); the step
writes ``model_truth.csv``: ``subject_id, fold, age_months, cue, kind, value``.
"""

from __future__ import annotations

import functools
import json

import pandas as pd
import torch

from ctbrainage.core.config import Profile
from ctbrainage.core.layout import RunLayout
from ctbrainage.core.workers import map_subjects
from ctbrainage.interpret import model_truth, perturb
from ctbrainage.interpret.methods import METHODS
from ctbrainage.learn.datasets import AgeScaler
from ctbrainage.steps import s03_train
from ctbrainage.steps.contract import Step, write_table
from ctbrainage.steps.s07_fold import evenly, map_settings
from ctbrainage.synth import faithfulness
from ctbrainage.synth.head import SubjectSpec
from ctbrainage.synth.interventions import intervene
from ctbrainage.synth.schedule import IMPORTANCE_DEFINITIONS, MaturationSchedule

COLUMNS = ["subject_id", "fold", "age_months", "cue", "kind", "value"]
VERSION = 2  # 2: the gradient maps' projections
#: the settings of step 07 that a fold's model truth depends on (and the model-truth settings)
DEPENDS_ON = ("seed", "data", "age_range_months", "preprocess", "model", "train")


def chosen(profile: Profile, attributed: pd.DataFrame) -> pd.DataFrame:
    """The subjects measured: ``model_truth.subjects`` of ``attributed``, evenly over age."""
    n = profile.attribution.model_truth.subjects
    if n == 0 or attributed.empty:
        return attributed.iloc[:0]
    ordered = attributed.sort_values(["age_months", "subject_id"], kind="stable")
    return evenly(ordered, n).sort_values("subject_id", ignore_index=True)


def measure(
    step: Step, profile, attributed: pd.DataFrame, device, progress: bool
) -> tuple[pd.DataFrame, dict[str, BaseException]]:
    """``model_truth.csv`` of the chosen subjects (each fold from its record when its inputs
    and settings are unchanged); returns the table and the failures."""
    layout = RunLayout(profile.run_path)
    table = chosen(profile, attributed)
    parts, errors = [], {}
    for fold, part in table.groupby("fold", sort=True):
        rows, failed = _fold(step, profile, int(fold), part, device, progress)
        parts.append(rows)
        errors.update(failed)
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)
    write_table(layout.model_truth, out)
    return out, errors


def _fold(step: Step, profile, fold: int, part: pd.DataFrame, device, progress):
    layout = RunLayout(profile.run_path)
    cohort = layout.synthetic
    ids = list(part["subject_id"])
    record = step.record(layout, f"_model_truth{fold}")
    every = step.settings_of(profile, fold=fold, subjects=ids)
    settings = {k: every[k] for k in DEPENDS_ON + ("fold", "subjects")}
    settings["model_truth"] = every["attribution"]["model_truth"]
    # every gradient map is projected, run or not (a diagnosis; SmoothGrad's settings matter)
    maps = map_settings(profile, profile.preprocess.spacing_mm)
    settings["smoothgrad"] = [maps.smoothgrad_samples, maps.smoothgrad_sd]
    sources = [layout.model(fold), cohort.schedule] + [cohort.truth(s) for s in ids]
    target = layout.model_truth_part(fold)
    if record.fresh(settings, VERSION, sources, [target]) is not None:
        return pd.read_csv(target, dtype={"subject_id": str}), {}
    prints = record.fingerprints(sources)
    config, pre = profile.attribution.model_truth, profile.preprocess
    schedule = MaturationSchedule.from_dict(json.loads(cohort.schedule.read_text()))
    items = [
        {
            "subject_id": sid,
            "planted": json.loads(cohort.truth(sid).read_text()),
            "schedule": schedule,
            "preprocess": (pre.spacing_mm, pre.size, (pre.ptile_low, pre.ptile_high)),
            "delta": config.delta_months,
            "content": config.content_hu,
        }
        for sid in ids
    ]
    mapped = map_subjects(
        _intervene, items, profile.synth.workers, desc=f"model truth (fold {fold})",
        progress=progress,
    )  # fmt: skip
    model = perturb.prepare_model(s03_train.load_model(profile, fold), device)
    scaler = AgeScaler(*profile.age_range_months)
    ages = part.set_index("subject_id")["age_months"]
    computes = {
        m: functools.partial(METHODS[m].compute, model, settings=maps)
        for m in model_truth.PROJECTED
    }
    rows = []
    for done in mapped.results:
        sid = done["subject_id"]
        torch.manual_seed(profile.seed + fold)  # SmoothGrad's noise
        found = model_truth.sensitivities(model, done["found"], scaler, gradient_maps=computes)
        for row in found:
            rows.append({"subject_id": sid, "fold": fold, "age_months": ages[sid], **row})
    out = pd.DataFrame(rows, columns=COLUMNS)
    write_table(target, out)
    if not mapped.errors:
        record.write(settings, VERSION, prints)
    return out, mapped.errors


def _intervene(item: dict) -> dict:
    planted = item["planted"]
    spec = SubjectSpec.from_truth(planted)
    found = intervene(
        spec, item["schedule"], planted["mode"], planted["cues"], item["preprocess"],
        item["delta"], item["content"],
    )  # fmt: skip
    return {"subject_id": item["subject_id"], "found": found}


# ---- what the notebook shows -----------------------------------------------------------------


def load(profile) -> pd.DataFrame:
    """``model_truth.csv`` as written."""
    return pd.read_csv(RunLayout(profile.run_path).model_truth, dtype={"subject_id": str})


def model_vs_ideal(profile) -> pd.DataFrame:
    """The model's s_k per age group beside the ideal observer's shares
    (:func:`faithfulness.model_vs_ideal`)."""
    expected = pd.read_csv(RunLayout(profile.run_path).synthetic.expected_importance)
    fisher = expected[expected["definition"] == IMPORTANCE_DEFINITIONS[0]]
    return faithfulness.model_vs_ideal(load(profile), fisher, profile.age_group_edges)


def two_truths(profile, table: pd.DataFrame) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """The panels of the two truths per age group and lobe (``group, lobe, importance``): the
    ideal observer's share (the data) and the model's s_k (the model); and the rows of step
    07's long ``table`` for the subjects the model truth was measured on."""
    shares = model_vs_ideal(profile)
    lobes = shares[shares["lobe"] != faithfulness.NON_LOBAR]
    truths = {
        "ideal observer (Fisher share)": lobes.assign(importance=lobes["ideal_share"]),
        "the model (|sₖ|)": lobes.assign(importance=lobes["model_s"].abs()),
    }
    return truths, table[table["subject_id"].isin(load(profile)["subject_id"])]


def chain_rule(profile) -> pd.DataFrame:
    """The first-order estimates against the interventions
    (:func:`faithfulness.chain_rule_agreement`)."""
    return faithfulness.chain_rule_agreement(load(profile))


def model_vs_ideal_scores(profile) -> dict:
    """:func:`faithfulness.model_vs_ideal_scores` of :func:`model_vs_ideal`."""
    return faithfulness.model_vs_ideal_scores(model_vs_ideal(profile))
