"""The n-stage.json contract: the schema accepts a correct result and names what is wrong."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from nstage import __version__
from nstage.errors import NStageError
from nstage.schema import ResultSchemaError, load_schema, schema_errors, validate_result
from nstage.staging import STATIONS, category_probabilities, edition_rules, n_category

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Hand-written after docs/ARCHITECTURE.md ("n-stage.json"): right upper-lobe primary, 4R and 7.
VALID = {
    "n_stage": "N2",
    "n_stage_9th": "N2b",
    "primary_tumor": {
        "side": "right",
        "lobe": "upper",
        "suv_max": 12.1,
        "suv_peak": 9.8,
        "volume_ml": 14.2,
        "centroid_mm": [-45.0, 20.5, 110.0],
        "label_value": 1,
        "second_primary": None,
    },
    "nodes": [
        {
            "id": 3,
            "station": "4R",
            "side": "right",
            "n_category": "N2",
            "suv_max": 6.1,
            "suv_peak": 4.9,
            "suv_mean": 3.8,
            "volume_ml": 1.9,
            "short_axis_mm": 12.0,
            "centroid_mm": [-12.0, 5.0, 95.0],
            "label_value": 3,
            "probability": 0.87,
            "station_confidence": 0.8,
            "direct_extension": False,
            "reason": "4R (right): N2; SUVmax 6.1 > 2.9",
        },
        {
            "id": 4,
            "station": "7",
            "side": "midline",
            "n_category": "N2",
            "suv_max": 4.0,
            "suv_peak": 3.5,
            "suv_mean": 3.0,
            "volume_ml": 1.1,
            "short_axis_mm": 9.0,
            "centroid_mm": [0.0, 15.0, 70.0],
            "label_value": 3,
            "probability": 0.6,
            "reason": "7 (midline): N2",
        },
    ],
    "negative_node_candidates": [
        {
            "id": 6,
            "station": "10L",
            "side": "left",
            "n_category": None,
            "suv_max": 2.0,
            "suv_peak": 1.8,
            "suv_mean": 1.5,
            "volume_ml": 0.5,
            "short_axis_mm": 6.0,
            "centroid_mm": [40.0, 10.0, 80.0],
            "label_value": 0,
            "probability": 0.1,
            "reason": "below the blood-pool criterion",
        }
    ],
    "other_lesions": [
        {
            "id": 7,
            "suv_max": 5.0,
            "volume_ml": 3.0,
            "centroid_mm": [60.0, -20.0, -40.0],
            "label_value": 5,
            "reason": "outside the regional stations (possible M1)",
        }
    ],
    "probabilities": {"N0": 0.052, "N1": 0.0, "N2": 0.948, "N3": 0.0},
    "trace": [
        {"station": "4R", "side": "right", "category": "N2", "rule": "ipsilateral mediastinal"},
        {"station": "7", "side": "midline", "category": "N2", "rule": "subcarinal"},
    ],
    "reasons": [],
    "backends": {"anatomy": "classical", "lesions": "suv"},
    "version": "0.1.0",
    "edition_rules": {"8th": "AJCC/UICC 2017", "9th": "IASLC 2024", "settings": {}},
    "reference_suv": {"blood_pool": 1.8, "liver": 2.3, "threshold": 2.9},
    "inputs": {"ct": "ct.mha", "pet": "pet.mha", "suv_source": "given", "ct_size": [512, 512, 300]},
    "timings_s": {"load": 1.2, "anatomy": 3.1},
}


def broken(**changes) -> dict:
    """A deep copy of VALID with dotted-path changes; a value of ... deletes the key."""
    result = copy.deepcopy(VALID)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        target = result
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        if value is ...:
            del target[last]
        else:
            target[int(last) if last.isdigit() else last] = value
    return result


def test_schema_file_is_draft_2020_12_and_shared_via_resources_link():
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    top = json.loads((PROJECT_ROOT / "resources" / "n-stage.schema.json").read_text())
    assert top == schema
    assert schema["properties"]["nodes"]["items"]["properties"]["station"] == {
        "$ref": "#/$defs/station"
    }
    assert schema["$defs"]["station"]["enum"] == list(STATIONS)


def test_hand_written_example_is_valid():
    assert schema_errors(VALID) == []
    validate_result(VALID)


def test_valid_variants():
    # Not assessable: no primary, NX, null probabilities; NaN measurements written as null.
    not_assessable = broken(
        n_stage="NX",
        n_stage_9th="NX",
        primary_tumor=None,
        nodes=[],
        trace=[],
        probabilities={"N0": None, "N1": None, "N2": None, "N3": None},
        reasons=["no primary tumour found in or next to the lungs"],
    )
    assert schema_errors(not_assessable) == []
    assert schema_errors(broken(nodes__0__suv_peak=None, nodes__0__centroid_mm=[1, None, 2])) == []
    # Tools add fields at the top level.
    assert schema_errors(broken(landmarks={"carina_mm": [0, 0, 0]}, notes=["x"])) == []
    # Negative candidates may lie outside any station and be drawn as "other" (5).
    candidate = broken(negative_node_candidates__0__station=None)
    candidate["negative_node_candidates"][0].update(side=None, label_value=5)
    assert schema_errors(candidate) == []
    # Primary side unknown: a node whose category depends on the side.
    assert schema_errors(broken(nodes__1__n_category="NX", nodes__0__n_category=None)) == []


@pytest.mark.parametrize(
    "changes, path, words",
    [
        ({"n_stage": ...}, "$", "'n_stage' is a required property"),
        ({"trace": ...}, "$", "'trace' is a required property"),
        ({"n_stage": "N4"}, "$.n_stage", "'N4' is not one of"),
        ({"n_stage_9th": "N2c"}, "$.n_stage_9th", "'N2c' is not one of"),
        ({"n_stage_9th": "N3"}, "$.n_stage_9th", "is not one of ['N2a', 'N2b']"),
        ({"n_stage": "N1", "n_stage_9th": "N2a"}, "$.n_stage_9th", "is not one of ['N1']"),
        ({"nodes__0__station": "4X"}, "$.nodes[0].station", "'4X' is not one of"),
        ({"nodes__0__suv_max": "6.1"}, "$.nodes[0].suv_max", "is not of type 'number', 'null'"),
        ({"nodes__0__probability": 1.5}, "$.nodes[0].probability", "greater than the maximum"),
        ({"nodes__0__reason": ...}, "$.nodes[0]", "'reason' is a required property"),
        ({"nodes__0__centroid_mm": [1.0, 2.0]}, "$.nodes[0].centroid_mm", "too short"),
        ({"nodes__0__label_value": 2.5}, "$.nodes[0].label_value", "not of type 'integer'"),
        ({"trace__1__category": "N2a"}, "$.trace[1].category", "'N2a' is not one of"),
        ({"primary_tumor__side": "up"}, "$.primary_tumor.side", "'up' is not one of"),
        ({"primary_tumor": "right"}, "$.primary_tumor", "is not of type 'object', 'null'"),
        ({"probabilities__N3": ...}, "$.probabilities", "'N3' is a required property"),
        ({"probabilities__N2": -0.1}, "$.probabilities.N2", "less than the minimum"),
        ({"version": 1}, "$.version", "is not of type 'string'"),
        ({"backends": {"anatomy": "classical"}}, "$.backends", "'lesions' is a required"),
        ({"reasons": "none"}, "$.reasons", "is not of type 'array'"),
        ({"edition_rules__settings": ...}, "$.edition_rules", "'settings' is a required"),
    ],
)
def test_wrong_results_are_rejected_with_path_and_problem(changes, path, words):
    errors = schema_errors(broken(**changes))
    assert errors, "the schema accepted a wrong result"
    assert any(e.startswith(f"{path}: ") and words in e for e in errors), errors


def test_nan_and_probability_sum_are_caught_beyond_the_schema():
    errors = schema_errors(broken(nodes__0__suv_max=float("nan")))
    assert errors == ["$.nodes[0].suv_max: nan is not valid JSON (write null instead)"]
    errors = schema_errors(broken(probabilities={"N0": 0.5, "N1": 0.0, "N2": 0.2, "N3": 0.0}))
    assert errors == ["$.probabilities: N0..N3 sum to 0.7, not 1"]
    # Rounded to 4 decimals is still fine.
    assert schema_errors(broken(probabilities={"N0": 0.3333, "N1": 0.3333, "N2": 0.3333,
                                               "N3": 0.0})) == []  # fmt: skip


def test_validate_result_raises_one_line_listing_every_problem():
    wrong = broken(n_stage="N4", nodes__0__station="4X", version=...)
    with pytest.raises(ResultSchemaError) as info:
        validate_result(wrong, path="out/n-stage.json")
    error = info.value
    assert isinstance(error, NStageError) and isinstance(error, ValueError)
    assert len(error.errors) == 3
    message = str(error)
    assert "\n" not in message
    assert message.startswith("out/n-stage.json: does not match n-stage.schema.json (3 problems)")
    for part in ("$.n_stage", "$.nodes[0].station", "'version' is a required property"):
        assert part in message


@pytest.mark.parametrize("side", ["left", "right", "unknown"])
@pytest.mark.parametrize("station", STATIONS)
def test_rules_engine_output_fits_the_contract(side, station):
    # Whatever the engine says for any station and side must fit the schema's enums.
    staged = n_category(side, [station, "7"])
    result = copy.deepcopy(VALID)
    result.update(
        n_stage=staged.n_stage,
        n_stage_9th=staged.n_stage_9th,
        trace=staged.to_dict()["trace"],
        reasons=staged.reasons,
        probabilities=category_probabilities(side, [(station, 0.7), ("7", 0.4)]),
        edition_rules=edition_rules(),
        version=__version__,
    )
    assert schema_errors(json.loads(json.dumps(result))) == []
