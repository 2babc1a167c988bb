"""Figures. Every function returns the Figure and saves it (atomically) when given an output
path. Grouped by pipeline step; everything is importable from ``ctbrainage.views.plots``."""

from ctbrainage.views.plots.attribution import (
    group_maps_figure,
    lobe_importance_figure,
    sanity_figure,
    unoise_curves_figure,
)
from ctbrainage.views.plots.common import LOBE_COLOURS, canonical_slices, group_palette, save
from ctbrainage.views.plots.evaluation import (
    bland_altman,
    brain_age_gap_figure,
    error_by_age_group_bars,
    evaluation_figure,
    learning_curves,
    predicted_vs_true,
)
from ctbrainage.views.plots.importance import (
    delta_ae_distributions,
    fill_contrast_figure,
    importance_on_brain,
    importance_trajectory,
    perturbed_slices,
    planted_vs_measured,
    table1_heatmap,
)
from ctbrainage.views.plots.inputs import (
    brain_volume_vs_age,
    lobe_overlay_montage,
    lobe_volumes_vs_age,
    preprocess_qc_figure,
    qc_montage,
    synthetic_cohort_figure,
)
from ctbrainage.views.plots.multitask import (
    channels_figure,
    delayed_figure,
    multitask_conditions_figure,
)
from ctbrainage.views.plots.new_scans import new_cohort_figure, new_scan_figure
from ctbrainage.views.plots.robustness import (
    robustness_agreement_figure,
    robustness_curves_figure,
    robustness_table1_figure,
    robustness_truth_figure,
)
from ctbrainage.views.plots.stacking import stacking_figure, stacking_maps_figure

__all__ = [
    "channels_figure",
    "delayed_figure",
    "multitask_conditions_figure",
    "robustness_agreement_figure",
    "robustness_curves_figure",
    "robustness_table1_figure",
    "robustness_truth_figure",
    "stacking_figure",
    "stacking_maps_figure",
    "group_maps_figure",
    "lobe_importance_figure",
    "sanity_figure",
    "unoise_curves_figure",
    "LOBE_COLOURS",
    "bland_altman",
    "brain_age_gap_figure",
    "brain_volume_vs_age",
    "canonical_slices",
    "delta_ae_distributions",
    "fill_contrast_figure",
    "error_by_age_group_bars",
    "evaluation_figure",
    "group_palette",
    "importance_on_brain",
    "importance_trajectory",
    "learning_curves",
    "lobe_overlay_montage",
    "lobe_volumes_vs_age",
    "new_cohort_figure",
    "new_scan_figure",
    "perturbed_slices",
    "planted_vs_measured",
    "predicted_vs_true",
    "preprocess_qc_figure",
    "qc_montage",
    "save",
    "synthetic_cohort_figure",
    "table1_heatmap",
]
