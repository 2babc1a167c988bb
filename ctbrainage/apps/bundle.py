"""A trained run as a portable bundle, for brain age of new scans (:mod:`ctbrainage.apps.predict`).

``python -m ctbrainage.apps.bundle export RUN_DIR OUT_DIR`` writes a self-contained folder
(:class:`ctbrainage.core.layout.BundleLayout`): every fold model's weights, the run's profile, the
code versions of preprocessing, lobes, models and perturbation, the brain-age bias line fitted
on the run's out-of-fold predictions, those predictions (no subject ids; ages to 0.1 month) for
the prediction interval, each age group's lobe levels (``group_level`` fill), a cohort summary,
the metrics with bootstrap CIs, a model card and the SHA-256 of every file.
:func:`load_bundle` refuses a bundle whose code versions differ from this installation's or
whose files do not match their checksums. ``python -m ctbrainage.apps.bundle check B`` verifies one.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from ctbrainage.core.atomic import atomic_path, strict_json
from ctbrainage.core.cohort import age_group
from ctbrainage.core.config import (
    Profile,
    ProfileError,
    load_profile,
    profile_from_dict,
    profile_yaml,
)
from ctbrainage.core.freshness import fingerprint
from ctbrainage.core.labels import LOBE_IDS, LOBES
from ctbrainage.core.layout import BundleLayout, RunLayout
from ctbrainage.stats import evaluate

BUNDLE_FORMAT = 1
LEVELS = (0.8, 0.9, 0.95)  # interval levels whose coverage on the run the model card reports
DEFAULT_LEVEL = 0.9
AGE_DECIMALS = 1  # training ages and predictions are stored to 0.1 month (3 days)


class BundleError(ValueError):
    """A bundle that cannot be made or used; the message says why and what to do."""


def code_versions() -> dict[str, str]:
    """The versions of the code that decide a prediction: a bundle is used only with the same."""
    from ctbrainage.interpret.perturb import PERTURB_VERSION
    from ctbrainage.steps import s01_preprocess, s02_lobes, s03_train

    return {
        "bundle_format": str(BUNDLE_FORMAT),
        "preprocess": s01_preprocess.SUBJECT_VERSION,
        "lobe_labels": s02_lobes.STEP.version,
        "model": s03_train.STEP.version,
        "perturb": f"perturb{PERTURB_VERSION}",
    }


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its record (``bundle.json``), profile and tables."""

    root: Path
    info: dict[str, Any]
    profile: Profile
    out_of_fold: pd.DataFrame  # fold, age_months, predicted_months, corrected_months
    group_levels: pd.DataFrame  # age_group, lobe, level, n

    @property
    def folds(self) -> int:
        return self.profile.train.folds

    @property
    def bias(self) -> tuple[float, float]:
        """The bias line (slope, intercept) fitted on every out-of-fold prediction."""
        return self.info["bias"]["slope"], self.info["bias"]["intercept"]

    @property
    def training_ages(self) -> tuple[float, float]:
        return tuple(self.info["cohort"]["age_months_range"])

    @property
    def scaler(self):
        """Network output ↔ months, as in training (the profile's age range)."""
        from ctbrainage.learn.datasets import AgeScaler

        return AgeScaler(*self.profile.age_range_months)

    def radius(self, level: float) -> float:
        """The split-conformal half-width (months) around a bias-corrected brain age; a
        :class:`BundleError` when the run has too few subjects for ``level``."""
        radius = evaluate.conformal_radius(_residuals(self.out_of_fold), level)
        if radius == float("inf"):
            n = len(self.out_of_fold)
            raise BundleError(
                f"a {level:.0%} interval needs more than the run's {n} out-of-fold predictions; "
                f"the highest level they allow is {n / (n + 1):.0%}"
            )
        return radius

    def coverage(self, level: float) -> dict[str, float]:
        """The interval's coverage measured on the training run (each fold calibrated on the
        others)."""
        return evaluate.cross_fold_coverage(self.out_of_fold, level, "corrected_months")

    def levels_for(self, age_months: float) -> dict[int, float]:
        """Lobe id → the ``group_level`` fill's target for a child of this age (its age group's
        mean in the training cohort); empty outside the age groups."""
        group = age_group(pd.Series([age_months]), self.profile.age_group_edges).iloc[0]
        rows = self.group_levels[self.group_levels["age_group"] == group]
        return {
            LOBE_IDS[lobe]: float(v) for lobe, v in zip(rows["lobe"], rows["level"], strict=True)
        }

    def models(self) -> list:
        """Every fold's network, in eval mode on CPU."""
        import torch

        from ctbrainage.learn.networks import build_model

        networks = []
        for k in range(self.folds):
            path = BundleLayout(self.root).model(k)
            try:
                weights = torch.load(path, map_location="cpu", weights_only=True)
                network = build_model(self.profile.model, self.profile.preprocess.size)
                network.load_state_dict(weights)
            except Exception as err:  # torch raises many types for a damaged file
                raise BundleError(f"bundle {self.root}: cannot load {path.name}: {err}") from None
            networks.append(network.eval())
        return networks


