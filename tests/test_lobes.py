"""The AAL → lobe grouping and the lobes of the anatomical template built from it."""

import numpy as np
import pytest

from ctbrainage.core.labels import LOBE_IDS, LOBES, aal_lobe_lookup, aal_region_lobe, load_aal
from ctbrainage.synth.anatomy import decode_truth, load_template


@pytest.mark.parametrize(
    ("region", "lobe"),
    [
        ("Frontal_Sup_L", 1),
        ("Precentral_R", 1),
        ("Paracentral_Lobule_L", 1),
        ("Cingulum_Ant_R", 1),
        ("Postcentral_R", 2),
        ("Precuneus_L", 2),
        ("Cingulum_Post_L", 2),
        ("Temporal_Pole_Mid_L", 3),
        ("Hippocampus_L", 3),
        ("ParaHippocampal_R", 3),
        ("Calcarine_R", 4),
        ("Fusiform_L", 4),
        ("Insula_L", 0),
        ("Thalamus_R", 0),
        ("Caudate_L", 0),
        ("Cerebelum_6_L", 0),
        ("Vermis_3", 0),
        ("Not_A_Region", 0),
    ],
)
def test_aal_region_lobe(region, lobe):
    assert aal_region_lobe(region) == lobe


def test_every_aal_region_maps_symmetrically():
    _, names = load_aal()
    assert len(names) == 116 and min(names) >= 1
    lut = aal_lobe_lookup(names)
    assert lut[0] == 0 and lut.max() == 4
    assert all(lut[index] == aal_region_lobe(name) for index, name in names.items())
    by_name = {name: aal_region_lobe(name) for name in names.values()}
    sides = [name for name in by_name if name.endswith("_L")]
    assert len(sides) == 54  # 116 regions = 54 pairs + 8 unpaired vermis parts
    for left in sides:
        assert by_name[left] == by_name[left[:-2] + "_R"], left
    for lobe in LOBES:
        lobe_names = [name for name, value in by_name.items() if value == lobe]
        assert {name[-2:] for name in lobe_names} == {"_L", "_R"}


@pytest.fixture(scope="module")
def template():
    return load_template(1.5)


def test_template_lobes_are_complete_and_symmetric(template):
    lobes, brain, wm_core = decode_truth(template.truth)
    assert lobes.shape == template.truth.shape and brain.any()
    assert not lobes[brain == 0].any() and set(np.unique(wm_core)) <= set(np.unique(lobes))
    voxel_ml = template.voxel_mm**3 / 1000.0
    assert template.voxel_mm == 1.5
    volumes = {name: (lobes == idx).sum() * voxel_ml for idx, name in LOBES.items()}
    assert all(v > 100.0 for v in volumes.values())
    assert max(volumes, key=volumes.get) == "frontal"
    x = template.affine[0, 0] * np.arange(lobes.shape[0]) + template.affine[0, 3]
    for name, idx in LOBE_IDS.items():
        left = (lobes[x < 0] == idx).sum()
        right = (lobes[x > 0] == idx).sum()
        assert abs(left - right) <= 0.1 * max(left, right), name
    assert 1300.0 <= template.brain_volume_ml <= 1900.0
    assert template.brain_volume_ml == pytest.approx(brain.sum() * voxel_ml)
