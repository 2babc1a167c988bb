"""The result tables of the documentation, written from a run's files, never typed by hand.

``python -m ctbrainage.views.docs RUN_DIR [--docs docs]`` (``make docs``) replaces the body of
every block ``<!-- results:NAME -->`` … ``<!-- /results:NAME -->`` of ``docs/*.md`` and of the
``README.md`` beside ``docs/`` by a table made from RUN_DIR's files (:data:`BLOCKS`).
``NAME@RUN`` reads the run directory ``RUN`` beside RUN_DIR instead (``attribution@benchmark``
with ``runs/demo`` reads ``runs/benchmark``). A block whose source file is absent gets a note
naming the step that writes it. Every path comes from :class:`~ctbrainage.core.layout.RunLayout`;
pages are written atomically and only when they change, so a second call changes nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from ctbrainage.core.atomic import atomic_write_text
from ctbrainage.core.cohort import PAPER_AGE_EDGES
from ctbrainage.core.config import load_profile
from ctbrainage.core.labels import LOBES
from ctbrainage.core.layout import RunLayout
from ctbrainage.interpret.perturb import FILLS
from ctbrainage.interpret.sanity import sanity_verdict
from ctbrainage.stats.evaluate import PAPER_METRICS
from ctbrainage.synth import faithfulness
from ctbrainage.synth.invariance import cue_correlations, input_age_cues
from ctbrainage.synth.schedule import IMPORTANCE_DEFINITIONS
from ctbrainage.views import attribution_tables, multitask_tables, robustness_tables

_NAME = r"[\w.@-]+"
BLOCK = re.compile(  # both markers at the start of a line
    rf"^(?P<open><!-- results:(?P<name>{_NAME}) -->\n).*?^(?P<close><!-- /results:(?P=name) -->)",
    re.S | re.M,
)
OPENING = re.compile(rf"<!-- results:{_NAME} -->")
DASH = "–"


def _number(value, digits: int = 2) -> str:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return DASH if missing else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list]) -> str:
    """A pipe table; a ``|`` inside a cell is escaped."""
    cells = lambda row: " | ".join(str(c).replace("|", "\\|") for c in row)  # noqa: E731
    lines = [f"| {cells(header)} |", "|" + "---|" * len(header)]
    return "\n".join(lines + [f"| {cells(row)} |" for row in rows])


def _read(path: Path, **options) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"subject_id": str}, **options)


# ---- one function per block: the run's layout → a markdown table -------------------------------


def _metrics(layout: RunLayout) -> str:
    """Step 04: mean ± SD across folds and pooled, beside the paper's numbers."""
    table = _read(layout.metrics, index_col=0)  # rows: fold k, mean, sd, pooled
    digits = {"rmse": 2, "mae": 2, "r": 3, "r2": 3}
    folds = sum(str(i).startswith("fold") for i in table.index)
    at = lambda row, c: _number(table.at[row, c], digits[c])  # noqa: E731
    rows = [
        [f"mean ± SD over {folds} folds", *(f"{at('mean', c)} ± {at('sd', c)}" for c in digits)],
        [f"pooled, {int(table.at['pooled', 'n'])} subjects", *(at("pooled", c) for c in digits)],
        [
            "Sawa et al. 2025, mean over folds",
            *(_number(PAPER_METRICS.get(c), 3) for c in digits),
        ],
    ]
    return _table(["", "RMSE (months)", "MAE (months)", "r", "R²"], rows)


def _baselines(layout: RunLayout) -> str:
    """Step 04: the CNN against the training mean age and a ridge on image features."""
    table = _read(layout.baselines)
    digits = {"mae": 2, "rmse": 2, "r": 3}

    def cell(row, metric):
        mean, sd = getattr(row, f"{metric}_mean"), getattr(row, f"{metric}_sd")
        if math.isnan(mean):
            return DASH
        return f"{_number(mean, digits[metric])} ± {_number(sd, digits[metric])}"

    rows = [[row.model, *(cell(row, m) for m in digits)] for row in table.itertuples()]
    return _table(["mean ± SD over folds", "MAE (months)", "RMSE (months)", "r"], rows)


