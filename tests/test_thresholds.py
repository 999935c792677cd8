"""Packaged thresholds: every value has a source; overrides are checked."""

from __future__ import annotations

import json

import pytest

from nstage.errors import InputError, UsageError
from nstage.thresholds import SECTIONS, load_thresholds, sources


def test_every_threshold_has_a_value_and_a_source():
    srcs = sources()
    values = load_thresholds()
    assert set(SECTIONS) <= set(values)
    for section in SECTIONS:
        assert values[section]
        for key, text in srcs[section].items():
            assert len(text) > 10, f"{section}.{key} has no source"
    assert values["detection"]["suv_floor"] == 2.5
    assert "PERCIST" in srcs["detection"]["liver_factor"]
    assert "Cochrane" in srcs["positivity"]["blood_pool_factor"]


def test_overrides_dotted_and_nested():
    v = load_thresholds({"positivity.suv_max_min": 3.0, "detection": {"grow_fraction": 0.5}})
    assert v["positivity"]["suv_max_min"] == 3.0
    assert v["detection"]["grow_fraction"] == 0.5
    assert load_thresholds()["positivity"]["suv_max_min"] == 2.5  # defaults untouched


@pytest.mark.parametrize("bad", [{"positivity.nope": 1}, {"nosection.x": 1}, {"flat": 1}])
def test_unknown_override_is_refused(bad):
    with pytest.raises(UsageError):
        load_thresholds(bad)


def test_file_overrides(tmp_path):
    f = tmp_path / "t.json"
    f.write_text(json.dumps({"positivity": {"suv_max_min": {"value": 4.0}}}))
    assert load_thresholds(path=f)["positivity"]["suv_max_min"] == 4.0
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        load_thresholds(path=tmp_path / "bad.json")
