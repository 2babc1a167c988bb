"""Lobe segmentation on the preprocessed grid: the atlas method (a labelled synthetic atlas
registered to each subject) and TotalSegmentator, chosen by the profile's ``lobes.method``.

The label vocabulary (LOBES, LOBE_IDS, the AAL → lobe grouping) lives in
:mod:`ctbrainage.core.labels`.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["METHODS", "atlas_lobes", "build_atlas", "register_atlas", "segment_lobes", "to_atlas"]


# ---- atlas method: register a labelled atlas to each preprocessed subject ---------------------
ATLAS_AGE_MONTHS = 24.0  # the atlas head: a mid-range child, template shape, no pose noise
ATLAS_SEED = 20250101


def build_atlas(spacing_mm: float, size: int):
    """The registration atlas on a preprocessed grid: (image, brain, lobes) arrays.

    A synthetic head made from the same package anatomy (MNI152 2009 + AAL lobes) without
    random deformation, run through the paper's preprocessing, with its lobe labels carried
    into the preprocessed grid. Deterministic; cached per grid.
    """
    return _atlas(round(float(spacing_mm), 6), int(size))  # spacings read from affines jitter


@functools.lru_cache(maxsize=4)
def _atlas(spacing_mm: float, size: int):
    from ctbrainage.imaging.ctio import ras_to_sitk
    from ctbrainage.imaging.preprocess import map_to_grid, preprocess_scan
    from ctbrainage.synth import MaturationSchedule, SubjectSpec, simulate_head

    spec = SubjectSpec("atlas", ATLAS_AGE_MONTHS, "F", "A", seed=ATLAS_SEED)
    head = simulate_head(spec, MaturationSchedule(), "demo", deform=False)
    result = preprocess_scan(ras_to_sitk(head.hu, head.affine), spacing_mm, size, (0.5, 99.5))
    reference = ras_to_sitk(result.image, result.affine)
    lobes = map_to_grid(ras_to_sitk(head.lobes, head.affine), reference)
    lobes = np.where(result.brain > 0, lobes, 0).astype(np.uint8)
    return result.image, result.brain, lobes


def atlas_lobes(image: np.ndarray, brain: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Lobe labels for one preprocessed subject (arrays [i, j, k] on the grid of ``affine``):
    the atlas registered affinely, then deformably (symmetric demons), to the subject; labels
    warped with nearest neighbour and restricted to the subject's brain mask."""
    return register_atlas(image, brain, affine, warp=False)[0]


def _grid_image(array: np.ndarray, spacing: float):
    """A SimpleITK image of a grid array ([i, j, k]) at the origin, axis-aligned: the frame in
    which the subject and the atlas are registered (their grids coincide in it)."""
    import SimpleITK as sitk

    out = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0), np.float32))
    out.SetSpacing([spacing] * 3)
    return out


