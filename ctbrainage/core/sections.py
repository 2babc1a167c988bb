"""The sections of a profile: one frozen dataclass per part of the pipeline, every number with
the range it may take (:func:`bounded`, checked when a profile is built by
:mod:`ctbrainage.core.config`)."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class Range:
    """The values a number setting may take (checked when a profile is built)."""

    minimum: float | None = None  # allowed: >= minimum
    above: float | None = None  # allowed: > above
    below: float | None = None  # allowed: < below
    maximum: float | None = None  # allowed: <= maximum

    def allows(self, value: float) -> bool:
        return not (
            (self.minimum is not None and value < self.minimum)
            or (self.above is not None and value <= self.above)
            or (self.below is not None and value >= self.below)
            or (self.maximum is not None and value > self.maximum)
        )

    def __str__(self) -> str:
        parts = [
            f"{sign} {bound:g}"
            for sign, bound in (
                (">=", self.minimum), (">", self.above), ("<", self.below), ("<=", self.maximum)
            )
            if bound is not None
        ]  # fmt: skip
        return " and ".join(parts)


def bounded(default: Any, **limits: float) -> Any:
    """A setting with its allowed range, e.g. ``epochs: int = bounded(75, minimum=1)`` (for a
    tuple, every item)."""
    if isinstance(default, tuple):
        return field(default_factory=lambda: default, metadata={"range": Range(**limits)})
    return field(default=default, metadata={"range": Range(**limits)})


MIN_SIZE = 16  # voxels: the smallest model input cube
POOLED_ARCHS = ("vgg8", "sfcn")  # halve the input 5 times: the cube edge is a multiple of 32


@dataclass(frozen=True)
class SynthConfig:
    """The embedded synthetic cohort (used when ``data`` is empty)."""

    n: int = bounded(120, minimum=1)  # number of subjects
    mode: Literal["demo", "full-res", "quick"] = "demo"  # acquisition grid preset
    format: Literal["nifti", "dicom"] = "nifti"
    schedule: str = "physiological"  # preset (physiological, staggered, ...) or a JSON path
    # age cues of the heads: "all", "lobar" = lobar white matter only, or "none" = no age cue (the
    # negative control) (docs/synthetic-cohort.md)
    cues: Literal["all", "lobar", "none"] = "all"
    # share of subjects scanned with a tilted gantry
    gantry_tilt_fraction: float = bounded(0.0, minimum=0, maximum=1)
    workers: int = bounded(0, minimum=0)  # parallel processes; 0 = all cores


@dataclass(frozen=True)
class PreprocessConfig:
    """Skull strip → PCA orientation → P-tile normalisation → isotropic resample → crop."""

    spacing_mm: float = bounded(1.5, above=0)  # isotropic output spacing
    size: int = bounded(128, minimum=MIN_SIZE)  # edge of the output cube, voxels
    # lower percentile of brain HU mapped to 0
    ptile_low: float = bounded(0.5, minimum=0, below=100)
    # upper percentile of brain HU mapped to 1
    ptile_high: float = bounded(99.5, above=0, maximum=100)


@dataclass(frozen=True)
class LobesConfig:
    method: Literal["atlas", "totalsegmentator", "auto"] = "atlas"
    totalseg_license: str = ""  # or environment variable TOTALSEG_LICENSE
    # the atlas method also keeps its warp of each subject into the atlas (lobes/<id>_to_atlas:
    # step 10's registered inputs; about 1 s and 1-3 MB per subject)
    keep_warp: bool = False


@dataclass(frozen=True)
class ModelConfig:
    arch: Literal["resnet10", "resnet18", "resnet34", "resnet50", "vgg8", "sfcn"] = "resnet34"
    # channels of the first stage (standard: ResNet 64, VGG8 16, SFCN 32)
    width: int = bounded(64, minimum=1)
    # ResNets: stride of the first convolution (MONAI's default is 1)
    first_stride: int = bounded(2, minimum=1, maximum=2)

    @property
    def grid_multiple(self) -> int:
        """The input cube's edge must be a multiple of this (1: any edge >= ``MIN_SIZE``)."""
        return 32 if self.arch in POOLED_ARCHS else 1


