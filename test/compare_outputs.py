"""Compare an algorithm output folder with test/expected_output.

N categories and stations must match exactly; SUV values within a relative tolerance;
the overlay must have the same geometry and label values at the same voxels (up to a
small fraction). Prints what differs and exits 1 on any difference.
Usage: python compare_outputs.py EXPECTED_DIR ACTUAL_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SUV_RTOL = 0.05
OVERLAY = Path("images") / "n-staging-segmentation" / "output.mha"


def compare(expected_dir: Path, actual_dir: Path) -> list[str]:
    problems: list[str] = []
    exp = json.loads((expected_dir / "n-stage.json").read_text())
    act_path = actual_dir / "n-stage.json"
    if not act_path.exists():
        return [f"missing output {act_path}"]
    act = json.loads(act_path.read_text())
    for key in ("n_stage", "n_stage_9th"):
        if exp[key] != act[key]:
            problems.append(f"{key}: expected {exp[key]}, got {act[key]}")
    exp_st = sorted((n["station"], n["n_category"]) for n in exp["nodes"])
    act_st = sorted((n["station"], n["n_category"]) for n in act["nodes"])
    if exp_st != act_st:
        problems.append(f"nodes: expected {exp_st}, got {act_st}")
    else:
        by_station = {n["station"]: n for n in act["nodes"]}
        for n in exp["nodes"]:
            a = by_station[n["station"]]
            for k in ("suv_max", "suv_peak"):
                if n[k] is not None and abs(a[k] - n[k]) > SUV_RTOL * abs(n[k]):
                    problems.append(f"node {n['station']} {k}: expected {n[k]}, got {a[k]}")
    ep, ap = exp.get("primary_tumor"), act.get("primary_tumor")
    if (ep is None) != (ap is None):
        problems.append(f"primary_tumor: expected {ep}, got {ap}")
    elif ep is not None:
        if ep["side"] != ap["side"]:
            problems.append(f"primary side: expected {ep['side']}, got {ap['side']}")
        if abs(ap["suv_max"] - ep["suv_max"]) > SUV_RTOL * ep["suv_max"]:
            problems.append(f"primary suv_max: expected {ep['suv_max']}, got {ap['suv_max']}")
    problems += _compare_overlay(expected_dir / OVERLAY, actual_dir / OVERLAY)
    return problems


def _compare_overlay(expected: Path, actual: Path) -> list[str]:
    import numpy as np
    import SimpleITK as sitk

    if not actual.exists():
        return [f"missing output {actual}"]
    e, a = sitk.ReadImage(str(expected)), sitk.ReadImage(str(actual))
    problems = []
    if a.GetPixelID() != sitk.sitkUInt8:
        problems.append(f"overlay pixel type {a.GetPixelIDTypeAsString()}, expected uint8")
    for what in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        if not np.allclose(getattr(e, what)(), getattr(a, what)(), atol=1e-4):
            problems.append(f"overlay {what[3:].lower()} differs")
    if problems:
        return problems
    ea, aa = sitk.GetArrayViewFromImage(e), sitk.GetArrayViewFromImage(a)
    if set(np.unique(ea).tolist()) != set(np.unique(aa).tolist()):
        problems.append(f"overlay labels {sorted(np.unique(aa).tolist())}, "
                        f"expected {sorted(np.unique(ea).tolist())}")
    fg = (ea > 0) | (aa > 0)
    if fg.any():
        disagree = float((ea[fg] != aa[fg]).mean())
        if disagree > 0.05:
            problems.append(f"overlay differs in {disagree:.1%} of labelled voxels")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    problems = compare(Path(argv[0]), Path(argv[1]))
    if problems:
        print("output differs from the expected output:")
        for p in problems:
            print(f"  - {p}")
        return 1
    print("output matches the expected output")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
