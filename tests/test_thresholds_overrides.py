"""`nstage run --thresholds FILE`: every deciding number can be changed, and the JSON says so."""

from __future__ import annotations

import json

import pytest

from nstage.errors import InputError
from nstage.thresholds import differences, load_thresholds, read_overrides


def test_every_station_and_landmark_number_is_in_the_thresholds_file():
    """The numbers that place nodes live in resources/thresholds.json with unit and source."""
    from importlib import resources

    raw = json.loads(resources.files("nstage").joinpath("resources", "thresholds.json")
                     .read_text("utf-8"))
    for section in ("landmarks", "stations", "classification", "positivity", "assessment"):
        for key, entry in raw[section].items():
            assert {"value", "unit", "source"} <= set(entry), f"{section}.{key}"
            assert entry["source"].strip(), f"{section}.{key} has no source"
    from dataclasses import fields

    from nstage.stations import StationSettings
    assert {f.name for f in fields(StationSettings)} == set(raw["stations"])


def test_file_overrides_and_differences(tmp_path):
    path = tmp_path / "th.json"
    path.write_text(json.dumps({"stations": {"prevascular_min_mm": {"value": 20.0}},
                                "positivity": {"suv_max_min": 3.0}}))
    over = read_overrides(path)
    assert over == {"stations": {"prevascular_min_mm": 20.0}, "positivity": {"suv_max_min": 3.0}}
    assert differences(over) == {
        "stations.prevascular_min_mm": {"value": 20.0, "default": 25.0},
        "positivity.suv_max_min": {"value": 3.0, "default": 2.5}}
    assert differences(None) == {} and differences(load_thresholds()) == {}


@pytest.mark.parametrize(("content", "words"), [
    ({"stations": {"no_such_key": 1}}, "unknown threshold stations.no_such_key"),
    ({"nope": {"x": 1}}, "unknown threshold section"),
    ([1, 2], "must hold a JSON object"),
])
def test_bad_thresholds_file_is_one_line_naming_the_file(tmp_path, content, words):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(InputError) as err:
        read_overrides(path)
    assert words in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_station_boundary_moves_with_the_thresholds_and_the_json_records_it(tmp_path):
    """A 3a/4R decision by the 25 mm prevascular distance (stations.prevascular_min_mm): a
    pretracheal node 22 mm in front of the trachea is 4R by default and 3a at 20 mm."""
    from hand_chest import chest, node

    from nstage.stations import assign, station_settings

    n = node(-3.0, -31.0, 25.0)  # trachea anterior wall y = -9: 22 mm in front of it
    assert assign(n, chest()).station == "4R"
    moved = station_settings({"stations": {"prevascular_min_mm": 20.0}})
    assert assign(n, chest(), moved).station == "3a"


def test_cli_thresholds_flag_reaches_the_result(tmp_path):
    from nstage.cli import main
    from nstage.phantom import PhantomSpec, make_phantom, write_phantom

    case = tmp_path / "case"
    write_phantom(make_phantom(PhantomSpec(nodes=("4R",), primary_side="right", seed=5)), case)
    th = tmp_path / "th.json"
    th.write_text(json.dumps({"positivity": {"suv_max_min": 2.8}}))
    out = tmp_path / "out"
    assert main(["run", "--ct", str(case / "input"), "--out", str(out), "--anatomy",
                 "classical", "--lesions", "suv", "--no-report", "--thresholds", str(th)]) == 0
    result = json.loads((out / "n-stage.json").read_text())
    assert result["thresholds_changed"] == {
        "positivity.suv_max_min": {"value": 2.8, "default": 2.5}}
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["run", "--ct", str(case / "input"), "--out", str(tmp_path / "o2"),
                 "--thresholds", str(bad)]) == 2
