"""The attribution methods of step 07 in one registry: per method its name (the values of
``core.config.AttributionMethod``, in their order), what it gives, the function computing it and
its relative cost; and :class:`PassCounter`, which measures the cost on a model.

Voxel methods (``kind="voxel"``) are functions ``(model, x, settings, baseline, brain)`` → maps
[B, X, Y, Z] (:mod:`ctbrainage.interpret.attribution`); U-Noise's ``model`` is its noise model,
trained first for the age model (``trained``). The lobe method computes the age model's output
for every coalition of lobes (:func:`~ctbrainage.interpret.attribution.coalition_values`), from
which step 07 takes the lobes' Shapley values. The reference maps
(:mod:`ctbrainage.interpret.reference_maps`, ``reference``) are scored like the voxel methods:
what a map scores by chance, by showing the image, its edges, or lobe size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from ctbrainage.interpret import attribution, reference_maps


@dataclass(frozen=True)
class Method:
    """One attribution method. ``relative_cost``: model passes (forward or backward) per input
    at :class:`~ctbrainage.interpret.attribution.MapSettings`' defaults; occlusion's depends on
    the grid and the brain (about 1,500 cubes at 64³)."""

    name: str
    kind: Literal["voxel", "lobe"]
    compute: Callable[..., torch.Tensor]
    relative_cost: int
    trained: bool = False  # needs a model of its own, trained for the age model (U-Noise)
    reference: bool = False  # a reference map that does not ask the model (reference_maps)


def _unoise_map(noise_model, x, settings=None, baseline=None, brain=None) -> torch.Tensor:
    """U-Noise as a voxel method: :func:`unoise.importance_map` of a trained noise model."""
    from ctbrainage.interpret import unoise  # MONAI: only where U-Noise runs

    return unoise.importance_map(noise_model, x, brain)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("saliency", "voxel", attribution.saliency, 2),
        Method("integrated_gradients", "voxel", attribution.integrated_gradients, 64),
        Method("smoothgrad", "voxel", attribution.smoothgrad, 32),
        Method("guided_backprop", "voxel", attribution.guided_backprop, 2),
        Method("gradcam", "voxel", attribution.gradcam, 2),
        Method("occlusion", "voxel", attribution.occlusion, 1500),
        Method("lobe_shapley", "lobe", attribution.coalition_values, 16),
        Method("unoise", "voxel", _unoise_map, 1, trained=True),
        Method("random_map", "voxel", reference_maps.random_map, 0, reference=True),
        Method("intensity", "voxel", reference_maps.intensity, 0, reference=True),
        Method("edges", "voxel", reference_maps.edges, 0, reference=True),
        Method("lobe_size", "voxel", reference_maps.lobe_size, 0, reference=True),
    )
}


def method(name: str) -> Method:
    """The registered method ``name``."""
    if name not in METHODS:
        raise ValueError(f"unknown attribution method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


def names(kind: str | None = None) -> tuple[str, ...]:
    """The registered methods' names (of one ``kind``), in the registry's order."""
    return tuple(n for n, m in METHODS.items() if kind is None or m.kind == kind)


class PassCounter:
    """Counts the inputs a model sees forward and the gradients it passes backward."""

    def __init__(self, model: torch.nn.Module):
        self.forward = self.backward = 0
        self._hook = model.register_forward_hook(self._seen)

    def _seen(self, _module, args, output):
        self.forward += len(args[0])
        if output.requires_grad:
            output.register_hook(self._back)

    def _back(self, grad):
        self.backward += len(grad)

    def remove(self) -> None:
        self._hook.remove()
