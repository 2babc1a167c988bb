"""Lobe-perturbation throughput (subject-lobe-repeat evaluations per second): ours vs Captum.

Same weights, same inputs, same noise, one process, torch pinned to --threads (default 2). Ours
and the bare forwards run the network as step 05 prepares it (channels-last weights on CPU;
--contiguous: the default layout); Captum runs it as loaded (default layout, the faster one for
its batch-1 forwards here: channels-last weights slow those down).
  ours      ctbrainage.interpret.perturb.perturb_subject: the 1 + 4R variants of a subject in
  batches of at
            most --batch-size, each variant's noise drawn into its lobe on the fly
  captum    captum.attr.FeatureAblation, perturbations_per_eval=1 (the peer): one attribute call
            per subject and repeat, the lobe label map as feature_mask and the same noise
            (fill_baseline) as baselines; building the baselines is timed with it. Captum also
            evaluates the unperturbed input every call and ablates label 0 (outside the lobes,
            whose baseline equals the input), so it runs 6 batch-1 forwards per subject-repeat.
  captum-5  the same with perturbations_per_eval=5 (all features of a call in one batch): for
            information, to separate batching from the number of forwards
  bare      the model alone on the very batches ours built (captured, then replayed)
Targets (issue 6): ours >= 3x Captum's throughput; ours' time <= 1.3x the bare forwards' time.
Every method runs once untimed, then --rounds times interleaved; the fastest round of each is
reported (the one least disturbed by other load). Inputs are synthetic: a noisy ball cut into four
quadrant lobes (throughput does not depend on lobe shapes). The masked predictions of ours and
Captum are compared and must agree to float tolerance.
Usage: python benchmarks/bench_perturb.py [--model demo|paper] [--subjects 3] [--repeats 4]
       [--batch-size 16] [--threads 2] [--rounds 5] [--size N] [--contiguous]
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
from captum.attr import FeatureAblation

from ctbrainage.core.config import ModelConfig
from ctbrainage.core.labels import LOBES
from ctbrainage.interpret.perturb import fill_baseline, perturb_subject, prepare_model
from ctbrainage.learn.networks import build_model

MODELS = {  # the demo and paper profiles' networks and input sizes
    "demo": (ModelConfig(arch="resnet10", width=16), 64),
    "paper": (ModelConfig(arch="resnet34", width=64), 128),
}
SEED = 42


def phantom(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A [1, n, n, n] volume in [0, 1] inside a ball; lobes 1-4 = the ball's quadrants."""
    rng = np.random.default_rng(seed)
    grid = np.indices((size,) * 3) - (size - 1) / 2
    ball = (grid**2).sum(0) < (0.42 * size) ** 2
    volume = np.where(ball, rng.uniform(0.2, 0.9, (size,) * 3), 0).astype(np.float32)
    labels = np.where(ball, 1 + (grid[0] > 0) + 2 * (grid[1] > 0), 0).astype(np.uint8)
    return volume[None], labels


class Capture(torch.nn.Module):
    """Keeps the batches it is given (for the bare-forward replay); returns zeros."""

    def __init__(self):
        super().__init__()
        self.batches: list[torch.Tensor] = []
        self.eval()

    def forward(self, x):
        self.batches.append(x.clone())
        return torch.zeros(len(x), 1)


def run_ours(model, subjects, repeats, batch_size):
    return [
        perturb_subject(
            model, v, lab, subject_id=sid, seed=SEED, repeats=repeats, batch_size=batch_size
        ).masked
        for sid, v, lab in subjects
    ]


