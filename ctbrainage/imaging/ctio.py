"""Byte-deterministic NIfTI writing (atomic) and the readers of CT scans (a NIfTI file or a DICOM
series folder) into int16 Hounsfield-unit SimpleITK images."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, CTImageStorage

from ctbrainage.core.atomic import atomic_path

__all__ = [
    "CTScan",
    "ImageError",
    "parse_dicom_age",
    "ras_to_sitk",
    "read_ct",
    "read_dicom_age_sex",
    "resample_to_orthogonal",
    "series_digest",
    "sitk_to_ras",
    "write_nifti",
]

DAYS_PER_MONTH = 365.25 / 12
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _has_shear(affine: np.ndarray, tol: float = 1e-6) -> bool:
    cols = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return not np.allclose(cols.T @ cols, np.eye(3), atol=tol)


def write_nifti(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray) -> None:
    """Write ``array`` ([i, j, k]) with RAS+ mm ``affine`` as NIfTI-1, atomically and reproducibly.

    The dtype is kept (bool becomes uint8). sform_code is 1 (scanner); qform_code is 1 too,
    or 0 when the affine has shear, which a qform cannot represent.
    """
    name = os.fspath(path)
    if not name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"expected a .nii or .nii.gz path, got {name!r}")
    arr = np.asarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {aff.shape}")
    img = nib.Nifti1Image(arr, aff, dtype=arr.dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(aff, code=0 if _has_shear(aff) else 1)
    img.set_sform(aff, code=1)
    data = img.to_bytes()
    with atomic_path(name) as tmp, open(tmp, "wb") as f:
        if name.endswith(".gz"):
            # Empty name and mtime 0 make the gzip header independent of path and time.
            with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0, compresslevel=1) as gz:
                gz.write(data)
        else:
            f.write(data)


# ---- readers ------------------------------------------------------------------------------------
HU_RANGE = (-1024, 3071)  # what int16 CT HU images are clipped to
MIN_SLICES = 10
TILT_TOLERANCE_DEG = 0.01  # stacking vectors closer than this to the slice normal count as straight
# header fields read from DICOM files: geometry, series grouping, age and sex; nothing else
_DICOM_TAGS = [
    "SeriesInstanceUID",
    "Modality",
    "ImageType",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "GantryDetectorTilt",
    "PatientAge",
    "PatientSex",
]


class ImageError(ValueError):
    """A scan that cannot be used; the message states the problem (callers add the subject id)."""


@dataclass(repr=False)
class CTScan:
    """A head CT: int16 HU SimpleITK image (LPS, orthonormal direction), age and sex if known."""

    image: sitk.Image
    age_months: float | None
    sex: str  # "F", "M" or ""
    gantry_tilt_deg: float  # 0 if none
    source: str  # "nifti" or "dicom"

    def __repr__(self) -> str:
        spacing = ", ".join(f"{v:.4g}" for v in self.image.GetSpacing())
        return (
            f"CTScan(size={self.image.GetSize()}, spacing=({spacing}), "
            f"age_months={self.age_months}, sex={self.sex!r}, "
            f"gantry_tilt_deg={self.gantry_tilt_deg:.2f}, source={self.source!r})"
        )


def sitk_to_ras(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """The voxel array ``[i, j, k]`` and RAS+ mm affine of a SimpleITK image."""
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    lps = np.eye(4)
    lps[:3, :3] = np.reshape(image.GetDirection(), (3, 3)) * np.asarray(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return array, _RAS_TO_LPS @ lps


def _kji(array: np.ndarray) -> np.ndarray:
    """C-contiguous ``[k, j, i]`` copy or view of ``[i, j, k]`` (bool as uint8), for SimpleITK."""
    arr = np.asarray(array)
    return np.ascontiguousarray(
        (arr.view(np.uint8) if arr.dtype == bool else arr).transpose(2, 1, 0)
    )


def ras_to_sitk(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A SimpleITK image from ``array`` ``[i, j, k]`` and an orthogonal RAS+ mm ``affine``."""
    lps = _RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise ValueError("the affine has shear; resample it with resample_to_orthogonal first")
    u, _, vt = np.linalg.svd(direction)  # nearest exactly orthonormal matrix
    image = sitk.GetImageFromArray(_kji(array))
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    image.SetDirection((u @ vt).ravel().tolist())
    return image


