"""Attribution of an age model's prediction to voxels and lobes: a model and tensors in, maps
and lobe values out (step 07 runs them over a cohort; :mod:`ctbrainage.interpret.unoise` adds
U-Noise).

Voxel maps [B, X, Y, Z] for a batch of inputs [B, 1, X, Y, Z], all with Captum except where
3D volumes need otherwise (each benchmarked against Captum's own call in
``benchmarks/bench_attribution.py``):

- ``saliency``: the gradient of the prediction (Simonyan et al. 2014);
- ``integrated_gradients``: gradient × input path integral from a baseline (Sundararajan et al.
  2017; baseline: the age group's mean input or zeros);
- ``smoothgrad``: the gradient averaged over Gaussian-noised copies (Smilkov et al. 2017);
- ``guided_backprop``: gradients with negative ReLU signals stopped (Springenberg et al. 2015);
- ``gradcam``: Grad-CAM at a convolutional stage (by default a ResNet's last with ≥ 4³ cells),
  trilinearly upsampled (Selvaraju et al. 2017); positive parts (what raises the predicted age);
- ``occlusion``: a cube slid over the input, replaced by the baseline; the prediction change
  averaged over the cubes covering a voxel (Zeiler and Fergus 2014). Ours evaluates only the
  cubes touching the brain (Captum's evaluates every cube; inside the brain both agree);
- ``lobe_shapley`` (lobe values, not a map): exact Shapley values of the four lobes, the 2⁴
  coalitions in one batch; an absent lobe takes a baseline's voxels (default: the age group's
  level, the ``group_level`` fill). Captum's ``ShapleyValues`` gives the same values from 4! × 4
  permutation steps.

Each voxel method is a function ``(model, x, settings, baseline, brain)`` (:data:`VOXEL_MAPS`;
:mod:`ctbrainage.interpret.methods` registers every method). Lobe aggregation: a lobe's
importance is its share of the brain's total |attribution|. Group maps: the mean normalised
|map| of an age group's subjects, its top 10 % kept and smoothed.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from captum.attr import (
    GuidedBackprop,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    NoiseTunnel,
    Saliency,
)
from scipy import ndimage


@dataclass(frozen=True)
class MapSettings:
    """How the voxel methods run (step 07 fills it from the profile)."""

    ig_steps: int = 32
    smoothgrad_samples: int = 16
    smoothgrad_sd: float = 0.1  # noise SD, units of the input range (0-1)
    occlusion_voxels: int = 8  # cube edge
    occlusion_stride: int = 4
    batch_size: int = 8  # model inputs per forward pass
    gradcam_layer: str = "auto"  # :func:`gradcam_stage`


#: the smallest grid (cells per axis) a Grad-CAM layer needs to resolve lobes by default
GRADCAM_MIN_CELLS = 4
RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")


def gradcam_stage(model: torch.nn.Module, shape, layer: str = "auto") -> torch.nn.Module:
    """Grad-CAM's layer for inputs of ``shape`` [B, C, X, Y, Z]: the module named ``layer``, or
    with ``auto`` the one the network names (``gradcam_layer``: VGG8, SFCN), else a ResNet's last
    stage whose output has at least :data:`GRADCAM_MIN_CELLS` cells per axis (``layer4`` of a
    64³ input is 2³ cells and cannot resolve lobes), else the last convolution."""
    modules = dict(model.named_modules())
    if layer != "auto":
        if layer not in modules or not layer:
            stages = [n for n in modules if n and "." not in n]
            raise ValueError(f"no layer {layer!r} for Grad-CAM; top-level layers: {stages}")
        return modules[layer]
    if hasattr(model, "gradcam_layer"):
        return model.gradcam_layer
    stages = [modules[n] for n in RESNET_STAGES if n in modules]
    if stages:
        cells = _output_cells(model, stages, shape)
        wide = [stage for stage in stages if cells[stage] >= GRADCAM_MIN_CELLS]
        return wide[-1] if wide else stages[0]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no 3D convolution for Grad-CAM")
    return convs[-1]


def _output_cells(model, stages, shape) -> dict[torch.nn.Module, int]:
    """The smallest spatial edge of each stage's output for one input of ``shape``."""
    cells = {}
    hooks = [
        stage.register_forward_hook(lambda m, _, out: cells.__setitem__(m, min(out.shape[2:])))
        for stage in stages
    ]
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros((1, *shape[1:]), device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return cells


VoxelMethod = Callable[..., torch.Tensor]
VOXEL_MAPS: dict[str, VoxelMethod] = {}  # filled by @_voxel_method: name → function
# the methods whose map lives on a layer, not on the input: any number of input channels (step 11)
ANY_CHANNELS = ("gradcam",)


def _voxel_method(attribute: Callable[..., torch.Tensor]) -> VoxelMethod:
    """A voxel method ``(model, x, settings, baseline, brain)`` → signed map [B, X, Y, Z] from
    ``attribute``, which gets the checked input (a fresh leaf with gradients) and the baseline
    expanded like it and returns [B, 1, X, Y, Z]; registered under its name in
    :data:`VOXEL_MAPS`."""

    @functools.wraps(attribute)
    def method(
        model: torch.nn.Module,
        x: torch.Tensor,
        settings: MapSettings = MapSettings(),
        baseline: torch.Tensor | None = None,
        brain: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if getattr(model, "training", False):
            raise ValueError("the model is in training mode; call model.eval() first")
        channels_ok = x.ndim == 5 and (x.shape[1] == 1 or attribute.__name__ in ANY_CHANNELS)
        if not channels_ok:
            raise ValueError(f"inputs must be [batch, 1, X, Y, Z], got {tuple(x.shape)}")
        baseline = torch.zeros_like(x) if baseline is None else baseline.expand_as(x)
        x = x.detach().clone().requires_grad_(True)
        return attribute(model, x, settings, baseline, brain).detach()[:, 0].float()

    VOXEL_MAPS[attribute.__name__] = method
    return method


@_voxel_method
def saliency(model, x, settings, baseline, brain):
    """The gradient of the prediction."""
    return Saliency(model).attribute(x, target=0, abs=False)


@_voxel_method
def integrated_gradients(model, x, settings, baseline, brain):
    """Gradient × input, integrated along the straight path from ``baseline``."""
    return IntegratedGradients(model).attribute(
        x,
        baselines=baseline,
        target=0,
        n_steps=settings.ig_steps,
        internal_batch_size=settings.batch_size,
    )


@_voxel_method
def smoothgrad(model, x, settings, baseline, brain):
    """The gradient averaged over Gaussian-noised copies of the input."""
    return NoiseTunnel(Saliency(model)).attribute(
        x,
        nt_type="smoothgrad",
        nt_samples=settings.smoothgrad_samples,
        nt_samples_batch_size=max(1, settings.batch_size // len(x)),
        stdevs=settings.smoothgrad_sd,
        target=0,
        abs=False,
    )


@_voxel_method
def guided_backprop(model, x, settings, baseline, brain):
    """Gradients with negative ReLU signals stopped."""
    return GuidedBackprop(model).attribute(x, target=0)


@_voxel_method
def gradcam(model, x, settings, baseline, brain):
    """Grad-CAM at :func:`gradcam_stage` (positive part), trilinearly upsampled."""
    layer = gradcam_stage(model, tuple(x.shape), settings.gradcam_layer)
    cam = LayerGradCam(model, layer).attribute(x, target=0, relu_attributions=True)
    return LayerAttribution.interpolate(cam, tuple(x.shape[2:]), "trilinear")


@_voxel_method
def occlusion(model, x, settings, baseline, brain):
    """f(x) − f(x with a cube of ``baseline``), averaged over the cubes covering each voxel;
    cubes touching no voxel of ``brain`` (default: all count) are not evaluated (their voxels
    get 0)."""
    size, stride = settings.occlusion_voxels, settings.occlusion_stride
    if size < 1 or stride < 1:
        raise ValueError(f"occlusion cube and stride must be >= 1, got {size}, {stride}")
    x = x.detach()
    windows = _windows(x.shape[2:], size, stride)
    maps = torch.zeros_like(x)
    with torch.inference_mode():
        whole = model(x)[:, 0]
        for b in range(len(x)):
            inside = [w for w in windows if brain is None or bool(brain[b, 0][w].any())]
            total = torch.zeros(x.shape[2:], device=x.device)
            count = torch.zeros(x.shape[2:], device=x.device)
            for start in range(0, len(inside), settings.batch_size):
                chunk = inside[start : start + settings.batch_size]
                batch = x[b].expand(len(chunk), *x.shape[1:]).clone()
                for i, w in enumerate(chunk):
                    batch[i, 0][w] = baseline[b, 0][w]
                change = whole[b] - model(batch)[:, 0]
                for i, w in enumerate(chunk):
                    total[w] += change[i]
                    count[w] += 1
            maps[b, 0] = total / count.clamp_min(1)
    return maps


VOXEL_METHODS = tuple(VOXEL_MAPS)  # the methods above, in order


def voxel_map(
    model: torch.nn.Module,
    x: torch.Tensor,
    method: str,
    settings: MapSettings = MapSettings(),
    baseline: torch.Tensor | None = None,
    brain: torch.Tensor | None = None,
) -> torch.Tensor:
    """The signed attribution map of the voxel method named ``method`` for inputs ``x`` [B, 1,
    X, Y, Z] (an eval-mode ``model`` with one output; several input channels for the methods of
    :data:`ANY_CHANNELS`), shape [B, X, Y, Z]. ``baseline`` (like
    ``x``; default zeros): integrated gradients' start and occlusion's fill; ``brain`` (like
    ``x``, 0/1): the cubes occlusion evaluates (default: all)."""
    if method not in VOXEL_MAPS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(VOXEL_MAPS)}")
    return VOXEL_MAPS[method](model, x, settings, baseline, brain)


def _windows(shape, size: int, stride: int) -> list[tuple[slice, ...]]:
    """Cube positions as Captum's ``Occlusion`` places them (each axis: 0, stride, … until the
    cube reaches the end; the last one is cut at the edge)."""
    starts = [range(0, stride * (math.ceil(max(n - size, 0) / stride) + 1), stride) for n in shape]
    return [tuple(slice(s, s + size) for s in corner) for corner in itertools.product(*starts)]


def coalitions(n: int) -> torch.Tensor:
    """Every subset of ``n`` players as a 0/1 matrix [2ⁿ, n] (row i: the bits of i)."""
    return torch.tensor([[(i >> k) & 1 for k in range(n)] for i in range(2**n)], dtype=torch.bool)


def shapley_weights(n: int) -> torch.Tensor:
    """[n, 2ⁿ]: φ_k = Σ_S w[k, S] v(S), the exact Shapley value from the values of all
    coalitions (|S|!(n−|S|−1)!/n! for S ∌ k, with the sign of S ∪ {k} vs S)."""
    members = coalitions(n)
    weights = torch.zeros(n, 2**n, dtype=torch.float64)
    for k in range(n):
        for s, row in enumerate(members):
            if row[k]:
                continue
            size = int(row.sum())
            w = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            weights[k, s | (1 << k)] += w
            weights[k, s] -= w
    return weights


def coalition_values(
    model: torch.nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    baseline: torch.Tensor,
    lobes: Sequence[int],
    batch_size: int = 16,
) -> torch.Tensor:
    """The model's output for every coalition of ``lobes`` of one input ``x`` [1, X, Y, Z]
    (lobe ids in ``labels``, same grid): lobes outside the coalition take ``baseline``'s
    voxels. Returns [2ⁿ] (coalition order of :func:`coalitions`)."""
    members = coalitions(len(lobes))
    masks = torch.stack([labels == k for k in lobes])  # [n, X, Y, Z]
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(members), batch_size):
            rows = members[start : start + batch_size]
            absent = (~rows).to(masks.device).float() @ masks.flatten(1).float()  # replaced
            absent = absent.view(len(rows), 1, *x.shape[-3:]) > 0
            inputs = torch.where(absent, baseline.expand_as(absent), x.expand_as(absent))
            outputs.append(model(inputs.float())[:, 0].double().cpu())
    return torch.cat(outputs)


def lobe_shapley(values: torch.Tensor) -> torch.Tensor:
    """Exact Shapley values [n] from the values of every coalition [2ⁿ]."""
    n = int(round(math.log2(len(values))))
    if 2**n != len(values):
        raise ValueError(f"expected 2^n coalition values, got {len(values)}")
    return shapley_weights(n) @ values.double()


def lobe_shares(maps: torch.Tensor, labels: torch.Tensor, brain: torch.Tensor, lobes) -> np.ndarray:
    """Each lobe's share of the brain's total |attribution|, [B, len(lobes)] (maps and labels
    [B, X, Y, Z]; brain alike, 0/1). A map with no mass in the brain gives NaN."""
    magnitude = maps.abs().double() * brain.double()
    total = magnitude.flatten(1).sum(1)
    shares = torch.stack([(magnitude * (labels == k)).flatten(1).sum(1) for k in lobes], 1)
    return (shares / total[:, None].where(total[:, None] > 0, torch.nan)).numpy()


def top_set(maps: torch.Tensor, brain: torch.Tensor, share: float) -> torch.Tensor:
    """The ``share`` of each map's brain voxels with the highest values, [B, X, Y, Z] bool
    (exactly round(share × brain voxels) each; ties broken by voxel order)."""
    flat = maps.flatten(1).double().masked_fill(~brain.flatten(1).bool(), -torch.inf)
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    for row, (values, count) in enumerate(zip(flat, brain.flatten(1).sum(1), strict=True)):
        k = int(round(share * float(count)))
        chosen[row, torch.argsort(values, descending=True, stable=True)[:k]] = True
    return chosen.view(maps.shape)


def jaccard(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """|a ∩ b| / |a ∪ b| of each pair of boolean sets [B, ...] (NaN where both are empty)."""
    inter = (a & b).flatten(1).sum(1).double()
    union = (a | b).flatten(1).sum(1).double()
    return (inter / union.where(union > 0, torch.nan)).numpy()


# ---- group maps --------------------------------------------------------------------------

TOP_SHARE = 0.10  # a group map keeps its top 10 % of voxels (Bintsi et al.)
SMOOTH_VOXELS = 1.0  # Gaussian sigma of a group map
MEAN_INPUT = "input"  # the name of each group's mean input among its maps


def group_map_key(name: str, group: str) -> str:
    """The key of age group ``group``'s map ``name`` (a method, an input, a layer) in a file of
    group maps (steps 07 and 08)."""
    return f"{name}/{group}"


def split_group_map_key(key: str) -> tuple[str, str]:
    """(name, group) of a :func:`group_map_key`."""
    name, _, group = key.rpartition("/")
    return name, group


def normalised_magnitude(attribution_map: torch.Tensor, brain: np.ndarray) -> np.ndarray:
    """|map| inside the brain (float64), summing to 1: one subject's term of its group map."""
    magnitude = attribution_map.abs().double().numpy() * brain
    return magnitude / max(magnitude.sum(), 1e-30)


def group_map(total: np.ndarray, count: int) -> np.ndarray:
    """An age group's map from the sum of ``count`` subjects' :func:`normalised_magnitude`: the
    mean, its top :data:`TOP_SHARE` of voxels kept, Gaussian-smoothed (float32)."""
    mean = total / count
    cut = np.quantile(mean[mean > 0], 1 - TOP_SHARE) if (mean > 0).any() else 0.0
    kept = np.where(mean >= cut, mean, 0.0)
    return ndimage.gaussian_filter(kept, SMOOTH_VOXELS).astype(np.float32)
