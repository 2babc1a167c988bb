"""One synthetic pediatric head CT in Hounsfield units, with its ground truth.

The anatomy is the template (:mod:`ctbrainage.synth.anatomy`) scaled to the subject's brain
volume and cephalic index, bent by a random smooth deformation, given age-dependent extra-axial
CSF, skull, sutures, fontanelle and scalp, and filled with age-dependent attenuations. The head is
then posed in a scanner (rotation, translation, optional gantry tilt) on a head holder and table,
sampled on the acquisition grid, blurred by the scanner's point-spread function, given correlated
noise and the site's calibration offset, and quantised to int16 HU.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ctbrainage.core.labels import LOBES
from ctbrainage.synth import norms
from ctbrainage.synth.anatomy import (
    BONE_NAMES,
    BRAIN_BIT,
    CEREBELLUM,
    DEEP_GREY,
    FRONTAL_BONE,
    INSULA,
    Template,
    decode_truth,
    load_template,
)
from ctbrainage.synth.schedule import INDIVIDUAL_SD_HU, MaturationSchedule

AIR_HU = -1000.0
# bump whenever a change alters the generated images: cohorts on disk then regenerate
GENERATOR_VERSION = 4
#: which age cues a head carries: ``all`` (every age-dependent tissue), ``lobar`` (only the
#: lobar white matter; every other cue is drawn at :data:`REFERENCE_AGE_MONTHS` for every child)
#: or ``none`` (the lobar white matter too: no age cue at all, the negative control)
CUES = ("all", "lobar", "none")
REFERENCE_AGE_MONTHS = 24.0
MATURITY_SD_MONTHS = 1.5  # a child's maturation runs early or late by this much (all lobes)


@dataclass(frozen=True)
class Acquisition:
    """An acquisition preset: matrix, pixel-size range, slice spacing, template resolution."""

    matrix: int
    pixel_mm: tuple[float, float]  # allowed pixel sizes; the FOV is fitted to the head
    slice_mm: float
    template_mm: float  # resolution of the anatomy the head is built from


ACQUISITIONS = {
    # the paper's protocol: 512 x 512, 0.3-0.6 mm pixels, 0.625 mm slices, 200-300 slices
    "full-res": Acquisition(matrix=512, pixel_mm=(0.35, 0.5), slice_mm=0.625, template_mm=1.0),
    # a lighter reconstruction for CPU demos: 192 x 192, ~1.1 mm pixels, 2 mm slices
    "demo": Acquisition(matrix=192, pixel_mm=(0.95, 1.35), slice_mm=2.0, template_mm=1.5),
    # a coarse one for tests and smoke runs (the tiny profile): 128 x 128, ~1.7 mm pixels, 4 mm
    # slices, on a 2 mm template (about a quarter of demo's generation time)
    "quick": Acquisition(matrix=128, pixel_mm=(1.425, 2.025), slice_mm=4.0, template_mm=2.0),
}


@dataclass(frozen=True)
class Site:
    """A scanner: noise level, calibration offset (water drift) and in-plane blur."""

    noise_scale: float
    offset_hu: float
    psf_fwhm_mm: float


SITES = {
    "A": Site(noise_scale=1.0, offset_hu=0.0, psf_fwhm_mm=0.9),
    "B": Site(noise_scale=1.3, offset_hu=3.0, psf_fwhm_mm=1.2),
}
# noise SD of brain at a thin-slice voxel (0.45 x 0.45 x 0.625 mm), soft kernel: 8-15 HU
NOISE_REF_HU, NOISE_REF_VOXEL_MM3 = 10.0, 0.45 * 0.45 * 0.625


@dataclass(frozen=True)
class SubjectSpec:
    subject_id: str
    age_months: float
    sex: str  # "F" or "M"
    site: str  # a key of SITES
    seed: int
    gantry_tilt_deg: float = 0.0
    # delayed maturation: the lobar white matter of ``delay_lobe`` (a lobe name; "" = every
    # lobe) matures as if the child were ``delay_months`` younger; nothing else changes
    delay_months: float = 0.0
    delay_lobe: str = ""

    @classmethod
    def from_truth(cls, planted: dict) -> SubjectSpec:
        """The spec of a subject from its truth JSON (older truths have no delay fields)."""
        return cls(**{k: planted[k] for k in cls.__dataclass_fields__ if k in planted})

    def lobe_delay(self, lobe: str) -> float:
        """Months by which ``lobe``'s white matter runs late in this child."""
        return self.delay_months if self.delay_lobe in ("", lobe) else 0.0


