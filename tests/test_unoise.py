"""U-Noise's training (ctbrainage.interpret.unoise): the loss in years, stopping on the
validation loss, the choice among noise settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctbrainage.core.sections import UNoiseConfig
from ctbrainage.interpret import unoise
from ctbrainage.interpret.unoise import NoiseRange, Training, Volumes

SPAN = 48.0  # months per model unit


def _age_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 1, 3, padding=1), torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten()
    ).eval()


def _volumes(n: int, seed: int) -> Volumes:
    g = torch.Generator().manual_seed(seed)
    brain = torch.zeros(n, 1, 8, 8, 8)
    brain[:, :, 2:6, 2:6, 2:6] = 1
    return Volumes(torch.rand(n, 1, 8, 8, 8, generator=g), brain, torch.rand(n, generator=g))


def _train(settings: UNoiseConfig, seed: int = 0):
    return unoise.train_noise_model(
        _age_model(), _volumes(6, 1), _volumes(2, 2), SPAN, settings, NoiseRange(0.1, 1, 5),
        seed=seed, progress=False,
    )  # fmt: skip


def test_the_age_error_is_in_years():
    """The paper's unit: an error of 12 months is 1 year², whatever the model's unit."""

    class Constant(torch.nn.Module):
        def forward(self, x):
            return torch.full((len(x), 1), 0.5)

    noise_model = unoise.build_noise_model(2, 2)
    x, brain, _ = next(_volumes(2, 0).batches(2))
    ages = torch.tensor([0.5 - 12 / SPAN, 0.5 + 24 / SPAN])  # 12 and 24 months off
    loss, squared_years, abs_months, mask = unoise.unoise_terms(
        Constant(), noise_model, (x, brain, ages), SPAN, NoiseRange(0.1, 1, 5), None
    )
    assert float(squared_years) == pytest.approx((1 + 4) / 2)
    assert abs_months.numpy() == pytest.approx([12, 24], abs=1e-4)
    reward = float((torch.log(mask.detach()) * brain).sum() / brain.sum())
    assert float(loss) == pytest.approx(2.5 - 0.1 * reward, rel=1e-5)


def test_training_stops_when_the_validation_loss_stops_improving():
    never_better = UNoiseConfig(
        channels=2, autoencoder_epochs=1, max_epochs=10, patience=2, min_improvement=10.0
    )  # after its first epoch, no epoch improves by 1000 %
    done = _train(never_better)
    phases = [row["phase"] for row in done.curve]
    assert phases == ["autoencoder", "noise", "noise", "noise"]
    assert (done.best_epoch, done.plateaued) == (1, True)
    assert done.best is done.curve[1]
    runs_out = UNoiseConfig(channels=2, autoencoder_epochs=0, max_epochs=3, patience=5)
    done = _train(runs_out)
    assert len(done.curve) == 3 and not done.plateaued


def test_the_best_epochs_weights_are_kept():
    """The returned model gives the best epoch's validation loss, not the last epoch's."""
    settings = UNoiseConfig(
        channels=2, autoencoder_epochs=0, max_epochs=4, patience=4, min_improvement=10.0
    )
    done = _train(settings)
    assert done.best_epoch == 1 and len(done.curve) == 4
    val = _volumes(2, 2)
    again = unoise._evaluate(_age_model(), done.model, val, SPAN, done.noise, settings, seed=0)
    assert again["val_loss"] == pytest.approx(done.curve[0]["val_loss"], rel=1e-5)
    assert again["val_loss"] != pytest.approx(done.curve[-1]["val_loss"], rel=1e-5)


def test_training_is_deterministic_for_a_seed():
    settings = UNoiseConfig(channels=2, autoencoder_epochs=1, max_epochs=2, patience=2)
    first, second, other = _train(settings), _train(settings), _train(settings, seed=1)
    assert first.curve == second.curve
    assert first.curve != other.curve


def _outcome(noise: NoiseRange, mae: float, mask_mean: float) -> Training:
    row = {"phase": "noise", "epoch": 1, "val_mae_months": mae, "mask_mean": mask_mean}
    return Training(None, noise, [row], 1, True, clean_mae_months=2.0)


def test_the_choice_is_the_most_noise_within_the_error_tolerance():
    quiet = _outcome(NoiseRange(0.03, 1, 3), mae=2.3, mask_mean=0.2)  # level 1.4
    loud = _outcome(NoiseRange(0.3, 1, 5), mae=2.9, mask_mean=0.5)  # level 3.0
    too_loud = _outcome(NoiseRange(1.0, 1, 5), mae=4.0, mask_mean=0.9)  # level 4.6, +2 months
    assert unoise.choose([quiet, loud, too_loud], 1.0) is loud
    assert unoise.choose([quiet, loud, too_loud], 0.5) is quiet
    assert unoise.choose([loud, too_loud], 0.5) is loud  # none within: the smallest error
    with pytest.raises(ValueError, match="no U-Noise training"):
        unoise.choose([], 1.0)


def test_the_grid_keeps_only_ranges_that_rise():
    settings = UNoiseConfig(r=(0.1, 0.3), v_min=(1.0, 3.0), v_max=(3.0, 5.0))
    got = unoise.grid(settings)
    assert [(n.r, n.v_min, n.v_max) for n in got] == [
        (0.1, 1.0, 3.0), (0.1, 1.0, 5.0), (0.1, 3.0, 5.0),
        (0.3, 1.0, 3.0), (0.3, 1.0, 5.0), (0.3, 3.0, 5.0),
    ]  # fmt: skip
    assert NoiseRange(0.1, 1, 5).level(0.25) == 2.0


def test_an_empty_validation_set_is_refused():
    with pytest.raises(ValueError, match="validation subject"):
        unoise.train_noise_model(
            _age_model(), _volumes(4, 0), _volumes(0, 0), SPAN, UNoiseConfig(channels=2),
            NoiseRange(0.1, 1, 5), seed=0, progress=False,
        )  # fmt: skip


def test_mask_statistics_are_over_the_brain():
    settings = UNoiseConfig(channels=2, autoencoder_epochs=0, max_epochs=1)
    done = _train(settings)
    val = _volumes(2, 2)
    with torch.no_grad():
        m = torch.sigmoid(done.model(val.x))[val.brain > 0]
    row = done.best
    assert row["mask_mean"] == pytest.approx(float(m.mean()), rel=1e-5)
    assert row["mask_sd"] == pytest.approx(float(m.std()), rel=1e-4)
    assert row["floor_share"] == pytest.approx(float((m < unoise.FLOOR).float().mean()))
    assert np.isfinite(row["val_mae_months"]) and row["val_mae_months"] > 0
