"""The planted maturation schedule: curves, expected importance, specifications and errors."""

import json
from dataclasses import replace

import numpy as np
import pytest

from ctbrainage.synth.schedule import (
    IMPORTANCE_DEFINITIONS,
    LOBE_NAMES,
    PHYSIOLOGICAL,
    LobeCurve,
    MaturationSchedule,
    ScheduleError,
)

EDGES = (0.0, 12.0, 24.0, 36.0, 48.0)
T50_T90 = {
    "occipital": (5.0, 13.0),
    "parietal": (7.0, 16.0),
    "frontal": (10.0, 20.0),
    "temporal": (11.0, 25.0),
}


def _leaders(schedule, definition="fisher"):
    """The lobe with the largest share in each age group."""
    table = schedule.expected_importance(EDGES, definition=definition)
    return (
        table.loc[table.groupby("group", sort=False)["share"].idxmax()]
        .set_index("group")["lobe"]
        .to_dict()
    )


def test_physiological_curves_hit_their_documented_milestones():
    s = MaturationSchedule()
    mids = {name: curve.midpoint_months for name, curve in s.lobes.items()}
    assert sorted(mids, key=mids.get) == ["occipital", "parietal", "frontal", "temporal"]
    for name, (t50, t90) in T50_T90.items():
        curve = s.lobes[name]
        assert not curve.null and curve.late_share == pytest.approx(0.3)
        myelination = replace(curve, late_share=0.0)  # the early phase alone
        assert myelination.fraction(t50) == pytest.approx(0.5)
        assert myelination.fraction(t90) == pytest.approx(0.9)
        assert np.all(np.diff(curve.fraction(np.arange(48))) > 0)
        # the slope is the derivative of the fraction
        ages = np.linspace(0.5, 47.5, 95)
        numeric = (curve.fraction(ages + 1e-4) - curve.fraction(ages - 1e-4)) / 2e-4
        assert np.allclose(curve.slope(ages), numeric, atol=1e-7)
    late = {name: c.late_midpoint_months for name, c in s.lobes.items()}
    assert sorted(late, key=late.get) == sorted(mids, key=mids.get)  # same order, later


def test_physiological_default_holds_a_lobe_signal_in_every_age_group():
    table = MaturationSchedule().expected_importance(EDGES)
    per_group = table.groupby("group", sort=False)["hu_per_month"].sum()
    assert (per_group / per_group.max() >= 0.2).all(), per_group.round(3).to_dict()
    for group, part in table.groupby("group", sort=False):
        assert part["hu_per_month"].nunique() == 4, group  # the lobes differ in every group


def test_white_matter_attenuation_rises_from_unmyelinated_to_mature():
    s = MaturationSchedule()
    for name in LOBE_NAMES:
        assert s.wm_hu(name, -200.0) == pytest.approx(s.unmyelinated_hu, abs=1e-3)
        assert 15.0 <= s.wm_hu(name, 0.0) <= 22.0  # documented HU range at birth
        assert 29.0 <= s.wm_hu(name, 48.0) <= 32.0  # documented mature range
        assert s.wm_hu(name, 400.0) == pytest.approx(s.mature_hu, abs=1e-3)
    ages = np.array([0.0, 12.0, 47.0])
    assert s.wm_hu("frontal", ages).shape == (3,)
    null = MaturationSchedule.parse("null=frontal")
    assert np.ptp(null.wm_hu("frontal", np.linspace(0, 48, 50))) == 0.0
    assert np.all(null.lobes["frontal"].slope(ages) == 0.0)
    assert null.lobes["parietal"] == s.lobes["parietal"]


