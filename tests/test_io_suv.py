"""SUVbw factor from PET header fields (pure function), on real header cases and edge cases."""

from __future__ import annotations

import csv
import datetime as dt
import json

import pytest
from conftest import real_path
from pydicom.dataset import Dataset

from nstage.errors import SUVError, UsageError
from nstage.io import SUVOverride, mbq_to_bq, suv_factor


def _expected_cases():
    folder = real_path("suv-headers")
    with open(folder / "expected-suvbw-factors.csv", newline="") as fh:
        return [(row["case"], float(row["suvbw_factor"])) for row in csv.DictReader(fh)]


def test_real_header_cases_match_expected_factors(real_data):
    cases = _expected_cases()
    assert len(cases) >= 8
    for case, expected in cases:
        instances = json.loads((real_data / "suv-headers" / f"{case}-instances.json").read_text())
        result = suv_factor(instances)
        assert abs(result.factor / expected - 1) < 1e-4, (case, result.factor, expected)


def test_real_post_processed_series_uses_earliest_acquisition(real_data):
    # SeriesTime 13:49:18 is after the acquisition (13:03:48): the series was re-created later.
    instances = json.loads((real_data / "suv-headers"
                            / "CPS_AND_BQML_AC_DT_-_S_DT-instances.json").read_text())
    result = suv_factor(instances)
    assert result.scan_time == dt.datetime(2020, 12, 17, 13, 3, 48, 234000)
    assert any("earliest" in note for note in result.notes)


def _base(**changes):
    header = {
        "Units": "BQML", "DecayCorrection": "START",
        "CorrectedImage": ["ATTN", "DECY", "SCAT"],
        "PatientWeight": 70, "RadionuclideTotalDose": 370e6, "RadionuclideHalfLife": 6586.2,
        "RadiopharmaceuticalStartTime": "090000", "SeriesDate": "20240501",
        "SeriesTime": "100000", "AcquisitionDate": "20240501", "AcquisitionTime": "100000",
    }
    header.update(changes)
    return {k: v for k, v in header.items() if v is not None}


def _manual(weight=70, dose=370e6, uptake_s=3600.0, half=6586.2):
    return weight * 1000 / (dose * 2 ** (-uptake_s / half))


def test_bqml_formula_and_times():
    result = suv_factor(_base())
    assert result.factor == pytest.approx(_manual(), rel=1e-12)
    assert result.uptake_s == 3600
    assert result.decay_correction == "START"


def test_admin_decay_correction_does_not_decay_again():
    result = suv_factor(_base(DecayCorrection="ADMIN"))
    assert result.factor == pytest.approx(70_000 / 370e6)


def test_gml_is_already_suv():
    assert suv_factor(_base(Units="GML")).factor == 1.0


def test_philips_counts_with_activity_scale_factor():
    header = _base(Units="CNTS", PhilipsPETPrivateGroup={"ActivityConcentrationScaleFactor": "2.5"})
    assert suv_factor(header).factor == pytest.approx(2.5 * _manual())


def test_midnight_crossing_injection_the_day_before():
    result = suv_factor(_base(SeriesDate="20240502", SeriesTime="003000",
                              AcquisitionDate="20240502", AcquisitionTime="003000",
                              RadiopharmaceuticalStartTime="233000"))
    assert result.injection_time == dt.datetime(2024, 5, 1, 23, 30)
    assert result.factor == pytest.approx(_manual())
    assert any("midnight" in note for note in result.notes)


def test_start_datetime_wins_over_start_time():
    result = suv_factor(_base(RadiopharmaceuticalStartDateTime="20240501091500.00 "))
    assert result.uptake_s == 45 * 60


def test_ge_private_scan_datetime_used_when_series_time_is_late():
    header = _base(SeriesTime="120000", AcquisitionTime="100000",
                   GEPrivateScanDateTime="20240501095500")
    assert suv_factor(header).scan_time == dt.datetime(2024, 5, 1, 9, 55)


def test_pydicom_dataset_with_sequence_and_philips_private_tags():
    ds = Dataset()
    ds.Units = "CNTS"
    ds.DecayCorrection = "START"
    ds.CorrectedImage = ["ATTN", "DECY"]
    ds.PatientWeight = "70"
    ds.SeriesDate, ds.SeriesTime = "20240501", "100000"
    item = Dataset()
    item.RadionuclideTotalDose = "370000000"
    item.RadionuclideHalfLife = "6586.2"
    item.RadiopharmaceuticalStartTime = "090000"
    ds.RadiopharmaceuticalInformationSequence = [item]
    block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
    block.add_new(0x00, "DS", "0.00042")
    assert suv_factor(ds).factor == pytest.approx(0.00042)
    del ds[0x70531000]
    block.add_new(0x09, "DS", "3.0")
    assert suv_factor(ds).factor == pytest.approx(3.0 * _manual())


