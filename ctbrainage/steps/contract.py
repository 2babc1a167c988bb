"""The step contract, in code: what a step reads, what it writes, when it reruns, which subjects
it uses, and what happens when something fails.

A step module declares one :class:`Step` — its name (``NN_name``, the notebook's), the profile
settings it reads (recorded: a change makes it rerun), the runtime settings it reads (worker
counts: never change a result, not recorded), its code version and the steps whose results it
reads — and registers the functions that list its ``inputs`` and ``outputs`` (and, where the
subjects or a part such as a fold also decide the result, ``recorded``). Its entry ``run`` hands
a ``compute`` to :meth:`Step.run`, which owns the rest:

- **the view**: ``compute`` and the registered functions see a :class:`Settings` view of the
  profile limited to the declared settings; reading any other raises
  :class:`UndeclaredSettingError`, so the freshness record cannot miss a setting;
- **freshness** (:meth:`Step.is_fresh`): the record (:mod:`ctbrainage.core.freshness`) matches
  today's settings, version and input fingerprints, the outputs exist, and no subject waits
  for a retry; a required step that is not fresh stops the step with the command to run;
- **exclusions and the error policy** (:mod:`ctbrainage.core.workers`): a ``ValueError`` of one
  subject is a problem of its data and excludes it with its reason; a transient failure (a full
  disk, a killed worker, a timeout) excludes it for now and marks it for a retry; anything else
  is a bug and fails the step with its traceback, never recorded;
- **the record**, written after every output.

Subjects flow from step to step: a step works on the validated cohort less everyone an earlier
step excluded, and writes its own exclusions (step and reason) into the one ``exclusions.csv``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ctbrainage.core.atomic import atomic_write_text
from ctbrainage.core.config import Profile
from ctbrainage.core.freshness import Record
from ctbrainage.core.layout import RunLayout
from ctbrainage.core.workers import failures

EXCLUSION_COLUMNS = ["subject_id", "step", "reason"]
# the settings that say where a run lies, not what it computes: readable by every step
LOCATION = ("name", "run_dir", "run_path")


class UndeclaredSettingError(LookupError):
    """A step read a profile setting it does not declare (a bug of the step)."""


class StaleInputError(FileNotFoundError):
    """A step needs the results of an earlier step that are missing or out of date."""


class Settings:
    """A profile (or one of its sections) limited to the settings a step declares: reading a
    declared setting (or anything inside a declared section) returns its value; reading any
    other raises :class:`UndeclaredSettingError` naming the step and the setting."""

    def __init__(self, value: Any, declared: tuple[str, ...], step: str, prefix: str = ""):
        self._value, self._declared, self._step, self._prefix = value, declared, step, prefix

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        key = self._prefix + name
        if (not self._prefix and name in LOCATION) or any(
            key == d or key.startswith(d + ".") for d in self._declared
        ):
            return getattr(self._value, name)
        if any(d.startswith(key + ".") for d in self._declared):
            return Settings(getattr(self._value, name), self._declared, self._step, key + ".")
        raise UndeclaredSettingError(
            f"step {self._step} reads the setting {key!r}, which it does not declare "
            f"(declared: {', '.join(self._declared) or 'none'})"
        )

    def __repr__(self) -> str:
        return f"Settings({self._step}: {', '.join(self._declared)})"


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a step's ``compute`` did: the exceptions of the subjects that failed, the rows it
    excluded by itself (subject_id, reason and any other columns), a summary to record, and
    the step's result, if it hands one back. ``subjects`` False: a step that excludes nobody
    (its exclusions are left alone). ``cohort``: columns (by subject_id) that the rows of the
    failed subjects keep, e.g. the manifest's age, sex, site and image."""

    failures: Mapping[str, BaseException] = dataclasses.field(default_factory=dict)
    excluded: pd.DataFrame | None = None
    cohort: pd.DataFrame | None = None
    summary: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    subjects: bool = True
    result: Any = None


# ---- the step ---------------------------------------------------------------------------------
Lister = Callable[..., list[Path]]