def _leak(layout: RunLayout) -> str:
    """The same children at many ages: how far the mask, levels, grid and input moved."""
    table = _read(layout.maturation_leak)
    rows = []
    for seed, part in table.groupby("seed"):
        later = part.iloc[1:]
        rows.append(
            [
                f"seed {seed}, {part.age_months.min():g}–{part.age_months.max():g} months",
                _number(later.mask_dice_vs_first.min(), 3),
                f"{part.mask_ml.min():.0f}–{part.mask_ml.max():.0f}",
                f"{part.ptile_low_hu.min():.2f}–{part.ptile_low_hu.max():.2f}",
                f"{later.grid_turn_deg.max():.3f} / {later.grid_shift_mm.max():.3f}",
                f"{100 * later.share_changed_outside.max():.1f} %",
            ]
        )
    header = ["child", "mask Dice with the first age (min)", "mask (mL)", "lower P-tile level (HU)"]
    header += ["grid turned (°) / moved (mm), max", "outside voxels changed > 0.02, max"]
    return _table(header, rows)


def _input_cues(layout: RunLayout) -> str:
    """Step 01 on a synthetic run: Spearman's ρ of each cue in the model input with age."""
    table = cue_correlations(input_age_cues(layout))
    return _table(
        ["cue in the model input", f"ρ with age (n = {int(table.n.iloc[0])})"],
        [[f"`{row.cue}`", _number(row.rho, 2)] for row in table.itertuples()],
    )


def _main_table(layout: RunLayout) -> Path:
    """Step 05's table of the profile's fill, whichever fill it is (its ``fill`` column says)."""
    return layout.perturbation(fill="", main_fill="")


def _perturbation(layout: RunLayout) -> str:
    """Step 05: mean ΔAE (months) per lobe, for the profile's fill and every compared fill."""
    main = _read(_main_table(layout))
    first = str(main["fill"].iloc[0])
    others = [(f, layout.perturbation(f, first)) for f in FILLS if f != first]
    tables = {first: main} | {f: _read(path) for f, path in others if path.exists()}
    rows = []
    for fill, table in tables.items():
        means = table.groupby("lobe")["delta_ae"].mean()
        rows.append([f"`{fill}`", *(_number(means.get(lobe)) for lobe in LOBES.values())])
    return _table(["fill", *LOBES.values()], rows)


def _table1(layout: RunLayout) -> str:
    """Step 06: the run's Table 1 as the step wrote it in Markdown, with its legend."""
    return layout.table1(".md").read_text(encoding="utf-8").strip()


def _recovery(layout: RunLayout) -> str:
    """Step 06 (synthetic runs): every fill and readout against the planted importance."""
    rows = [
        [f"`{r['fill']}`", r["readout"], r["definition"], _number(r["spearman_rho"]),
         _number(r["within_group_rho"]), r["top_lobe"],
         DASH if r["significant_cells"] is None else r["significant_cells"]]
        for r in json.loads(layout.recovery.read_text(encoding="utf-8"))["by_fill"]
    ]  # fmt: skip
    header = ["fill", "readout", "importance", "Spearman ρ", "within-group ρ", "top lobe"]
    return _table([*header, "significant cells"], rows)


def _planted(layout: RunLayout) -> str:
    """The synthetic cohort's planted signal: mean d HU / d age per age group and lobe."""
    truth = pd.read_csv(layout.synthetic.expected_importance)
    scored = truth[truth["definition"] == IMPORTANCE_DEFINITIONS[0]]
    rows = []
    for group, part in scored.groupby("group", sort=False):
        part = part.set_index("lobe")
        top = part["importance"].idxmax() if part["importance"].max() > 0 else DASH
        rows.append([group, *(_number(part.at[lobe, "hu_per_month"], 3) for lobe in part.index)])
        rows[-1].append(top)
    lobes = list(dict.fromkeys(scored["lobe"]))
    return _table(["age group (months)", *lobes, f"top lobe ({IMPORTANCE_DEFINITIONS[0]})"], rows)


