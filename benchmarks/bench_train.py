"""Training throughput (volumes/s): our Lightning path against a bare PyTorch loop, same run.

Target (issue #5): the Lightning loop's overhead against a bare loop (zero_grad / forward / MSE /
backward / AdamW step) over the same model, synthetic data, DataLoader and optimiser is <= 10 %.
Overhead = bare volumes/s / Lightning volumes/s - 1 (the extra time per volume). The Lightning arm
is ``ctbrainage.learn.train.AgeRegressor`` in a Trainer set up as ``fit_fold`` sets it up
(precision,
deterministic flag, CSV logger (to a temporary folder), log_every_n_steps=1, no checkpoints, no
model summary), progress bar off. The bare arm runs with torch's default flags.

Every measurement builds a fresh model (same seed, so the same weights) and a fresh loader (same
shuffle seed), runs one warm-up epoch (not timed), then --epochs timed epochs; Lightning's one-off
cost per fit (Trainer construction, fit setup and teardown) is reported apart. The arms alternate
(rotated order) over --repeats; medians are reported. CPU: float32, deterministic as fit_fold.
--gpu N: both arms on that GPU with bf16 autocast ('bf16-mixed' in Lightning), not deterministic,
as fit_fold does there. --factors adds Lightning arms that each change one fit_fold setting, to
price it. Epoch seconds are extrapolated to the profile's training fold (synth.n x (k-1)/k).
On a machine shared with other busy processes, OpenMP threads that wait on each other at every
parallel region make multi-threaded throughput swing by an order of magnitude: use --threads 1.
Usage: python benchmarks/bench_train.py [--profile demo] [--n 48] [--epochs 3] [--repeats 5]
       [--threads N] [--gpu N] [--factors]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from ctbrainage.core.config import Profile, load_profile
from ctbrainage.learn.datasets import VolumeDataset, augmentation
from ctbrainage.learn.networks import build_model
from ctbrainage.learn.train import AgeRegressor

TARGET = 0.10  # maximum Lightning overhead


@dataclass(frozen=True)
class Setup:
    """What both arms share: profile, data, device, timed epochs, DataLoader workers."""

    profile: Profile
    volumes: np.ndarray
    ages: np.ndarray
    device: torch.device
    epochs: int
    workers: int

    @property
    def gpu(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.gpu:
            torch.cuda.synchronize(self.device)

    def loader(self) -> DataLoader:
        """The training DataLoader of fit_fold (batch, shuffle, seeded generator)."""
        augment = augmentation() if self.profile.train.augment else None
        return DataLoader(
            VolumeDataset(self.volumes, self.ages, augment),
            batch_size=self.profile.train.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(self.profile.seed),
            num_workers=self.workers,
            persistent_workers=self.workers > 0,
        )


@dataclass
class Timing:
    seconds: float  # wall clock of the timed epochs
    volumes: int  # volumes seen in the timed epochs
    fixed: float = 0.0  # one-off wall clock per fit outside the epochs (Lightning only)

    @property
    def rate(self) -> float:
        return self.volumes / self.seconds


@dataclass(frozen=True)
class Variant:
    """A Lightning arm: fit_fold's Trainer with some settings changed."""

    trainer: dict = field(default_factory=dict)
    log_loss: bool = True  # AgeRegressor.training_step calls self.log
    nan_fill: bool = True  # torch's deterministic mode fills new uninitialised tensors with NaN
    quiet: bool = False  # send stdout and stderr (progress bar) to /dev/null during the fit


class UnloggedRegressor(AgeRegressor):
    """AgeRegressor whose training step does not call ``self.log``."""

    def training_step(self, batch, _):
        x, y = batch
        return self.loss(self(x), y)


class EpochClock(pl.Callback):
    """Marks the start of every training epoch and the end of training."""

    def __init__(self, sync):
        self.sync, self.marks = sync, []

    def _mark(self) -> None:
        self.sync()
        self.marks.append(time.perf_counter())

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._mark()

    def on_train_end(self, trainer, pl_module) -> None:
        self._mark()


@contextlib.contextmanager
def torch_flags_restored():
    """Undo the global flags a Trainer sets (deterministic algorithms, cuDNN benchmark, cuBLAS
    workspace), so that the bare arm runs under torch's defaults whatever ran before it."""
    nan_fill = torch.utils.deterministic.fill_uninitialized_memory
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = nan_fill
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas
        if torch.get_num_threads() != threads:
            sys.exit(f"the Trainer changed torch threads {threads} -> {torch.get_num_threads()}")


