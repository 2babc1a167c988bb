"""The planted maturation schedule: white-matter attenuation of each lobe versus age.

Each lobe's white matter rises from its unmyelinated to its mature attenuation along a logistic
curve in age (the myelination phase) plus, optionally, a slower later phase. Presets:

- ``physiological`` (default) runs posterior → anterior (occipital, parietal, frontal, temporal).
  Myelination phase (70 % of the rise): the ages at which it is ~50 % / ~90 % complete on CT,
  extrapolated from MRI myelination timelines (Barkovich et al. 1988, Radiology 166:173; Deoni et
  al. 2011, J Neurosci 31:784), are occipital 5/13, parietal 7/16, frontal 10/20, temporal 11/25
  months. Later phase (30 %): white-matter myelin content and density keep rising slowly after two
  years, in the same posterior → anterior order (myelin water fraction from 3 to 60 months: Deoni
  et al. 2012, NeuroImage 63:1038; review: Dubois et al. 2014, Neuroscience 276:48); modelled
  as a logistic with midpoints 30 / 34 / 38 / 42 months and an 8-month width, so that every
  age group of 0-47 months holds a lobe-specific signal (docs/synthetic-cohort.md).
- ``staggered``: a benchmark with one lobe maturing in each age group (midpoint at the group's
  centre, width one fifth of the group), posterior → anterior by default.

Attenuations: unmyelinated white matter 15-22 HU at birth, mature 29-32 HU (reference CT facts in
docs/synthetic-cohort.md).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ctbrainage.core.cohort import window_label
from ctbrainage.core.labels import LOBES

LOBE_NAMES = tuple(LOBES.values())
LN9 = math.log(9.0)  # a logistic goes from 50% to 90% in ln(9) widths
#: SD of a lobe's white-matter attenuation between children of the same biological age (HU)
INDIVIDUAL_SD_HU = 0.7
#: the definition of expected lobe importance that readouts are scored against, then the others
IMPORTANCE_DEFINITIONS = ("fisher", "hu_slope_x_wm_share")


class ScheduleError(ValueError):
    """A schedule specification that cannot be used."""


@dataclass(frozen=True)
class LobeCurve:
    """Maturation of one lobe's white matter: a logistic myelination phase plus an optional
    slower later phase holding ``late_share`` of the rise; ``null`` = no age signal at all."""

    midpoint_months: float
    width_months: float
    null: bool = False
    late_share: float = 0.0
    late_midpoint_months: float = 0.0
    late_width_months: float = 1.0

    def _phases(self):
        return (
            (1.0 - self.late_share, self.midpoint_months, self.width_months),
            (self.late_share, self.late_midpoint_months, self.late_width_months),
        )

    def fraction(self, age_months):
        """Maturity in [0, 1] at ``age_months`` (a null lobe stays half mature at every age)."""
        age = np.asarray(age_months, dtype=float)
        if self.null:
            return np.full_like(age, 0.5)
        return sum(share * _logistic((age - mid) / width) for share, mid, width in self._phases())

    def slope(self, age_months):
        """d fraction / d age (per month)."""
        age = np.asarray(age_months, dtype=float)
        if self.null:
            return np.zeros_like(age)
        total = np.zeros_like(age)
        for share, mid, width in self._phases():
            f = _logistic((age - mid) / width)
            total = total + share * f * (1.0 - f) / width
        return total


def _logistic(x):
    return 1.0 / (1.0 + np.exp(-x))


def _curve(t50: float, t90: float, **late) -> LobeCurve:
    return LobeCurve(midpoint_months=t50, width_months=(t90 - t50) / LN9, **late)


def _late(midpoint: float) -> dict:
    return {"late_share": 0.3, "late_midpoint_months": midpoint, "late_width_months": 8.0}


PHYSIOLOGICAL = {
    "occipital": _curve(5.0, 13.0, **_late(30.0)),
    "parietal": _curve(7.0, 16.0, **_late(34.0)),
    "frontal": _curve(10.0, 20.0, **_late(38.0)),
    "temporal": _curve(11.0, 25.0, **_late(42.0)),
}
#: the lobes in their physiological maturation order (posterior → anterior)
MATURATION_ORDER = tuple(sorted(PHYSIOLOGICAL, key=lambda n: PHYSIOLOGICAL[n].midpoint_months))


def staggered(age_group_edges) -> dict[str, LobeCurve]:
    """One lobe maturing in each of four age groups: midpoint at the group's centre, width one
    fifth of the group (≥ 80 % of a group's planted lobe signal is then its own lobe's),
    in :data:`MATURATION_ORDER`."""
    edges = list(age_group_edges)
    if len(edges) != len(LOBE_NAMES) + 1:
        raise ScheduleError(
            f"the staggered schedule needs {len(LOBE_NAMES)} age groups (one per lobe), "
            f"got edges {edges}"
        )
    return {
        name: LobeCurve(midpoint_months=(lo + hi) / 2, width_months=(hi - lo) / 5)
        for name, lo, hi in zip(MATURATION_ORDER, edges[:-1], edges[1:], strict=True)
    }


@dataclass(frozen=True)
class MaturationSchedule:
    """White-matter attenuation per lobe and age, plus the early-maturing central white matter."""

    lobes: dict[str, LobeCurve] = field(default_factory=lambda: dict(PHYSIOLOGICAL))
    unmyelinated_hu: float = 18.0
    mature_hu: float = 30.5
    # internal capsule, brainstem, cerebellar and insular white matter: myelinated around birth
    central: LobeCurve = field(default_factory=lambda: _curve(1.0, 8.0))

    def __post_init__(self):
        if set(self.lobes) != set(LOBE_NAMES):
            unknown = sorted(set(self.lobes) - set(LOBE_NAMES))
            missing = sorted(set(LOBE_NAMES) - set(self.lobes))
            raise ScheduleError(
                f"schedule must define exactly the lobes {', '.join(LOBE_NAMES)}"
                + (f"; unknown: {', '.join(unknown)}" if unknown else "")
                + (f"; missing: {', '.join(missing)}" if missing else "")
            )
        for name, curve in self.lobes.items():
            if curve.width_months <= 0 or curve.late_width_months <= 0:
                raise ScheduleError(f"lobe {name!r}: width_months must be > 0")
            if not 0.0 <= curve.late_share < 1.0:
                raise ScheduleError(f"lobe {name!r}: late_share must be within [0, 1)")

    def wm_hu(self, lobe: str, age_months):
        """Planted white-matter attenuation (HU) of ``lobe`` at ``age_months``."""
        span = self.mature_hu - self.unmyelinated_hu
        return self.unmyelinated_hu + span * self.lobes[lobe].fraction(age_months)

    def shift_lobe(self, lobe: str, months: float) -> MaturationSchedule:
        """This schedule with ``lobe``'s maturation running ``months`` earlier (later if
        negative): its white matter at age a is this schedule's at a + ``months``; every other
        curve unchanged (a null lobe stays null)."""
        _check_lobe(lobe)
        curve = self.lobes[lobe]
        moved = replace(
            curve,
            midpoint_months=curve.midpoint_months - months,
            late_midpoint_months=curve.late_midpoint_months - months,
        )
        return replace(self, lobes={**self.lobes, lobe: moved})

    def central_wm_hu(self, age_months):
        span = self.mature_hu - self.unmyelinated_hu
        return self.unmyelinated_hu + span * self.central.fraction(age_months)

    def expected_importance(
        self,
        age_group_edges,
        wm_volume_share: dict[str, float] | None = None,
        definition: str = IMPORTANCE_DEFINITIONS[0],
    ) -> pd.DataFrame:
        """How much age information each lobe's white matter carries in each age group.

        ``fisher`` (the truth readouts are scored against): the Fisher information about
        biological age of the lobe's mean white-matter attenuation, mean over the group's ages
        of (d HU / d age)² / σ², σ = :data:`INDIVIDUAL_SD_HU` (months⁻²; the maturity offset
        shared by all lobes is not counted as noise). Lobe size does not enter:
        over thousands of voxels the image noise of the lobe mean (~0.02 HU) is negligible
        beside the children's own variation. ``hu_slope_x_wm_share`` (the earlier definition,
        kept for comparison): mean |d HU / d age| × the lobe's share of lobar white matter
        (equal shares if not given). ``share`` normalises ``importance`` to sum to 1 per group;
        ``hu_per_month`` is the planted signal itself, mean d HU / d age over the group.
        Columns: definition, group (labelled like ``cohort.age_group``: "0-11"), lobe,
        hu_per_month, importance, share.
        """
        if definition not in IMPORTANCE_DEFINITIONS:
            raise ScheduleError(
                f"unknown importance definition {definition!r}; "
                f"choose from {', '.join(IMPORTANCE_DEFINITIONS)}"
            )
        shares = wm_volume_share or {name: 1.0 / len(LOBE_NAMES) for name in LOBE_NAMES}
        span = self.mature_hu - self.unmyelinated_hu
        rows = []
        edges = list(age_group_edges)
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            ages = np.linspace(lo, hi, 200)
            for name in LOBE_NAMES:
                slope = span * self.lobes[name].slope(ages)
                if definition == "fisher":
                    value = float(np.mean(slope**2)) / INDIVIDUAL_SD_HU**2
                else:
                    value = float(np.mean(slope)) * shares[name]
                rows.append(
                    {
                        "definition": definition,
                        "group": window_label(lo, hi),
                        "lobe": name,
                        "hu_per_month": float(np.mean(slope)),
                        "importance": value,
                    }
                )
        table = pd.DataFrame(rows)
        total = table.groupby("group", sort=False)["importance"].transform("sum")
        table["share"] = np.where(total > 0, table["importance"] / total.where(total > 0, 1), 0.0)
        return table

    # ---- construction from specifications -------------------------------------------------
    @classmethod
    def parse(
        cls, spec: str | Path | dict | MaturationSchedule, age_group_edges=(0, 12, 24, 36, 48)
    ) -> MaturationSchedule:
        """Build from a preset or a specification:

        - ``physiological`` (default), ``reversed`` (the current curves in reverse order),
          ``staggered`` (one lobe per group of ``age_group_edges``, see :func:`staggered`);
        - ``order=frontal,temporal,parietal,occipital``: the current curves (physiological
          unless a preset precedes) assigned in that maturation order, e.g.
          ``staggered+order=temporal,frontal,parietal,occipital``;
        - ``null=<lobe>``: a lobe without any age signal; combine with ``+``, e.g.
          ``order=...+null=temporal``;
        - a path to a JSON file, or a dict, as written by :meth:`to_dict`.
        """
        if isinstance(spec, MaturationSchedule):
            return spec
        if isinstance(spec, dict):
            return cls.from_dict(spec)
        text = str(spec).strip()
        if text.endswith(".json"):
            path = Path(text)
            if not path.exists():
                raise ScheduleError(f"schedule file not found: {path}")
            return cls.from_dict(json.loads(path.read_text()))
        schedule = cls()
        for part in filter(None, text.split("+")):
            schedule = schedule._apply(part.strip(), age_group_edges)
        return schedule

    def _ranked(self) -> list[str]:
        """The lobes in the order their (myelination phase) curves mature."""
        return sorted(LOBE_NAMES, key=lambda n: self.lobes[n].midpoint_months)

    def _apply(self, part: str, age_group_edges) -> MaturationSchedule:
        if part == "physiological":
            return replace(self, lobes=dict(PHYSIOLOGICAL))
        if part == "staggered":
            return replace(self, lobes=staggered(age_group_edges))
        if part == "reversed":
            return self._apply("order=" + ",".join(self._ranked()[::-1]), age_group_edges)
        key, _, value = part.partition("=")
        names = [v.strip() for v in value.split(",") if v.strip()]
        for name in names:
            _check_lobe(name)
        if key == "order":
            if sorted(names) != sorted(LOBE_NAMES):
                raise ScheduleError(f"order= must list each of {', '.join(LOBE_NAMES)} once")
            curves = [self.lobes[n] for n in self._ranked()]
            ranked = zip(names, curves, strict=True)  # a lobe made null stays null
            return replace(self, lobes={n: replace(c, null=self.lobes[n].null) for n, c in ranked})
        if key == "null":
            lobes = dict(self.lobes)
            for name in names:
                lobes[name] = replace(lobes[name], null=True)
            return replace(self, lobes=lobes)
        raise ScheduleError(
            f"unknown schedule specification {part!r}: use physiological, staggered, reversed, "
            "order=<4 lobes>, null=<lobe>, or a .json file"
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MaturationSchedule:
        try:
            lobes = {name: LobeCurve(**curve) for name, curve in data["lobes"].items()}
            for name in lobes:
                _check_lobe(name)
            central = LobeCurve(**data["central"]) if "central" in data else cls().central
            extra = {k: float(data[k]) for k in ("unmyelinated_hu", "mature_hu") if k in data}
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ScheduleError(f"invalid schedule definition: {err}") from None
        return cls(lobes=lobes, central=central, **extra)


def _check_lobe(name: str) -> None:
    if name not in LOBE_NAMES:
        raise ScheduleError(f"unknown lobe {name!r} in schedule; lobes are {', '.join(LOBE_NAMES)}")