def _frame(table: pd.DataFrame) -> str:
    """A table of the views (index first; a multi-index's levels joined by " · ") as a pipe
    table."""
    label = lambda i: " · ".join(map(str, i)) if isinstance(i, tuple) else str(i)  # noqa: E731
    rows = [[f"`{label(i)}`", *row] for i, row in zip(table.index, table.to_numpy(), strict=True)]
    return _table([" · ".join(n or "" for n in table.index.names), *table.columns], rows)


def _scores(layout: RunLayout) -> pd.DataFrame:
    return pd.read_csv(layout.attribution_scores)


def _attribution(layout: RunLayout) -> str:
    """Step 07 (synthetic runs): each method against the planted truth (correctness, with the
    chance levels), best lobe ρ first."""
    scores = _scores(layout)
    verdict = pd.Series(dtype=str)
    if layout.attribution_sanity.exists():
        training = _read(layout.unoise_training) if layout.unoise_training.exists() else None
        verdict = attribution_tables.sanity_cells(
            sanity_verdict(pd.read_csv(layout.attribution_sanity)),
            attribution_tables.not_converged(training),
        )
    methods = list(dict.fromkeys(scores["method"]))
    return _frame(attribution_tables.summary_table(methods, scores, verdict))


def _faithfulness(layout: RunLayout) -> str:
    """Step 07 (synthetic runs with a model truth): each method against what the model uses."""
    return _frame(attribution_tables.faithfulness_table(_scores(layout)))


def _model_vs_ideal(layout: RunLayout) -> str:
    """Step 07: the model's s_k per age group beside the ideal observer's shares."""
    truth = _read(layout.model_truth)
    expected = pd.read_csv(layout.synthetic.expected_importance)
    fisher = expected[expected["definition"] == IMPORTANCE_DEFINITIONS[0]]
    edges = load_profile(layout.profile).age_group_edges if layout.profile.exists() else None
    edges = edges or PAPER_AGE_EDGES
    table = faithfulness.model_vs_ideal(truth, fisher, edges)
    rows = [
        [r.group, r.lobe, r.subjects, _number(r.model_s, 3), _number(r.model_share),
         _number(r.ideal_share)]
        for r in table.itertuples()
    ]  # fmt: skip
    header = ["age group", "cue", "subjects", "model s_k", "model share", "ideal share"]
    scores = faithfulness.model_vs_ideal_scores(table)
    note = (
        f"\n\nModel ↔ ideal observer: ρ {_number(scores['spearman_rho'])} over the lobe × group "
        f"cells, top lobe in {scores['top_lobe_matches']}/{scores['groups']} groups."
    )
    return _table(header, rows) + note


def _chain_rule(layout: RunLayout) -> str:
    """Step 07: the chain-rule (one backward pass) estimates against the interventions."""
    table = faithfulness.chain_rule_agreement(_read(layout.model_truth))
    rows = [
        [f"`{r.interventional}`", f"`{r.chain_rule}`", _number(r.pearson_r),
         _number(r.spearman_rho), _number(r.slope), r.pairs]
        for r in table.itertuples()
    ]  # fmt: skip
    header = ["interventional", "chain rule", "Pearson r", "Spearman ρ", "slope", "pairs"]
    return _table(header, rows)


def _unoise(layout: RunLayout) -> str:
    """Step 07: U-Noise's trainings (the candidates on fold 0, each fold), as notebook 07."""
    summary = attribution_tables.unoise_summary(_read(layout.unoise_training))
    digits = {"MAE clean": 2, "MAE noisy": 2, "noise SD (σ)": 2, "mask mean": 2, "mask SD": 2,
              "at floor": 3}  # fmt: skip
    for column, n in digits.items():
        summary[column] = [_number(float(v), n) for v in summary[column]]
    return _frame(summary.set_index("training"))


