"""Every input refusal: exit code 2 through the CLI, a one-line message naming the file and the
problem, and no output written. Small synthetic images and DICOM series in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from nstage.cli import main as cli_main
from nstage.errors import GeometryError, InputError, SUVError
from nstage.io import load_study

PET_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


# --------------------------------------------------------------------------- builders


def image(array, spacing=(4.0, 4.0, 4.0), origin=(0.0, 0.0, 0.0), direction=None):
    img = sitk.GetImageFromArray(np.asarray(array))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


def body_pet(shape=(6, 10, 10), body=1.0, hot=4.0):
    arr = np.zeros(shape, np.float32)
    arr[1:-1, 2:-2, 2:-2] = body
    arr[3, 5, 5] = hot
    return arr


def body_ct(shape=(6, 10, 10)):
    arr = np.full(shape, -1000, np.int16)
    arr[1:-1, 2:-2, 2:-2] = 40
    return arr


def write(img, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def gc_folder(root: Path, ct=None, pet=None) -> Path:
    if ct is not None:
        write(ct, root / "images" / "ct" / "ct.mha")
    if pet is not None:
        write(pet, root / "images" / "pet" / "pet.mha")
    return root


def write_pet_dicom(folder: Path, bqml: np.ndarray, *, drop=(), iop=(1, 0, 0, 0, 1, 0),
                    origin=(0.0, 0.0, 0.0), spacing=(4.0, 4.0, 4.0), **fields) -> Path:
    """A PET series in Bq/ml, one file per slice, own slope per slice, full SUV header.

    ``drop`` names header keywords to leave out; ``fields`` override header values.
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid, for_uid = generate_uid(), generate_uid()
    row, col = np.array(iop[:3], float), np.array(iop[3:], float)
    normal = np.cross(row, col)
    header = {
        "PatientWeight": "70", "Units": "BQML", "DecayCorrection": "START",
        "CorrectedImage": ["ATTN", "DECY"], "SeriesDate": "20240501", "SeriesTime": "100000",
        "AcquisitionDate": "20240501", "AcquisitionTime": "100000",
        "SeriesDescription": "PET AC",
    }
    header.update(fields)
    radio = {"RadionuclideTotalDose": "370000000", "RadionuclideHalfLife": "6586.2",
             "RadiopharmaceuticalStartTime": "090000"}
    for key in list(radio):
        if key in fields:
            radio[key] = fields[key]
            header.pop(key)
    for k, plane in enumerate(bqml):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = PET_STORAGE
        sop = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.SOPClassUID, ds.SOPInstanceUID = PET_STORAGE, sop
        ds.Modality = "PT"
        ds.SeriesInstanceUID, ds.FrameOfReferenceUID = series_uid, for_uid
        ds.InstanceNumber = k + 1
        pos = np.array(origin) + k * spacing[2] * normal
        ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
        ds.ImageOrientationPatient = [str(v) for v in iop]
        ds.PixelSpacing = [str(spacing[1]), str(spacing[0])]
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        slope = max(float(plane.max()), 1.0) / 30000.0
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.8g}", "0"
        stored = np.round(plane / float(ds.RescaleSlope)).astype(np.int16)
        ds.PixelData = stored.tobytes()
        for key, value in header.items():
            if key not in drop:
                setattr(ds, key, value)
        item = Dataset()
        for key, value in radio.items():
            if key not in drop:
                setattr(item, key, value)
        ds.RadiopharmaceuticalInformationSequence = [item]
        ds.save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)
    return folder


def bqml_volume(shape=(5, 8, 8)):
    arr = np.zeros(shape, np.float64)
    arr[:, 2:-2, 2:-2] = 5000.0
    arr[2, 4, 4] = 20000.0
    return arr


def run_refused(capsys, args, out: Path, *expected: str) -> str:
    """Run the CLI, expect exit 2, one stderr line containing ``expected``, no output file."""
    code = cli_main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert not out.exists()
    if out.parent.exists():  # no temp file left behind either
        assert not any(p.name.startswith(f".{out.name}") for p in out.parent.iterdir())
    return lines[0]


# --------------------------------------------------------------------------- refusals


def test_pet_not_3d_is_refused(tmp_path, capsys):
    ct = write(image(body_ct()), tmp_path / "ct.mha")
    flat = write(image(body_pet()[3], spacing=(4.0, 4.0)), tmp_path / "pet2d.mha")
    out = tmp_path / "out" / "suv.mha"
    run_refused(capsys, ["suv", str(flat), "--ct", str(ct), "-o", str(out)], out,
                "pet2d.mha", "2D", "expected a 3D volume")
    series = sitk.JoinSeries([image(body_pet()), image(body_pet())])
    four = write(series, tmp_path / "pet4d.nii.gz")
    run_refused(capsys, ["suv", str(four), "--ct", str(ct), "-o", str(out)], out,
                "pet4d.nii.gz", "4D")
    with pytest.raises(GeometryError):
        load_study(ct, four)


