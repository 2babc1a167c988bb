"""Linear stacking of encoders' out-of-fold predictions (step 08; Jomsky et al. 2025, Table 1):
cross-fitted stacked predictions, their metrics, nested F tests and coefficients."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ctbrainage.stats.evaluate import regression_metrics

# Jomsky et al. 2025, Table 1: linear models on the encoders' predictions of T (structural image)
# and A (synthesised map), with sex; TT2 stacks two seeds of T: the control for a gain that comes
# from ensembling rather than from the second channel.
STACKED_MODELS = {
    "T": ("T",),
    "A": ("A",),
    "TA": ("T", "A"),
    "TAS": ("T", "A", "male"),
    "TT2": ("T", "T2"),
}
NESTED_PAIRS = (("T", "TA"), ("A", "TA"), ("TA", "TAS"), ("T", "TT2"))
ENCODERS = ("T", "A", "T2")


def _formula(features) -> str:
    return "age_months ~ " + " + ".join(features)


def fit_stack(table: pd.DataFrame, features):
    """Ordinary least squares of age on ``features`` (statsmodels), fitted on ``table``."""
    import statsmodels.formula.api as smf

    return smf.ols(_formula(features), data=table).fit()


def stacking_design(predictions: pd.DataFrame) -> pd.DataFrame:
    """The encoders' out-of-fold predictions with ``male`` (sex M = 1, F = 0, as in the paper)."""
    sex = predictions["sex"].astype(str).str.upper()
    if not sex.isin(["F", "M"]).all():
        raise ValueError("stacking with sex needs F or M for every subject")
    return predictions.assign(male=(sex == "M").astype(float))


def stack_out_of_fold(design: pd.DataFrame, models=STACKED_MODELS) -> pd.DataFrame:
    """Each stacked model's prediction of every subject by a regression fitted on the other
    folds' out-of-fold predictions only (cross-fitted: no subject's age is used to predict it).
    Columns: subject_id, fold, age_months, then one per model."""
    out = design[["subject_id", "fold", "age_months"]].copy()
    for name, features in models.items():
        column = pd.Series(np.nan, index=design.index)
        for fold in design["fold"].unique():
            test = design["fold"] == fold
            column[test] = fit_stack(design[~test], features).predict(design[test])
        out[name] = column
    return out


def stacking_table(design: pd.DataFrame, stacked: pd.DataFrame, models=STACKED_MODELS):
    """MAE, MSE and R² of each encoder's raw predictions and of each stacked model's
    cross-fitted predictions, with the stacked model's MAE in-sample (fitted and evaluated on
    the same predictions, as the paper did: the difference is that leak)."""
    rows = []
    age = design["age_months"]
    for name in ENCODERS:
        m = regression_metrics(age, design[name])
        rows.append(
            {
                "model": f"{name} encoder",
                "features": "–",
                "n": m["n"],
                "mae": m["mae"],
                "mse": m["rmse"] ** 2,
                "r2": m["r2"],
                "mae_in_sample": np.nan,
            }
        )
    for name, features in models.items():
        m = regression_metrics(age, stacked[name])
        in_sample = fit_stack(design, features).fittedvalues
        rows.append(
            {
                "model": name,
                "features": " + ".join(features),
                "n": m["n"],
                "mae": m["mae"],
                "mse": m["rmse"] ** 2,
                "r2": m["r2"],
                "mae_in_sample": float(np.mean(np.abs(in_sample - age))),
            }
        )
    return pd.DataFrame(rows)


def stacking_anova(design: pd.DataFrame, pairs=NESTED_PAIRS, models=STACKED_MODELS):
    """F tests between nested stacked models fitted on all out-of-fold predictions
    (``statsmodels.stats.anova.anova_lm``): does the larger model explain more?"""
    from statsmodels.stats.anova import anova_lm

    rows = []
    for small, large in pairs:
        result = anova_lm(fit_stack(design, models[small]), fit_stack(design, models[large]))
        last = result.iloc[1]
        rows.append(
            {
                "comparison": f"{small} vs {large}",
                "df_diff": int(last["df_diff"]),
                "ss_diff": last["ss_diff"],
                "f": last["F"],
                "p": last["Pr(>F)"],
            }
        )
    return pd.DataFrame(rows)


def stacking_coefficients(design: pd.DataFrame, models=STACKED_MODELS) -> pd.DataFrame:
    """Every stacked model's coefficients on all out-of-fold predictions: estimate, standard
    error, t, p and 95 % CI."""
    parts = []
    for name, features in models.items():
        fit = fit_stack(design, features)
        ci = fit.conf_int()
        parts.append(
            pd.DataFrame(
                {
                    "model": name,
                    "term": fit.params.index,
                    "coef": fit.params.to_numpy(),
                    "se": fit.bse.to_numpy(),
                    "t": fit.tvalues.to_numpy(),
                    "p": fit.pvalues.to_numpy(),
                    "ci_low": ci[0].to_numpy(),
                    "ci_high": ci[1].to_numpy(),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def mae_by(stacked: pd.DataFrame, groups: pd.Series, columns) -> pd.DataFrame:
    """MAE of each of ``columns`` per value of ``groups`` (the paper's Tables 2 and 3), with n."""
    error = stacked[list(columns)].sub(stacked["age_months"], axis=0).abs()
    table = error.groupby(groups.to_numpy(), observed=False).mean()
    table.insert(0, "n", groups.value_counts().reindex(table.index).fillna(0).astype(int))
    return table


def _seed_name(encoder: str, seed: int) -> str:
    return encoder if seed == 0 else f"{encoder}@{seed}"


def seed_gains(design: pd.DataFrame, seeds: int) -> pd.DataFrame:
    """The stacking gain once per seed of the encoders (``design``: T, A, T2 and T@i, A@i):
    per seed s the cross-fitted MAE of T_s alone, of A_s, of T_s + A_s and of T_s with another
    seed of T (the next seed; T2 when there is one seed), and the gains T − TA and T − TT."""
    rows = []
    age = design["age_months"]
    for s in range(seeds):
        other = _seed_name("T", (s + 1) % seeds) if seeds > 1 else "T2"
        mine = design.assign(
            T=design[_seed_name("T", s)], A=design[_seed_name("A", s)], T2=design[other]
        )
        models = {k: STACKED_MODELS[k] for k in ("T", "A", "TA", "TT2")}
        stacked = stack_out_of_fold(mine, models)
        mae = {k: float((stacked[k] - age).abs().mean()) for k in models}
        rows.append(
            {"seed": s, "other_T": other, "mae_T": mae["T"], "mae_A": mae["A"],
             "mae_TA": mae["TA"], "mae_TT": mae["TT2"], "gain_TA": mae["T"] - mae["TA"],
             "gain_TT": mae["T"] - mae["TT2"]}
        )  # fmt: skip
    return pd.DataFrame(rows)


def gain_summary(seeds: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Mean of each gain over seeds with its t interval (NaN with one seed)."""
    from scipy import stats

    rows = []
    for column in ("gain_TA", "gain_TT"):
        values = seeds[column].to_numpy(float)
        n, mean = len(values), float(values.mean())
        half = np.nan
        if n > 1:
            half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * values.std(ddof=1) / np.sqrt(n))
        rows.append({"gain": column.removeprefix("gain_"), "seeds": n, "mean_months": mean,
                     "ci_low": mean - half, "ci_high": mean + half})  # fmt: skip
    return pd.DataFrame(rows)
