"""U-Noise (Koker et al. 2021; Bintsi et al., ``bintsi_unoise_voxel_importance_maps``, section
2.3): a 3D U-Net learns, per voxel, how much noise a frozen age model tolerates there.

Noisy input X + brain · σ · (v_min + (v_max − v_min) · m) · ε, m = sigmoid(U(X)), ε ~ N(0, 1),
σ = the brain's intensity SD (v_min, v_max in units of σ); loss = (f(X_noisy) − y)² − r ·
mean_brain(log m), the age error in **years**, the paper's unit, so that its r = 0.1 weighs the
noise reward as it did there. Importance = 1 − m (little noise tolerated). The paper's printed
equations differ (its Eq. 1 adds v_min as a constant, its Eq. 2 evaluates the clean input): this
is the form its text describes (docs/attribution.md). The U-Net is first trained as an
autoencoder of X, then on the loss until its validation loss stops improving (the best epoch's
weights are kept); among several (r, v_min, v_max), :func:`choose` keeps the one that adds the
most noise while the validation error stays within a tolerance of the clean model's. Tensors
in, a trained noise model and its loss curve out; no files.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from monai.networks.nets import UNet

from ctbrainage.core.sections import UNoiseConfig
from ctbrainage.core.workers import progress_bar

LEVELS = 5  # down and up blocks (paper)
MONTHS_PER_YEAR = 12.0
FLOOR = 0.05  # m below this: the voxel tolerates (almost) only the least noise, v_min


@dataclass(frozen=True)
class NoiseRange:
    """One candidate of the noise settings: the reward's weight and the noise range (in σ)."""

    r: float
    v_min: float
    v_max: float

    def level(self, mask_mean: float) -> float:
        """The mean noise SD (units of σ) of a mask whose mean is ``mask_mean``."""
        return self.v_min + (self.v_max - self.v_min) * mask_mean


@dataclass(frozen=True)
class Volumes:
    """Inputs [n, 1, X, Y, Z], brain masks alike (0/1) and ages in the model's unit."""

    x: torch.Tensor
    brain: torch.Tensor
    ages_unit: torch.Tensor

    def batches(self, size: int, order: torch.Tensor | None = None):
        order = torch.arange(len(self.x)) if order is None else order
        for batch in order.split(size):
            yield self.x[batch], self.brain[batch], self.ages_unit[batch]


@dataclass
class Training:
    """A trained noise model, its curve (one dict per epoch) and how it ended."""

    model: torch.nn.Module
    noise: NoiseRange
    curve: list[dict]
    best_epoch: int  # of the noise phase, 1-based
    plateaued: bool  # stopped because the validation loss stopped improving
    clean_mae_months: float  # the age model's validation MAE without noise

    @property
    def best(self) -> dict:
        return next(
            row for row in self.curve if row["phase"] == "noise" and row["epoch"] == self.best_epoch
        )


def grid(settings: UNoiseConfig) -> list[NoiseRange]:
    """Every (r, v_min, v_max) of the settings' lists with v_min < v_max."""
    return [
        NoiseRange(r, lo, hi)
        for r in settings.r
        for lo in settings.v_min
        for hi in settings.v_max
        if lo < hi
    ]


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


def noisy_input(x, brain, mask, noise: NoiseRange, generator=None) -> torch.Tensor:
    """X + brain · σ · (v_min + (v_max − v_min) · m) · ε."""
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    scale = noise.v_min + (noise.v_max - noise.v_min) * mask
    return x + brain * brain_sd(x, brain) * scale * eps


def unoise_terms(age_model, noise_model, batch, span_months, noise: NoiseRange, generator):
    """(the loss, the squared age error in years², the absolute errors in months, the mask) of
    a batch; the age model's output × ``span_months`` is months (its offset cancels)."""
    x, brain, ages_unit = batch
    mask = noise_mask(noise_model, x)
    predicted = age_model(noisy_input(x, brain, mask, noise, generator))[:, 0]
    error_months = (predicted - ages_unit) * span_months
    squared_years = ((error_months / MONTHS_PER_YEAR) ** 2).mean()
    reward = (torch.log(mask.clamp_min(1e-6)) * brain).sum() / brain.sum().clamp_min(1)
    return squared_years - noise.r * reward, squared_years, error_months.abs(), mask


def _evaluate(age_model, noise_model, data: Volumes, span_months, noise, settings, seed):
    """Validation loss, MAE under noise (months) and the mask's statistics in the brain; the
    same noise draws every epoch."""
    generator = torch.Generator().manual_seed(seed)
    device = next(noise_model.parameters()).device
    loss = errors = 0.0
    masks, n = [], len(data.x)
    with torch.no_grad():
        for x, brain, ages in data.batches(settings.batch_size):
            batch = (x.to(device), brain.to(device), ages.to(device))
            total, _, abs_error, mask = unoise_terms(
                age_model, noise_model, batch, span_months, noise, generator
            )
            loss += float(total) * len(x)
            errors += float(abs_error.sum())
            masks.append(mask[batch[1] > 0].cpu())
    values = torch.cat(masks)
    return {
        "val_loss": loss / n,
        "val_mae_months": errors / n,
        "mask_mean": float(values.mean()),
        "mask_sd": float(values.std()) if len(values) > 1 else 0.0,
        "floor_share": float((values < FLOOR).float().mean()),
    }


