"""The paper's preprocessing (section 3.2), one tested function per stage.

skull strip → PCA orientation → P-tile intensity normalisation → isotropic resample and crop.

Images are SimpleITK images in HU (LPS physical space, as SimpleITK uses). Skull stripping and
orientation run on a working grid (isotropic ``WORK_MM``), where morphology is cheap at any input
resolution; the model input is then sampled from the native HU image in one interpolation, on an
output grid whose axes are the brain's anatomical axes. That grid is stored in the NIfTI header of
every output, so anything in native space (e.g. TotalSegmentator labels) maps into it by plain
resampling: the native → preprocessed transform is saved with the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.transform import Rotation

# bump whenever a change alters the outputs: finished subjects of older versions are redone
PREPROCESS_VERSION = 6
WORK_MM = 1.0  # isotropic working resolution for skull stripping and orientation
CSF_HU = 5.0  # nominal CSF attenuation (2-10 HU at 120 kVp)
BLOOD_HU = 50.0  # above this, intracranial soft tissue is venous blood or bone, not brain
RIM_MARGIN_HU = 2.0  # the brain's outermost voxel layer must exceed the threshold by this much
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


class PreprocessError(ValueError):
    """A scan in which the preprocessing cannot find what it needs (e.g. no head)."""


@dataclass(frozen=True)
class Orientation:
    """The brain's anatomical frame: centroid (LPS mm) and axes as columns, in LPS:
    right, anterior, superior (a proper rotation of RAS-like axes, never a mirror)."""

    centre: np.ndarray
    axes: np.ndarray  # 3x3 columns: unit vectors of anatomical right, anterior, superior (LPS)

    def angles_deg(self) -> tuple[float, float, float]:
        """Rotation of the brain relative to the scanner axes: roll, pitch, yaw (degrees)."""
        ras = LPS_FROM_RAS @ self.axes  # the same vectors in RAS
        return tuple(float(a) for a in Rotation.from_matrix(ras).as_euler("xyz", degrees=True))


# ---- working grid -------------------------------------------------------------------------------
def anti_alias(image: sitk.Image, target_mm: float) -> sitk.Image:
    """Low-pass ``image`` for sampling at ``target_mm``: block averages by whole factors
    (cheap), then a Gaussian for what remains (FWHM² = target² − spacing²)."""
    factors = [max(1, int(target_mm // s)) for s in image.GetSpacing()]
    if max(factors) > 1:
        image = sitk.BinShrink(image, factors)
    spacing = image.GetSpacing()
    sigma = [math.sqrt(max(target_mm**2 - s**2, 0.0)) / 2.355 for s in spacing]
    if max(sg / s for sg, s in zip(sigma, spacing, strict=True)) > 0.25:
        image = sitk.SmoothingRecursiveGaussian(image, sigma=[max(sg, 1e-3) for sg in sigma])
    return image


def to_working_grid(
    image: sitk.Image, spacing_mm: float = WORK_MM, default: float = -1024.0
) -> sitk.Image:
    """Float32 HU on an isotropic grid with the image's own axes, anti-aliased; ``default``
    outside the image."""
    size = [
        int(math.ceil(n * s / spacing_mm))
        for n, s in zip(image.GetSize(), image.GetSpacing(), strict=True)
    ]
    origin, direction = image.GetOrigin(), image.GetDirection()
    smooth = anti_alias(sitk.Cast(image, sitk.sitkFloat32), spacing_mm)
    return sitk.Resample(
        smooth,
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        origin,
        [spacing_mm] * 3,
        direction,
        default,
        sitk.sitkFloat32,
    )


# ---- 1. skull stripping -------------------------------------------------------------------------
def _ball(radius_vox: float) -> np.ndarray:
    """The voxels within ``radius_vox`` of the centre (a dilation by it finds every voxel
    within that distance of a mask: the same as a distance transform, 5x faster)."""
    n = int(radius_vox)
    grid = np.mgrid[tuple(slice(-n, n + 1) for _ in range(3))]
    return (grid**2).sum(axis=0) <= radius_vox**2


def _enclosed_by_bone(hu: np.ndarray, region: np.ndarray, shell_mm: float = 10.0) -> bool:
    """Whether bone (> 150 HU) surrounds ``region``: it must make up at least 12 % of the
    shell within ``shell_mm`` outside it (a skull: 25-36 % even with open fontanelles; one
    plate of bone under a block of soft tissue: ~5 %). Checked at half resolution."""
    outside = ndimage.distance_transform_edt(~region[::2, ::2, ::2]) * 2 * WORK_MM
    shell = (outside > 0) & (outside <= shell_mm)
    return bool(shell.any() and (hu[::2, ::2, ::2][shell] > 150.0).mean() >= 0.12)


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The slices of ``mask``'s bounding box grown by ``margin`` voxels (within the array)."""
    where = np.nonzero(mask.any(axis=(1, 2))), np.nonzero(mask.any(axis=(0, 2)))
    where += (np.nonzero(mask.any(axis=(0, 1))),)
    return tuple(
        slice(max(int(w[0][0]) - margin, 0), min(int(w[0][-1]) + margin + 1, n))
        for w, n in zip(where, mask.shape, strict=True)
    )


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes`` (background face-connected to the border stays
    background; tested equal), by SimpleITK's ``BinaryFillhole``: twice as fast."""
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    return sitk.GetArrayFromImage(sitk.BinaryFillhole(image, fullyConnected=False)) > 0


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == 1 + int(np.argmax(sizes))


