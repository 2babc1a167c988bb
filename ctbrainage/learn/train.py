"""Fitting one cross-validation fold with PyTorch Lightning, and its out-of-fold predictions
(arrays in, a trained model and tables out; step 03 handles the files)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from ctbrainage.core.atomic import atomic_path
from ctbrainage.core.cohort import stratified_folds
from ctbrainage.core.config import Profile
from ctbrainage.core.workers import progress_shown
from ctbrainage.learn.datasets import AgeScaler, BatchAugmentation, VolumeDataset
from ctbrainage.learn.networks import build_model

# Lightning's advertisement for its cloud logger is noise in every executed notebook
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
    lambda record: "litlogger" not in record.getMessage()
)


LOSSES = {"mse": torch.nn.MSELoss, "mae": torch.nn.L1Loss}
OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}


MESSAGES = "lightning.log"  # Lightning's messages of a fit, beside its CSV log's version folder
_LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning_fabric", "lightning")


@contextlib.contextmanager
def lightning_messages_to(path: Path):
    """Lightning's log lines ("GPU available: …", "`Trainer.fit` stopped: …") and the warnings
    raised meanwhile are written to ``path``, not to the notebook or the terminal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in _LIGHTNING_LOGGERS]
    saved = [(logger.handlers, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.handlers, logger.propagate = [handler], False

    def log_warning(message, category, filename, lineno, file=None, line=None):
        handler.stream.write(warnings.formatwarning(message, category, filename, lineno, line))

    try:
        with warnings.catch_warnings():
            warnings.showwarning = log_warning
            yield
    finally:
        for logger, (handlers, propagate) in zip(loggers, saved, strict=True):
            logger.handlers, logger.propagate = handlers, propagate
        handler.close()


class AgeRegressor(pl.LightningModule):
    """The network and the loss on normalised age (``train.loss``: MSE, the paper, or MAE),
    AdamW (the paper) or Adam at a constant learning rate or annealed to zero over the steps
    with a cosine (``train.schedule``); with ``train.augment``, each training batch goes
    through :class:`~ctbrainage.learn.datasets.BatchAugmentation`. Logs the validation MAE
    (normalised age) beside the loss."""

    def __init__(self, profile: Profile, model: torch.nn.Module | None = None):
        super().__init__()
        self.model = model or build_model(profile.model, profile.preprocess.size)
        self.lr = profile.train.lr
        self.schedule = profile.train.schedule
        self.optimiser_class = OPTIMIZERS[profile.train.optimizer]
        self.loss = LOSSES[profile.train.loss]()
        augment = profile.train.augment
        self.augment = BatchAugmentation(profile.preprocess.spacing_mm) if augment else None

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, _):
        x, y = batch
        if self.augment is not None:
            x = self.augment(x)
        loss = self.loss(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(x))
        return loss

    def validation_step(self, batch, _):
        x, y = batch
        predicted = self(x)
        self.log("val_loss", self.loss(predicted, y), batch_size=len(x))
        self.log("val_mae", torch.nn.functional.l1_loss(predicted, y), batch_size=len(x))

    def configure_optimizers(self):
        optimiser = self.optimiser_class(self.parameters(), lr=self.lr)
        if self.schedule == "constant":
            return optimiser
        steps = self.trainer.estimated_stepping_batches
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps)
        return {"optimizer": optimiser, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}


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


@dataclasses.dataclass
class FoldFit:
    """A trained fold: its trainer (for the checkpoint) and the predictions of its test fold and
    of its inner validation subjects (None without an inner validation split), in months; with
    early stopping, the epoch whose weights were kept (the best validation loss)."""

    trainer: pl.Trainer
    predictions: pd.DataFrame
    validation: pd.DataFrame | None
    best_epoch: int | None = None

    def save_model(self, path) -> None:
        """The weights as a Lightning checkpoint, written atomically
        (:func:`ctbrainage.learn.networks.load_weights` reads it)."""
        with atomic_path(path) as tmp:
            self.trainer.save_checkpoint(tmp, weights_only=True)