@dataclass
class SyntheticHead:
    """The image (int16 HU, [i, j, k] with RAS ``affine``) and its ground truth on the same grid."""

    hu: np.ndarray
    affine: np.ndarray
    lobes: np.ndarray  # uint8 1-4 within the brain
    brain: np.ndarray  # uint8 brain mask (grey + white matter, probability >= 0.5)
    wm_core: np.ndarray  # uint8 1-4: lobe white matter away from partial volume
    signal: np.ndarray  # float32 d HU / d age of the planted lobar white-matter maturation
    truth: dict  # planted parameters: anthropometry, attenuations, pose
    # float32 [i, j, k, lobe] (``responses=True``): d HU / d (lobe's white-matter HU), the image's
    # response to 1 HU more in one lobe's white matter (partial volume, resampling, blur)
    responses: np.ndarray | None = None


@functools.lru_cache(maxsize=2)
def cached_template(voxel_mm: float) -> Template:
    return load_template(voxel_mm)


def simulate_head(
    spec: SubjectSpec,
    schedule: MaturationSchedule,
    mode: str = "demo",
    deform: bool = True,
    cues: str = "all",
    responses: bool = False,
) -> SyntheticHead:
    """Simulate one head CT; deterministic for ``spec.seed``. ``deform=False`` keeps the
    template's own shape (used to build the registration atlas); ``cues`` is one of
    :data:`CUES`; ``responses`` adds each lobe's white-matter response map (one resampling and
    one blur per lobe more)."""
    if cues not in CUES:
        raise ValueError(f"unknown cues {cues!r}; choose from {', '.join(CUES)}")
    acq = ACQUISITIONS[mode]
    tpl = cached_template(acq.template_mm)
    rng = np.random.default_rng(spec.seed)
    # with cues="lobar" every age cue but the lobar white matter sees the reference age
    cue_age = None if cues == "all" else REFERENCE_AGE_MONTHS
    cue_spec = spec if cue_age is None else replace(spec, age_months=cue_age)
    body = _sample_body(cue_spec, tpl, rng)
    tissue = _sample_attenuation(spec, schedule, rng, cue_age, lobar_cue=cues != "none")
    hu_t = _compose_template_hu(tpl, body, tissue, cue_spec.age_months)
    wm_t = _lobar_white_matter(tpl, body)
    signal_t = _lobar_signal(tpl, wm_t, schedule, tissue["lobe_maturation_months"])
    if cues == "none":  # no tissue changes with age
        signal_t[:] = 0.0
    coords = _deformation(tpl, rng) if deform else None
    hu_t, signal_t, truth_t = (
        _warp(hu_t, coords, order=1, mode="nearest"),
        _warp(signal_t, coords, order=1, mode="constant"),
        _warp(tpl.truth, coords, order=0, mode="constant"),
    )
    pose = _sample_pose(rng)
    affine, to_template, shape = _acquisition_grid(tpl, body, pose, acq, cue_spec)

    site = SITES[spec.site]
    hu = _sample(hu_t, to_template, shape, order=1, cval=AIR_HU)
    code = _sample(truth_t, to_template, shape, order=0, cval=0)
    signal = _sample(signal_t, to_template, shape, order=1, cval=0.0)
    _add_head_holder(hu, affine, body, pose)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    hu = _scanner(hu, spacing, site, rng)
    ndimage.gaussian_filter(signal, sigma=_psf_sigma(spacing, site), truncate=3.0, output=signal)
    response = None
    if responses:
        response = np.stack(
            [
                ndimage.gaussian_filter(
                    _sample(
                        _warp((wm_t * (tpl.region == k)).astype(np.float32), coords, 1, "constant"),
                        to_template, shape, order=1, cval=0.0,
                    ),
                    sigma=_psf_sigma(spacing, site),
                    truncate=3.0,
                )
                for k in LOBES
            ],
            axis=-1,
        )  # fmt: skip
    lobes, brain, wm_core = decode_truth(code)
    truth = {
        **asdict(spec),
        "cues": cues,
        **{k: v for k, v in body.items() if k != "scale"},
        "scale_xyz": [float(v) for v in body["scale"]],
        "wm_hu": tissue["wm_hu"],
        "maturity_offset_months": tissue["maturity_offset_months"],
        "biological_age_months": tissue["biological_age_months"],
        "lobe_maturation_months": tissue["lobe_maturation_months"],
        "grey_matter_hu": tissue["grey"],
        "site_offset_hu": site.offset_hu,
        "rotation_deg": [float(v) for v in pose["angles"]],
        "translation_mm": [float(v) for v in pose["shift"]],
        "mode": mode,
    }
    return SyntheticHead(hu, affine, lobes, brain, wm_core, signal, truth, response)


