"""Datasets over preprocessed volumes: loaded once into memory, ages normalised to [0, 1]."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch
from torch.utils.data import Dataset


class AgeScaler:
    """Months ↔ [0, 1] over a fixed range (the paper normalises age to [0, 1])."""

    def __init__(self, lo: float, hi: float):
        if hi <= lo:
            raise ValueError(f"age range must be increasing, got [{lo}, {hi}]")
        self.lo, self.hi = float(lo), float(hi)

    def to_unit(self, months):
        return (np.asarray(months, dtype=np.float32) - self.lo) / (self.hi - self.lo)

    def to_months(self, unit):
        return np.asarray(unit, dtype=np.float64) * (self.hi - self.lo) + self.lo


def load_volumes(paths) -> np.ndarray:
    """Model inputs (NIfTI files) as one float32 array [n, 1, x, y, z]."""
    arrays = [np.asarray(nib.load(path).dataobj, np.float32) for path in paths]
    return np.stack(arrays)[:, None]


class VolumeDataset(Dataset):
    """(volume, normalised age) pairs from in-memory arrays; optional TorchIO augmentation."""

    def __init__(self, volumes: np.ndarray, ages_unit: np.ndarray, augment=None):
        self.volumes = torch.from_numpy(np.ascontiguousarray(volumes))
        self.ages = torch.from_numpy(np.asarray(ages_unit, np.float32)[:, None])
        self.augment = augment

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, index: int):
        volume = self.volumes[index]
        if self.augment is not None:
            volume = self.augment(volume)
        return volume, self.ages[index]


def augmentation():
    """Mild TorchIO augmentation (off in the paper profile, which reports none)."""
    import torchio as tio

    return tio.Compose(
        [tio.RandomAffine(scales=0.05, degrees=5, translation=3), tio.RandomGamma(log_gamma=0.1)]
    )
