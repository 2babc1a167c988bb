"""Does lobe-wise perturbation find a maturation order that the test itself plants?

A phantom cohort where each lobe's intensity is the only age signal, and each lobe matures in its
own age group (a staggered schedule, in two opposite orders). A small 3D ResNet is trained on it,
every held-out subject is perturbed, and the per-group statistics are scored against the planted
schedule, as notebook 06 does for the synthetic cohort. The ``group_level`` fill (information
removed, level kept) must follow the planted order in both directions. The paper's noise fill must
not: its mean, 0.5, reads as a lobe half-way mature, so it ranks lobes by how far they are from
that level, not by what they tell about age (docs/perturbation-and-statistics.md).
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
import torch

from ctbrainage.core.config import ModelConfig
from ctbrainage.core.labels import LOBE_IDS, LOBES
from ctbrainage.interpret.perturb import delta_ae, level_targets, lobe_means, perturb_subject
from ctbrainage.learn.networks import build_model
from ctbrainage.stats import lobe_tests
from ctbrainage.synth.schedule import LobeCurve, MaturationSchedule
from ctbrainage.synth.scoring import score_importance

pytestmark = pytest.mark.integration  # trains phantom models

SIZE, SPAN, EDGES = 24, 48.0, (0.0, 12.0, 24.0, 36.0, 48.0)
ORDERS = {  # lobe maturing in each age group: midpoints at the groups' centres
    "posterior first": ("occipital", "parietal", "frontal", "temporal"),
    "anterior first": ("temporal", "frontal", "parietal", "occipital"),
}


def staggered(order) -> MaturationSchedule:
    curves = {
        lobe: LobeCurve(midpoint_months=6.0 + 12 * i, width_months=4.0)
        for i, lobe in enumerate(order)
    }
    return MaturationSchedule(lobes=curves)


def phantom_cohort(schedule: MaturationSchedule, n: int, seed: int):
    """Ages, volumes [n, 1, S, S, S] and lobe labels: a jittered ball cut into four lobes whose
    intensity rises by 0.4 as the lobe matures, plus voxel noise."""
    rng = np.random.default_rng(seed)
    ages = rng.uniform(0, SPAN, n)
    grid = np.indices((SIZE,) * 3) - (SIZE - 1) / 2
    volumes, labels = [], []
    for age in ages:
        g = grid - rng.normal(0, 1.5, 3)[:, None, None, None]
        ball = (g**2).sum(0) < (9 + rng.uniform(-1, 1)) ** 2
        lab = np.where(ball, 1 + (g[0] > 0) + 2 * (g[1] > 0), 0).astype(np.uint8)
        volume = np.where(ball, 0.3, 0.1) + rng.normal(0, 0.05, lab.shape)
        for k, name in LOBES.items():
            volume[lab == k] += 0.4 * float(schedule.lobes[name].fraction(age))
        volumes.append(volume.astype(np.float32)[None])
        labels.append(lab)
    return ages, np.stack(volumes), labels


def train(ages, volumes, epochs: int = 40) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="resnet10", width=8))
    optimiser = torch.optim.Adam(model.parameters(), 3e-3)
    x = torch.from_numpy(volumes)
    y = torch.tensor(ages / SPAN, dtype=torch.float32)[:, None]
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(8):
            optimiser.zero_grad()
            torch.nn.functional.mse_loss(model(x[batch]), y[batch]).backward()
            optimiser.step()
    return model.eval()


def perturbation_table(model, ages, volumes, labels, fill: str) -> pd.DataFrame:
    """Rows like ``perturbation.csv`` (months) for every held-out phantom."""
    ids = [f"p{i:03d}" for i in range(len(ages))]
    means = {sid: lobe_means(v, lab) for sid, v, lab in zip(ids, volumes, labels, strict=True)}
    levels = level_targets(means, pd.Series(ages, index=ids), EDGES)
    rows = []
    for sid, age, volume, lab in zip(ids, ages, volumes, labels, strict=True):
        result = perturb_subject(
            model, volume, lab, subject_id=sid, seed=0, fill=fill, levels=levels[sid]
        )
        whole, masked = result.whole * SPAN, result.masked[:, 0] * SPAN
        rows += [
            {
                "subject_id": sid,
                "age_months": age,
                "lobe": lobe,
                "pred_whole": whole,
                "pred_masked": m,
                "delta_ae": float(delta_ae(age, whole, m)),
            }
            for lobe, m in zip(LOBES.values(), masked, strict=True)
        ]
    return pd.DataFrame(rows)


@functools.cache
def trained_phantom(order: str):
    """The training phantoms of one order and the model trained on them (once per module: the
    U-Noise test below reuses the posterior-first model, and checks that it stays unchanged)."""
    ages, volumes, labels = phantom_cohort(staggered(ORDERS[order]), n=96, seed=0)
    return ages, volumes, labels, train(ages, volumes)


@pytest.fixture(scope="module", params=list(ORDERS))
def recovered(request):
    schedule = staggered(ORDERS[request.param])
    model = trained_phantom(request.param)[3]
    held_out = phantom_cohort(schedule, n=160, seed=1)
    expected = schedule.expected_importance(EDGES)
    scores = {}
    for fill in ("group_level", "noise"):
        table = perturbation_table(model, *held_out, fill)
        scores[fill] = score_importance(lobe_tests.lobe_age_table(table, EDGES), expected)
    whole = table.drop_duplicates("subject_id")
    return request.param, scores, float((whole["pred_whole"] - whole["age_months"]).abs().mean())


def test_the_phantom_model_learns_age(recovered):
    _, _, mae = recovered
    assert mae < 5.0  # months, over 0-48: the lobes' intensities tell the age


def test_the_group_level_fill_follows_the_planted_order(recovered):
    order, scores, _ = recovered
    score = scores["group_level"]
    planted = [top["planted"] for top in score["top_lobe"].values()]
    assert planted == list(ORDERS[order])  # one maturing lobe per group, as planted
    # the top lobe is robust: 3 or 4 of 4 in each order, trained with 1 or 2 torch threads (the
    # thread count changes the float sums, hence the trained model). The three lobes not
    # maturing in a group carry ~0 and rank by chance, so ρ varies with it: measured 0.37-0.63
    # (posterior first 0.51 / 0.47, anterior first 0.37 / 0.63 with 1 / 2 threads)
    assert score["top_lobe_matches"] >= 3, score["top_lobe"]
    assert score["spearman_rho"] >= 0.35


def test_the_noise_fill_ranks_lobes_by_their_distance_from_its_mean(recovered):
    _, scores, _ = recovered
    noise, group_level = scores["noise"], scores["group_level"]
    assert noise["top_lobe_matches"] <= 1, noise["top_lobe"]  # measured: 0 of 4, every run
    # measured ρ, noise vs group_level: 0.00 vs 0.51, 0.14 vs 0.37 (1 thread), -0.14 vs 0.47,
    # -0.04 vs 0.63 (2 threads)
    assert noise["spearman_rho"] < group_level["spearman_rho"] - 0.2


@pytest.fixture(scope="module")
def noise_tolerance():
    """U-Noise for a phantom model (posterior first): the noise model trained on the training
    phantoms, applied to held-out ones near each group's centre (where one lobe matures); and
    the model's own sensitivity to noise in each lobe of those phantoms."""
    from ctbrainage.core.sections import UNoiseConfig
    from ctbrainage.interpret.unoise import NoiseRange, Volumes, importance_map, train_noise_model

    order = ORDERS["posterior first"]
    schedule = staggered(order)
    ages, volumes, labels, model = trained_phantom("posterior first")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    brains = torch.from_numpy(np.stack([lab > 0 for lab in labels])[:, None].astype(np.float32))
    cohort = Volumes(
        torch.from_numpy(volumes), brains, torch.tensor(ages / SPAN, dtype=torch.float32)
    )
    val = np.arange(len(ages)) % 5 == 0
    train, validation = (
        Volumes(cohort.x[m], cohort.brain[m], cohort.ages_unit[m]) for m in (~val, val)
    )
    settings = UNoiseConfig(
        channels=4, autoencoder_epochs=2, max_epochs=15, patience=15, batch_size=8, lr=3e-3
    )
    noise_model = train_noise_model(
        model, train, validation, SPAN, settings, NoiseRange(0.1, 1.0, 5.0), seed=0,
        progress=False,
    ).model  # fmt: skip
    held_ages, held, held_labels = phantom_cohort(schedule, n=80, seed=1)
    near = np.flatnonzero(np.abs((held_ages % 12) - 6) < 3)
    x, age = torch.from_numpy(held[near]), torch.tensor(held_ages[near])
    lab = np.stack([held_labels[i] for i in near])[:, None]
    maps = importance_map(noise_model, x, torch.from_numpy((lab > 0).astype(np.float32)))
    maturing = np.array([LOBE_IDS[order[int(a // 12)]] for a in held_ages[near]])
    # ΔAE of Gaussian noise (2 SD of the brain) in one lobe, per phantom and lobe
    sd, generator = float(x[torch.from_numpy(lab > 0)].std()), torch.Generator().manual_seed(0)
    with torch.no_grad():
        whole = (model(x)[:, 0] * SPAN - age).abs()
        delta = {}
        for k in LOBES:
            inside = torch.from_numpy((lab == k).astype(np.float32))
            noisy = x + 2 * sd * inside * torch.randn(x.shape, generator=generator)
            delta[k] = ((model(noisy)[:, 0] * SPAN - age).abs() - whole).numpy()
    return model, before, maps.numpy(), lab[:, 0], maturing, delta


def test_unoise_leaves_the_age_model_unchanged(noise_tolerance):
    model, before, *_ = noise_tolerance
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics
    assert not model.training and all(p.requires_grad for p in model.parameters())


def test_noise_tolerance_is_not_information_on_the_phantom(noise_tolerance):
    """Measured (docs/attribution.md): the phantom model is hurt less by noise in the lobe
    that carries the age information than by noise in the others, so U-Noise's lowest-noise
    voxels do not gather in the maturing lobe (a quarter of the ball: chance)."""
    *_, maps, labels, maturing, delta = noise_tolerance
    own = np.mean([delta[k][i] for i, k in enumerate(maturing)])
    others = np.mean(
        [np.mean([delta[j][i] for j in delta if j != k]) for i, k in enumerate(maturing)]
    )
    assert others > 1.3 * own  # measured: 1.05 vs 0.62 months
    shares = []
    for importance, lab, k in zip(maps, labels, maturing, strict=True):
        top = (importance >= np.quantile(importance[lab > 0], 0.9)) & (lab > 0)  # lowest noise
        shares.append(importance[top & (lab == k)].sum() / importance[top].sum())
    assert np.mean(shares) < 0.5, np.round(shares, 2)  # measured: 0.25
