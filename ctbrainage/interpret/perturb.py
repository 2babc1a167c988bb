"""Lobe-wise perturbation (paper section 3.4) on a model and tensors: replace one lobe's voxels
by a fill, predict again, and measure the change in absolute error
ΔAE = |ŷ_masked − y| − |ŷ_whole − y|.

Fills: ``noise`` (the paper: U[0, 1) i.i.d. per voxel), ``zero``, ``mean`` (every voxel of the
lobe set to the lobe's own mean intensity: its texture goes, its overall level stays), and
``group_level`` (the lobe's own voxels shifted so that their mean is the mean of the same lobe
over the subject's age group: what the lobe's level says about age inside the group goes, its
anatomy and texture stay, and it stays within the range of the group's inputs). Noise is
seeded from (seed, subject, lobe, repeat) alone, so a variant's input never depends on batching
or on the order of subjects, lobes and repeats. Each row also records the lobe's mean input
intensity and the mean of its fill: their difference, the fill's contrast, is what a model that
reads tissue intensity sees change (``stats.fill_contrast``).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from ctbrainage.core.cohort import age_group, thin_group_note, thin_groups
from ctbrainage.core.config import Profile
from ctbrainage.core.labels import LOBES
from ctbrainage.core.layout import RunLayout
from ctbrainage.imaging import run_arrays
from ctbrainage.learn.datasets import AgeScaler

PERTURB_VERSION = 2  # bump when a change alters perturbation.csv
FILLS = ("noise", "zero", "mean", "group_level")
COLUMNS = [
    "subject_id",
    "fold",
    "age_months",
    "lobe",
    "repeat",
    "fill",
    "pred_whole",
    "pred_masked",
    "delta_ae",
    "signed_change",
    "lobe_mean",
    "fill_mean",
]


class SubjectPerturbation(NamedTuple):
    """Model outputs (the network's own unit) of one subject."""

    whole: float
    masked: np.ndarray  # [lobe, repeat]
    lobe_mean: np.ndarray  # [lobe]: mean input intensity of the lobe
    fill_mean: np.ndarray  # [lobe, repeat]: mean of the values that replaced it


def prepare_model(model: torch.nn.Module, device: str | torch.device = "cpu") -> torch.nn.Module:
    """``model`` (modified in place) on ``device``, in eval mode; on CPU with channels-last
    weights, which make oneDNN's batched 3D convolutions 1.2-1.4x faster (outputs change only
    by float rounding)."""
    model = model.to(device).eval()
    if torch.device(device).type == "cpu":
        model = model.to(memory_format=torch.channels_last_3d)
    return model


def noise_seed(seed: int, subject_id: str, lobe: int, repeat: int) -> int:
    """The generator seed of one (subject, lobe, repeat) noise draw."""
    digest = hashlib.sha256(f"{seed}:{subject_id}:{lobe}:{repeat}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # a non-negative int64


def _fill(
    flat: torch.Tensor, index: torch.Tensor, fill: str, key: int, level: float | None = None
) -> torch.Tensor:
    """Values replacing the voxels ``index`` of the flat CPU volume ``flat`` (``level``: the
    target mean of a ``group_level`` fill)."""
    if fill == "noise":
        return torch.rand(index.numel(), generator=torch.Generator().manual_seed(key))
    if fill == "zero":
        return torch.zeros(index.numel())
    if fill == "mean":
        return torch.full((index.numel(),), float(flat.index_select(0, index).double().mean()))
    if fill == "group_level":
        own = flat.index_select(0, index)
        return (own.double() + (level - own.double().mean())).float()
    raise ValueError(f"unknown fill {fill!r}; choose from {', '.join(FILLS)}")


def _check_fill(fill: str, levels: Mapping[int, float] | None, lobes: Sequence[int]) -> None:
    if fill not in FILLS:
        raise ValueError(f"unknown fill {fill!r}; choose from {', '.join(FILLS)}")
    if fill == "group_level":
        missing = [LOBES.get(k, str(k)) for k in lobes if k not in (levels or {})]
        if missing:
            raise ValueError(f"a group_level fill needs a target level for: {', '.join(missing)}")


def _prepare(volume, labels, lobes: Sequence[int]):
    """Volume as a float32 tensor [1, X, Y, Z]; flat voxel indices of each lobe (C order)."""
    x = torch.as_tensor(np.ascontiguousarray(volume, np.float32))
    x = x.reshape(1, *x.shape[-3:])
    lab = np.asarray(labels)
    if lab.shape[-3:] != tuple(x.shape[-3:]) or lab.size != x[0].numel():
        raise ValueError(f"lobe labels {lab.shape} do not match the volume {tuple(x.shape)}")
    flat = lab.reshape(-1)
    index = {k: torch.from_numpy(np.flatnonzero(flat == k)) for k in lobes}
    empty = [LOBES.get(k, str(k)) for k, idx in index.items() if idx.numel() == 0]
    if empty:
        raise ValueError(f"empty lobe(s) in the label map: {', '.join(empty)}")
    return x, index


def fill_baseline(
    volume,
    labels,
    repeat: int,
    *,
    subject_id: str,
    seed: int,
    fill: str = "noise",
    lobes: Sequence[int] = tuple(LOBES),
    levels: Mapping[int, float] | None = None,
) -> torch.Tensor:
    """The volume with every lobe replaced by its fill of ``repeat`` (what a single-lobe
    variant takes inside that lobe; Captum's ``baselines``). Float32, shape [1, X, Y, Z]."""
    _check_fill(fill, levels, lobes)
    x, index = _prepare(volume, labels, lobes)
    flat = x.view(-1)
    out = flat.clone()
    for k, idx in index.items():
        key, level = noise_seed(seed, subject_id, k, repeat), (levels or {}).get(k)
        out.index_copy_(0, idx, _fill(flat, idx, fill, key, level))
    return out.view_as(x)


def perturb_subject(
    model: torch.nn.Module,
    volume,
    labels,
    *,
    subject_id: str,
    seed: int,
    repeats: int = 1,
    fill: str = "noise",
    lobes: Sequence[int] = tuple(LOBES),
    batch_size: int = 16,
    device: str | torch.device | None = None,
    levels: Mapping[int, float] | None = None,
) -> SubjectPerturbation:
    """Predict ``volume`` [1, X, Y, Z] whole and with each lobe (ids in ``labels``, same grid)
    replaced by ``fill``, ``repeats`` times per lobe, with an eval-mode ``model`` already on
    ``device`` (default: the device of its parameters). ``levels``: each lobe's target mean
    for a ``group_level`` fill (:func:`group_levels`).

    The 1 + lobes × repeats inputs go through the model in equal-sized batches of at most
    ``batch_size``. One buffer per batch slot holds a copy of the volume; a variant writes its
    fill into its lobe's voxels and, after the forward pass, puts the original voxels back.
    """
    if getattr(model, "training", False):
        raise ValueError("the model is in training mode; call model.eval() first")
    if repeats < 1 or batch_size < 1:
        raise ValueError(f"repeats and batch_size must be >= 1, got {repeats}, {batch_size}")
    _check_fill(fill, levels, lobes)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x, index = _prepare(volume, labels, lobes)
    variants = [None] + [(k, r) for k in lobes for r in range(repeats)]
    fill_means = []
    n_batches = -(-len(variants) // batch_size)
    size = -(-len(variants) // n_batches)  # equal batches: no lone variant in a last one
    with torch.inference_mode():
        on_device = {k: idx.to(device) for k, idx in index.items()}
        kept = {k: x.view(-1).index_select(0, i).to(device) for k, i in index.items()}  # restore
        buffer = x.to(device).expand(size, *x.shape).contiguous()
        slots = buffer.view(size, -1)
        outputs = []
        for start in range(0, len(variants), size):
            chunk = variants[start : start + size]
            for slot, variant in enumerate(chunk):
                if variant is not None:
                    k, r = variant
                    key, level = noise_seed(seed, subject_id, k, r), (levels or {}).get(k)
                    values = _fill(x.view(-1), index[k], fill, key, level)
                    fill_means.append(float(values.double().mean()))
                    slots[slot].index_copy_(0, on_device[k], values.to(device))
            out = model(buffer[: len(chunk)])
            outputs.append(out.reshape(len(chunk), -1)[:, 0].float().cpu())
            for slot, variant in enumerate(chunk):
                if variant is not None:
                    slots[slot].index_copy_(0, on_device[variant[0]], kept[variant[0]])
    preds = torch.cat(outputs).double().numpy()
    return SubjectPerturbation(
        whole=float(preds[0]),
        masked=preds[1:].reshape(len(lobes), repeats),
        lobe_mean=np.array([float(kept[k].double().mean()) for k in lobes]),
        fill_mean=np.array(fill_means).reshape(len(lobes), repeats),
    )


def delta_ae(age, pred_whole, pred_masked):
    """ΔAE = |ŷ_masked − y| − |ŷ_whole − y| (the paper's equation 1)."""
    return np.abs(np.subtract(pred_masked, age)) - np.abs(np.subtract(pred_whole, age))


def lobe_means(volume, labels, lobes: Sequence[int] = tuple(LOBES)) -> dict[int, float]:
    """Mean input intensity of each lobe."""
    x, index = _prepare(volume, labels, lobes)
    return {k: float(x.view(-1).index_select(0, idx).double().mean()) for k, idx in index.items()}


def level_targets(
    means: Mapping[str, Mapping[int, float]], ages: pd.Series, edges
) -> dict[str, dict[int, float]]:
    """Per subject, each lobe's mean (``means``: subject → lobe → mean input intensity)
    averaged over the subjects of its age group (bins ``edges``; the subject included).
    ``ages``: months, indexed by subject. Subjects outside every group get none."""
    table = pd.DataFrame.from_dict(dict(means), orient="index")
    groups = age_group(ages.reindex(table.index).astype(float), edges)
    level = table.groupby(groups, observed=True).transform("mean")
    thin = {g: n for g, n in thin_groups(groups.dropna()).items() if n}
    if thin:  # a group of one or two: its own mean says nothing; the cohort's is used instead
        small = groups.astype(str).isin(list(thin)).to_numpy()
        level.loc[small] = table.mean().to_numpy()
        warnings.warn(thin_group_note(thin, "its lobe levels are the whole cohort's"), stacklevel=2)
    return {sid: row.dropna().to_dict() for sid, row in level.iterrows() if row.notna().any()}


def subject_rows(
    result: SubjectPerturbation, subject, fill: str, scaler: AgeScaler
) -> pd.DataFrame:
    """One subject's rows of the perturbation table (months): ``subject`` has ``subject_id``,
    ``fold`` and ``age_months``; ``scaler`` maps the network's unit to months."""
    lobes, repeats = result.masked.shape
    whole = float(scaler.to_months(result.whole))
    masked = scaler.to_months(result.masked).reshape(-1)
    return pd.DataFrame(
        {
            "subject_id": subject.subject_id,
            "fold": int(subject.fold),
            "age_months": subject.age_months,
            "lobe": np.repeat(list(LOBES.values())[:lobes], repeats),
            "repeat": np.tile(np.arange(repeats), lobes),
            "fill": fill,
            "pred_whole": whole,
            "pred_masked": masked,
            "delta_ae": delta_ae(subject.age_months, whole, masked),
            "signed_change": masked - whole,
            "lobe_mean": np.repeat(result.lobe_mean, repeats),
            "fill_mean": result.fill_mean.reshape(-1),
        },
        columns=COLUMNS,
    )


# ---- a run's subject with one lobe filled (what step 05 fed the model; figures, viewers) ----


def filled_volume(
    profile: Profile, subject_id: str, lobe: int | str, fill: str | None = None, repeat: int = 0
) -> np.ndarray:
    """The subject's model input with ``lobe`` replaced by ``fill`` (default: the profile's)
    exactly as step 05 fed it to the model for that repeat."""
    layout = RunLayout(profile.run_path)
    fill = fill or profile.perturb.fill
    k = run_arrays.lobe_id(lobe)
    volume, labels = run_arrays.subject_arrays(layout, subject_id)
    levels = (
        run_arrays.group_levels(run_arrays.read_levels(layout), subject_id)
        if fill == "group_level"
        else None
    )
    filled = fill_baseline(
        volume,
        labels,
        repeat,
        subject_id=subject_id,
        seed=profile.seed,
        fill=fill,
        lobes=(k,),
        levels=levels,
    )
    return np.where(labels == k, filled[0].numpy(), volume).astype(np.float32)


def filled_volumes(
    profile: Profile, subject_id: str, fill: str | None = None, repeat: int = 0
) -> dict[str, np.ndarray]:
    """:func:`filled_volume` of every lobe, by lobe name."""
    return {name: filled_volume(profile, subject_id, k, fill, repeat) for k, name in LOBES.items()}