def test_nan_only_pet_is_refused(tmp_path, capsys):
    ct = write(image(body_ct()), tmp_path / "ct.mha")
    pet = write(image(np.full((6, 10, 10), np.nan, np.float32)), tmp_path / "nan.mha")
    out = tmp_path / "suv.mha"
    run_refused(capsys, ["suv", str(pet), "--ct", str(ct), "-o", str(out)], out,
                "nan.mha", "only NaN/inf")


def test_some_nan_voxels_are_zero_for_the_analysis_and_kept_as_a_region(tmp_path):
    ct = write(image(body_ct()), tmp_path / "ct.mha")
    arr = body_pet()
    arr[0, 0, :3] = np.nan
    pet = write(image(arr), tmp_path / "pet.mha")
    study = load_study(ct, pet)
    assert np.isfinite(sitk.GetArrayViewFromImage(study.pet)).all()
    assert sitk.GetArrayViewFromImage(study.pet)[0, 0, :3].tolist() == [0, 0, 0]
    assert any("3 voxels" in n and "NaN/inf" in n for n in study.meta.notes)
    # The region is kept: the pipeline decides whether it hides what is staged.
    assert set(study.invalid) == {"PET"}
    mask = sitk.GetArrayViewFromImage(study.invalid["PET"])
    assert mask.sum() == 3 and mask[0, 0, :3].all()


def test_pet_and_ct_that_do_not_overlap_are_refused(tmp_path, capsys):
    ct = write(image(body_ct()), tmp_path / "ct.mha")
    pet = write(image(body_pet(), origin=(0.0, 0.0, 500.0)), tmp_path / "far.mha")
    out = tmp_path / "suv.mha"
    run_refused(capsys, ["suv", str(pet), "--ct", str(ct), "-o", str(out)], out,
                "far.mha", "do not overlap")


def test_two_ct_files_in_gc_folder_are_refused(tmp_path, capsys):
    root = gc_folder(tmp_path / "input", image(body_ct()), image(body_pet()))
    write(image(body_ct()), root / "images" / "ct" / "second.mha")
    out = tmp_path / "suv.mha"
    run_refused(capsys, ["suv", str(root), "-o", str(out)], out,
                str(root / "images" / "ct"), "2 CT images", "exactly one")


def test_missing_pet_folder_in_gc_layout_is_refused(tmp_path, capsys):
    root = gc_folder(tmp_path / "input", ct=image(body_ct()))
    out = tmp_path / "suv.mha"
    run_refused(capsys, ["suv", str(root), "-o", str(out)], out,
                str(root), "images/pet/ is missing")


def test_gc_folder_with_inputs_json_loads(tmp_path):
    root = tmp_path / "input"
    write(image(body_ct()), root / "images" / "ct-image" / "a1b2.mha")
    write(image(body_pet()), root / "images" / "pet-image" / "c3d4.mha")
    (root / "inputs.json").write_text(json.dumps([
        {"interface": {"slug": "ct-image", "kind": "Image", "relative_path": "images/ct-image"}},
        {"interface": {"slug": "pet-image", "kind": "Image",
                       "relative_path": "images/pet-image"}},
    ]))
    study = load_study(root)
    assert study.meta.ct_source.endswith("a1b2.mha")
    assert study.meta.suv_source == "input declared as SUV (Grand Challenge socket)"


def test_bq_per_ml_pet_declared_as_suv_is_refused(tmp_path, capsys):
    root = gc_folder(tmp_path / "input", image(body_ct()), image(body_pet(body=5200.0,
                                                                         hot=31000.0)))
    out = tmp_path / "suv.mha"
    line = run_refused(capsys, ["suv", str(root), "-o", str(out)], out,
                       "pet.mha", "does not look like SUV", "nstage suv")
    assert "--weight" in line
    with pytest.raises(SUVError):
        load_study(root)


def test_bq_per_ml_file_converts_with_explicit_weight_and_dose(tmp_path, capsys):
    ct = write(image(body_ct()), tmp_path / "ct.mha")
    pet = write(image(body_pet(body=5000.0, hot=20000.0)), tmp_path / "bqml.mha")
    out = tmp_path / "suv.mha"
    code = cli_main(["suv", str(pet), "--ct", str(ct), "-o", str(out), "--weight", "70",
                     "--dose", "350"])
    assert code == 0, capsys.readouterr().err
    suv = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert suv.max() == pytest.approx(20000.0 * 70_000 / 350e6, rel=1e-5)
    # Only one of the two times cannot decay-correct: refused.
    out2 = tmp_path / "suv2.mha"
    run_refused(capsys, ["suv", str(pet), "-o", str(out2), "--weight", "70", "--dose", "350",
                         "--injection-time", "090000"], out2, "bqml.mha", "--scan-time")


