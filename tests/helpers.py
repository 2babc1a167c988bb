"""Small synthetic inputs shared by several test modules (``import helpers``)."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd


def affine(lin, origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    """A 4x4 affine from a 3x3 linear part and an origin."""
    a = np.eye(4)
    a[:3, :3] = lin
    a[:3, 3] = origin
    return a


def tilted_affine(deg=15.0, dk=1.25) -> np.ndarray:
    """The grid of a gantry-tilted series: slices stacked along a direction tilted by ``deg``."""
    t = math.radians(deg)
    lin = np.array([[-0.5, 0.0, 0.0], [0.0, 0.5, dk * math.sin(t)], [0.0, 0.0, dk * math.cos(t)]])
    return affine(lin)


def random_hu(shape=(20, 16, 6), seed=0) -> np.ndarray:
    """int16 HU values over the whole CT range."""
    return np.random.default_rng(seed).integers(-1024, 3072, size=shape).astype(np.int16)


PLANTED = {  # frontal: none; parietal: grows with age; temporal: strong late; occipital: early
    "frontal": lambda a: 0.0,
    "parietal": lambda a: a / 24,
    "temporal": lambda a: 2.0 if a >= 24 else 0.0,
    "occipital": lambda a: 1.0 if a < 24 else 0.0,
}


def planted_perturbation(ages, effects=PLANTED, repeats=1, noise=0.8, seed=0) -> pd.DataFrame:
    """A perturbation table: masking lobe L adds ``effects[L](age)`` months of error (plus noise)
    to a whole-brain prediction that errs by a few months."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, age in enumerate(ages):
        sign = rng.choice([-1.0, 1.0])
        whole = age + sign * rng.uniform(1.0, 4.0)
        for lobe, effect in effects.items():
            for r in range(repeats):
                masked = whole + sign * (effect(age) + rng.normal(0.0, noise))
                rows.append(
                    {
                        "subject_id": f"s{i:03d}",
                        "fold": i % 5,
                        "age_months": age,
                        "lobe": lobe,
                        "repeat": r,
                        "pred_whole": whole,
                        "pred_masked": masked,
                    }
                )
    table = pd.DataFrame(rows)
    err = (table["pred_masked"] - table["age_months"]).abs()
    table["delta_ae"] = err - (table["pred_whole"] - table["age_months"]).abs()
    return table


def _contents(name: str, blob: bytes):
    """``(where, bytes)`` of a file and, recursively, of what it holds when gzip or zip."""
    import gzip
    import io
    import zipfile

    yield name, blob
    if blob[:2] == b"\x1f\x8b":
        yield from _contents(f"{name} (gunzipped)", gzip.decompress(blob))
    elif zipfile.is_zipfile(io.BytesIO(blob)):
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            for member in archive.namelist():
                yield from _contents(f"{name}/{member}", archive.read(member))


def assert_no_identifiers(paths, values) -> None:
    """Assert that no value of ``values`` (identifying strings, 4 characters or more) occurs in
    the files ``paths`` (a folder: every file under it), as UTF-8 (any letter case) or UTF-16,
    also inside gzip files and zip archives (by their content, whatever their names)."""
    from pathlib import Path

    secrets = sorted({str(v) for v in values if str(v)})
    assert secrets, "no identifying value to search for"
    short = [s for s in secrets if len(s) < 4]
    assert not short, f"values too short to search for: {short}"
    files = []
    for path in map(Path, paths):
        assert path.exists(), f"nothing to scan at {path}"
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    # values of digits and dots (UIDs, dates) are looked up in the file's runs of digits and dots
    # only (hundreds of UIDs against a whole volume would take minutes); the others anywhere
    numeric = [v.encode() for v in secrets if re.fullmatch(r"[0-9.]+", v)]
    words = [v.lower().encode(codec) for v in secrets if not re.fullmatch(r"[0-9.]+", v)
             for codec in ("utf-8", "utf-16-le")]  # fmt: skip
    runs = re.compile(rb"[0-9.]{4,}|(?:[0-9.]\x00){4,}")
    for file in files:
        for where, blob in _contents(str(file), file.read_bytes()):
            lower = blob.lower()
            found = [w for w in words if w in lower]
            digits = b"\n".join(run.replace(b"\x00", b"") for run in set(runs.findall(blob)))
            found += [v for v in numeric if v in digits]
            assert not found, f"{found[0]!r} found in {where}"


# the header fields whose values identify someone (what no output may hold)
IDENTIFYING = (
    *("PatientName", "PatientID", "PatientBirthDate", "StudyDate", "SeriesDate"),
    *("AcquisitionDate", "ContentDate", "AccessionNumber", "InstitutionName", "StationName"),
    *("ReferringPhysicianName", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"),
    "FrameOfReferenceUID",
)


def dicom_identifiers(root) -> set[str]:
    """Every identifying header value written into the tree (and each date in ISO form)."""
    import datetime as dt

    import pydicom

    values = set()
    for path in root.rglob("*.dcm"):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # the truncated copies hold nothing the others do not
            continue
        for tag in IDENTIFYING:
            text = str(ds.get(tag, "") or "")
            values |= {text, *(p for p in text.split("^") if len(p) >= 4)}
            if tag.endswith("Date") and text:
                values.add(dt.datetime.strptime(text, "%Y%m%d").date().isoformat())
        values.add(str(ds.file_meta.MediaStorageSOPInstanceUID))
    return values - {""}


def parameter_notebook(path, code: str):
    """A two-cell notebook at ``path``: a ``parameters`` cell ``x = 1``, then ``code``."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    parameters = nbformat.v4.new_code_cell("x = 1")
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [parameters, nbformat.v4.new_code_cell(code)]
    nbformat.write(nb, path)
    return path