# ---- export -------------------------------------------------------------------------------------
def run_profile(run_dir: str | Path) -> Profile:
    """The profile a run was made with: its ``profile.yaml`` (written by run_all.py when
    overrides were given), else the one recorded in its ``manifest.json``."""
    layout = RunLayout(Path(run_dir).absolute())
    if layout.profile.exists():
        profile = load_profile(layout.profile)
    elif layout.manifest.exists():
        profile = profile_from_dict(json.loads(layout.manifest.read_text())["profile"])
    else:
        raise BundleError(
            f"{run_dir}: not a run directory made by run_all.py (no profile.yaml or manifest.json)"
        )
    return replace(profile, run_dir=str(layout.root))


def export_bundle(profile: Profile, out_dir: str | Path, progress: bool = True) -> Path:
    """Write the bundle of the run ``profile.run_path`` into ``out_dir`` (atomically; an older
    bundle there is replaced, any other non-empty folder is refused)."""
    import torch

    from ctbrainage.steps import s03_train

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not BundleLayout(out).manifest.exists():
        raise BundleError(f"{out} exists and is not a bundle: choose an empty or new folder")
    from ctbrainage.steps import s01_preprocess, s02_lobes

    layout = RunLayout(profile.run_path)
    try:
        predictions = s03_train.predictions(profile)
    except FileNotFoundError as err:
        raise BundleError(f"run {layout.root}: {err}") from None
    stale = [m.STEP.name for m in (s01_preprocess, s02_lobes) if not m.is_fresh(profile)]
    if stale:  # this code would preprocess new scans otherwise than the models' inputs were
        raise BundleError(
            f"run {layout.root}: {', '.join(stale)} is out of date with this installation or its "
            "inputs; run it and retrain first (python run_all.py --to 3)"
        )
    oof, line = _out_of_fold(predictions)
    line["unstable"] = evaluate.unstable_slope(line["slope"])
    if line["unstable"]:
        warnings.warn(f"run {layout.root}: {line['unstable']}", stacklevel=2)
    levels = _group_levels(profile, predictions, progress)
    info = {
        "format": BUNDLE_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": code_versions(),
        "packages": _packages(),
        "run": _run_record(layout),
        "training_data": "user manifest" if profile.data else "embedded synthetic cohort",
        "age_group_edges": list(profile.age_group_edges),
        "bias": line,
        "metrics": _metrics(predictions, profile.seed),
        "by_age_group": _by_age_group(predictions, profile.age_group_edges),
        "intervals": _intervals(oof),
        "cohort": _cohort_summary(layout, predictions),
    }
    portable = replace(profile, run_dir="", data="")  # no path of the training machine
    with atomic_path(out) as tmp:
        bundle = BundleLayout(tmp)
        bundle.model(0).parent.mkdir(parents=True)
        for k in range(profile.train.folds):
            network = s03_train.load_model(profile, k)
            torch.save(network.state_dict(), bundle.model(k))
        bundle.profile.write_text(profile_yaml(portable, "the profile of the run this bundle is"))
        oof.to_csv(bundle.out_of_fold, index=False)
        levels.to_csv(bundle.group_levels, index=False)
        bundle.model_card.write_text(model_card(info, portable))
        info["files"] = {
            p.relative_to(tmp).as_posix(): fingerprint(p)["sha256"]
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        }
        info = json.loads(strict_json(info))  # as it will be read back: no NaN or Infinity
        info["digest"] = _digest(info)  # bundle.json's own checksum
        bundle.manifest.write_text(strict_json(info, indent=1) + "\n")
    return out


