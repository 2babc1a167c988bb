"""Training one fold: the paper's settings, out-of-fold predictions, determinism, resuming
(``train.fit_fold`` on arrays; step 03, ``s03_train``, on a run directory)."""

import dataclasses
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from ctbrainage.core.config import load_profile
from ctbrainage.core.layout import RunLayout
from ctbrainage.learn.datasets import load_volumes
from ctbrainage.learn.train import AgeRegressor, fit_fold, inner_validation
from ctbrainage.steps import s03_train


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


def copy_run(profile, dest, **overrides):
    """``profile`` on a copy of its run directory (the session's run stays as it is)."""
    shutil.copytree(profile.run_path, dest)
    moved = dataclasses.replace(profile, run_dir=str(dest))
    return load_profile("tiny", {"run_dir": str(dest), **overrides}) if overrides else moved


def _read(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"subject_id": str})


def test_fold_predictions_are_out_of_fold_and_deterministic(tiny_run, tmp_path):
    tiny = copy_run(tiny_run, tmp_path / "run")
    layout = RunLayout(tiny.run_path)
    first = s03_train.run(tiny, 0, progress=False).predictions
    folds = _read(layout.folds)
    assert set(first["subject_id"]) == set(folds.loc[folds["fold"] == 0, "subject_id"])
    assert layout.model(0).exists()
    assert layout.learning_curve(0).exists()
    for path in layout.models_dir.glob("fold0*"):
        path.unlink()
    assert not s03_train.is_fresh(tiny, 0) and s03_train.is_fresh(tiny, 1)
    again = s03_train.run(tiny, 0, progress=False).predictions
    assert layout.model(0).exists() and s03_train.is_fresh(tiny, 0)
    assert again["predicted_months"].tolist() == first["predicted_months"].tolist()


def test_fit_fold_is_deterministic_on_arrays(tiny_run, tmp_path):
    layout = RunLayout(tiny_run.run_path)
    folds = _read(layout.folds)
    loads = []

    def load(ids):
        loads.append(list(ids))
        return load_volumes([layout.preprocessed(s) for s in ids])

    fits = [
        fit_fold(tiny_run, folds, 1, load, tmp_path / "logs", f"run{i}", progress=False)
        for i in range(2)
    ]
    assert fits[0].validation is None  # the tiny profile holds out none
    test = set(folds.loc[folds["fold"] == 1, "subject_id"])
    assert set(fits[0].predictions["subject_id"]) == test
    assert not set(loads[0]) & test  # trained on the other fold only
    pd.testing.assert_frame_equal(fits[0].predictions, fits[1].predictions, check_exact=True)
    # step 03 wrote the same model: its predictions of fold 1 agree
    stored = _read(layout.fold_predictions(1))
    np.testing.assert_allclose(
        fits[0].predictions["predicted_months"], stored["predicted_months"], rtol=0, atol=1e-9
    )
    assert (tmp_path / "logs" / "run0" / "version_0" / "metrics.csv").exists()
    with pytest.raises(ValueError, match="fold must be"):
        fit_fold(tiny_run, folds, 2, load, tmp_path / "logs", "bad", progress=False)


def test_a_last_batch_of_one_volume_is_dropped(tiny_run, tmp_path):
    """Five training volumes in batches of 4 at 32³: a batch of one would stop batch norm."""
    layout = RunLayout(tiny_run.run_path)
    folds = _read(layout.folds)
    train = folds[folds["fold"] == 0].head(5)
    test = folds[folds["fold"] == 1].head(2)
    fit = fit_fold(
        tiny_run,
        pd.concat([train, test]),
        1,
        lambda ids: load_volumes([layout.preprocessed(s) for s in ids]),
        tmp_path / "logs",
        "five",
        progress=False,
    )
    assert fit.trainer.global_step == tiny_run.train.epochs  # one full batch per epoch
    assert set(fit.predictions["subject_id"]) == set(test["subject_id"])


def test_fitting_leaves_the_process_wide_torch_flags_as_they_were(tiny_run, tmp_path):
    layout = RunLayout(tiny_run.run_path)
    before = torch.are_deterministic_algorithms_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    fit_fold(
        tiny_run,
        _read(layout.folds),
        0,
        lambda ids: load_volumes([layout.preprocessed(s) for s in ids]),
        tmp_path / "logs",
        "fold0",
        progress=False,
    )
    assert torch.are_deterministic_algorithms_enabled() == before
    assert torch.utils.deterministic.fill_uninitialized_memory == fill


