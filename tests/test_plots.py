"""Figures that show a run's images draw the arrays and tables handed to them."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from ctbrainage.core.labels import LOBES
from ctbrainage.core.layout import RunLayout, SyntheticLayout
from ctbrainage.imaging import ctio
from ctbrainage.imaging.run_arrays import SubjectImage
from ctbrainage.synth.schedule import MaturationSchedule
from ctbrainage.views import plots

SHAPE = (16, 18, 20)
AFFINE = np.array([[-2.0, 0, 0, 20], [0, 0, 1.5, -10], [0, 1.0, 0, 5], [0, 0, 0, 1]])


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def subject(sid: str = "sub-a", labels: bool = True) -> SubjectImage:
    i, j, k = np.indices(SHAPE)
    volume = ((i + 2 * j + 3 * k) / (15 + 34 + 57)).astype(np.float32)
    lab = np.zeros(SHAPE, np.uint8)
    lab[2:8, 2:9, 3:17], lab[8:14, 2:9, 3:17] = 1, 2
    lab[2:8, 9:16, 3:17], lab[8:14, 9:16, 3:17] = 3, 4
    return SubjectImage(sid, volume, lab if labels else None, AFFINE, (2.0, 1.5, 1.0))


def titles(fig) -> list[str]:
    return [ax.get_title(loc="left") or ax.get_title() for ax in fig.axes]


def test_perturbed_slices_draws_the_filled_volumes(tmp_path):
    image = subject()
    filled = {name: np.where(image.labels == k, 0.0, image.volume) for k, name in LOBES.items()}
    out = tmp_path / "perturbed.png"
    fig = plots.perturbed_slices(image, filled, "sub-a: zero fill", out=out)
    assert out.exists() and fig._suptitle.get_text() == "sub-a: zero fill"
    assert titles(fig) == ["original"] + [f"{name} masked" for name in LOBES.values()]
    assert tuple(fig.get_size_inches()) == pytest.approx((2.6 * 5, 3))
    shown = [ax.images[0].get_array() for ax in fig.axes]
    assert (shown[0] > 0).all()
    for panel in shown[1:]:  # each lobe black in its own panel only
        assert (panel == 0).any() and (panel[shown[0] != panel] == 0).all()
    with pytest.raises(ValueError, match="does not match the input"):
        plots.perturbed_slices(image, {"frontal": image.volume[:-1]}, "x")
    with pytest.raises(ValueError, match="sub-a: lobe labels missing"):
        plots.perturbed_slices(subject(labels=False), filled, "x")


def test_importance_on_brain_paints_each_group():
    groups = [("0-12", 0.0), ("12-24", 12.0)]
    table = pd.DataFrame(
        [
            {"lobe": lobe, "group": g, "start": start, "mean_delta_ae": k * (1 + start)}
            for k, lobe in LOBES.items()
            for g, start in groups
        ]
    )
    fig = plots.importance_on_brain(subject(), table)
    panels = [ax for ax in fig.axes if ax.images and len(ax.images) == 2]
    assert [ax.get_title() for ax in panels] == ["0-12 months", "12-24 months"]
    painted = panels[1].images[1].get_array()
    assert set(np.unique(painted.compressed())) <= {13.0, 26.0, 39.0, 52.0}
    with pytest.raises(ValueError, match="lobe labels missing"):
        plots.importance_on_brain(subject(labels=False), table)


def test_lobe_overlay_montage_takes_subjects():
    fig = plots.lobe_overlay_montage(
        [subject("sub-a"), subject("sub-b")], {"sub-a": 3.2, "sub-b": 30}
    )
    assert len(fig.axes) == 6
    assert [t for t in titles(fig) if t] == ["sub-a, 3 months", "sub-b, 30 months"]
    assert tuple(fig.get_size_inches()) == pytest.approx((7.5, 5.2))
    fig = plots.lobe_overlay_montage(iter([subject("sub-c")]))
    assert [t for t in titles(fig) if t] == ["sub-c"]


def test_qc_montage_takes_paths_or_pairs(tmp_path):
    layout = RunLayout(tmp_path)
    paths = []
    for n, sid in enumerate(("a", "b", "c", "d")):
        layout.qc_dir.mkdir(exist_ok=True)
        plt.imsave(layout.qc(sid), np.full((4, 6, 3), n / 4))
        paths.append(layout.qc(sid))
    fig = plots.qc_montage(paths, ncols=3)
    assert sum(bool(ax.images) for ax in fig.axes) == 4 and len(fig.axes) == 6
    pairs = plots.qc_montage([(sid, str(p)) for sid, p in zip("abcd", paths, strict=True)])
    first = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    second = [ax.images[0].get_array() for ax in pairs.axes if ax.images]
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_learning_curves_take_the_logs():
    log = pd.DataFrame(
        {
            "epoch": [0, 0, 1, 1],
            "train_loss": [0.5, np.nan, 0.2, np.nan],
            "val_loss": [np.nan, 0.6, np.nan, 0.3],
        }
    )
    fig = plots.learning_curves({0: log, 2: log.drop(columns="val_loss")})
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert labels == ["fold 0 train", "fold 0 val", "fold 2 train"]
    np.testing.assert_array_equal(fig.axes[0].lines[0].get_xdata(), [1, 2])


def test_synthetic_cohort_figure_reads_the_layout(tmp_path):
    cohort = SyntheticLayout(tmp_path / "synthetic")
    image = subject()
    rows, manifest = [], []
    for n, age in enumerate((2.0, 20.0, 40.0)):
        sid = f"syn-{n}"
        ctio.write_nifti(cohort.root / cohort.image(sid), 20 + 40 * image.volume, AFFINE)
        ctio.write_nifti(cohort.truth_brain(sid), image.labels > 0, AFFINE)
        manifest.append({"subject_id": sid, "image": str(cohort.image(sid))})
        row = {"subject_id": sid, "age_months": age, "sex": "FM"[n % 2], "site": n % 2,
               "site_offset_hu": 1.0, "brain_volume_ml": 500 + 10 * age}  # fmt: skip
        row.update({f"wm_hu_measured_{name}": 20 + age / 4 for name in LOBES.values()})
        rows.append(row)
    pd.DataFrame(rows).to_csv(cohort.truth_table, index=False)
    pd.DataFrame(manifest).to_csv(cohort.manifest, index=False)
    cohort.schedule.write_text(json.dumps(MaturationSchedule().to_dict()))
    for given in (cohort, cohort.root, str(cohort.root)):
        fig = plots.synthetic_cohort_figure(given, ages=(1, 24, 47))
        assert "2 mo, F, site 0" in titles(fig) and "40 mo, F, site 0" in titles(fig)
        assert len(fig.axes) == 3 * 3 + 2
        assert tuple(fig.get_size_inches()) == pytest.approx((2.3 * 3, 11.5))