def run_lightning(setup: Setup, variant: Variant) -> Timing:
    profile, gpu = setup.profile, setup.gpu
    pl.seed_everything(profile.seed, workers=True, verbose=False)
    module = (AgeRegressor if variant.log_loss else UnloggedRegressor)(profile)
    clock = EpochClock(setup.sync)
    loader = setup.loader()
    with contextlib.ExitStack() as stack:
        logs = stack.enter_context(tempfile.TemporaryDirectory())
        stack.enter_context(torch_flags_restored())
        torch.utils.deterministic.fill_uninitialized_memory = variant.nan_fill
        if variant.quiet:
            devnull = stack.enter_context(open(os.devnull, "w"))
            stack.enter_context(contextlib.redirect_stdout(devnull))
            stack.enter_context(contextlib.redirect_stderr(devnull))
        start = time.perf_counter()
        settings = {  # fit_fold's, but epochs, logger folder and progress bar
            "max_epochs": 1 + setup.epochs,
            "accelerator": "gpu" if gpu else "cpu",
            "devices": [setup.device.index] if gpu else 1,
            "precision": "bf16-mixed" if gpu else "32-true",
            "deterministic": not gpu,
            "logger": pl.loggers.CSVLogger(logs, name="bench", version=0),
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 1,
            "callbacks": [clock],
        }
        trainer = pl.Trainer(**{**settings, **variant.trainer})
        trainer.fit(module, loader)
        total = time.perf_counter() - start
    assert len(clock.marks) == setup.epochs + 2, clock.marks
    first, warm, end = clock.marks[0], clock.marks[1], clock.marks[-1]
    volumes = setup.epochs * len(setup.volumes)  # timed from the end of the warm-up epoch:
    return Timing(end - warm, volumes, total - (end - first))


def run_bare(setup: Setup) -> Timing:
    profile, device = setup.profile, setup.device
    pl.seed_everything(profile.seed, workers=True, verbose=False)
    model = build_model(profile.model, profile.preprocess.size).to(device).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=profile.train.lr)
    loss_fn = torch.nn.MSELoss()
    loader = setup.loader()

    def epoch() -> None:
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            optimiser.zero_grad()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=setup.gpu):
                loss = loss_fn(model(x), y)
            loss.backward()
            optimiser.step()

    epoch()  # warm-up
    setup.sync()
    start = time.perf_counter()
    for _ in range(setup.epochs):
        epoch()
    setup.sync()
    return Timing(time.perf_counter() - start, setup.epochs * len(setup.volumes))


def variants(gpu: bool, factors: bool) -> dict[str, Variant]:
    arms = {"lightning": Variant()}
    if factors:
        arms |= {
            f"deterministic={gpu}": Variant(trainer={"deterministic": gpu}),
            "no NaN fill": Variant(nan_fill=False),
            "no self.log": Variant(log_loss=False),
            "logger=False": Variant(trainer={"logger": False}),
            "log_every_n=50": Variant(trainer={"log_every_n_steps": 50}),
            "progress bar": Variant(trainer={"enable_progress_bar": True}, quiet=True),
        }
    return arms


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU {device.index}: {torch.cuda.get_device_name(device)}, bf16 autocast"
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if "model name" in ln), name)
    return f"CPU: {name}, float32"


