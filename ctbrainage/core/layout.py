"""The run directory: every path of a run, derived in one place.

``RunLayout(run_dir)`` names each file and folder a run holds (docs/run-directory.md);
``SyntheticLayout`` does the same for the embedded synthetic cohort generated inside a run. No
other module builds a run-directory path, so renaming a file is a change to this module alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

NIFTI = ".nii.gz"
NOTEBOOK_SOURCES = Path(__file__).resolve().parents[2] / "notebooks"  # what a run executes


@dataclass(frozen=True)
class SyntheticLayout:
    """A generated cohort: images, the planted truth and the maturation schedule."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "cohort.csv"

    @property
    def truth_table(self) -> Path:
        return self.root / "truth.csv"

    @property
    def schedule(self) -> Path:
        return self.root / "schedule.json"

    @property
    def expected_importance(self) -> Path:
        return self.root / "expected_importance.csv"

    @property
    def truth_dir(self) -> Path:
        return self.root / "truth"

    def image(self, subject_id: str, fmt: str = "nifti") -> Path:
        """The scan, relative to ``root`` (as the manifest lists it): a NIfTI file or a DICOM
        series folder."""
        if fmt == "nifti":
            return Path("images") / f"{subject_id}{NIFTI}"
        return Path("dicom") / subject_id

    def truth(self, subject_id: str) -> Path:
        """The subject's truth record (age, sex, planted attenuation, generator settings)."""
        return self.truth_dir / f"{subject_id}.json"

    def record(self, subject_id: str) -> Path:
        """The freshness record of one generated subject."""
        return self.root / "records" / f"{subject_id}.json"

    def truth_lobes(self, subject_id: str) -> Path:
        """The true lobe labels (1-4) in the scan's native grid."""
        return self.truth_dir / f"{subject_id}_lobes{NIFTI}"

    def truth_brain(self, subject_id: str) -> Path:
        """The true brain mask in the native grid."""
        return self.truth_dir / f"{subject_id}_brain{NIFTI}"

    def truth_wm(self, subject_id: str) -> Path:
        """The lobes' white-matter cores (labels 1-4) in the native grid."""
        return self.truth_dir / f"{subject_id}_wm{NIFTI}"

    def truth_signal(self, subject_id: str) -> Path:
        """The planted lobar signal, d HU / d age, in the native grid."""
        return self.truth_dir / f"{subject_id}_signal{NIFTI}"


@dataclass(frozen=True)
class BundleLayout:
    """A trained run exported for new scans (:mod:`ctbrainage.apps.bundle`)."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def manifest(self) -> Path:
        """Versions, settings summary and the checksum of every other file."""
        return self.root / "bundle.json"

    @property
    def profile(self) -> Path:
        return self.root / "profile.yaml"

    def model(self, fold: int) -> Path:
        """One fold model's weights (a plain ``state_dict``)."""
        return self.root / "models" / f"fold{fold}.pt"

    @property
    def out_of_fold(self) -> Path:
        """The run's out-of-fold predictions, without subject ids (bias line, intervals)."""
        return self.root / "out_of_fold.csv"

    @property
    def group_levels(self) -> Path:
        """Each age group's mean input per lobe (the ``group_level`` fill's targets)."""
        return self.root / "group_levels.csv"

    @property
    def model_card(self) -> Path:
        return self.root / "MODEL_CARD.md"