# ---- subject parameters -------------------------------------------------------------------------
def _sample_body(spec: SubjectSpec, tpl: Template, rng) -> dict:
    """Brain volume, head shape and the age-dependent coverings of the brain (mm)."""
    age, sex = spec.age_months, spec.sex
    icv = norms.intracranial_volume_ml(age, sex)
    # individual size: WHO head-circumference SD, volume ~ circumference^3
    size_z = float(rng.standard_normal())
    brain_ml = (
        norms.brain_fraction(age)
        * icv
        * math.exp(3 * norms.head_circumference_cv(age, sex) * size_z)
    )
    iso = (brain_ml / tpl.brain_volume_ml) ** (1 / 3)
    cephalic = norms.cephalic_index(age, sex) + 3.5 * float(rng.standard_normal())
    ratio = math.sqrt(cephalic / tpl.cephalic_index)
    # extra-axial CSF: ~2-4 mm at birth, widest 4-6 mm at 4-7 months, 2-3 mm from 24 months
    csf = float(np.interp(age, [0, 5.5, 24, 48], [3.0, 5.0, 2.5, 2.5])) * math.exp(
        0.2 * rng.standard_normal()
    )
    thickness = {
        name: norms.bone_thickness_mm(age, sex, name) * math.exp(0.1 * rng.standard_normal())
        for name in BONE_NAMES.values()
    }
    closure = float(np.clip(rng.normal(14.0, 4.0), 4.0, 26.0))  # anterior fontanelle, months
    return {
        "intracranial_volume_norm_ml": icv,
        "brain_volume_planted_ml": brain_ml,
        "cephalic_index": cephalic,
        "scale": np.array([iso * ratio, iso / ratio, iso]),
        "iso_scale": iso,
        "extra_axial_csf_mm": csf,
        "bone_thickness_mm": thickness,
        "fontanelle_closure_months": closure,
        "fontanelle_radius_mm": 12.0 * max(0.0, 1.0 - age / closure) ** 0.7,
        "suture_width_mm": float(np.interp(age, [0, 24, 48], [2.0, 0.8, 0.5])),
        "metopic_open": bool(age < np.clip(rng.normal(6.0, 2.0), 3.0, 9.0)),
        "scalp_mm": float(np.interp(age, [0, 48], [3.0, 5.0]))
        * math.exp(0.15 * rng.standard_normal()),
    }


