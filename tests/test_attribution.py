"""Attribution algorithms on models and tensors: hand-computed values on a linear 3D model,
exact lobe Shapley values, Captum's own calls, lobe aggregation, voxel scoring and the
randomisation cascade."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from captum.attr import Occlusion, ShapleyValues

from ctbrainage.core.config import ModelConfig
from ctbrainage.interpret import attribution
from ctbrainage.learn.networks import build_model
from ctbrainage.steps.s07_attribution import _lobe_metrics, lobe_scores
from ctbrainage.synth.scoring import score_importance, voxel_scores

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
    assert perfect == {"auroc": 1.0, "mass_accuracy": 1.0}
    noise = voxel_scores(rng.random(signal.shape), signal, brain)
    assert 0.4 < noise["auroc"] < 0.6 and noise["mass_accuracy"] == pytest.approx(0.027, abs=0.01)
    assert voxel_scores(1 - signal, signal, brain)["auroc"] == 0.0
    assert np.isnan(voxel_scores(signal, signal * 0, brain)["auroc"])


def test_the_cascade_randomises_from_the_top_and_leaves_the_model_alone(resnet):
    model = resnet[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stages = list(attribution.randomised_cascade(model, seed=0))
    names = [name for name, _ in stages]
    assert names == ["fc", "layer4", "layer3", "layer2", "layer1", "bn1", "conv1"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    top, last = stages[0][1].state_dict(), stages[-1][1].state_dict()
    assert not torch.equal(top["fc.weight"], before["fc.weight"])
    assert torch.equal(top["conv1.weight"], before["conv1.weight"])  # only the top so far
    assert not torch.equal(last["conv1.weight"], before["conv1.weight"])


def test_unknown_method_and_training_mode_are_refused(linear):
    model, x, _ = linear
    with pytest.raises(ValueError, match="unknown method 'lime'"):
        attribution.voxel_map(model, x, "lime")
    with pytest.raises(ValueError, match="training mode"):
        attribution.voxel_map(model.train(), x, "saliency")


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
    assert _lobe_metrics(np.eye(4), np.eye(4))[2] == 4


def test_the_voxel_methods_are_profile_methods():
    import typing

    from ctbrainage.core.config import AttributionMethod

    methods = typing.get_args(AttributionMethod)
    assert set(attribution.VOXEL_METHODS) == set(methods) - {"lobe_shapley", "unoise"}