def _stacked(layout: RunLayout) -> str:
    """Step 08: the encoders and the cross-fitted stacked models (MAE and MSE in months)."""
    table = pd.read_csv(layout.stacking_table, keep_default_na=False, na_values=[""])
    rows = [
        [r.model, r.features, int(r.n), _number(r.mae), _number(r.mse, 1), _number(r.r2, 3),
         _number(r.mae_in_sample)]
        for r in table.itertuples()
    ]  # fmt: skip
    return _table(["model", "features", "n", "MAE", "MSE", "R²", "MAE in-sample"], rows)


def _f_tests(layout: RunLayout) -> str:
    """Step 08: nested F tests between the stacked models."""
    p = lambda v: "< 0.001" if v < 0.001 else f"{v:.3f}"  # noqa: E731
    rows = [
        [r.comparison, _number(r.f, 3), p(r.p)] for r in _read(layout.stacking_anova).itertuples()
    ]
    return _table(["nested F test", "F", "p"], rows)


def _stacking_seeds(layout: RunLayout) -> str:
    """Step 08: the stacking gain per seed of T and A and its mean with a 95 % t interval."""
    from ctbrainage.stats.stacking import gain_summary

    seeds = _read(layout.stacking_result("seeds"))
    rows = [
        [f"seed {r.seed}", _number(r.mae_T), _number(r.mae_TA), _number(r.gain_TA),
         f"{_number(r.mae_TT)} (with {r.other_T})", _number(r.gain_TT)]
        for r in seeds.itertuples()
    ]  # fmt: skip
    gains = gain_summary(seeds).set_index("gain")
    ci = lambda g: (f"{_number(gains.at[g, 'mean_months'])} [{_number(gains.at[g, 'ci_low'])}, "  # noqa: E731
                    f"{_number(gains.at[g, 'ci_high'])}]")  # fmt: skip
    rows.append([f"mean of {len(seeds)} seeds [95 % CI]", "", "", ci("TA"), "", ci("TT")])
    header = ["", "MAE T", "MAE TA", "gain T − TA", "MAE TT", "gain T − TT"]
    return _table(header, rows)


def _new_scans(layout: RunLayout) -> str:
    """Step 09: the run's bundle on new scans: accuracy and the prediction interval."""
    table = _read(RunLayout(layout.new_scans_dir).predictions)
    mae = lambda c: _number((table[c] - table["age_months"]).abs().mean())  # noqa: E731
    half = (table["interval_high"] - table["corrected_months"]).median()
    n, inside = len(table), int(table["age_in_interval"].sum())
    rows = [
        ["new scans", n],
        ["MAE of the ensemble's brain age (months)", mae("brain_age_months")],
        ["MAE of the bias-corrected brain age (months)", mae("corrected_months")],
        [f"{table['level'].iloc[0]:.0%} interval half-width (months)", _number(half, 1)],
        ["ages inside their interval", f"{inside} of {n} ({inside / n:.1%})"],
    ]
    return _table(["", "value"], rows)


def _robustness(layout: RunLayout) -> str:
    """Step 10: the condition table (means with 95 % CIs over seeds)."""
    return _frame(robustness_tables.condition_table(pd.read_csv(layout.robustness_table)))


def _robustness_phases(layout: RunLayout) -> str:
    """Step 10: agreement per condition and checkpoint (the multi-seed paper's Table 2)."""
    agreement = pd.read_csv(layout.robustness_result("agreement"))
    table = robustness_tables.phase_table(agreement, agreement["method"].iloc[0])
    rows = [[f"`{c}`", f"`{k}`", *r] for (c, k), r in zip(table.index, table.to_numpy(),
                                                         strict=True)]  # fmt: skip
    return _table(["condition", "checkpoint", *table.columns], rows)


def _robustness_table1(layout: RunLayout) -> str:
    """Step 10: Table 1 across seeds (share significant / share keeping the sign)."""
    table = robustness_tables.table1_share_table(_read(layout.robustness_result("table1_share")))
    rows = [[g, lobe, *r] for (g, lobe), r in zip(table.index, table.to_numpy(), strict=True)]
    return _table(["group", "lobe", *table.columns], rows)