@pytest.mark.parametrize(("drop", "tag"), [
    (("PatientWeight",), "PatientWeight (0010,1030)"),
    (("RadionuclideTotalDose",), "RadionuclideTotalDose (0018,1074)"),
    (("RadiopharmaceuticalStartTime",), "RadiopharmaceuticalStartTime (0018,1072)"),
    (("SeriesTime", "AcquisitionTime"), "SeriesTime (0008,0031)"),
])
def test_dicom_pet_missing_header_values_is_refused(tmp_path, capsys, drop, tag):
    folder = write_pet_dicom(tmp_path / "pet", bqml_volume(), drop=drop)
    out = tmp_path / "suv.mha"
    run_refused(capsys, ["suv", str(folder), "-o", str(out)], out, str(folder), tag)


def test_dicom_pet_missing_weight_converts_with_override(tmp_path, capsys):
    folder = write_pet_dicom(tmp_path / "pet", bqml_volume(), drop=("PatientWeight",))
    out = tmp_path / "suv.mha"
    assert cli_main(["suv", str(folder), "-o", str(out), "--weight", "70"]) == 0
    printed = capsys.readouterr().out
    assert "weight 70 kg" in printed and "uptake 60.0 min" in printed
    expected = 20000.0 * 70_000 / (370e6 * 2 ** (-3600 / 6586.2))
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(out))).max() == pytest.approx(
        expected, rel=1e-3)


def test_dicom_pet_without_attenuation_correction_is_refused(tmp_path, capsys):
    folder = write_pet_dicom(tmp_path / "pet", bqml_volume(), CorrectedImage=["DECY", "NORM"])
    out = tmp_path / "suv.mha"
    run_refused(capsys, ["suv", str(folder), "-o", str(out)], out,
                "CorrectedImage (0028,0051)", "without ATTN")


def test_dose_in_bq_given_as_mbq_is_a_usage_error(tmp_path, capsys):
    folder = write_pet_dicom(tmp_path / "pet", bqml_volume())
    out = tmp_path / "suv.mha"
    run_refused(capsys, ["suv", str(folder), "-o", str(out), "--dose", "370000000"], out,
                "MBq")


def test_single_ct_file_without_pet_is_an_input_error(tmp_path):
    ct = write(image(body_ct()), tmp_path / "ct.mha")
    with pytest.raises(InputError, match="no PET"):
        load_study(ct)


def test_unreadable_file_is_an_input_error(tmp_path, capsys):
    ct = write(image(body_ct()), tmp_path / "ct.mha")
    bad = tmp_path / "broken.mha"
    bad.write_text("not an image")
    out = tmp_path / "suv.mha"
    run_refused(capsys, ["suv", str(bad), "--ct", str(ct), "-o", str(out)], out,
                "broken.mha", "cannot be read")


def test_dicom_study_folder_with_dicom_pet_and_ct(tmp_path):
    # PET written by this module; CT series in the same frame of reference as a second series.
    pet_dir = write_pet_dicom(tmp_path / "study" / "pet", bqml_volume())
    ct_dir = tmp_path / "study" / "ct"
    ct_dir.mkdir()
    for_uid = pydicom.dcmread(next(pet_dir.iterdir())).FrameOfReferenceUID
    series_uid = generate_uid()
    for k in range(5):
        ds = pydicom.dcmread(pet_dir / f"{k:03d}.dcm")
        ds.Modality, ds.SOPClassUID = "CT", CT_STORAGE
        ds.file_meta.MediaStorageSOPClassUID = CT_STORAGE
        ds.SeriesInstanceUID, ds.FrameOfReferenceUID = series_uid, for_uid
        ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
        ds.PixelData = np.full((8, 8), 1064, np.int16).tobytes()
        ds.save_as(ct_dir / f"{k:03d}.dcm", enforce_file_format=True)
    study = load_study(tmp_path / "study")
    assert study.meta.ct_source.endswith("ct") and study.meta.pet_source.endswith("pet")
    assert sitk.GetArrayViewFromImage(study.ct).max() == 40
    assert study.meta.pet_units == "BQML"


def test_suv_conversion_keeps_nan_voxels_as_nan(tmp_path, capsys):
    """``nstage suv`` must not turn missing PET data into SUV 0: a later ``nstage run`` on the
    converted file would then not see the region at all."""
    arr = body_pet(body=5000.0, hot=20000.0)
    arr[0, 0, :3] = np.nan
    pet = write(image(arr), tmp_path / "bqml.mha")
    out = tmp_path / "suv.mha"
    assert cli_main(["suv", str(pet), "-o", str(out), "--weight", "70", "--dose", "350"]) == 0
    assert "3 voxels hold no valid value (NaN/inf); kept as NaN" in capsys.readouterr().out
    suv = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert np.isnan(suv[0, 0, :3]).all() and np.isfinite(suv[1:]).all()
