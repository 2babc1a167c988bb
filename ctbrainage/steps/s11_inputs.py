"""Step 11's arrays (:mod:`ctbrainage.steps.s11_multitask`), computed once per run of the step:
every subject's input channels (:mod:`ctbrainage.imaging.channels`) on step 11's grid, its brain
mask, step 02's lobes, and on a synthetic cohort the white-matter cores (the segmentation
labels) and, for the children whose maps are scored, each channel's planted d input / d age
per lobe; and the delayed-maturation subjects with their on-time twins, generated and
preprocessed like the cohort but never trained on.
"""

from __future__ import annotations

import dataclasses
import json

import nibabel as nib
import numpy as np
import pandas as pd

from ctbrainage.core.config import Profile
from ctbrainage.core.layout import RunLayout
from ctbrainage.core.workers import map_subjects
from ctbrainage.imaging import channels, ctio
from ctbrainage.imaging.channels import CHANNELS, Contrast
from ctbrainage.imaging.preprocess import map_to_grid
from ctbrainage.learn.maturity_net import nearest_index, to_grid

DELAY_SEED = 7_000_000  # the delayed children's seeds: the profile's seed + this + index
TWIN = "_twin"  # suffix of a delayed child's on-time twin


def grid_size(profile: Profile) -> int:
    """Edge of step 11's cube (``multitask.size``, or the model grid's)."""
    return profile.multitask.size or profile.preprocess.size


def contrast(profile: Profile) -> Contrast:
    config = profile.multitask
    return Contrast(config.myelin_window_hu, config.gm_scale_hu)


@dataclasses.dataclass
class Inputs:
    """Arrays [n, X, Y, Z] in the order of ``ids``; ``slopes``: subject → channel → [lobe, X,
    Y, Z] (the children whose maps are scored against the planted truth)."""

    ids: list[str]
    channels: dict[str, np.ndarray]
    brain: np.ndarray
    lobes: np.ndarray | None = None
    labels: np.ndarray | None = None
    grey_hu: np.ndarray | None = None
    slopes: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)

    def rows(self, ids) -> list[int]:
        where = {sid: i for i, sid in enumerate(self.ids)}
        return [where[s] for s in ids]

    def x(self, condition: str, ids) -> np.ndarray:
        """The condition's channels of the subjects ``ids``, [n, C, X, Y, Z] float32."""
        rows = self.rows(ids)
        picked = [self.channels[c][rows] for c in channels.parse_condition(condition)]
        return np.stack(picked, axis=1)


def _on_grid(made: dict, size: int) -> dict:
    """Every array of one subject averaged (images) or picked (labels) onto step 11's grid (in
    the main process: torch's pooling in a worker forked from a process that has run torch's
    threads can deadlock)."""
    edge = made["brain"].shape[0]
    pick = np.ix_(*[nearest_index(edge, size)] * 3)
    out = {k: made[k] for k in ("subject_id", "grey_hu", "biological_age_months") if k in made}
    out["channels"] = {c: to_grid(v[None, None], size)[0, 0] for c, v in made["channels"].items()}
    out["brain"] = to_grid(made["brain"][None, None].astype(np.float32), size)[0, 0] >= 0.5
    for name in ("lobe_map", "labels"):
        if made.get(name) is not None:
            out[name] = made[name][pick]
    if made.get("slopes") is not None:
        out["slopes"] = {c: to_grid(v[:, None], size)[:, 0] for c, v in made["slopes"].items()}
    return out