def _robustness_truth(layout: RunLayout) -> str:
    """Step 10: Spearman's ρ of a seed's agreement with its faithfulness and correctness."""
    tests = _read(layout.robustness_result("agreement_tests"))
    rows = [[r.target, int(r.n), _number(r.rho), _number(r.p, 3)] for r in tests.itertuples()]
    return _table(["agreement against", "seeds", "Spearman ρ", "p"], rows)


def _robustness_tests(layout: RunLayout) -> str:
    """Step 10: Welch's tests between conditions across seeds."""
    table = robustness_tables.tests_table(_read(layout.robustness_result("tests")))
    rows = [
        [metric, factor, within, f"{r['n_off']:.0f} / {r['n_on']:.0f}",
         _number(r["difference"]), f"[{_number(r['ci_low'])}, {_number(r['ci_high'])}]",
         _number(r["p"], 3), _number(r["cohen_d"])]
        for (metric, factor, within), r in table.iterrows()
    ]  # fmt: skip
    header = ["metric", "on vs off", "within", "seeds", "on − off", "95 % CI", "p", "d"]
    return _table(header, rows)


def _multitask(name: str, view: Callable[[pd.DataFrame], pd.DataFrame]):
    """Step 11: a table of ``multitask_tables`` from the result ``name``."""
    return lambda layout: _frame(view(_read(layout.multitask_result(name))))


def _multitask_tests(families: tuple[str, ...]):
    def table(layout: RunLayout) -> str:
        tests = _read(layout.multitask_result("tests"))
        found = [f for f in dict.fromkeys(tests["family"]) if f.startswith(families)]
        frames = [multitask_tables.tests_table(tests, f).assign(family=f) for f in found]
        table = pd.concat(frames).set_index("family")
        return _frame(table[table["metric"].str.startswith("MAE")])  # the rest: the notebook

    return table


FINISHED = ("done", "skipped")  # skipped: up to date, with the seconds of the run that made it


def _wall_time(layout: RunLayout) -> str:
    """The run's steps and their wall seconds as ``manifest.json`` last recorded them (the cohort
    generation and the virtual environment come before ``run_all.py`` and are not in it)."""
    steps = json.loads(layout.manifest.read_text(encoding="utf-8"))["steps"]
    done = {n: s["duration_s"] for n, s in sorted(steps.items()) if s["status"] in FINISHED}
    default = sum(seconds for name, seconds in done.items() if int(name[:2]) <= 7)
    rows = [[name, _number(seconds, 1)] for name, seconds in done.items()]
    total = f"{_number(default, 1)} ({default / 60:.1f} min)"
    rows.append(["steps 01-07 (`run_all.py` by default)", total])
    return _table(["step", "seconds"], rows)