@dataclass(frozen=True)
class RunLayout:
    """Every path of one run directory."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    # ---- the cohort --------------------------------------------------------------------------
    @property
    def synthetic(self) -> SyntheticLayout:
        return SyntheticLayout(self.root / "synthetic")

    @property
    def cohort(self) -> Path:
        """The validated manifest."""
        return self.root / "cohort.csv"

    @property
    def exclusions(self) -> Path:
        """Every excluded subject once: step and reason."""
        return self.root / "exclusions.csv"

    @property
    def profile(self) -> Path:
        """The profile with the command line's overrides (written by run_all.py)."""
        return self.root / "profile.yaml"

    # ---- step 01: preprocessing --------------------------------------------------------------
    @property
    def preprocessed_dir(self) -> Path:
        return self.root / "preprocessed"

    def preprocessed(self, subject_id: str) -> Path:
        """The model input, float32 in [0, 1] inside the brain."""
        return self.preprocessed_dir / f"{subject_id}{NIFTI}"

    def preprocessed_ids(self) -> list[str]:
        """The subjects with a model input in ``preprocessed/`` (not their brain masks)."""
        ids = {p.name.removesuffix(NIFTI) for p in self.preprocessed_dir.glob(f"*{NIFTI}")}
        masks = {m.name for i in ids for m in (self.brain(i), self.brain_native(i))}
        return sorted(i for i in ids if self.preprocessed(i).name not in masks)

    def brain(self, subject_id: str) -> Path:
        """The brain mask in the model's grid."""
        return self.preprocessed_dir / f"{subject_id}_brain{NIFTI}"

    def brain_native(self, subject_id: str) -> Path:
        """The brain mask in the scan's own grid (for scoring the skull strip)."""
        return self.preprocessed_dir / f"{subject_id}_brain_native{NIFTI}"

    def qc(self, subject_id: str) -> Path:
        return self.qc_dir / f"{subject_id}.png"

    @property
    def qc_dir(self) -> Path:
        return self.root / "qc"

    @property
    def preprocess_table(self) -> Path:
        return self.root / "preprocess.csv"

    def signal(self, subject_id: str) -> Path:
        """Synthetic runs: the planted signal in the model's grid, d(model input) / d age."""
        return self.root / "truth" / f"{subject_id}_signal{NIFTI}"

    # ---- step 02: lobes ----------------------------------------------------------------------
    @property
    def lobes_dir(self) -> Path:
        return self.root / "lobes"

    def lobes(self, subject_id: str) -> Path:
        """Lobe labels (1-4) in the model's grid."""
        return self.lobes_dir / f"{subject_id}{NIFTI}"

    def atlas_warp(self, subject_id: str) -> Path:
        """The atlas → subject displacement field (mm): resamples the subject into the atlas."""
        return self.lobes_dir / f"{subject_id}_to_atlas{NIFTI}"

    @property
    def totalseg_dir(self) -> Path:
        """TotalSegmentator's working files."""
        return self.lobes_dir / "totalsegmentator"

    @property
    def lobes_table(self) -> Path:
        return self.root / "lobes.csv"

    # ---- step 03: training -------------------------------------------------------------------
    @property
    def folds(self) -> Path:
        return self.root / "folds.csv"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def model(self, fold: int) -> Path:
        return self.models_dir / f"fold{fold}.ckpt"

    def fold_predictions(self, fold: int) -> Path:
        """The test fold's predictions by this fold's model."""
        return self.models_dir / f"fold{fold}_predictions.csv"

    def fold_validation(self, fold: int) -> Path:
        """The inner validation subjects' predictions by this fold's model."""
        return self.models_dir / f"fold{fold}_validation.csv"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def fold_log_name(self, fold: int) -> str:
        """The CSV logger's name of a fold (its folder below ``logs_dir``)."""
        return f"fold{fold}"

    def learning_curve(self, fold: int) -> Path:
        """The loss per epoch of one fold (Lightning's CSV logger, version 0)."""
        return self.logs_dir / self.fold_log_name(fold) / "version_0" / "metrics.csv"

    @property
    def predictions(self) -> Path:
        """Out-of-fold predictions of every subject (finalised by step 03); in a folder of
        new scans (:mod:`ctbrainage.apps.predict`), the bundle's predictions."""
        return self.root / "predictions.csv"

    # ---- step 04: evaluation -----------------------------------------------------------------
    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def brain_age_gaps(self) -> Path:
        """Raw and bias-corrected brain-age gaps."""
        return self.root / "brain_age_gap.csv"

    @property
    def bias_lines(self) -> Path:
        """The fitted bias-correction lines (one per fold)."""
        return self.root / "bias_correction.csv"

    @property
    def maturation_leak(self) -> Path:
        """The same children at many ages through step 01 (``ctbrainage.synth.invariance``)."""
        return self.root / "maturation_leak.csv"

    @property
    def baselines(self) -> Path:
        """The CNN against the baselines (training mean age, ridge on image features)."""
        return self.root / "baselines.csv"

    # ---- step 05: perturbation ---------------------------------------------------------------
    def perturbation(self, fill: str, main_fill: str) -> Path:
        """The table of the profile's fill (``main_fill``): ``perturbation.csv``; of another
        ``fill``, a comparison: ``perturbation_<fill>.csv``."""
        name = "perturbation.csv" if fill == main_fill else f"perturbation_{fill}.csv"
        return self.root / name

    @property
    def lobe_levels(self) -> Path:
        """Each subject's lobe means and its age group's lobe means (``group_level`` targets)."""
        return self.root / "lobe_levels.csv"

    # ---- step 06: statistics -----------------------------------------------------------------
    @property
    def lobe_age_table(self) -> Path:
        """Every lobe x age-group test (the long form of Table 1)."""
        return self.root / "lobe_age_tests.csv"

    @property
    def trajectory(self) -> Path:
        """The same tests over sliding age windows."""
        return self.root / "lobe_age_windows.csv"

    def table1(self, suffix: str) -> Path:
        """Table 1 as ``.csv``, ``.md`` or ``.tex``."""
        return self.root / f"table1{suffix}"

    @property
    def recovery(self) -> Path:
        """Synthetic runs: how well the readouts recover the planted schedule."""
        return self.root / "recovery.json"

    # ---- step 07: attribution ----------------------------------------------------------------
    @property
    def attribution(self) -> Path:
        """Every method's lobe importance per subject (one long table)."""
        return self.root / "attribution.csv"

    @property
    def attribution_scores(self) -> Path:
        """Synthetic runs: each method scored against the planted truth, and its cost."""
        return self.root / "attribution_scores.csv"

    @property
    def attribution_sanity(self) -> Path:
        """Each method's maps from randomised models against the trained model's."""
        return self.root / "attribution_sanity.csv"

    @property
    def attribution_tests(self) -> Path:
        """Each method's lobe x age-group tests (the Table-1 form)."""
        return self.root / "attribution_tests.csv"

    @property
    def attribution_maps(self) -> Path:
        """Group maps per method and age group, and each group's mean input."""
        return self.root / "attribution_maps.npz"

    def attribution_part(self, fold: int) -> Path:
        """One fold's map sums (step 07's resumable unit)."""
        return self.root / "attribution_parts" / f"fold{fold}.npz"

    @property
    def unoise_training(self) -> Path:
        """U-Noise's loss curves: the candidates on fold 0 and every fold's training."""
        return self.root / "unoise_training.csv"

    @property
    def model_truth(self) -> Path:
        """Synthetic runs: each model's measured sensitivity to every lobe and cue."""
        return self.root / "model_truth.csv"

    def model_truth_part(self, fold: int) -> Path:
        """One fold's model-truth rows (a resumable unit)."""
        return self.root / "model_truth_parts" / f"fold{fold}.csv"

    @property
    def random_label_model(self) -> Path:
        """Fold 0's model trained on shuffled ages (the data-randomisation check)."""
        return self.models_dir / "fold0_random_labels.ckpt"

    @property
    def random_label_log_name(self) -> str:
        return "fold0_random_labels"

    # ---- step 08: two encoders and stacking -------------------------------------------------
    @property
    def stacking_dir(self) -> Path:
        return self.root / "stacking"

    def stacking_model(self, encoder: str, fold: int) -> Path:
        """One fold's encoder (``T``, ``A``, ``T2``) or synthesis U-Net (``unet``)."""
        return self.stacking_dir / "models" / f"fold{fold}_{encoder}.ckpt"

    def stacking_log_name(self, encoder: str, fold: int) -> str:
        return str(Path(self.stacking_dir.name) / f"fold{fold}_{encoder}")

    def synthesised(self, subject_id: str) -> Path:
        """The subject's synthesised map, made by the U-Net of its own test fold."""
        return self.stacking_dir / "synthesised_maps" / f"{subject_id}{NIFTI}"

    def stacking_fold(self, fold: int, part: str) -> Path:
        """One fold's ``subjects`` (per test subject), ``encoders`` (.csv) or ``maps`` (.npz)."""
        suffix = ".npz" if part == "maps" else ".csv"
        return self.stacking_dir / "folds" / f"fold{fold}_{part}{suffix}"

    @property
    def stacking_table(self) -> Path:
        """Model, features, n, MAE, MSE, R² of the encoders and the stacked models."""
        return self.root / "stacking.csv"

    @property
    def stacking_anova(self) -> Path:
        return self.root / "stacking_anova.csv"

    def stacking_result(self, name: str) -> Path:
        """The step's other tables (``predictions``, ``coefficients``, ``by_age_group``,
        ``by_site``, ``synthesis``, ``gradcam``, ``encoders``, ``seeds``) and ``maps`` (.npz)."""
        suffix = ".npz" if name == "maps" else ".csv"
        return self.stacking_dir / f"{name}{suffix}"

    # ---- step 09: new scans ------------------------------------------------------------------
    # ---- step 10: explanations across seeds, augmentation and registration ------------------
    @property
    def robustness_dir(self) -> Path:
        return self.root / "robustness"

    def robustness_unit(self, unit: str, part: str) -> Path:
        """One training's file (``maps``: .npz; the others: .csv)."""
        suffix = ".npz" if part == "maps" else ".csv"
        return self.robustness_dir / "trainings" / f"{unit}_{part}{suffix}"

    def robustness_log_name(self, unit: str) -> str:
        return str(Path(self.robustness_dir.name) / unit)

    @property
    def robustness_table(self) -> Path:
        """The condition table."""
        return self.root / "robustness.csv"

    def robustness_result(self, name: str) -> Path:
        return self.robustness_dir / f"{name}.csv"

    # ---- step 11: input conditions and multi-task learning ------------------------------------
    @property
    def multitask_dir(self) -> Path:
        return self.root / "multitask"

    def multitask_unit(self, unit: str, part: str) -> Path:
        """One training's table (``test``, ``delayed``, ``lobe_shares``)."""
        return self.multitask_dir / "trainings" / f"{unit}_{part}.csv"

    def multitask_log_name(self, unit: str) -> str:
        return str(Path(self.multitask_dir.name) / unit)

    def multitask_result(self, name: str) -> Path:
        """``multitask_conditions``, ``multitask_ablation`` and ``delayed`` at the run's top;
        the other tables under ``multitask/``."""
        top = name in ("multitask_conditions", "multitask_ablation", "delayed")
        return (self.root if top else self.multitask_dir) / f"{name}.csv"

    @property
    def bundle_dir(self) -> Path:
        """The run exported as a bundle (:mod:`ctbrainage.apps.bundle`)."""
        return self.root / "bundle"

    @property
    def new_scans_dir(self) -> Path:
        """Brain age of new scans with the run's bundle: a folder laid out like a run."""
        return self.root / "new_scans"

    # ---- new scans (ctbrainage.apps.predict): a folder laid out like a run -----------------------
    @property
    def dicom_manifest(self) -> Path:
        """The manifest built from a DICOM tree (:mod:`ctbrainage.apps.dicom_index`)."""
        return self.root / "dicom_manifest.csv"

    @property
    def prediction_summary(self) -> Path:
        """The bundle used, the interval's level and radius, timings."""
        return self.root / "prediction.json"

    @property
    def pages_dir(self) -> Path:
        return self.root / "pages"

    def subject_page(self, subject_id: str) -> Path:
        """One new scan's report page."""
        return self.pages_dir / f"{subject_id}.html"

    def subject_figure(self, subject_id: str) -> Path:
        """One new scan's figure: its brain age on the training cohort, lobe importance."""
        return self.pages_dir / f"{subject_id}.png"

    # ---- what the notebooks and the driver leave -----------------------------------------------
    @property
    def figures_dir(self) -> Path:
        return self.root / "figures"

    def figure(self, name: str) -> Path:
        return self.figures_dir / f"{name}.png"

    def figure_paths(self, name: str, also: str | Path | None = None) -> list[Path]:
        """Where a figure is saved: the run's ``figures/`` and, if given, the folder ``also``
        (e.g. the repository's ``figures/`` for the reference run)."""
        return [self.figure(name)] + ([Path(also) / self.figure(name).name] if also else [])

    @property
    def records_dir(self) -> Path:
        return self.root / "records"

    def record(self, step: str) -> Path:
        """A step's freshness record (:mod:`ctbrainage.core.freshness`)."""
        return self.records_dir / f"{step}.json"

    def subject_record(self, step: str, subject_id: str) -> Path:
        """The freshness record of one subject's work inside a step."""
        return self.records_dir / step / f"{subject_id}.json"

    @property
    def notebooks_dir(self) -> Path:
        return self.root / "notebooks"

    def notebook(self, name: str) -> Path:
        return self.notebooks_dir / f"{name}.ipynb"

    @property
    def html_dir(self) -> Path:
        return self.root / "html"

    def html(self, name: str, suffix: str = ".html") -> Path:
        return self.html_dir / f"{name}{suffix}"

    @property
    def nbval_dir(self) -> Path:
        """``ctbrainage.run.nbcheck``'s copies of the notebooks it re-executes here."""
        return self.root / "nbval"

    @property
    def index(self) -> Path:
        return self.root / "index.html"

    @property
    def manifest(self) -> Path:
        """Parameters, versions, timings and status of every notebook (run_all.py)."""
        return self.root / "manifest.json"

    @property
    def run_lock(self) -> Path:
        """Held by the run_all.py working on this run (one at a time); ``run_owner`` says who."""
        return self.root / ".run_all.lock"

    @property
    def run_owner(self) -> Path:
        return self.root / ".run_all.owner.json"
