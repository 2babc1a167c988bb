"""Our scores of attribution maps against Quantus (Hedström et al. 2023) where Quantus has the
same metric and takes 3D volumes:

- relevance-mass and relevance-rank accuracy (Arras et al. 2022): ours
  (:func:`ctbrainage.synth.scoring.voxel_scores`) equal Quantus' on 3D volumes;
- model parameter randomisation (Adebayo et al. 2018): Quantus' ``MPRT`` runs on a 3D model,
  but draws its own random weights, so only what does not depend on them is compared: a map
  that ignores the model (our edge detector) keeps similarity 1 at every layer in Quantus and
  fails our check (:mod:`ctbrainage.interpret.sanity`) with ρ 1;
- faithfulness correlation (Bhatt et al. 2020) is not compared: we have no such score (the
  interventional model truth of step 07 takes its place).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import quantus  # a pinned dev dependency
import torch

from ctbrainage.interpret import reference_maps, sanity
from ctbrainage.synth.scoring import voxel_scores


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 2, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(2 * 6**3, 1),
    ).eval()


def test_relevance_mass_and_rank_accuracy_equal_quantus_on_3d_volumes():
    rng = np.random.default_rng(0)
    x = rng.random((3, 1, 6, 6, 6)).astype(np.float32)
    maps = rng.normal(size=(3, 1, 6, 6, 6)).astype(np.float32)
    region = np.zeros((3, 1, 6, 6, 6), np.float32)
    region[:, :, 1:3, 1:4, 2:5] = 1.0
    region[1, :, 4:, 4:, 4:] = 1.0  # a second region for one subject
    kwargs = dict(model=_model(), x_batch=x, y_batch=np.zeros(3, int), s_batch=region)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mass = quantus.RelevanceMassAccuracy(abs=True, normalise=False, disable_warnings=True)(
            a_batch=np.abs(maps), channel_first=True, **kwargs
        )
        rank = quantus.RelevanceRankAccuracy(abs=True, normalise=False, disable_warnings=True)(
            a_batch=np.abs(maps), channel_first=True, **kwargs
        )
    brain = np.ones((6, 6, 6))
    ours = [voxel_scores(maps[i, 0], region[i, 0], brain) for i in range(3)]
    assert [o["mass_accuracy"] for o in ours] == pytest.approx(mass, abs=1e-6)
    assert [o["rank_accuracy"] for o in ours] == pytest.approx(rank, abs=1e-12)
    assert len(set(np.round(rank, 6))) > 1  # the cases differ: not a degenerate agreement


def test_a_map_that_ignores_the_model_survives_every_randomisation_in_quantus_and_in_ours():
    model = _model()
    x = np.random.default_rng(1).random((2, 1, 6, 6, 6)).astype(np.float32)

    def explain(model, inputs, targets, **kwargs):
        return reference_maps.edges(model, torch.from_numpy(inputs)).numpy()[:, None]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = quantus.MPRT(disable_warnings=True, return_average_correlation=False)(
            model=model, x_batch=x, y_batch=np.zeros(2, int), a_batch=None,
            channel_first=True, explain_func=explain,
        )  # fmt: skip
    for layer, similarity in scores.items():
        assert np.allclose(similarity, 1.0), layer
    # ours: the same map scored by our check, with our own randomised models, survives too
    rows = sanity.checks(
        model, list(sanity.randomised_cascade(model, seed=0)), _model(), ["edges"],
        lambda m, _: (reference_maps.edges(m, torch.from_numpy(x)), np.full((2, 4), 0.25)),
        [np.ones((6, 6, 6))] * 2, progress=False,
    )  # fmt: skip
    assert sanity.sanity_verdict(sanity.table(rows))["sanity"].tolist() == ["fails"]
    assert np.allclose(sanity.table(rows)["voxel_rho"], 1.0)
