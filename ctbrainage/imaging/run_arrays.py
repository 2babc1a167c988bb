"""A run's per-subject arrays, read in one place for the steps, the figures and the viewers.

Arrays come in the on-disk voxel order (the order in which step 05 draws its noise); figures and
viewers reorient them for display (:func:`ctbrainage.interpret.perturb.filled_volume` builds
the exact input the model saw in step 05 from them).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import pandas as pd

from ctbrainage.core.config import Profile
from ctbrainage.core.labels import LOBE_IDS, LOBES
from ctbrainage.core.layout import RunLayout


@dataclass(frozen=True)
class SubjectImage:
    """One subject's model input and lobe labels (None before step 02) with their grid."""

    subject_id: str
    volume: np.ndarray  # float32 [i, j, k]
    labels: np.ndarray | None  # uint8 [i, j, k], 1-4 = lobes
    affine: np.ndarray  # voxel → RAS mm
    spacing: tuple[float, float, float]  # RAS voxel size, mm

    def canonical(self, array: np.ndarray) -> np.ndarray:
        """``array`` (this grid) in the closest RAS orientation, for display."""
        return np.asarray(nib.as_closest_canonical(nib.Nifti1Image(array, self.affine)).dataobj)


def lobe_id(lobe: int | str) -> int:
    """The label of a lobe given by name or label."""
    if isinstance(lobe, str) and lobe in LOBE_IDS:
        return LOBE_IDS[lobe]
    if not isinstance(lobe, str) and int(lobe) in LOBES:
        return int(lobe)
    raise ValueError(f"unknown lobe {lobe!r}; choose from {', '.join(LOBES.values())}")


def subject_image(layout: RunLayout, subject_id: str, need_labels: bool = False) -> SubjectImage:
    """One subject's arrays (cached while its files are unchanged); a clear error naming the
    subject when a file is missing or damaged."""
    image, labels = layout.preprocessed(subject_id), layout.lobes(subject_id)
    if not image.exists():
        raise ValueError(f"{subject_id}: no preprocessed volume ({image}; run step 01)")
    if need_labels and not labels.exists():
        raise ValueError(f"{subject_id}: lobe labels missing ({labels}; run step 02)")
    stamp = tuple(p.stat().st_mtime_ns if p.exists() else 0 for p in (image, labels))
    return _read(str(layout.root), subject_id, stamp)


@functools.lru_cache(maxsize=8)
def _read(root: str, subject_id: str, stamp: tuple) -> SubjectImage:
    layout = RunLayout(root)
    try:
        image = nib.load(layout.preprocessed(subject_id))
        volume = np.asarray(image.dataobj, np.float32)
        path = layout.lobes(subject_id)
        labels = np.asarray(nib.load(path).dataobj).astype(np.uint8) if path.exists() else None
    except Exception as err:  # nibabel and gzip raise many types for a damaged file
        raise ValueError(f"{subject_id}: unreadable input ({type(err).__name__}: {err})") from None
    zooms = nib.as_closest_canonical(image).header.get_zooms()[:3]
    spacing = tuple(float(z) for z in zooms)
    return SubjectImage(subject_id, volume, labels, image.affine, spacing)


def subject_arrays(layout: RunLayout, subject_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(model input, lobe labels) of one subject; both must exist."""
    subject = subject_image(layout, subject_id, need_labels=True)
    return subject.volume, subject.labels


def group_levels(levels: pd.DataFrame, subject_id: str) -> dict[int, float]:
    """Lobe id → the ``group_level`` fill's target of one subject (``lobe_levels.csv``)."""
    rows = levels[(levels["subject_id"] == subject_id) & levels["group_level"].notna()]
    return {
        LOBE_IDS[lobe]: float(v) for lobe, v in zip(rows["lobe"], rows["group_level"], strict=True)
    }


def read_levels(layout: RunLayout) -> pd.DataFrame:
    """``lobe_levels.csv`` (written by step 05)."""
    if not layout.lobe_levels.exists():
        raise ValueError(f"no lobe levels {layout.lobe_levels}: the group_level fill needs step 05")
    return pd.read_csv(layout.lobe_levels, dtype={"subject_id": str})


def preprocessed_subjects(layout: RunLayout) -> pd.Series:
    """Age in months (NaN when the run has no cohort table) of every subject with a
    preprocessed volume, youngest first."""
    ids = layout.preprocessed_ids()
    ages = pd.Series(np.nan, index=pd.Index(ids, name="subject_id"), name="age_months")
    if layout.cohort.exists():
        cohort = pd.read_csv(layout.cohort, dtype={"subject_id": str})
        ages.update(cohort.set_index("subject_id")["age_months"])
    return ages.sort_values(kind="stable")


def predictions(layout: RunLayout) -> pd.DataFrame:
    """``predictions.csv`` indexed by subject."""
    if not layout.predictions.exists():
        raise ValueError(f"no predictions {layout.predictions} (run step 03)")
    return pd.read_csv(layout.predictions, dtype={"subject_id": str}).set_index("subject_id")


def perturbation(profile: Profile, fill: str | None = None) -> pd.DataFrame:
    """The perturbation table of ``fill`` (default: the profile's)."""
    fill = fill or profile.perturb.fill
    path = RunLayout(profile.run_path).perturbation(fill, profile.perturb.fill)
    if not path.exists():
        raise ValueError(f"no perturbation table for the {fill} fill ({path}; run step 05)")
    return pd.read_csv(path, dtype={"subject_id": str})