def _subject(item: dict) -> dict:
    """One cohort subject's arrays (a worker's job)."""
    layout, sid = RunLayout(item["root"]), item["subject_id"]
    scan = ctio.read_ct(item["image_path"], series=item.get("series"))
    image = nib.load(layout.preprocessed(sid))
    ptile = np.asarray(image.dataobj, np.float32)
    grid = ctio.ras_to_sitk(ptile, image.affine)
    brain = np.asarray(nib.load(layout.brain(sid)).dataobj) > 0
    work = nib.load(layout.brain_native(sid))
    work_brain = ctio.ras_to_sitk(np.asarray(work.dataobj, np.uint8), work.affine)
    hu, grey = channels.scan_on_grid(scan.image, grid, work_brain)
    made = channels.hu_channels(hu, brain, grey, item["contrast"]) | {"ptile": ptile}
    out = {"subject_id": sid, "grey_hu": grey, "brain": brain, "channels": made}
    out["lobe_map"] = np.asarray(nib.load(layout.lobes(sid)).dataobj, np.uint8)
    if item["has_truth"]:
        cores = ctio.read_map(layout.synthetic.truth_wm(sid))
        out["labels"] = map_to_grid(cores, grid, labels=True).astype(np.uint8)
    if item.get("signal") is not None:
        out["slopes"] = _channel_slopes(item, hu, brain)
    return out


def _channel_slopes(item: dict, hu: np.ndarray, brain: np.ndarray) -> dict[str, np.ndarray]:
    """Each channel's d input / d age per lobe: the planted d HU / d age of each lobe's white
    matter (:func:`ctbrainage.synth.interventions.signal`, in P-tile units × the P-tile range)
    times d channel / d HU."""
    from ctbrainage.synth.head import SubjectSpec
    from ctbrainage.synth.interventions import signal

    planted, schedule, preprocess, ptile_hu = item["signal"]
    found = signal(SubjectSpec.from_truth(planted), schedule, planted["mode"], planted["cues"],
                   preprocess)  # fmt: skip
    hu_per_month = found.maps * (ptile_hu[1] - ptile_hu[0])
    slopes = channels.slopes(hu, brain, ptile_hu, item["contrast"])
    return {c: (hu_per_month * slopes[c][None]).astype(np.float32) for c in CHANNELS}


def _collect(mapped, what: str) -> list[dict]:
    if mapped.errors:
        lines = "; ".join(f"{sid}: {error}" for sid, error in mapped.errors.items())
        raise RuntimeError(f"step 11 could not compute the {what} of: {lines}")
    return mapped.results


def _stack(results: list[dict], ids: list[str], size: int) -> Inputs:
    by_id = {r["subject_id"]: _on_grid(r, size) for r in results}
    ordered = [by_id[s] for s in ids]

    def stacked(name):
        return np.stack([r[name] for r in ordered]) if name in ordered[0] else None

    return Inputs(
        ids=ids,
        channels={c: np.stack([r["channels"][c] for r in ordered]) for c in CHANNELS},
        brain=stacked("brain"),
        lobes=stacked("lobe_map"),
        labels=stacked("labels"),
        grey_hu=np.array([r["grey_hu"] for r in ordered]),
        slopes={r["subject_id"]: r["slopes"] for r in ordered if "slopes" in r},
    )


def cohort_inputs(profile: Profile, ids: list[str], scored: list[str], progress: bool) -> Inputs:
    """Every subject's arrays; ``scored``: the children whose planted slopes are computed."""
    layout = RunLayout(profile.run_path)
    cohort = pd.read_csv(layout.cohort, dtype={"subject_id": str}).set_index("subject_id")
    synthetic = not profile.data
    planted = _planted(profile, scored) if synthetic else {}
    items = [
        {
            "root": str(layout.root),
            "subject_id": sid,
            "image_path": cohort.loc[sid, "image_path"],
            "series": cohort.loc[sid].get("series") if "series" in cohort else None,
            "contrast": contrast(profile),
            "has_truth": synthetic,
            "signal": planted.get(sid),
        }
        for sid in ids
    ]
    mapped = map_subjects(_subject, items, profile.synth.workers, "input channels", progress)
    return _stack(_collect(mapped, "input channels"), ids, grid_size(profile))


def _planted(profile: Profile, ids: list[str]) -> dict[str, tuple]:
    from ctbrainage.synth.schedule import MaturationSchedule

    layout = RunLayout(profile.run_path)
    cohort = layout.synthetic
    schedule = MaturationSchedule.from_dict(json.loads(cohort.schedule.read_text()))
    pre = profile.preprocess
    table = pd.read_csv(layout.preprocess_table, dtype={"subject_id": str}).set_index("subject_id")
    return {
        sid: (
            json.loads(cohort.truth(sid).read_text()),
            schedule,
            (pre.spacing_mm, pre.size, (pre.ptile_low, pre.ptile_high)),
            (table.loc[sid, "ptile_low_hu"], table.loc[sid, "ptile_high_hu"]),
        )
        for sid in ids
    }