def _sample_attenuation(
    spec: SubjectSpec,
    schedule: MaturationSchedule,
    rng,
    cue_age: float | None = None,
    lobar_cue: bool = True,
) -> dict:
    """Tissue attenuations (HU) for this subject: the schedule plus individual variation.
    Every tissue but the lobar white matter sees ``cue_age`` when given (``cues="lobar"``);
    without ``lobar_cue`` the lobar white matter sees it too (``cues="none"``). The random
    draws are the same in every case."""
    # maturation runs a little early or late in each child, for all lobes together
    offset = MATURITY_SD_MONTHS * float(rng.standard_normal())
    on_time = max(0.0, spec.age_months + offset)
    if spec.delay_lobe and spec.delay_lobe not in LOBES.values():
        raise ValueError(f"{spec.subject_id}: unknown delay_lobe {spec.delay_lobe!r}")
    if spec.delay_months < 0:
        raise ValueError(f"{spec.subject_id}: delay_months must be >= 0")
    lobe_age = {n: max(0.0, on_time - spec.lobe_delay(n)) for n in LOBES.values()}
    # a delayed child's biological age: the mean of its lobes' maturation ages
    bio_age = float(np.mean(list(lobe_age.values()))) if spec.delay_months else on_time
    wm = {
        name: float(
            schedule.wm_hu(name, lobe_age[name] if lobar_cue or cue_age is None else cue_age)
            + INDIVIDUAL_SD_HU * rng.standard_normal()
        )
        for name in LOBES.values()
    }
    age = spec.age_months if cue_age is None else cue_age
    central_age = max(0.0, on_time - (0.0 if spec.delay_lobe else spec.delay_months))
    cue_bio_age = central_age if cue_age is None else cue_age
    central = schedule.central_wm_hu(cue_bio_age) + INDIVIDUAL_SD_HU * rng.standard_normal()
    growth = 1.0 - math.exp(-age / 14.0)
    return {
        "wm_hu": wm,
        "maturity_offset_months": offset,
        "biological_age_months": bio_age,
        "lobe_maturation_months": lobe_age,
        "central_wm": float(central),
        "grey": 30.0 + 6.5 * growth + 0.8 * float(rng.standard_normal()),  # 28-32 → 35-38 HU
        "deep_grey": 32.0 + 6.0 * growth + 0.8 * float(rng.standard_normal()),
        "cerebellum": 33.0 + 4.0 * growth + 0.8 * float(rng.standard_normal()),
        "csf": 5.0 + 1.5 * float(rng.standard_normal()),  # 2-10 HU
        "blood": 50.0 + 10.0 * math.exp(-age / 2.5) + 2.0 * float(rng.standard_normal()),
        "bone": (800.0 + 500.0 * age / 48.0) * math.exp(0.08 * rng.standard_normal()),
        "membrane": 40.0,  # sutures and fontanelle: fibrous tissue
        "scalp": 35.0 + 5.0 * float(rng.standard_normal()),  # 20-50 HU
    }


def _sample_pose(rng) -> dict:
    """Head pose in the scanner: rotations up to ±15°, translations up to ±10 mm."""
    angles = rng.uniform(-15.0, 15.0, size=3)
    return {
        "angles": angles,
        "shift": rng.uniform(-10.0, 10.0, size=3),
        "rotation": Rotation.from_euler("xyz", angles, degrees=True).as_matrix(),
    }


# ---- anatomy on the template grid ---------------------------------------------------------------
def _ramp(d: np.ndarray, h: float) -> np.ndarray:
    """Partial-volume occupancy of the region beyond a boundary at signed distance ``d``."""
    return np.clip(d / h + 0.5, 0.0, 1.0)