def run_captum(model, subjects, repeats, per_eval, wholes):
    """Masked predictions [lobe, repeat] per subject: f(x) (from ``wholes``) − attribution."""
    ablation = FeatureAblation(model)
    masked = []
    for (sid, volume, labels), whole in zip(subjects, wholes, strict=True):
        x = torch.from_numpy(volume)[None]
        mask = torch.from_numpy(labels.astype(np.int64))[None, None]
        first = {k: mask == k for k in LOBES}
        first = {k: m.view(-1).nonzero()[0, 0].item() for k, m in first.items()}
        per_repeat = []
        for r in range(repeats):
            base = fill_baseline(volume, labels, r, subject_id=sid, seed=SEED)[None]
            attr = ablation.attribute(
                x, baselines=base, feature_mask=mask, target=0, perturbations_per_eval=per_eval
            ).view(-1)
            per_repeat.append([whole - attr[first[k]].item() for k in LOBES])
        masked.append(np.array(per_repeat).T)
    return masked


def run_bare(model, batches):
    with torch.inference_mode():
        for batch in batches:
            model(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=list(MODELS), default="demo")
    parser.add_argument("--size", type=int, help="input edge (default: the model's profile)")
    parser.add_argument("--subjects", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--contiguous", action="store_true", help="ours too with the default weight layout"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    config, size = MODELS[args.model]
    size = args.size or size
    torch.manual_seed(0)
    loaded = build_model(config).eval()  # the network as loaded: Captum runs it like this
    model = loaded if args.contiguous else prepare_model(copy.deepcopy(loaded))
    subjects = [(f"s{i:02d}", *phantom(size, i)) for i in range(args.subjects)]
    capture = Capture()
    run_ours(capture, subjects, args.repeats, args.batch_size)
    batches = capture.batches
    with torch.inference_mode():  # untimed: only to turn Captum's attributions into predictions
        wholes = [loaded(torch.from_numpy(v)[None])[0, 0].item() for _, v, _ in subjects]

    methods = {
        "ours": lambda: run_ours(model, subjects, args.repeats, args.batch_size),
        "captum": lambda: run_captum(loaded, subjects, args.repeats, 1, wholes),
        "captum-5": lambda: run_captum(loaded, subjects, args.repeats, 5, wholes),
        "bare": lambda: run_bare(model, batches),
    }
    results = {name: run() for name, run in methods.items()}  # warm-up, and outputs to compare
    best = dict.fromkeys(methods, float("inf"))
    for _ in range(args.rounds):
        for name, run in methods.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)

    evals = args.subjects * len(LOBES) * args.repeats
    diff = max(
        float(np.abs(np.asarray(results["ours"]) - np.asarray(results[peer])).max())
        for peer in ("captum", "captum-5")
    )
    forwards = {
        "ours": f"{len(batches)} x {'/'.join(sorted({str(len(b)) for b in batches}))}",
        "captum": f"{args.subjects * args.repeats * 6} x 1",
        "captum-5": f"{args.subjects * args.repeats * 2} x 1/5",
        "bare": f"{len(batches)} x {'/'.join(sorted({str(len(b)) for b in batches}))}",
    }
    print(
        f"model {config.arch} width {config.width}, {size}^3 input, {args.subjects} subjects x "
        f"{len(LOBES)} lobes x {args.repeats} repeats = {evals} evaluations, "
        f"{args.threads} threads, ours with {'default' if args.contiguous else 'channels-last'} "
        "weights, Captum with the default layout, "
        f"best of {args.rounds} rounds"
    )
    print(f"{'method':10} {'forwards x batch':>17} {'seconds':>9} {'evals/s':>9}")
    for name in methods:
        print(f"{name:10} {forwards[name]:>17} {best[name]:9.3f} {evals / best[name]:9.2f}")
    speedup = best["captum"] / best["ours"]
    overhead = best["ours"] / best["bare"]
    print(f"ours / Captum (ppe=1) throughput: {speedup:.2f}x (target >= 3)")
    print(f"ours / Captum (ppe=5) throughput: {best['captum-5'] / best['ours']:.2f}x (information)")
    print(f"ours / bare forward time:        {overhead:.2f}x (target <= 1.3)")
    print(f"max |ours - Captum| masked prediction: {diff:.2e} (model output units)")
    ok = speedup >= 3 and overhead <= 1.3 and diff < 1e-4
    print("targets met" if ok else "TARGETS MISSED")


if __name__ == "__main__":
    main()
