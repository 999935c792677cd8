"""CT and PET of different patients, studies or frames of reference are refused (issue 19).

Compared where both inputs carry the field: DICOM headers, and MetaImage/NRRD header fields
(as converters from DICOM write them). ``--allow-different-studies`` (run, batch,
inference.py; for Grand Challenge also a Bool input ``allow-different-studies`` in
inputs.json) stages them anyway with a note. Tiny synthetic images: the refusal comes before
any analysis; a run allowed through ends NX (no thorax in view), which is all these need.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from test_io_refusals import (
    CT_STORAGE,
    body_ct,
    body_pet,
    bqml_volume,
    image,
    write,
    write_pet_dicom,
)

from nstage.cli import main as cli_main
from nstage.errors import InputError
from nstage.io import load_study

ROOT = Path(__file__).resolve().parents[1]


def ct_series_like(pet_dir: Path, folder: Path, **fields) -> Path:
    """A CT series on the PET's slices (same patient, study and frame unless ``fields`` say)."""
    folder.mkdir(parents=True)
    series_uid = generate_uid()
    for k, path in enumerate(sorted(pet_dir.iterdir())):
        ds = pydicom.dcmread(path)
        ds.Modality, ds.SOPClassUID = "CT", CT_STORAGE
        ds.file_meta.MediaStorageSOPClassUID = CT_STORAGE
        ds.SeriesInstanceUID = series_uid
        ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
        ds.PixelData = np.full((8, 8), 1064, np.int16).tobytes()
        for key, value in fields.items():
            setattr(ds, key, value)
        ds.save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)
    return folder


def dicom_pair(tmp_path: Path, **ct_fields) -> tuple[Path, Path]:
    pet = write_pet_dicom(tmp_path / "pet", bqml_volume(), PatientID="P-0001",
                          StudyInstanceUID="1.2.826.0.1.3680043.1.1")
    return ct_series_like(pet, tmp_path / "ct", **ct_fields), pet


def run_cli(capsys, *args: str) -> tuple[int, list[str]]:
    code = cli_main(["run", *args])
    return code, [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


@pytest.mark.parametrize(("ct_fields", "expected"), [
    ({"PatientID": "P-0002"}, "from different patients (their PatientID differs)"),
    ({"StudyInstanceUID": "1.2.826.0.1.3680043.1.2"},
     "from different studies (their StudyInstanceUID differs)"),
    ({"FrameOfReferenceUID": "1.2.826.0.1.3680043.1.3"},
     "have different FrameOfReferenceUID: the scanner did not record them in one coordinate "
     "system"),
], ids=["patient", "study", "frame"])
def test_dicom_ct_and_pet_of_different_studies_are_refused(tmp_path, capsys, ct_fields,
                                                           expected):
    ct, pet = dicom_pair(tmp_path, **ct_fields)
    out = tmp_path / "out"
    code, lines = run_cli(capsys, "--ct", str(ct), "--pet", str(pet), "--out", str(out))
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"nstage run: error: {pet}: the PET and the CT ct ")
    assert expected in lines[0] and "--allow-different-studies" in lines[0]
    assert "P-0001" not in lines[0] and "P-0002" not in lines[0]  # identifiers stay private
    assert not out.exists()


def test_allow_different_studies_stages_them_with_a_note(tmp_path, capsys):
    ct, pet = dicom_pair(tmp_path, PatientID="P-0002", FrameOfReferenceUID=generate_uid())
    out = tmp_path / "out"
    code, lines = run_cli(capsys, "--ct", str(ct), "--pet", str(pet), "--out", str(out),
                          "--allow-different-studies", "--no-report")
    assert code == 0, lines
    result = json.loads((out / "n-stage.json").read_text())
    assert ("CT and PET differ in PatientID and FrameOfReferenceUID; staged together because "
            "--allow-different-studies was given") in result["notes"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "images/n-staging-segmentation/output.mha", "n-stage.json"]


def test_same_study_in_dicom_loads_without_a_note(tmp_path):
    ct, pet = dicom_pair(tmp_path)
    study = load_study(ct, pet)
    assert not [n for n in study.meta.notes if "differ" in n]


def _file_pair(folder: Path, ct_meta: dict, pet_meta: dict, ext: str = "mha") -> None:
    ct, pet = image(body_ct()), image(body_pet())
    for img, meta in ((ct, ct_meta), (pet, pet_meta)):
        for key, value in meta.items():
            img.SetMetaData(key, value)
    write(ct, folder / "images" / "ct" / f"ct.{ext}")
    write(pet, folder / "images" / "pet" / f"pet.{ext}")


def test_image_file_header_fields_are_compared(tmp_path):
    # by name, or as the DICOM tag keys that converters write (0020|000d = StudyInstanceUID)
    _file_pair(tmp_path / "a", {"PatientID": "X"}, {"PatientID": "Y"})
    with pytest.raises(InputError, match=r"different patients \(their PatientID differs\)"):
        load_study(tmp_path / "a")
    _file_pair(tmp_path / "b", {"0020|000d": "1.2.3"}, {"0020|000D": "1.2.4"}, ext="nrrd")
    with pytest.raises(InputError, match="different studies"):
        load_study(tmp_path / "b")
    # only one side carries it: nothing to compare
    _file_pair(tmp_path / "c", {"PatientID": "X"}, {})
    load_study(tmp_path / "c")


def test_inference_refuses_and_inputs_json_can_allow(tmp_path):
    inp = tmp_path / "input"
    _file_pair(inp, {"StudyInstanceUID": "1.2.3"}, {"StudyInstanceUID": "1.2.4"})
    out = tmp_path / "output"
    out.mkdir()
    cmd = [sys.executable, str(ROOT / "inference.py"), "--input", str(inp), "--output",
           str(out), "--anatomy", "classical", "--lesions", "suv", "--no-report"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "from different studies (their StudyInstanceUID differs)" in res.stderr
    assert list(out.iterdir()) == []
    # A Bool input socket on the algorithm lets a Grand Challenge user allow it per job.
    (inp / "inputs.json").write_text(json.dumps([
        {"interface": {"slug": "ct", "kind": "Image", "relative_path": "images/ct"}},
        {"interface": {"slug": "pet", "kind": "Image", "relative_path": "images/pet"}},
        {"interface": {"slug": "allow-different-studies", "kind": "Bool",
                       "relative_path": "allow-different-studies.json"}, "value": True},
    ]))
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    notes = json.loads((out / "n-stage.json").read_text())["notes"]
    assert any("differ in StudyInstanceUID" in n for n in notes)
