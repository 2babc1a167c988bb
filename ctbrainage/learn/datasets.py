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
    """(volume, normalised age) pairs from in-memory arrays; with ``labels`` (e.g. a label
    volume per subject) triples."""

    def __init__(self, volumes: np.ndarray, ages_unit: np.ndarray, labels=None):
        self.volumes = torch.from_numpy(np.ascontiguousarray(volumes))
        self.ages = torch.from_numpy(np.asarray(ages_unit, np.float32)[:, None])
        self.labels = None if labels is None else torch.from_numpy(np.ascontiguousarray(labels))

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, index: int):
        if self.labels is None:
            return self.volumes[index], self.ages[index]
        return self.volumes[index], self.ages[index], self.labels[index]


class BatchAugmentation:
    """The multi-seed paper's augmentation (TorchIO): per mini-batch one transform drawn among a
    left-right flip, a random affine (rotations up to ``degrees``) and a random elastic
    deformation (``control_points`` per axis, at most ``max_displacement_mm`` along each axis at
    each control point, in mm: the volumes carry the grid's spacing); every volume of the batch
    gets its own random parameters. Seeded by torch's global generator."""

    def __init__(
        self,
        spacing_mm: float,
        degrees: float = 10.0,
        control_points: int = 7,
        max_displacement_mm: float = 7.5,
    ):
        import torchio as tio

        self.affine = np.diag([float(spacing_mm)] * 3 + [1.0])
        self.transforms = (
            tio.RandomFlip(axes=(0,), flip_probability=1.0),  # array axis 0: left-right
            tio.RandomAffine(scales=0, degrees=degrees, translation=0, default_pad_value=0),
            tio.RandomElasticDeformation(
                num_control_points=control_points, max_displacement=max_displacement_mm
            ),
        )

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Augmented copies of ``batch`` [n, 1, X, Y, Z] (on the batch's device)."""
        import torchio as tio

        transform = self.transforms[int(torch.randint(len(self.transforms), ()))]
        volumes = [
            transform(tio.ScalarImage(tensor=v.detach().float().cpu(), affine=self.affine)).data
            for v in batch
        ]
        return torch.stack(volumes).to(batch.device, batch.dtype)
