"""Voxels without a finite value (NaN/inf) never silently change the stage (issue 19).

The phantom of ``test/input`` (a right upper-lobe primary, FDG-avid nodes at 4R and 7, PET on
its own 4 mm grid with count noise) gets NaN blocks in its PET (or CT). Where they lie was
chosen on a rendered axial slice at z = -707 mm (the level of the 4R node, centroid
(-25.7, -28.4, -707.3) mm in ``test/expected_output``):

- over the 4R node: PET voxels i 43..47, j 42..46, k 54..58 (a 20 mm cube around the node's
  centre at PET index (44.8, 44.2, 55.9)). Before issue 19 these became SUV 0 and the node was
  lost: N2a with exit 0. Now: NX, with the region in ``reasons``.
- in the air in front of the chest: PET voxels i 41..50, j 5..10, k 54..58 (x -41 to -3 mm,
  y -185 to -165 mm: the chest wall starts near y -110 mm there). It cannot hide a node: the
  stage stands and ``reasons`` names the region.

Expected results, by hand: the stage without lost data is N2 (8th: 4R is ipsilateral
mediastinal and 7 subcarinal for a right primary, both N2) and N2b (9th: two N2 stations).
Volumes: 5x5x5 PET voxels of 64 mm^3 = 8.0 ml; 10x6x5 = 19.2 ml. z range of voxel centres
k 54..58: -930.7 + 4k = -714.7 .. -698.7 mm, printed rounded as "z -715 to -699 mm".
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nstage.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
TEST_INPUT = ROOT / "test" / "input"

pytestmark = pytest.mark.slow  # each case runs the whole pipeline (~4 s)

OVER_4R = (slice(54, 59), slice(42, 47), slice(43, 48))        # PET array order k, j, i
IN_FRONT_OF_CHEST = (slice(54, 59), slice(5, 11), slice(41, 51))


def study_with_nan(tmp_path: Path, modality: str, box: tuple[slice, slice, slice]) -> Path:
    """A copy of test/input with NaN in ``box`` of the PET (or of a float32 copy of the CT)."""
    inp = tmp_path / "input"
    shutil.copytree(TEST_INPUT, inp)
    path = next((inp / "images" / modality).glob("*.mha"))
    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    arr[box] = np.nan
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(path), True)
    return inp


def test_nan_pet_over_a_node_is_nx_with_the_region_through_inference(tmp_path):
    inp = study_with_nan(tmp_path, "pet", OVER_4R)
    out = tmp_path / "output"
    out.mkdir()
    res = subprocess.run([sys.executable, str(ROOT / "inference.py"), "--input", str(inp),
                          "--output", str(out), "--anatomy", "classical", "--lesions", "suv",
                          "--no-report"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    result = json.loads((out / "n-stage.json").read_text())
    assert (result["n_stage"], result["n_stage_9th"]) == ("NX", "NX")
    assert ("PET has no valid values (NaN/inf) in 8.0 ml at z -715 to -699 mm, inside the "
            "thoracic region that is staged: lesions there cannot be assessed"
            ) in result["reasons"]
    assert all(v is None for v in result["probabilities"].values())
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "images/n-staging-segmentation/output.mha", "n-stage.json"]


def test_nan_pet_outside_the_body_keeps_the_stage_and_says_where(tmp_path, capsys):
    inp = study_with_nan(tmp_path, "pet", IN_FRONT_OF_CHEST)
    out = tmp_path / "out"
    code = cli_main(["run", "--ct", str(inp), "--out", str(out), "--anatomy", "classical",
                     "--lesions", "suv", "--no-report"])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "n-stage.json").read_text())
    assert (result["n_stage"], result["n_stage_9th"]) == ("N2", "N2b")
    assert sorted(n["station"] for n in result["nodes"]) == ["4R", "7"]
    assert ("PET has no valid values (NaN/inf) in 19.2 ml at z -715 to -699 mm, outside the "
            "body or the thoracic region that is staged: it cannot change the N stage"
            ) in result["reasons"]


def test_nan_ct_in_the_mediastinum_is_nx(tmp_path, capsys):
    # CT voxels (1.5 x 1.5 x 3 mm) around the 4R node: i 108..115, j 102..109, k 70..73
    # (x -30 to -20 mm, y -37 to -27 mm, z -710 to -701 mm): 8x8x4 voxels of 6.75 mm^3
    # = 1.7 ml; z of voxel centres -920.4 + 3k = -710.4 .. -701.4 mm.
    inp = study_with_nan(tmp_path, "ct", (slice(70, 74), slice(102, 110), slice(108, 116)))
    out = tmp_path / "out"
    code = cli_main(["run", "--ct", str(inp), "--out", str(out), "--anatomy", "classical",
                     "--lesions", "suv", "--no-report"])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "n-stage.json").read_text())
    assert (result["n_stage"], result["n_stage_9th"]) == ("NX", "NX")
    assert ("CT has no valid values (NaN/inf) in 1.7 ml at z -710 to -701 mm, inside the "
            "thoracic region that is staged: lesions there cannot be assessed"
            ) in result["reasons"]
