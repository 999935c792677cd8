"""``nstage stage``: one JSON object on stdout; bad station -> exit 2, one line, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nstage.cli import main
from nstage.staging import STATIONS


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nstage", "stage", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_right_primary_4r_and_7_is_n2_n2b():
    proc = run_cli("--primary-side", "right", "--node", "4R", "--node", "7")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # exactly one JSON document on stdout
    assert result["n_stage"] == "N2"
    assert result["n_stage_9th"] == "N2b"
    assert [(t["station"], t["category"]) for t in result["trace"]] == [("4R", "N2"), ("7", "N2")]
    assert result["edition_rules"]["settings"]["stations_5_6_n3_for_right"] is True


def test_unknown_station_exits_2_with_one_line_listing_valid_codes():
    proc = run_cli("--primary-side", "right", "--node", "4R", "--node", "4X")
    assert proc.returncode == 2
    assert proc.stdout == ""  # nothing half-written
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "'4X'" in lines[0]
    assert all(f" {code}" in lines[0] for code in STATIONS)


def stage(capsys, *args: str) -> tuple[int, dict | None, str]:
    code = main(["stage", *args])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out else None), err


def test_comma_separated_and_case_insensitive_nodes(capsys):
    code, result, _ = stage(capsys, "--primary-side", "RIGHT", "--node", "4r, 7", "--node", "10R")
    assert code == 0
    assert (result["n_stage"], result["n_stage_9th"]) == ("N2", "N2b")
    assert result["n2_stations"] == ["4R", "7"]
    code, result, _ = stage(capsys, "--primary-side", "left")
    assert (code, result["n_stage"], result["trace"]) == (0, "N0", [])


@pytest.mark.parametrize(
    "args, n8, n9",
    [
        (["--primary-side", "left", "--node", "3a"], "N2", "N2a"),
        (["--primary-side", "left", "--node", "3a", "--stations-3-contralateral"], "N3", "N3"),
        (["--primary-side", "right", "--node", "5"], "N3", "N3"),
        (["--primary-side", "right", "--node", "5,6", "--stations-5-6-n2-for-right"], "N2", "N2b"),
        (["--primary-side", "unknown", "--node", "4R"], "NX", "NX"),
        (
            ["--primary-side", "unknown", "--node", "4R", "--unknown-side-policy", "highest"],
            "N3",
            "N3",
        ),  # fmt: skip
        (["--primary-side", "unknown", "--node", "7", "--unknown-side-policy", "nx"], "NX", "NX"),
        (["--primary-side", "unknown", "--node", "7"], "N2", "N2a"),
    ],
)
def test_each_setting_flag(capsys, args, n8, n9):
    code, result, _ = stage(capsys, *args)
    assert code == 0
    assert (result["n_stage"], result["n_stage_9th"]) == (n8, n9)
    if n8 == "NX":
        assert result["reasons"]


def test_flags_reach_the_reported_settings(capsys):
    _, result, _ = stage(
        capsys,
        "--primary-side", "left",
        "--stations-3-contralateral",
        "--stations-5-6-n2-for-right",
        "--unknown-side-policy", "highest",
    )  # fmt: skip
    assert result["edition_rules"]["settings"] == {
        "stations_3_ipsilateral": False,
        "stations_5_6_n3_for_right": False,
        "unknown_side": "highest",
    }


def test_missing_primary_side_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["stage", "--node", "7"])
    assert info.value.code == 2
    assert "--primary-side" in capsys.readouterr().err
