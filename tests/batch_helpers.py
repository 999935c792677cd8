"""Stand-in runners for batch tests (module level, so spawned workers can import them).

A fake case folder holds ``stage.txt``: ``N2 4R,7`` (category and positive
stations), ``crash`` (an unexpected exception) or ``bad`` (an input error the
user can fix). The runner writes a schema-valid n-stage.json and an overlay file
and appends the case folder's name to ``<case>/../calls.log`` so tests can count
how often a case ran.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from nstage.errors import InputError

PROBS = {"N0": [0.9, 0.05, 0.03, 0.02], "N1": [0.1, 0.8, 0.05, 0.05],
         "N2": [0.05, 0.05, 0.85, 0.05], "N3": [0.02, 0.03, 0.05, 0.9]}


def fake_result(category: str, stations: list[str]) -> dict:
    """A minimal n-stage.json that passes the schema."""
    n9 = {"N2": "N2b" if len(stations) > 1 else "N2a"}.get(category, category)
    nodes = [{"id": i + 2, "station": st, "side": "right", "n_category": category,
              "suv_max": 5.0, "suv_peak": 4.0, "suv_mean": 3.0, "volume_ml": 1.0,
              "short_axis_mm": 10.0, "centroid_mm": [0.0, 0.0, float(i)], "label_value": 3,
              "probability": 0.9, "reason": "test"} for i, st in enumerate(stations)]
    return {
        "n_stage": category, "n_stage_9th": n9, "primary_tumor": None, "nodes": nodes,
        "probabilities": dict(zip(["N0", "N1", "N2", "N3"], PROBS[category], strict=True)),
        "trace": [], "reasons": [], "backends": {"anatomy": "fake", "lesions": "fake"},
        "version": "0.1.0", "edition_rules": {"8th": "x", "9th": "y", "settings": {}},
    }


def fake_runner(ct: Path, pet, out_dir: Path, options) -> dict:
    ct = Path(ct)
    with open(ct.parent / "calls.log", "a") as fh:
        fh.write(ct.name + "\n")
    time.sleep(float(options.get("sleep", 0) if isinstance(options, dict) else 0))
    spec = (ct / "stage.txt").read_text().split()
    if spec[0] == "crash":
        raise RuntimeError("simulated crash in the pipeline")
    if spec[0] == "bad":
        raise InputError("no PET series found", ct, "add the PET")
    stations = spec[1].split(",") if len(spec) > 1 else []
    result = fake_result(spec[0], stations)
    overlay = Path(out_dir) / "images" / "n-staging-segmentation" / "output.mha"
    overlay.parent.mkdir(parents=True, exist_ok=True)
    overlay.write_bytes(b"overlay")
    (Path(out_dir) / "n-stage.json").write_text(json.dumps(result))
    return result


def make_fake_cohort(root: Path, specs: dict[str, str]) -> Path:
    """Case folders ``root/<case_id>/stage.txt``; returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for case_id, spec in specs.items():
        (root / case_id).mkdir()
        (root / case_id / "stage.txt").write_text(spec)
    return root


def calls(root: Path) -> list[str]:
    log = root / "calls.log"
    return log.read_text().split() if log.exists() else []


def slow_runner(ct: Path, pet, out_dir: Path, options) -> dict:
    """Records the call with this process's id, then takes a minute: to be interrupted."""
    ct = Path(ct)
    with open(ct.parent / "calls.log", "a") as fh:
        fh.write(f"{ct.name}\n")
    with open(ct.parent / "pids.log", "a") as fh:
        fh.write(f"{os.getpid()}\n")
    time.sleep(60)
    return fake_runner(ct, pet, out_dir, options)