class Step:
    """A pipeline step: see the module docstring. ``parts``: the parts that are fresh one by one
    (step 03's folds), given the view; the step is fresh when every part is. A part's record is
    ``records/<name>_<part_label><part>.json``."""

    def __init__(
        self,
        name: str,
        *,
        settings: tuple[str, ...],
        version: str,
        runtime: tuple[str, ...] = (),
        requires: tuple[Step, ...] = (),
        parts: Callable[[Settings], Iterable[Any]] | None = None,
        part_label: str = "part",
    ) -> None:
        if not isinstance(version, str):
            raise TypeError(f"step {name}: version must be a string, got {version!r}")
        self.name, self.settings, self.version = name, tuple(settings), version
        self.runtime, self.requires, self.parts = tuple(runtime), tuple(requires), parts
        self.part_label = part_label
        self._inputs: Lister = lambda cfg, *part: []
        self._outputs: Lister = lambda cfg, *part: []
        self._recorded: Callable[..., dict] = lambda cfg, *part: {}

    def __repr__(self) -> str:
        return f"Step({self.name})"

    @property
    def number(self) -> int:
        return int(self.name[:2])

    # registration (decorators: the module keeps the function under its own name)
    def inputs(self, func: Lister) -> Lister:
        """Register ``func(cfg[, part])`` → the files the step reads."""
        self._inputs = func
        return func

    def outputs(self, func: Lister) -> Lister:
        """Register ``func(cfg[, part])`` → the files the step writes."""
        self._outputs = func
        return func

    def recorded(self, func: Callable[..., dict]) -> Callable[..., dict]:
        """Register ``func(cfg[, part])`` → values besides the settings that decide the
        result (the subjects it works on, the fold)."""
        self._recorded = func
        return func

    # the view and the record
    def view(self, profile: Profile | Settings) -> Settings:
        """``profile`` limited to this step's settings and runtime settings."""
        if isinstance(profile, Settings):
            profile = profile._value
        return Settings(profile, self.settings + self.runtime, self.name)

    def settings_of(self, profile: Profile | Settings, **extra: Any) -> dict[str, Any]:
        """The values of the settings this step declares (and ``extra`` that also decide its
        outputs, such as the subjects it works on)."""
        cfg = self.view(profile)
        values = {}
        for key in self.settings:
            value: Any = cfg._value
            for part in key.split("."):
                value = getattr(value, part)
            values[key] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        return {**values, **extra}

    def record(self, layout: RunLayout, part: str = "") -> Record:
        """The step's record (``part``: one of several, e.g. a fold)."""
        return Record(layout.record(self.name + part), layout.root)

    def subject_record(self, layout: RunLayout, subject_id: str, part: str = "") -> Record:
        """The record of one subject's work inside the step (``part``: e.g. a fill)."""
        return Record(layout.subject_record(self.name + part, subject_id), layout.root)

    def _state(self, cfg: Settings, part: Any):
        args = () if part is None else (part,)
        suffix = "" if part is None else f"_{self.part_label}{part}"
        settings = self.settings_of(cfg, **self._recorded(cfg, *args))
        record = self.record(RunLayout(cfg.run_path), suffix)
        return record, settings, self._inputs(cfg, *args), self._outputs(cfg, *args)

    def _part_fresh(self, cfg: Settings, part: Any) -> bool:
        record, settings, inputs, outputs = self._state(cfg, part)
        return up_to_date(record, settings, self.version, inputs, outputs)

    def is_fresh(self, profile: Profile | Settings, part: Any = None) -> bool:
        """True when the step (or its ``part``) would compute nothing: its record matches
        today's settings, code and inputs, its outputs exist and no subject waits for a retry.
        A missing or unreadable upstream file makes it not fresh; any other error is raised."""
        cfg = self.view(profile)
        try:
            if part is None and self.parts is not None:
                return all(self._part_fresh(cfg, k) for k in self.parts(cfg))
            return self._part_fresh(cfg, part)
        except (FileNotFoundError, pd.errors.EmptyDataError, pd.errors.ParserError):
            return False

    def check_required(self, profile: Profile | Settings) -> None:
        """Raise :class:`StaleInputError` naming every required step that is not fresh."""
        full = profile._value if isinstance(profile, Settings) else profile
        stale = [step.name for step in self.requires if not step.is_fresh(full)]
        if stale:
            numbers = ",".join(str(int(name[:2])) for name in stale)
            raise StaleInputError(
                f"step {self.name} needs the results of {', '.join(stale)}, which are missing "
                f"or out of date: run them first (python run_all.py --from {numbers[0]} "
                f"--to {self.number - 1})"
            )

    def check_outputs(self, layout: RunLayout, outputs: Iterable[Path]) -> None:
        """Raise ``FileNotFoundError`` naming the first missing output and the command that makes
        it (an on-request step's ``load`` before the step has run)."""
        missing = [p for p in outputs if not p.exists()]
        if missing:
            raise FileNotFoundError(
                f"step {self.number:02d} has not run for {layout.root.name}: {missing[0].name} is "
                f"missing (python run_all.py --from {self.number} --to {self.number})"
            )

    def run(
        self,
        profile: Profile | Settings,
        compute: Callable[[Settings], Outcome | None],
        part: Any = None,
        always: bool = False,
    ) -> Outcome | None:
        """Compute the step (or its ``part``) unless it is fresh (``always``: cheap steps that
        recompute on every call), then write its exclusions and its record. Returns what
        ``compute`` did, or None when the step was fresh."""
        self.check_required(profile)
        cfg = self.view(profile)
        record, settings, inputs, outputs = self._state(cfg, part)
        if not always and up_to_date(record, settings, self.version, inputs, outputs):
            return None
        prints = record.fingerprints(inputs)
        outcome = compute(cfg) or Outcome(subjects=False)
        reasons, retry = failures(outcome.failures)
        summary = dict(outcome.summary)
        if outcome.subjects:
            failed = pd.DataFrame({"subject_id": list(reasons), "reason": list(reasons.values())})
            if outcome.cohort is not None and len(failed):
                failed = failed.merge(outcome.cohort, on="subject_id", how="left")
            given = [outcome.excluded] if outcome.excluded is not None else []
            write_exclusions(RunLayout(cfg.run_path), self, pd.concat([*given, failed]))
            summary["retry"] = retry
        record.write(settings, self.version, prints, summary)
        return outcome


def up_to_date(record: Record, settings: Any, version: str, inputs, outputs) -> bool:
    """The record is fresh (:meth:`Record.fresh`) and no subject in it waits for a retry (a full
    disk, a killed worker): the step is then run again to retry them."""
    done = record.fresh(settings, version, inputs, outputs)
    return done is not None and not done.get("retry")


@dataclasses.dataclass(frozen=True)
class StaleUnit:
    """A unit of a unit-wise step (10, 11: one training each) to run: its record, the settings
    to record and its input files."""

    unit: Any
    record: Record
    settings: dict
    inputs: list[Path]


def stale_units(units, check, inputs, outputs, version: str) -> list[StaleUnit]:
    """The ``units`` whose record is not up to date: ``check(unit)`` gives its record and
    settings, ``inputs(unit)`` and ``outputs(unit)`` its files."""
    found = []
    for unit in units:
        record, settings = check(unit)
        files = inputs(unit)
        if not up_to_date(record, settings, version, files, outputs(unit)):
            found.append(StaleUnit(unit, record, settings, files))
    return found


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
