"""The planted maturation schedule: white-matter attenuation of each lobe versus age.

Each lobe's white matter rises from its unmyelinated to its mature attenuation along a logistic
curve in age with a lobe-specific midpoint and width. The physiological default runs posterior →
anterior (occipital, parietal, frontal, temporal): the ages at which a lobe's white matter is ~50% /
~90% adult-like on CT, extrapolated from MRI myelination timelines (Barkovich et al. 1988,
Radiology 166:173; Deoni et al. 2011, J Neurosci), are occipital 5/13, parietal 7/16, frontal
10/20, temporal 11/25 months. Attenuations: unmyelinated white matter 15-22 HU at birth, mature
29-32 HU (reference CT facts in README).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ctbrainage.cohort import window_label
from ctbrainage.labels import LOBES

LOBE_NAMES = tuple(LOBES.values())
LN9 = math.log(9.0)  # a logistic goes from 50% to 90% in ln(9) widths


class ScheduleError(ValueError):
    """A schedule specification that cannot be used."""


@dataclass(frozen=True)
class LobeCurve:
    """Logistic maturation of one lobe's white matter; ``null`` = no age signal at all."""

    midpoint_months: float
    width_months: float
    null: bool = False

    def fraction(self, age_months):
        """Maturity in [0, 1] at ``age_months`` (a null lobe stays half mature at every age)."""
        age = np.asarray(age_months, dtype=float)
        if self.null:
            return np.full_like(age, 0.5)
        return 1.0 / (1.0 + np.exp(-(age - self.midpoint_months) / self.width_months))

    def slope(self, age_months):
        """d fraction / d age (per month)."""
        f = self.fraction(age_months)
        return np.zeros_like(f) if self.null else f * (1.0 - f) / self.width_months


def _curve(t50: float, t90: float) -> LobeCurve:
    return LobeCurve(midpoint_months=t50, width_months=(t90 - t50) / LN9)


PHYSIOLOGICAL = {
    "occipital": _curve(5.0, 13.0),
    "parietal": _curve(7.0, 16.0),
    "frontal": _curve(10.0, 20.0),
    "temporal": _curve(11.0, 25.0),
}
# physiological midpoints/widths in maturation order, reused when a custom order is asked for
_RANKED = sorted(PHYSIOLOGICAL.values(), key=lambda c: c.midpoint_months)


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
            if curve.width_months <= 0:
                raise ScheduleError(f"lobe {name!r}: width_months must be > 0")

    def wm_hu(self, lobe: str, age_months):
        """Planted white-matter attenuation (HU) of ``lobe`` at ``age_months``."""
        span = self.mature_hu - self.unmyelinated_hu
        return self.unmyelinated_hu + span * self.lobes[lobe].fraction(age_months)

    def central_wm_hu(self, age_months):
        span = self.mature_hu - self.unmyelinated_hu
        return self.unmyelinated_hu + span * self.central.fraction(age_months)

    def expected_importance(
        self, age_group_edges, wm_volume_share: dict[str, float] | None = None
    ) -> pd.DataFrame:
        """How much age information each lobe's white matter carries in each age group.

        Mean over the group's ages of |d HU / d age| × the lobe's share of lobar white matter
        (equal shares if not given); also normalised to sum to 1 within each group.
        Columns: group (labelled like ``cohort.age_group``: "0-11"), lobe, importance, share.
        """
        shares = wm_volume_share or {name: 1.0 / len(LOBE_NAMES) for name in LOBE_NAMES}
        span = self.mature_hu - self.unmyelinated_hu
        rows = []
        edges = list(age_group_edges)
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            ages = np.linspace(lo, hi, 200)
            for name in LOBE_NAMES:
                slope = span * float(np.mean(self.lobes[name].slope(ages)))
                rows.append(
                    {
                        "group": window_label(lo, hi),
                        "lobe": name,
                        "importance": slope * shares[name],
                    }
                )
        table = pd.DataFrame(rows)
        total = table.groupby("group", sort=False)["importance"].transform("sum")
        table["share"] = np.where(total > 0, table["importance"] / total.where(total > 0, 1), 0.0)
        return table

    # ---- construction from specifications -------------------------------------------------
    @classmethod
    def parse(cls, spec: str | Path | dict | MaturationSchedule) -> MaturationSchedule:
        """Build from a preset or a specification:

        - ``physiological`` (default), ``reversed`` (temporal first, occipital last);
        - ``order=frontal,temporal,parietal,occipital``: the physiological curves assigned in
          that maturation order;
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
            schedule = schedule._apply(part.strip())
        return schedule

    def _apply(self, part: str) -> MaturationSchedule:
        if part == "physiological":
            return replace(self, lobes=dict(PHYSIOLOGICAL))
        if part == "reversed":
            order = sorted(LOBE_NAMES, key=lambda n: -PHYSIOLOGICAL[n].midpoint_months)
            return self._apply("order=" + ",".join(order))
        key, _, value = part.partition("=")
        names = [v.strip() for v in value.split(",") if v.strip()]
        for name in names:
            _check_lobe(name)
        if key == "order":
            if sorted(names) != sorted(LOBE_NAMES):
                raise ScheduleError(f"order= must list each of {', '.join(LOBE_NAMES)} once")
            ranked = zip(names, _RANKED, strict=True)  # a lobe made null stays null
            return replace(self, lobes={n: replace(c, null=self.lobes[n].null) for n, c in ranked})
        if key == "null":
            lobes = dict(self.lobes)
            for name in names:
                lobes[name] = replace(lobes[name], null=True)
            return replace(self, lobes=lobes)
        raise ScheduleError(
            f"unknown schedule specification {part!r}: use physiological, reversed, "
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
