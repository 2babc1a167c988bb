"""U-Noise (Koker et al. 2021; Bintsi et al., ``bintsi_unoise_voxel_importance_maps``, section
2.3): a 3D U-Net learns, per voxel, how much noise a frozen age model tolerates there.

Noisy input X + brain · σ · (v_min + (v_max − v_min) · m) · ε, m = sigmoid(U(X)), ε ~ N(0, 1),
σ = the brain's intensity SD (v_min, v_max in units of σ); loss = (f(X_noisy) − y)² − r ·
mean_brain(log m), the age error in months. Importance = 1 − m (little noise tolerated). The
paper's printed equations differ (its Eq. 1 adds v_min as a constant, its Eq. 2 evaluates the
clean input): this is the form its text describes (docs/attribution.md). The U-Net is first
trained as an autoencoder of X. Model and tensors in, a trained noise model out; no files.
"""

from __future__ import annotations

import torch
from monai.networks.nets import UNet

from ctbrainage.core.config import UNoiseConfig
from ctbrainage.core.workers import progress_bar

LEVELS = 5  # down and up blocks (paper)


def levels_for(shape) -> int:
    """The paper's 5 levels, or fewer where the input's edges do not halve 5 times to at least
    2 voxels (instance normalisation needs more than one)."""
    levels = 0
    while levels < LEVELS and all(
        n % 2 ** (levels + 1) == 0 and n // 2 ** (levels + 1) >= 2 for n in shape
    ):
        levels += 1
    return levels


def build_noise_model(channels: int, levels: int = LEVELS) -> torch.nn.Module:
    """A 3D U-Net (MONAI) with ``levels`` down and up blocks, one channel in and out."""
    if channels < 1 or levels < 1:
        raise ValueError(f"channels and levels must be >= 1, got {channels}, {levels}")
    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        channels=tuple(channels * 2**i for i in range(levels + 1)),
        strides=(2,) * levels,
    )


def brain_sd(x: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
    """Per volume [B, 1, ...], the intensity SD inside the brain, shape [B, 1, 1, 1, 1]."""
    dims = tuple(range(1, x.ndim))
    n = brain.sum(dims, keepdim=True).clamp_min(2)
    mean = (x * brain).sum(dims, keepdim=True) / n
    return (((x - mean) * brain) ** 2).sum(dims, keepdim=True).div(n - 1).sqrt()


def noise_mask(noise_model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """m in (0, 1): the share of the noise range each voxel tolerates."""
    return torch.sigmoid(noise_model(x))


def noisy_input(x, brain, mask, settings: UNoiseConfig, generator=None) -> torch.Tensor:
    """X + brain · σ · (v_min + (v_max − v_min) · m) · ε."""
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    scale = settings.v_min + (settings.v_max - settings.v_min) * mask
    return x + brain * brain_sd(x, brain) * scale * eps


def unoise_loss(age_model, noise_model, x, brain, age_months, span_months, settings, generator):
    """The U-Noise loss of a batch (ages in months; the model's output × ``span_months``)."""
    mask = noise_mask(noise_model, x)
    predicted = age_model(noisy_input(x, brain, mask, settings, generator))[:, 0] * span_months
    error = ((predicted - age_months) ** 2).mean()
    reward = (torch.log(mask.clamp_min(1e-6)) * brain).sum() / brain.sum().clamp_min(1)
    return error - settings.r * reward


def train_noise_model(
    age_model: torch.nn.Module,
    volumes: torch.Tensor,
    brains: torch.Tensor,
    ages_unit: torch.Tensor,
    span_months: float,
    settings: UNoiseConfig,
    seed: int,
    progress: bool = True,
    desc: str = "U-Noise",
) -> torch.nn.Module:
    """Train a noise model for the frozen ``age_model`` on ``volumes`` [n, 1, X, Y, Z] (brain
    masks alike, 0/1; ages in the model's unit, months = unit × ``span_months`` + offset: the
    offset cancels in the error). The age model's weights and batch-norm statistics are left
    untouched. Deterministic for ``seed`` on CPU."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    device = next(age_model.parameters()).device
    noise_model = build_noise_model(settings.channels, levels_for(volumes.shape[2:])).to(device)
    optimiser = torch.optim.Adam(noise_model.parameters(), settings.lr)
    was_training = age_model.training
    frozen = [p.requires_grad for p in age_model.parameters()]
    age_model.eval().requires_grad_(False)
    n = len(volumes)
    total = (settings.autoencoder_epochs + settings.epochs) * -(-n // settings.batch_size)
    bar = progress_bar(total=total, desc=desc, progress=progress)
    try:
        for epoch in range(settings.autoencoder_epochs + settings.epochs):
            autoencoder = epoch < settings.autoencoder_epochs
            for batch in torch.randperm(n, generator=generator).split(settings.batch_size):
                x, brain = volumes[batch].to(device), brains[batch].to(device)
                optimiser.zero_grad()
                if autoencoder:
                    loss = torch.nn.functional.mse_loss(noise_model(x), x)
                else:
                    months = ages_unit[batch].to(device) * span_months
                    loss = unoise_loss(
                        age_model, noise_model, x, brain, months, span_months, settings, generator
                    )
                loss.backward()
                optimiser.step()
                bar.update()
    finally:
        bar.close()
        for p, flag in zip(age_model.parameters(), frozen, strict=True):
            p.requires_grad_(flag)
        age_model.train(was_training)
    return noise_model.eval()


def importance_map(noise_model: torch.nn.Module, x: torch.Tensor, brain: torch.Tensor):
    """1 − m inside the brain (0 outside), shape [B, X, Y, Z]: high where little noise is
    tolerated."""
    with torch.no_grad():
        return ((1 - noise_mask(noise_model, x)) * brain)[:, 0]
