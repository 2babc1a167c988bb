"""The step contract: what a step reads, what it writes, when it reruns, which subjects it uses.

A step module (``sNN_name.py``) declares a :class:`Step` (its name, the profile settings it reads
and the version of its code), the files it reads (``inputs``) and writes (``outputs``), and one
entry function ``run(profile, ...)`` that the notebook calls. The step's record (one freshness
mechanism, :mod:`ctbrainage.core.freshness`) holds its settings, code version and input
fingerprints:
a step whose record matches and whose outputs exist is not computed again, and a change
anywhere upstream changes the inputs of everything downstream.

Subjects flow from step to step: a step works on the validated cohort less everyone an earlier
step excluded, and writes its own exclusions (step and reason) into the one ``exclusions.csv``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd

from ctbrainage.core.atomic import atomic_write_text
from ctbrainage.core.config import Profile
from ctbrainage.core.freshness import Record
from ctbrainage.core.layout import RunLayout
from ctbrainage.core.workers import reason, transient

EXCLUSION_COLUMNS = ["subject_id", "step", "reason"]


@dataclasses.dataclass(frozen=True)
class Step:
    """A pipeline step: ``name`` (``NN_name``, the notebook's), the dotted profile settings it
    reads, and the version of its code (bump it when a change alters the outputs)."""

    name: str
    settings: tuple[str, ...]
    version: int

    @property
    def number(self) -> int:
        return int(self.name[:2])

    def settings_of(self, profile: Profile, **extra: Any) -> dict[str, Any]:
        """The values of the settings this step reads (and ``extra`` that also decide its
        outputs, such as the subjects it works on)."""
        tree = profile.to_dict()
        values = {}
        for key in self.settings:
            value: Any = tree
            for part in key.split("."):
                value = value[part]
            values[key] = value
        return {**values, **extra}

    def record(self, layout: RunLayout, part: str = "") -> Record:
        """The step's record (``part``: one of several, e.g. a fold)."""
        return Record(layout.record(self.name + part), layout.root)

    def subject_record(self, layout: RunLayout, subject_id: str, part: str = "") -> Record:
        """The record of one subject's work inside the step (``part``: e.g. a fill)."""
        return Record(layout.subject_record(self.name + part, subject_id), layout.root)


def up_to_date(record: Record, settings: Any, version: str, inputs, outputs) -> bool:
    """The record is fresh (:meth:`Record.fresh`) and no subject failed in it for a reason that
    may pass (a full disk, a killed worker): the step is then run again to retry them."""
    done = record.fresh(settings, version, inputs, outputs)
    return done is not None and not done.get("retry")


def failures(errors: dict[str, Exception]) -> tuple[dict[str, str], list[str]]:
    """Subject → reason of the exceptions of a step's subjects, and the subjects to retry."""
    return (
        {sid: reason(sid, err) for sid, err in errors.items()},
        [sid for sid, err in errors.items() if transient(err)],
    )


def read_exclusions(layout: RunLayout) -> pd.DataFrame:
    """``exclusions.csv`` (empty with its columns when there is none)."""
    if not layout.exclusions.exists():
        return pd.DataFrame(columns=EXCLUSION_COLUMNS)
    return pd.read_csv(layout.exclusions, dtype=str, keep_default_na=False)


def kept_subjects(layout: RunLayout, step: Step) -> list[str]:
    """The validated cohort's subjects that no step before ``step`` excluded, in cohort order."""
    if not layout.cohort.exists():
        raise FileNotFoundError(f"no validated cohort {layout.cohort}: run step 01 first")
    cohort = pd.read_csv(layout.cohort, dtype={"subject_id": str})
    excluded = read_exclusions(layout)
    earlier = _numbers(excluded) < step.number
    gone = set(excluded.loc[earlier, "subject_id"])
    return [sid for sid in cohort["subject_id"] if sid not in gone]


def write_exclusions(
    layout: RunLayout, step: Step, failures: pd.DataFrame | dict[str, str] | None
) -> pd.DataFrame:
    """Replace ``step``'s rows of ``exclusions.csv`` by ``failures`` (subject_id → reason, or a
    table with those columns and any others); later steps' rows are dropped for the subjects
    excluded now, so every subject is listed once. Returns this step's rows."""
    if isinstance(failures, dict) or failures is None:
        failures = pd.DataFrame(
            {"subject_id": list(failures or {}), "reason": list((failures or {}).values())}
        )
    mine = failures.assign(step=step.name)
    mine = mine[EXCLUSION_COLUMNS + [c for c in mine.columns if c not in EXCLUSION_COLUMNS]]
    old = read_exclusions(layout)
    numbers = _numbers(old)
    kept = old[
        (numbers < step.number)
        | ((numbers > step.number) & ~old["subject_id"].isin(mine["subject_id"]))
    ]
    table = pd.concat([kept, mine.astype(str)], ignore_index=True)
    table = table.sort_values("step", kind="stable", ignore_index=True)
    atomic_write_text(layout.exclusions, table.to_csv(index=False))
    return mine.reset_index(drop=True)


def _numbers(exclusions: pd.DataFrame) -> pd.Series:
    """The step number of each exclusion (``02_lobes`` → 2)."""
    return exclusions["step"].map(lambda name: int(str(name)[:2]))


def write_table(path: Path, table: pd.DataFrame, **to_csv: Any) -> None:
    """A table as CSV, atomically."""
    atomic_write_text(path, table.to_csv(index=False, **to_csv))