def intracranial_space(work: sitk.Image, min_brain_ml: float = 100.0) -> np.ndarray:
    """The intracranial soft tissue (brain and CSF) on the working grid, bool ``[k, j, i]``.

    Soft tissue is -20..100 HU. An erosion by a 3 mm ball cuts the scalp (thinner than 6 mm)
    and any bridge through sutures, fontanelles or a head holder; the largest component is the
    intracranial space, grown back within the soft tissue and filled. It does not depend on
    how far the white matter has myelinated, so the output grid (orientation, centre) and the
    P-tile levels are taken from it."""
    hu = sitk.GetArrayViewFromImage(work)  # [k, j, i]
    voxel_ml = float(np.prod(work.GetSpacing())) / 1000.0
    radius = max(1, int(round(3.0 / work.GetSpacing()[0])))
    soft = (hu > -20.0) & (hu < 100.0)
    core = _largest_component(ndimage.binary_erosion(soft, _ball(radius)))
    # grown back within the soft tissue only (mask=: 10x faster; core ⊆ soft, so the same)
    intracranial = ndimage.binary_dilation(core, _ball(radius), mask=soft) & soft
    intracranial = fill_holes(intracranial)
    region_ml = intracranial.sum() * voxel_ml
    if region_ml < min_brain_ml or not _enclosed_by_bone(hu, intracranial):
        raise PreprocessError(
            f"no head found: the largest soft-tissue region ({region_ml:.0f} mL)"
            f" is not a skull-enclosed brain of >= {min_brain_ml:.0f} mL"
        )
    return intracranial