@dataclass(frozen=True)
class TrainConfig:
    folds: int = bounded(5, minimum=2)  # age-stratified cross-validation folds
    epochs: int = bounded(75, minimum=1)
    batch_size: int = bounded(4, minimum=1)
    lr: float = bounded(1e-4, above=0)
    optimizer: Literal["adamw", "adam"] = "adamw"
    schedule: Literal["constant", "cosine"] = "constant"  # learning rate over the steps
    loss: Literal["mse", "mae"] = "mse"
    # TorchIO per batch: a flip, an affine or an elastic warp (the multi-seed paper's; Sawa et
    # al. report none)
    augment: bool = False
    val_fraction: float = bounded(0.0, minimum=0, below=1)  # inner validation split of each fold


Fill = Literal["noise", "zero", "mean", "group_level"]


@dataclass(frozen=True)
class EvaluateConfig:
    # the brain-age-gap bias correction of a fold is fitted on the other folds' out-of-fold
    # predictions, or on the fold model's inner validation subjects (needs train.val_fraction)
    bias_source: Literal["other folds", "validation"] = "other folds"


@dataclass(frozen=True)
class PerturbConfig:
    repeats: int = bounded(1, minimum=1)  # noise repeats per lobe (paper: 1)
    fill: Fill = "noise"  # the fill of Table 1 (paper: noise)
    # fills also computed, for comparison (the main fill is skipped here)
    compare_fills: tuple[Fill, ...] = ("noise", "zero", "mean", "group_level")

    @property
    def fills(self) -> list[str]:
        """The fill of Table 1, then the other fills to compare."""
        return [self.fill] + [f for f in self.compare_fills if f != self.fill]


@dataclass(frozen=True)
class StatsConfig:
    alpha: float = bounded(0.05, above=0, below=1)
    fdr: bool = False  # Benjamini–Hochberg across all tests
    # sliding windows of the developmental trajectory: width
    window_months: float = bounded(12.0, above=0)
    window_step: float = bounded(3.0, above=0)  # ... and step


AttributionMethod = Literal[
    "saliency",
    "integrated_gradients",
    "smoothgrad",
    "guided_backprop",
    "gradcam",
    "occlusion",
    "lobe_shapley",
    "unoise",
    "random_map",  # the reference maps (no model): chance, the image, its edges, lobe size
    "intensity",
    "edges",
    "lobe_size",
]


@dataclass(frozen=True)
class UNoiseConfig:
    """U-Noise's noise model (Bintsi et al., section 2.3; docs/attribution.md)."""

    # after the first layer (paper: 16); doubled at each of 5 levels
    channels: int = bounded(16, minimum=1)
    autoencoder_epochs: int = bounded(5, minimum=0)
    # the noise phase stops when the validation loss has not improved by min_improvement
    # (relative) for patience epochs, or after max_epochs (paper: 50 epochs)
    max_epochs: int = bounded(50, minimum=1)
    patience: int = bounded(5, minimum=1)
    min_improvement: float = bounded(0.01, minimum=0)
    batch_size: int = bounded(4, minimum=1)
    lr: float = bounded(0.001, above=0)
    # candidates, every combination with v_min < v_max (paper's choice: 0.1, 1, 5); the noise SD
    # range is in units of the brain's intensity SD; r weighs the reward against the age error
    # in years²
    r: tuple[float, ...] = bounded((0.1,), minimum=0)
    v_min: tuple[float, ...] = bounded((1.0,), above=0)
    v_max: tuple[float, ...] = bounded((5.0,), above=0)
    # the chosen candidate: the most noise whose validation MAE stays within this of the clean
    # model's (chosen on fold 0's inner validation subjects, used by every fold)
    max_error_increase_months: float = bounded(1.0, minimum=0)
    # per fold, age-stratified; 0 = every training subject; val_fraction of them validate
    train_subjects: int = bounded(0, minimum=0)
    val_fraction: float = bounded(0.2, above=0, maximum=0.5)