def _slice_geometry(affine: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Unit slice normal (on the side of the stacking vector), slice separation, tilt (degrees)."""
    c0, c1, c2 = (affine[:3, i] for i in range(3))
    u0, u1 = c0 / np.linalg.norm(c0), c1 / np.linalg.norm(c1)
    if abs(u0 @ u1) > 1e-4:
        raise ValueError("the in-plane axes (affine columns 0 and 1) are not orthogonal")
    normal = np.cross(u0, u1)
    normal /= np.linalg.norm(normal)
    separation = float(c2 @ normal)
    if separation < 0:
        normal, separation = -normal, -separation
    if separation < 1e-6 * np.linalg.norm(c2):
        raise ValueError("the slices are stacked within their own plane")
    tilt = math.degrees(math.atan2(np.linalg.norm(c2 - separation * normal), separation))
    return normal, separation, tilt


def resample_to_orthogonal(
    array: np.ndarray, affine: np.ndarray, cval: float = HU_RANGE[0], order: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a volume with a sheared RAS affine (gantry tilt) onto an orthogonal grid.

    The new grid keeps the in-plane axes and spacing (columns 0 and 1), puts the slice axis
    along the plane normal with the slice separation as spacing, and covers the whole original
    extent; voxels outside it get ``cval``. Interpolation is linear (``order=1``) or nearest
    neighbour (``order=0``, for label maps). Returns the float32 array and its affine.
    """
    if order not in (0, 1):
        raise ValueError(f"order must be 0 (nearest) or 1 (linear), got {order}")
    src = np.asarray(affine, dtype=np.float64)
    normal, separation, _ = _slice_geometry(src)
    dst = src.copy()
    dst[:3, 2] = normal * separation
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in array.shape])), float)
    idx = np.linalg.solve(dst[:3, :3], (corners @ src[:3, :3].T).T).T  # corners in the new grid
    lo, hi = np.floor(idx.min(axis=0) + 1e-6), np.ceil(idx.max(axis=0) - 1e-6)
    dst[:3, 3] = src[:3, 3] + dst[:3, :3] @ lo
    to_src = np.linalg.solve(src, dst)  # new voxel index -> original voxel index
    near = np.abs(to_src - np.rint(to_src)) < 1e-9
    to_src[near] = np.rint(to_src[near])  # exact slice indices: no blending across slices
    # SimpleITK in index space (unit spacing, identity direction): multi-threaded, ~8x scipy
    source = sitk.GetImageFromArray(_kji(array))
    transform = sitk.AffineTransform(to_src[:3, :3].ravel().tolist(), to_src[:3, 3].tolist())
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(n) + 1 for n in hi - lo])
    resampler.SetTransform(transform)
    resampler.SetInterpolator(sitk.sitkLinear if order == 1 else sitk.sitkNearestNeighbor)
    resampler.SetDefaultPixelValue(float(cval))
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    out = sitk.GetArrayFromImage(resampler.Execute(source)).transpose(2, 1, 0)
    return out, dst