def skull_strip(
    work: sitk.Image, intracranial: np.ndarray | None = None, min_brain_ml: float = 100.0
) -> sitk.Image:
    """Brain mask (uint8: grey and white matter, no CSF spaces) on the working grid, from HU.

    Two levels from the intracranial soft tissue (:func:`intracranial_space`): ``mid``, half-way
    between CSF (nominal 5 HU) and cortical grey matter (its 90th percentile), where a voxel
    at the cortex is half brain; and ``low``, a quarter of the way, below the least myelinated
    white matter (15-22 HU in young infants). Brain is a voxel below 50 HU (venous blood, bone)
    and either above ``mid``, or above ``low`` and more than 2.5 mm from CSF (below ``low``)
    within a tissue region at least 3 voxels wide: unmyelinated white matter is kept without
    relying on hole filling, while CSF-filled sulci and fissures, which read above ``low`` by
    partial volume, are not (CSF: below ``low``, opened against noise specks). Opened, largest
    component, holes filled; then the CSF spaces it encloses (ventricles) are cut out, as in the
    true brain, whether or not the white matter around them has myelinated; the outermost voxel
    layer, partial volume with CSF, must exceed ``mid`` by 2 HU."""
    if intracranial is None:
        intracranial = intracranial_space(work, min_brain_ml)
    hu = sitk.GetArrayViewFromImage(work)  # [k, j, i]
    voxel_ml = float(np.prod(work.GetSpacing())) / 1000.0
    values = hu[intracranial]
    grey = np.percentile(values[(values > -10.0) & (values < 45.0)], 90)
    mid = float(np.clip((CSF_HU + grey) / 2, 10.0, 25.0))
    low = float(np.clip(CSF_HU + (grey - CSF_HU) / 4, 8.0, mid))
    box = _bounding_box(intracranial, margin=2)  # the same result, on a third of the voxels
    inside, hu_box = intracranial[box], hu[box]
    # CSF: below ``low``, opened (noise specks in tissue are not CSF)
    csf = ndimage.binary_opening(hu_box < low, _ball(1))
    far_from_csf = ~ndimage.binary_dilation(csf | ~inside, _ball(2.5 / WORK_MM))
    tissue = inside & (hu_box < BLOOD_HU)
    faint = ndimage.binary_opening(tissue & (hu_box > low) & far_from_csf, _ball(1))
    brain_box = (tissue & (hu_box > mid)) | faint
    brain_box = fill_holes(_largest_component(ndimage.binary_opening(brain_box, _ball(1))))
    brain_box &= ~csf  # the CSF spaces it encloses (ventricles), as in the true brain
    # the outermost layer is partial volume with CSF: keep its voxels only if clearly tissue
    rim = brain_box & ~ndimage.binary_erosion(brain_box)
    brain_box &= ~(rim & (hu_box < mid + RIM_MARGIN_HU))
    brain = np.zeros_like(intracranial)
    brain[box] = brain_box
    if brain.sum() * voxel_ml < min_brain_ml:
        raise PreprocessError(
            f"no brain found: {brain.sum() * voxel_ml:.0f} mL of tissue above {low:.0f} HU"
        )
    return _mask_image(brain, work)


def _mask_image(mask: np.ndarray, like: sitk.Image) -> sitk.Image:
    """A bool ``[k, j, i]`` array as a uint8 image on ``like``'s grid."""
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(like)
    return image


# ---- 2. orientation -----------------------------------------------------------------------------
def mask_points(mask: sitk.Image, max_points: int = 60000) -> np.ndarray:
    """Physical (LPS mm) coordinates of mask voxels, at most about ``max_points``: every voxel
    of a regular lattice (a random draw would change wholly when one voxel of the mask does)."""
    array = sitk.GetArrayViewFromImage(mask)
    stride = max(1, math.ceil((np.count_nonzero(array) / max_points) ** (1 / 3)))
    idx = np.argwhere(array[::stride, ::stride, ::stride] > 0)[:, ::-1] * stride  # i, j, k
    direction = np.array(mask.GetDirection()).reshape(3, 3)
    return idx.astype(float) * np.array(mask.GetSpacing()) @ direction.T + np.array(
        mask.GetOrigin()
    )


