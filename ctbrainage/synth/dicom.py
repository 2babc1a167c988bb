"""The synthetic cohort's DICOM writer: a CT series of one slice per file, byte-deterministic."""

from __future__ import annotations

import datetime as dt
import math
import os

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

from ctbrainage.imaging.ctio import DAYS_PER_MONTH, atomic_path

__all__ = ["write_ct_dicom_series"]

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _ds(value: float) -> DSfloat:
    return DSfloat(float(value) + 0.0, auto_format=True)  # + 0.0 turns -0.0 into 0.0


def _as_date(value: str | dt.date) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.datetime.strptime(value, "%Y%m%d").date()


def _dicom_age(age_months: float) -> str:
    """DICOM AS string in completed units: weeks below one month, else months (years >= 1000 M)."""
    if age_months < 0:
        raise ValueError("age_months must be >= 0")
    if age_months < 1:
        return f"{int(age_months * DAYS_PER_MONTH / 7 + 1e-6):03d}W"
    if age_months < 1000:
        return f"{int(age_months + 1e-6):03d}M"
    return f"{int(age_months / 12 + 1e-6):03d}Y"


def _dicom_sex(sex: str | None) -> str:
    s = (sex or "").strip().upper()[:1]
    return s if s in ("F", "M") else "O"


def write_ct_dicom_series(
    folder: str | os.PathLike,
    hu: np.ndarray,
    affine: np.ndarray,
    *,
    age_months: float,
    sex: str,
    patient_name: str,
    patient_id: str,
    study_date: str | dt.date,
    uid_seed: str,
    series_description: str = "synthetic head CT",
) -> None:
    """Write ``hu`` ([i, j, k], RAS+ ``affine``) atomically as CT series ``folder/IM0001.dcm``, ....

    Slice k holds ``hu[:, :, k].T`` (rows = j, columns = i) at LPS(affine @ [0, 0, k, 1]).
    Pixels are stored as uint16 = HU + 1024 (HU clipped to [-1024, 3071]) with
    RescaleIntercept -1024. A slice-stacking vector oblique to the slice normal is recorded
    as an (unsigned) GantryDetectorTilt in degrees. All UIDs derive from ``uid_seed``, so equal
    inputs give byte-identical files. Identifying fields are filled on purpose (synthetic data).
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"hu must be 3-D [i, j, k], got shape {hu.shape}")
    aff = _RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4):
        raise ValueError("affine must be 4x4")
    col0, col1, col2 = aff[:3, 0], aff[:3, 1], aff[:3, 2]
    row_cos = col0 / np.linalg.norm(col0)
    col_cos = col1 / np.linalg.norm(col1)
    if abs(row_cos @ col_cos) > 1e-6:
        raise ValueError("in-plane axes (affine columns 0 and 1) must be orthogonal")
    normal = np.cross(row_cos, col_cos)
    normal /= np.linalg.norm(normal)
    thickness = abs(col2 @ normal)
    tilt = math.degrees(math.acos(min(1.0, thickness / np.linalg.norm(col2))))

    vals = np.rint(hu) if np.issubdtype(hu.dtype, np.floating) else hu
    stored = (np.clip(vals.astype(np.int32), -1024, 3071) + 1024).astype("<u2")

    date = _as_date(study_date)
    date_str = date.strftime("%Y%m%d")
    birth = date - dt.timedelta(days=round(age_months * DAYS_PER_MONTH))
    study_uid = generate_uid(entropy_srcs=[uid_seed, "study"])
    series_uid = generate_uid(entropy_srcs=[uid_seed, "series", series_description])
    frame_uid = generate_uid(entropy_srcs=[uid_seed, "frame"])

    base = Dataset()
    base.SpecificCharacterSet = "ISO_IR 192"
    base.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    base.SOPClassUID = CTImageStorage
    base.StudyDate = base.SeriesDate = base.AcquisitionDate = base.ContentDate = date_str
    base.StudyTime = base.SeriesTime = base.AcquisitionTime = base.ContentTime = "090000"
    base.AccessionNumber = f"ACC{study_uid.split('.')[-1][-8:]}"
    base.Modality = "CT"
    base.Manufacturer = "ctbrainage synthetic"
    base.InstitutionName = "Synthetic Children's Hospital"
    base.ReferringPhysicianName = "Synthetic^Referrer"
    base.StationName = "SYNTHCT01"
    base.StudyDescription = "Head CT"
    base.SeriesDescription = series_description
    base.PatientName = patient_name
    base.PatientID = patient_id
    base.PatientBirthDate = birth.strftime("%Y%m%d")
    base.PatientSex = _dicom_sex(sex)
    base.PatientAge = _dicom_age(age_months)
    base.BodyPartExamined = "HEAD"
    base.SliceThickness = _ds(thickness)
    base.KVP = _ds(100)
    base.SpacingBetweenSlices = _ds(thickness)
    if tilt > 1e-4:
        base.GantryDetectorTilt = _ds(tilt)
    base.PatientPosition = "HFS"
    base.StudyInstanceUID = study_uid
    base.SeriesInstanceUID = series_uid
    base.StudyID = "1"
    base.SeriesNumber = 1
    base.AcquisitionNumber = 1
    base.ImageOrientationPatient = [_ds(v) for v in (*row_cos, *col_cos)]
    base.FrameOfReferenceUID = frame_uid
    base.PositionReferenceIndicator = ""
    base.SamplesPerPixel = 1
    base.PhotometricInterpretation = "MONOCHROME2"
    base.Rows, base.Columns = int(hu.shape[1]), int(hu.shape[0])
    base.PixelSpacing = [_ds(np.linalg.norm(col1)), _ds(np.linalg.norm(col0))]
    base.BitsAllocated, base.BitsStored, base.HighBit = 16, 12, 11
    base.PixelRepresentation = 0
    base.WindowCenter, base.WindowWidth = _ds(40), _ds(80)
    base.RescaleIntercept, base.RescaleSlope = _ds(-1024), _ds(1)
    base.RescaleType = "HU"

    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for k in range(hu.shape[2]):
            sop_uid = generate_uid(entropy_srcs=[uid_seed, "sop", series_description, str(k)])
            ds = Dataset()
            ds.update(base)
            ds.SOPInstanceUID = sop_uid
            ds.InstanceNumber = k + 1
            pos = (aff @ np.array([0.0, 0.0, k, 1.0]))[:3]
            ds.ImagePositionPatient = [_ds(v) for v in pos]
            ds.SliceLocation = _ds(pos @ normal)
            ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
            ds["PixelData"].VR = "OW"
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CTImageStorage
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta = meta
            ds.preamble = b"\0" * 128
            ds.save_as(tmp / f"IM{k + 1:04d}.dcm", enforce_file_format=True)