def test_finished_fold_is_skipped_and_predictions_collected(tiny_run, tmp_path):
    tiny = copy_run(tiny_run, tmp_path / "run")
    layout = RunLayout(tiny.run_path)
    assert s03_train.is_fresh(tiny)  # a moved run stays fresh
    s03_train.run(tiny, 0, progress=False)
    before = layout.model(0).stat().st_mtime_ns
    s03_train.run(tiny, 0, progress=False)
    assert layout.model(0).stat().st_mtime_ns == before
    s03_train.run(tiny, 1, progress=False)
    table = s03_train.predictions(tiny)
    assert len(table) == 12 and set(table["fold"]) == {0, 1}
    assert table["predicted_months"].notna().all()
    assert table["subject_id"].is_monotonic_increasing
    parts = pd.concat([_read(layout.fold_predictions(k)) for k in (0, 1)])
    pd.testing.assert_frame_equal(
        table, parts.sort_values("subject_id", ignore_index=True), check_exact=True
    )
    with pytest.raises(ValueError, match="fold must be"):
        s03_train.run(tiny, 2, progress=False)
    # a fold out of date: predictions.csv is not complete, and says which fold to train
    layout.model(1).unlink()
    assert not s03_train.finalise(tiny)
    with pytest.raises(FileNotFoundError, match=r"fold\(s\) \[1\] need step 03"):
        s03_train.predictions(tiny)


def test_load_model_reproduces_the_fold_predictions(tiny_run):
    layout = RunLayout(tiny_run.run_path)
    stored = _read(layout.fold_predictions(0))
    model = s03_train.load_model(tiny_run, 0)
    assert not model.training
    with torch.no_grad():
        x = torch.from_numpy(load_volumes([layout.preprocessed(s) for s in stored["subject_id"]]))
        unit = model(x)[:, 0].numpy()
    lo, hi = tiny_run.age_range_months
    np.testing.assert_allclose(lo + unit * (hi - lo), stored["predicted_months"], atol=1e-4)
    with pytest.raises(FileNotFoundError, match="no trained model for fold 1"):
        s03_train.load_model(dataclasses.replace(tiny_run, run_dir="/nonexistent/run"), 1)


def test_inner_validation_is_an_age_stratified_part_of_the_training_fold():
    train = pd.DataFrame({"age_months": np.linspace(0, 47, 80)})
    held = inner_validation(train, 0.1, seed=3)
    assert held.sum() == 8
    assert held.reshape(8, 10).sum(axis=1).tolist() == [1] * 8  # one per 10 consecutive ages
    assert not inner_validation(train, 0.0, seed=3).any()
    with pytest.raises(ValueError, match="val_fraction"):
        inner_validation(train, 0.5, seed=3)


def test_fold_with_inner_validation_logs_and_predicts_it(tiny_run, tmp_path):
    cfg = copy_run(tiny_run, tmp_path / "run", **{"train.val_fraction": 0.34})
    layout = RunLayout(cfg.run_path)
    assert not s03_train.is_fresh(cfg, 0)  # a changed setting
    test = s03_train.run(cfg, 0, progress=False).predictions
    val = _read(layout.fold_validation(0))
    folds = _read(layout.folds)
    training = set(folds.loc[folds["fold"] != 0, "subject_id"])
    assert len(val) == 2 and set(val["subject_id"]) <= training
    assert not set(val["subject_id"]) & set(test["subject_id"])
    assert (val["fold"] == 0).all() and val["predicted_months"].notna().all()
    log = pd.read_csv(layout.learning_curve(0))
    assert log["val_loss"].notna().any()
    # fold 1 still holds the old settings' model: the old predictions.csv is not used
    with pytest.raises(FileNotFoundError, match=r"fold\(s\) \[1\]"):
        s03_train.predictions(cfg)
    s03_train.run(cfg, 1, progress=False)
    assert len(s03_train.validation(cfg)) == 4
    assert s03_train.validation(tiny_run) is None  # the tiny profile holds out none
    assert len(s03_train.predictions(cfg)) == 12
