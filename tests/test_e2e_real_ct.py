"""End to end on a real CT: Lung-PET-CT-Dx A0002 with a synthetic PET made here.

The CT is real (30 axial slices at 8 mm, 0.65 mm pixels, from the upper abdomen to the
thoracic inlet; carina at z = 232 mm); its tumour is a right hilar / right paramediastinal
mass annotated with per-slice boxes. The PET is synthetic: body background SUV 0.8, lungs
0.3, blood pool 1.8 in the descending aorta, the annotated tumour SUV 10, and nodes placed
at stations chosen by looking at the CT (axial slices rendered and read by eye, positions
in mm LPS: +x patient left, +y posterior, +z superior), blurred with a 7 mm FWHM Gaussian
on a 4 mm PET grid. Node voxels in fat are given soft-tissue HU in the CT (a node is soft
tissue), nothing else of the CT changes.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from conftest import real_path

from nstage.geometry import canonical
from nstage.pipeline import RunOptions, stage_study
from nstage.study import ImageGeometry, Study, StudyMeta

DEFAULTS = RunOptions(anatomy="classical", lesions="suv", report=False)
PET_SPACING_MM = 4.0
PET_FWHM_MM = 7.0
SUV_BODY, SUV_LUNG, SUV_BLOOD, SUV_TUMOUR = 0.8, 0.3, 1.8, 10.0


@dataclass(frozen=True)
class PlacedNode:
    """A synthetic node: IASLC station, centre (mm LPS), diameter (mm), activity (SUV)."""

    station: str
    centre_mm: tuple[float, float, float]
    diameter_mm: float = 14.0
    suv: float = 9.0


# Read on the rendered axial slices of A0002 (see the module docstring):
# - z = 216-224 mm, 8-16 mm below the carina: the right main / intermediate bronchus at
#   (-28, -110), the left main bronchus running laterally at y = -118, the descending aorta
#   at (22, -103); the subcarinal space behind and between the bronchi, in front of the
#   oesophagus and the T5 body (y > -90), at (-4, -106).
SUBCARINAL = PlacedNode("7", (-4.0, -106.0, 220.0))
# - Heart and great vessels (non-contrast CT: blood and myocardium ~40 HU, mediastinal fat
#   ~-100 HU): the soft tissue in front of the vertebral bodies (y < -92) between the lungs,
#   from the heart (z = 176) up to the aortic arch and the great vessels (z = 280), takes
#   the blood pool (SUV 1.8); that holds the ascending aorta at (-27, -142), the arch at
#   z = 240-256 and the descending aorta at (22, -103).
BLOOD_BOX_MM = ((-80.0, 70.0), (-200.0, -92.0), (176.0, 280.0))  # x, y, z ranges


def _read_a0002() -> tuple[sitk.Image, list[tuple[np.ndarray, np.ndarray]]]:
    """Canonical CT of A0002 and its tumour boxes as (min xyz, max xyz) mm per slice."""
    import pydicom

    from nstage.io import read_ct

    case = real_path("lung-pet-ct-dx-A0002")
    ct_dir, box_dir = case / "ct", real_path("lung-pet-ct-dx-A0002", "tumor-boxes")
    ct = canonical(read_ct(ct_dir)[0])
    headers = {}
    for f in sorted(ct_dir.glob("*.dcm")):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        headers[ds.SOPInstanceUID] = ds
    boxes = []
    for xml in sorted(box_dir.glob("*.xml")):
        ds = headers.get(xml.stem)
        if ds is None:  # boxes of slices that are not part of this 30-slice extract
            continue
        bb = ET.parse(xml).getroot().find("object/bndbox")
        x0, y0, x1, y1 = (float(bb.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax"))
        pos = np.array([float(v) for v in ds.ImagePositionPatient])
        row, col = (float(v) for v in ds.PixelSpacing)
        # axial slices with identity in-plane orientation: columns along +x, rows along +y
        boxes.append((pos + np.array([x0 * col, y0 * row, 0.0]),
                      pos + np.array([x1 * col, y1 * row, 0.0])))
    assert boxes, "no tumour box matches a slice of the CT"
    return ct, boxes


def _grid_mm(img: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable z, y, x coordinates (mm) of a canonical image's voxels."""
    o, s, n = img.GetOrigin(), img.GetSpacing(), img.GetSize()
    x = o[0] + s[0] * np.arange(n[0])
    y = o[1] + s[1] * np.arange(n[1])
    z = o[2] + s[2] * np.arange(n[2])
    return z[:, None, None], y[None, :, None], x[None, None, :]


