"""A DICOM export tree → a cohort manifest: ``python -m ctbrainage.apps.dicom_index ROOT --out
CSV``.

Only headers are read. Files are grouped into series (SeriesInstanceUID) and series into
studies (StudyInstanceUID); one study is one subject. Its head CT series is the one with the
most slices among the CT series that are no localiser, are axial (slice normal within 45° of the
patient's z axis; gantry tilt is allowed) and have at least ``ctio.MIN_SLICES`` slices.

Nothing identifying from the headers is written or printed: the subject id is a keyed hash
(HMAC-SHA256 with the user's secret key) of the StudyInstanceUID, ``patient`` one of the
PatientID, ``series`` a one-way digest of the SeriesInstanceUID (:func:`ctio.series_digest`),
and the age is computed from the dates, which are not kept. Every series or file not used is
listed with its reason in ``<stem>_skipped.csv`` next to the manifest.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import math
import os
import re
import struct
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from ctbrainage.core.atomic import atomic_write_text
from ctbrainage.core.workers import progress_bar
from ctbrainage.imaging import ctio

__all__ = [
    "KEY_ENV",
    "MANIFEST_COLUMNS",
    "SKIPPED_COLUMNS",
    "BuildError",
    "build_manifest",
    "main",
    "skipped_path",
]

KEY_ENV = "CTBRAINAGE_KEY"
MIN_KEY_LENGTH = 8
MAX_AXIAL_DEG = 45.0  # largest angle between the slice normal and the patient's z axis
MANIFEST_COLUMNS = [
    *("subject_id", "age_months", "sex", "site", "image"),
    *("patient", "series", "age_from", "n_slices", "gantry_tilt_deg"),
]
SKIPPED_COLUMNS = ["subject_id", "series", "path", "files", "modality", "reason"]
NOT_DICOM = "not a DICOM file"
WITHHELD = "(name withheld: it holds a header identifier or a UID)"
_UID_LIKE = re.compile(r"\d+(\.\d+){4,}")  # 1.2.840.113619....: a DICOM UID in a file name
NO_SERIES = "no axial head CT series in the study"
# the header fields read: grouping, selection, geometry, age and sex; nothing else
_TAGS = [
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "PatientName",
    "SOPInstanceUID",
    "PatientBirthDate",
    "StudyDate",
    "PatientAge",
    "PatientSex",
    "Modality",
    "ImageType",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "GantryDetectorTilt",
    "NumberOfFrames",
]
_PIXEL_DATA = (0x7FE0, 0x0010)


class BuildError(ValueError):
    """The tree or the key cannot be used at all (the message says why; it holds no header
    value)."""


@dataclass(frozen=True)
class _Header:
    """What one file's header contributes (identifying values stay in memory only)."""

    path: Path  # relative to the root
    study: str
    series: str
    patient: str
    name: str  # PatientName
    sop: str  # SOPInstanceUID
    birth: str
    date: str
    age: str
    sex: str
    modality: str
    localiser: bool
    orientation: tuple[float, ...] | None
    position: tuple[float, ...] | None
    tilt: float  # GantryDetectorTilt, 0 if none
    frames: int


def skipped_path(out_csv: str | os.PathLike) -> Path:
    """The skipped table written next to the manifest ``out_csv``: ``<stem>_skipped.csv``."""
    out = Path(out_csv)
    return out.with_name(f"{out.stem}_skipped.csv")


