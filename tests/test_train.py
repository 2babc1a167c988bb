"""Training one fold: the paper's settings, out-of-fold predictions, determinism, resuming."""

import pandas as pd
import pytest
import torch

from ctbrainage.config import load_profile
from ctbrainage.train import AgeRegressor, collect_predictions, fit_fold


def test_paper_profile_settings_and_one_cpu_step():
    cfg = load_profile("paper")
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, cfg.seed) == (75, 4, 1e-4, 42)
    module = AgeRegressor(cfg)
    optimiser = module.configure_optimizers()
    assert isinstance(optimiser, torch.optim.AdamW) and optimiser.defaults["lr"] == 1e-4
    assert isinstance(module.loss, torch.nn.MSELoss)
    x, y = torch.rand(2, 1, 32, 32, 32), torch.rand(2, 1)
    loss = module.training_step((x, y), 0)
    loss.backward()
    optimiser.step()
    assert torch.isfinite(loss)


@pytest.fixture
def tiny(tiny_run):
    return tiny_run


def test_fold_predictions_are_out_of_fold_and_deterministic(tiny):
    first = fit_fold(tiny, 0, progress=False)
    folds = pd.read_csv(tiny.run_path / "folds.csv")
    assert set(first["subject_id"]) == set(folds.loc[folds["fold"] == 0, "subject_id"])
    assert (tiny.run_path / "models" / "fold0.ckpt").exists()
    assert (tiny.run_path / "logs" / "fold0" / "version_0" / "metrics.csv").exists()
    for path in (tiny.run_path / "models").glob("fold0*"):
        path.unlink()
    again = fit_fold(tiny, 0, progress=False)
    assert again["predicted_months"].tolist() == first["predicted_months"].tolist()


def test_finished_fold_is_skipped_and_predictions_collected(tiny):
    fit_fold(tiny, 0, progress=False)
    ckpt = tiny.run_path / "models" / "fold0.ckpt"
    before = ckpt.stat().st_mtime_ns
    fit_fold(tiny, 0, progress=False)
    assert ckpt.stat().st_mtime_ns == before
    fit_fold(tiny, 1, progress=False)
    table = collect_predictions(tiny)
    assert len(table) == 12 and set(table["fold"]) == {0, 1}
    assert table["predicted_months"].notna().all()
    with pytest.raises(ValueError, match="fold must be"):
        fit_fold(tiny, 2, progress=False)
