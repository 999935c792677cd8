"""Loading real DICOM and image files from ../shared/data/real (skipped when absent)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import real_path

from nstage.cli import main as cli_main
from nstage.errors import SUVError
from nstage.io import find_series, load_study, read_series

pytestmark = pytest.mark.realdata


def _headers(folder):
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]


def _flat_pet(reference: sitk.Image, value: float = 1.0) -> sitk.Image:
    """A uniform SUV image covering ``reference`` (for loading a real CT alone)."""
    pet = sitk.Image([max(2, s // 8) for s in reference.GetSize()], sitk.sitkFloat32) + value
    pet.SetSpacing([sp * sz / max(2, sz // 8) for sp, sz in
                    zip(reference.GetSpacing(), reference.GetSize(), strict=True)])
    pet.SetOrigin(reference.GetOrigin())
    pet.SetDirection(reference.GetDirection())
    return pet


def test_radiogenomics_pet_ct_pair_loads_with_plausible_suv():
    ct_dir = real_path("nsclc-radiogenomics-R01-005", "petct-ct")
    pet_dir = real_path("nsclc-radiogenomics-R01-005", "petct-pet-ac")
    study = load_study(ct_dir, pet_dir)

    # Same frame of reference in the headers, and the loader saw no mismatch.
    ct_for = {h.FrameOfReferenceUID for h in _headers(ct_dir)}
    pet_for = {h.FrameOfReferenceUID for h in _headers(pet_dir)}
    assert ct_for == pet_for and len(ct_for) == 1
    assert not any("FrameOfReference" in n for n in study.meta.notes)

    assert study.meta.pet_units == "BQML"
    assert study.meta.suv_source.startswith("DICOM header (Units BQML, DecayCorrection START)")
    assert "GE" in (study.meta.scanner or "")
    assert study.ct.GetSize() == (512, 512, 10)
    assert study.pet.GetSize() == (128, 128, 10)
    assert study.pet.GetPixelID() == sitk.sitkFloat32

    # Manual SUV of one voxel from its own slice's rescale slope and the header values.
    h = _headers(pet_dir)
    h.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    item = h[0].RadiopharmaceuticalInformationSequence[0]
    uptake = (16 * 3600 + 58 * 60 + 52) - (16 * 3600 + 12 * 60)
    factor = float(h[0].PatientWeight) * 1000 / (
        float(item.RadionuclideTotalDose) * 2 ** (-uptake / float(item.RadionuclideHalfLife)))
    assert study.meta.suv_factor == pytest.approx(factor, rel=1e-9)
    ds = pydicom.dcmread(sorted(pet_dir.glob("*.dcm"))[0])
    slice_suv = ds.pixel_array * float(ds.RescaleSlope) * factor
    k = int(round(study.pet.TransformPhysicalPointToIndex(
        [float(v) for v in ds.ImagePositionPatient])[2]))
    np.testing.assert_allclose(sitk.GetArrayFromImage(study.pet)[k], slice_suv, rtol=1e-5,
                               atol=1e-6)

    # Thigh slab: soft tissue SUV below ~1, SUVmax about 2.
    suv = sitk.GetArrayFromImage(study.pet)
    assert 1.0 < suv.max() < 4.0
    pet_on_ct = sitk.GetArrayFromImage(study.pet_on(study.ct))
    muscle = sitk.GetArrayFromImage(study.ct)
    soft = (muscle > 20) & (muscle < 80)
    assert 0.2 < float(np.median(pet_on_ct[soft])) < 1.5


def test_non_attenuation_corrected_pet_is_refused_naming_corrected_image(tmp_path, capsys):
    ct_dir = real_path("nsclc-radiogenomics-R01-005", "petct-ct")
    noac = real_path("nsclc-radiogenomics-R01-005", "petct-pet-noac")
    with pytest.raises(SUVError, match="CorrectedImage"):
        load_study(ct_dir, noac)
    out = tmp_path / "suv.mha"
    assert cli_main(["suv", str(noac), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "CorrectedImage" in err and "petct-pet-noac" in err
    assert not out.exists()


def test_study_folder_picks_ac_pet_and_matching_ct():
    folder = real_path("nsclc-radiogenomics-R01-005")
    study = load_study(folder)
    assert study.meta.pet_source.endswith("petct-pet-ac")
    # Two CT series (petct-ct and chest-ct-inlet): the one in the PET's frame of reference.
    assert study.meta.ct_source.endswith("petct-ct")
    assert any("PET_BODY_NO_AC" in n and "not used" in n for n in study.meta.notes)


def test_second_radiogenomics_case_converts(tmp_path, capsys):
    pet_dir = real_path("nsclc-radiogenomics-R01-012", "petct-pet-ac")
    out = tmp_path / "r012.mha"
    assert cli_main(["suv", str(pet_dir), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "SUVbw factor" in printed and "injection time 1990-12-21 10:00:00" in printed
    suv = sitk.ReadImage(str(out))
    arr = sitk.GetArrayFromImage(suv)
    assert suv.GetSize() == (128, 128, 10)
    assert 0.5 < arr.max() < 5.0
    study = load_study(real_path("nsclc-radiogenomics-R01-012", "petct-ct"), pet_dir)
    assert study.meta.suv_factor == pytest.approx(0.000186552, rel=1e-4)


def test_lung_pet_ct_dx_ct_from_dicom_has_header_geometry(tmp_path):
    ct_dir = real_path("lung-pet-ct-dx-A0002", "ct")
    headers = _headers(ct_dir)
    headers.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    (series,) = find_series(ct_dir)
    image = read_series(series).image
    assert image.GetSize() == (512, 512, 30)
    row_spacing, col_spacing = (float(v) for v in headers[0].PixelSpacing)
    assert image.GetSpacing()[0] == pytest.approx(col_spacing)
    assert image.GetSpacing()[1] == pytest.approx(row_spacing)
    assert image.GetSpacing()[0] == pytest.approx(0.65, abs=0.01)
    z = [float(h.ImagePositionPatient[2]) for h in headers]
    assert image.GetSpacing()[2] == pytest.approx((z[-1] - z[0]) / 29)
    assert image.GetSpacing()[2] == pytest.approx(8.0, abs=0.1)
    assert image.GetOrigin() == pytest.approx([float(v) for v in headers[0].ImagePositionPatient])
    # HU: stored x slope + intercept; air outside the body about -1000.
    ds = pydicom.dcmread(series.files[0])
    k = z.index(float(ds.ImagePositionPatient[2]))
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image)[k], expected)

    pet_path = tmp_path / "pet.mha"
    sitk.WriteImage(_flat_pet(image), str(pet_path))
    study = load_study(ct_dir, pet_path)
    assert study.ct.GetPixelID() == sitk.sitkInt16
    assert study.ct_geometry.size == (512, 512, 30)


def test_lung_pet_ct_dx_mha_ct_loads(tmp_path):
    ct_path = real_path("lung-pet-ct-dx-A0001", "ct.mha")
    raw = sitk.ReadImage(str(ct_path))
    pet_path = tmp_path / "pet.mha"
    sitk.WriteImage(_flat_pet(raw, 1.2), str(pet_path))
    study = load_study(ct_path, pet_path)
    assert study.ct.GetSize() == (512, 512, 64)
    assert study.ct_geometry.size == tuple(raw.GetSize())
    assert study.ct_geometry.spacing == pytest.approx(raw.GetSpacing())
    assert study.meta.suv_source == "input file declared as SUV"
    hu = sitk.GetArrayViewFromImage(study.ct)
    assert hu.min() <= -900 and hu.max() >= 200
