"""Network factory: 3D ResNets (MONAI) for age regression from one-channel volumes.

One input channel (the P-tile-normalised CT), one output (age normalised to [0, 1]). The first
convolution has stride 2 as in He et al. 2016 (MONAI's default is 1; stride 2 is about 8x
cheaper at the same depth — a documented deviation). ``width`` is the number of channels of the
first stage (64 in the standard ResNets); later stages double it as usual.
"""

from __future__ import annotations

import torch
from monai.networks.nets import ResNet

from ctbrainage.config import ModelConfig

# (block, layers per stage) of the standard ResNets (He et al. 2016; MONAI's resnet_params)
ARCHITECTURES = {
    "resnet10": ("basic", [1, 1, 1, 1]),
    "resnet18": ("basic", [2, 2, 2, 2]),
    "resnet34": ("basic", [3, 4, 6, 3]),
    "resnet50": ("bottleneck", [3, 4, 6, 3]),
}
STANDARD_WIDTH = 64


def build_model(config: ModelConfig) -> torch.nn.Module:
    """The regression network described by a profile's ``model`` section."""
    if config.arch not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {config.arch!r}; choose from {', '.join(ARCHITECTURES)}"
        )
    if config.width < 1 or config.first_stride not in (1, 2):
        raise ValueError(f"width must be >= 1 and first_stride 1 or 2, got {config}")
    block, layers = ARCHITECTURES[config.arch]
    return ResNet(
        block=block,
        layers=layers,
        block_inplanes=[64, 128, 256, 512],
        spatial_dims=3,
        n_input_channels=1,
        conv1_t_size=7,
        conv1_t_stride=config.first_stride,
        widen_factor=config.width / STANDARD_WIDTH,
        num_classes=1,
    )


def load_weights(config: ModelConfig, path) -> torch.nn.Module:
    """The network of a checkpoint written by training (a Lightning checkpoint whose
    ``state_dict`` holds the network under ``model.``), in eval mode on CPU."""
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    model = build_model(config)
    model.load_state_dict(weights)
    return model.eval()


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