def _with_nodes(ct: sitk.Image, nodes: list[PlacedNode]) -> sitk.Image:
    """The CT with node voxels that are fat or air-free soft tissue set to 35 HU."""
    a = sitk.GetArrayFromImage(ct).astype(np.int16)
    z, y, x = _grid_mm(ct)
    for n in nodes:
        cx, cy, cz = n.centre_mm
        ball = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= (n.diameter_mm / 2) ** 2
        a[ball & (a < 20)] = 35
    out = sitk.GetImageFromArray(a)
    out.CopyInformation(ct)
    return out


def synthetic_pet(ct: sitk.Image, boxes, nodes: list[PlacedNode],
                  blood_box=None, tumour_sphere=None) -> sitk.Image:
    """SUV activity from the CT (body, lungs), blood pool, tumour and nodes; blurred; 4 mm.

    The tumour is the soft tissue inside the per-slice ``boxes`` (min xyz, max xyz mm) and/or
    inside ``tumour_sphere`` (centre xyz, radius mm); the blood pool the soft tissue inside
    ``blood_box`` ((x0, x1), (y0, y1), (z0, z1) mm; default :data:`BLOOD_BOX_MM`).
    """
    from scipy import ndimage

    a = sitk.GetArrayFromImage(ct)
    z, y, x = _grid_mm(ct)
    body = ndimage.binary_fill_holes(a > -400, structure=np.ones((1, 3, 3), bool))
    body = ndimage.binary_opening(body, structure=np.ones((1, 5, 5), bool))
    act = np.where(body, SUV_BODY, 0.0).astype(np.float32)
    act[body & (a < -400)] = SUV_LUNG
    (x0, x1), (y0, y1), (z0, z1) = blood_box or BLOOD_BOX_MM
    blood = (((x >= x0) & (x <= x1)) & ((y >= y0) & (y <= y1)) & ((z >= z0) & (z <= z1))
             & (a > -20) & (a < 120))
    act[blood & body] = SUV_BLOOD
    for lo, hi in boxes:
        k = int(round((lo[2] - ct.GetOrigin()[2]) / ct.GetSpacing()[2]))
        in_box = (x[0] >= lo[0]) & (x[0] <= hi[0]) & (y[0] >= lo[1]) & (y[0] <= hi[1])
        # the tumour is the soft tissue inside the box (not the lung around it, not bone)
        act[k][in_box & (a[k] > -400) & (a[k] < 150)] = SUV_TUMOUR
    if tumour_sphere is not None:
        (cx, cy, cz), r = tumour_sphere
        ball = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= r ** 2
        act[ball & (a > -400) & (a < 150)] = SUV_TUMOUR
    for n in nodes:
        cx, cy, cz = n.centre_mm
        act[(x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= (n.diameter_mm / 2) ** 2] = n.suv
    # Blur on a fine isotropic grid (the 8 mm slices are too coarse for a 7 mm PSF), then
    # sample onto the 4 mm PET grid.
    src = sitk.GetImageFromArray(act)
    src.CopyInformation(ct)
    fine = [2.0, 2.0, 2.0]
    size = [int(np.ceil(n * s / f)) for n, s, f in zip(ct.GetSize(), ct.GetSpacing(), fine,
                                                       strict=True)]
    fine_img = sitk.Resample(src, size, sitk.Transform(), sitk.sitkLinear, ct.GetOrigin(), fine,
                             ct.GetDirection(), 0.0, sitk.sitkFloat32)
    sigma = PET_FWHM_MM / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    blurred = sitk.SmoothingRecursiveGaussian(fine_img, sigma)
    pet_size = [int(np.ceil(n * s / PET_SPACING_MM)) for n, s in zip(ct.GetSize(),
                                                                     ct.GetSpacing(), strict=True)]
    origin = [o - s / 2 + PET_SPACING_MM / 2 for o, s in zip(ct.GetOrigin(), ct.GetSpacing(),
                                                            strict=True)]
    pet = sitk.Resample(blurred, pet_size, sitk.Transform(), sitk.sitkLinear, origin,
                        [PET_SPACING_MM] * 3, ct.GetDirection(), 0.0, sitk.sitkFloat32)
    return sitk.Maximum(pet, 0.0)


def _stage(nodes: list[PlacedNode]):
    ct, boxes = _read_a0002()
    ct = _with_nodes(ct, nodes)
    pet = synthetic_pet(ct, boxes, nodes)
    study = Study(ct=ct, pet=pet, ct_geometry=ImageGeometry.of(ct),
                  meta=StudyMeta(ct_source="Lung-PET-CT-Dx A0002 CT",
                                 pet_source="synthetic PET (test)",
                                 suv_source="synthetic PET made in SUV"))
    return stage_study(study, DEFAULTS), boxes


def _describe(staged) -> str:
    r = staged.result
    parts = [f"{r['n_stage']}/{r['n_stage_9th']} reasons {r['reasons']}"]
    for key in ("nodes", "negative_node_candidates", "other_lesions"):
        parts += [f"{key}: {n.get('station')} {n['centroid_mm']} SUVmax {n['suv_max']}: "
                  f"{n['reason']}" for n in r[key]]
    return "\n".join(parts)


# - z = 304 mm, above the manubrium top (z = 296) at the thoracic inlet: left of the trachea
#   (-13, -128), lateral to the left common carotid, in the low neck fat: a left
#   supraclavicular (1L) node, N3 for a right primary.
SUPRACLAVICULAR_LEFT = PlacedNode("1L", (22.0, -122.0, 304.0))

_CACHE: dict = {}


def _placed_stations(r: dict) -> list[str]:
    """Stations of the counted nodes placed by the test. The right hilar primary abuts the
    right main bronchus: where the lung mask (which includes the tumour up to about 15 mm
    from the bronchus) leaves its hilar part outside the lung, that part is reported as its
    direct extension into station 10R, N1 on the primary's side; it changes neither
    category here (N2 by station 7)."""
    for n in r["nodes"]:
        if n["direct_extension"]:
            assert (n["station"], n["n_category"]) == ("10R", "N1"), n
    return sorted({n["station"] for n in r["nodes"] if n["n_category"]
                   and not n["direct_extension"]})


def _staged(nodes: tuple[PlacedNode, ...]):
    if nodes not in _CACHE:
        _CACHE.clear()  # one staged study at a time (memory)
        _CACHE[nodes] = _stage(list(nodes))
    return _CACHE[nodes]


def test_a0002_placed_lesions_are_found_where_they_were_placed() -> None:
    """Lesion detection on the real CT: the tumour and the node, and nothing else."""
    staged, boxes = _staged((SUBCARINAL,))
    r = staged.result
    found = [*r["nodes"], *r["negative_node_candidates"], *r["other_lesions"]]
    if r["primary_tumor"] is not None:
        found.append(r["primary_tumor"])
    placed = np.asarray(SUBCARINAL.centre_mm)
    near_node = [f for f in found
                 if np.linalg.norm(np.subtract(f["centroid_mm"], placed)) < 5.0]
    assert len(near_node) == 1, _describe(staged)
    assert near_node[0]["suv_max"] > 4.0, _describe(staged)
    lo = np.min([b[0] for b in boxes], axis=0) - 10.0
    hi = np.max([b[1] for b in boxes], axis=0) + 10.0
    in_tumour = [f for f in found if np.all(np.asarray(f["centroid_mm"]) >= lo)
                 and np.all(np.asarray(f["centroid_mm"]) <= hi) and f not in near_node]
    assert in_tumour and max(f["suv_max"] for f in in_tumour) > 8.0, _describe(staged)
    # Body background (0.8), lungs (0.3) and the blood pool (1.8) make no lesion of their own.
    stray = [f for f in found if f not in near_node and f not in in_tumour
             and (f["volume_ml"] or 0) < 100]
    assert not stray, _describe(staged)
    assert abs(r["reference_suv"]["blood_pool"] - SUV_BLOOD) < 0.5, r["reference_suv"]


def test_a0002_subcarinal_node_is_station_7_on_8_mm_slices() -> None:
    """On 8 mm slices the classical airway loses the left main bronchus one slice below the
    carina; station 7's lower border must not be taken from that (it was: the node 12 mm below
    the carina became 8L). The implausibly short bronchus falls back to carina - 35 mm."""
    staged, _ = _staged((SUBCARINAL,))
    r = staged.result
    near = [n for n in r["nodes"]
            if np.linalg.norm(np.subtract(n["centroid_mm"], SUBCARINAL.centre_mm)) <= 10.0]
    assert [n["station"] for n in near] == ["7"], _describe(staged)
    assert any("station 7 bottom approximated" in s for s in r["notes"]), r["notes"]


def test_a0002_subcarinal_node_stages_n2a() -> None:
    """Right primary + one subcarinal node: N2 (8th), N2a (9th), station 7 counted."""
    staged, _ = _staged((SUBCARINAL,))
    r = staged.result
    assert r["primary_tumor"] is not None and r["primary_tumor"]["side"] == "right", \
        _describe(staged)
    assert r["primary_side_used"] == "right", _describe(staged)
    assert _placed_stations(r) == ["7"], _describe(staged)
    assert (r["n_stage"], r["n_stage_9th"]) == ("N2", "N2a"), _describe(staged)


def test_a0002_contralateral_supraclavicular_node_stages_n3() -> None:
    """Right primary + subcarinal + left supraclavicular node: N3 by station 1."""
    staged, _ = _staged((SUBCARINAL, SUPRACLAVICULAR_LEFT))
    r = staged.result
    assert r["primary_side_used"] == "right", _describe(staged)
    assert _placed_stations(r) == ["1L", "7"], _describe(staged)
    assert (r["n_stage"], r["n_stage_9th"]) == ("N3", "N3"), _describe(staged)


# ------------------------------------------------------------------------------ A0001
# Lung-PET-CT-Dx A0001: a full chest (5 mm slices). Read on rendered axial slices: a large
# left upper-lobe mass, posterior and paravertebral, from z = -240 to -185 mm, its core at
# (52, 205, -209) (soft tissue from x = 30 to 75, y = 180 to 230 at z = -209); carina at
# z = -249, trachea centre (-10, 157) at z = -219 with its right wall at x = -16; the heart
# and great vessels, down to the descending aorta beside the spine (y < 235; bone is above
# the soft-tissue HU window), from z = -300 to -200.
A0001_TUMOUR_CORE = ((52.0, 205.0, -209.0), 20.0)
A0001_BLOOD_BOX = ((-80.0, 70.0), (60.0, 235.0), (-300.0, -200.0))
# A right lower paratracheal node (4R), 25 mm above the carina, against the right tracheal
# wall in the mediastinal fat: contralateral mediastinal for the left primary, N3.
A0001_4R = PlacedNode("4R", (-25.0, 156.0, -224.0), diameter_mm=12.0)


def _stage_a0001(nodes: list[PlacedNode]):
    from nstage.io import read_ct

    ct = canonical(read_ct(real_path("lung-pet-ct-dx-A0001", "ct.mha"))[0])
    ct = _with_nodes(ct, nodes)
    pet = synthetic_pet(ct, [], nodes, blood_box=A0001_BLOOD_BOX,
                        tumour_sphere=A0001_TUMOUR_CORE)
    study = Study(ct=ct, pet=pet, ct_geometry=ImageGeometry.of(ct),
                  meta=StudyMeta(ct_source="Lung-PET-CT-Dx A0001 CT",
                                 pet_source="synthetic PET (test)",
                                 suv_source="synthetic PET made in SUV"))
    return stage_study(study, DEFAULTS)


_A0001: dict = {}


def _staged_a0001():
    if "staged" not in _A0001:
        _A0001["staged"] = _stage_a0001([A0001_4R])
    return _A0001["staged"]


def test_a0001_right_paratracheal_node_is_found_and_assigned_4r() -> None:
    """Station assignment from the real CT's own landmarks (classical anatomy)."""
    staged = _staged_a0001()
    r = staged.result
    found = [*r["nodes"], *r["negative_node_candidates"]]
    near = [n for n in found
            if np.linalg.norm(np.subtract(n["centroid_mm"], A0001_4R.centre_mm)) < 5.0]
    assert len(near) == 1, _describe(staged)
    assert (near[0]["station"], near[0]["side"]) == ("4R", "right"), _describe(staged)
    assert near[0]["suv_max"] > 4.0, _describe(staged)


def test_a0001_left_primary_with_contralateral_4r_stages_n3() -> None:
    """Left primary + right lower paratracheal node: N3 (contralateral mediastinal)."""
    staged = _staged_a0001()
    r = staged.result
    assert r["primary_tumor"] is not None and r["primary_tumor"]["side"] == "left", \
        _describe(staged)
    assert sorted({n["station"] for n in r["nodes"] if n["n_category"]}) == ["4R"], \
        _describe(staged)
    assert (r["n_stage"], r["n_stage_9th"]) == ("N3", "N3"), _describe(staged)