# ---- delayed maturation ------------------------------------------------------------------------
def delayed_subjects(profile: Profile) -> pd.DataFrame:
    """The delayed children (every ``delays_months`` × ``delay_lobes``) and their on-time twins
    (same seed and age, no delay): subject_id, age_months, planted_delay_months, lobe, twin,
    seed. Ages are drawn from [delay + 6, upper age) so that the earlier age stays ≥ 6 months."""
    config = profile.multitask
    rng = np.random.default_rng(profile.seed + DELAY_SEED)
    top = profile.age_range_months[1]
    rows = []
    for i, (delay, lobe) in enumerate(
        (d, lobe) for d in config.delays_months for lobe in config.delay_lobes
    ):
        age = float(rng.uniform(min(delay + 6.0, top - 1.0), top))
        sid = f"delay{i + 1:02d}"
        seed = profile.seed + DELAY_SEED + i
        common = {"age_months": age, "lobe": lobe, "seed": seed, "sex": "FM"[i % 2]}
        rows.append({"subject_id": sid, "planted_delay_months": delay, "twin": sid} | common)
        rows.append({"subject_id": sid + TWIN, "planted_delay_months": 0.0, "twin": sid} | common)
    return pd.DataFrame(rows)


def _delayed(item: dict) -> dict:
    from ctbrainage.imaging.preprocess import preprocess_scan
    from ctbrainage.synth.head import SubjectSpec, simulate_head

    row, synth, pre = item["row"], item["synth"], item["preprocess"]
    lobe = "" if row["lobe"] == "all" else row["lobe"]
    spec = SubjectSpec(row["subject_id"], row["age_months"], row["sex"], "A", int(row["seed"]),
                       delay_months=row["planted_delay_months"], delay_lobe=lobe)  # fmt: skip
    head = simulate_head(spec, item["schedule"], synth["mode"], cues=synth["cues"])
    native = ctio.ras_to_sitk(head.hu.astype(np.float32), head.affine)
    done = preprocess_scan(native, pre["spacing_mm"], pre["size"], (pre["ptile_low"],
                           pre["ptile_high"]))  # fmt: skip
    grid = ctio.ras_to_sitk(done.image, done.affine)
    hu, grey = channels.scan_on_grid(native, grid, done.work_mask)
    made = channels.hu_channels(hu, done.brain, grey, item["contrast"]) | {"ptile": done.image}
    bio = head.truth["biological_age_months"]
    return {"subject_id": row["subject_id"], "grey_hu": grey, "brain": done.brain > 0,
            "channels": made, "biological_age_months": bio}  # fmt: skip


def delayed_inputs(profile: Profile, progress: bool) -> tuple[pd.DataFrame, Inputs]:
    """The delayed children and twins (:func:`delayed_subjects`, with their planted biological
    age) and their arrays."""
    from ctbrainage.synth.schedule import MaturationSchedule

    layout = RunLayout(profile.run_path)
    schedule = MaturationSchedule.from_dict(json.loads(layout.synthetic.schedule.read_text()))
    table = delayed_subjects(profile)
    items = [
        {
            "subject_id": row["subject_id"],
            "row": row,
            "schedule": schedule,
            "synth": {"mode": profile.synth.mode, "cues": profile.synth.cues},
            "preprocess": dataclasses.asdict(profile.preprocess),
            "contrast": contrast(profile),
        }
        for row in table.to_dict("records")
    ]
    mapped = map_subjects(_delayed, items, profile.synth.workers, "delayed subjects", progress)
    results = _collect(mapped, "delayed subjects")
    bio = {r["subject_id"]: r["biological_age_months"] for r in results}
    table["biological_age_months"] = table["subject_id"].map(bio)
    return table, _stack(results, table["subject_id"].tolist(), grid_size(profile))
