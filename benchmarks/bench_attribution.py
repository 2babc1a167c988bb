#!/usr/bin/env python
"""Throughput of step 07's attribution methods against the library's own call, same run.

For each method we wrap or rewrite, subjects per second of ours
(``ctbrainage.interpret.attribution``:
batched over subjects, occlusion only over cubes touching the brain, lobe Shapley from the 16
coalitions in one batch) and of Captum's call on one subject at a time (Occlusion over every
cube; ShapleyValues over the 5! permutations of the four lobes and the background, timed on 2
subjects), on the demo's network and input size (random
weights, a ball-shaped brain cut into four lobes). Prints the ratio ours / Captum; > 1 = ours
faster. ``--quick`` uses a smaller input for a smoke run.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from captum.attr import (
    GuidedBackprop,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    NoiseTunnel,
    Occlusion,
    Saliency,
    ShapleyValues,
)

from ctbrainage.core.config import ModelConfig
from ctbrainage.interpret import attribution
from ctbrainage.interpret.perturb import prepare_model
from ctbrainage.learn.networks import build_model


def phantom(n: int, size: int):
    """Inputs [n, 1, S, S, S], brain masks alike and lobe labels [n, S, S, S]."""
    generator = torch.Generator().manual_seed(0)
    grid = torch.stack(torch.meshgrid(*[torch.arange(size) - size / 2] * 3, indexing="ij"))
    brain = (grid**2).sum(0) < (0.35 * size) ** 2
    labels = torch.where(brain, 1 + (grid[0] > 0).long() + 2 * (grid[1] > 0).long(), 0)
    x = torch.rand(n, 1, size, size, size, generator=generator) * brain
    return x, brain.float().expand(n, 1, -1, -1, -1), labels.expand(n, -1, -1, -1)


def captum_call(model, method, x, baseline, settings):
    """Captum's own call for one subject (what a user of the library writes)."""
    if method == "saliency":
        return Saliency(model).attribute(x, target=0, abs=False)
    if method == "integrated_gradients":
        return IntegratedGradients(model).attribute(
            x, baselines=baseline, target=0, n_steps=settings.ig_steps,
            internal_batch_size=settings.batch_size,
        )  # fmt: skip
    if method == "smoothgrad":
        return NoiseTunnel(Saliency(model)).attribute(
            x, nt_type="smoothgrad", nt_samples=settings.smoothgrad_samples,
            nt_samples_batch_size=settings.batch_size, stdevs=settings.smoothgrad_sd, target=0,
        )  # fmt: skip
    if method == "guided_backprop":
        return GuidedBackprop(model).attribute(x, target=0)
    if method == "gradcam":
        cam = LayerGradCam(model, model.layer4).attribute(x, target=0, relu_attributions=True)
        return LayerAttribution.interpolate(cam, tuple(x.shape[2:]), "trilinear")
    if method == "occlusion":
        size, stride = settings.occlusion_voxels, settings.occlusion_stride
        return Occlusion(model).attribute(
            x, sliding_window_shapes=(1, size, size, size), strides=(1, stride, stride, stride),
            baselines=baseline, target=0, perturbations_per_eval=settings.batch_size,
        )  # fmt: skip
    raise ValueError(method)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32³ input, 4 subjects")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
    warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")
    size, n = (32, 4) if args.quick else (64, 8)
    torch.manual_seed(0)
    model = prepare_model(build_model(ModelConfig(arch="resnet10", width=16)))
    x, brain, labels = phantom(n, size)
    baseline = x.mean(0, keepdim=True).expand_as(x).contiguous()
    settings = attribution.MapSettings(
        ig_steps=8, smoothgrad_samples=8, occlusion_voxels=size // 5, occlusion_stride=size // 5
    )
    print(f"{n} subjects of {size}³, resnet10 width 16, {args.threads} threads")
    print(f"{'method':<22}{'ours s/subject':>16}{'Captum s/subject':>18}{'ratio':>8}")
    for method in attribution.VOXEL_METHODS:
        ours = timed(
            lambda m=method: attribution.voxel_map(model, x, m, settings, baseline, brain), 1
        )
        theirs = timed(
            lambda m=method: [captum_call(model, m, x[i : i + 1], baseline[i : i + 1], settings)
                              for i in range(n)], 1,
        )  # fmt: skip
        print(f"{method:<22}{ours / n:>16.3f}{theirs / n:>18.3f}{theirs / ours:>8.2f}")

    def ours_shapley():
        for i in range(n):
            values = attribution.coalition_values(model, x[i], labels[i], baseline[i], [1, 2, 3, 4])
            attribution.lobe_shapley(values)

    def captum_shapley():  # every voxel needs a feature: the background is a fifth player
        for i in range(2):
            ShapleyValues(model).attribute(
                x[i : i + 1], baselines=baseline[i : i + 1], target=0,
                feature_mask=labels[i][None, None].contiguous(), perturbations_per_eval=16,
            )  # fmt: skip

    ours, theirs = timed(ours_shapley, 1) / n, timed(captum_shapley, 1) / 2  # 2 subjects
    print(f"{'lobe_shapley':<22}{ours:>16.3f}{theirs:>18.3f}{theirs / ours:>8.2f}")
    print("U-Noise has no library implementation to compare with (trained per fold; see step 07's"
          " cost table).")  # fmt: skip


if __name__ == "__main__":
    main()