def _compose_template_hu(tpl: Template, body: dict, tissue: dict, age: float) -> np.ndarray:
    """Noise-free subject attenuation on the template grid (distances in subject mm)."""
    s = body["iso_scale"]
    h = tpl.voxel_mm * s
    d = tpl.dist * s

    wm_of_region = np.full(8, tissue["central_wm"], np.float32)
    grey_of_region = np.full(8, tissue["grey"], np.float32)
    for lobe_id, name in LOBES.items():
        wm_of_region[lobe_id] = tissue["wm_hu"][name]
    grey_of_region[DEEP_GREY] = tissue["deep_grey"]
    grey_of_region[CEREBELLUM] = tissue["cerebellum"]
    grey_of_region[INSULA] = tissue["grey"]
    csf_in = np.clip(1.0 - tpl.p_gm - tpl.p_wm, 0.0, 1.0)
    inside = tpl.p_gm * grey_of_region[tpl.region] + tpl.p_wm * wm_of_region[tpl.region]
    inside += csf_in * tissue["csf"]

    # coverings: extra-axial CSF (wider frontally), skull, scalp
    csf_w = body["extra_axial_csf_mm"] * np.where(tpl.bone == FRONTAL_BONE, 1.3, 0.7)
    bone_t = np.zeros(4, np.float32)
    for bone_id, name in BONE_NAMES.items():
        bone_t[bone_id] = body["bone_thickness_mm"][name]
    b1 = csf_w
    b2 = b1 + bone_t[tpl.bone]
    b3 = b2 + body["scalp_mm"]
    r0, r1, r2, r3 = _ramp(d, h), _ramp(d - b1, h), _ramp(d - b2, h), _ramp(d - b3, h)

    bone_hu = np.where(_open_vault(tpl, body, age, s), tissue["membrane"], tissue["bone"])
    blood = tissue["blood"]
    hu = (1.0 - r0) * np.where(tpl.sinus, blood, inside)
    hu += (r0 - r1) * np.where(tpl.sinus, blood, tissue["csf"])
    hu += (r1 - r2) * bone_hu + (r2 - r3) * tissue["scalp"] + r3 * AIR_HU
    return hu.astype(np.float32)


def _open_vault(tpl: Template, body: dict, age: float, s: float) -> np.ndarray:
    """Where the vault is not bone: sutures and the anterior fontanelle."""
    half = body["suture_width_mm"] / 2
    x = (tpl.affine[0, 0] * np.arange(tpl.dist.shape[0]) + tpl.affine[0, 3])[:, None, None]
    midline = (np.abs(x) * s < half) & np.isfinite(tpl.suture)
    if not body["metopic_open"]:
        midline = midline & (tpl.bone != FRONTAL_BONE)
    return midline | (tpl.suture * s < half) | (tpl.bregma * s < body["fontanelle_radius_mm"])


def _lobar_white_matter(tpl: Template, body: dict) -> np.ndarray:
    """White-matter occupancy inside the intracranial surface, outside the sinuses, on the
    template grid: the weight of a region's white-matter HU in the noise-free image."""
    s = body["iso_scale"]
    inside = 1.0 - _ramp(tpl.dist * s, tpl.voxel_mm * s)
    return inside * ~tpl.sinus * tpl.p_wm


def _lobar_signal(
    tpl: Template, wm: np.ndarray, schedule: MaturationSchedule, lobe_age: dict[str, float]
) -> np.ndarray:
    """d HU / d age of the noise-free template image caused by the lobes' planted maturation:
    white-matter occupancy ``wm`` × the lobe's HU slope at the lobe's maturation age."""
    span = schedule.mature_hu - schedule.unmyelinated_hu
    slope_of_region = np.zeros(8, np.float32)
    for lobe_id, name in LOBES.items():
        slope_of_region[lobe_id] = span * float(schedule.lobes[name].slope(lobe_age[name]))
    return (wm * slope_of_region[tpl.region]).astype(np.float32)


def _warp(volume: np.ndarray, coords: np.ndarray | None, order: int, mode: str) -> np.ndarray:
    """``volume`` resampled at the deformed template coordinates (unchanged without any)."""
    if coords is None:
        return volume
    return ndimage.map_coordinates(volume, coords, order=order, mode=mode, cval=0)


