"""Reference maps that do not ask the model: what an attribution map scores by chance, by
following the image, or by following lobe size. Each is a voxel method
``(model, x, settings, baseline, brain)`` → [B, X, Y, Z] like those of
:mod:`ctbrainage.interpret.attribution` (the model is not used):

- ``random_map``: uniform noise (torch's global generator: step 07 seeds it per batch);
- ``intensity``: the input itself;
- ``edges``: the gradient magnitude of the input, |∇x| (central differences): an edge detector,
  the reference of the sanity check (a map that only shows edges survives any randomisation);
- ``lobe_size``: 1 everywhere, so a lobe's share of the map is its share of the brain's voxels.
"""

from __future__ import annotations

import torch


def random_map(model, x, settings=None, baseline=None, brain=None) -> torch.Tensor:
    return torch.rand(x.shape, dtype=x.dtype, device=x.device)[:, 0]


def intensity(model, x, settings=None, baseline=None, brain=None) -> torch.Tensor:
    return x.detach()[:, 0].clone()


def edges(model, x, settings=None, baseline=None, brain=None) -> torch.Tensor:
    steps = torch.gradient(x.detach()[:, 0], dim=(1, 2, 3))
    return torch.sqrt(sum(step**2 for step in steps))


def lobe_size(model, x, settings=None, baseline=None, brain=None) -> torch.Tensor:
    return torch.ones_like(x.detach()[:, 0])
