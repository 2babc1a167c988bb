"""Step 01: the cohort and its preprocessing.

Reads the user's manifest (``data``) or generates the embedded synthetic cohort, validates it into
``cohort.csv`` (invalid rows go to ``exclusions.csv`` with their reason), then preprocesses every
valid subject: ``preprocessed/<id>`` (model input, brain masks), ``qc/<id>.png`` and the table
``preprocess.csv`` (brain volume, orientation, P-tile HU, gantry tilt, seconds); for the
synthetic cohort also ``truth/<id>_signal.nii.gz``, the planted signal as d(model input) / d age.
A subject that fails is excluded with its reason; the others go on. Subjects already preprocessed
from the same image with the same settings are not redone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ctbrainage.core import cohort
from ctbrainage.core.config import Profile
from ctbrainage.core.layout import RunLayout
from ctbrainage.core.workers import map_subjects
from ctbrainage.imaging import ctio
from ctbrainage.imaging.cohort_manifest import validate_manifest
from ctbrainage.imaging.preprocess import PREPROCESS_VERSION, input_derivative, preprocess_scan
from ctbrainage.steps.contract import Outcome, Settings, Step, read_exclusions, write_table
from ctbrainage.synth.head import GENERATOR_VERSION

STEP = Step(
    "01_preprocess",
    settings=(
        "data",
        "seed",
        "age_range_months",
        "age_group_edges",
        "synth.n",
        "synth.mode",
        "synth.format",
        "synth.schedule",
        "synth.cues",
        "synth.gantry_tilt_fraction",
        "preprocess",
    ),
    runtime=("synth.workers",),
    # a new generator makes a new synthetic cohort: step 01 must not look up to date before it
    version=f"1/preprocess{PREPROCESS_VERSION}/synth{GENERATOR_VERSION}",
)
SUBJECT_VERSION = f"preprocess{PREPROCESS_VERSION}"  # what one subject's outputs depend on


@dataclass(frozen=True)
class Result:
    cohort: pd.DataFrame  # valid subjects with their age group
    table: pd.DataFrame  # preprocess.csv: one row per preprocessed subject
    excluded: pd.DataFrame  # this step's exclusions (validation and preprocessing)


def manifest_path(cfg: Profile | Settings) -> Path:
    """The input manifest: the user's ``data`` or the synthetic cohort's."""
    if cfg.data:
        return Path(cfg.data)
    return RunLayout(cfg.run_path).synthetic.manifest


@STEP.inputs
def inputs(cfg: Settings) -> list[Path]:
    """The manifest and every image it lists (a DICOM folder counts as its files)."""
    path = manifest_path(cfg)
    if not path.exists():
        return [path]
    images = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    base = path.absolute().parent
    given = images["image"].str.strip() if "image" in images else pd.Series(dtype=str)
    return [path, *(base / p for p in given if p)]


@STEP.outputs
def outputs(cfg: Settings) -> list[Path]:
    """The tables, and every file of each preprocessed subject."""
    layout = RunLayout(cfg.run_path)
    tables = [layout.cohort, layout.preprocess_table, layout.exclusions]
    if not layout.preprocess_table.exists():
        return tables
    ids = pd.read_csv(layout.preprocess_table, dtype={"subject_id": str})["subject_id"]
    synthetic = not cfg.data
    return tables + [p for sid in ids for p in _subject_outputs(layout, sid, synthetic)]


def _subject_outputs(layout: RunLayout, sid: str, synthetic: bool) -> list[Path]:
    made = [layout.preprocessed(sid), layout.brain(sid), layout.brain_native(sid), layout.qc(sid)]
    return made + ([layout.signal(sid)] if synthetic else [])


is_fresh = STEP.is_fresh


def run(profile: Profile, progress: bool = True) -> Result:
    """Generate (synthetic runs), validate and preprocess the cohort; see the module docstring."""
    cfg = STEP.view(profile)
    if not cfg.data:
        generate_synthetic(cfg, progress=progress)

    def compute(cfg: Settings) -> Outcome:
        valid, invalid = validate_manifest(manifest_path(cfg), cfg.age_range_months)
        write_table(RunLayout(cfg.run_path).cohort, valid)
        failures = _preprocess(cfg, valid, progress)
        manifest = valid[[c for c in invalid.columns if c in valid.columns]]  # as in the file
        return Outcome(failures=failures, excluded=invalid, cohort=manifest)

    STEP.run(cfg, compute)
    result = _read(cfg)
    if result.table.empty:
        raise EmptyCohortError(_why_empty(cfg, result.excluded))
    return result


class EmptyCohortError(ValueError):
    """No subject of the cohort is left after validation and preprocessing."""


def _why_empty(cfg: Settings, excluded: pd.DataFrame) -> str:
    layout = RunLayout(cfg.run_path)
    first = excluded.iloc[0] if len(excluded) else None
    example = f" (the first: {first['subject_id']}, {first['reason']})" if first is not None else ""
    return (
        f"no subject of {manifest_path(cfg)} is left to analyse: all {len(excluded)} were "
        f"excluded{example}; every reason is in {layout.exclusions}"
    )


def _read(cfg: Settings) -> Result:
    layout = RunLayout(cfg.run_path)
    valid = pd.read_csv(layout.cohort, dtype={"subject_id": str})
    valid["age_group"] = cohort.age_group(valid["age_months"], cfg.age_group_edges)
    table = pd.read_csv(layout.preprocess_table, dtype={"subject_id": str})
    excluded = read_exclusions(layout)
    return Result(valid, table, excluded[excluded["step"] == STEP.name].reset_index(drop=True))


def generate_synthetic(
    profile: Profile | Settings,
    root: Path | None = None,
    n: int | None = None,
    seed: int | None = None,
    progress: bool = True,
) -> None:
    """The profile's synthetic cohort (its ``synth`` settings) into ``root`` (default: the run's
    ``synthetic/``), with ``n`` subjects and ``seed`` when given (default: the profile's)."""
    from ctbrainage.synth import generate_cohort

    synth = profile.synth
    generate_cohort(
        root or RunLayout(profile.run_path).synthetic.root,
        n=synth.n if n is None else n,
        seed=profile.seed if seed is None else seed,
        schedule=synth.schedule,
        mode=synth.mode,
        fmt=synth.format,
        tilt_fraction=synth.gantry_tilt_fraction,
        workers=synth.workers,
        age_group_edges=profile.age_group_edges,
        progress=progress,
        cues=synth.cues,
    )


def _preprocess(cfg: Settings, valid: pd.DataFrame, progress: bool) -> dict[str, BaseException]:
    """Preprocess every subject of ``valid`` → ``preprocess.csv``; returns the failures."""
    layout = RunLayout(cfg.run_path)
    settings = {"preprocess": STEP.settings_of(cfg)["preprocess"]}
    truth = layout.synthetic
    items = []
    for r in valid.itertuples():
        # the series of a DICOM folder that holds several (ctbrainage.apps.dicom_index writes it)
        series = str(getattr(r, "series", "") or "").strip()
        items.append(
            {
                "subject_id": r.subject_id,
                "image_path": r.image_path,
                "series": series or None,
                "signal_path": None if cfg.data else str(truth.truth_signal(r.subject_id)),
                "root": str(layout.root),
                # only when given, so that the records of subjects without one stay valid
                "settings": {**settings, "series": series} if series else settings,
            }
        )
    mapped = map_subjects(
        _preprocess_subject, items, cfg.synth.workers, desc="preprocess", progress=progress
    )
    results, errors = mapped.results, mapped.errors
    table = pd.DataFrame(results, columns=["subject_id"] if not results else None)
    table = valid[["subject_id", "age_months"]].merge(table, on="subject_id")
    write_table(layout.preprocess_table, table)
    return errors


def _preprocess_subject(item: dict) -> dict:
    import matplotlib.pyplot as plt

    from ctbrainage.views.plots import preprocess_qc_figure

    layout, sid, settings = RunLayout(item["root"]), item["subject_id"], item["settings"]
    signal = item["signal_path"]
    made = _subject_outputs(layout, sid, synthetic=signal is not None)
    sources = [item["image_path"]] + ([signal] if signal else [])
    record = STEP.subject_record(layout, sid)
    done = record.fresh(settings, SUBJECT_VERSION, sources, made)
    if done is not None:
        return done
    prints = record.fingerprints(sources)
    start = time.perf_counter()
    config = settings["preprocess"]
    try:
        scan = ctio.read_ct(item["image_path"], series=item["series"])
        ptile = (config["ptile_low"], config["ptile_high"])
        result = preprocess_scan(scan.image, config["spacing_mm"], config["size"], ptile)
    except ValueError as err:
        raise ValueError(f"{sid}: {err}") from None
    ctio.write_nifti(layout.preprocessed(sid), result.image, result.affine)
    ctio.write_nifti(layout.brain(sid), result.brain, result.affine)
    ctio.write_nifti(layout.brain_native(sid), *ctio.sitk_to_ras(result.work_mask))
    if signal:
        grid = ctio.ras_to_sitk(result.image, result.affine)
        native = ctio.read_map(signal)
        derivative = input_derivative(native, grid, result.brain, result.ptile_hu)
        ctio.write_nifti(layout.signal(sid), derivative, result.affine)
    plt.close(preprocess_qc_figure(scan.image, result, title=sid, out=layout.qc(sid)))
    roll, pitch, yaw = result.orientation.angles_deg()
    summary = {
        "subject_id": sid,
        "brain_volume_ml": round(result.brain_volume_ml, 2),
        "roll_deg": round(roll, 2),
        "pitch_deg": round(pitch, 2),
        "yaw_deg": round(yaw, 2),
        "ptile_low_hu": round(result.ptile_hu[0], 2),
        "ptile_high_hu": round(result.ptile_hu[1], 2),
        "gantry_tilt_deg": round(scan.gantry_tilt_deg, 2),
        "seconds": round(time.perf_counter() - start, 2),
    }
    record.write(settings, SUBJECT_VERSION, prints, summary)
    return summary
