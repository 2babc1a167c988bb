"""One prepared check of the paper profile on a GPU: speed, memory and the project's code paths.

Sections, each printed and written to ``<out>/gpu_check.json``:

1. the machine: GPU, its memory and compute capability, torch, CUDA, cuDNN and Lightning versions;
2. a small preprocessed cohort written as a run directory: phantom heads at the profile's input
   size (an ellipsoid cut into four lobes whose intensities rise with age, plus noise), with
   ``cohort.csv``, ``preprocessed/`` and ``lobes/`` as steps 01-02 write them (no SimpleITK needed);
3. the data loader alone (``ctbrainage.learn.datasets.VolumeDataset`` in a shuffled DataLoader),
volumes/s;
4. training throughput of the profile's model with the project's training step
   (``ctbrainage.learn.train.AgeRegressor`` in a Lightning Trainer, bf16-mixed on a GPU as
   ``fit_fold``
   runs it): volumes/s over timed steps after a warm-up, seconds per epoch of a 160-subject
   training fold, peak GPU memory, and the model's training FLOPs per volume
   (``torch.utils.flop_counter``) as achieved TFLOP/s and its ratio to the GPU's dense bf16 peak;
5. the project's steps on the phantom cohort: step 03 for every fold (``train.epochs`` set by
   ``--epochs``, Lightning on ``--gpu``), then step 05 (every fill) on the same device;
6. the projected wall time of the whole profile, approximately (folds × epochs at the measured
   epoch time plus each fold's measured fixed cost, and the measured perturbation time per
   subject) for
   ``--cohort`` subjects. Preprocessing and lobes run on the CPU and are not included.

Needs torch, pytorch-lightning, numpy, pandas, PyYAML, MONAI and nibabel; no SimpleITK, pydicom
or TorchIO. ``--cpu --tiny`` runs the same code on the CPU at the tiny profile's size (a test does).
Usage: python benchmarks/gpu_check.py [--gpu 0] [--profile paper] [--subjects 12] [--epochs 2]
       [--steps 20] [--cohort 201] [--peak-tflops X] [--out DIR]
       python benchmarks/gpu_check.py --cpu --tiny [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from ctbrainage.core.config import Profile, load_profile
from ctbrainage.core.labels import LOBES
from ctbrainage.core.layout import RunLayout
from ctbrainage.learn.datasets import AgeScaler, VolumeDataset, load_volumes
from ctbrainage.learn.train import AgeRegressor
from ctbrainage.steps import s03_train, s05_perturbation

TRAINING_FOLD = 160  # subjects in a training fold of the paper (201 × 4/5)
# dense bf16 tensor throughput (TFLOP/s) from the vendors' data sheets, by a part of the GPU name
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def machine(device: torch.device) -> dict:
    """What the check runs on."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "lightning": pl.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "gpu": props.name,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
        }
    else:
        info |= {"gpu": None, "cpu_threads": torch.get_num_threads()}
    return info


def phantom_run(profile: Profile, n: int, seed: int = 0) -> list[str]:
    """Write ``n`` phantom subjects (ages spread over the profile's range) into the profile's run
    directory as steps 01-02 leave them; returns their ids."""
    layout = RunLayout(profile.run_path)
    size, spacing = profile.preprocess.size, profile.preprocess.spacing_mm
    rng = np.random.default_rng(seed)
    lo, hi = profile.age_range_months
    ages = lo + (hi - lo) * (np.arange(n) + rng.uniform(0, 1, n)) / n
    affine = np.diag([spacing, spacing, spacing, 1.0])
    grid = (np.indices((size,) * 3, dtype=np.float32) - (size - 1) / 2) / size
    ids = [f"gpu{i:03d}" for i in range(n)]
    for sid, age in zip(ids, ages, strict=True):
        centre = rng.normal(0.0, 0.02, 3).astype(np.float32)[:, None, None, None]
        g = grid - centre
        radius = 0.3 + 0.1 * age / hi  # the brain grows with age
        brain = ((g / np.array([0.9, 1.1, 0.8])[:, None, None, None]) ** 2).sum(0) < radius**2
        labels = np.where(brain, 1 + (g[0] > 0) + 2 * (g[1] > 0), 0).astype(np.uint8)
        volume = np.where(brain, 0.35, 0.0) + rng.normal(0, 0.05, brain.shape)
        for k in LOBES:
            midpoint = 6.0 + 12.0 * (k - 1)
            volume[labels == k] += 0.3 / (1.0 + np.exp(-(age - midpoint) / 4.0))
        volume = np.where(brain, np.clip(volume, 0, 1), 0).astype(np.float32)
        for path, array in (
            (layout.preprocessed(sid), volume),
            (layout.brain(sid), brain.astype(np.uint8)),
            (layout.lobes(sid), labels),
        ):
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(array, affine), path)
    cohort = pd.DataFrame(
        {"subject_id": ids, "age_months": ages, "sex": "F", "site": "A", "image": ""}
    )
    layout.cohort.parent.mkdir(parents=True, exist_ok=True)
    cohort.to_csv(layout.cohort, index=False)
    return ids


