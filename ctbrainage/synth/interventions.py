"""Interventions on one synthetic child, through step 01's preprocessing: the model inputs that
the interventional model truth (:mod:`ctbrainage.interpret.model_truth`) feeds to a model.

The generator's random draws do not depend on the schedule or the age, so the same child can be
regenerated with one thing changed:

- ``maturation`` of lobe k: the child regenerated with lobe k's maturation moved by ± δ months
  (:meth:`~ctbrainage.synth.schedule.MaturationSchedule.shift_lobe`);
- ``maturation`` of ``all``: the child regenerated at age ± δ (every cue the cohort lets age;
  near birth the lower age is clipped at 0 and the step is the ages' difference);
- ``content`` of lobe k: ``content_hu`` more in lobe k's white matter (the image plus
  ``content_hu`` × the lobe's response map, :class:`~ctbrainage.synth.head.SyntheticHead`).

Every image then runs through the whole of step 01's preprocessing, so that a reaction of the
brain mask, the output grid or the P-tile levels reaches the model input as it would in a run.
The response maps are also carried onto the subject's model grid: d(model input) / d(lobe's
white-matter HU), for the first-order (chain-rule) estimate.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk

from ctbrainage.core.labels import LOBES
from ctbrainage.imaging import ctio
from ctbrainage.imaging.preprocess import Preprocessed, input_derivative, preprocess_scan
from ctbrainage.synth.head import SubjectSpec, simulate_head
from ctbrainage.synth.schedule import MaturationSchedule

MATURATION, CONTENT = "maturation", "content"
ALL_CUES = "all"


@dataclass(frozen=True)
class Variant:
    """One intervened model input: which ``cue`` (a lobe, or ``all``), which ``kind``
    (maturation, content), and how far: ``step`` (months or HU; negative for −δ)."""

    cue: str
    kind: str
    step: float
    image: np.ndarray  # float32 model input


@dataclass(frozen=True)
class Interventions:
    """The child's own model input (preprocessed in the same way as every variant), its brain
    mask, the lobes' response maps on its grid ([lobe, i, j, k]: d input / d HU), each lobe's
    planted d HU / d age at the child's biological age, and the variants."""

    baseline: np.ndarray
    brain: np.ndarray
    responses: np.ndarray
    hu_per_month: dict[str, float]
    variants: list[Variant]


def _native(array: np.ndarray, affine: np.ndarray, cval: float) -> sitk.Image:
    """A float32 image of ``array`` (a gantry-tilted grid resampled onto an orthogonal one, as
    step 01's reader does), without rounding to whole HU."""
    if ctio._has_shear(affine):
        array, affine = ctio.resample_to_orthogonal(array, affine, cval=cval)
    return ctio.ras_to_sitk(np.asarray(array, np.float32), affine)


@dataclass(frozen=True)
class Signal:
    """One child's model input, brain mask and each lobe's planted signal on its grid:
    d(model input) / d(lobe k's maturation) ([lobe, i, j, k], per month), the lobe's response
    map times its d HU / d age at the child's biological age."""

    image: np.ndarray
    brain: np.ndarray
    maps: np.ndarray


def _model_input(hu, affine, preprocess) -> Preprocessed:
    spacing, size, ptile = preprocess
    return preprocess_scan(_native(hu, affine, -1024.0), spacing, size, ptile)


def _responses(head, base: Preprocessed) -> np.ndarray:
    grid = ctio.ras_to_sitk(base.image, base.affine)
    return np.stack(
        [
            input_derivative(_native(head.responses[..., i], head.affine, 0.0), grid,
                             base.brain, base.ptile_hu)
            for i in range(len(LOBES))
        ]
    )  # fmt: skip


def _hu_per_month(head, schedule: MaturationSchedule, cues: str) -> dict[str, float]:
    ages = head.truth["lobe_maturation_months"]
    span = schedule.mature_hu - schedule.unmyelinated_hu
    aging = cues != "none"  # with no cue, the lobar white matter does not change with age
    return {
        name: float(span * schedule.lobes[name].slope(ages[name])) if aging else 0.0
        for name in LOBES.values()
    }


def signal(
    spec: SubjectSpec,
    schedule: MaturationSchedule,
    mode: str,
    cues: str,
    preprocess: tuple[float, int, tuple[float, float]],
) -> Signal:
    """The child's model input and its lobes' signal maps (no intervened variants): what the
    chain-rule s_k of any model needs, Σ_v ∂f/∂x_v · maps[k, v]."""
    head = simulate_head(spec, schedule, mode, cues=cues, responses=True)
    base = _model_input(head.hu, head.affine, preprocess)
    slopes = np.array(list(_hu_per_month(head, schedule, cues).values()), np.float32)
    maps = _responses(head, base).astype(np.float32) * slopes[:, None, None, None]
    return Signal(base.image, base.brain, maps)


def intervene(
    spec: SubjectSpec,
    schedule: MaturationSchedule,
    mode: str,
    cues: str,
    preprocess: tuple[float, int, tuple[float, float]],
    delta_months: float,
    content_hu: float,
) -> Interventions:
    """Every variant of one child (see the module docstring); ``preprocess``: step 01's
    (spacing_mm, size, (P-tile low, high))."""

    def regenerated(child: SubjectSpec, plan: MaturationSchedule) -> np.ndarray:
        head = simulate_head(child, plan, mode, cues=cues)
        return _model_input(head.hu, head.affine, preprocess).image

    head = simulate_head(spec, schedule, mode, cues=cues, responses=True)
    base = _model_input(head.hu, head.affine, preprocess)
    responses = _responses(head, base)
    variants = []
    for i, lobe in enumerate(LOBES.values()):
        for step in (delta_months, -delta_months):
            image = regenerated(spec, schedule.shift_lobe(lobe, step))
            variants.append(Variant(lobe, MATURATION, step, image))
        hu = head.hu.astype(np.float32) + np.float32(content_hu) * head.responses[..., i]
        hu_image = _model_input(hu, head.affine, preprocess).image
        variants.append(Variant(lobe, CONTENT, content_hu, hu_image))
    for step in (delta_months, -min(delta_months, spec.age_months)):
        child = replace(spec, age_months=spec.age_months + step)
        variants.append(Variant(ALL_CUES, MATURATION, step, regenerated(child, schedule)))
    hu_per_month = _hu_per_month(head, schedule, cues)
    return Interventions(base.image, base.brain, responses, hu_per_month, variants)