# name → (the step that writes the source, the source file, the table)
BLOCKS: dict[str, tuple[int, Callable[[RunLayout], Path], Callable[[RunLayout], str]]] = {
    "planted": (1, lambda run: run.synthetic.expected_importance, _planted),
    "metrics": (4, lambda run: run.metrics, _metrics),
    "baselines": (4, lambda run: run.baselines, _baselines),
    "input-cues": (1, lambda run: run.preprocess_table, _input_cues),
    "leak": (1, lambda run: run.maturation_leak, _leak),
    "perturbation": (5, _main_table, _perturbation),
    "table1": (6, lambda run: run.table1(".md"), _table1),
    "recovery": (6, lambda run: run.recovery, _recovery),
    "attribution": (7, lambda run: run.attribution_scores, _attribution),
    "faithfulness": (7, lambda run: run.model_truth, _faithfulness),
    "model-vs-ideal": (7, lambda run: run.model_truth, _model_vs_ideal),
    "chain-rule": (7, lambda run: run.model_truth, _chain_rule),
    "unoise": (7, lambda run: run.unoise_training, _unoise),
    "stacked": (8, lambda run: run.stacking_table, _stacked),
    "f-tests": (8, lambda run: run.stacking_anova, _f_tests),
    "stacking-seeds": (8, lambda run: run.stacking_result("seeds"), _stacking_seeds),
    "robustness": (10, lambda run: run.robustness_table, _robustness),
    "robustness-phases": (10, lambda run: run.robustness_result("agreement"), _robustness_phases),
    "robustness-table1": (
        10,
        lambda run: run.robustness_result("table1_share"),
        _robustness_table1,
    ),
    "robustness-truth": (
        10,
        lambda run: run.robustness_result("agreement_tests"),
        _robustness_truth,
    ),
    "robustness-tests": (10, lambda run: run.robustness_result("tests"), _robustness_tests),
    "multitask": (
        11,
        lambda run: run.multitask_result("summary"),
        _multitask("summary", multitask_tables.summary_table),
    ),
    "multitask-ablation": (
        11,
        lambda run: run.multitask_result("summary"),
        _multitask("summary", lambda t: multitask_tables.summary_table(t, "ablation")),
    ),
    "multitask-tests": (
        11,
        lambda run: run.multitask_result("tests"),
        _multitask_tests(("conditions", "targets", "ablation")),
    ),
    "multitask-site": (
        11,
        lambda run: run.multitask_result("site"),
        _multitask("site", multitask_tables.site_table),
    ),
    "multitask-gradcam": (
        11,
        lambda run: run.multitask_result("gradcam"),
        _multitask("gradcam", multitask_tables.gradcam_table),
    ),
    "multitask-delayed": (
        11,
        lambda run: run.multitask_result("delayed_summary"),
        _multitask("delayed_summary", multitask_tables.delayed_table),
    ),
    "new-scans": (9, lambda run: RunLayout(run.new_scans_dir).predictions, _new_scans),
    "wall-time": (1, lambda run: run.manifest, _wall_time),
}


def render(name: str, run_dir: Path) -> str:
    """The body of block ``name`` (``NAME`` or ``NAME@RUN``), from the run's files."""
    block, _, other = name.partition("@")
    if block not in BLOCKS:
        raise ValueError(f"unknown results block {name!r}; known: {', '.join(BLOCKS)}")
    layout = RunLayout(run_dir.parent / other if other else run_dir)
    step, source, table = BLOCKS[block]
    if not source(layout).exists():
        return (
            f"(run step {step:02d}{f' of the `{other}` run' if other else ''} to fill this table)"
        )
    note = f"*From `{source(layout).name}` of the `{layout.root.name}` run, by `make docs`.*"
    return table(layout) + "\n\n" + note


def fill_text(text: str, run_dir: str | Path) -> str:
    """``text`` with every results block filled from ``run_dir``."""
    if len(OPENING.findall(text)) != len(BLOCK.findall(text)):
        raise ValueError("a results block not closed by <!-- /results:NAME --> or indented")
    fill = lambda m: m["open"] + render(m["name"], Path(run_dir)) + "\n" + m["close"]  # noqa: E731
    return BLOCK.sub(fill, text)


def fill_docs(run_dir: str | Path, docs: str | Path = "docs") -> list[Path]:
    """Fill every page's blocks from ``run_dir``; returns the pages that changed."""
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"no run directory {run_dir}")
    readme = Path(docs).resolve().parent / "README.md"  # the README beside docs/ too
    changed = []
    for page in sorted(Path(docs).glob("*.md")) + ([readme] if readme.exists() else []):
        text = page.read_text(encoding="utf-8")
        try:
            filled = fill_text(text, run_dir)
        except ValueError as err:
            raise ValueError(f"{page}: {err}") from None
        if filled != text:
            atomic_write_text(page, filled)
            changed.append(page)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ctbrainage.views.docs",
        description="Fill the results blocks of docs/*.md and README.md from a run's files.",
    )
    parser.add_argument("run_dir", type=Path, help="a run directory, e.g. runs/demo")
    parser.add_argument("--docs", type=Path, default=Path("docs"), help="the docs folder")
    args = parser.parse_args(argv)
    try:
        changed = fill_docs(args.run_dir, args.docs)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(changed)} page(s) filled from {args.run_dir}", *changed, sep="\n  ")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
