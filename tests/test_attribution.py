"""Attribution algorithms on models and tensors: hand-computed values on a linear 3D model,
exact lobe Shapley values, Captum's own calls, lobe aggregation, group maps, voxel and lobe
scoring, and the registry of methods."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from captum.attr import Occlusion, ShapleyValues
from scipy import ndimage

from ctbrainage.core.config import ModelConfig
from ctbrainage.interpret import attribution, methods
from ctbrainage.learn.networks import build_model
from ctbrainage.synth.scoring import lobe_recovery, lobe_scores, score_importance, voxel_scores

SHAPE = (6, 5, 4)


class Linear3D(torch.nn.Module):
    """f(x) = Σ_v w_v · c · x_v + b, through a 1×1×1 convolution (Grad-CAM's layer4)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.layer4 = torch.nn.Conv3d(1, 1, 1, bias=False)
        self.layer4.weight.data.fill_(2.0)  # c
        self.w = torch.nn.Parameter(torch.randn(SHAPE, generator=generator))
        self.b = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, x):
        return ((self.layer4(x)[:, 0] * self.w).flatten(1).sum(1) + self.b)[:, None]


@pytest.fixture
def linear():
    torch.manual_seed(0)
    x = torch.rand(2, 1, *SHAPE)
    baseline = torch.rand(2, 1, *SHAPE) * 0.2
    return Linear3D().eval(), x, baseline


@pytest.mark.parametrize("method", ["saliency", "smoothgrad", "guided_backprop"])
def test_gradient_methods_of_a_linear_model_are_its_weights(linear, method):
    model, x, _ = linear
    settings = attribution.MapSettings(smoothgrad_samples=4, smoothgrad_sd=0.2)
    got = attribution.voxel_map(model, x, method, settings)
    expected = (2.0 * model.w.detach()).expand(2, *SHAPE)  # no ReLU: guided = plain gradient
    assert torch.allclose(got, expected, atol=1e-5)


def test_integrated_gradients_of_a_linear_model_is_exact(linear):
    model, x, baseline = linear
    got = attribution.voxel_map(model, x, "integrated_gradients", baseline=baseline)
    expected = 2.0 * model.w.detach() * (x - baseline)[:, 0]
    assert torch.allclose(got, expected, atol=1e-4)
    assert torch.allclose(got.flatten(1).sum(1), (model(x) - model(baseline))[:, 0], atol=1e-4)


def test_gradcam_of_a_linear_model_is_the_relu_of_mean_weight_times_activation(linear):
    model, x, _ = linear
    got = attribution.voxel_map(model, x, "gradcam")
    alpha = model.w.detach().mean()
    assert torch.allclose(got, torch.relu(alpha * 2.0 * x[:, 0]), atol=1e-5)


def test_gradcams_layer_defaults_to_the_last_resnet_stage_with_four_cells_per_axis():
    """layer4 of a 64³ input is 2³ cells: too coarse for lobes, so layer3 (4³) by default."""
    stage = attribution.gradcam_stage
    for size, expected in ((48, "layer2"), (64, "layer3"), (128, "layer4")):
        model = build_model(ModelConfig(arch="resnet10", width=4), size).eval()
        assert stage(model, (2, 1, size, size, size)) is getattr(model, expected), size
    model = build_model(ModelConfig(arch="resnet10", width=4), 64).eval()
    assert stage(model, (1, 1, 64, 64, 64), "layer4") is model.layer4
    with pytest.raises(ValueError, match="no layer 'layer9' for Grad-CAM.*layer4"):
        stage(model, (1, 1, 64, 64, 64), "layer9")
    vgg = build_model(ModelConfig(arch="vgg8", width=4), 64).eval()
    assert stage(vgg, (1, 1, 64, 64, 64)) is vgg.gradcam_layer  # the network's own layer
    x = torch.rand(1, 1, 64, 64, 64)
    fine = attribution.voxel_map(model, x, "gradcam")
    coarse = attribution.voxel_map(
        model, x, "gradcam", attribution.MapSettings(gradcam_layer="layer4")
    )
    assert fine.shape == coarse.shape == (1, 64, 64, 64)
    assert not torch.allclose(fine, coarse)


