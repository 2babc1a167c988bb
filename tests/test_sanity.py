"""Randomisation checks on small models: the cascade, the similarity of maps, and the verdicts
(a method whose maps do not depend on the weights fails; an undefined similarity never passes)."""

from __future__ import annotations

import numpy as np
import torch

from ctbrainage.core.config import ModelConfig
from ctbrainage.interpret import attribution, sanity
from ctbrainage.learn.networks import build_model

SHAPE = (6, 5, 4)
LABELS = torch.arange(np.prod(SHAPE)).view(SHAPE) % 4 + 1  # four interleaved "lobes"
BRAIN = np.ones(SHAPE, np.float32)


class Weighted(torch.nn.Module):
    """A linear model of its weights: its gradient is the product of its two stages'."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 1, 1)
        self.head = torch.nn.Linear(int(np.prod(SHAPE)), 1)

    def forward(self, x):
        return self.head(self.conv(x).flatten(1))


class WeightFree(Weighted):
    """Has the same weights but ignores them: f(x) = Σ x · t for a fixed t."""

    def __init__(self):
        super().__init__()
        self.register_buffer("t", torch.linspace(-1, 1, int(np.prod(SHAPE))).view(SHAPE))

    def forward(self, x):
        return (x[:, 0] * self.t).flatten(1).sum(1, keepdim=True)


def _saliency(model, method):
    """(saliency maps, lobe shares) of two fixed inputs."""
    x = torch.rand(2, 1, *SHAPE, generator=torch.Generator().manual_seed(0))
    maps = attribution.voxel_map(model, x, method)
    brain = torch.from_numpy(BRAIN).expand(2, *SHAPE)
    return maps, attribution.lobe_shares(maps, LABELS.expand(2, *SHAPE), brain, [1, 2, 3, 4])


def _check(model_type, values=_saliency, final_only=()):
    torch.manual_seed(0)
    trained, random_labels = model_type().eval(), model_type().eval()
    cascade = list(sanity.randomised_cascade(trained, seed=1))
    rows = sanity.checks(
        trained, cascade, random_labels, ["saliency"], values, [BRAIN, BRAIN],
        final_only=final_only, progress=False,
    )  # fmt: skip
    return sanity.table(rows)


def test_the_cascade_randomises_from_the_top_and_leaves_the_model_alone():
    torch.manual_seed(3)
    model = build_model(ModelConfig(arch="resnet10", width=4)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stages = list(sanity.randomised_cascade(model, seed=0))
    names = [name for name, _ in stages]
    assert names == ["fc", "layer4", "layer3", "layer2", "layer1", "bn1", "conv1"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    top, last = stages[0][1].state_dict(), stages[-1][1].state_dict()
    assert not torch.equal(top["fc.weight"], before["fc.weight"])
    assert torch.equal(top["conv1.weight"], before["conv1.weight"])  # only the top so far
    assert not torch.equal(last["conv1.weight"], before["conv1.weight"])


def test_maps_that_follow_the_weights_pass():
    table = _check(Weighted)
    assert list(table["model"]) == ["head", "conv", "random_labels"]
    assert list(table["step"]) == [1, 2, 0]
    assert not table["survives"].any()
    verdict = sanity.sanity_verdict(table)
    assert verdict[["method", "sanity"]].to_dict("records") == [
        {"method": "saliency", "sanity": "passes"}
    ]
    final = table[table["model"] == "conv"]["voxel_rho"].iloc[0]
    labels = table[table["model"] == "random_labels"]["voxel_rho"].iloc[0]
    assert verdict["rho_randomised"].iloc[0] == final  # the continuous similarity, too
    assert verdict["rho_random_labels"].iloc[0] == labels


def test_a_model_whose_output_ignores_its_weights_fails():
    table = _check(WeightFree)
    assert np.allclose(table["voxel_rho"], 1.0) and table["survives"].all()
    assert sanity.sanity_verdict(table)["sanity"].tolist() == ["fails"]


def test_a_constant_map_has_no_similarity_and_does_not_pass():
    torch.manual_seed(0)
    trained = Weighted().eval()

    def values(model, method):  # the randomised models' maps are constant
        maps, shares = _saliency(model, method)
        return (maps, shares) if model is trained else (maps * 0 + 1, shares * 0 + 0.25)

    cascade = list(sanity.randomised_cascade(trained, seed=1))
    rows = sanity.checks(
        trained, cascade, Weighted().eval(), ["saliency"], values, [BRAIN] * 2, progress=False
    )
    table = sanity.table(rows)
    assert table["voxel_rho"].isna().all() and table["lobe_rho"].isna().all()
    assert table["survives"].all()
    assert sanity.sanity_verdict(table)["sanity"].tolist() == ["fails"]


def test_survives_reads_the_voxel_similarity_first_and_nan_as_surviving():
    assert not sanity.survives(0.2, 0.9)
    assert sanity.survives(0.6, 0.1)
    assert sanity.survives(np.nan, 0.9) and not sanity.survives(np.nan, 0.1)
    assert sanity.survives(np.nan, np.nan)
    maps = torch.rand(1, *SHAPE)
    voxel, lobe = sanity.similarity((maps, np.ones((1, 4))), (maps * 0, np.ones((1, 4))), [BRAIN])
    assert np.isnan(voxel) and np.isnan(lobe)


def test_final_only_methods_meet_the_last_stage_and_the_random_labels_only():
    table = _check(Weighted, final_only=["saliency"])
    assert list(table["model"]) == ["conv", "random_labels"]


def test_rows_stored_with_an_earlier_judgement_are_judged_again():
    row = {"method": "gradcam", "model": "fc", "step": 1, "voxel_rho": np.nan,
           "lobe_rho": np.nan, "survives": False}  # fmt: skip
    assert sanity.table([row])["survives"].tolist() == [True]
    assert sanity.table([]).columns.tolist() == sanity.COLUMNS
