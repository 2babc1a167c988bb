"""Training one fold: the paper's settings, out-of-fold predictions, determinism, resuming."""

import numpy as np
import pandas as pd
import pytest
import torch

from ctbrainage.config import load_profile
from ctbrainage.train import (
    AgeRegressor,
    collect_predictions,
    collect_validation,
    fit_fold,
    inner_validation,
)


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


def test_cosine_schedule_anneals_the_learning_rate_to_zero(tmp_path):
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    cfg = load_profile("tiny", {"train.schedule": "cosine", "model.width": 4})
    module = AgeRegressor(cfg)
    data = DataLoader(TensorDataset(torch.rand(8, 1, 16, 16, 16), torch.rand(8, 1)), batch_size=4)
    trainer = pl.Trainer(
        max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(module, data)
    scheduler = trainer.lr_scheduler_configs[0]
    assert scheduler.interval == "step" and scheduler.scheduler.T_max == 6
    assert scheduler.scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


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


def test_fitting_leaves_the_process_wide_torch_flags_as_they_were(tiny, tmp_path):
    for name in ("preprocessed", "preprocess.csv"):
        (tmp_path / name).symlink_to(tiny.run_path / name)
    before = torch.are_deterministic_algorithms_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    fit_fold(load_profile("tiny", {"run_dir": str(tmp_path)}), 0, progress=False)
    assert torch.are_deterministic_algorithms_enabled() == before
    assert torch.utils.deterministic.fill_uninitialized_memory == fill


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


def test_inner_validation_is_an_age_stratified_part_of_the_training_fold():
    train = pd.DataFrame({"age_months": np.linspace(0, 47, 80)})
    held = inner_validation(train, 0.1, seed=3)
    assert held.sum() == 8
    assert held.reshape(8, 10).sum(axis=1).tolist() == [1] * 8  # one per 10 consecutive ages
    assert not inner_validation(train, 0.0, seed=3).any()
    with pytest.raises(ValueError, match="val_fraction"):
        inner_validation(train, 0.5, seed=3)


def test_fold_with_inner_validation_logs_and_predicts_it(tiny_run, tmp_path):
    for name in ("preprocessed", "preprocess.csv"):
        (tmp_path / name).symlink_to(tiny_run.run_path / name)
    cfg = load_profile("tiny", {"run_dir": str(tmp_path), "train.val_fraction": 0.34})
    test = fit_fold(cfg, 0, progress=False)
    val = pd.read_csv(tmp_path / "models" / "fold0_validation.csv")
    folds = pd.read_csv(tmp_path / "folds.csv")
    training = set(folds.loc[folds["fold"] != 0, "subject_id"])
    assert len(val) == 2 and set(val["subject_id"]) <= training
    assert not set(val["subject_id"]) & set(test["subject_id"])
    assert (val["fold"] == 0).all() and val["predicted_months"].notna().all()
    log = pd.read_csv(tmp_path / "logs" / "fold0" / "version_0" / "metrics.csv")
    assert log["val_loss"].notna().any()
    fit_fold(cfg, 1, progress=False)
    assert len(collect_validation(cfg)) == 4
    assert collect_validation(tiny_run) is None  # the tiny profile holds out none
