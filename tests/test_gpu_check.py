"""The prepared GPU check (benchmarks/gpu_check.py), run the same way on the CPU at the tiny size,
with the packages the GPU machine lacks made unimportable."""

import importlib.util
import json
import subprocess
import sys

import pytest

from ctbrainage.core.config import REPO_ROOT, load_profile

SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.py"
# not installed on the lent GPU machine (monai and nibabel travel there as wheels)
ABSENT_THERE = ["SimpleITK", "pydicom", "torchio", "captum", "nilearn", "pingouin", "papermill"]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    args = ["--cpu", "--tiny", "--subjects", "6", "--steps", "4", "--warmup", "1"]
    prelude = (
        "import runpy, sys\n"
        f"for name in {ABSENT_THERE!r}: sys.modules[name] = None\n"
        f"sys.argv = [{str(SCRIPT)!r}, *{args + ['--epochs', '1', '--out', str(out)]!r}]\n"
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", prelude], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "== projected tiny profile" in done.stdout
    return json.loads((out / "gpu_check.json").read_text())


@pytest.mark.integration  # runs the benchmark script (trains)
def test_the_tiny_cpu_run_measures_every_section(report):
    assert report["machine"]["device"] == "cpu" and report["machine"]["gpu"] is None
    assert report["phantom_subjects"] == 6 and report["loader_volumes_per_s"] > 0
    training = report["training"]
    assert training["volumes_per_s"] > 0 and training["timed_steps"] == 4
    assert training["seconds_per_epoch_160"] == pytest.approx(160 / training["volumes_per_s"])
    assert training["achieved_over_peak"] is None  # no GPU, no bf16 peak
    steps = report["project_steps"]
    assert len(steps["fold_seconds"]) == 2 and steps["predicted_subjects"] == 6
    assert steps["perturbation_rows"] == {
        f: 6 * 4 for f in ("noise", "zero", "mean", "group_level")
    }


@pytest.mark.integration  # runs the benchmark script (trains)
def test_the_projection_adds_up(report):
    projection = report["projection"]
    assert projection["cohort"] == 201
    assert projection["total_seconds"] == pytest.approx(
        projection["training_seconds"] + projection["perturbation_seconds"]
    )
    tiny = load_profile("tiny")
    rate, k = report["training"]["volumes_per_s"], tiny.train.folds
    epoch = 201 * (k - 1) / k / rate
    fixed = projection["fold_fixed_seconds"]
    assert projection["training_seconds"] == pytest.approx(
        k * tiny.train.epochs * epoch + k * fixed
    )
    # the fixed cost: a measured fold less its epochs (1 here) over 6 × (k-1)/k phantoms
    folds = report["project_steps"]["fold_seconds"]
    expected = sum(max(t - 6 * (k - 1) / k / rate, 0.0) for t in folds) / len(folds)
    assert fixed == pytest.approx(expected)
    perturb = report["project_steps"]["perturbation_seconds_per_subject"]
    assert projection["perturbation_seconds"] == pytest.approx(201 * perturb)


def test_training_flops_scale_with_the_input_volume():
    import torch

    check = _module()
    small = load_profile("tiny")
    large = load_profile("tiny", {"preprocess.size": 64})
    ratio = check.training_flops(large, torch.device("cpu")) / check.training_flops(
        small, torch.device("cpu")
    )
    assert 7.0 < ratio < 9.0  # eight times the voxels


def test_peak_throughput_is_looked_up_or_given():
    check = _module()
    assert check.peak_tflops("NVIDIA H200", None) == 989.0
    assert check.peak_tflops("NVIDIA H200", 790.0) == 790.0
    assert check.peak_tflops("Some GPU", None) is None