def build_manifest(
    root: str | os.PathLike,
    out_csv: str | os.PathLike,
    key: str | None,
    site: str = "",
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Build the manifest of the DICOM tree ``root``; write it to ``out_csv`` and the skipped
    table to :func:`skipped_path`; return both (manifest, skipped).

    ``key`` (at least 8 characters) keys the pseudonyms: the same key gives the same ids.
    Raises BuildError for a missing or short key, a missing root or a tree without DICOM files.
    """
    key = _check_key(key)
    root, out_csv = Path(root), Path(out_csv)
    if not root.is_dir():
        raise BuildError(f"DICOM folder not found: {root}")
    if out_csv.is_dir():
        raise BuildError(f"the output is a folder, not a CSV file: {out_csv}")
    outputs = {out_csv.absolute(), skipped_path(out_csv).absolute()}  # of an earlier run
    headers, skipped = _read_tree(root, progress, outputs)
    if not headers and all(row["reason"] == NOT_DICOM for row in skipped):
        raise BuildError(f"no DICOM files under {root}")
    studies: dict[str, dict[str, list[_Header]]] = {}
    for header in headers:
        studies.setdefault(header.study, {}).setdefault(header.series, []).append(header)
    base = out_csv.absolute().parent
    rows = []
    for uid, series in studies.items():
        row = _study(uid, series, key, skipped)
        if row is not None:
            image = os.path.relpath(root.absolute() / row.pop("folder"), base)
            rows.append({**row, "site": site, "image": Path(image).as_posix()})
    secrets = _identifying_values(headers)
    named = sum(_names_someone(row["image"], secrets) for row in rows)
    if named:
        raise BuildError(
            f"{named} series folder(s) under {root} are named with header identifiers (patient "
            "ID or name, dates or UIDs), which the manifest would carry: rename them, or export "
            "with de-identified folder names, and build the manifest again"
        )
    for row in skipped:
        if _names_someone(row["path"], secrets):
            row["path"] = WITHHELD
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    manifest = manifest.sort_values(["image", "subject_id"], ignore_index=True)
    skipped_table = pd.DataFrame(skipped, columns=SKIPPED_COLUMNS)
    skipped_table = skipped_table.sort_values(
        ["path", "subject_id", "series", "reason"], ignore_index=True
    )
    atomic_write_text(out_csv, manifest.to_csv(index=False))
    atomic_write_text(skipped_path(out_csv), skipped_table.to_csv(index=False))
    return manifest, skipped_table


def _identifying_values(headers: list[_Header]) -> set[str]:
    """The header values no path may show (lower case; parts of names of 3+ characters)."""
    values = set()
    for h in headers:
        values |= {h.patient, h.birth, h.date, h.study, h.series, h.sop}
        values |= {part for part in re.split(r"[\^\s]+", h.name) if len(part) >= 3}
    return {v.lower() for v in values if len(v) >= 3}


def _names_someone(path: str, secrets: set[str]) -> bool:
    """Whether a relative path shows a header identifier or a UID."""
    text = path.lower()
    return bool(_UID_LIKE.search(text)) or any(secret in text for secret in secrets)


def _check_key(key: str | None) -> str:
    if not key:
        raise BuildError(
            f"a secret key is needed for the pseudonyms: set the environment variable {KEY_ENV}"
            " or pass --key (keep it: the same key gives the same ids)"
        )
    if len(key) < MIN_KEY_LENGTH:
        raise BuildError(f"the key is too short ({len(key)} characters; at least {MIN_KEY_LENGTH})")
    return key


def _pseudonym(key: str, kind: str, value: str) -> str:
    """12 hex digits of HMAC-SHA256(key, kind:value): one-way without the key."""
    message = f"{kind}:{value}".encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()[:12]


# ---- reading the tree ---------------------------------------------------------------------------
def _read_tree(root: Path, progress: bool, ignore: set[Path]) -> tuple[list[_Header], list[dict]]:
    """The headers of the DICOM files under ``root`` (less ``ignore``, absolute paths), and a
    skipped row for every other file."""
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.absolute() not in ignore)
    headers, skipped = [], []
    for path in progress_bar(paths, desc="DICOM headers", progress=progress, unit="file"):
        rel = path.relative_to(root)
        found = _read_header(path, rel)
        if isinstance(found, str):
            skipped.append(_skip(rel.as_posix(), 1, found))
        elif not (found.study and found.series):
            skipped.append(_skip(rel.as_posix(), 1, "no study or series UID (not an image)"))
        else:
            headers.append(found)
    return headers, skipped


def _read_header(path: Path, rel: Path) -> _Header | str:
    """One file's header, or why it is skipped."""
    try:
        with warnings.catch_warnings(), open(path, "rb") as fp:
            warnings.simplefilter("ignore")  # pydicom's warnings may quote header values
            ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=_TAGS)
            problem = _truncation(fp, ds)
            if problem:
                return f"unreadable DICOM: {problem}"
            return _header(ds, rel)
    except InvalidDicomError:
        return NOT_DICOM
    except Exception as err:
        return f"unreadable DICOM: {_scrub(err)}"