def fit_fold(
    profile: Profile,
    folds: pd.DataFrame,
    fold: int,
    load: Callable[[Sequence[str]], np.ndarray],
    log_dir: Path,
    log_name: str,
    gpu: int | None = None,
    progress: bool = True,
    patience: int = 0,
    callbacks: Sequence[pl.Callback] = (),
    module: Callable[[], AgeRegressor] | None = None,
    labels: Callable[[Sequence[str]], np.ndarray] | None = None,
) -> FoldFit:
    """Train on every fold of ``folds`` (subject_id, age_months, fold) but ``fold``, then predict
    ``fold``. ``load(ids)`` returns the subjects' model inputs [n, 1, x, y, z]; the loss curves
    go to Lightning's CSV logger under ``log_dir/log_name``.

    With ``train.val_fraction`` > 0, an age-stratified part of the training subjects is held out
    for the validation loss and predicted too (used for bias correction). With ``patience`` > 0
    (which needs that split), training stops when the validation loss has not improved for
    ``patience`` epochs and the best epoch's weights are kept. ``callbacks``: more Lightning
    callbacks (e.g. :class:`Checkpoints`). ``module``: builds the Lightning module to fit, after
    seeding (default: :class:`AgeRegressor` of the profile's model), with
    ``labels(ids)`` a third item of its batches (e.g. segmentation labels, step 11).
    Deterministic on CPU for the profile's seed.
    """
    if not 0 <= fold < profile.train.folds:
        raise ValueError(f"fold must be in 0..{profile.train.folds - 1}, got {fold}")
    pl.seed_everything(profile.seed + fold, workers=True, verbose=False)
    scaler = AgeScaler(*profile.age_range_months)
    test = folds[folds["fold"] == fold]
    train = folds[folds["fold"] != fold].reset_index(drop=True)
    held_out = inner_validation(train, profile.train.val_fraction, profile.seed + fold)
    val, train = train[held_out], train[~held_out]
    if patience > 0 and not len(val):
        raise ValueError("early stopping (patience > 0) needs an inner validation split")

    def dataset(subjects: pd.DataFrame) -> VolumeDataset:
        ids = subjects["subject_id"]
        extra = labels(ids) if labels is not None else None
        return VolumeDataset(load(ids), scaler.to_unit(subjects["age_months"]), extra)

    train_set = dataset(train)
    batch = profile.train.batch_size
    loader = DataLoader(
        train_set,
        batch_size=batch,
        shuffle=True,
        # a last batch of one volume breaks batch norm where a stage is 1 voxel wide (32³)
        drop_last=len(train_set) % batch == 1 and len(train_set) > batch,
        generator=torch.Generator().manual_seed(profile.seed + fold),
    )
    val_loader = None
    if len(val):
        val_loader = DataLoader(dataset(val), batch_size=profile.train.batch_size)
    module = AgeRegressor(profile) if module is None else module()
    best = _BestWeights() if patience > 0 else None
    stopping = [pl.callbacks.EarlyStopping("val_loss", patience=patience), best] if best else []
    stopping += list(callbacks)
    with _restored_determinism_flags(), lightning_messages_to(Path(log_dir, log_name, MESSAGES)):
        trainer = pl.Trainer(
            max_epochs=profile.train.epochs,
            accelerator="gpu" if gpu is not None else "cpu",
            devices=[gpu] if gpu is not None else 1,
            precision="bf16-mixed" if gpu is not None else "32-true",
            deterministic=gpu is None,
            logger=pl.loggers.CSVLogger(log_dir, name=log_name, version=0),
            enable_checkpointing=False,
            enable_progress_bar=progress_shown(progress),
            enable_model_summary=False,
            num_sanity_val_steps=0,
            log_every_n_steps=1,
            callbacks=stopping,
        )
        trainer.fit(module, loader, val_loader)
    if best is not None:
        module.load_state_dict(best.state)
    module.eval()

    def predict(subjects: pd.DataFrame) -> pd.DataFrame:
        with torch.no_grad():
            volumes = torch.from_numpy(load(subjects["subject_id"]))
            unit = torch.cat([module(batch).float() for batch in volumes.split(8)])[:, 0]
        return subjects[["subject_id", "fold", "age_months"]].assign(
            predicted_months=scaler.to_months(unit.numpy())
        )

    validation = predict(val.assign(fold=fold)) if len(val) else None
    return FoldFit(trainer, predict(test), validation, best.epoch if best else None)


class _BestWeights(pl.Callback):
    """Keeps, in memory, the weights of the epoch with the lowest validation loss (early
    stopping's choice; Lightning's checkpoint callback would write every best epoch to disk)."""

    def __init__(self):
        self.loss, self.epoch, self.state = float("inf"), None, None

    def on_validation_end(self, trainer, module):
        loss = float(trainer.callback_metrics["val_loss"])
        if loss < self.loss:
            self.loss, self.epoch = loss, trainer.current_epoch
            self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}


class Checkpoints(pl.Callback):
    """Per epoch, the validation MAE in months (``curve``); in memory, the weights of the first
    epoch whose validation MAE reaches each of ``thresholds`` (months; the multi-seed paper's
    "phases") and of the last epoch."""

    def __init__(self, thresholds: Sequence[float], months_per_unit: float):
        self.thresholds = list(thresholds)
        self.scale = months_per_unit
        self.curve: list[dict] = []
        self.reached: dict[int, tuple[int, float, dict]] = {}  # phase → (epoch, MAE, weights)
        self.last: dict | None = None

    def on_validation_end(self, trainer, module):
        mae = float(trainer.callback_metrics["val_mae"]) * self.scale
        epoch = trainer.current_epoch
        self.curve.append({"epoch": epoch, "val_mae_months": mae})
        state = None
        for phase, threshold in enumerate(self.thresholds):
            if phase not in self.reached and mae <= threshold:
                state = state or {k: v.detach().clone() for k, v in module.state_dict().items()}
                self.reached[phase] = (epoch, mae, state)

    def on_train_end(self, trainer, module):
        self.last = {k: v.detach().clone() for k, v in module.state_dict().items()}