def test_occlusion_of_a_linear_model_and_against_captum(linear):
    model, x, baseline = linear
    single = attribution.MapSettings(occlusion_voxels=1, occlusion_stride=1)
    got = attribution.voxel_map(model, x, "occlusion", single, baseline=baseline)
    assert torch.allclose(got, 2.0 * model.w.detach() * (x - baseline)[:, 0], atol=1e-5)
    # overlapping cubes, only those touching a "brain": equal to Captum's inside it
    settings = attribution.MapSettings(occlusion_voxels=3, occlusion_stride=2, batch_size=5)
    brain = torch.zeros_like(x)
    brain[:, :, 1:4, 1:3, 1:3] = 1
    ours = attribution.voxel_map(model, x, "occlusion", settings, baseline, brain)
    theirs = Occlusion(model).attribute(
        x, sliding_window_shapes=(1, 3, 3, 3), strides=(1, 2, 2, 2), baselines=baseline, target=0
    )[:, 0]
    inside = brain[:, 0] > 0
    assert torch.allclose(ours[inside], theirs[inside], atol=1e-5)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(3)
    model = build_model(ModelConfig(arch="resnet10", width=4)).eval()
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(1, 16, 16, 16, generator=generator)
    labels = torch.zeros(16, 16, 16, dtype=torch.uint8)
    labels[2:8, 2:8, 2:14], labels[8:14, 2:8, 2:14] = 1, 2
    labels[2:8, 8:14, 2:14], labels[8:14, 8:14, 2:14] = 3, 4
    baseline = torch.where(labels > 0, torch.full_like(x, 0.4), x)
    return model, x, labels, baseline


def test_lobe_shapley_values_are_efficient_and_equal_captums(resnet):
    model, x, labels, baseline = resnet
    values = attribution.coalition_values(model, x, labels, baseline, [1, 2, 3, 4], batch_size=5)
    phi = attribution.lobe_shapley(values)
    with torch.no_grad():
        whole, empty = float(model(x[None])), float(model(baseline[None]))
    assert float(values[-1]) == pytest.approx(whole, abs=1e-6)
    assert float(values[0]) == pytest.approx(empty, abs=1e-6)
    assert float(phi.sum()) == pytest.approx(whole - empty, abs=1e-6)
    captum = ShapleyValues(model).attribute(
        x[None],
        baselines=baseline[None],
        target=0,
        feature_mask=labels.long()[None, None].contiguous(),
        perturbations_per_eval=8,
    )[0, 0]
    theirs = torch.stack([captum[labels == k][0] for k in (1, 2, 3, 4)]).double()
    assert torch.allclose(phi, theirs, atol=1e-5)


def test_shapley_weights_give_the_textbook_values_of_a_known_game():
    # v(S) = (Σ_{k∈S} a_k)²: φ_k = a_k · Σ a
    a = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    members = attribution.coalitions(3).double()
    values = (members @ a) ** 2
    assert torch.allclose(attribution.lobe_shapley(values), a * a.sum())
    with pytest.raises(ValueError, match="2\\^n"):
        attribution.lobe_shapley(torch.zeros(6))


def test_lobe_shares_are_each_lobes_share_of_the_brains_absolute_attribution():
    maps = torch.tensor([[[[1.0, -3.0], [2.0, 4.0]]]])  # [1, 1, 2, 2]
    labels = torch.tensor([[[[1, 2], [2, 0]]]])
    brain = torch.tensor([[[[1, 1], [1, 0]]]])
    shares = attribution.lobe_shares(maps, labels, brain, [1, 2])
    assert np.allclose(shares, [[1 / 6, 5 / 6]])
    assert np.isnan(attribution.lobe_shares(maps * 0, labels, brain, [1, 2])).all()


def test_voxel_scores_of_a_perfect_a_random_and_an_inverted_map():
    rng = np.random.default_rng(0)
    signal = np.zeros((10, 10, 10))
    signal[2:5, 2:5, 2:5] = 1.0
    brain = np.ones_like(signal)
    perfect = voxel_scores(signal * 3, signal, brain)
    assert perfect == {
        "auroc": 1.0, "mass_accuracy": 1.0, "rank_accuracy": 1.0, "region_share": 0.027
    }  # fmt: skip
    noise = voxel_scores(rng.random(signal.shape), signal, brain)
    assert 0.4 < noise["auroc"] < 0.6 and noise["mass_accuracy"] == pytest.approx(0.027, abs=0.01)
    assert noise["region_share"] == 0.027  # the mass accuracy of a map at chance
    assert voxel_scores(1 - signal, signal, brain)["auroc"] == 0.0
    assert voxel_scores(1 - signal, signal, brain)["rank_accuracy"] == 0.0
    assert np.isnan(voxel_scores(signal, signal * 0, brain)["auroc"])


def test_unknown_method_and_training_mode_are_refused(linear):
    model, x, _ = linear
    with pytest.raises(ValueError, match="unknown method 'lime'"):
        attribution.voxel_map(model, x, "lime")
    with pytest.raises(ValueError, match="training mode"):
        attribution.voxel_map(model.train(), x, "saliency")
    with pytest.raises(ValueError, match="unknown attribution method 'lime'"):
        methods.method("lime")