def _truncation(fp: BinaryIO, ds: Dataset) -> str | None:
    """Why a file that pydicom read up to its pixel data is incomplete (None: it is not).

    pydicom reads a cut-off header without complaint, so the end of the file is checked here:
    an image must go on with its pixel data, as long as their element declares.
    """
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None:
        return "incomplete file meta header"
    if syntax.is_deflated:
        return None  # the dataset is compressed: no file offsets to check
    start, size = fp.tell(), os.fstat(fp.fileno()).st_size
    head = fp.read(12)
    if len(head) < 8:
        sop_class = UID(str(ds.file_meta.get("MediaStorageSOPClassUID", "")))
        image = "Image Storage" in sop_class.name
        return "truncated: the file ends before its pixel data" if head or image else None
    endian = "<" if syntax.is_little_endian else ">"
    if struct.unpack(f"{endian}HH", head[:4]) != _PIXEL_DATA:
        return None  # float pixel data or the like: the reader judges it
    if syntax.is_implicit_VR:
        (length,), header_size = struct.unpack(f"{endian}I", head[4:8]), 8
    elif len(head) < 12:
        return "truncated: the file ends inside its pixel data"
    else:
        (length,), header_size = struct.unpack(f"{endian}I", head[8:12]), 12
    missing = start + header_size + length - size
    if length != 0xFFFFFFFF and missing > 0:  # undefined length: encapsulated (compressed)
        return f"truncated: {missing} of the pixel data's {length} bytes are missing"
    return None


def _scrub(err: Exception) -> str:
    """An error's words without quoted text and without any word holding a digit (UIDs, dates,
    ids, paths), which might come from a header."""
    text = str(err) or type(err).__name__
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)
    return re.sub(r"\S*\d\S*", "#", text)[:200]


def _text(ds: Dataset, tag: str) -> str:
    value = ds.get(tag)
    return "" if value is None else str(value).strip()


def _floats(ds: Dataset, tag: str, count: int) -> tuple[float, ...] | None:
    value = ds.get(tag)
    if value is None or isinstance(value, str | bytes) or len(value) != count:
        return None
    numbers = tuple(float(v) for v in value)
    return numbers if all(math.isfinite(v) for v in numbers) else None


def _header(ds: Dataset, rel: Path) -> _Header:
    image_type = ds.get("ImageType") or []
    image_type = [image_type] if isinstance(image_type, str) else list(image_type)
    return _Header(
        path=rel,
        study=_text(ds, "StudyInstanceUID"),
        series=_text(ds, "SeriesInstanceUID"),
        patient=_text(ds, "PatientID"),
        name=_text(ds, "PatientName"),
        sop=_text(ds, "SOPInstanceUID"),
        birth=_text(ds, "PatientBirthDate"),
        date=_text(ds, "StudyDate"),
        age=_text(ds, "PatientAge"),
        sex=_text(ds, "PatientSex").upper(),
        modality=re.sub(r"[^A-Z0-9_]", "", _text(ds, "Modality").upper())[:16],
        localiser="LOCALIZER" in [str(v).strip().upper() for v in image_type],
        orientation=_floats(ds, "ImageOrientationPatient", 6),
        position=_floats(ds, "ImagePositionPatient", 3),
        tilt=abs(float(ds.get("GantryDetectorTilt") or 0.0)),
        frames=int(ds.get("NumberOfFrames") or 1),
    )


# ---- one study ----------------------------------------------------------------------------------
def _skip(path: str, files: int, reason: str, sid="", series="", modality="") -> dict:
    return {
        "subject_id": sid,
        "series": series,
        "path": path,
        "files": files,
        "modality": modality,
        "reason": reason,
    }


def _folder(files: list[_Header]) -> Path:
    """The folder (relative to the root) that holds all ``files``."""
    return Path(os.path.commonpath([f.path.parent for f in files]) or ".")


def _normal(orientation: tuple[float, ...]) -> np.ndarray | None:
    """The unit slice normal of an ImageOrientationPatient (None if it is degenerate)."""
    normal = np.cross(orientation[:3], orientation[3:])
    length = float(np.linalg.norm(normal))
    return normal / length if length > 1e-6 else None


def _problem(files: list[_Header]) -> str | None:
    """Why a series cannot be a study's head CT (None: it can)."""
    first = files[0]
    if first.modality != "CT":
        return f"modality {first.modality or 'missing'}"
    if first.localiser:
        return "localiser"
    if first.frames > 1:
        return "multi-frame (enhanced) DICOM is not supported"
    normal = None if first.orientation is None else _normal(first.orientation)
    if normal is None or any(f.position is None for f in files):
        return "no slice geometry (orientation or position missing)"
    angle = math.degrees(math.acos(min(1.0, abs(float(normal[2])))))
    if angle > MAX_AXIAL_DEG:
        return f"not axial (slice normal {angle:.0f}° from the patient's z axis)"
    if len(files) < ctio.MIN_SLICES:
        return f"too few slices ({len(files)}; at least {ctio.MIN_SLICES})"
    return None


