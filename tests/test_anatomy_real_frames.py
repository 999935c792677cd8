"""Classical anatomy on every real chest CT in ../shared/data/real (issue 16).

Each expected value below was read by eye on rendered slices of the CT itself (axial slices
at the native slice positions, soft-tissue and lung windows, zoomed on the trachea or the
aorta; sagittal and coronal slices through them), never computed by the code under test. z is
mm LPS (+z superior); x is mm, +x the patient's LEFT.

Carina: the level between the last slice where the tracheal lumen is one section and the first
where two main-bronchus lumens are separate (a carinal spur counts as the first of two).
Aortic arch top: the first slice from above showing the arch as a band (above it only the
round sections of its branches). Arch bottom: the first slice from above where the aorta
shows two sections (ascending in front, descending beside the spine).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import real_path

from nstage.anatomy.classical import segment_classical
from nstage.anatomy.crop import thorax_box
from nstage.geometry import crop
from nstage.landmarks import find

pytestmark = pytest.mark.realdata


@dataclass(frozen=True)
class Reading:
    """What was read on the rendered slices (None: not in view)."""

    parts: tuple[str, ...]
    carina_z: float | None
    arch_top_z: float | None
    arch_bottom_z: float | None
    how: str


READINGS = {
    # Lung-PET-CT-Dx A0001, 5 mm slices, no contrast. Axial -244: one tracheal lumen with the
    # carinal spur starting at its back; -249: two lumens (right x -20..-8, left -5..5).
    # Arch: -199 shows only the three branch vessels round the trachea; -204 the arch band from
    # (x -10, y 115) to (20, 175); -224 still one band; -229 ascending and descending joined by
    # a narrow bridge, -234 two round sections. Arch 20-30 mm tall.
    "a0001": Reading(("lung-pet-ct-dx-A0001", "ct.mha"), -246.5, -204.0, -231.5,
                     "axial -244/-249; arch -199/-204 and -229/-234"),
    # Lung-PET-CT-Dx A0002, 8 mm slices, no contrast. 240: one lumen (x -28..-2), 232: two
    # (right -28..-18, left -10..3). Arch: 272 only branches round the trachea, 264 and 256 the
    # arch band from (x -35, y -160) to (20, -115); 248 the anterior and posterior parts barely
    # touching, 240 two separate sections (ascending (-20, -155), descending (18, -112)).
    "a0002": Reading(("lung-pet-ct-dx-A0002", "ct"), 236.0, 268.0, 244.0,
                     "axial 240/232; arch 272/264 and 248/240"),
    # NSCLC-Radiomics LUNG1-002, 3 mm slices, contrast (late phase). 49.6: one lumen with a
    # waist at x -3; 46.6: two sections (right -27..-7, left 3..25). Arch: 91.6 branches only,
    # 88.6 a partial-volume band at (20..35, -20..5), 85.6 the full band; 67.6 one band with a
    # notch, 64.6 two sections. The planning CT's own notes (PROVENANCE.md) give carina 51 and
    # arch 66-90, which agrees.
    "lung1": Reading(("nsclc-radiomics-LUNG1-002", "ct.mha"), 48.0, 88.0, 66.0,
                     "axial 49.6/46.6; arch 91.6/88.6 and 67.6/64.6"),
    # TotalSegmentator mediastinum crop, 1.5 mm, arterial contrast. 723.2: one elongated lumen;
    # 720.2: two lumens joined by the carinal spur; 717.2: two. Arch (lumen > 250 HU): the
    # arch's lumen first at 765.2 (a 54 mm2 section at y -136..-125), one section down to 735.2,
    # two from 733.7 (TotalSegmentator's aorta mask on this crop shows the same: one section
    # 766.7-735.2, two from 733.7). NB issue 16 names 747 for the arch bottom; at 747 the lumen
    # is one 50 mm long section (y -173..-109) on every slice from 750 to 735.
    "medi": Reading(("totalsegmentator-crops", "mediastinum-contrast-ct-1.5mm.nii.gz"),
                    720.5, 765.0, 734.5, "axial 723.2/720.2/717.2; lumen sections 766-733"),
    # TotalSegmentator heart crop: the same patient and frame as the mediastinum crop (same x/y
    # origin, same carina slices 723.2/720.2/717.2); its top (742.7) cuts through the arch, so
    # only the arch bottom is in view.
    "heart": Reading(("totalsegmentator-crops", "heart-contrast-ct-1.5mm.nii.gz"),
                     720.5, None, 734.5, "as the mediastinum crop"),
    # NSCLC Radiogenomics R01-005 thoracic inlet, 10 slices at 1 mm: the trachea (centre x 0,
    # y -205) on every slice, lungs and carina below the slab.
    "inlet": Reading(("nsclc-radiogenomics-R01-005", "chest-ct-inlet"), None, None, None,
                     "trachea on all 10 slices"),
}
CARINA_TOL_MM = 10.0
ARCH_BOTTOM_TOL_MM = 6.0
ARCH_TOP_TOL_MM = 10.0

_CACHE: dict = {}


def _segmented(case: str):
    """(work CT, anatomy, landmarks) of one real CT, segmented once per test session."""
    if case not in _CACHE:
        from nstage.commands.anatomy import read_ct

        ct, _ = read_ct(real_path(*READINGS[case].parts))
        work = crop(ct, thorax_box(ct))
        anatomy = segment_classical(work)
        _CACHE[case] = (work, anatomy, find(anatomy))
    return _CACHE[case]


@pytest.mark.parametrize("case", sorted(READINGS))
def test_carina_within_10_mm_of_the_reading_and_trachea_above_it(case):
    _, anatomy, lms = _segmented(case)
    reading = READINGS[case]
    carina = lms.get("carina")
    if reading.carina_z is None:
        assert carina is None, (case, carina)
        assert lms.trachea, "the trachea must be found on the inlet slab"
        return
    assert carina is not None and carina.method == "measured", anatomy.notes + lms.notes
    assert abs(carina.z_mm - reading.carina_z) <= CARINA_TOL_MM, (case, carina.z_mm, reading)
    above = [t for t in lms.trachea if t.z_mm > carina.z_mm]
    assert above, "no trachea above the carina"
    top = lms.get("trachea_top").z_mm
    image_top = float(anatomy.reference.TransformIndexToPhysicalPoint(
        (0, 0, anatomy.reference.GetSize()[2] - 1))[2])
    assert top - carina.z_mm >= min(30.0, image_top - carina.z_mm - 5.0), (case, top)
    # The tracheal centre lies close above the carina point (a tube, not a lung).
    t = min(above, key=lambda lv: lv.z_mm)
    assert abs(t.centre_x_mm - carina.point_mm[0]) < 15.0, (case, t, carina.point_mm)


@pytest.mark.parametrize("case", sorted(READINGS))
def test_aortic_arch_top_and_bottom_where_in_view(case):
    _, anatomy, lms = _segmented(case)
    reading = READINGS[case]
    if reading.arch_bottom_z is None:
        return
    bottom = lms.get("aortic_arch_bottom")
    assert bottom is not None and bottom.method == "measured", (case, bottom, anatomy.notes)
    assert abs(bottom.z_mm - reading.arch_bottom_z) <= ARCH_BOTTOM_TOL_MM, (case, bottom.z_mm)
    top = lms.get("aortic_arch_top")
    # Where the scan cuts through the arch its top is not in view: bounded from below only.
    assert top is not None and top.method == ("measured" if reading.arch_top_z is not None
                                              else "approximated"), (case, top)
    if reading.arch_top_z is not None:
        assert abs(top.z_mm - reading.arch_top_z) <= ARCH_TOP_TOL_MM, (case, top.z_mm)
        assert top.z_mm - bottom.z_mm >= 10.0  # two sections below the arch, one over it


@pytest.mark.parametrize("case", ["a0001", "a0002", "lung1", "medi"])
def test_left_tracheal_border_above_the_carina_is_the_trachea_not_the_bronchus(case):
    """Just above the carina the airway section flares into the left main bronchus; the left
    border used for 2R/4R vs 2L/4L must stay on the tracheal wall. Read on zoomed axial
    slices 15-25 mm above the carina, the left edge of the tracheal lumen: A0001 x -3.5 at
    -229 (-2 at -239, where it starts to flare); A0002 -12 at 256, -8 at 248; LUNG1-002 +6 at
    73.6, +8 at 64.6; mediastinum crop +2 at 741.2, +4 at 733.7."""
    walls = {"a0001": -3.0, "a0002": -10.0, "lung1": 7.0, "medi": 3.0}
    _, _, lms = _segmented(case)
    cz = lms.get("carina").z_mm
    near = [t for t in lms.trachea if 0.0 <= t.z_mm - cz <= 15.0]
    assert near
    for t in near:
        assert t.left_border_x_mm <= walls[case] + 5.0, (case, t)
        assert t.right_border_x_mm < t.centre_x_mm < t.left_border_x_mm


@pytest.mark.parametrize("case", ["a0001", "a0002", "lung1", "medi"])
def test_liver_found_under_the_right_hemidiaphragm(case):
    """Each of these shows the upper abdomen (read on coronal slices): the liver lies under the
    right lung's base, to the patient's right."""
    work, anatomy, lms = _segmented(case)
    liver = anatomy.mask("liver")
    assert liver.sum() * np.prod(work.GetSpacing()) / 1000.0 > 150.0, anatomy.notes
    kk, _, ii = np.nonzero(liver)
    x = work.GetOrigin()[0] + work.GetSpacing()[0] * ii.mean()
    z_top = work.GetOrigin()[2] + work.GetSpacing()[2] * kk.max()
    assert x < lms.get("carina").point_mm[0], "liver on the patient's right"
    assert z_top < lms.get("carina").z_mm - 60.0, "liver below the diaphragm"


def test_lung1_left_dome_is_where_the_lung_rests_on_the_diaphragm_not_on_the_heart():
    """Read on sagittal slices of LUNG1-002 at x = +60 and +85: the posterior left lung rests
    on the hemidiaphragm at z about -45 to -50, while its anterior part lies over the heart,
    whose top is at about z +5. The dome is the former (stations: below it is abdominal);
    taking the lung over the heart put it at +8, 55 mm too high."""
    _, _, lms = _segmented("lung1")
    dome = lms.get("diaphragm_left")
    assert dome is not None and dome.method == "measured"
    assert -57.0 <= dome.z_mm <= -37.0, dome


def test_liver_gives_the_percist_liver_reference():
    """lesions.suv.reference_regions measures the liver sphere on the classical liver."""
    from nstage.geometry import spacing_zyx
    from nstage.lesions.suv import reference_regions
    from nstage.thresholds import load_thresholds

    work, anatomy, _ = _segmented("lung1")
    hu = sitk.GetArrayFromImage(work)
    suv = np.where(anatomy.mask("liver"), 2.3, 1.0).astype(np.float32)
    notes: list[str] = []
    ref = reference_regions(suv, hu, anatomy, spacing_zyx(work),
                            load_thresholds()["detection"], notes)
    assert "liver" in ref and abs(ref["liver"] - 2.3) < 0.05, (ref, notes)


# ------------------------------------------------------------------ LUNG1-002 contours

def _on_work(case_file: str, work: sitk.Image) -> np.ndarray:
    m = sitk.ReadImage(str(real_path("nsclc-radiomics-LUNG1-002", case_file)))
    return sitk.GetArrayFromImage(sitk.Resample(m, work, sitk.Transform(),
                                                sitk.sitkNearestNeighbor, 0)) > 0


def test_lung1_heart_against_the_planning_contour():
    """Dice >= 0.75 with the radiotherapy 'Heart' contour and at most 300 ml outside it: the
    heart is not in the subcarinal fat, the hila, the liver or the tumour."""
    work, anatomy, _ = _segmented("lung1")
    ref = _on_work("heart.mha", work)
    heart = anatomy.mask("heart")
    ml = float(np.prod(work.GetSpacing())) / 1000.0
    dice = 2.0 * (heart & ref).sum() / (heart.sum() + ref.sum())
    outside = (heart & ~ref).sum() * ml
    assert dice >= 0.75 and outside <= 300.0, (dice, outside)


def test_lung1_tumour_against_the_gtv_contour():
    """The right lower-lobe tumour (GTV-1, 359 ml, against the heart and the diaphragm) is
    part of the right lung's mask, not of the heart, liver, left lung or aorta. Read on the
    slices: the GTV's upper and anterior part is surrounded by aerated lung; its lower,
    posterior part lies on collapsed lung (partly aerated, -400 to -100 HU), which neither
    the lung nor the mass masks take."""
    work, anatomy, _ = _segmented("lung1")
    gtv = _on_work("gtv1.mha", work)
    frac = {n: float((gtv & anatomy.mask(n)).sum() / gtv.sum())
            for n in ("lung_right", "lung_left", "heart", "liver", "aorta", "mediastinum")}
    assert frac["lung_right"] >= 0.5, frac
    assert frac["lung_left"] == 0.0 and frac["aorta"] == 0.0, frac
    assert frac["heart"] <= 0.02 and frac["liver"] <= 0.02, frac
    assert frac["mediastinum"] <= 0.2, frac


# Subcarinal fat, read on axial slices 10-12 mm below the carina between the two main
# bronchi, in front of the oesophagus (station 7 nodes lie here): LUNG1-002 z 37.6 between
# the right (-25, 5) and left (20..40, 5) bronchi; A0001 z -259 between the right (-25, 163)
# and left (10..35, 170) bronchi; A0002 z 220 (see tests/test_e2e_real_ct.py, SUBCARINAL).
SUBCARINAL_MM = {"lung1": (-8.0, 8.0, 37.6), "a0001": (-5.0, 172.0, -259.0),
                 "a0002": (-4.0, -106.0, 220.0)}


@pytest.mark.parametrize("case", sorted(SUBCARINAL_MM))
def test_heart_and_vessels_stay_out_of_the_subcarinal_fat_and_the_hila(case):
    from scipy import ndimage as ndi

    from nstage.geometry import mm_to_index

    work, anatomy, lms = _segmented(case)
    k, j, i = (int(round(v)) for v in mm_to_index(work, SUBCARINAL_MM[case]))
    organs = anatomy.mask("heart", "aorta", "liver", "lung_left", "lung_right")
    r = int(round(5.0 / work.GetSpacing()[0]))
    assert not organs[k, j - r:j + r + 1, i - r:i + r + 1].any(), case
    heart = anatomy.mask("heart")
    bronchi = anatomy.mask("main_bronchus_left", "main_bronchus_right")
    sp = tuple(reversed(work.GetSpacing()))
    d = ndi.distance_transform_edt(~bronchi, sampling=sp)
    assert heart.any() and d[heart].min() >= 7.0, (case, float(d[heart].min()))
    top = work.GetOrigin()[2] + work.GetSpacing()[2] * np.nonzero(heart.any(axis=(1, 2)))[0].max()
    assert top <= lms.get("carina").z_mm - 25.0, (case, top)