def test_lobe_scores_agree_with_step_06s_scoring():
    rng = np.random.default_rng(2)
    lobes = ["frontal", "parietal", "temporal", "occipital"]
    groups = {"0-11": 6.0, "12-23": 18.0, "24-35": 30.0, "36-47": 42.0}
    expected = pd.DataFrame(
        [
            {"group": g, "lobe": lobe, "importance": rng.random(), "hu_per_month": 1.0}
            for g in groups
            for lobe in lobes
        ]
    )
    rows = pd.DataFrame(
        [
            {"subject_id": f"s{g}{i}", "age_months": age, "lobe": lobe, "importance": rng.random()}
            for g, age in groups.items()
            for i in range(5)
            for lobe in lobes
        ]
    )
    ours = {r["metric"]: r for r in lobe_scores(rows, expected, (0, 12, 24, 36, 48), 50, 0)}
    cells = rows.assign(group=rows["age_months"].map({a: g for g, a in groups.items()}))
    measured = cells.groupby(["group", "lobe"], as_index=False)["importance"].mean()
    theirs = score_importance(
        measured.rename(columns={"importance": "mean"}), expected, value="mean"
    )
    assert ours["spearman_rho"]["value"] == pytest.approx(theirs["spearman_rho"])
    assert ours["within_group_rho"]["value"] == pytest.approx(theirs["within_group_spearman_rho"])
    assert ours["top_lobe_matches"]["value"] == theirs["top_lobe_matches"]
    assert ours["spearman_rho"]["ci_low"] <= ours["spearman_rho"]["value"]
    same = lobe_recovery(np.eye(4).ravel(), np.eye(4).ravel(), np.repeat(np.arange(4), 4))
    assert same.top_matches == 4 and same.within_rho == pytest.approx(1.0)


def test_lobe_recovery_skips_constant_groups_and_ignores_nan_tops():
    planted = np.array([1.0, 2.0, 3.0, 0.5, 0.5, 0.5])
    measured = np.array([3.0, 2.0, np.nan, 1.0, 2.0, 3.0])
    scored = lobe_recovery(planted, measured, ["a", "a", "a", "b", "b", "b"])
    assert np.isnan(scored.within_rho)  # a: a NaN cell; b: planted constant
    assert [(g, p, m) for g, p, m in scored.tops] == [("a", 2, 0), ("b", 3, 5)]
    assert scored.top_matches == 0


def test_the_registry_holds_the_profiles_methods_in_their_order():
    import typing

    from ctbrainage.core.sections import AttributionMethod

    assert tuple(methods.METHODS) == typing.get_args(AttributionMethod)
    assert methods.names() == typing.get_args(AttributionMethod)
    voxel = [m for m in methods.METHODS.values() if m.kind == "voxel"]
    voxel = [m for m in voxel if not m.trained and not m.reference]
    assert [m.name for m in voxel] == list(attribution.VOXEL_MAPS)
    references = [m.name for m in methods.METHODS.values() if m.reference]
    assert references == ["random_map", "intensity", "edges", "lobe_size"]
    assert all(m.compute is attribution.VOXEL_MAPS[m.name] for m in voxel)
    assert methods.names("lobe") == ("lobe_shapley",)
    assert [m.name for m in methods.METHODS.values() if m.trained] == ["unoise"]


def test_the_reference_maps_are_chance_the_image_its_edges_and_lobe_size():
    from ctbrainage.interpret import reference_maps

    x = torch.zeros(1, 1, 8, 8, 8)
    x[:, :, 4:] = 1.0  # a step along the first axis
    edges = reference_maps.edges(None, x)
    assert edges[0, 3:5].min() == 0.5 and edges[0, :3].max() == 0 and edges[0, 5:].max() == 0
    assert torch.equal(reference_maps.intensity(None, x), x[:, 0])
    assert torch.equal(reference_maps.lobe_size(None, x), torch.ones(1, 8, 8, 8))
    labels = np.zeros((8, 8, 8), np.int64)
    labels[:2], labels[2:8] = 1, 2
    shares = attribution.lobe_shares(
        reference_maps.lobe_size(None, x), torch.from_numpy(labels[None]),
        torch.ones(1, 8, 8, 8), {1: "a", 2: "b"},
    )[0]  # fmt: skip
    assert shares.tolist() == pytest.approx([0.25, 0.75])  # lobe size
    torch.manual_seed(0)
    one = reference_maps.random_map(None, x)
    torch.manual_seed(0)
    assert torch.equal(one, reference_maps.random_map(None, x)) and one.std() > 0.2


def test_group_maps_keep_the_top_share_and_their_keys_split_back():
    key = attribution.group_map_key("saliency", "12-23")
    assert attribution.split_group_map_key(key) == ("saliency", "12-23")
    brain = np.ones((10, 10, 10), np.float32)
    term = attribution.normalised_magnitude(torch.arange(1000.0).view(10, 10, 10) - 500, brain)
    assert term.sum() == pytest.approx(1.0) and term.dtype == np.float64
    total = np.zeros((10, 10, 10))
    total[0, 0, :] = np.arange(10) + 1.0  # ten voxels with mass: the top 10 % is one
    unsmoothed = np.where(total >= 10, total, 0.0) / 2
    expected = ndimage.gaussian_filter(unsmoothed, attribution.SMOOTH_VOXELS)
    assert np.allclose(attribution.group_map(total, 2), expected)
    assert attribution.group_map(total, 2).dtype == np.float32