def _residuals(out_of_fold: pd.DataFrame) -> pd.Series:
    """Age − bias-corrected brain age: the interval's calibration scores."""
    return out_of_fold["age_months"] - out_of_fold["corrected_months"]


def _intervals(oof: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Half-width and coverage on the run of each of :data:`LEVELS` that the run allows."""
    out = {}
    for level in LEVELS:
        radius = evaluate.conformal_radius(_residuals(oof), level)
        if radius < float("inf"):
            coverage = evaluate.cross_fold_coverage(oof, level, "corrected_months")
            out[str(level)] = {"radius_months": radius, **coverage}
    return out


def _digest(info: dict[str, Any]) -> str:
    """SHA-256 of the record without its digest (canonical JSON)."""
    from ctbrainage.core.freshness import settings_hash

    return settings_hash({k: v for k, v in info.items() if k != "digest"})


def _out_of_fold(predictions: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, float]]:
    """Out-of-fold predictions with the cross-fitted bias correction (step 04's), rounded and
    without ids; and the line fitted on all of them (for new scans)."""
    gaps, _ = evaluate.brain_age_gap(predictions)
    columns = ["fold", "age_months", "predicted_months", "corrected_months"]
    oof = gaps[columns].round({c: AGE_DECIMALS for c in columns[1:]})
    oof = oof.sort_values(["fold", "age_months"], ignore_index=True)
    slope, intercept = evaluate.fit_bias(predictions["age_months"], predictions["predicted_months"])
    return oof, {"slope": slope, "intercept": intercept, "n": len(predictions)}


def _group_levels(profile: Profile, predictions: pd.DataFrame, progress: bool) -> pd.DataFrame:
    """Each age group's mean input per lobe over the run's subjects."""
    from ctbrainage.core.workers import progress_bar
    from ctbrainage.imaging.run_arrays import subject_arrays
    from ctbrainage.interpret.perturb import lobe_means

    layout = RunLayout(profile.run_path)
    rows = []
    for sid in progress_bar(predictions["subject_id"], desc="lobe levels", progress=progress):
        means = lobe_means(*subject_arrays(layout, sid))
        rows += [{"subject_id": sid, "lobe": LOBES[k], "mean": v} for k, v in means.items()]
    table = pd.DataFrame(rows).merge(predictions[["subject_id", "age_months"]])
    table["age_group"] = age_group(table["age_months"], profile.age_group_edges)
    levels = table.groupby(["age_group", "lobe"], observed=True, sort=False)["mean"]
    out = levels.agg(level="mean", n="size").reset_index()
    out["lobe"] = pd.Categorical(out["lobe"], list(LOBES.values()), ordered=True)
    return out.sort_values(["age_group", "lobe"], ignore_index=True).astype({"lobe": str})


def _metrics(predictions: pd.DataFrame, seed: int) -> dict[str, dict[str, float]]:
    table = evaluate.bootstrap_ci(predictions, n_resamples=1000, seed=seed)
    return {m: {k: float(v) for k, v in row.items()} for m, row in table.iterrows()}


def _by_age_group(predictions: pd.DataFrame, edges) -> dict[str, dict[str, float]]:
    table = evaluate.error_by_age_group(predictions, edges)
    return {str(g): {k: float(v) for k, v in row.items()} for g, row in table.iterrows()}


def _cohort_summary(layout: RunLayout, predictions: pd.DataFrame) -> dict[str, Any]:
    cohort = pd.read_csv(layout.cohort, dtype={"subject_id": str, "sex": str, "site": str})
    cohort = cohort[cohort["subject_id"].isin(predictions["subject_id"])].fillna("")
    ages = predictions["age_months"]
    return {
        "subjects": len(predictions),
        # widened to 0.1 month, so that no training age lies outside the stored range
        "age_months_range": [
            math.floor(float(ages.min()) * 10) / 10,
            math.ceil(float(ages.max()) * 10) / 10,
        ],
        "age_months_mean": round(float(ages.mean()), 1),
        "sex": {k or "unknown": int(v) for k, v in cohort["sex"].value_counts().items()},
        "sites": {k or "unknown": int(v) for k, v in cohort["site"].value_counts().items()},
    }


def _packages() -> dict[str, str]:
    from ctbrainage.core.versions import package_versions

    return {k: v for k, v in package_versions().items() if v}


def _run_record(layout: RunLayout) -> dict[str, Any]:
    """What the run's manifest.json says about where it came from (commit, profile name)."""
    if not layout.manifest.exists():
        return {}
    manifest = json.loads(layout.manifest.read_text())
    return {"git": manifest.get("git"), "created": manifest.get("created")}


def _unstable_note(info: dict[str, Any]) -> str:
    unstable = info["bias"].get("unstable")
    return f" **Warning: {unstable}.**" if unstable else ""


def model_card(info: dict[str, Any], profile: Profile) -> str:
    """The bundle's model card (Markdown): data, metrics with CIs, intended use, limits."""
    from ctbrainage.learn.networks import build_model, count_parameters

    m, cohort = info["metrics"], info["cohort"]
    parameters = count_parameters(build_model(profile.model, profile.preprocess.size))
    lo, hi = cohort["age_months_range"]

    def ci(name: str) -> str:
        row = m[name]
        return f"{row['value']:.2f} (95 % CI {row['low']:.2f}–{row['high']:.2f})"

    groups = "\n".join(
        f"| {g} | {int(r['n'])} | {r['mae']:.2f} | {r['mean_error']:+.2f} |"
        for g, r in info["by_age_group"].items()
    )
    intervals = "\n".join(
        f"| {float(level):.0%} | ±{r['radius_months']:.1f} | {r['coverage']:.1%} |"
        for level, r in info["intervals"].items()
    )
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    counts = ", ".join(f"{k} {v}" for k, v in cohort["sex"].items())
    sites = ", ".join(f"{k} {v}" for k, v in cohort["sites"].items())
    return f"""# Model card: ctbrainage brain-age bundle (profile `{profile.name}`)

## Model
- Made {info["created"]}; code versions: {versions}.
- {profile.train.folds} fold models of a 3D {profile.model.arch} (width {profile.model.width}, \
{parameters:,} parameters each) from {profile.train.folds}-fold age-stratified cross-validation, \
used together as an ensemble (mean; their spread is reported).
- Input: head CT, skull-stripped, PCA-oriented, P-tile normalised \
({profile.preprocess.ptile_low}–{profile.preprocess.ptile_high} %), \
{profile.preprocess.spacing_mm} mm isotropic, {profile.preprocess.size}³ voxels; lobes: \
{profile.lobes.method}.

## Training data
- {info["training_data"]}: {cohort["subjects"]} children, {lo}–{hi} months \
(mean {cohort["age_months_mean"]}); sex: {counts}; sites: {sites}.

## Performance (out-of-fold, every subject predicted by a model that never saw it)
- MAE {ci("mae")} months; RMSE {ci("rmse")} months; Pearson r {ci("r")}.

| age group (months) | n | MAE | mean error |
|---|---|---|---|
{groups}

Brain-age bias line (predicted ≈ slope · age + intercept, fitted on all out-of-fold \
predictions): slope {info["bias"]["slope"]:.3f}, intercept {info["bias"]["intercept"]:.2f}; \
new scans get the corrected brain age (predicted − intercept) / slope.{_unstable_note(info)}

Prediction intervals (split-conformal on the out-of-fold residuals of the corrected brain age;
coverage measured on the run, each fold calibrated on the others):

| level | half-width (months) | coverage on the run |
|---|---|---|
{intervals}

## Intended use
Research on brain maturation in children's head CT, on scans like the training scans: brain
age and its gap to chronological age for groups and for a child's report page, with the
uncertainty stated. Not a medical device; not for diagnosis.

## Limits
- Ages outside {lo}–{hi} months are extrapolation: flagged in every prediction.
- Other scanners, protocols, reconstruction kernels or pathology than in training may shift
  predictions; the interval assumes the new child is exchangeable with the training cohort.
- Intervals are calibrated on single fold models' errors; the ensemble's are usually smaller,
  so the stated coverage is conservative.
- A bundle trained on the embedded synthetic cohort says nothing about real children.
"""


def load_bundle(path: str | Path) -> Bundle:
    """A bundle, checked: its format and code versions are this installation's and every file
    matches its checksum; a :class:`BundleError` says what is wrong otherwise."""
    root = Path(path)
    bundle = BundleLayout(root)
    if not root.is_dir():
        raise BundleError(f"no bundle at {root} (not a folder)")
    if not bundle.manifest.exists():
        what = "an empty folder" if not any(root.iterdir()) else "not a bundle (no bundle.json)"
        raise BundleError(
            f"{root} is {what}; make one with: "
            f"python -m ctbrainage.apps.bundle export RUN_DIR {root}"
        )
    try:
        info = json.loads(bundle.manifest.read_text())
        files, recorded = info["files"], info["versions"]
    except (ValueError, KeyError, TypeError) as err:
        raise BundleError(f"corrupt bundle {root}: bundle.json is unreadable ({err})") from None
    if info.get("digest") != _digest(info):
        raise BundleError(
            f"corrupt bundle {root}: bundle.json does not match its checksum (damaged or edited)"
        )
    current = code_versions()
    different = {k: (recorded.get(k), v) for k, v in current.items() if recorded.get(k) != v}
    if different:
        what = "; ".join(f"{k}: bundle {a}, installed {b}" for k, (a, b) in different.items())
        made_with = info.get("packages", {}).get("ctbrainage", "?")
        raise BundleError(
            f"bundle {root} was made by other code versions ({what}): new scans would not be "
            f"processed as its training run was. Re-export it from a run made with this "
            f"installation, or use the ctbrainage it was made with ({made_with})."
        )
    for name, sha in files.items():
        file = root / name
        if not file.is_file():
            raise BundleError(f"corrupt bundle {root}: {name} is missing")
        if fingerprint(file)["sha256"] != sha:
            raise BundleError(
                f"corrupt bundle {root}: {name} does not match its checksum (damaged or edited)"
            )
    try:
        profile = load_profile(bundle.profile)
    except ProfileError as err:
        raise BundleError(f"bundle {root}: its profile cannot be read: {err}") from None
    return Bundle(
        root=root,
        info=info,
        profile=profile,
        out_of_fold=pd.read_csv(bundle.out_of_fold),
        group_levels=pd.read_csv(bundle.group_levels, dtype={"age_group": str}),
    )


def describe(bundle: Bundle) -> str:
    """A few lines about a bundle (``check``, the notebook)."""
    info, cohort = bundle.info, bundle.info["cohort"]
    mae = info["metrics"]["mae"]
    level = info["intervals"].get(str(DEFAULT_LEVEL))
    interval = (
        f"{DEFAULT_LEVEL:.0%} interval ±{level['radius_months']:.1f} months, coverage on the run "
        f"{level['coverage']:.1%}"
        if level
        else f"too few subjects for a {DEFAULT_LEVEL:.0%} interval"
    )
    return (
        f"bundle {bundle.root.name}: {bundle.folds} × {bundle.profile.model.arch}, profile "
        f"{bundle.profile.name}, made {info['created']}\n"
        f"trained on {cohort['subjects']} children ({info['training_data']}), "
        f"{cohort['age_months_range'][0]}–{cohort['age_months_range'][1]} months\n"
        f"out-of-fold MAE {mae['value']:.2f} months (95 % CI {mae['low']:.2f}–{mae['high']:.2f}); "
        f"{interval}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ctbrainage.apps.bundle",
        description="Export a trained run as a portable bundle, or check one.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="RUN_DIR → a bundle in OUT_DIR")
    export.add_argument("run_dir", type=Path)
    export.add_argument("out_dir", type=Path)
    export.add_argument("--no-progress", action="store_true")
    check = commands.add_parser("check", help="verify a bundle and describe it")
    check.add_argument("bundle_dir", type=Path, metavar="BUNDLE")
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            out = export_bundle(run_profile(args.run_dir), args.out_dir, not args.no_progress)
            print(describe(load_bundle(out)))
        else:
            print(describe(load_bundle(args.bundle_dir)))
    except (BundleError, ProfileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