def test_expected_importance_follows_the_maturation_order():
    table = MaturationSchedule().expected_importance(EDGES)
    columns = ["definition", "group", "lobe", "hu_per_month", "importance", "share"]
    assert list(table.columns) == columns
    assert set(table["definition"]) == {IMPORTANCE_DEFINITIONS[0]} == {"fisher"}
    assert list(table["group"].unique()) == ["0-11", "12-23", "24-35", "36-47"]
    assert np.allclose(table.groupby("group")["share"].sum(), 1.0)
    assert (table["importance"] > 0).all()
    for definition in IMPORTANCE_DEFINITIONS:
        leaders = _leaders(MaturationSchedule(), definition)
        assert (leaders["0-11"], leaders["36-47"]) == ("occipital", "temporal")
    # lobar volume shares weight the earlier definition, never the information
    shares = {"frontal": 0.7, "parietal": 0.1, "temporal": 0.1, "occipital": 0.1}
    weighted = MaturationSchedule().expected_importance(EDGES, shares, "hu_slope_x_wm_share")
    assert weighted.set_index(["group", "lobe"]).loc[("0-11", "frontal"), "share"] > 0.5
    fisher = MaturationSchedule().expected_importance(EDGES, shares, "fisher")
    assert fisher.equals(table)
    # Fisher information: squared HU slope over the children's own variance, averaged
    slope = fisher["hu_per_month"].to_numpy()
    assert np.all(fisher["importance"] >= slope**2 / 0.7**2 - 1e-12)  # mean of squares ≥ square
    ages = np.linspace(0.0, 12.0, 200)  # group 0-11, as the table samples it
    span = 30.5 - 18.0
    exact = np.mean((span * PHYSIOLOGICAL["occipital"].slope(ages)) ** 2) / 0.7**2
    cell = fisher.set_index(["group", "lobe"]).loc[("0-11", "occipital"), "importance"]
    assert cell == pytest.approx(exact)
    with pytest.raises(ScheduleError, match="unknown importance definition 'size'"):
        MaturationSchedule().expected_importance(EDGES, definition="size")


@pytest.mark.parametrize(
    ("spec", "order"),
    [
        ("staggered", ["occipital", "parietal", "frontal", "temporal"]),
        (
            "staggered+order=temporal,frontal,parietal,occipital",
            ["temporal", "frontal", "parietal", "occipital"],
        ),
        ("staggered+reversed", ["temporal", "frontal", "parietal", "occipital"]),
    ],
)
def test_staggered_matures_one_lobe_per_age_group(spec, order):
    s = MaturationSchedule.parse(spec, EDGES)
    assert [s.lobes[n].midpoint_months for n in order] == [6.0, 18.0, 30.0, 42.0]
    assert all(c.late_share == 0.0 for c in s.lobes.values())
    groups = ["0-11", "12-23", "24-35", "36-47"]
    for definition in IMPORTANCE_DEFINITIONS:
        table = s.expected_importance(EDGES, definition=definition)
        own = table.set_index(["group", "lobe"])["share"]
        for group, lobe in zip(groups, order, strict=True):
            assert own[(group, lobe)] >= 0.8, (definition, group, lobe)
    # the signal is spread evenly over the groups
    per_group = s.expected_importance(EDGES).groupby("group")["hu_per_month"].sum()
    assert per_group.min() / per_group.max() > 0.9


def test_staggered_follows_the_profile_groups_and_needs_four():
    s = MaturationSchedule.parse("staggered", (0.0, 6.0, 12.0, 24.0, 48.0))
    assert s.lobes["occipital"].midpoint_months == 3.0
    assert s.lobes["temporal"].midpoint_months == 36.0
    assert s.lobes["temporal"].width_months == pytest.approx(24.0 / 5)
    with pytest.raises(ScheduleError, match="needs 4 age groups"):
        MaturationSchedule.parse("staggered", (0.0, 24.0, 48.0))


@pytest.mark.parametrize(
    ("spec", "first", "last"),
    [
        ("order=temporal,frontal,parietal,occipital", "temporal", "occipital"),
        ("order=frontal,occipital,temporal,parietal", "frontal", "parietal"),
        ("reversed", "temporal", "occipital"),
    ],
)
def test_reordered_schedules_move_the_importance(spec, first, last):
    leaders = _leaders(MaturationSchedule.parse(spec))
    assert (leaders["0-11"], leaders["36-47"]) == (first, last)


