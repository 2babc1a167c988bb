"""The synthesised second input channel of step 08 — the analogue, in CT, of the AI-generated
cerebral blood volume map of Jomsky et al. 2025: a 3D U-Net (MONAI) that maps the CT input to a
per-voxel white-matter maturity map (arrays in, arrays and a network out; step 08 handles the
files and decides which subjects each U-Net may see)."""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import SSIMMetric
from monai.networks.nets import UNet

from ctbrainage.core.sections import SynthesisConfig


def to_grid(volumes: np.ndarray, size: int) -> np.ndarray:
    """Volumes [n, 1, X, X, X] averaged onto a ``size``³ grid over the same field of view
    (adaptive average pooling: each output voxel the mean of the input voxels it overlaps; for
    an integer ratio, the mean of its block). ``size`` = X: unchanged."""
    edge = volumes.shape[2]
    if size == edge:
        return volumes
    if not 1 <= size <= edge or set(volumes.shape[2:]) != {edge}:
        raise ValueError(f"cannot average {volumes.shape[2:]} voxels onto a {size}^3 grid")
    pooled = torch.nn.functional.adaptive_avg_pool3d(torch.from_numpy(volumes), size)
    return pooled.numpy()


def nearest_index(edge: int, size: int) -> np.ndarray:
    """Indices of the ``edge`` input voxels nearest the centres of ``size`` output voxels over
    the same field of view (labels go to the coarser grid by nearest neighbour)."""
    return np.floor((np.arange(size) + 0.5) * edge / size).astype(int)


def build_unet(channels: tuple[int, ...]) -> torch.nn.Module:
    """A 3D U-Net, one channel in and out, ``channels`` per level (halving the grid between
    levels), one residual unit per block."""
    if len(channels) < 2 or min(channels) < 1:
        raise ValueError(f"a U-Net needs at least two levels of >= 1 channel, got {channels}")
    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        channels=tuple(channels),
        strides=(2,) * (len(channels) - 1),
        num_res_units=1,
    )


def train_unet(
    volumes: np.ndarray,
    targets: np.ndarray,
    brains: np.ndarray,
    config: SynthesisConfig,
    seed: int,
    device: str = "cpu",
) -> torch.nn.Module:
    """A U-Net fitted on ``device`` to map ``volumes`` to ``targets`` (in [0, 1]) with the L1
    loss inside ``brains`` (all [n, 1, X, Y, Z]); Adam, deterministic for ``seed`` on CPU."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x, y, brain = (torch.from_numpy(np.ascontiguousarray(a)) for a in (volumes, targets, brains))
    model = build_unet(config.channels).to(device)
    optimiser = torch.optim.Adam(model.parameters(), config.lr)
    model.train()
    for _ in range(config.epochs):
        for batch in torch.randperm(len(x), generator=generator).split(config.batch_size):
            optimiser.zero_grad()
            out = torch.sigmoid(model(x[batch].to(device)))
            inside = brain[batch].to(device)
            error = (out - y[batch].to(device)).abs() * inside
            loss = error.sum() / inside.sum().clamp_min(1)
            loss.backward()
            optimiser.step()
    return model.eval()


def synthesise(
    model: torch.nn.Module, volumes: np.ndarray, brains: np.ndarray, device: str = "cpu"
) -> np.ndarray:
    """The U-Net's maps of ``volumes`` [n, 1, X, Y, Z], in [0, 1] inside ``brains``, 0 outside
    (like the CT input)."""
    with torch.no_grad():
        parts = [
            torch.sigmoid(model(batch.to(device))).cpu()
            for batch in torch.from_numpy(volumes).split(4)
        ]
    return (torch.cat(parts).numpy() * brains).astype(np.float32)


def synthesis_quality(
    maps: np.ndarray, targets: np.ndarray, brains: np.ndarray
) -> dict[str, np.ndarray]:
    """Per volume [n, 1, X, Y, Z]: the mean absolute error of ``maps`` against ``targets``
    inside the brain, and their 3D SSIM (MONAI, data range 1; both 0 outside the brain)."""
    inside = brains.reshape(len(brains), -1)
    error = np.abs(maps - targets).reshape(len(maps), -1)
    mae = (error * inside).sum(1) / np.maximum(inside.sum(1), 1)
    window = min(11, *maps.shape[2:])
    ssim = SSIMMetric(spatial_dims=3, data_range=1.0, win_size=window, reduction="none")(
        torch.from_numpy(maps * brains), torch.from_numpy(targets * brains)
    )
    return {"mae": mae, "ssim": ssim.numpy().reshape(-1)}
