"""What a trained model really uses, measured by intervention: its predictions for the
intervened inputs of one child (:mod:`ctbrainage.synth.interventions`), as sensitivities.

Per lobe k (``cue``) and ``kind``, in months of predicted age:

- ``maturation``: s_k = (f(lobe k matured δ more) − f(δ less)) / 2δ, per month of lobe k's
  maturation; for cue ``all`` the child at age ± δ (every cue the cohort ages), and cue
  ``non_lobar`` = s_all − Σ s_k, what the model takes from anything but the lobes;
- ``content``: (f(x + ``content_hu`` in lobe k's white matter) − f(x)) / ``content_hu``, per HU
  (the model's filter weight on the lobe);
- ``chain_content``: the first-order estimate of ``content`` from one backward pass,
  Σ_v ∂f/∂x_v · ∂x_v/∂HU_k over the lobe's response map; ``chain_maturation``: that times the
  lobe's planted d HU / d age (the chain-rule s_k). They differ from the interventional values
  where the model is not linear over the step, and where the brain mask, the output grid or the
  P-tile levels react to the change (which the first order holds fixed);
- ``projection:<method>``: a gradient-like map's (:data:`PROJECTED`) signed projection on lobe
  k's signal map, Σ_v map_v · ∂x_v/∂age_k, its own estimate of s_k (saliency's is
  ``chain_maturation``). Integrated gradients (gradient × the step from a baseline), Grad-CAM
  (positive, coarse) and occlusion (cube differences) are not gradients at x: no projection.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ctbrainage.learn.datasets import AgeScaler
from ctbrainage.synth.faithfulness import NON_LOBAR, PROJECTION
from ctbrainage.synth.interventions import ALL_CUES, CONTENT, MATURATION, Interventions

PROJECTED = ("saliency", "smoothgrad", "guided_backprop")  # maps that estimate ∂f/∂x


def predict_months(model: torch.nn.Module, images, scaler: AgeScaler, batch_size: int = 8):
    """Predicted ages (months) of model inputs ``images`` ([n, i, j, k])."""
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.stack(images[start : start + batch_size])[:, None])
            out.append(model(batch.to(device)).reshape(-1).cpu().numpy())
    return scaler.to_months(np.concatenate(out))


def input_gradient(model: torch.nn.Module, image: np.ndarray, scaler: AgeScaler) -> np.ndarray:
    """∂ predicted age (months) / ∂ model input, at ``image`` ([i, j, k])."""
    device = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(image)[None, None]).to(device).requires_grad_(True)
    model(x).sum().backward()
    return x.grad[0, 0].cpu().numpy().astype(np.float64) * (scaler.hi - scaler.lo)


def sensitivities(
    model: torch.nn.Module,
    found: Interventions,
    scaler: AgeScaler,
    batch_size: int = 8,
    gradient_maps: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> list[dict]:
    """One row per (cue, kind) of one child: ``cue``, ``kind``, ``value`` (module docstring);
    ``gradient_maps``: per method, its signed map [1, X, Y, Z] of an input [1, 1, X, Y, Z] in
    the model's unit per input unit (the methods' projections)."""
    images = [found.baseline] + [v.image for v in found.variants]
    predicted = predict_months(model, images, scaler, batch_size)
    base, after = predicted[0], list(zip(found.variants, predicted[1:], strict=True))
    rows = []

    def add(cue, kind, value):
        rows.append({"cue": cue, "kind": kind, "value": float(value)})

    for cue in [*found.hu_per_month, ALL_CUES]:
        steps = {v.step: f for v, f in after if v.cue == cue and v.kind == MATURATION}
        high, low = max(steps), min(steps)
        add(cue, MATURATION, (steps[high] - steps[low]) / (high - low) if high > low else np.nan)
        for v, f in after:
            if v.cue == cue and v.kind == CONTENT:
                add(cue, CONTENT, (f - base) / v.step)
    lobar = sum(r["value"] for r in rows if r["kind"] == MATURATION and r["cue"] != ALL_CUES)
    all_cues = next(r["value"] for r in rows if r["kind"] == MATURATION and r["cue"] == ALL_CUES)
    add(NON_LOBAR, MATURATION, all_cues - lobar)
    gradient = input_gradient(model, found.baseline, scaler)
    for i, (lobe, hu_per_month) in enumerate(found.hu_per_month.items()):
        weight = float(np.sum(gradient * found.responses[i]))
        add(lobe, "chain_content", weight)
        add(lobe, "chain_maturation", weight * hu_per_month)
    x = torch.from_numpy(np.ascontiguousarray(found.baseline)[None, None])
    x = x.to(next(model.parameters()).device)
    for method, compute in (gradient_maps or {}).items():
        signed = compute(x)[0].cpu().numpy().astype(np.float64) * (scaler.hi - scaler.lo)
        for i, (lobe, hu_per_month) in enumerate(found.hu_per_month.items()):
            add(lobe, PROJECTION + method, np.sum(signed * found.responses[i]) * hu_per_month)
    return rows
