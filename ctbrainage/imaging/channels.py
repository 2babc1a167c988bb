"""Input channels from one scan: the P-tile input of step 01 and three HU contrasts on the same
grid — the CT counterparts of the infant MRI paper's T1w, T2w and T1w/T2w ratio (Park et al.
2026).

- ``ptile``: step 01's model input (percentile-normalised HU), read as it is;
- ``brain``: the standard brain window W80/L40 (0–80 HU → 0–1);
- ``myelin``: a narrow window over the white matter's own range, unmyelinated → mature
  (``multitask.myelin_window_hu``; docs/multitask.md justifies the limits);
- ``gmref``: HU minus the subject's cortical grey-matter HU, in units of ``gm_scale_hu``: a
  scanner's calibration offset (site B's +3 HU) cancels.

The HU are sampled onto step 01's grid once, from the native scan on step 01's working grid
(anti-aliased, linear: the chain of step 01's own input), and every HU channel is computed from
that one array; 0 outside step 01's brain mask. As step 01 zeroes its input outside the brain
before that interpolation, the working grid's HU outside the brain are set to CSF's (the tissue
around a brain), so that no skull bleeds into the brain's edge voxels. A condition is one
channel or several joined by ``+`` (stacked as input channels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ctbrainage.imaging.preprocess import CSF_HU, resample_to, to_working_grid

CHANNELS = ("ptile", "brain", "myelin", "gmref")
BRAIN_WINDOW_HU = (0.0, 80.0)  # W80 / L40
RIBBON_MM = (1.0, 4.0)  # the cortical ribbon: 1-4 mm inside the brain's surface
GM_PERCENTILE = 75.0  # of the ribbon: its upper part is grey matter, the rest partial volume


def parse_condition(condition: str) -> tuple[str, ...]:
    """The channels of a condition (``"brain+myelin"`` → ("brain", "myelin"))."""
    parts = tuple(condition.split("+"))
    wrong = [p for p in parts if p not in CHANNELS]
    if wrong or len(set(parts)) != len(parts):
        raise ValueError(
            f"condition {condition!r}: channels are {', '.join(CHANNELS)}, each at most once, "
            "joined by '+'"
        )
    return parts


@dataclass(frozen=True)
class Contrast:
    """How HU become the HU channels: the windows' limits and the grey-matter scale (HU)."""

    myelin_window_hu: tuple[float, float] = (15.0, 32.0)
    gm_scale_hu: float = 10.0
    brain_window_hu: tuple[float, float] = BRAIN_WINDOW_HU


def window(hu: np.ndarray, limits: tuple[float, float]) -> np.ndarray:
    """HU mapped linearly so that ``limits`` become 0 and 1, clipped to [0, 1]."""
    low, high = limits
    if high <= low:
        raise ValueError(f"a window needs low < high, got {limits}")
    return np.clip((hu - low) / (high - low), 0.0, 1.0).astype(np.float32)


def grey_matter_hu(work_hu: np.ndarray, work_brain: np.ndarray, spacing_mm: float) -> float:
    """The subject's cortical grey-matter attenuation: the ``GM_PERCENTILE`` of the HU in the
    ribbon between ``RIBBON_MM`` inside the brain's surface (on step 01's 1 mm working grid,
    where the mask is exact; the outermost millimetre, partial volume with CSF, is left out).
    Any constant added to the HU moves it by that constant."""
    brain = work_brain > 0
    outer, inner = (max(1, round(mm / spacing_mm)) for mm in RIBBON_MM)
    ribbon = ndimage.binary_erosion(brain, iterations=outer) & ~ndimage.binary_erosion(
        brain, iterations=inner
    )
    if not ribbon.any():
        raise ValueError("the brain mask has no cortical ribbon (too small)")
    return float(np.percentile(work_hu[ribbon], GM_PERCENTILE))


def hu_channels(
    hu: np.ndarray, brain: np.ndarray, grey_hu: float, contrast: Contrast
) -> dict[str, np.ndarray]:
    """The HU channels of one subject from its HU on the model grid; 0 outside ``brain``."""
    inside = brain > 0
    made = {
        "brain": window(hu, contrast.brain_window_hu),
        "myelin": window(hu, contrast.myelin_window_hu),
        "gmref": ((hu - grey_hu) / contrast.gm_scale_hu).astype(np.float32),
    }
    return {name: np.where(inside, image, 0.0).astype(np.float32) for name, image in made.items()}


def slopes(
    hu: np.ndarray, brain: np.ndarray, ptile_hu: tuple[float, float], contrast: Contrast
) -> dict[str, np.ndarray]:
    """d channel / d HU per voxel (0 where a window clips and outside ``brain``): turns a
    change of HU (e.g. the planted d HU / d age) into the change of each channel."""
    inside = brain > 0

    def within(limits):
        low, high = limits
        return np.where(inside & (hu > low) & (hu < high), 1.0 / (high - low), 0.0)

    return {
        "ptile": within(ptile_hu),
        "brain": within(contrast.brain_window_hu),
        "myelin": within(contrast.myelin_window_hu),
        "gmref": np.where(inside, 1.0 / contrast.gm_scale_hu, 0.0),
    }


def scan_on_grid(native: sitk.Image, grid: sitk.Image, work_brain: sitk.Image):
    """HU of the native scan on the model ``grid`` (one interpolation from the working grid, as
    step 01 samples its input) and the cortical grey-matter HU (on the working grid, with
    step 01's working-grid brain mask ``work_brain``)."""
    work = to_working_grid(native)
    mask = sitk.Resample(work_brain, work, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    work_hu, inside = sitk.GetArrayFromImage(work), sitk.GetArrayFromImage(mask) > 0
    grey = grey_matter_hu(work_hu, inside, work.GetSpacing()[0])
    brain_only = sitk.GetImageFromArray(np.where(inside, work_hu, CSF_HU).astype(np.float32))
    brain_only.CopyInformation(work)
    return resample_to(brain_only, grid, CSF_HU), grey
