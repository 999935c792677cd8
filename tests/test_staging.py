"""The TNM N rules (CLINICAL.md section 1), station by station and setting by setting."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from nstage.errors import NStageError, UsageError
from nstage.staging import (
    DEFAULT_RULES,
    STATIONS,
    StagingRules,
    category_probabilities,
    edition_rules,
    n_category,
    node_category,
    normalize_station,
    station_side,
)

# Written out by hand from CLINICAL.md section 1 with the default settings, independent of the
# code: every station for a LEFT and for a RIGHT primary.
EXPECTED_LEFT = {
    "1R": "N3", "1L": "N3", "2R": "N3", "2L": "N2", "3a": "N2", "3p": "N2",
    "4R": "N3", "4L": "N2", "5": "N2", "6": "N2", "7": "N2", "8R": "N3", "8L": "N2",
    "9R": "N3", "9L": "N2", "10R": "N3", "10L": "N1", "11R": "N3", "11L": "N1",
    "12R": "N3", "12L": "N1", "13R": "N3", "13L": "N1", "14R": "N3", "14L": "N1",
}  # fmt: skip
EXPECTED_RIGHT = {
    "1R": "N3", "1L": "N3", "2R": "N2", "2L": "N3", "3a": "N2", "3p": "N2",
    "4R": "N2", "4L": "N3", "5": "N3", "6": "N3", "7": "N2", "8R": "N2", "8L": "N3",
    "9R": "N2", "9L": "N3", "10R": "N1", "10L": "N3", "11R": "N1", "11L": "N3",
    "12R": "N1", "12L": "N3", "13R": "N1", "13L": "N3", "14R": "N1", "14L": "N3",
}  # fmt: skip
EXPECTED_SIDE = {
    "1R": "right", "1L": "left", "2R": "right", "2L": "left", "3a": "midline",
    "3p": "midline", "4R": "right", "4L": "left", "5": "left", "6": "left", "7": "midline",
}  # fmt: skip
NINTH_OF_SINGLE = {"N1": "N1", "N2": "N2a", "N3": "N3"}
EXPECTED = {"left": EXPECTED_LEFT, "right": EXPECTED_RIGHT}


def test_station_list_is_the_iaslc_map():
    assert STATIONS == tuple(EXPECTED_LEFT)
    assert len(STATIONS) == 25 and len(set(STATIONS)) == 25


@pytest.mark.parametrize("station", STATIONS)
def test_station_side(station):
    expected = EXPECTED_SIDE.get(station) or ("right" if station.endswith("R") else "left")
    assert station_side(station) == expected
    assert station_side(station.lower()) == expected


@pytest.mark.parametrize("primary_side", ["left", "right"])
@pytest.mark.parametrize("station", STATIONS)
def test_every_station_on_both_sides_of_the_primary(primary_side, station):
    expected = EXPECTED[primary_side][station]
    category, rule = node_category(station, primary_side)
    assert category == expected
    assert station in rule and expected in rule and "\n" not in rule

    result = n_category(primary_side, [station])
    assert result.n_stage == expected
    assert result.n_stage_9th == NINTH_OF_SINGLE[expected]
    assert result.primary_side == primary_side
    assert result.reasons == []
    assert len(result.trace) == 1
    entry = result.trace[0]
    assert (entry.station, entry.station_side, entry.category) == (
        station,
        station_side(station),
        expected,
    )
    assert result.n2_stations == ([station] if expected == "N2" else [])


@pytest.mark.parametrize(
    "raw, canonical",
    [("4r", "4R"), (" 10 l ", "10L"), ("3A", "3a"), ("3P", "3p"), ("14r", "14R"), ("7", "7")],
)
def test_station_codes_are_case_and_space_insensitive(raw, canonical):
    assert normalize_station(raw) == canonical
    assert n_category("right", [raw]).trace[0].station == canonical


@pytest.mark.parametrize("bad", ["4X", "15R", "3", "5R", "7L", "", "R4", "2 R L"])
def test_unknown_station_is_a_one_line_usage_error_listing_valid_codes(bad):
    with pytest.raises(UsageError) as info:
        normalize_station(bad)
    message = str(info.value)
    assert "\n" not in message
    assert "unknown lymph-node station" in message
    for code in STATIONS:
        assert f" {code}" in message
    with pytest.raises(UsageError):
        n_category("left", ["7", bad])
    with pytest.raises(UsageError):
        node_category(bad, "left")


def test_bad_primary_side_is_a_usage_error():
    with pytest.raises(UsageError, match="left, right, unknown"):
        n_category("middle", ["7"])
    assert n_category("LEFT", ["10L"]).n_stage == "N1"
    assert n_category(None, ["7"]).primary_side == "unknown"


def test_a_single_string_is_not_taken_for_a_list_of_characters():
    with pytest.raises(TypeError):
        n_category("right", "4R")


def test_no_node_is_n0():
    for side in ("left", "right", "unknown"):
        result = n_category(side, [])
        assert (result.n_stage, result.n_stage_9th, result.trace) == ("N0", "N0", [])


@pytest.mark.parametrize(
    "side, stations, n8, n9",
    [
        # Highest category wins.
        ("right", ["10R", "4L"], "N3", "N3"),
        ("right", ["10R", "11R", "12R"], "N1", "N1"),
        ("left", ["10L", "1R"], "N3", "N3"),
        # Skip metastasis: N2 without N1 is still N2.
        ("right", ["4R"], "N2", "N2a"),
        ("right", ["4R", "10R"], "N2", "N2a"),
        # 9th edition: count N2 stations; side letter makes a different station.
        ("right", ["4R", "7"], "N2", "N2b"),
        ("right", ["2R", "4R"], "N2", "N2b"),
        ("left", ["2L", "4L", "5", "6"], "N2", "N2b"),
        ("left", ["3a", "3p"], "N2", "N2b"),
        ("left", ["8L", "9L"], "N2", "N2b"),
        ("left", ["7", "10L", "11L"], "N2", "N2a"),
        # Duplicates: two nodes in one station are one station.
        ("right", ["4R", "4R"], "N2", "N2a"),
        ("right", ["4R", "4r", " 4R "], "N2", "N2a"),
        ("right", ["7", "7", "4R"], "N2", "N2b"),
        # N3 overrides the N2 count.
        ("right", ["4R", "7", "4L"], "N3", "N3"),
    ],
)
def test_patient_category(side, stations, n8, n9):
    result = n_category(side, stations)
    assert (result.n_stage, result.n_stage_9th) == (n8, n9)
    # The trace names every distinct station once, in map order.
    distinct = [s for s in STATIONS if s in {normalize_station(x) for x in stations}]
    assert [e.station for e in result.trace] == distinct
    assert max(e.category for e in result.trace) == n8


def test_trace_explains_the_9th_edition_count_and_duplicates():
    result = n_category("right", ["7", "4R", "4R"])
    assert result.n2_stations == ["4R", "7"]
    four_r = result.trace[0]
    assert four_r.station == "4R"
    assert "2 nodes, one station" in four_r.rule
    assert "N2b" in four_r.rule and "4R, 7" in four_r.rule
    single = n_category("right", ["7"]).trace[0]
    assert "N2a" in single.rule


def test_to_dict_is_json_with_trace_side_key():
    data = n_category("right", ["4R", "7"]).to_dict()
    assert json.loads(json.dumps(data)) == data
    assert set(data) == {"n_stage", "n_stage_9th", "primary_side", "trace", "reasons",
                         "n2_stations"}  # fmt: skip
    assert data["trace"][0] == {
        "station": "4R",
        "side": "right",
        "category": "N2",
        "rule": data["trace"][0]["rule"],
    }


# ---- primary side unknown ----------------------------------------------------------------


@pytest.mark.parametrize(
    "stations, n8, n9",
    [
        (["7"], "N2", "N2a"),  # subcarinal: N2 whatever the side
        (["1R"], "N3", "N3"),  # station 1: N3 whatever the side
        (["1L", "7"], "N3", "N3"),
        (["3a"], "N2", "N2a"),  # midline, ipsilateral by default
        (["3a", "3p", "7"], "N2", "N2b"),
        (["10R", "1L"], "N3", "N3"),  # 10R differs (N1/N3) but 1L makes N3 either way
        (["4R"], "NX", "NX"),  # N2 for a right primary, N3 for a left one
        (["10L"], "NX", "NX"),
        (["7", "4L"], "NX", "NX"),
        (["5"], "NX", "NX"),  # N2 for left, N3 for right (default)
    ],
)
def test_unknown_side_answers_only_when_both_sides_agree(stations, n8, n9):
    result = n_category("unknown", stations)
    assert (result.n_stage, result.n_stage_9th) == (n8, n9)
    assert result.primary_side == "unknown"
    assert len(result.reasons) == 1 and "side unknown" in result.reasons[0]
    left, right = n_category("left", stations), n_category("right", stations)
    # The reason quotes both hypotheses.
    assert f"{left.n_stage}/{left.n_stage_9th}" in result.reasons[0]
    assert f"{right.n_stage}/{right.n_stage_9th}" in result.reasons[0]


def test_unknown_side_trace_marks_side_dependent_nodes():
    result = n_category("unknown", ["10R", "1L"])
    by_station = {e.station: e for e in result.trace}
    assert by_station["1L"].category == "N3"
    assert by_station["10R"].category == "NX"
    assert "N1" in by_station["10R"].rule and "N3" in by_station["10R"].rule
    assert node_category("7", "unknown") == ("N2", node_category("7", "unknown")[1])
    assert node_category("4R", "unknown")[0] == "NX"


# ---- every setting in both positions -----------------------------------------------------


@pytest.mark.parametrize("station", ["3a", "3p"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_setting_stations_3(station, side):
    assert n_category(side, [station], StagingRules(stations_3_ipsilateral=True)).n_stage == "N2"
    contra = StagingRules(stations_3_ipsilateral=False)
    result = n_category(side, [station], contra)
    assert (result.n_stage, result.n_stage_9th) == ("N3", "N3")
    assert "contralateral" in result.trace[0].rule
    # Unknown side: symmetric either way, so never NX.
    assert n_category("unknown", [station], contra).n_stage == "N3"
    assert n_category("unknown", [station]).n_stage == "N2"


@pytest.mark.parametrize("station", ["5", "6"])
def test_setting_stations_5_6(station):
    n3 = StagingRules(stations_5_6_n3_for_right=True)
    n2 = StagingRules(stations_5_6_n3_for_right=False)
    assert n_category("right", [station], n3).n_stage == "N3"
    assert n_category("right", [station], n2).n_stage == "N2"
    # A left primary: ipsilateral mediastinal either way.
    assert n_category("left", [station], n3).n_stage == "N2"
    assert n_category("left", [station], n2).n_stage == "N2"
    # Unknown side: only the N2 setting makes both sides agree.
    assert n_category("unknown", [station], n3).n_stage == "NX"
    assert (n_category("unknown", [station], n2).n_stage_9th) == "N2a"
    # 5 and 6 are two stations for the 9th edition.
    assert n_category("right", ["5", "6"], n2).n_stage_9th == "N2b"


def test_setting_unknown_side_policy():
    agree = StagingRules(unknown_side="agree")
    highest = StagingRules(unknown_side="highest")
    never = StagingRules(unknown_side="nx")
    assert n_category("unknown", ["4R"], agree).n_stage == "NX"
    assert n_category("unknown", ["4R"], highest).n_stage == "N3"
    assert n_category("unknown", ["10R"], highest).n_stage == "N3"
    assert node_category("10R", "unknown", highest)[0] == "N3"
    hi = n_category("unknown", ["4R", "7"], highest)
    assert (hi.n_stage, hi.n_stage_9th) == ("N3", "N3")
    assert n_category("unknown", ["7"], highest).n_stage_9th == "N2a"
    for stations in ([], ["7"], ["1R"]):
        result = n_category("unknown", stations, never)
        assert (result.n_stage, result.n_stage_9th) == ("NX", "NX")
        assert "unknown_side=nx" in result.reasons[0]
    # A known side ignores the policy.
    assert n_category("right", ["4R"], never).n_stage == "N2"


def test_rules_defaults_and_settings_dict():
    assert DEFAULT_RULES == StagingRules(True, True, "agree")
    assert DEFAULT_RULES.to_dict() == {
        "stations_3_ipsilateral": True,
        "stations_5_6_n3_for_right": True,
        "unknown_side": "agree",
    }
    rules = edition_rules(StagingRules(stations_3_ipsilateral=False))
    assert rules["settings"]["stations_3_ipsilateral"] is False
    assert "8th" in rules["8th"] and "N2a" in rules["9th"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_RULES.unknown_side = "nx"  # type: ignore[misc]
    with pytest.raises(NStageError, match="agree, highest, nx"):
        StagingRules(unknown_side="worst")


# ---- probabilities -----------------------------------------------------------------------


def test_probabilities_worked_example():
    # Right primary: 10R (N1) p=0.5, 4R (N2) p=0.5, 1L (N3) p=0.1.
    probs = category_probabilities("right", [("10R", 0.5), ("4R", 0.5), ("1L", 0.1)])
    assert probs["N0"] == pytest.approx(0.5 * 0.5 * 0.9)
    assert probs["N1"] == pytest.approx(0.5 * 0.9 - 0.5 * 0.5 * 0.9)
    assert probs["N2"] == pytest.approx(0.9 - 0.5 * 0.9)
    assert probs["N3"] == pytest.approx(0.1)
    assert math.fsum(probs.values()) == pytest.approx(1.0)


def test_probabilities_edge_cases():
    assert category_probabilities("left", []) == {"N0": 1.0, "N1": 0.0, "N2": 0.0, "N3": 0.0}
    certain = category_probabilities("right", [("4R", 1.0), ("10R", 0.3)])
    assert certain["N2"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        category_probabilities("right", [("4R", 1.5)])
    with pytest.raises(ValueError):
        category_probabilities("right", [("4R", float("nan"))])
    with pytest.raises(UsageError):
        category_probabilities("right", [("4X", 0.5)])


def test_probabilities_unknown_side_is_the_average_of_both_sides():
    nodes = [("4R", 0.6), ("7", 0.2), ("10L", 0.3)]
    left = category_probabilities("left", nodes)
    right = category_probabilities("right", nodes)
    unknown = category_probabilities("unknown", nodes)
    for key in ("N0", "N1", "N2", "N3"):
        assert unknown[key] == pytest.approx((left[key] + right[key]) / 2)
    # Side-independent nodes: the average equals either side.
    same = [("7", 0.4), ("1R", 0.2)]
    assert category_probabilities("unknown", same) == pytest.approx(
        category_probabilities("left", same)
    )
