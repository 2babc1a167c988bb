"""Shared pieces of the figures: saving, slicing, colours."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np

from ctbrainage.core.atomic import atomic_path
from ctbrainage.core.labels import LOBES

LOBE_COLOURS = {
    "frontal": "#1f77b4",
    "parietal": "#2ca02c",
    "temporal": "#d62728",
    "occipital": "#9467bd",
}
BRAIN_WINDOW = (0.0, 80.0)  # HU: window 80, level 40


def save(fig: plt.Figure, out, dpi: int = 110) -> plt.Figure:
    """Save atomically to ``out`` (a path, a list of paths, or None); return the figure."""
    paths = [] if out is None else [out] if isinstance(out, str | Path) else list(out)
    for path in paths:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=Path(path).suffix[1:] or "png")
    return fig


def canonical_slices(image: nib.Nifti1Image, centre_ijk=None):
    """Axial, coronal and sagittal slices (RAS display orientation) through ``centre_ijk``
    (voxel index in the canonical image; default the middle), with their pixel aspect ratios."""
    canon = nib.as_closest_canonical(image)
    data = np.asarray(canon.dataobj)
    zooms = canon.header.get_zooms()[:3]
    c = np.array(data.shape) // 2 if centre_ijk is None else np.asarray(centre_ijk, int)
    return [
        (data[:, :, c[2]].T, zooms[1] / zooms[0]),  # axial: x right-left, y up = anterior
        (data[:, c[1], :].T, zooms[2] / zooms[0]),  # coronal
        (data[c[0], :, :].T, zooms[2] / zooms[1]),  # sagittal
    ]


def lobe_colormap():
    """Label map colours: transparent background, then each lobe's colour."""
    from matplotlib.colors import ListedColormap

    return ListedColormap([(0, 0, 0, 0)] + [LOBE_COLOURS[name] for name in LOBES.values()])


def group_palette(labels) -> dict:
    """One colour per age group, young (dark) to old (light)."""
    import seaborn as sns

    return dict(zip(labels, sns.color_palette("viridis", len(labels)), strict=True))