def orient(mask: sitk.Image) -> Orientation:
    """The brain's anatomical axes from its mask: PCA, mirror symmetry and anatomy.

    - anterior-posterior: the principal axis of largest variance (the brain is longest AP);
    - left-right: the normal of the plane of best mirror symmetry (searched, because the
      left-right and superior-inferior variances of an infant brain are close);
    - the AP axis is then refined within the mid-sagittal plane (PCA there);
    - signs from anatomy: the inferior end of the brain is the one whose lowest tenth lies far
      from the centre along AP (cerebellum and brainstem), and that offset points posterior.
      Right = anterior × superior, so the result is always a proper rotation.
    """
    points = mask_points(mask)
    centre = points.mean(axis=0)
    rel = points - centre
    cov = np.cov(rel.T)
    _, vectors = np.linalg.eigh(cov)
    ap = vectors[:, 2]
    lr = _symmetry_normal(mask, centre, ap, vectors[:, 0])
    plane = np.eye(3) - np.outer(lr, lr)
    _, in_plane = np.linalg.eigh(plane @ cov @ plane)
    ap = in_plane[:, 2]
    si = np.cross(lr, ap)
    u, v = rel @ si, rel @ ap
    top, bottom = u >= np.quantile(u, 0.9), u <= np.quantile(u, 0.1)
    if abs(v[bottom].mean()) >= abs(v[top].mean()):
        superior, inferior_offset = si, v[bottom].mean()
    else:
        superior, inferior_offset = -si, v[top].mean()
    anterior = -np.sign(inferior_offset) * ap
    right = np.cross(anterior, superior)
    # rounded (1e-6 mm, 1e-9 rad): the same grid whatever the floating-point noise of the
    # process (sums whose order depends on threads and memory alignment)
    turn = Rotation.from_matrix(np.column_stack([right, anterior, superior])).as_rotvec()
    axes = Rotation.from_rotvec(np.round(turn, 9)).as_matrix()
    return Orientation(centre=np.round(centre, 6), axes=axes)


def _symmetry_normal(mask: sitk.Image, centre, axis, start) -> np.ndarray:
    """Unit normal of the plane through ``centre`` of best mirror symmetry of the mask: searched
    around ``axis`` (the AP axis) first, then tilted towards it (so that the yaw comes from the
    symmetry, not from the PCA axis), and around it again, finer each time. The score is the
    mask smoothed by a 2 mm Gaussian, read at the mirrored points: it changes smoothly with the
    plane, so a mask that differs in a few voxels gives almost the same plane."""
    spacing = np.array(mask.GetSpacing())
    # float64 throughout: the refined angle is continuous in the scores, so float32 rounding
    # (1e-7) would move it more than the final rounding (1e-9 rad) absorbs
    smooth = ndimage.gaussian_filter(
        sitk.GetArrayViewFromImage(mask).astype(np.float64), 2.0 / spacing[::-1]
    )
    points = mask_points(mask, max_points=20000) - centre
    direction = np.array(mask.GetDirection()).reshape(3, 3)
    to_index = np.linalg.inv(direction * spacing)
    origin = np.array(mask.GetOrigin())

    def score(n):
        mirrored = points - 2 * np.outer(points @ n, n) + centre
        kji = ((mirrored - origin) @ to_index.T)[:, ::-1].T
        return float(ndimage.map_coordinates(smooth, kji, order=1, cval=0.0).mean())

    def best(rotate, degrees):
        """The best of the candidate angles, refined between its neighbours by a parabola:
        the angle then moves little when a few mask voxels do (an argmax alone jumps a step)."""
        scores = [score(rotate(math.radians(d))) for d in degrees]
        i = int(np.argmax(scores))
        angle = degrees[i]
        if 0 < i < len(degrees) - 1:
            left, middle, right = scores[i - 1 : i + 2]
            curvature = left - 2 * middle + right
            if curvature < 0:
                angle += 0.5 * (left - right) / curvature * (degrees[i + 1] - degrees[i])
        return rotate(math.radians(angle))

    e1 = start - axis * (start @ axis)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(axis, e1)
    n = best(lambda t: math.cos(t) * e1 + math.sin(t) * e2, np.arange(0.0, 180.0, 3.0))
    for tilt_range, spin_range in ((8.0, 3.0), (1.5, 1.0)):
        spin_axis = np.cross(n, axis) / np.linalg.norm(np.cross(n, axis))
        n = best(
            lambda t, n=n: math.cos(t) * n + math.sin(t) * axis,
            np.arange(-tilt_range, tilt_range + 1e-9, 0.5 if tilt_range > 2 else 0.25),
        )
        n = best(
            lambda t, n=n, s=spin_axis: math.cos(t) * n + math.sin(t) * s,
            np.arange(-spin_range, spin_range + 1e-9, 0.25),
        )
    return n / np.linalg.norm(n)