def _check_hu(array: np.ndarray) -> None:
    """Plausibility rule: the 1st percentile is air (<= -500 HU), the 99.9th dense (>= 100 HU)."""
    flat = np.asarray(array).ravel(order="K")
    sample = flat[:: max(1, flat.size // 2_000_000)].astype(np.float64)
    if not np.isfinite(sample).all():
        raise ImageError("the image contains NaN or infinite values")
    lo, hi = np.percentile(sample, [1, 99.9])
    if lo > -500 or hi < 100:
        raise ImageError(
            f"intensities are not CT Hounsfield units (range {lo:.4g}..{hi:.4g}); a head CT"
            " has air (1st percentile <= -500) and bone (99.9th percentile >= 100)"
        )


def _make_scan(array, affine, age, sex, source, header_tilt=0.0) -> CTScan:
    if not np.issubdtype(np.asarray(array).dtype, np.number) or np.iscomplexobj(array):
        raise ImageError(f"unsupported voxel type {np.asarray(array).dtype}")
    _check_hu(array)
    affine = np.asarray(affine, dtype=np.float64)
    try:
        normal, separation, tilt = _slice_geometry(affine)
    except ValueError as err:
        raise ImageError(f"unusable geometry: {err}") from None
    if tilt > TILT_TOLERANCE_DEG:
        array, affine = resample_to_orthogonal(array, affine)
    else:
        affine = affine.copy()
        affine[:3, 2] = normal * separation
        tilt = header_tilt
    if np.issubdtype(array.dtype, np.floating):
        array = np.rint(array)
    hu = np.clip(array, *HU_RANGE).astype(np.int16)
    return CTScan(ras_to_sitk(hu, affine), age, sex, round(float(tilt), 4), source)


def read_ct(path: str | os.PathLike, series: str | None = None) -> CTScan:
    """Read a NIfTI file (.nii/.nii.gz) or a DICOM series folder as an int16 HU CT scan.

    Gantry-tilted (sheared) geometry is resampled onto an orthogonal grid. Only age and sex are
    taken from DICOM headers. ``series`` (a :func:`series_digest`) keeps only that series'
    files of a DICOM folder that holds several. Raises ImageError for anything that is not a
    usable CT.
    """
    path = Path(path)
    if path.is_dir():
        return _read_dicom(path, series)
    if not path.exists():
        raise ImageError(f"image not found: {path}")
    if series:
        raise ImageError("a series applies to a DICOM folder only, not to a file")
    if path.name.endswith((".nii", ".nii.gz")):
        return _read_nifti(path)
    raise ImageError(f"not a NIfTI file (.nii, .nii.gz) or a DICOM folder: {path.name}")


def _read_nifti(path: Path) -> CTScan:
    try:
        img = nib.load(path)
        array = np.asanyarray(img.dataobj)
        affine = img.affine
    except Exception as err:
        raise ImageError(f"unreadable NIfTI: {err}") from None
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise ImageError(f"expected a 3-D image, got shape {array.shape}")
    return _make_scan(array, affine, None, "", "nifti")


def read_map(path: str | os.PathLike) -> sitk.Image:
    """A float32 NIfTI map (not HU: no plausibility rule, no rounding) as a SimpleITK image;
    a gantry-tilted (sheared) grid is resampled onto an orthogonal one, 0 outside."""
    img = nib.load(os.fspath(path))
    array, affine = np.asarray(img.dataobj, dtype=np.float32), img.affine
    if _has_shear(affine):
        array, affine = resample_to_orthogonal(array, affine, cval=0.0)
    return ras_to_sitk(array, affine)


def parse_dicom_age(value) -> float | None:
    """DICOM PatientAge ("018M", "002W", "003Y", "010D") in months; None if absent or malformed."""
    match = re.fullmatch(r"\s*(\d{1,3})\s*([DWMY])\s*", str(value or ""), flags=re.IGNORECASE)
    if not match:
        return None
    per_unit = {"D": 1 / DAYS_PER_MONTH, "W": 7 / DAYS_PER_MONTH, "M": 1.0, "Y": 12.0}
    return int(match[1]) * per_unit[match[2].upper()]


def series_digest(uid: str) -> str:
    """A one-way digest of a SeriesInstanceUID (16 hex digits): names a series without the UID."""
    return hashlib.sha256(str(uid).strip("\0 ").encode()).hexdigest()[:16]


def _in_series(ds: Dataset, series: str | None) -> bool:
    """Whether the file belongs to series ``series`` (a :func:`series_digest`; None: any)."""
    return not series or (
        "SeriesInstanceUID" in ds and series_digest(ds.SeriesInstanceUID) == series
    )


def _age_sex(ds: Dataset) -> tuple[float | None, str]:
    sex = str(ds.get("PatientSex", "") or "").strip().upper()
    return parse_dicom_age(ds.get("PatientAge")), sex if sex in ("F", "M") else ""


def _dicom_files(folder: Path, tags: list[str]) -> Iterator[tuple[Path, Dataset]]:
    """Headers (only ``tags``) of the DICOM files under ``folder``; other files are skipped."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
        except InvalidDicomError:
            continue
        except Exception as err:
            raise ImageError(f"unreadable DICOM: {path.name}: {err}") from None
        if "TransferSyntaxUID" not in ds.get("file_meta", {}):
            raise ImageError(f"unreadable DICOM: {path.name}: incomplete file meta header")
        yield path, ds


def read_dicom_age_sex(
    folder: str | os.PathLike, series: str | None = None
) -> tuple[float | None, str]:
    """Age (months) and sex of the first DICOM file in ``folder`` (of series ``series``, a
    :func:`series_digest`, when given), reading only those fields."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"not a folder: {folder}")
    seen = False
    for _, ds in _dicom_files(folder, ["PatientAge", "PatientSex", "SeriesInstanceUID"]):
        if _in_series(ds, series):
            return _age_sex(ds)
        seen = True
    raise ImageError(
        f"no series {series} in the folder" if seen else "no DICOM files in the folder"
    )


def _slice_hu(path: Path) -> np.ndarray:
    """One slice in HU (rescale applied); SimpleITK (GDCM) decodes what pydicom cannot."""
    try:
        ds = pydicom.dcmread(path)
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
    except Exception as err:
        raise ImageError(f"unreadable DICOM: {path.name}: {err}") from None
    try:
        pixels = ds.pixel_array
    except Exception as err:
        if ds.file_meta.get("TransferSyntaxUID", UID("")).is_compressed:
            try:  # no pydicom decoder for this compression: GDCM decodes and rescales
                return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[0].astype(np.float32)
            except RuntimeError:
                pass
        raise ImageError(f"unreadable DICOM: {path.name}: {err}") from None
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def _read_dicom(folder: Path, series: str | None = None) -> CTScan:
    headers = list(_dicom_files(folder, _DICOM_TAGS))
    if not headers:
        raise ImageError("no DICOM files in the folder")
    headers = [(path, ds) for path, ds in headers if _in_series(ds, series)]
    if not headers:
        raise ImageError(f"no series {series} in the folder")
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    needed = ("SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "Rows")
    for path, ds in headers:
        if not all(t in ds for t in needed):
            if ds.file_meta.get("MediaStorageSOPClassUID") == CTImageStorage:
                raise ImageError(f"unreadable DICOM: {path.name}: CT image header incomplete")
            continue  # not an image slice (DICOMDIR, dose report, ...)
        if "LOCALIZER" not in ds.get("ImageType", []):
            groups.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds))
    if not groups:
        raise ImageError("no DICOM image series in the folder")
    ct = [s for s in groups.values() if str(s[0][1].get("Modality", "")).upper() == "CT"]
    if not ct:
        modality = max(groups.values(), key=len)[0][1].get("Modality", "") or "missing"
        raise ImageError(f"modality {modality}, not CT")
    files = max(ct, key=len)
    first = files[0][1]
    if int(first.get("NumberOfFrames", 1) or 1) > 1:
        raise ImageError("multi-frame (enhanced) DICOM is not supported; export single slices")
    iop = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    spacing = np.asarray(first.get("PixelSpacing", [1.0, 1.0]), dtype=np.float64)
    for _, ds in files:
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise ImageError("inconsistent slices: image sizes differ within the series")
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, float), iop, atol=1e-4):
            raise ImageError("inconsistent slices: orientations differ within the series")
        if not np.allclose(np.asarray(ds.get("PixelSpacing", [1.0, 1.0]), float), spacing):
            raise ImageError("inconsistent slices: pixel spacings differ within the series")
    if len(files) < MIN_SLICES:
        raise ImageError(f"too few slices ({len(files)}; at least {MIN_SLICES} needed)")

    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    positions = np.array([ds.ImagePositionPatient for _, ds in files], dtype=np.float64)
    order = np.argsort(positions @ normal, kind="stable")
    files, positions = [files[i] for i in order], positions[order]
    steps = np.diff(positions @ normal)
    tolerance = max(0.01 * float(np.median(steps)), 0.05)
    if steps.min() < tolerance or steps.max() - steps.min() > tolerance:
        raise ImageError(
            f"missing or inconsistent slices: spacing varies from {steps.min():.3g}"
            f" to {steps.max():.3g} mm"
        )
    stack = (positions[-1] - positions[0]) / (len(files) - 1)
    line = positions[0] + np.arange(len(files))[:, None] * stack
    if np.abs(positions - line).max() > tolerance:
        raise ImageError("missing or inconsistent slices: slice positions are not on a line")

    slices = [_slice_hu(path) for path, _ in files]
    if any(s.shape != (first.Rows, first.Columns) for s in slices):
        raise ImageError("inconsistent slices: pixel data do not match Rows and Columns")
    lps = np.eye(4)
    lps[:3, 0] = row * spacing[1]  # columns advance along the row direction
    lps[:3, 1] = col * spacing[0]
    lps[:3, 2] = stack
    lps[:3, 3] = positions[0]
    array = np.stack(slices).transpose(2, 1, 0)  # [k, row, column] -> [i, j, k]
    tilt = abs(float(first.get("GantryDetectorTilt", 0) or 0))
    return _make_scan(array, _RAS_TO_LPS @ lps, *_age_sex(first), "dicom", header_tilt=tilt)