def run(args: argparse.Namespace) -> bool:
    profile = load_profile(args.profile)
    device = torch.device("cuda", args.gpu) if args.gpu is not None else torch.device("cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--gpu given but torch sees no CUDA device")
    size = profile.preprocess.size
    rng = torch.Generator().manual_seed(profile.seed)
    volumes = torch.rand((args.n, 1, size, size, size), generator=rng).numpy()
    ages = torch.rand(args.n, generator=rng).numpy()
    setup = Setup(profile, volumes, ages, device, args.epochs, args.workers)
    arms = variants(device.type == "cuda", args.factors)
    names = [*arms, "bare"]
    batch, model, train = profile.train.batch_size, profile.model, profile.train
    steps = math.ceil(args.n / batch)
    print(
        f"profile {profile.name}: {model.arch} width {model.width}, {size}^3 input, batch {batch},"
        f" AdamW lr {train.lr:g}, MSE; {describe_device(device)}\n"
        f"torch {torch.__version__}, pytorch_lightning {pl.__version__}; torch threads:"
        f" {torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op"
        f" ({len(os.sched_getaffinity(0))} cores usable); DataLoader workers {args.workers}\n"
        f"{args.n} synthetic volumes ({steps} steps/epoch), 1 warm-up + {args.epochs} timed"
        f" epochs per measurement, {args.repeats} repeats, arms alternating\n"
    )
    load_before = os.getloadavg()[0]
    runs: dict[str, list[Timing]] = {name: [] for name in names}
    width = max(12, *map(len, names))
    print(f"{'repeat':6} " + " ".join(f"{name:>{width}}" for name in names) + "   (volumes/s)")
    for repeat in range(args.repeats):
        order = names[repeat % len(names) :] + names[: repeat % len(names)]
        for name in order:
            timing = run_bare(setup) if name == "bare" else run_lightning(setup, arms[name])
            runs[name].append(timing)
        print(f"{repeat + 1:<6} " + " ".join(f"{runs[n][-1].rate:>{width}.2f}" for n in names))
    rate = {name: statistics.median(t.rate for t in done) for name, done in runs.items()}
    print(f"{'median':6} " + " ".join(f"{rate[n]:>{width}.2f}" for n in names) + "\n")

    bare = rate["bare"]
    print(
        f"{'arm':{width}} {'overhead':>9} {'ms/step':>8} {'paired':>8}   (extra time per volume"
        " against bare, from the medians; the same per step; median of the per-repeat ratios)"
    )
    for name in arms:
        per_step = (1 / rate[name] - 1 / bare) * args.n / steps * 1000
        paired = statistics.median(
            b.rate / light.rate - 1 for b, light in zip(runs["bare"], runs[name], strict=True)
        )
        print(f"{name:{width}} {bare / rate[name] - 1:+9.1%} {per_step:+8.1f} {paired:+8.1%}")
    overhead = bare / rate["lightning"] - 1
    ok = overhead <= TARGET
    print(
        f"\nLightning (as fit_fold) {rate['lightning']:.2f} volumes/s, bare {bare:.2f} volumes/s:"
        f" overhead {overhead:+.1%} (target <= {TARGET:.0%}) {'PASS' if ok else 'FAIL'}"
    )
    fixed = statistics.median(t.fixed for t in runs["lightning"])
    print(f"one-off Lightning cost per fit (not in volumes/s): {fixed:.2f} s")
    load = max(load_before, os.getloadavg()[0])
    if load > torch.get_num_threads() + 0.5:
        print(
            f"WARNING: 1-minute load average {load:.1f} with {torch.get_num_threads()} threads:"
            " other processes compete for the cores, wall-clock figures are noisy"
            + (" (--threads 1 is less affected)" if torch.get_num_threads() > 1 else "")
        )

    folds = profile.train.folds
    cohort = profile.synth.n * (folds - 1) / folds
    light_epoch, bare_epoch = cohort / rate["lightning"], cohort / bare
    print(
        f"seconds per epoch for the {profile.name} profile's training fold ({profile.synth.n}"
        f" subjects x {folds - 1}/{folds} = {cohort:g} volumes), from the throughput above:"
        f" Lightning {light_epoch:.2f} s, bare {bare_epoch:.2f} s; one fold of"
        f" {train.epochs} epochs: Lightning {train.epochs * light_epoch:.0f} s"
    )
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo", help="demo, tiny, paper or a YAML path")
    parser.add_argument("--n", type=int, default=48, help="synthetic volumes per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="measurements per arm")
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch intra-op threads (default: all usable cores)",
    )
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (fit_fold: 0)")
    parser.add_argument("--gpu", type=int, help="CUDA device index; both arms bf16 autocast")
    parser.add_argument("--factors", action="store_true", help="price single fit_fold settings")
    args = parser.parse_args()
    if min(args.n, args.epochs, args.repeats, args.threads) < 1:
        parser.error("--n, --epochs, --repeats and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    with contextlib.suppress(RuntimeError):  # only settable before any inter-op work
        torch.set_num_interop_threads(args.threads)
    for name in ("pytorch_lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for message in ("does not have many workers", "no `val_dataloader`", "logging interval"):
        warnings.filterwarnings("ignore", f".*{message}.*")  # expected here
    warnings.filterwarnings("ignore", ".*LeafSpec.*")  # a deprecation inside Lightning
    ok = run(args)
    print("target met" if ok else "TARGET MISSED")


if __name__ == "__main__":
    main()
