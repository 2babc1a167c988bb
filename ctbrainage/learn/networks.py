"""Network factory: age regression from one-channel 3D volumes.

One input channel, one output (age normalised to [0, 1]). ``width`` is the number of channels of
the first stage; later stages double it as in each architecture's paper.

- ``resnet10/18/34/50``: 3D ResNets (MONAI). The first convolution has stride 2 as in He et al.
  2016 (MONAI's default is 1; stride 2 is about 8x cheaper at the same depth — a documented
  deviation). Standard width 64.
- ``vgg8``: Jomsky et al. 2025 — five blocks of Conv3d 3³ → BatchNorm3d → ReLU → MaxPool3d 2 with
  16/32/64/128/256 channels (width 16), then fully connected layers flattened → 512 → 128 → 1.
  The flattened size depends on the input edge, so ``size`` is needed.
- ``sfcn``: the Simple Fully Convolutional Network of Peng et al. 2021 — five blocks of Conv3d 3³
  → BatchNorm3d → MaxPool3d 2 → ReLU with 32/64/128/256/256 channels (width 32), a sixth of Conv3d
  1³ → BatchNorm3d → ReLU with 64, global average pooling, dropout 0.5 and a 1³ convolution. The
  paper's head outputs 40 age bins trained with a KL loss; here it outputs one age (regression,
  like every network of the factory) and pools adaptively, so any input edge divisible by 32 runs.
"""

from __future__ import annotations

import torch
from monai.networks.nets import ResNet
from torch import nn

from ctbrainage.core.config import ModelConfig

# (block, layers per stage) of the standard ResNets (He et al. 2016; MONAI's resnet_params)
RESNETS = {
    "resnet10": ("basic", [1, 1, 1, 1]),
    "resnet18": ("basic", [2, 2, 2, 2]),
    "resnet34": ("basic", [3, 4, 6, 3]),
    "resnet50": ("bottleneck", [3, 4, 6, 3]),
}
ARCHITECTURES = (*RESNETS, "vgg8", "sfcn")
STANDARD_WIDTH = {"vgg8": 16, "sfcn": 32} | dict.fromkeys(RESNETS, 64)
POOLINGS = 5  # halvings of the input edge in VGG8 and SFCN


class VGG8(nn.Module):
    """The 3D VGG8 of Jomsky et al. 2025 for inputs of edge ``size``."""

    def __init__(self, size: int, width: int = 16):
        super().__init__()
        channels = [1] + [width * 2**i for i in range(POOLINGS)]
        self.features = nn.Sequential(
            *(
                nn.Sequential(
                    nn.Conv3d(c_in, c_out, 3, padding=1),
                    nn.BatchNorm3d(c_out),
                    nn.ReLU(),
                    nn.MaxPool3d(2),
                )
                for c_in, c_out in zip(channels, channels[1:], strict=False)
            )
        )
        flat = channels[-1] * (size // 2**POOLINGS) ** 3
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, 512),
            nn.ReLU(),
            nn.Linear(512, 128),
            nn.ReLU(),
            nn.Linear(128, 1),
        )

    @property
    def gradcam_layer(self) -> nn.Module:
        """The last block's activation before its pooling ("the final convolutional layer of
        the last block", Jomsky et al.)."""
        return self.features[-1][2]

    def forward(self, x):
        return self.head(self.features(x))


class SFCN(nn.Module):
    """The Simple Fully Convolutional Network of Peng et al. 2021, one regression output."""

    def __init__(self, width: int = 32, dropout: float = 0.5):
        super().__init__()
        channels = [1] + [width * m for m in (1, 2, 4, 8, 8)]
        blocks = [
            nn.Sequential(
                nn.Conv3d(c_in, c_out, 3, padding=1),
                nn.BatchNorm3d(c_out),
                nn.MaxPool3d(2),
                nn.ReLU(),
            )
            for c_in, c_out in zip(channels, channels[1:], strict=False)
        ]
        last = width * 2
        blocks.append(
            nn.Sequential(nn.Conv3d(channels[-1], last, 1), nn.BatchNorm3d(last), nn.ReLU())
        )
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool3d(1), nn.Dropout(dropout), nn.Conv3d(last, 1, 1), nn.Flatten()
        )

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.features[-1]

    def forward(self, x):
        return self.classifier(self.features(x))


def build_model(config: ModelConfig, size: int | None = None) -> nn.Module:
    """The regression network described by a profile's ``model`` section, for input cubes of
    edge ``size`` (needed by ``vgg8``; ``vgg8`` and ``sfcn`` need it divisible by 32)."""
    if config.arch not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {config.arch!r}; choose from {', '.join(ARCHITECTURES)}"
        )
    if config.width < 1 or config.first_stride not in (1, 2):
        raise ValueError(f"width must be >= 1 and first_stride 1 or 2, got {config}")
    if config.arch in ("vgg8", "sfcn"):
        if config.arch == "vgg8" and size is None:
            raise ValueError("vgg8 needs the input size (preprocess.size) for its dense layers")
        multiple = config.grid_multiple  # the profile's check, also here for direct calls
        if size is not None and (size % multiple or size < multiple):
            raise ValueError(
                f"{config.arch} halves the input {POOLINGS} times: preprocess.size must be a "
                f"multiple of {multiple}, got {size}"
            )
        return VGG8(size, config.width) if config.arch == "vgg8" else SFCN(config.width)
    block, layers = RESNETS[config.arch]
    return ResNet(
        block=block,
        layers=layers,
        block_inplanes=[64, 128, 256, 512],
        spatial_dims=3,
        n_input_channels=1,
        conv1_t_size=7,
        conv1_t_stride=config.first_stride,
        widen_factor=config.width / STANDARD_WIDTH["resnet10"],
        num_classes=1,
    )


def load_weights(config: ModelConfig, path, size: int | None = None) -> nn.Module:
    """The network of a checkpoint written by training (a Lightning checkpoint whose
    ``state_dict`` holds the network under ``model.``), in eval mode on CPU."""
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    model = build_model(config, size)
    model.load_state_dict(weights)
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
