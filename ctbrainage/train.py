"""Fitting one cross-validation fold with PyTorch Lightning, and out-of-fold predictions."""

from __future__ import annotations

import json

import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from ctbrainage import io
from ctbrainage.cohort import stratified_folds
from ctbrainage.config import Profile
from ctbrainage.data import AgeScaler, VolumeDataset, augmentation, load_volumes
from ctbrainage.models import build_model

TRAIN_VERSION = 1  # bump when a change alters trained models or predictions


class AgeRegressor(pl.LightningModule):
    """The network, MSE loss on normalised age, AdamW."""

    def __init__(self, profile: Profile):
        super().__init__()
        self.model = build_model(profile.model)
        self.lr = profile.train.lr
        self.loss = torch.nn.MSELoss()

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, _):
        x, y = batch
        loss = self.loss(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(x))
        return loss

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val_loss", self.loss(self(x), y), batch_size=len(x))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def make_folds(profile: Profile) -> pd.DataFrame:
    """``folds.csv``: subject_id → fold, age-stratified and seeded (written once per run)."""
    path = profile.run_path / "folds.csv"
    cohort = pd.read_csv(profile.run_path / "preprocess.csv")
    folds = pd.DataFrame(
        {
            "subject_id": cohort["subject_id"],
            "age_months": cohort["age_months"],
            "fold": stratified_folds(cohort["age_months"], profile.train.folds, profile.seed),
        }
    )
    if path.exists():
        old = pd.read_csv(path)
        if old[["subject_id", "fold"]].equals(folds[["subject_id", "fold"]]):
            return old
    io.atomic_write_text(path, folds.to_csv(index=False))
    return folds


def fit_fold(profile: Profile, fold: int, gpu: int | None = None, progress: bool = True):
    """Train on every fold but ``fold``, predict ``fold``; skip when already done.

    Writes ``models/fold<k>.ckpt``, ``models/fold<k>_predictions.csv`` and the loss curves in
    ``logs/fold<k>/``. Deterministic on CPU for the profile's seed.
    """
    run = profile.run_path
    ckpt = run / "models" / f"fold{fold}.ckpt"
    pred_path = run / "models" / f"fold{fold}_predictions.csv"
    record = run / "models" / f"fold{fold}.json"
    params = {
        "model": profile.to_dict()["model"],
        "train": profile.to_dict()["train"],
        "seed": profile.seed,
        "version": TRAIN_VERSION,
    }
    if record.exists() and ckpt.exists() and pred_path.exists():
        if json.loads(record.read_text()).get("params") == params:
            return pd.read_csv(pred_path)
    folds = make_folds(profile)
    if not 0 <= fold < profile.train.folds:
        raise ValueError(f"fold must be in 0..{profile.train.folds - 1}, got {fold}")
    pl.seed_everything(profile.seed + fold, workers=True)
    scaler = AgeScaler(*profile.age_range_months)
    train, test = folds[folds["fold"] != fold], folds[folds["fold"] == fold]
    train_set = VolumeDataset(
        load_volumes(run, train["subject_id"]),
        scaler.to_unit(train["age_months"]),
        augmentation() if profile.train.augment else None,
    )
    test_volumes = load_volumes(run, test["subject_id"])
    loader = DataLoader(
        train_set,
        batch_size=profile.train.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(profile.seed + fold),
    )
    module = AgeRegressor(profile)
    trainer = pl.Trainer(
        max_epochs=profile.train.epochs,
        accelerator="gpu" if gpu is not None else "cpu",
        devices=[gpu] if gpu is not None else 1,
        precision="bf16-mixed" if gpu is not None else "32-true",
        deterministic=gpu is None,
        logger=pl.loggers.CSVLogger(run / "logs", name=f"fold{fold}", version=0),
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(module, loader)
    module.eval()
    with torch.no_grad():
        unit = module(torch.from_numpy(test_volumes)).float().numpy()[:, 0]
    predictions = test[["subject_id", "fold", "age_months"]].assign(
        predicted_months=scaler.to_months(unit)
    )
    with io.atomic_path(ckpt) as tmp:
        trainer.save_checkpoint(tmp)
    io.atomic_write_text(pred_path, predictions.to_csv(index=False))
    io.atomic_write_text(record, json.dumps({"params": params}, indent=1))
    return predictions


def collect_predictions(profile: Profile) -> pd.DataFrame:
    """Out-of-fold predictions of every fold → ``predictions.csv`` (months)."""
    parts = [
        pd.read_csv(profile.run_path / "models" / f"fold{k}_predictions.csv")
        for k in range(profile.train.folds)
    ]
    table = pd.concat(parts, ignore_index=True).sort_values("subject_id", ignore_index=True)
    io.atomic_write_text(profile.run_path / "predictions.csv", table.to_csv(index=False))
    return table
