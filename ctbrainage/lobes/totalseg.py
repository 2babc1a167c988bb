"""Lobe labels from TotalSegmentator's licensed ``brain_structures`` task (optional extra).

TotalSegmentator (Wasserthal et al.) is installed with ``pip install -e ".[totalseg]"``. Its
``brain_structures`` task needs a licence number (free for academic use) and, on first use, an
internet connection to validate it and to download the model weights into its home folder
(``~/.totalsegmentator``, or ``$TOTALSEG_HOME_DIR``). Every way this can fail is reported as
:class:`TotalSegmentatorUnavailable`, whose message says what is missing and how to provide it.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.error import URLError

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from ctbrainage.core.labels import LOBE_IDS
from ctbrainage.imaging import ctio
from ctbrainage.imaging.preprocess import map_to_grid

__all__ = [
    "LICENCE_ENV",
    "TOTALSEG_LOBES",
    "TOTAL_BRAIN_ID",
    "TotalSegmentatorUnavailable",
    "licence",
    "lobes_from_multilabel",
    "run_brain_structures",
    "totalseg_lobes_in_grid",
]

LICENCE_ENV = "TOTALSEG_LICENSE"
TASK = "brain_structures"
OUTPUT_NAME = f"{TASK}.nii.gz"

# class_map["brain_structures"] in totalsegmentator/map_to_binary.py (TotalSegmentator 2.18.0):
# 12 frontal_lobe, 13 parietal_lobe, 14 occipital_lobe, 15 temporal_lobe. Whole lobes, both
# hemispheres in one label (no left/right split, as our default).
TOTALSEG_LOBES: dict[int, int] = {
    12: LOBE_IDS["frontal"],
    13: LOBE_IDS["parietal"],
    14: LOBE_IDS["occipital"],
    15: LOBE_IDS["temporal"],
}
# class_map["total"] in the same file: 90 = "brain" (task "total", no licence needed).
TOTAL_BRAIN_ID = 90

_INSTALL = 'install it with: pip install -e ".[totalseg]" (see `make test-totalseg`)'
_LICENCE = (
    f"set the environment variable {LICENCE_ENV} or `lobes.totalseg_license` in the profile; "
    "a free academic licence is available from the TotalSegmentator authors' website "
    "(TotalSegmentator project, University Hospital Basel)"
)
_WEIGHTS = (
    "run it once with internet access (it validates the licence and downloads the weights), "
    "or copy a TotalSegmentator home folder that has them (config.json with the licence and "
    "nnunet/results/) to ~/.totalsegmentator or to the folder named by $TOTALSEG_HOME_DIR"
)
_NETWORK = re.compile(
    r"connection|max retries|name resolution|resolve|timed out|unreachable|offline|urlopen|"
    r"proxy|ssl|download",
    re.IGNORECASE,
)


class TotalSegmentatorUnavailable(RuntimeError):
    """TotalSegmentator could not be used; the message says what is missing and how to fix it."""


def licence(profile_value: str = "") -> str:
    """The licence number: the profile's ``lobes.totalseg_license`` if set, else the
    environment variable ``TOTALSEG_LICENSE``, else "" (TotalSegmentator then uses the one
    stored in its home folder, if any)."""
    return profile_value.strip() or os.environ.get(LICENCE_ENV, "").strip()


def _api() -> Callable:
    """TotalSegmentator's Python API function (imported lazily; tests replace this getter)."""
    from totalsegmentator.python_api import totalsegmentator

    return totalsegmentator


class _Tee:
    """Writes to a stream and keeps a copy (TotalSegmentator prints its reasons, then exits)."""

    def __init__(self, stream):
        self.stream, self.copy = stream, io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _is_network_error(err: BaseException, text: str) -> bool:
    """requests/urllib/socket failures (all OSError), or an OSError about a download."""
    if not isinstance(err, OSError):
        return False
    return isinstance(err, URLError | ConnectionError | TimeoutError | socket.gaierror) or bool(
        _NETWORK.search(text)
    )


