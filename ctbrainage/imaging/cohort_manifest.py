"""The cohort manifest: schema and validation, with a reason for every excluded row (an image
must exist and be readable, so this module stands in the imaging layer)."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import nibabel as nib
import pandas as pd

from ctbrainage.core.layout import RunLayout

REQUIRED_COLUMNS = ("subject_id", "age_months", "sex", "site", "image")
_SUBJECT_ID = re.compile(r"[A-Za-z0-9_-]+")
_SEX_CODES = {"": "", "f": "F", "female": "F", "m": "M", "male": "M"}


class ManifestError(ValueError):
    """A manifest that cannot be validated at all (unreadable, empty or missing columns)."""


def _read_table(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {path}") from None
    except pd.errors.EmptyDataError:
        raise ManifestError(f"manifest is empty: {path}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ManifestError(f"cannot parse manifest {path}: {err}") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ManifestError(
            f"manifest {path} lacks required columns: {', '.join(missing)}"
            f" (found: {', '.join(table.columns)})"
        )
    if table.empty:
        raise ManifestError(f"manifest has no rows: {path}")
    for col in REQUIRED_COLUMNS:
        table[col] = table[col].str.strip()
    return table


def user_files_inside(out_dir: str | os.PathLike, manifest_path: str | os.PathLike) -> str | None:
    """Why writing into ``out_dir`` could change the user's files, or None: it is, or holds,
    the manifest or one of its images, or lies inside an image folder (a DICOM series). The
    manifest is read as text only; rows it cannot place are left to validation. A cohort that
    the pipeline generated into the folder's ``synthetic/`` is its own."""
    out = Path(out_dir).expanduser().resolve()
    manifest = Path(manifest_path).expanduser().resolve()
    if manifest.is_relative_to(RunLayout(out).synthetic.root):
        return None  # a cohort the pipeline generated into the run (``synthetic/``): not the user's
    if manifest.is_relative_to(out):
        return f"it holds the manifest {manifest}"
    try:
        images = _read_table(manifest)["image"]
    except ManifestError:
        return None
    for given in images:
        if not given:
            continue
        image = (manifest.parent / given).resolve()  # an absolute `given` stays itself
        if image.is_relative_to(out):
            return f"it holds the image {image} of the manifest {manifest}"
        if image.is_dir() and out.is_relative_to(image):
            return f"it lies inside the image folder {image} of the manifest {manifest}"
    return None


def _check_image(given: str, base: Path, series: str = ""):
    """(absolute path, DICOM (age, sex) or None, reason or None); ``series``: the digest of the
    DICOM folder's series to read (:func:`ctio.series_digest`), empty for any."""
    if not given:
        return None, None, "image missing"
    path = Path(given) if Path(given).is_absolute() else base / given
    if not path.exists():
        return path, None, f"image not found: {given}"
    if path.is_dir():
        from ctbrainage.imaging import ctio  # DICOM readers: loaded only for a DICOM folder

        try:
            return path, ctio.read_dicom_age_sex(path, series.strip() or None), None
        except ctio.ImageError as err:
            return path, None, f"image unreadable: {err}"
    if path.name.endswith((".nii", ".nii.gz")):
        try:
            nib.load(path)
        except Exception as err:
            return path, None, f"image unreadable: {err}"
        return path, None, None
    return path, None, f"image is neither a NIfTI file (.nii, .nii.gz) nor a DICOM folder: {given}"


def _check_age(text: str, age_range: tuple[float, float], what: str = "age_months"):
    """(age, reason or None)."""
    try:
        age = float(text)
    except ValueError:
        age = math.nan
    if not math.isfinite(age):
        return None, f"{what} {text!r} is not a number"
    if age < 0:
        return None, f"{what} {text} is negative"
    lo, hi = age_range
    if not lo <= age < hi:
        return None, f"{what} {text} is outside the allowed range [{lo:g}, {hi:g}) months"
    return age, None


def validate_manifest(
    manifest_path: str | os.PathLike, age_range: tuple[float, float] = (0.0, 48.0)
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check every row of a manifest; returns (valid rows, exclusions with a ``reason``).

    Only an unreadable or empty manifest, or one missing required columns, raises ManifestError;
    any other problem excludes just its row. Ages must lie in ``[lo, hi)`` months. An empty age
    or sex is taken from the DICOM PatientAge / PatientSex when the image is a DICOM folder
    (columns ``age_source`` and ``sex_source`` say where each came from). Valid rows get the
    absolute ``image_path``; extra columns are kept as given (text). Rows are numbered as in a
    spreadsheet (the header is row 1).
    """
    path = Path(manifest_path)
    table = _read_table(path)
    base = path.absolute().parent
    rows_of: dict[str, list[int]] = {}
    for number, sid in enumerate(table["subject_id"], start=2):
        rows_of.setdefault(sid, []).append(number)

    valid, excluded = [], []
    for number, row in enumerate(table.to_dict("records"), start=2):
        sid, reasons = row["subject_id"], []
        if not sid:
            reasons.append("subject_id missing")
        elif not _SUBJECT_ID.fullmatch(sid):
            # never echoed: an invalid id may be a name; the row number finds it in the file
            reasons.append(f"invalid subject_id in row {number} (use letters, digits, _ and -)")
        if sid and len(rows_of[sid]) > 1:
            reasons.append(f"duplicate subject_id (rows {', '.join(map(str, rows_of[sid]))})")

        image_path, dicom, problem = _check_image(row["image"], base, row.get("series", ""))
        reasons += [problem] if problem else []
        dicom_age, dicom_sex = dicom or (None, "")

        age, age_source = None, "manifest"
        if row["age_months"]:
            age, problem = _check_age(row["age_months"], age_range)
        elif dicom_age is not None:
            age_source = "dicom"
            age, problem = _check_age(f"{dicom_age:.4g}", age_range, "DICOM PatientAge")
        else:
            problem = "age missing" + (" (no PatientAge in the DICOM)" if dicom else "")
        reasons += [problem] if problem else []

        sex = _SEX_CODES.get(row["sex"].lower())
        sex_source = "manifest" if row["sex"] else ""
        if sex is None:
            reasons.append(f"unknown sex code {row['sex']!r} (use F, M or empty)")
        elif not sex and dicom_sex:
            sex, sex_source = dicom_sex, "dicom"

        if reasons:
            others = {k: v for k, v in row.items() if k != "subject_id"}
            shown = sid if _SUBJECT_ID.fullmatch(sid) else f"row {number}"
            excluded.append({"subject_id": shown, "reason": "; ".join(reasons), **others})
        else:
            valid.append(
                {
                    **row,
                    "age_months": age,
                    "sex": sex,
                    "age_source": age_source,
                    "sex_source": sex_source,
                    "image_path": str(image_path),
                }
            )
    added = ("age_source", "sex_source", "image_path")
    valid_cols = [c for c in table.columns if c not in added] + list(added)
    excluded_cols = ["subject_id", "reason"]
    excluded_cols += [c for c in table.columns if c not in excluded_cols]
    return pd.DataFrame(valid, columns=valid_cols), pd.DataFrame(excluded, columns=excluded_cols)