def clean_mae(age_model, data: Volumes, span_months: float, batch_size: int) -> float:
    """The age model's MAE (months) on ``data`` without noise."""
    device = next(age_model.parameters()).device
    with torch.no_grad():
        errors = [
            ((age_model(x.to(device))[:, 0] - ages.to(device)) * span_months).abs()
            for x, _, ages in data.batches(batch_size)
        ]
    return float(torch.cat(errors).mean())


def train_noise_model(
    age_model: torch.nn.Module,
    train: Volumes,
    val: Volumes,
    span_months: float,
    settings: UNoiseConfig,
    noise: NoiseRange,
    seed: int,
    progress: bool = True,
    desc: str = "U-Noise",
) -> Training:
    """Train a noise model for the frozen ``age_model``: ``settings.autoencoder_epochs`` as an
    autoencoder, then on the U-Noise loss until the validation loss has not improved by
    ``min_improvement`` (relative) for ``patience`` epochs, or ``max_epochs``; the best epoch's
    weights are returned. The age model's weights and batch-norm statistics are left untouched.
    Deterministic for ``seed`` on CPU."""
    if len(val.x) == 0:
        raise ValueError("U-Noise needs at least one validation subject")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    device = next(age_model.parameters()).device
    noise_model = build_noise_model(settings.channels, levels_for(train.x.shape[2:])).to(device)
    optimiser = torch.optim.Adam(noise_model.parameters(), settings.lr)
    was_training = age_model.training
    frozen = [p.requires_grad for p in age_model.parameters()]
    age_model.eval().requires_grad_(False)
    curve, best, best_epoch, waited, best_state = [], float("inf"), 0, 0, None
    total = settings.autoencoder_epochs + settings.max_epochs
    bar = progress_bar(total=total, desc=desc, unit="epoch", progress=progress)
    try:
        clean = clean_mae(age_model, val, span_months, settings.batch_size)
        for epoch in range(1, total + 1):
            autoencoder = epoch <= settings.autoencoder_epochs
            order = torch.randperm(len(train.x), generator=generator)
            losses = []
            noise_model.train()
            for x, brain, ages in train.batches(settings.batch_size, order):
                batch = (x.to(device), brain.to(device), ages.to(device))
                optimiser.zero_grad()
                if autoencoder:
                    loss = torch.nn.functional.mse_loss(noise_model(batch[0]), batch[0])
                else:
                    loss = unoise_terms(
                        age_model, noise_model, batch, span_months, noise, generator
                    )[0]
                loss.backward()
                optimiser.step()
                losses.append(float(loss.detach()) * len(x))
            noise_model.eval()
            phase = "autoencoder" if autoencoder else "noise"
            row = {"phase": phase, "train_loss": sum(losses) / len(train.x)}
            bar.update()
            if autoencoder:
                curve.append({**row, "epoch": epoch})
                continue
            row |= _evaluate(age_model, noise_model, val, span_months, noise, settings, seed)
            row["epoch"] = epoch - settings.autoencoder_epochs
            curve.append(row)
            if best_state is None or row["val_loss"] < best - settings.min_improvement * abs(best):
                best, best_epoch, waited = row["val_loss"], row["epoch"], 0
                best_state = copy.deepcopy(noise_model.state_dict())
            else:
                waited += 1
            if waited >= settings.patience:
                break
    finally:
        bar.close()
        for p, flag in zip(age_model.parameters(), frozen, strict=True):
            p.requires_grad_(flag)
        age_model.train(was_training)
    noise_model.load_state_dict(best_state)
    plateaued = waited >= settings.patience
    return Training(noise_model.eval(), noise, curve, best_epoch, plateaued, clean)


def choose(trainings: list[Training], max_error_increase_months: float) -> Training:
    """The training that adds the most noise (mean noise SD in the brain at its best epoch)
    while its validation MAE under noise stays within ``max_error_increase_months`` of the
    clean model's; if none does, the one with the smallest MAE under noise."""
    if not trainings:
        raise ValueError("no U-Noise training to choose from")

    def within(t: Training) -> bool:
        return t.best["val_mae_months"] - t.clean_mae_months <= max_error_increase_months

    eligible = [t for t in trainings if within(t)]
    if eligible:
        return max(eligible, key=lambda t: t.noise.level(t.best["mask_mean"]))
    return min(trainings, key=lambda t: t.best["val_mae_months"])


def importance_map(noise_model: torch.nn.Module, x: torch.Tensor, brain: torch.Tensor):
    """1 − m inside the brain (0 outside), shape [B, X, Y, Z]: high where little noise is
    tolerated."""
    with torch.no_grad():
        return ((1 - noise_mask(noise_model, x)) * brain)[:, 0]
