"""Step 08's networks on one device: training speed and memory of VGG8, SFCN and the synthesis
U-Net against the peer, the paper's ResNet34 (step 03's network), on the same input; then one
encoder fold fitted end to end with ``train.fit_fold`` (early stopping, best epoch kept; bf16
autocast on a GPU) on random volumes.

    python benchmarks/bench_stacking.py --size 128 --batch 3 --gpu 0   # paper scale, on a GPU
    python benchmarks/bench_stacking.py --size 32 --batch 8            # a quick CPU check

Prints seconds per training step (forward, backward, Adam) and peak GPU memory per network,
each as a ratio to ResNet34, and the paper-scale cost of one fold (161 training subjects).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import pandas as pd
import torch

from ctbrainage.core.config import ModelConfig, load_profile
from ctbrainage.core.sections import SynthesisConfig
from ctbrainage.learn import maturity_net, train
from ctbrainage.learn.networks import build_model, count_parameters
from ctbrainage.steps.s08_stacking import encoder_profile

NETWORKS = {  # name → model settings; the first is the peer
    "resnet34 (peer)": ModelConfig("resnet34", 64),
    "vgg8": ModelConfig("vgg8", 16),
    "sfcn": ModelConfig("sfcn", 32),
}
PAPER_TRAINING_SUBJECTS = 161  # 201 subjects, 4 of 5 folds


def step_seconds(model, size: int, batch: int, device: str, steps: int = 5) -> tuple[float, float]:
    """Median seconds of a training step and the peak GPU memory (GB; 0 on CPU)."""
    model = model.to(device).train()
    optimiser = torch.optim.Adam(model.parameters(), 1e-4)
    x = torch.rand(batch, 1, size, size, size, device=device)
    y = torch.rand(batch, 1, device=device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps + 2):
        start = time.perf_counter()
        optimiser.zero_grad()
        with torch.autocast("cuda", torch.bfloat16, enabled=cuda):
            loss = torch.nn.functional.l1_loss(model(x).float(), y)
        loss.backward()
        optimiser.step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 1e9 if cuda else 0.0
    return float(np.median(times[2:])), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=3)
    parser.add_argument("--gpu", type=int, default=None)
    parser.add_argument("--subjects", type=int, default=30, help="volumes of the fitted fold")
    args = parser.parse_args()
    device = "cpu" if args.gpu is None else f"cuda:{args.gpu}"
    name = torch.cuda.get_device_name(args.gpu) if args.gpu is not None else "CPU"
    print(f"device: {name}; input {args.size}³, batch {args.batch}")
    torch.manual_seed(0)
    peer = None
    steps_per_epoch = -(-PAPER_TRAINING_SUBJECTS // args.batch)
    for label, config in NETWORKS.items():
        model = build_model(config, args.size)
        seconds, peak = step_seconds(model, args.size, args.batch, device)
        peer = peer or (seconds, peak or 1.0)
        memory = f"peak {peak:6.2f} GB ({peak / peer[1]:.2f}x)" if peak else "peak: CPU, n/a"
        print(
            f"{label:16s} {count_parameters(model):>11,} parameters  {seconds * 1000:8.1f} ms/step"
            f" ({seconds / peer[0]:.2f}x)  {memory}"
            f"  ≈ {seconds * steps_per_epoch:6.1f} s per paper epoch"
        )
    rng = np.random.default_rng(0)
    n, size = args.subjects, args.size
    volumes = rng.random((n, 1, size, size, size), dtype=np.float32)
    brains = np.ones_like(volumes)
    start = time.perf_counter()
    unet = maturity_net.train_unet(
        volumes, volumes * 0.5, brains, SynthesisConfig((16, 32, 64, 128), epochs=2),
        seed=0, device=device,
    )  # fmt: skip
    maps = maturity_net.synthesise(unet, volumes, brains, device)
    print(
        f"synthesis U-Net: 2 epochs on {n} volumes + synthesis {time.perf_counter() - start:.1f} s"
    )
    profile = load_profile("paper")
    profile = dataclasses.replace(
        profile,
        preprocess=dataclasses.replace(profile.preprocess, size=size),
        stacking=dataclasses.replace(profile.stacking, epochs=4, patience=2),
    )
    folds = pd.DataFrame(
        {"subject_id": [f"s{i}" for i in range(n)], "age_months": rng.uniform(0, 48, n)}
    ).assign(fold=lambda t: np.arange(n) % 5)
    start = time.perf_counter()
    with train.quiet_lightning():
        fitted = train.fit_fold(
            encoder_profile(profile), folds, 0, lambda ids: maps[[int(s[1:]) for s in ids]],
            log_dir="/tmp/bench_stacking_logs", log_name="vgg8", gpu=args.gpu, progress=False,
            patience=2,
        )  # fmt: skip
    print(
        f"fit_fold (vgg8, {n} volumes, at most 4 epochs, patience 2): "
        f"{time.perf_counter() - start:.1f} s, best epoch {fitted.best_epoch}, ran "
        f"{fitted.trainer.current_epoch}, {len(fitted.predictions)} test predictions, finite: "
        f"{bool(np.isfinite(fitted.predictions['predicted_months']).all())}"
    )


if __name__ == "__main__":
    main()
