"""Plausibility of the anatomical frame (issue 16): checks of anatomy that always holds.

The unit tests build landmark sets by hand (mm LPS, +x patient left, +z superior) for an adult
chest: carina at z 0, trachea up to z 100, lung apices at z 80, main bronchi ending 20-30 mm
below the carina, lungs centred 90 mm either side, heart top 30 mm below the carina.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import real_path

from nstage import plausibility
from nstage.landmarks import Landmark, Landmarks
from nstage.thresholds import load_thresholds

TH = load_thresholds()["plausibility"]


def _lm(name, z, point=None, method="measured", source="test"):
    return Landmark(name=name, z_mm=z, method=method, source=source, point_mm=point)


def _frame(**changes) -> tuple[Landmarks, plausibility.FrameFacts]:
    pts = {
        "carina": _lm("carina", 0.0, (0.0, 0.0, 0.0)),
        "trachea_top": _lm("trachea_top", 100.0, (0.0, -10.0, 100.0)),
        "lung_apex_left": _lm("lung_apex_left", 80.0),
        "lung_apex_right": _lm("lung_apex_right", 80.0),
        "hilum_left": _lm("hilum_left", -30.0, (45.0, 10.0, -30.0)),
        "hilum_right": _lm("hilum_right", -20.0, (-35.0, 10.0, -20.0)),
    }
    facts = {"image_top_z_mm": 150.0, "lung_centre_x_mm": {"left": 90.0, "right": -90.0},
             "heart_top_z_mm": -30.0}
    for key, value in changes.items():
        if key in facts:
            facts[key] = value
        elif value is None:
            pts.pop(key)
        else:
            pts[key] = value
    return Landmarks(points=pts), plausibility.FrameFacts(**facts)


def _checks(**changes) -> list[str]:
    return [f.check for f in plausibility.check_frame(*_frame(**changes), TH)]


def test_a_normal_adult_frame_passes():
    assert _checks() == []


def test_trachea_must_reach_30_mm_above_the_carina_unless_the_scan_starts_lower():
    # The "carina" put in the neck: trachea only 10 mm above it on a scan reaching 150 mm up.
    assert _checks(trachea_top=_lm("trachea_top", 10.0)) == ["trachea_above_carina"]
    # A scan whose top is 20 mm above the carina cannot show 30 mm of trachea: not checked.
    assert _checks(trachea_top=_lm("trachea_top", 15.0), image_top_z_mm=20.0) == []


def test_carina_40_to_120_mm_below_the_apices_when_they_are_in_view():
    assert _checks(lung_apex_left=_lm("lung_apex_left", 20.0)) == ["carina_below_apices"]
    assert _checks(lung_apex_left=_lm("lung_apex_left", 150.0),
                   lung_apex_right=_lm("lung_apex_right", 150.0)) == ["carina_below_apices"]
    # An apex cut by the top of the scan says nothing.
    cut = _lm("lung_apex_left", 20.0, source="top of the left lung (top of the image: ...)")
    assert _checks(lung_apex_left=cut) == []


def test_both_main_bronchi_run_down_from_the_carina():
    up = _lm("hilum_left", 25.0, (45.0, 10.0, 25.0))
    assert _checks(hilum_left=up) == ["bronchi_below_carina"]
    # Sharing the carina's slice (thick slices) is not "above it".
    assert _checks(hilum_right=_lm("hilum_right", 4.0, (-35.0, 10.0, 4.0))) == []


def test_a_lung_on_each_side_of_the_trachea():
    swapped = {"left": -90.0, "right": 90.0}
    assert _checks(lung_centre_x_mm=swapped) == ["lung_each_side"]
    assert _checks(lung_centre_x_mm={"left": 90.0, "right": None}) == ["lung_each_side"]


def test_heart_below_the_carina():
    assert _checks(heart_top_z_mm=40.0) == ["heart_below_carina"]
    assert _checks(heart_top_z_mm=None) == []


def test_without_a_carina_nothing_is_checked_against_it():
    assert _checks(carina=None, lung_centre_x_mm={"left": None, "right": None}) == []


def test_every_failure_says_why():
    lms, facts = _frame(trachea_top=_lm("trachea_top", 10.0), heart_top_z_mm=40.0)
    reasons = [f.reason for f in plausibility.check_frame(lms, facts, TH)]
    assert len(reasons) == 2 and all(r.startswith("implausible anatomy:") for r in reasons)
    assert "trachea only 10 mm above the carina" in reasons[0]


# ------------------------------------------------------------------ a broken frame, end to end

def _flipped(ct: sitk.Image) -> sitk.Image:
    """The CT with its voxels stored head-to-foot but the header unchanged."""
    arr = sitk.GetArrayFromImage(ct)[::-1].copy()
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(ct)
    return out


def _simple_pet(ct: sitk.Image, hot_mm: tuple[float, float, float]) -> sitk.Image:
    """SUV 1 in the body, 0.3 in air-filled lung, 10 in a 30 mm sphere; 4 mm grid."""
    ref = sitk.Image([int(np.ceil(n * s / 4.0)) for n, s in zip(ct.GetSize(), ct.GetSpacing(),
                                                                    strict=True)],
                     sitk.sitkFloat32)
    ref.SetSpacing([4.0, 4.0, 4.0])
    ref.SetOrigin(ct.GetOrigin())
    ref.SetDirection(ct.GetDirection())
    hu = sitk.GetArrayFromImage(sitk.Resample(ct, ref, sitk.Transform(), sitk.sitkLinear, -1000))
    suv = np.where(hu > -400, 1.0, np.where(hu > -950, 0.3, 0.0)).astype(np.float32)
    idx = np.indices(suv.shape).reshape(3, -1)[::-1].T.astype(float)  # i, j, k
    pts = np.asarray(ct.GetOrigin()) + idx * 4.0 @ np.asarray(ct.GetDirection()).reshape(3, 3).T
    near = np.linalg.norm(pts - np.asarray(hot_mm), axis=1) <= 15.0
    suv.reshape(-1)[near] = 10.0
    out = sitk.GetImageFromArray(suv)
    out.CopyInformation(ref)
    return out


def test_a_ct_stored_upside_down_is_refused_with_nx_and_a_reason():
    """A0001's voxels flipped head-to-foot (header unchanged): the classical anatomy then finds
    the lungs' bases where the apices should be and the airway ending in the neck. The study
    must come out NX with the failed checks as reasons, never staged on that frame."""
    from nstage.geometry import canonical
    from nstage.io import read_ct
    from nstage.pipeline import RunOptions, stage_study
    from nstage.study import ImageGeometry, Study, StudyMeta

    ct = _flipped(canonical(read_ct(real_path("lung-pet-ct-dx-A0001", "ct.mha"))[0]))
    # A hot lesion in the (flipped) left lung, where the tumour's mirror image lies.
    pet = _simple_pet(ct, (52.0, 205.0, -353.0))
    study = Study(ct=ct, pet=pet, ct_geometry=ImageGeometry.of(ct),
                  meta=StudyMeta(ct_source="A0001 flipped", pet_source="synthetic",
                                 suv_source="synthetic PET made in SUV"))
    r = stage_study(study, RunOptions(anatomy="classical", lesions="suv", report=False)).result
    assert (r["n_stage"], r["n_stage_9th"]) == ("NX", "NX"), r["reasons"]
    assert any(s.startswith("implausible anatomy:") for s in r["reasons"]), r["reasons"]
    assert r["probabilities"]["N0"] is None


@pytest.mark.parametrize("case", ["a0001", "a0002", "lung1", "medi", "heart"])
def test_every_real_chest_ct_passes(case):
    from test_anatomy_real_frames import _segmented

    _, anatomy, lms = _segmented(case)
    failures = plausibility.check_frame(lms, plausibility.frame_facts(anatomy), TH)
    assert failures == [], failures
