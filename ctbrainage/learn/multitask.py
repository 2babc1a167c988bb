"""The multi-task network of step 11 (Park et al. 2026, in CT): one 3D encoder shared by an age
head, a white-matter segmentation head and a reconstruction head, built from MONAI blocks.

- encoder: ``levels`` residual units (:class:`monai.networks.blocks.ResidualUnit`, batch norm),
  the first at full resolution, each next one halving it and doubling the channels (``width``
  at the first);
- age head: the global average of the deepest level's features, or with ``multiscale`` of every
  level's (concatenated), through a small perceptron → age in [0, 1];
- segmentation head (``segment_classes`` > 0): a U-Net decoder over the encoder's levels (MONAI
  :class:`~monai.networks.blocks.UpSample` and :class:`~monai.networks.blocks.Convolution`) →
  class logits per voxel (background and the four lobes' white-matter cores);
- reconstruction head (``reconstruct``): the same decoder shape → the input channels.

``forward`` returns the age alone (as every network of :mod:`ctbrainage.learn.networks`, so that
training, prediction and attribution treat it alike); :meth:`MultiTaskNet.heads` returns every
head's output.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution, ResidualUnit, UpSample
from torch import nn

from ctbrainage.learn.train import AgeRegressor

SEGMENT_CLASSES = 5  # background + the four lobes' white-matter cores


def _unit(c_in: int, c_out: int, stride: int) -> nn.Module:
    return ResidualUnit(3, c_in, c_out, strides=stride, subunits=2, norm="BATCH", act="RELU")


class _Decoder(nn.Module):
    """A U-Net decoder: from the deepest features up, each level upsampled ×2 and joined with
    the encoder's features of that level; a 1³ convolution to ``out_channels``."""

    def __init__(self, channels: list[int], out_channels: int):
        super().__init__()
        self.up = nn.ModuleList(
            UpSample(3, c_deep, c_skip, scale_factor=2, mode="deconv")
            for c_deep, c_skip in zip(channels[:0:-1], channels[-2::-1], strict=True)
        )
        self.merge = nn.ModuleList(
            Convolution(3, 2 * c, c, norm="BATCH", act="RELU") for c in channels[-2::-1]
        )
        self.out = Convolution(3, channels[0], out_channels, kernel_size=1, conv_only=True)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for up, merge, skip in zip(self.up, self.merge, features[-2::-1], strict=True):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.out(x)


class MultiTaskNet(nn.Module):
    """Shared encoder, age head and the optional segmentation and reconstruction heads."""

    def __init__(
        self,
        in_channels: int,
        width: int = 8,
        levels: int = 4,
        segment_classes: int = 0,
        reconstruct: bool = False,
        multiscale: bool = True,
    ):
        super().__init__()
        if levels < 2 or width < 1 or in_channels < 1:
            raise ValueError(f"need levels >= 2, width >= 1, in_channels >= 1, got {levels=}")
        channels = [width * 2**i for i in range(levels)]
        self.channels, self.multiscale = channels, multiscale
        self.encoder = nn.ModuleList(
            _unit(c_in, c_out, 1 if i == 0 else 2)
            for i, (c_in, c_out) in enumerate(zip([in_channels, *channels], channels, strict=False))
        )
        pooled = sum(channels) if multiscale else channels[-1]
        self.age = nn.Sequential(nn.Linear(pooled, 32), nn.ReLU(), nn.Linear(32, 1))
        self.segment = _Decoder(channels, segment_classes) if segment_classes else None
        self.reconstruct = _Decoder(channels, in_channels) if reconstruct else None

    @property
    def grid_multiple(self) -> int:
        """The input edge must be a multiple of this (the decoders' halvings)."""
        return 2 ** (len(self.channels) - 1)

    @property
    def gradcam_layer(self) -> nn.Module:
        """The deepest encoder level (Grad-CAM's layer)."""
        return self.encoder[-1]

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for level in self.encoder:
            x = level(x)
            features.append(x)
        return features

    def _age(self, features: list[torch.Tensor]) -> torch.Tensor:
        used = features if self.multiscale else features[-1:]
        return self.age(torch.cat([f.mean(dim=(2, 3, 4)) for f in used], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._age(self._features(x))

    def heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``age`` [n, 1], and where the heads exist ``segment`` [n, classes, X, Y, Z] (logits)
        and ``reconstruct`` [n, channels, X, Y, Z]."""
        features = self._features(x)
        out = {"age": self._age(features)}
        if self.segment is not None:
            out["segment"] = self.segment(features)
        if self.reconstruct is not None:
            out["reconstruct"] = self.reconstruct(features)
        return out


class MultiTaskRegressor(AgeRegressor):
    """:class:`~ctbrainage.learn.train.AgeRegressor` with the heads' losses added: the age loss
    (``train.loss``) + ``segment_weight`` × Dice-cross-entropy of the white-matter labels
    (MONAI ``DiceCELoss``; batches carry them as a third item) + ``reconstruct_weight`` × MSE
    of the input. With an inner validation split (``train.val_fraction``; step 11 trains a
    fixed number of epochs without one) the validation loss is the age loss alone, so that every
    variant of an ablation would be chosen by the same criterion."""

    def __init__(
        self, profile, net: MultiTaskNet, segment_weight: float, reconstruct_weight: float
    ):
        from monai.losses import DiceCELoss

        super().__init__(profile, net)
        self.weights = {"segment": segment_weight, "reconstruct": reconstruct_weight}
        self.segment_loss = DiceCELoss(to_onehot_y=True, softmax=True)

    def training_step(self, batch, _):
        x, y, *labels = batch
        if self.augment is not None:
            raise ValueError("step 11 does not augment (its labels would need the same warp)")
        out = self.model.heads(x)
        losses = {"age": self.loss(out["age"], y)}
        if "segment" in out:
            losses["segment"] = self.segment_loss(out["segment"], labels[0][:, None].long())
        if "reconstruct" in out:
            losses["reconstruct"] = torch.nn.functional.mse_loss(out["reconstruct"], x)
        total = losses["age"] + sum(self.weights[k] * v for k, v in losses.items() if k != "age")
        for name, value in losses.items():
            self.log(f"train_{name}_loss", value, on_step=False, on_epoch=True, batch_size=len(x))
        self.log("train_loss", total, on_step=False, on_epoch=True, batch_size=len(x))
        return total

    def validation_step(self, batch, _):
        super().validation_step(batch[:2], _)