def loader_throughput(profile, volumes, ages, device: torch.device, passes: int) -> float:
    """Volumes/s of the training DataLoader alone, batches moved to ``device`` as in training."""
    dataset = VolumeDataset(volumes, AgeScaler(*profile.age_range_months).to_unit(ages))
    loader = DataLoader(dataset, batch_size=profile.train.batch_size, shuffle=True)
    start, count = time.perf_counter(), 0
    for _ in range(passes):
        for x, _y in loader:
            x.to(device)
            count += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return count / (time.perf_counter() - start)


class _StepTimer(pl.Callback):
    """Times the training steps after ``warmup`` steps (the device synchronised at each end)."""

    def __init__(self, warmup: int, device: torch.device):
        self.warmup, self.device, self.volumes, self.start = warmup, device, 0, None

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            self._sync()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.start is not None:
            self.volumes += len(batch[0])

    def on_train_end(self, trainer, module):
        self._sync()
        self.seconds = time.perf_counter() - self.start


def training_throughput(profile, volumes, ages, device, warmup: int, steps: int) -> dict:
    """The project's training step in a Trainer set up as ``fit_fold`` sets it up."""
    dataset = VolumeDataset(volumes, AgeScaler(*profile.age_range_months).to_unit(ages))
    loader = DataLoader(dataset, batch_size=profile.train.batch_size, shuffle=True)
    timer = _StepTimer(warmup, device)
    gpu = device.type == "cuda"
    trainer = pl.Trainer(
        max_steps=warmup + steps,
        max_epochs=-1,
        accelerator="gpu" if gpu else "cpu",
        devices=[device.index or 0] if gpu else 1,
        precision="bf16-mixed" if gpu else "32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    pl.seed_everything(profile.seed, verbose=False)
    trainer.fit(AgeRegressor(profile), loader)
    rate = timer.volumes / timer.seconds
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if gpu else None
    return {
        "volumes_per_s": rate,
        "seconds_per_epoch_160": TRAINING_FOLD / rate,
        "timed_steps": steps,
        "peak_gpu_memory_gib": peak,
    }


def training_flops(profile: Profile, device: torch.device) -> float:
    """FLOPs of one training step (forward and backward) per volume at the profile's input."""
    from torch.utils.flop_counter import FlopCounterMode

    model = AgeRegressor(profile).model.to(device).eval()  # eval: same FLOPs at batch 1
    size = profile.preprocess.size
    x = torch.zeros(1, 1, size, size, size, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return float(counter.get_total_flops())


def peak_tflops(gpu_name: str | None, given: float | None) -> float | None:
    if given:
        return given
    for part, value in PEAK_BF16_TFLOPS.items():
        if gpu_name and part in gpu_name:
            return value
    return None


def project_steps(profile: Profile, gpu: int | None, progress: bool) -> dict:
    """Steps 03 (every fold) and 05 (every fill) on the phantom run, timed."""
    folds = []
    for fold in range(profile.train.folds):
        start = time.perf_counter()
        s03_train.run(profile, fold, gpu=gpu, progress=progress)
        folds.append(time.perf_counter() - start)
    start = time.perf_counter()
    result = s05_perturbation.run(profile, gpu=gpu, progress=progress)
    perturb = time.perf_counter() - start
    n = len(s05_perturbation.subjects(profile))
    predictions = pd.read_csv(RunLayout(profile.run_path).predictions)
    return {
        "fold_seconds": folds,
        "predicted_subjects": len(predictions),
        "perturbation_seconds": perturb,
        "perturbed_subjects": n,
        "perturbation_rows": {fill: len(table) for fill, table in result.tables.items()},
        "perturbation_seconds_per_subject": perturb / max(n, 1),
    }


def projection(profile: Profile, report: dict, cohort: int) -> dict:
    """Whole-profile wall time, approximately, from the measurements: each fold's fixed cost (its
    measured time less its epochs' share at the measured rate; loading and predicting the
    phantoms included) plus ``train.epochs`` epochs of a training fold of ``cohort × (k-1)/k``
    subjects (no inner validation split), and the perturbation of ``cohort`` subjects at the
    phantoms' time per subject (model loading per fold included)."""
    steps, train = report["project_steps"], report["training"]
    k = profile.train.folds
    trained = report["phantom_subjects"] * (k - 1) / k
    epoch_phantom = trained / train["volumes_per_s"]
    fixed = [max(t - report["epochs"] * epoch_phantom, 0.0) for t in steps["fold_seconds"]]
    epoch = cohort * (k - 1) / k / train["volumes_per_s"]
    training = k * profile.train.epochs * epoch + sum(fixed) / len(fixed) * k
    perturb = cohort * steps["perturbation_seconds_per_subject"]
    return {
        "cohort": cohort,
        "training_seconds": training,
        "perturbation_seconds": perturb,
        "total_seconds": training + perturb,
        "fold_fixed_seconds": sum(fixed) / len(fixed),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="paper")
    p.add_argument("--gpu", type=int, default=0, help="CUDA device index (default 0)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU (float32, as fit_fold)")
    p.add_argument("--tiny", action="store_true", help="the tiny profile's sizes (for tests)")
    p.add_argument("--subjects", type=int, default=12, help="phantom subjects (default 12)")
    p.add_argument("--epochs", type=int, default=2, help="epochs of each fold in step 03")
    p.add_argument("--steps", type=_positive, default=20, help="timed training steps (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    p.add_argument("--cohort", type=int, default=201, help="subjects of the projection")
    p.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, if not known")
    p.add_argument("--out", type=Path, help="report folder (default: $OUT or runs/gpu_check)")
    args = p.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        p.error("no CUDA device: run with --cpu (and --tiny for a quick check)")
    device = torch.device("cpu" if args.cpu else f"cuda:{args.gpu}")
    gpu = None if args.cpu else args.gpu
    out = args.out or Path(os.environ.get("OUT") or "runs/gpu_check")
    out.mkdir(parents=True, exist_ok=True)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")  # inside Lightning

    base = load_profile("tiny" if args.tiny else args.profile)
    with tempfile.TemporaryDirectory() as run_dir:
        profile = load_profile(
            "tiny" if args.tiny else args.profile,
            {"run_dir": run_dir, "train.epochs": args.epochs},
        )
        report: dict = {"profile": base.name, "epochs": args.epochs}
        report["machine"] = info = machine(device)
        _say("machine", info)
        start = time.perf_counter()
        ids = phantom_run(profile, args.subjects)
        layout = RunLayout(profile.run_path)
        volumes = load_volumes([layout.preprocessed(s) for s in ids])
        ages = pd.read_csv(layout.cohort)["age_months"].to_numpy()
        report["phantom_subjects"] = len(ids)
        report["phantom_seconds"] = time.perf_counter() - start
        report["loader_volumes_per_s"] = loader_throughput(profile, volumes, ages, device, 3)
        _say("loader", {"volumes_per_s": report["loader_volumes_per_s"]})
        train = training_throughput(profile, volumes, ages, device, args.warmup, args.steps)
        flops = training_flops(profile, device)
        achieved = flops * train["volumes_per_s"] / 1e12
        peak = peak_tflops(info.get("gpu"), args.peak_tflops)
        train |= {
            "train_gflop_per_volume": flops / 1e9,
            "achieved_tflops": achieved,
            "peak_bf16_tflops": peak,
            "achieved_over_peak": achieved / peak if peak and gpu is not None else None,
        }
        report["training"] = train
        _say("training", train)
        report["project_steps"] = project_steps(profile, gpu, progress=False)
        _say("project steps", report["project_steps"])
        report["projection"] = projection(base, report, args.cohort)
        _say(f"projected {base.name} profile", report["projection"])
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"report: {out / 'gpu_check.json'}")
    return report


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _say(title: str, values: dict) -> None:
    print(f"== {title}")
    for key, value in values.items():
        shown = f"{value:.4g}" if isinstance(value, float) else value
        print(f"   {key}: {shown}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
