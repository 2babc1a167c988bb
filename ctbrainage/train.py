"""Fitting one cross-validation fold with PyTorch Lightning, and out-of-fold predictions."""

from __future__ import annotations

import contextlib
import json
import logging
import warnings

import numpy as np
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

# Lightning's advertisement for its cloud logger is noise in every executed notebook
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
    lambda record: "litlogger" not in record.getMessage()
)


class AgeRegressor(pl.LightningModule):
    """The network, MSE loss on normalised age, AdamW at a constant learning rate (the paper)
    or annealed to zero over the steps with a cosine (``train.schedule``)."""

    def __init__(self, profile: Profile):
        super().__init__()
        self.model = build_model(profile.model)
        self.lr = profile.train.lr
        self.schedule = profile.train.schedule
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
        optimiser = torch.optim.AdamW(self.parameters(), lr=self.lr)
        if self.schedule == "constant":
            return optimiser
        steps = self.trainer.estimated_stepping_batches
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps)
        return {"optimizer": optimiser, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}


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


def inner_validation(train: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the training subjects held out for validation: one of ``round(1 /
    fraction)`` age-stratified parts (so about ``fraction`` of them); none when 0."""
    if fraction <= 0:
        return np.zeros(len(train), dtype=bool)
    if fraction >= 0.5:
        raise ValueError(f"train.val_fraction must be in [0, 0.5), got {fraction}")
    parts = min(round(1 / fraction), len(train))
    return stratified_folds(train["age_months"], parts, seed) == 0


@contextlib.contextmanager
def _restored_determinism_flags():
    """Let Lightning's ``deterministic=True`` hold for one fit only (it sets process-wide torch
    flags and leaves them on), without NaN-filling every new tensor: that debugging aid cost
    about 4 % of a CPU training step (benchmarks/bench_train.py) and changes no result."""
    fill = torch.utils.deterministic.fill_uninitialized_memory
    algorithms = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = fill


def fit_fold(profile: Profile, fold: int, gpu: int | None = None, progress: bool = True):
    """Train on every fold but ``fold``, predict ``fold``; skip when already done.

    With ``train.val_fraction`` > 0, an age-stratified part of the training subjects is held out
    for the validation loss and predicted too (``fold<k>_validation.csv``, used for bias
    correction). Writes ``models/fold<k>.ckpt``, ``models/fold<k>_predictions.csv`` and the loss
    curves in ``logs/fold<k>/``. Deterministic on CPU for the profile's seed.
    """
    run = profile.run_path
    ckpt = run / "models" / f"fold{fold}.ckpt"
    pred_path = run / "models" / f"fold{fold}_predictions.csv"
    val_path = run / "models" / f"fold{fold}_validation.csv"
    record = run / "models" / f"fold{fold}.json"
    params = {
        "model": profile.to_dict()["model"],
        "train": profile.to_dict()["train"],
        "seed": profile.seed,
        "version": TRAIN_VERSION,
    }
    outputs = [ckpt, pred_path] + ([val_path] if profile.train.val_fraction > 0 else [])
    if record.exists() and all(path.exists() for path in outputs):
        if json.loads(record.read_text()).get("params") == params:
            return pd.read_csv(pred_path)
    folds = make_folds(profile)
    if not 0 <= fold < profile.train.folds:
        raise ValueError(f"fold must be in 0..{profile.train.folds - 1}, got {fold}")
    pl.seed_everything(profile.seed + fold, workers=True)
    scaler = AgeScaler(*profile.age_range_months)
    test = folds[folds["fold"] == fold]
    train = folds[folds["fold"] != fold].reset_index(drop=True)
    held_out = inner_validation(train, profile.train.val_fraction, profile.seed + fold)
    val, train = train[held_out], train[~held_out]
    train_set = VolumeDataset(
        load_volumes(run, train["subject_id"]),
        scaler.to_unit(train["age_months"]),
        augmentation() if profile.train.augment else None,
    )
    loader = DataLoader(
        train_set,
        batch_size=profile.train.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(profile.seed + fold),
    )
    val_loader = None
    if len(val):
        val_set = VolumeDataset(
            load_volumes(run, val["subject_id"]), scaler.to_unit(val["age_months"])
        )
        val_loader = DataLoader(val_set, batch_size=profile.train.batch_size)
    module = AgeRegressor(profile)
    with _restored_determinism_flags():
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
            num_sanity_val_steps=0,
            log_every_n_steps=1,
        )
        with warnings.catch_warnings():  # a deprecation inside Lightning; no val split is fine
            warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")
            warnings.filterwarnings("ignore", message=".*`validation_step` but have no")
            trainer.fit(module, loader, val_loader)
    module.eval()

    def predict(subjects: pd.DataFrame) -> pd.DataFrame:
        with torch.no_grad():
            volumes = torch.from_numpy(load_volumes(run, subjects["subject_id"]))
            unit = torch.cat([module(batch).float() for batch in volumes.split(8)])[:, 0]
        return subjects[["subject_id", "fold", "age_months"]].assign(
            predicted_months=scaler.to_months(unit.numpy())
        )

    predictions = predict(test)
    with io.atomic_path(ckpt) as tmp:
        trainer.save_checkpoint(tmp, weights_only=True)
    io.atomic_write_text(pred_path, predictions.to_csv(index=False))
    if len(val):
        io.atomic_write_text(val_path, predict(val.assign(fold=fold)).to_csv(index=False))
    io.atomic_write_text(record, json.dumps({"params": params}, indent=1))
    return predictions


def load_fold_model(profile: Profile, fold: int) -> torch.nn.Module:
    """The trained network of ``fold`` (from ``models/fold<k>.ckpt``), in eval mode on CPU.
    Its output is age in [0, 1]; :class:`AgeScaler` over ``profile.age_range_months`` maps it to
    months."""
    path = profile.run_path / "models" / f"fold{fold}.ckpt"
    if not path.exists():
        raise FileNotFoundError(f"no trained model for fold {fold}: {path} (run 03_train first)")
    module = AgeRegressor(profile)
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    return module.model.eval()


def collect_predictions(profile: Profile) -> pd.DataFrame:
    """Out-of-fold predictions of every fold → ``predictions.csv`` (months)."""
    parts = [
        pd.read_csv(profile.run_path / "models" / f"fold{k}_predictions.csv")
        for k in range(profile.train.folds)
    ]
    table = pd.concat(parts, ignore_index=True).sort_values("subject_id", ignore_index=True)
    io.atomic_write_text(profile.run_path / "predictions.csv", table.to_csv(index=False))
    return table


def collect_validation(profile: Profile) -> pd.DataFrame | None:
    """Inner-validation predictions of every fold's model (``fold`` = the model's fold), or
    None when the profile holds out no validation subjects."""
    if profile.train.val_fraction <= 0:
        return None
    paths = [
        profile.run_path / "models" / f"fold{k}_validation.csv" for k in range(profile.train.folds)
    ]
    return pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