@dataclass(frozen=True)
class ModelTruthConfig:
    """Step 07's interventional model truth on a synthetic run: each child regenerated with one
    lobe's maturation (or its age, or one lobe's white-matter HU) changed, preprocessed and
    predicted by its out-of-fold model (docs/attribution.md)."""

    # of the attributed subjects, evenly spread over age; 0 = not measured (the cost: about 15
    # preprocessings and 11 generated heads per subject)
    subjects: int = bounded(0, minimum=0)
    delta_months: float = bounded(1.5, above=0)  # each maturation moved by ± this
    content_hu: float = bounded(1.0, above=0)  # added to one lobe's white matter


@dataclass(frozen=True)
class AttributionConfig:
    """Step 07: every attribution method on the fold models (docs/attribution.md)."""

    methods: tuple[AttributionMethod, ...] = typing.get_args(AttributionMethod)  # all
    # per fold and age group, age-stratified; 0 = every subject
    subjects_per_group: int = bounded(0, minimum=0)
    baseline: Literal["group_mean", "zeros"] = "group_mean"  # of integrated gradients, occlusion
    ig_steps: int = bounded(32, minimum=1)
    smoothgrad_samples: int = bounded(16, minimum=1)
    smoothgrad_sd: float = bounded(0.1, above=0)  # units of the input range
    occlusion_mm: float = bounded(36.0, above=0)  # cube edge
    occlusion_stride_mm: float = bounded(18.0, above=0)
    # Grad-CAM's layer: "auto" = a ResNet's last stage with >= 4^3 cells (the network's own
    # layer for vgg8, sfcn), or a module name such as "layer4"
    gradcam_layer: str = "auto"
    shapley_baseline: Fill = "group_level"  # what an absent lobe takes
    batch_size: int = bounded(8, minimum=1)
    unoise: UNoiseConfig = field(default_factory=UNoiseConfig)
    model_truth: ModelTruthConfig = field(default_factory=ModelTruthConfig)
    sanity_subjects: int = bounded(8, minimum=1)  # of fold 0, for the randomisation checks
    bootstrap: int = bounded(1000, minimum=1)  # resamples of subjects for the score CIs


@dataclass(frozen=True)
class SynthesisConfig:
    """Step 08's synthesised second channel: one 3D U-Net (MONAI) per fold, trained on that
    fold's training subjects to map the CT input to the planted white-matter maturity."""

    channels: tuple[int, ...] = bounded(
        (16, 32, 64), minimum=1
    )  # per level; the U-Net halves the grid between
    epochs: int = bounded(30, minimum=1)
    batch_size: int = bounded(4, minimum=1)
    lr: float = bounded(1e-3, above=0)  # Adam, L1 loss inside the brain


