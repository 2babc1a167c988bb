"""Randomisation checks of attribution methods (Adebayo et al. 2018): a method whose maps stay
similar when the model's weights are re-initialised (cascading, top stage first) or when it was
trained on shuffled ages does not explain what the model learned. Models and tensors in,
similarities and verdicts out; step 07 chooses the subjects and trains the models.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Sequence

import numpy as np
import pandas as pd
import torch

from ctbrainage.core.workers import progress_bar
from ctbrainage.synth.scoring import spearman_rho

SURVIVES = 0.5  # a map this similar (Spearman) to a randomised model's fails the check
RANDOM_LABELS = "random_labels"  # the model trained on shuffled ages
COLUMNS = ["method", "model", "step", "voxel_rho", "lobe_rho", "survives"]
# (voxel maps [n, X, Y, Z] or None, lobe importances [n, lobes]) of one method and model
Values = tuple[torch.Tensor | None, np.ndarray]


def randomised_cascade(model: torch.nn.Module, seed: int):
    """Cascading randomisation: yields (stage, model) with the weights of the top stage, then
    the top two, … re-initialised (copies; ``model`` is left as it is)."""
    current = copy.deepcopy(model).eval()
    stages = [
        n for n, child in current.named_children() if next(child.parameters(), None) is not None
    ]
    for i, name in enumerate(reversed(stages)):
        torch.manual_seed(seed + i)
        for module in getattr(current, name).modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            if hasattr(module, "reset_running_stats"):
                module.reset_running_stats()
        yield name, copy.deepcopy(current).eval()


def similarity(reference: Values, other: Values, brains: Sequence[np.ndarray]) -> tuple:
    """(mean over subjects of the Spearman ρ of their |voxel map| inside the brain (``brains``,
    one mask per subject), Spearman ρ of the lobe importances over subjects × lobes); the first
    is NaN for a lobe method. NaN where a map or the importances are constant."""
    voxel = np.nan
    if reference[0] is not None:
        per_subject = []
        for i, brain in enumerate(brains):
            inside = brain > 0
            a, b = reference[0][i].abs().numpy()[inside], other[0][i].abs().numpy()[inside]
            per_subject.append(spearman_rho(a, b))
        voxel = float(np.nanmean(per_subject)) if np.isfinite(per_subject).any() else np.nan
    return voxel, spearman_rho(reference[1].ravel(), other[1].ravel())


def survives(voxel_rho: float, lobe_rho: float, threshold: float = SURVIVES) -> bool:
    """Whether a method's output survives a randomisation: its voxel maps' similarity (a lobe
    method's: its lobe importances') reaches ``threshold``. An undefined similarity (a constant
    map) survives: it does not show that the method depends on the model."""
    rho = lobe_rho if np.isnan(voxel_rho) else voxel_rho
    return bool(np.isnan(rho) or rho >= threshold)


def checks(
    trained: torch.nn.Module,
    cascade: Sequence[tuple[str, torch.nn.Module]],
    random_labels: torch.nn.Module,
    methods: Sequence[str],
    values: Callable[[torch.nn.Module, str], Values],
    brains: Sequence[np.ndarray],
    final_only: Collection[str] = (),
    progress: bool = True,
) -> list[dict]:
    """Each method's :func:`similarity` between its ``values(model, method)`` from the
    ``trained`` model and from each ``cascade`` stage (:func:`randomised_cascade`; step 1, 2,
    …) and the ``random_labels`` model (step 0); methods of ``final_only`` against the last
    stage and the random-label model only. Rows of :data:`COLUMNS` but ``survives``
    (:func:`table` judges)."""
    models = [*cascade, (RANDOM_LABELS, random_labels)]
    bar = progress_bar(total=len(methods) * (len(models) + 1), desc="sanity", progress=progress)
    reference = {}
    for method in methods:
        reference[method] = values(trained, method)
        bar.update()
    rows = []
    for step, (name, model) in enumerate(models, start=1):
        for method in methods:
            bar.update()
            if method in final_only and name not in (cascade[-1][0], RANDOM_LABELS):
                continue
            voxel, lobe = similarity(reference[method], values(model, method), brains)
            step_of = 0 if name == RANDOM_LABELS else step
            rows.append(
                {"method": method, "model": name, "step": step_of, "voxel_rho": voxel,
                 "lobe_rho": lobe}
            )  # fmt: skip
    bar.close()
    return rows


def table(rows: Sequence[dict]) -> pd.DataFrame:
    """The rows of :func:`checks` as a table of :data:`COLUMNS`, each judged by
    :func:`survives` (also rows stored with an earlier judgement)."""
    frame = pd.DataFrame(rows, columns=COLUMNS)
    judged = [survives(row.voxel_rho, row.lobe_rho) for row in frame.itertuples()]
    return frame.assign(survives=pd.Series(judged, index=frame.index, dtype=bool))


def sanity_verdict(sanity: pd.DataFrame) -> pd.DataFrame:
    """Per method: whether its maps survive full randomisation or label randomisation (then the
    method fails the check: its maps do not depend on what the model learned), and the
    similarities themselves: ``rho_randomised`` after the whole cascade, ``rho_random_labels``
    for the label-randomised model (voxel maps' ρ; a lobe method's lobe ρ)."""
    shuffled = sanity["model"] == RANDOM_LABELS
    last = sanity["method"].map(sanity[~shuffled].groupby("method")["step"].max())
    final = sanity[(sanity["step"] == last) | shuffled]
    rho = final["voxel_rho"].where(final["voxel_rho"].notna(), final["lobe_rho"])
    final = final.assign(rho=rho, labels=final["model"] == RANDOM_LABELS)
    verdict = final.groupby("method", sort=False)["survives"].any()
    table = verdict.map({True: "fails", False: "passes"}).rename("sanity").reset_index()
    similarity = final.pivot_table(index="method", columns="labels", values="rho", dropna=False)
    for labels, column in ((False, "rho_randomised"), (True, "rho_random_labels")):
        values = similarity[labels] if labels in similarity else pd.Series(dtype=float)
        table[column] = table["method"].map(values).astype(float)
    return table
