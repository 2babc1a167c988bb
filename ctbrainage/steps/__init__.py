"""The pipeline's steps, one module per notebook (the step contract: :mod:`.contract`; the
registry of every step by number: :mod:`ctbrainage.run.steps`).

=====  ==========================  ==================================================
step   module                      writes
=====  ==========================  ==================================================
01     ``s01_preprocess``          cohort.csv, preprocessed/, qc/, preprocess.csv
02     ``s02_lobes``               lobes/, lobes.csv
03     ``s03_train`` (per fold)    folds.csv, models/, logs/, predictions.csv
04     ``s04_evaluate``            metrics.csv, brain_age_gap.csv, bias_correction.csv
05     ``s05_perturbation``        perturbation*.csv, lobe_levels.csv
06     ``s06_stats``               lobe_age_tests.csv, lobe_age_windows.csv, table1.*,
                                   recovery.json
07     ``s07_attribution``         attribution*.csv, attribution_maps.npz, attribution_parts/
08     ``s08_stacking``            stacking.csv, stacking_anova.csv, stacking/ (on request)
09     ``apps.new_scans``          bundle/, new_scans/ (the app of :mod:`ctbrainage.apps` on the
run)
=====  ==========================  ==================================================

Every step also writes its exclusions into ``exclusions.csv`` and its record into ``records/``.
"""

from __future__ import annotations