def test_ge_private_scan_datetime_in_a_pydicom_dataset():
    ds = Dataset()
    for key, value in _base(SeriesTime="120000", AcquisitionTime="100000").items():
        setattr(ds, key, value)
    block = ds.private_block(0x0009, "GEMS_PETD_01", create=True)
    block.add_new(0x0D, "DT", "20240501095500")
    assert suv_factor(ds).scan_time == dt.datetime(2024, 5, 1, 9, 55)
    # The same offset under another private creator is not GE's scan time.
    other = Dataset()
    for key, value in _base(SeriesTime="120000", AcquisitionTime="100000").items():
        setattr(other, key, value)
    other.private_block(0x0009, "CTP", create=True).add_new(0x0D, "LO", "20240501095500")
    assert suv_factor(other).scan_time == dt.datetime(2024, 5, 1, 10, 0)


def test_dicom_json_model_dict():
    ds = Dataset()
    for key, value in _base().items():
        if key in ("RadionuclideTotalDose", "RadionuclideHalfLife", "RadiopharmaceuticalStartTime"):
            continue
        setattr(ds, key, value)
    item = Dataset()
    item.RadionuclideTotalDose = "370000000"
    item.RadionuclideHalfLife = "6586.2"
    item.RadiopharmaceuticalStartTime = "090000"
    ds.RadiopharmaceuticalInformationSequence = [item]
    as_json = ds.to_json_dict()
    assert suv_factor(as_json).factor == pytest.approx(_manual())


@pytest.mark.parametrize(("changes", "tag"), [
    ({"PatientWeight": None}, "PatientWeight (0010,1030)"),
    ({"PatientWeight": 0}, "PatientWeight (0010,1030)"),
    ({"PatientWeight": 70000}, "grams"),
    ({"PatientWeight": 3}, "PatientWeight"),
    ({"RadionuclideTotalDose": None}, "RadionuclideTotalDose (0018,1074)"),
    ({"RadionuclideTotalDose": 0}, "RadionuclideTotalDose (0018,1074)"),
    ({"RadionuclideTotalDose": 370}, "looks like MBq"),
    ({"RadiopharmaceuticalStartTime": None}, "RadiopharmaceuticalStartTime (0018,1072)"),
    ({"SeriesTime": None, "AcquisitionTime": None}, "SeriesTime (0008,0031)"),
    ({"RadiopharmaceuticalStartDateTime": "20240501110000"}, "before the injection"),
    ({"RadiopharmaceuticalStartDateTime": "20240430090000"}, "uptake time 25.0 h"),
    ({"RadionuclideHalfLife": 109.7, "Radiopharmaceutical": "FDG -- fluorodeoxyglucose"},
     "RadionuclideHalfLife (0018,1075)"),
    ({"RadionuclideHalfLife": 30.0}, "RadionuclideHalfLife (0018,1075)"),
    ({"Units": "PROPCNTS"}, "Units (0054,1001)"),
    ({"Units": "CNTS"}, "(7053,1000)"),
    ({"DecayCorrection": "NONE"}, "DecayCorrection (0054,1102)"),
    ({"CorrectedImage": ["DECY", "SCAT"]}, "CorrectedImage (0028,0051)"),
])
def test_missing_or_implausible_values_are_refused_naming_the_tag(changes, tag):
    with pytest.raises(SUVError) as info:
        suv_factor(_base(**changes))
    message = str(info.value)
    assert tag in message
    assert "\n" not in message


def test_override_replaces_header_values():
    override = SUVOverride.from_cli(80, 300, "091500")
    result = suv_factor(_base(PatientWeight=None, RadionuclideTotalDose=None), override)
    assert result.factor == pytest.approx(_manual(weight=80, dose=300e6, uptake_s=45 * 60))
    assert "override" in result.source


def test_override_helpers_reject_wrong_units():
    assert mbq_to_bq(350) == 350e6
    with pytest.raises(UsageError, match="MBq"):
        SUVOverride.from_mbq(70, 350e6)
    with pytest.raises(UsageError, match="injection-time"):
        SUVOverride.from_cli(70, 350, "nine o'clock")
    with pytest.raises(SUVError, match="grams"):
        SUVOverride(weight_kg=70000)