def _deformation(tpl: Template, rng) -> np.ndarray:
    """A random smooth deformation (≈3 mm, correlated over ≈40 mm) of the template: the
    coordinates (3, *shape) each output voxel samples.

    Displacements at control points every 40 mm are spread by separable Gaussian weights.
    """
    spacing_vox = 40.0 / tpl.voxel_mm
    weights = []
    for n in tpl.dist.shape:
        centres = np.arange(-spacing_vox, n + 2 * spacing_vox, spacing_vox)
        w = np.exp(-0.5 * ((np.arange(n)[:, None] - centres[None, :]) / (0.6 * spacing_vox)) ** 2)
        weights.append((w / w.sum(axis=1, keepdims=True)).astype(np.float32))
    amplitude = 3.0 / tpl.voxel_mm
    grid = np.indices(tpl.dist.shape, dtype=np.float32)
    # the affine part of the field over the brain (a rotation, shear or scaling of the whole
    # brain) is removed: pose and size are planted separately, and their truth must stay exact
    brain = (tpl.truth[::4, ::4, ::4] & BRAIN_BIT) > 0
    sample = grid[:, ::4, ::4, ::4][:, brain].T
    design = np.c_[sample, np.ones(len(sample))]
    for axis in range(3):
        coarse = rng.normal(0.0, amplitude, size=[w.shape[1] for w in weights]).astype(np.float32)
        field = np.einsum("ia,jb,kc,abc->ijk", *weights, coarse, optimize=True)
        coef = np.linalg.lstsq(design, field[::4, ::4, ::4][brain], rcond=None)[0]
        coef = coef.astype(np.float32)
        field -= sum(coef[a] * grid[a] for a in range(3)) + coef[3]
        grid[axis] += field
    return grid


# ---- the scanner --------------------------------------------------------------------------------
def _acquisition_grid(tpl, body, pose, acq: Acquisition, spec: SubjectSpec):
    """The acquisition affine (RAS), the output-index → template-index matrix, and the shape."""
    scale, rot, shift = body["scale"], pose["rotation"], pose["shift"]
    # template mm → world mm: about the cavity centre, scaled, rotated, shifted
    t2w = np.eye(4)
    t2w[:3, :3] = rot @ np.diag(scale)
    t2w[:3, 3] = shift - t2w[:3, :3] @ tpl.centre
    head = _head_points(tpl, body) @ t2w[:3, :3].T + t2w[:3, 3]
    lo, hi = head.min(axis=0), head.max(axis=0)
    fov = float(
        np.clip(
            1.15 * max(hi[0] - lo[0], hi[1] - lo[1]) + 20.0,
            acq.matrix * acq.pixel_mm[0],
            acq.matrix * acq.pixel_mm[1],
        )
    )
    pixel = round(fov / acq.matrix, 4)
    tilt = math.radians(spec.gantry_tilt_deg)
    # DICOM-like storage: i right→left, j anterior→posterior (tilted with the gantry), k up
    affine = np.eye(4)
    affine[:3, 0] = [-pixel, 0.0, 0.0]
    affine[:3, 1] = [0.0, -pixel * math.cos(tilt), -pixel * math.sin(tilt)]
    affine[:3, 2] = [0.0, 0.0, acq.slice_mm]
    # in-plane centre on the table axis; slices cover the head with 5 mm to spare at both ends
    affine[:3, 3] = -affine[:3, :2] @ np.array([acq.matrix, acq.matrix]) / 2
    k = np.linalg.solve(affine[:3, :3], (head - affine[:3, 3]).T)[2]
    margin = 5.0 / acq.slice_mm
    first = math.floor(k.min() - margin)
    n_slices = math.ceil(k.max() + margin) - first
    affine[:3, 3] += affine[:3, 2] * first
    to_template = np.linalg.inv(tpl.affine) @ np.linalg.inv(t2w) @ affine
    return affine, to_template, (acq.matrix, acq.matrix, n_slices)


def _head_points(tpl: Template, body: dict) -> np.ndarray:
    """Points (template mm) on the outer surface of this subject's head (scalp)."""
    outside = (
        body["extra_axial_csf_mm"] * 1.3
        + max(body["bone_thickness_mm"].values())
        + body["scalp_mm"]
    ) / body["iso_scale"]
    shell = np.argwhere((tpl.dist <= outside) & (tpl.dist > outside - 2 * tpl.voxel_mm))
    return shell @ tpl.affine[:3, :3].T + tpl.affine[:3, 3]