# ---- 3. P-tile normalisation --------------------------------------------------------------------
def ptile_normalise(hu: np.ndarray, brain: np.ndarray, low: float, high: float, levels_from=None):
    """Rescale HU linearly so that the ``low``/``high`` percentiles of ``levels_from`` (default:
    the brain) map to 0/1; clipped to [0, 1], 0 outside the brain. Returns the image and the
    two HU values."""
    inside = hu[(brain if levels_from is None else levels_from) > 0]
    if inside.size == 0:
        raise PreprocessError("empty brain mask: nothing to normalise")
    # on values rounded to 0.1 HU (far below CT noise): the levels then do not move when the
    # working grid's HU carry floating-point noise of a process (1e-4 HU at bone edges, seen
    # between worker processes; thousands of voxels share each rounded value)
    lo, hi = (float(v) for v in np.percentile(np.round(inside, 1), [low, high]))
    if hi <= lo:
        raise PreprocessError(f"flat brain intensities ({lo:.1f} HU): cannot normalise")
    out = np.clip((hu - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    out[brain == 0] = 0.0
    return out, float(lo), float(hi)


# ---- 4. output grid -----------------------------------------------------------------------------
def output_grid(orientation: Orientation, spacing_mm: float, size: int) -> sitk.Image:
    """An empty reference image: ``size``³ voxels of ``spacing_mm``, centred on the brain, its
    axes the anatomical axes (array i → right, j → anterior, k → superior, as in RAS)."""
    # LPS direction columns for array axes pointing to patient right, anterior, superior
    direction = orientation.axes
    half = (size - 1) / 2 * spacing_mm
    origin = orientation.centre - direction @ np.full(3, half)
    grid = sitk.Image([size] * 3, sitk.sitkUInt8)
    grid.SetSpacing([spacing_mm] * 3)
    grid.SetDirection(direction.ravel().tolist())
    grid.SetOrigin(origin.tolist())
    return grid


def resample_to(image: sitk.Image, grid: sitk.Image, default: float, smooth: bool = True):
    """``image`` sampled linearly on ``grid`` (anti-aliased when ``smooth``); array [i, j, k]."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    if smooth:
        image = anti_alias(image, grid.GetSpacing()[0])
    out = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, default)
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


def crop_to_mask(images: list[sitk.Image], mask: sitk.Image, margin_mm: float = 5.0):
    """The part of each of ``images`` (same grid as ``mask``) around the mask, with a margin."""
    idx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[:, ::-1]
    pad = int(math.ceil(margin_mm / min(mask.GetSpacing())))
    lo = np.maximum(idx.min(axis=0) - pad, 0)
    hi = np.minimum(idx.max(axis=0) + pad + 1, mask.GetSize())
    return [sitk.RegionOfInterest(image, (hi - lo).tolist(), lo.tolist()) for image in images]


def grid_affine(grid: sitk.Image) -> np.ndarray:
    """RAS affine of a SimpleITK grid (for NIfTI output)."""
    direction = np.array(grid.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = LPS_FROM_RAS @ direction * np.array(grid.GetSpacing())
    affine[:3, 3] = LPS_FROM_RAS @ np.array(grid.GetOrigin())
    return affine


# ---- composition --------------------------------------------------------------------------------
@dataclass
class Preprocessed:
    """The model input and its mask on the output grid, with what the stages found."""

    image: np.ndarray  # float32 [i, j, k] in [0, 1], 0 outside the brain
    brain: np.ndarray  # uint8 [i, j, k]
    affine: np.ndarray  # RAS affine of the output grid (native physical space → these voxels)
    work_mask: sitk.Image  # brain mask on the working grid (native axes)
    intracranial: sitk.Image  # intracranial space (brain and CSF) on the working grid
    orientation: Orientation
    ptile_hu: tuple[float, float]
    brain_volume_ml: float


def preprocess_scan(
    image: sitk.Image, spacing_mm: float, size: int, ptile: tuple[float, float]
) -> Preprocessed:
    """All stages for one HU image. The output grid (orientation, centre) and the P-tile
    levels come from the intracranial space, which does not change as the white matter
    myelinates; the brain mask decides which voxels are input
    (docs/preprocessing-and-lobes.md). The model input is sampled from the working grid (1 mm),
    so output spacings finer than ``WORK_MM`` (e.g. the paper's literal 0.488 mm) are
    interpolated, not more detailed."""
    work = to_working_grid(image)
    space = intracranial_space(work)
    mask = skull_strip(work, space)
    intracranial = _mask_image(space, work)
    orientation = orient(intracranial)
    grid = output_grid(orientation, spacing_mm, size)
    model_input, brain, ptile_hu = sample_model_input(work, mask, intracranial, grid, ptile)
    volume = float(sitk.GetArrayViewFromImage(mask).sum()) * WORK_MM**3 / 1000.0
    return Preprocessed(
        model_input, brain, grid_affine(grid), mask, intracranial, orientation, ptile_hu, volume
    )


def sample_model_input(work, mask, intracranial, grid, ptile):
    """P-tile normalisation, isotropic resampling and crop onto the brain's output ``grid``.

    The levels are percentiles of the intracranial soft tissue below 50 HU (brain and CSF, no
    venous blood or bone): percentiles of the brain alone sit in its darkest tissue, the least
    myelinated white matter, and would rescale the whole input as one lobe matures. Normalised
    on the working grid, where the mask is exact, so that no skull or scalp can bleed into brain
    voxels when the image is then sampled on the (coarser) output grid.
    Returns (model input, brain mask, (low, high) HU)."""
    work, mask, intracranial = crop_to_mask([work, mask, intracranial], intracranial)
    hu = sitk.GetArrayViewFromImage(work)
    reference = (sitk.GetArrayViewFromImage(intracranial) > 0) & (hu < BLOOD_HU)
    normalised, lo, hi = ptile_normalise(
        hu, sitk.GetArrayViewFromImage(mask), *ptile, levels_from=reference
    )
    normalised_image = sitk.GetImageFromArray(normalised)
    normalised_image.CopyInformation(work)
    brain = resample_to(mask, grid, 0.0, smooth=False) >= 0.5
    model_input = resample_to(normalised_image, grid, 0.0)
    model_input[~brain] = 0.0
    return model_input, brain.astype(np.uint8), (lo, hi)


def input_derivative(
    native: sitk.Image, grid: sitk.Image, brain: np.ndarray, ptile_hu: tuple[float, float]
) -> np.ndarray:
    """A change of the scan's HU (``native``, e.g. d HU / d age) as the change of the model
    input it causes on ``grid``: the image's linear resampling (working grid, anti-aliased
    output grid), divided by the subject's P-tile range, 0 outside ``brain``. First order: the
    P-tile levels are held fixed and the [0, 1] clip ignored (white matter lies well inside)."""
    work = to_working_grid(sitk.Cast(native, sitk.sitkFloat32), default=0.0)
    out = resample_to(work, grid, 0.0) / (ptile_hu[1] - ptile_hu[0])
    return np.where(brain > 0, out, 0.0).astype(np.float32)


def map_to_grid(native: sitk.Image, reference: sitk.Image, labels: bool = True) -> np.ndarray:
    """An image in native physical space (e.g. lobe labels of the CT, TotalSegmentator output)
    on a preprocessed grid ``reference`` (read from ``preprocessed/<id>.nii.gz``): the grid's
    header is the saved native → preprocessed transform. Nearest neighbour for ``labels``."""
    interpolator = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    out = sitk.Resample(native, reference, sitk.Transform(), interpolator, 0)
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)