def register_atlas(image: np.ndarray, brain: np.ndarray, affine: np.ndarray, warp: bool = True):
    """:func:`atlas_lobes`'s registration: (labels, the warp from the atlas onto the subject, or
    None when not asked for: its inversion and storage cost time).

    The warp is a displacement field on the shared grid frame (:func:`_grid_image`, float32
    vectors in mm): for each atlas point, where it lies in the subject; the inverse of the
    subject → atlas map that carried the labels (affine, then demons), so that a subject's
    image can be resampled into the atlas (:func:`to_atlas`) without a second registration."""
    import SimpleITK as sitk

    spacing = float(np.linalg.norm(affine[:3, 0]))
    atlas_image, atlas_brain, atlas_labels = build_atlas(spacing, image.shape[0])
    fixed = _grid_image(image + 0.5 * brain, spacing)  # intensity plus outline: robust to
    moving = _grid_image(atlas_image + 0.5 * atlas_brain, spacing)  # age-dependent contrast
    affine_tx = _register_affine(fixed, moving)
    moving_affine = sitk.Resample(moving, fixed, affine_tx, sitk.sitkLinear, 0.0)
    demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
    demons.SetNumberOfIterations(30)
    demons.SetStandardDeviations(1.5)
    field = demons.Execute(fixed, sitk.HistogramMatching(moving_affine, fixed))
    warp = sitk.CompositeTransform([affine_tx, sitk.DisplacementFieldTransform(field)])
    labels = sitk.Resample(
        _grid_image(atlas_labels, spacing), fixed, warp, sitk.sitkNearestNeighbor, 0.0
    )
    labels = np.where(brain > 0, sitk.GetArrayFromImage(labels).transpose(2, 1, 0), 0)
    if not warp:
        return labels.astype(np.uint8), None
    forward = sitk.TransformToDisplacementField(
        warp, sitk.sitkVectorFloat64, fixed.GetSize(), fixed.GetOrigin(), fixed.GetSpacing(),
        fixed.GetDirection(),
    )  # fmt: skip
    inverse = sitk.InvertDisplacementField(
        forward, maximumNumberOfIterations=10, meanErrorToleranceThreshold=1e-3,
        maxErrorToleranceThreshold=0.1, enforceBoundaryCondition=True,
    )  # fmt: skip
    to_atlas_field = sitk.Cast(inverse, sitk.sitkVectorFloat32)
    return labels.astype(np.uint8), to_atlas_field


def to_atlas(array: np.ndarray, field, labels: bool = False) -> np.ndarray:
    """A subject's grid array resampled into the atlas with the warp of
    :func:`register_atlas` (linear; nearest neighbour for ``labels``); 0 outside."""
    import SimpleITK as sitk

    spacing = float(field.GetSpacing()[0])
    moving = _grid_image(array, spacing)
    transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    method = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    out = sitk.Resample(moving, field, transform, method, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


def _register_affine(fixed, moving):
    import SimpleITK as sitk

    initial = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.AffineTransform(3), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsCorrelation()
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.25, 42)  # fixed seed: deterministic
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-4, 100)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([1.0, 0.0])
    reg.SetInitialTransform(initial, inPlace=False)
    return reg.Execute(fixed, moving)


METHODS = ("atlas", "totalsegmentator", "auto")


def segment_lobes(
    image,
    brain,
    affine,
    method: str,
    native_path=None,
    licence_number: str = "",
    work_dir=None,
    warp: bool = True,
) -> tuple[np.ndarray, str, object]:
    """Lobe labels on a preprocessed grid, the method that made them, and the atlas warp of
    :func:`register_atlas` (None where TotalSegmentator made the labels).

    ``atlas``: :func:`atlas_lobes`. ``totalsegmentator``: its ``brain_structures`` task on the
    native CT (``native_path``), labels moved into the grid; raises
    ``TotalSegmentatorUnavailable`` saying what is missing. ``auto``: TotalSegmentator when it
    can run, else the atlas; the returned method says which, and why.
    """
    if method not in METHODS:
        raise ValueError(f"unknown lobe method {method!r}; choose from {', '.join(METHODS)}")
    if method == "atlas":
        found, field = register_atlas(image, brain, affine, warp)
        return found, "atlas", field
    from ctbrainage.imaging.ctio import ras_to_sitk
    from ctbrainage.lobes.totalseg import TotalSegmentatorUnavailable, totalseg_lobes_in_grid

    try:
        reference = ras_to_sitk(image, affine)
        labels = totalseg_lobes_in_grid(native_path, reference, licence_number, work_dir)
        return np.where(brain > 0, labels, 0).astype(np.uint8), "totalsegmentator", None
    except TotalSegmentatorUnavailable as err:
        if method == "totalsegmentator":
            raise
        reason = str(err).splitlines()[0]
        found, field = register_atlas(image, brain, affine, warp)
        return found, f"atlas (TotalSegmentator unavailable: {reason})", field