def _sample(volume, to_template, shape, order, cval):
    """Resample a template-grid volume onto the acquisition grid (only the head's bounding box)."""
    out = np.full(shape, cval, dtype=volume.dtype)
    corners = np.array(
        [
            [a, b, c, 1.0]
            for a in (0, volume.shape[0])
            for b in (0, volume.shape[1])
            for c in (0, volume.shape[2])
        ]
    )
    inside = corners @ np.linalg.inv(to_template).T
    lo = np.clip(np.floor(inside[:, :3].min(axis=0)).astype(int), 0, shape)
    hi = np.clip(np.ceil(inside[:, :3].max(axis=0)).astype(int) + 1, 0, shape)
    if np.any(hi <= lo):
        return out
    offset = to_template[:3, :3] @ lo + to_template[:3, 3]
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    out[box] = ndimage.affine_transform(
        volume,
        to_template[:3, :3],
        offset=offset,
        output_shape=tuple(hi - lo),
        order=order,
        mode="constant",
        cval=cval,
    )
    return out


def _add_head_holder(hu: np.ndarray, affine: np.ndarray, body: dict, pose: dict) -> None:
    """A foam-padded plastic head cradle under the occiput and the table below it (in place).

    Both are prisms along the table axis; x and y of a voxel never depend on its slice index
    (a gantry tilt only moves the slice planes along z), so the masks are drawn once in 2-D.
    """
    i = np.arange(hu.shape[0])[:, None]
    j = np.arange(hu.shape[1])[None, :]
    cx, cy = pose["shift"][:2]
    x = affine[0, 0] * i + affine[0, 1] * j + affine[0, 3] - cx
    y = affine[1, 0] * i + affine[1, 1] * j + affine[1, 3] - cy
    # half width and length of the head (template cavity 140 x 175 mm) plus its coverings
    half_width = 70.0 * body["scale"][0] + 20.0
    half_length = 87.5 * body["scale"][1] + 20.0
    rho = np.hypot(x / half_width, y / half_length)
    back = y < -20.0
    table_top = -half_length - 12.0
    objects = (
        ((rho >= 0.92) & (rho < 1.0) & back, -900.0),  # foam lining
        ((rho >= 1.0) & (rho < 1.0 + 4.0 / half_length) & back, 150.0),  # plastic cradle
        ((y < table_top) & (y > table_top - 8.0), 300.0),  # table
    )
    for mask, value in objects:
        columns = hu[mask]  # (pixels, slices): only air is replaced, never the head
        columns[columns <= AIR_HU + 1.0] = value
        hu[mask] = columns


def _scanner(hu: np.ndarray, spacing: np.ndarray, site: Site, rng) -> np.ndarray:
    """Quantum noise, then the reconstruction kernel's point-spread blur (which correlates the
    noise, as in real CT), then the site's calibration offset; quantised to int16 HU."""
    sigma = _psf_sigma(spacing, site)
    voxel_mm3 = float(np.prod(spacing))
    target_sd = NOISE_REF_HU * site.noise_scale * math.sqrt(NOISE_REF_VOXEL_MM3 / voxel_mm3)
    white_sd = target_sd / _noise_gain(sigma)
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(white_sd)
    ndimage.gaussian_filter(hu, sigma=sigma, truncate=3.0, output=hu)
    hu += np.float32(site.offset_hu)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def _psf_sigma(spacing: np.ndarray, site: Site) -> np.ndarray:
    """The point-spread function's Gaussian SD per axis, in voxels."""
    return np.array([site.psf_fwhm_mm, site.psf_fwhm_mm, spacing[2]]) / 2.355 / spacing


def _noise_gain(sigma) -> float:
    """SD of unit white noise after the Gaussian filter: sqrt of the summed squared weights."""
    gain = 1.0
    for s in sigma:
        impulse = np.zeros(2 * int(3.0 * s + 0.5) + 1)
        impulse[len(impulse) // 2] = 1.0
        gain *= float(np.sum(ndimage.gaussian_filter1d(impulse, s, truncate=3.0) ** 2))
    return math.sqrt(gain)