def test_null_lobe_has_no_importance_and_combines_with_an_order():
    s = MaturationSchedule.parse("order=temporal,frontal,parietal,occipital+null=frontal")
    assert s.lobes["frontal"].null and not s.lobes["temporal"].null
    assert s.lobes["temporal"].midpoint_months == 5.0  # the first-maturing physiological curve
    table = s.expected_importance(EDGES)
    frontal = table[table["lobe"] == "frontal"]
    assert len(frontal) == 4
    assert (frontal["importance"] == 0).all() and (frontal["share"] == 0).all()
    assert np.allclose(table.groupby("group")["share"].sum(), 1.0)


def test_a_json_schedule_without_a_later_phase_still_loads():
    old = {"lobes": {n: {"midpoint_months": 8.0, "width_months": 3.0} for n in LOBE_NAMES}}
    s = MaturationSchedule.parse(old)
    assert all(c.late_share == 0.0 for c in s.lobes.values())
    assert s.lobes["frontal"].fraction(8.0) == pytest.approx(0.5)


def test_dict_and_json_file_round_trip(tmp_path):
    s = MaturationSchedule.parse("reversed+null=parietal")
    assert MaturationSchedule.from_dict(s.to_dict()) == s
    assert MaturationSchedule.parse(s.to_dict()) == s
    path = tmp_path / "schedule.json"
    path.write_text(json.dumps(s.to_dict()))
    loaded = MaturationSchedule.parse(str(path))
    assert loaded == s and loaded != MaturationSchedule()
    assert MaturationSchedule.parse(loaded) is loaded


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("null=front", "unknown lobe 'front'"),
        ("order=frontal,parietal,temporal,cerebellum", "unknown lobe 'cerebellum'"),
        ("order=frontal,parietal,temporal", "order= must list each"),
        ("order=frontal,frontal,temporal,occipital", "order= must list each"),
        ("sideways", "unknown schedule specification 'sideways'"),
        ("missing/nowhere.json", "schedule file not found"),
        ({"central": {}}, "invalid schedule definition"),
    ],
)
def test_bad_specifications_name_the_problem(spec, message):
    with pytest.raises(ScheduleError, match=message):
        MaturationSchedule.parse(spec)


def test_invalid_lobe_sets_and_widths_are_refused():
    curves = dict(MaturationSchedule().lobes)
    with pytest.raises(ScheduleError, match="lobe 'temporal': width_months must be > 0"):
        MaturationSchedule(lobes={**curves, "temporal": LobeCurve(11.0, 0.0)})
    bad = MaturationSchedule().to_dict()
    bad["lobes"]["occipital"]["width_months"] = -1.0
    with pytest.raises(ScheduleError, match="width_months must be > 0"):
        MaturationSchedule.from_dict(bad)
    bad = MaturationSchedule().to_dict()
    bad["lobes"]["occipital"]["late_share"] = 1.0
    with pytest.raises(ScheduleError, match="late_share must be within"):
        MaturationSchedule.from_dict(bad)
    with pytest.raises(ScheduleError, match="missing: occipital"):
        MaturationSchedule(lobes={k: v for k, v in curves.items() if k != "occipital"})
    bad = MaturationSchedule().to_dict()
    bad["lobes"]["insula"] = bad["lobes"]["frontal"]
    with pytest.raises(ScheduleError, match="unknown lobe 'insula'"):
        MaturationSchedule.from_dict(bad)


def test_null_survives_a_later_order():
    s = MaturationSchedule.parse("null=temporal+order=temporal,frontal,parietal,occipital")
    assert s.lobes["temporal"].null
    assert s.lobes["frontal"].midpoint_months == PHYSIOLOGICAL["parietal"].midpoint_months
