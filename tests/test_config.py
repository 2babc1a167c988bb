"""Profiles: the shipped YAML files, overrides, validation errors and derived paths."""

import pytest

from ctbrainage.core.config import REPO_ROOT, ProfileError, available_profiles, load_profile
from ctbrainage.core.layout import RunLayout
from ctbrainage.steps import s01_preprocess


def test_shipped_profiles_load_with_their_settings():
    assert available_profiles() == ["benchmark", "demo", "multiseed", "paper", "tiny"]
    benchmark = load_profile("benchmark")
    assert (benchmark.synth.schedule, benchmark.synth.cues) == ("staggered", "lobar")
    # the demo's model and tests on a 64^3 grid (the demo's is 48^3, for its time budget)
    demo_settings = load_profile("demo").to_dict()
    for section in ("model", "perturb", "stats"):
        assert benchmark.to_dict()[section] == demo_settings[section], section
    assert (benchmark.preprocess.spacing_mm, benchmark.preprocess.size) == (3.0, 64)
    assert (benchmark.train.epochs, benchmark.synth.n) == (12, 120)
    assert load_profile("demo").synth.cues == "all"
    paper = load_profile("paper")
    assert paper.name == "paper" and paper.seed == 42
    assert (paper.model.arch, paper.model.width, paper.model.first_stride) == ("resnet34", 64, 2)
    assert (paper.train.epochs, paper.train.batch_size, paper.train.folds) == (75, 4, 5)
    assert paper.train.lr == pytest.approx(1e-4) and isinstance(paper.train.lr, float)
    assert (paper.synth.n, paper.synth.mode) == (201, "full-res")
    assert (paper.preprocess.spacing_mm, paper.preprocess.size) == (1.5, 128)
    demo = load_profile()  # the default profile
    assert demo.name == "demo"
    assert (demo.synth.n, demo.model.arch, demo.train.epochs, demo.preprocess.size) == (
        96,
        "resnet10",
        15,
        48,
    )
    assert (demo.preprocess.spacing_mm, demo.stacking.size) == (4.0, 32)
    tiny = load_profile("tiny")
    assert (tiny.synth.n, tiny.train.folds, tiny.train.epochs, tiny.preprocess.size) == (
        12,
        2,
        1,
        32,
    )
    assert tiny.age_group_edges == (0.0, 12.0, 24.0, 36.0, 48.0)


def test_dotted_nested_and_keyword_overrides_apply():
    p = load_profile("demo", {"train.epochs": 2, "model": {"width": 4}}, synth={"n": 6}, seed=1)
    assert (p.train.epochs, p.model.width, p.synth.n, p.seed) == (2, 4, 6, 1)
    # a nested override merges with the file's section instead of replacing it
    assert (p.model.arch, p.train.batch_size, p.synth.mode) == ("resnet10", 8, "demo")
    # an int where a float is expected is accepted as a float; lists become tuples
    changes = {"train.lr": 1, "age_range_months": [0, 24], "age_group_edges": [0, 12, 24]}
    q = load_profile("tiny", changes)
    assert q.train.lr == 1.0 and isinstance(q.train.lr, float)
    assert q.age_range_months == (0.0, 24.0) and q.age_group_edges == (0.0, 12.0, 24.0)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"train.epoch": 3}, "did you mean 'train.epochs'"),
        ({"synth": {"workerz": 1}}, "did you mean 'synth.workers'"),
        ({"train.epochs": "3"}, "train.epochs: expected an integer, got '3'"),
        ({"train.epochs": True}, "train.epochs: expected an integer, got True"),
        ({"train.augment": 1}, "train.augment: expected true/false"),
        ({"stats.alpha": "0.05"}, "stats.alpha: expected a number"),
        ({"synth.mode": "full_res"}, "did you mean 'full-res'"),
        ({"model.arch": "resnet43"}, "did you mean 'resnet34'"),
        ({"age_range_months": [0, 12, 24]}, "expected 2 values, got 3"),
        ({"seed.x": 1}, "'seed' is not a section"),
        ({"train": 3}, "train: expected a mapping"),
    ],
)
def test_bad_overrides_are_refused_naming_the_key(overrides, expected):
    with pytest.raises(ProfileError) as err:
        load_profile("demo", overrides)
    assert expected in str(err.value)


def test_unknown_profile_suggests_the_nearest():
    with pytest.raises(ProfileError, match=r"unknown profile 'dem' \(did you mean 'demo'\?\)"):
        load_profile("dem")


def test_settings_of_the_later_steps_have_defaults_and_are_checked():
    tiny = load_profile("tiny")
    assert tiny.evaluate.bias_source == "other folds"
    assert tiny.perturb.compare_fills == ("noise", "zero", "mean", "group_level")
    assert (tiny.stats.window_months, tiny.stats.window_step) == (12.0, 3.0)
    p = load_profile(
        "tiny",
        {
            "evaluate.bias_source": "validation",
            "perturb.compare_fills": ["zero"],
            "stats.window_months": 6,
        },
    )
    assert p.evaluate.bias_source == "validation" and p.perturb.compare_fills == ("zero",)
    assert p.stats.window_months == 6.0 and isinstance(p.stats.window_months, float)
    with pytest.raises(ProfileError, match="evaluate.bias_source: 'test fold' is not one of"):
        load_profile("tiny", {"evaluate.bias_source": "test fold"})
    with pytest.raises(ProfileError, match="perturb.compare_fills: 'blur' is not one of"):
        load_profile("tiny", {"perturb.compare_fills": ["blur"]})


def test_run_and_manifest_paths(tmp_path):
    demo = load_profile("demo")
    assert demo.run_path == REPO_ROOT / "runs" / "demo"
    synthetic = RunLayout(demo.run_path).synthetic
    assert synthetic.root == REPO_ROOT / "runs" / "demo" / "synthetic"
    assert s01_preprocess.manifest_path(demo) == synthetic.manifest
    assert synthetic.manifest == REPO_ROOT / "runs" / "demo" / "synthetic" / "cohort.csv"
    assert load_profile("demo", run_dir="elsewhere").run_path == REPO_ROOT / "elsewhere"
    custom = load_profile("demo", run_dir=str(tmp_path), data=str(tmp_path / "mine.csv"))
    assert custom.run_path == tmp_path
    assert RunLayout(custom.run_path).synthetic.root == tmp_path / "synthetic"
    assert s01_preprocess.manifest_path(custom) == tmp_path / "mine.csv"


def test_profile_from_an_explicit_yaml_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("seed: 7\nmodel:\n  arch: resnet18\ntrain:\n  epochs: 3\n")
    p = load_profile(path, {"train.folds": 3})
    assert (p.name, p.seed, p.model.arch, p.train.epochs, p.train.folds) == (
        "mine",
        7,
        "resnet18",
        3,
        3,
    )
    assert p.model.width == 64 and p.run_path == REPO_ROOT / "runs" / "mine"  # defaults
    bad = tmp_path / "bad.yml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ProfileError, match="mapping at the top level"):
        load_profile(str(bad))