def _explain(err: BaseException, printed: str) -> TotalSegmentatorUnavailable:
    """Translate what TotalSegmentator raised (and printed before) into a clear error."""
    detail = " ".join(f"{type(err).__name__}: {err} {printed}".split())
    text = detail.lower()
    about_licence = "license" in text or "licence" in text
    if isinstance(err, SystemExit) and about_licence and "exception occurred" in text:
        # a new licence is validated online; offline it exits saying "Invalid license number"
        return TotalSegmentatorUnavailable(
            "TotalSegmentator could not validate the licence (no connection to its server): "
            f"{_WEIGHTS}. [{detail}]"
        )
    if isinstance(err, SystemExit) and about_licence:
        return TotalSegmentatorUnavailable(
            f"TotalSegmentator's {TASK} task needs a valid licence number: {_LICENCE}. [{detail}]"
        )
    if _is_network_error(err, text):
        return TotalSegmentatorUnavailable(
            "TotalSegmentator's model weights are missing and cannot be downloaded "
            f"(no internet?): {_WEIGHTS}. [{detail}]"
        )
    return TotalSegmentatorUnavailable(f"TotalSegmentator failed: {detail}")


def run_brain_structures(
    ct_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    licence_number: str = "",
    device: str = "cpu",
) -> Path:
    """Run the ``brain_structures`` task on a NIfTI CT; returns the multilabel NIfTI it wrote
    (``out_dir/brain_structures.nii.gz``, in the input's native space)."""
    try:
        api = _api()
    except ImportError as err:
        raise TotalSegmentatorUnavailable(
            f"TotalSegmentator is not installed ({err}); {_INSTALL}"
        ) from err
    out = Path(out_dir) / OUTPUT_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    tee = _Tee(sys.stdout)
    try:
        with contextlib.redirect_stdout(tee):
            api(
                input=Path(ct_path),
                output=out,
                ml=True,
                task=TASK,
                license_number=licence_number or None,
                device=device,
                quiet=True,
            )
    except ImportError as err:
        raise TotalSegmentatorUnavailable(
            f"a dependency of TotalSegmentator is missing ({err}); {_INSTALL}"
        ) from err
    except (Exception, SystemExit) as err:
        raise _explain(err, tee.copy.getvalue()) from err
    if not out.exists():
        raise TotalSegmentatorUnavailable(f"TotalSegmentator finished but wrote no {out}")
    return out


def lobes_from_multilabel(labels: np.ndarray) -> np.ndarray:
    """Our lobe labels (uint8, 0 = none) from a ``brain_structures`` multilabel array."""
    ids = np.asarray(labels)
    lobes = np.zeros(ids.shape, dtype=np.uint8)
    for ts_id, lobe in TOTALSEG_LOBES.items():
        lobes[ids == ts_id] = lobe
    return lobes


def _read_labels(path: Path) -> sitk.Image:
    """A multilabel NIfTI as our lobe labels in its physical space (sheared grids resampled)."""
    img = nib.load(path)
    labels, affine = lobes_from_multilabel(np.asanyarray(img.dataobj)), img.affine
    try:
        return ctio.ras_to_sitk(labels, affine)
    except ValueError:  # sheared (gantry-tilted) grid
        labels, affine = ctio.resample_to_orthogonal(labels, affine, cval=0, order=0)
        return ctio.ras_to_sitk(labels.astype(np.uint8), affine)


def totalseg_lobes_in_grid(
    ct_path: str | os.PathLike,
    reference: sitk.Image,
    licence_number: str,
    work_dir: str | os.PathLike,
    device: str = "cpu",
) -> np.ndarray:
    """TotalSegmentator's lobes of one CT (NIfTI file or DICOM folder) on the preprocessed
    grid ``reference``: uint8 array [i, j, k], labels 0-4. Its multilabel output is left in
    ``work_dir``."""
    ct_path, work_dir = Path(ct_path), Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        source = ct_path
        if ct_path.is_dir():  # TotalSegmentator wants NIfTI: write the HU image we read
            source = Path(tmp) / "ct.nii.gz"
            ctio.write_nifti(source, *ctio.sitk_to_ras(ctio.read_ct(ct_path).image))
        seg = run_brain_structures(source, work_dir, licence_number, device)
    return map_to_grid(_read_labels(seg), reference, labels=True)