def _tilt(files: list[_Header]) -> float:
    """The gantry tilt (degrees): of the slice stacking against the normal, else the header's."""
    first = files[0]
    normal = None if first.orientation is None else _normal(first.orientation)
    if normal is None or any(f.position is None for f in files):
        return round(first.tilt, 2)
    positions = np.array([f.position for f in files], dtype=np.float64)
    along = positions @ normal
    stack = positions[np.argmax(along)] - positions[np.argmin(along)]
    separation = float(stack @ normal)
    if separation > 0:
        tilt = math.degrees(math.atan2(np.linalg.norm(stack - separation * normal), separation))
        if tilt > ctio.TILT_TOLERANCE_DEG:
            return round(tilt, 2)
    return round(first.tilt, 2)


def _date(text: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        return None


def _age(header: _Header) -> tuple[float, str] | None:
    """Age in months and where it came from: the birth and study dates, else PatientAge."""
    birth, date = _date(header.birth), _date(header.date)
    if birth and date and date >= birth:
        return (date - birth).days / ctio.DAYS_PER_MONTH, "birth and study dates"
    age = ctio.parse_dicom_age(header.age)
    return None if age is None else (age, "PatientAge")


def _study(
    uid: str, series: dict[str, list[_Header]], key: str, skipped: list[dict]
) -> dict | None:
    """The manifest row of one study (with its ``folder``), or None; appends to ``skipped``
    every series not used and, for a study without a row, the study itself."""
    sid = "s" + _pseudonym(key, "study", uid)
    groups = [
        (ctio.series_digest(s), sorted(files, key=lambda f: f.path)) for s, files in series.items()
    ]

    def skip(digest: str, files: list[_Header], reason: str) -> None:
        path = _folder(files).as_posix()
        skipped.append(_skip(path, len(files), reason, sid, digest, files[0].modality))

    usable = []
    for digest, files in groups:
        problem = _problem(files)
        if problem:
            skip(digest, files, problem)
        else:
            usable.append((digest, files))
    if not usable:
        every = [f for _, files in groups for f in files]
        skipped.append(_skip(_folder(every).as_posix(), len(every), NO_SERIES, sid))
        return None
    usable.sort(key=lambda item: (-len(item[1]), item[0]))
    digest, files = usable[0]
    for other, other_files in usable[1:]:
        n, m = len(other_files), len(files)
        reason = (
            f"fewer slices ({n}) than the chosen series ({m})"
            if n < m
            else f"as many slices ({n}) as the chosen series; one series per study"
        )
        skip(other, other_files, reason)
    first = files[0]
    age = _age(first)
    if age is None:
        skip(digest, files, "no age: neither birth and study dates nor PatientAge")
        return None
    return {
        "subject_id": sid,
        "age_months": round(age[0], 3),
        "sex": first.sex if first.sex in ("F", "M") else "",
        "folder": _folder(files),
        "patient": "p" + _pseudonym(key, "patient", first.patient) if first.patient else "",
        "series": digest,
        "age_from": age[1],
        "n_slices": len(files),
        "gantry_tilt_deg": _tilt(files),
    }


# ---- command line -------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``python -m ctbrainage.apps.dicom_index``: 0 when subjects were found, 1 when none, 2 when
    the
    input cannot be used (missing folder or key, no DICOM files)."""
    parser = argparse.ArgumentParser(
        prog="python -m ctbrainage.apps.dicom_index",
        description="Write a cohort manifest (CSV) for the head CT studies of a DICOM export.",
    )
    parser.add_argument("root", type=Path, help="the DICOM export folder (searched recursively)")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="the manifest CSV to write; the skipped table goes next to it (<stem>_skipped.csv)",
    )
    parser.add_argument(
        "--key",
        help=f"secret key of the pseudonyms (at least {MIN_KEY_LENGTH} characters); safer in the"
        f" environment variable {KEY_ENV} (a command line is visible to other users)",
    )
    parser.add_argument("--site", default="", help="value of the site column (default: empty)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    key = args.key or os.environ.get(KEY_ENV, "")
    try:
        manifest, skipped = build_manifest(
            args.root, args.out, key, args.site, progress=not args.no_progress
        )
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    studies = (set(manifest["subject_id"]) | set(skipped["subject_id"])) - {""}
    noun = "study" if len(studies) == 1 else "studies"
    print(
        f"{len(studies)} {noun} → {len(manifest)} subjects in {args.out}; {len(skipped)}"
        f" series/files skipped (see {skipped_path(args.out)})"
    )
    return 0 if len(manifest) else 1


if __name__ == "__main__":
    sys.exit(main())