@dataclass(frozen=True)
class StackingConfig:
    """Step 08 (Jomsky et al. 2025): one encoder per input channel — T, the CT input; A, the
    synthesised map — stacked by linear regression on their out-of-fold predictions."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(arch="vgg8", width=16))
    # edge of the encoders' and the U-Net's cube: the model grid averaged onto size³ voxels over
    # the same field of view; 0 = the model grid itself (preprocess.size)
    size: int = bounded(0, minimum=0)
    epochs: int = bounded(100, minimum=1)  # at most (paper: 100)
    patience: int = bounded(10, minimum=1)  # early stopping on the inner validation loss (10)
    batch_size: int = bounded(3, minimum=1)
    lr: float = bounded(1e-4, above=0)  # Adam (paper: 1e-4)
    loss: Literal["mae", "mse"] = "mae"
    val_fraction: float = bounded(0.1, above=0, below=1)  # inner validation part of each fold
    control_seed_offset: int = 1000  # the second T encoder's seed: seed + this (the control)
    # seeds of T and A: seed i > 0 adds encoders T@i and A@i (seed + 10000 i) and the stacking
    # gain is measured once per seed (stacking/seeds.csv), with its CI over seeds
    seeds: int = bounded(1, minimum=1)
    # share of brain voxels in each encoder's Grad-CAM top set
    gradcam_top: float = bounded(0.2, above=0, maximum=1)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)


@dataclass(frozen=True)
class RobustnessConfig:
    """Step 10 (the multi-seed paper): the model of step 03 retrained per condition (augmentation
    off/on × registration off/on) and seed on fixed test folds; its maps' agreement across seeds
    against their faithfulness and correctness (docs/robustness.md)."""

    seeds: int = bounded(3, minimum=2)  # per condition; seed i trains with seed + 1000 i
    augment: tuple[bool, ...] = (False, True)  # TorchIO per batch (learn.datasets)
    register: tuple[bool, ...] = (False, True)  # inputs warped onto step 02's atlas
    folds: tuple[int, ...] = (0,)  # step 03's test folds, each trained per condition and seed
    epochs: int = bounded(30, minimum=1)  # at most: early stopping on the inner validation
    patience: int = bounded(5, minimum=1)
    val_fraction: float = bounded(0.1, above=0, below=0.5)  # the inner validation split
    # the "phases": validation-MAE thresholds as fractions of the chance MAE (the validation
    # children's mean distance from the training children's mean age), fixed before training
    phases: tuple[float, ...] = bounded((0.8, 0.6, 0.45), above=0, below=1)
    methods: tuple[AttributionMethod, ...] = ("guided_backprop",)
    agree_top: float = bounded(0.05, above=0, below=1)  # a seed's top share of brain voxels
    rank_top: float = bounded(0.01, above=0, below=1)  # the top share ranked by lobe
    bootstrap: int = bounded(1000, minimum=1)  # resamples (seeds or subjects) for the CIs


@dataclass(frozen=True)
class MultitaskConfig:
    """Step 11 (the infant T1w/T2w-ratio paper, in CT): input conditions from one scan, targets,
    the multi-task ablation, delayed-maturation subjects (docs/multitask.md)."""

    # channels ptile / brain / myelin / gmref (ctbrainage.imaging.channels), alone or "+"-joined
    conditions: tuple[str, ...] = ("ptile", "brain", "myelin", "gmref", "brain+myelin+gmref")
    targets: tuple[Literal["chronological", "biological"], ...] = ("chronological", "biological")
    repeats: int = bounded(3, minimum=1)  # repeated CV: repeat r > 0 folds with seed + 100 r
    size: int = bounded(0, minimum=0)  # edge of step 11's grid (averaged); 0 = preprocess.size
    width: int = bounded(16, minimum=1)  # channels of the first encoder level
    levels: int = bounded(4, minimum=2)  # encoder levels (each halves the grid)
    multiscale: bool = True  # the age head pools every encoder level, not the deepest only
    epochs: int = bounded(50, minimum=1)
    batch_size: int = bounded(4, minimum=1)
    lr: float = bounded(1e-3, above=0)  # AdamW, cosine annealing
    # heads besides age, per variant of the ablation; "+"-joined of segment, reconstruct
    ablation: tuple[str, ...] = ("age", "age+segment", "age+reconstruct", "age+segment+reconstruct")
    ablation_condition: str = "myelin"
    segment_weight: float = bounded(1.0, minimum=0)
    reconstruct_weight: float = bounded(1.0, minimum=0)
    myelin_window_hu: tuple[float, float] = (15.0, 32.0)  # unmyelinated → mature white matter
    gm_scale_hu: float = bounded(10.0, above=0)  # HU per unit of the grey-matter-referenced input
    out_of_site: bool = True  # per condition: trained on site A, tested on site B
    delays_months: tuple[float, ...] = bounded((6.0, 12.0), above=0)  # planted delays ...
    delay_lobes: tuple[str, ...] = ("all", "frontal", "occipital")  # ... × where ("all" lobes)
