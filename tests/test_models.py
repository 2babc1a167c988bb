"""The network factory builds the paper's network exactly, and every profile's network runs."""

import pytest
import torch
from monai.networks.nets.resnet import ResNetBlock

from ctbrainage.core.config import ModelConfig, load_profile
from ctbrainage.learn.networks import ARCHITECTURES, build_model, count_parameters


def test_paper_profile_builds_resnet34_with_a_stride_2_stem():
    model = build_model(load_profile("paper").model)
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    assert [len(stage) for stage in stages] == [3, 4, 6, 3]  # ResNet34
    assert all(isinstance(block, ResNetBlock) for stage in stages for block in stage)
    assert [stage[0].conv1.out_channels for stage in stages] == [64, 128, 256, 512]
    assert model.conv1.in_channels == 1 and model.conv1.stride == (2, 2, 2)
    assert model.fc.out_features == 1
    # a 3D ResNet34 with one input channel and one output: ~63.5 M parameters
    assert 62_000_000 < count_parameters(model) < 65_000_000


@pytest.mark.parametrize("profile", ["tiny", "demo", "paper"])
def test_each_profile_network_maps_a_batch_to_one_age_each(profile):
    cfg = load_profile(profile)
    model = build_model(cfg.model, cfg.preprocess.size).eval()
    size = min(cfg.preprocess.size, 32)  # a tiny input is enough to run every layer on CPU
    with torch.no_grad():
        out = model(torch.zeros(2, 1, size, size, size))
    assert out.shape == (2, 1)


def test_width_and_depth_options():
    small = build_model(ModelConfig(arch="resnet10", width=8))
    assert small.conv1.out_channels == 8
    assert count_parameters(small) < count_parameters(build_model(ModelConfig("resnet18", 8)))
    assert set(ARCHITECTURES) == {"resnet10", "resnet18", "resnet34", "resnet50", "vgg8", "sfcn"}
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model(ModelConfig(arch="vgg16"))  # type: ignore[arg-type]
